-- A rebuild's replay as one checkpoint instead of one `applied` row per
-- stream (crate `projections`, modules `projector` and `rebuild`).
--
-- A rebuild replays every event of a projection's stream types up to a
-- gap-safe checkpoint; it used to record each stream's version in `applied`
-- (a row per stream, written twice: in the shadow schema, then copied in the
-- swap), which cost as much as writing the read model itself. It now records
-- the checkpoint: every event at or before `replayed_*` is applied, but for
-- the streams that have a row in `applied`, whose row says how far they are
-- (a stream touched since, a parked stream, a stream rebuilt on its own).
-- The projector creates a stream's row the first time it meets the stream,
-- at the version the checkpoint covers, read from the event store.
ALTER TABLE read_models.projection_status
    ADD COLUMN replayed_transaction_id xid8,
    ADD COLUMN replayed_position       bigint,
    -- events of the projection's stream types at or before the checkpoint
    ADD COLUMN replayed_events         bigint NOT NULL DEFAULT 0 CHECK (replayed_events >= 0),
    ADD CHECK ((replayed_transaction_id IS NULL) = (replayed_position IS NULL));

-- The version a stream's row started from: what the replayed checkpoint
-- covered of the stream when the row was created (0 without a checkpoint).
-- The events applied in all are `replayed_events` plus, over the rows,
-- `version - base`; the Query API's lag is computed from that.
ALTER TABLE read_models.applied
    ADD COLUMN base bigint NOT NULL DEFAULT 0 CHECK (base >= 0);
