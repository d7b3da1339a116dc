-- The events of some stream types, in the global read order. Serves the
-- Query API's `/projections` (per projection: how many events its stream
-- types have, and the highest position among them) with an index-only scan
-- of those types' entries instead of a scan of the whole log with its
-- payloads, and any reader of some stream types in (transaction_id,
-- position) order.
--
-- A plain CREATE INDEX holds appends back while it is built; on a large log,
-- build it with CREATE INDEX CONCURRENTLY (outside a transaction) first:
-- this one then finds it and does nothing.
CREATE INDEX IF NOT EXISTS events_stream_type_transaction_position_idx
    ON event_store.events (stream_type, transaction_id, position);
