//! Rebuilds requested over HTTP (`POST /projections/{name}/rebuild` on the
//! Command API) and carried out by the projection workers' process, never
//! in the request.
//!
//! [`request_rebuild`] records the request (`read_models.projection_requests`,
//! migration 0015, one row per projection at most) and announces it on
//! [`REQUEST_CHANNEL`]. A [`RequestRunner`] runs in every process that runs
//! projection workers (`purser project`, `purser serve`): it listens on that
//! channel, looks for requests when it starts (what was asked while no
//! worker ran) and every [`RESCAN`] (a request whose runner died), and runs
//! each with [`crate::rebuild::rebuild`], the resumable rebuild of `purser
//! projections rebuild`. Its progress is what `GET /projections` shows;
//! after each batch the runner announces it on [`PROGRESS_CHANNEL`] (at most
//! every [`PROGRESS_EVERY`]), for the operator console.
//!
//! Several runners may see one request: each takes the request's claim (a
//! session advisory lock on a connection of its own) before it reads the
//! row again and runs it, so a request is run once, and a runner that dies
//! releases its claim with its connection. The row is deleted when the
//! rebuild is swapped in, or failed; a rebuild interrupted by a shutdown
//! keeps it, and the next runner resumes there.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use event_store::EventStore;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgPool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::rebuild::{Progress, RebuildOptions};
use crate::{Error, Projection, Result};

/// The channel a request is announced on (payload: the projection's name).
pub const REQUEST_CHANNEL: &str = "purser_projection_request";

/// The channel a running rebuild announces its progress on, and a request
/// its arrival (payload: the projection's name).
pub const PROGRESS_CHANNEL: &str = "purser_projection_progress";

/// How often a runner looks for requests nobody announced to it.
pub const RESCAN: Duration = Duration::from_secs(30);

/// Least time between two announcements of a rebuild's progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Advisory lock class of a request's claim (second key: the projection's
/// name, both through `hashtext`).
const CLAIM_LOCK: &str = "purser.projection.request";

/// A rebuild requested over HTTP, waiting for a runner or running.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RebuildRequest {
    /// The projection to rebuild.
    pub projection: String,
    /// Who asked: the operator's `sub`.
    pub requested_by: String,
    /// The HTTP request's id.
    pub request_id: String,
    /// When it was asked.
    pub requested_at: DateTime<Utc>,
    /// When a runner last started or resumed it (`None`: waiting).
    pub started_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "projection, requested_by, request_id, requested_at, started_at";

/// Records a request to rebuild `projection` (by `actor`, in the HTTP
/// request `request_id`) and wakes the runners. Refused with
/// [`Error::RebuildRunning`] when a rebuild of it is requested already or
/// running (`purser projections rebuild` included); a rebuild that was
/// interrupted is resumed by the request. `projection` must be a known
/// name ([`crate::by_name`]).
#[tracing::instrument(skip(pool), err)]
pub async fn request_rebuild(
    pool: &PgPool,
    projection: &str,
    actor: &str,
    request_id: &str,
) -> Result<RebuildRequest> {
    let name = crate::by_name(projection)?.name();
    if crate::rebuild::is_running(pool, name).await? {
        return Err(Error::RebuildRunning(name.to_owned()));
    }
    let mut tx = pool.begin().await?;
    let inserted: Option<RebuildRequest> = sqlx::query_as(&format!(
        "INSERT INTO read_models.projection_requests (projection, requested_by, request_id) \
         VALUES ($1, $2, $3) ON CONFLICT (projection) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(name)
    .bind(actor)
    .bind(request_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(request) = inserted else {
        return Err(Error::RebuildRunning(name.to_owned()));
    };
    sqlx::query("SELECT pg_notify($1, $3), pg_notify($2, $3)")
        .bind(REQUEST_CHANNEL)
        .bind(PROGRESS_CHANNEL)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(projection = name, actor, request_id, "rebuild requested");
    Ok(request)
}

/// The rebuild requested of `projection`, if one waits or runs.
pub async fn pending(pool: &PgPool, projection: &str) -> Result<Option<RebuildRequest>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM read_models.projection_requests WHERE projection = $1"
    ))
    // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
    .persistent(false)
    .bind(projection)
    .fetch_optional(pool)
    .await?)
}

/// Carries out the rebuilds requested of some projections (see the module's
/// documentation).
#[derive(Clone)]
pub struct RequestRunner {
    store: EventStore,
    projections: Vec<Arc<dyn Projection>>,
    options: RebuildOptions,
    rescan: Duration,
}

impl RequestRunner {
    /// Runs the requests of `projections` (every projection when empty)
    /// with `options` (`restart` is ignored: a request resumes).
    pub fn new(store: EventStore, projections: &[String], options: RebuildOptions) -> Result<Self> {
        let projections = if projections.is_empty() {
            crate::all()
        } else {
            projections
                .iter()
                .map(|n| crate::by_name(n))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(RequestRunner {
            store,
            projections,
            options: RebuildOptions {
                restart: false,
                ..options
            },
            rescan: RESCAN,
        })
    }

    /// Looks for requests nobody announced every `every` (default
    /// [`RESCAN`]).
    pub fn with_rescan(mut self, every: Duration) -> Self {
        self.rescan = every;
        self
    }

    /// Listens for requests and runs them until `shutdown` (a rebuild in
    /// progress commits its batch and stops; the request is kept, and
    /// resumed by the next runner). A lost connection is reopened with
    /// backoff; meanwhile the periodic look still finds requests.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            match self.listen(&shutdown).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "projection requests: listening failed");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    async fn listen(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen(REQUEST_CHANNEL).await?;
        loop {
            // Whatever was requested before LISTEN took effect, or announced
            // while a rebuild ran, is found by this look.
            self.run_pending(shutdown).await?;
            if shutdown.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                received = listener.try_recv() => { received?; }
                () = tokio::time::sleep(self.rescan) => {}
            }
        }
    }

    /// One step: runs every pending request of this runner's projections
    /// that no other runner has claimed; returns how many it ran to an end
    /// (swapped in, or failed).
    pub async fn run_pending(&self, shutdown: &CancellationToken) -> Result<usize> {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT projection FROM read_models.projection_requests \
             WHERE projection = ANY($1) ORDER BY requested_at",
        )
        // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
        .persistent(false)
        .bind(&names)
        .fetch_all(self.store.pool())
        .await?;
        let mut ran = 0;
        for name in waiting {
            if shutdown.is_cancelled() {
                break;
            }
            let Some(projection) = self.projections.iter().find(|p| p.name() == name) else {
                continue;
            };
            if self.run_one(projection.clone(), shutdown).await? {
                ran += 1;
            }
        }
        Ok(ran)
    }

    /// Claims `projection`'s request and runs it; false when another runner
    /// holds the claim, the request is gone, or the rebuild did not end.
    async fn run_one(
        &self,
        projection: Arc<dyn Projection>,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let name = projection.name();
        let mut claim = self.store.pool().acquire().await?.detach();
        let claimed: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))")
                .bind(CLAIM_LOCK)
                .bind(name)
                .fetch_one(&mut claim)
                .await?;
        if !claimed {
            let _ = claim.close().await;
            return Ok(false);
        }
        let ended = self.run_claimed(projection, shutdown).await;
        // Closing the session releases the claim.
        let _ = claim.close().await;
        ended
    }

    async fn run_claimed(
        &self,
        projection: Arc<dyn Projection>,
        shutdown: &CancellationToken,
    ) -> Result<bool> {
        let name = projection.name();
        // Read again under the claim: a runner that held it may have
        // finished the request meanwhile.
        let request: Option<RebuildRequest> = sqlx::query_as(&format!(
            "UPDATE read_models.projection_requests SET started_at = now() \
             WHERE projection = $1 RETURNING {COLUMNS}"
        ))
        .bind(name)
        .fetch_optional(self.store.pool())
        .await?;
        let Some(request) = request else {
            return Ok(false);
        };
        let span = tracing::info_span!(
            "requested_rebuild",
            projection = name,
            actor = %request.requested_by,
            request_id = %request.request_id,
        );
        tracing::info!(parent: &span, "running the requested rebuild");

        let (progress, announced) = watch::channel(0u64);
        let announcer = tokio::spawn(announce(self.store.pool().clone(), name, announced));
        let result = crate::rebuild::rebuild(
            projection,
            &self.store,
            &self.options,
            shutdown,
            &mut |p: &Progress| {
                progress.send_replace(p.events_done);
            },
        )
        .await;
        drop(progress);
        let _ = announcer.await;
        let ended = match result {
            Ok(report) => {
                tracing::info!(
                    parent: &span,
                    events = report.events,
                    parked = report.parked,
                    seconds = report.elapsed.as_secs_f64(),
                    "requested rebuild swapped in"
                );
                true
            }
            Err(Error::Interrupted { events_done, .. }) => {
                tracing::info!(parent: &span, events_done, "requested rebuild interrupted; the next runner resumes it");
                return Ok(false);
            }
            Err(Error::RebuildRunning(_)) => {
                // `purser projections rebuild` runs it: this request waits
                // for the next look.
                tracing::info!(parent: &span, "another rebuild runs; the request waits");
                return Ok(false);
            }
            Err(error) => {
                tracing::error!(parent: &span, %error, "requested rebuild failed");
                true
            }
        };
        sqlx::query("DELETE FROM read_models.projection_requests WHERE projection = $1")
            .bind(name)
            .execute(self.store.pool())
            .await?;
        notify_progress(self.store.pool(), name).await?;
        Ok(ended)
    }
}

/// Announces `projection`'s progress on [`PROGRESS_CHANNEL`] when it moved,
/// at most every [`PROGRESS_EVERY`], until the rebuild ends.
async fn announce(pool: PgPool, projection: &'static str, mut moved: watch::Receiver<u64>) {
    while moved.changed().await.is_ok() {
        if let Err(error) = notify_progress(&pool, projection).await {
            tracing::debug!(%error, "announcing a rebuild's progress");
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
}

async fn notify_progress(pool: &PgPool, projection: &str) -> Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(PROGRESS_CHANNEL)
        .bind(projection)
        .execute(pool)
        .await?;
    Ok(())
}
