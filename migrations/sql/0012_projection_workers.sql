-- The projection workers that are consuming now, for readiness (crate
-- `projections`, module `readiness`): a worker writes its row once its
-- consumer group gave it partitions, with the event store's head (among its
-- projection's stream types) at that moment, and refreshes `seen_at` while
-- it runs; it deletes the row when it stops. The Query API answers ready
-- only when each projection it serves has a live member whose projection
-- has applied up to the head that member started at. A row whose `seen_at`
-- is old is a member that died: it counts for nothing and is deleted by the
-- next member that joins.
CREATE TABLE read_models.workers (
    projection  text        NOT NULL,
    member      uuid        NOT NULL,
    start_head  bigint      NOT NULL,
    joined_at   timestamptz NOT NULL DEFAULT now(),
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, member)
);
