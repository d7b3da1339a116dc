-- The saga trigger tails the event store itself (crate `saga`, module
-- `trigger`; DESIGN.md point 10): no broker between an order's append and its
-- saga, and no message payload a saga could be started from.
--
-- Where the trigger is in the log: the (transaction_id, position) of the last
-- trigger event it has handled, below the gap-safe horizon. One row, written
-- in the same transaction as the `saga.due` rows the handled events made, so
-- a crash re-reads from here and the re-read only makes due again what was
-- due (waking is idempotent; a saga starts at most once, its stream is the
-- guard).
CREATE TABLE saga.trigger (
    only_row        boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    transaction_id  xid8        NOT NULL,
    position        bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- From the start of the log: an order placed while the previous, Kafka-fed
-- trigger was behind still gets its saga; the orders whose saga already exists
-- are skipped by the trigger (one index lookup each).
INSERT INTO saga.trigger (transaction_id, position) VALUES ('0'::xid8, 0);

-- The events that start or wake a saga, in the global read order: the
-- trigger's read is a range scan of this index from its checkpoint, touching
-- no other event. Its predicate is repeated word for word by the trigger's
-- query (`trigger::READ`), so that the planner can prove the query implies it.
--
-- A plain CREATE INDEX holds appends back while it is built; on a large log,
-- build it with CREATE INDEX CONCURRENTLY (outside a transaction) first: this
-- one then finds it and does nothing.
CREATE INDEX IF NOT EXISTS events_saga_trigger_idx
    ON event_store.events (transaction_id, position)
    INCLUDE (stream_id, event_type)
    WHERE stream_type IN ('order', 'saga')
      AND event_type IN ('OrderPlaced', 'CancellationRequested', 'SagaRetried');
