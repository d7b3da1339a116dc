-- Aggregate states that do not grow with history (issue 19).
--
-- An item keeps its open reservations only, an account none of its
-- charges; a command for an order that needs that order's past in the
-- stream (a reserve or commit repeated after the reservation ended, a
-- charge or refund) reads just that order's events, through this index.
-- Its predicate and expression are repeated word for word by
-- `EventStore::read_stream_of_order`, so that the planner can use it.
--
-- A plain CREATE INDEX holds appends back while it is built; on a large log,
-- build it with CREATE INDEX CONCURRENTLY (outside a transaction) first: this
-- one then finds it and does nothing.
CREATE INDEX IF NOT EXISTS events_by_order_idx
    ON event_store.events (stream_id, (payload ->> 'order_id'), version)
    WHERE stream_type IN ('inventory', 'account');

-- A snapshot records the schema of the state it holds (`Aggregate::
-- STATE_SCHEMA`): one of another schema is ignored and rewritten. The
-- snapshots taken so far (none by the services) count as schema 1.
ALTER TABLE event_store.snapshots
    ADD COLUMN state_schema integer NOT NULL DEFAULT 1 CHECK (state_schema >= 1);
