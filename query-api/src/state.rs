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
    /// `events_applied` per projection at the previous `/metrics` scrape, to
    /// report an apply rate.
    pub(crate) applied_samples: Arc<Mutex<HashMap<String, (Instant, i64)>>>,
}

impl AppState {
    /// No I/O: without [`Progress::spawn_listener`] running, `min_version`
    /// waits poll.
    pub fn new(pool: PgPool, progress: Progress) -> Self {
        AppState {
            pool,
            progress,
            request_timeout: Duration::from_secs(15),
            applied_samples: Arc::default(),
        }
    }

    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}
