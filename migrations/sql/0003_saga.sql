-- The saga orchestrator's work queue (crate `saga`). The truth about a saga is
-- its event stream (`saga-{order_id}`); this table only says which sagas may
-- have something to do, and from when. A missing row is re-created by the next
-- trigger delivered from Kafka; a row whose saga is over is deleted when the
-- orchestrator finds it so.
CREATE SCHEMA IF NOT EXISTS saga;

CREATE TABLE saga.due (
    order_id    uuid        PRIMARY KEY,
    -- Not before this time (a retry's backoff, the end of a wait).
    due_at      timestamptz NOT NULL DEFAULT now(),
    -- Bumped by every wake-up (a trigger, a cancellation, an operator's
    -- retry), so that an orchestrator that is driving the saga meanwhile does
    -- not push the wake-up back when it reschedules.
    wakeups     bigint      NOT NULL DEFAULT 0,
    -- The orchestrator driving the saga now, and until when it may. Another
    -- one takes the saga over once the lease ran out (its owner died).
    lease_owner uuid,
    lease_until timestamptz
);

CREATE INDEX due_by_time ON saga.due (due_at);
