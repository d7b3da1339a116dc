//! Waiting for asynchronous work the way tests do: a condition checked
//! against a deadline, never a bare sleep.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Waits for a condition: calls `probe` every `every` until it returns
/// `Ok`, and returns that. A probe answers `Err(what it saw)` while the
/// condition does not hold yet; once `within` has passed, the wait panics
/// with `what` and the last thing seen.
///
/// # Panics
/// When the condition does not hold within `within`.
pub async fn eventually<T, E, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: F,
) -> T
where
    E: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {seen:?}"
            ),
        }
        tokio::time::sleep(every).await;
    }
}

/// [`eventually`] for a yes/no condition, checked every 20 ms.
///
/// # Panics
/// When the condition does not hold within `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, within, Duration::from_millis(20), || {
        let holds = condition();
        async move {
            if holds.await {
                Ok(())
            } else {
                Err("not yet")
            }
        }
    })
    .await;
}

/// A point in time after which a loop waiting for a condition gives up, for
/// waits that carry state from one check to the next.
#[derive(Debug)]
pub struct Deadline {
    end: Instant,
    what: &'static str,
}

impl Deadline {
    pub fn after(duration: Duration, what: &'static str) -> Self {
        Deadline {
            end: Instant::now() + duration,
            what,
        }
    }

    /// Panics once the deadline passed; otherwise pauses briefly before the
    /// caller checks its condition again.
    ///
    /// # Panics
    /// When the deadline passed.
    pub async fn tick(&self) {
        assert!(
            Instant::now() < self.end,
            "timed out waiting for {}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of environment variable `name` parsed, or `default` when it
/// is unset or does not parse: how benchmarks take their knobs.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Logs go to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::eventually;

    #[tokio::test]
    async fn eventually_returns_once_the_probe_holds() {
        let calls = AtomicU32::new(0);
        let n = eventually(
            "three calls",
            Duration::from_secs(5),
            Duration::ZERO,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(n)
                }
            },
        )
        .await;
        assert_eq!(n, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: not within 50ms; last seen: \"no\"")]
    async fn eventually_panics_with_what_it_last_saw() {
        eventually(
            "never",
            Duration::from_millis(50),
            Duration::from_millis(5),
            || async { Err::<(), _>("no") },
        )
        .await;
    }
}
