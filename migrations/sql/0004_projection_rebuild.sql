-- Rebuilds of projections (`purser projections rebuild`, crate `projections`,
-- module `rebuild`; DESIGN.md point 6). A rebuild replays the event store into
-- a shadow schema `rebuild_<projection>` (copies of the projection's tables,
-- and its own `applied`, `parked` and `projection_status`), then swaps the
-- shadow tables into `read_models` in one transaction.
--
-- One row per rebuild not yet swapped in: where its replay stands. The row is
-- updated in the same transaction as the shadow rows, so a rebuild that was
-- interrupted (ctrl-c, kill, crash) resumes exactly there. Whether a rebuild
-- is running right now is not stored: it is the session advisory lock its
-- process holds (released by the server when that process dies).
CREATE TABLE read_models.rebuilds (
    projection     text        PRIMARY KEY,
    shadow_schema  text        NOT NULL,
    -- `replay`: bulk replay in global order, no per-stream bookkeeping;
    -- `catch_up`: applied versions recorded, indexes built, replaying the
    -- events that arrive meanwhile through the projector.
    phase          text        NOT NULL DEFAULT 'replay' CHECK (phase IN ('replay', 'catch_up')),
    -- the (transaction_id, position) of the last event replayed
    transaction_id xid8        NOT NULL DEFAULT '0',
    position       bigint      NOT NULL DEFAULT 0,
    events_done    bigint      NOT NULL DEFAULT 0 CHECK (events_done >= 0),
    last_position  bigint      NOT NULL DEFAULT 0,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
