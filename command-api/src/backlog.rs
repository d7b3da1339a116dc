//! Admission of new orders against the saga backlog: the orders placed whose
//! saga has not started yet ([`saga::Backlog`]). Past
//! `PURSER_SAGA_BACKLOG_LIMIT` of them, `POST /orders` answers 503
//! `saga_backlog` with `Retry-After` and appends nothing, rather than
//! accepting work the system cannot start. `/metrics` shows the backlog.
//!
//! A task of the gate's own measures the backlog, pausing `refresh` between
//! measurements, and requests read the last measure without waiting for the
//! next: a measurement costs a query, and when requests took turns to run it
//! under a lock, every order arriving meanwhile waited for it, which is what
//! the p99 of `POST /orders` showed. Only the first requests of a process
//! wait, for the first measure.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use saga::Backlog;
use service::metrics::Registry;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::error::ApiError;

/// What the measurements found.
#[derive(Debug, Clone)]
struct Measure {
    /// The last backlog measured, and when.
    taken: Option<(Instant, Backlog)>,
    /// Why the latest measurement failed, if it did.
    failed: Option<Arc<saga::Error>>,
}

/// How many pauses old a measure may be and still admit orders when the
/// latest measurement failed: one failure (a pool timeout in a burst) does
/// not refuse every order until the next.
const FAILURES_TOLERATED: u32 = 5;

pub struct BacklogGate {
    /// Orders allowed to wait for their saga (0: no bound).
    limit: u64,
    /// How old a measure may be when the latest measurement failed.
    tolerated: Duration,
    /// `None` until the first measurement ends.
    last: watch::Receiver<Option<Measure>>,
}

impl BacklogGate {
    /// A gate whose measuring task (none without a limit) runs until the
    /// gate is dropped. Needs a Tokio runtime.
    pub fn new(pool: PgPool, limit: u64, refresh: Duration) -> BacklogGate {
        let (measures, last) = watch::channel(None);
        if limit > 0 {
            tokio::spawn(keep_measuring(pool, refresh, measures));
        }
        BacklogGate {
            limit,
            tolerated: refresh.saturating_mul(FAILURES_TOLERATED),
            last,
        }
    }

    /// The last measure of the backlog; waits only for the first one.
    pub async fn current(&self) -> Result<Backlog, ApiError> {
        let mut last = self.last.clone();
        let measure = last
            .wait_for(Option::is_some)
            .await
            .map(|measure| measure.clone())
            .ok()
            .flatten();
        let Some(Measure { taken, failed }) = measure else {
            return Err(cannot_measure(None));
        };
        match (taken, failed) {
            (Some((at, backlog)), Some(_)) if at.elapsed() <= self.tolerated => Ok(backlog),
            (_, Some(error)) => Err(cannot_measure(Some(Box::new(error)))),
            (Some((_, backlog)), None) => Ok(backlog),
            (None, None) => Err(cannot_measure(None)),
        }
    }

    /// `Ok` when a new order may be placed: the backlog is below the limit.
    pub async fn admit(&self) -> Result<(), ApiError> {
        if self.limit == 0 {
            return Ok(());
        }
        let backlog = self.current().await?;
        if backlog.orders >= self.limit {
            return Err(ApiError::Backlogged {
                orders: backlog.orders,
                limit: self.limit,
            });
        }
        Ok(())
    }
}

fn cannot_measure(source: Option<Box<dyn std::error::Error + Send + Sync>>) -> ApiError {
    ApiError::Unavailable {
        detail: "cannot measure the saga backlog".to_owned(),
        checks: None,
        source,
    }
}

/// Measures, publishes, pauses `refresh`, and again, until the gate (the
/// last receiver) is gone.
async fn keep_measuring(pool: PgPool, refresh: Duration, measures: watch::Sender<Option<Measure>>) {
    let mut taken = None;
    loop {
        let measured = tokio::select! {
            () = measures.closed() => return,
            measured = Backlog::measure(&pool) => measured,
        };
        let failed = match measured {
            Ok(backlog) => {
                taken = Some((Instant::now(), backlog));
                None
            }
            Err(error) => {
                tracing::warn!(%error, "cannot measure the saga backlog");
                Some(Arc::new(error))
            }
        };
        measures.send_replace(Some(Measure { taken, failed }));
        tokio::select! {
            () = measures.closed() => return,
            () = tokio::time::sleep(refresh) => {}
        }
    }
}

/// `purser_saga_backlog_orders` and `purser_saga_backlog_oldest_seconds`:
/// the orders placed whose saga has not started yet, and how long the
/// oldest has waited ([`Backlog`], measured at each scrape), once per
/// process.
pub fn register_metrics(registry: &Registry, pool: &PgPool) {
    let orders = Gauge::<i64>::default();
    let oldest = Gauge::<f64, AtomicU64>::default();
    let registered = registry.register_group("saga_backlog", |r| {
        r.register(
            "purser_saga_backlog_orders",
            "Orders placed whose saga has not started yet",
            orders.clone(),
        );
        r.register(
            "purser_saga_backlog_oldest_seconds",
            "How long the oldest order waiting for its saga has waited (0 when none waits)",
            oldest.clone(),
        );
    });
    if !registered {
        return;
    }
    let pool = pool.clone();
    registry.on_scrape(Arc::new(move || {
        let (orders, oldest, pool) = (orders.clone(), oldest.clone(), pool.clone());
        Box::pin(async move {
            match Backlog::measure(&pool).await {
                Ok(backlog) => {
                    orders.set(i64::try_from(backlog.orders).unwrap_or(i64::MAX));
                    oldest.set(backlog.oldest.as_secs_f64());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot measure the saga backlog for /metrics")
                }
            }
        })
    }));
}
