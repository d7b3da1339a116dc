-- Idempotency keys are scoped to the caller (API.md, "Identity and
-- access"): the same key sent by two callers is two keys, so the unique key
-- becomes (scope, key). The Command API's scope is the caller's `sub`; the
-- saga's steps use the scope `saga`.
--
-- Existing rows: a saga step's key (it has spaces, which a client's
-- Idempotency-Key cannot have) goes to the saga's scope; a client's key was
-- stored before callers existed and gets the empty scope, which no caller
-- has: it is never replayed again, and the TTL sweep removes it.
ALTER TABLE event_store.idempotency ADD COLUMN scope text NOT NULL DEFAULT '';

UPDATE event_store.idempotency SET scope = 'saga' WHERE key LIKE 'saga % % %';

ALTER TABLE event_store.idempotency
    ALTER COLUMN scope DROP DEFAULT,
    DROP CONSTRAINT idempotency_pkey,
    ADD PRIMARY KEY (scope, key);

-- Keys are purged after PURSER_IDEMPOTENCY_TTL by the Command API's sweep,
-- oldest first, a batch at a time.
CREATE INDEX idempotency_created_at ON event_store.idempotency (created_at);
