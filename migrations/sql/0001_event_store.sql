-- placeholder, replaced by the event store work
CREATE SCHEMA IF NOT EXISTS event_store;
