-- The `sagas` read model (projection `sagas`, crate `projections`): one row per
-- order-fulfilment saga, built from the `saga-{order_id}` streams and served by
-- the Query API's `/sagas`. Derived from the event log like every read model.
CREATE TABLE read_models.sagas (
    order_id            uuid        PRIMARY KEY,
    saga_id             uuid        NOT NULL,
    state               text        NOT NULL
        CHECK (state IN ('running', 'compensating', 'completed', 'compensated', 'needs_attention')),
    compensation_reason text,
    tracking_number     text,
    -- The last failure, refusal or reason for needing attention.
    last_error          text,
    -- The step that stopped the saga, while it needs attention
    -- (`{"name": ..., "sku": ...}`).
    attention_step      jsonb,
    -- Every step in the order it was first attempted: `[{"name", "sku",
    -- "status", "attempts", "started_at", "finished_at", "error"}]`.
    steps               jsonb       NOT NULL DEFAULT '[]',
    -- The saga stream's version this row reflects.
    version             bigint      NOT NULL,
    started_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

-- `GET /sagas?state=` pages by order_id within the state, and `/metrics`
-- counts sagas per state.
CREATE INDEX sagas_state_idx ON read_models.sagas (state, order_id);
