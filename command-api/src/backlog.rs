//! Admission of new orders against the saga backlog: the orders placed whose
//! saga has not started yet ([`saga::Backlog`]). Past
//! `PURSER_SAGA_BACKLOG_LIMIT` of them, `POST /orders` answers 503
//! `saga_backlog` with `Retry-After` and appends nothing, rather than
//! accepting work the system cannot start. `/metrics` shows the backlog.
//!
//! The backlog is measured at most once per `refresh` (one query, bounded by
//! the backlog itself), and requests meanwhile take that measure.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use saga::Backlog;
use service::metrics::Registry;
use sqlx::PgPool;
use tokio::sync::Mutex;

use crate::error::ApiError;

pub struct BacklogGate {
    pool: PgPool,
    /// Orders allowed to wait for their saga (0: no bound).
    limit: u64,
    refresh: Duration,
    last: Mutex<Option<(Instant, Backlog)>>,
}

impl BacklogGate {
    pub fn new(pool: PgPool, limit: u64, refresh: Duration) -> BacklogGate {
        BacklogGate {
            pool,
            limit,
            refresh,
            last: Mutex::new(None),
        }
    }

    /// The backlog, measured at most `refresh` ago.
    pub async fn current(&self) -> Result<Backlog, ApiError> {
        let mut last = self.last.lock().await;
        if let Some((at, backlog)) = *last {
            if at.elapsed() < self.refresh {
                return Ok(backlog);
            }
        }
        let backlog =
            Backlog::measure(&self.pool)
                .await
                .map_err(|error| ApiError::Unavailable {
                    detail: "cannot measure the saga backlog".to_owned(),
                    checks: None,
                    source: Some(Box::new(error)),
                })?;
        *last = Some((Instant::now(), backlog));
        Ok(backlog)
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
