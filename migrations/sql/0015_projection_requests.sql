-- Operations on projections requested over HTTP (`POST
-- /projections/{name}/rebuild` on the Command API) and carried out by the
-- projection workers' side (`purser project`, `purser serve`; crate
-- `projections`, module `requests`): the request is recorded here and
-- announced with `pg_notify('purser_projection_request', projection)`; a
-- worker process picks it up (woken by the notification, and at start for
-- what was requested while none ran), runs the same resumable rebuild as
-- `purser projections rebuild`, and deletes the row once the rebuild is
-- swapped in or failed. A worker that dies mid-rebuild leaves the row: the
-- next one resumes the rebuild where it stopped.
--
-- One row per projection at most: a second request while one waits or
-- runs is refused (409 `rebuild_running`).
CREATE TABLE read_models.projection_requests (
    projection    text        PRIMARY KEY,
    operation     text        NOT NULL DEFAULT 'rebuild' CHECK (operation IN ('rebuild')),
    -- the operator's `sub`
    requested_by  text        NOT NULL,
    -- the HTTP request's id
    request_id    text        NOT NULL DEFAULT '',
    requested_at  timestamptz NOT NULL DEFAULT now(),
    -- when a worker last started (or resumed) it; null until then
    started_at    timestamptz
);
