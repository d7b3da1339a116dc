-- An idempotency record is the caller's own (any JSON the caller
-- deserialises again: the Command API keeps the answer it sent, the saga
-- what a step's command did), no longer an HTTP status and body that the
-- event store had to know about.
--
-- Existing rows keep their meaning:
-- - a saga step's (its key has spaces, which a client's Idempotency-Key
--   cannot have) becomes the saga's record of what the step did:
--   {"outcome": "done"}, or {"outcome": "refused", "code": ..., "error": ...}
--   for a refusal (stored with a status of 300 or more);
-- - any other (the Command API's) becomes {"status": ..., "body": ...},
--   the answer it replays.
ALTER TABLE event_store.idempotency ADD COLUMN record jsonb;

UPDATE event_store.idempotency
SET record = CASE
    WHEN key LIKE 'saga % % %' AND status < 300 THEN
        jsonb_build_object('outcome', 'done')
    WHEN key LIKE 'saga % % %' THEN
        jsonb_build_object(
            'outcome', 'refused',
            'code', coalesce(body->>'code', 'refused'),
            'error', coalesce(body->>'error', ''))
    ELSE
        jsonb_build_object('status', status, 'body', body)
END;

ALTER TABLE event_store.idempotency
    ALTER COLUMN record SET NOT NULL,
    DROP COLUMN status,
    DROP COLUMN body;
