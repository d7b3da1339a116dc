-- Purser's event store (schema `event_store`) and the empty home of the read
-- models (schema `read_models`, filled by the projections' migrations).

CREATE SCHEMA IF NOT EXISTS event_store;
CREATE SCHEMA IF NOT EXISTS read_models;

-- The log. `position` is the global insertion order; `transaction_id` is the
-- writing transaction, so that readers can tail the log in
-- (transaction_id, position) order without skipping a transaction that
-- committed late (DESIGN.md point 3, `EventStore::read_all`).
CREATE TABLE event_store.events (
    position        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        uuid        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,  -- "{stream_type}-{id}"
    version         bigint      NOT NULL CHECK (version >= 1),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    -- optimistic concurrency's last line of defence; also serves read_stream
    -- and the current-version lookup of append
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);

CREATE INDEX events_transaction_position_idx
    ON event_store.events (transaction_id, position);

-- Responses of idempotent commands, written in the same transaction as the
-- command's events (after them), or alone for a refusal.
CREATE TABLE event_store.idempotency (
    key          text        PRIMARY KEY,
    fingerprint  text        NOT NULL,
    status       integer     NOT NULL CHECK (status BETWEEN 100 AND 599),
    body         jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Optional snapshots of long streams: the folded state at `version`, whose
-- event was written at `position`.
CREATE TABLE event_store.snapshots (
    stream_id    text        PRIMARY KEY,
    stream_type  text        NOT NULL,
    version      bigint      NOT NULL CHECK (version >= 1),
    position     bigint      NOT NULL,
    state        jsonb       NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now()
);

-- Where each named consumer of `read_all` is: the (transaction_id, position)
-- of the last event it has handled.
CREATE TABLE event_store.checkpoints (
    name            text        PRIMARY KEY,
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
