//! What every handler shares.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::progress::Progress;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub progress: Progress,
    /// Upper bound of a whole request (waits included).
    pub request_timeout: Duration,
    /// The cap on requests in flight (load shedding).
    pub concurrency: service::ConcurrencyCap,
    /// `events_applied` per projection at the previous `/metrics` scrape, to
    /// report an apply rate.
    pub(crate) applied_samples: Arc<Mutex<HashMap<String, (Instant, i64)>>>,
    /// The projections whose workers `/health/ready` waits for (every one).
    pub projections: Vec<&'static str>,
    /// The other components of this process that `/health/ready` waits for
    /// (`purser serve`); `None` when the Query API runs alone.
    pub readiness: Option<service::Readiness>,
}

impl AppState {
    /// No I/O: without [`Progress::spawn_listener`] running, `min_version`
    /// waits poll.
    pub fn new(pool: PgPool, progress: Progress) -> Self {
        AppState {
            pool,
            progress,
            request_timeout: Duration::from_secs(15),
            concurrency: service::ConcurrencyCap::new(
                crate::QueryApiConfig::default().max_concurrent_requests(),
            ),
            applied_samples: Arc::default(),
            projections: projections::names(),
            readiness: None,
        }
    }

    /// Ready only once every component of `readiness` is too.
    pub fn with_readiness(mut self, readiness: service::Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// At most `max` requests in flight (health checks aside).
    pub fn with_max_concurrent_requests(mut self, max: usize) -> Self {
        self.concurrency = service::ConcurrencyCap::new(max);
        self
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}
