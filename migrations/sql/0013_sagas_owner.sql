-- The owner of each saga in its own read-model row (API.md, "Identity and
-- access": a customer sees only the sagas of its own orders): the order's
-- `customer_id`, from the saga's `SagaStarted` (`order.customer_id`), which
-- the `sagas` projection now writes. `GET /sagas/{order_id}` decides
-- ownership from this row alone.
ALTER TABLE read_models.sagas ADD COLUMN customer_id uuid;

-- Rows projected before: the owner from the event that started the saga.
UPDATE read_models.sagas AS s
   SET customer_id = (e.payload -> 'order' ->> 'customer_id')::uuid
  FROM event_store.events AS e
 WHERE e.stream_id = 'saga-' || s.order_id::text
   AND e.version = 1
   AND e.event_type = 'SagaStarted';

-- Every saga starts with `SagaStarted`, so every row has its owner.
ALTER TABLE read_models.sagas ALTER COLUMN customer_id SET NOT NULL;

CREATE INDEX sagas_customer_idx ON read_models.sagas (customer_id, order_id);
