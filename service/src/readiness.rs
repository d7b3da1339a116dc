//! Whether the components of one process do their job yet. `purser serve`
//! runs every component in one process and is ready only once each of them
//! is: each gets a [`ReadyFlag`] from the process's [`Readiness`] and sets
//! it when it is (the relay once it knows its role, the projection workers
//! once every projection has caught up with what the store held when they
//! joined their group, the saga orchestrator once it runs), and both APIs'
//! `GET /health/ready` answer 503 naming the components that are not.
//!
//! A component may also show a detail that does not make the process
//! unready ([`Readiness::detail`]): the saga orchestrator shows its carrier
//! circuit breaker's state (`checks.carrier`), as an open breaker stops no
//! order from being taken.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The components of a process and whether each is ready. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    flags: Arc<Mutex<Vec<(&'static str, ReadyFlag)>>>,
    details: Arc<Mutex<Vec<(&'static str, Detail)>>>,
}

/// What a detail shows now.
#[derive(Clone)]
struct Detail(Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Detail")
    }
}

/// One component's readiness: not ready until [`ReadyFlag::set`].
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// A flag of no process's: set or not, nobody looks.
    pub fn detached() -> ReadyFlag {
        ReadyFlag::default()
    }

    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// A component the process is ready only with.
    pub fn register(&self, component: &'static str) -> ReadyFlag {
        let flag = ReadyFlag::default();
        self.flags
            .lock()
            .expect("readiness lock")
            .push((component, flag.clone()));
        flag
    }

    /// Each registered component and whether it is ready, in registration
    /// order.
    pub fn components(&self) -> Vec<(&'static str, bool)> {
        self.flags
            .lock()
            .expect("readiness lock")
            .iter()
            .map(|(name, flag)| (*name, flag.is_set()))
            .collect()
    }

    /// A detail shown by `GET /health/ready` as `checks.{name}`, which
    /// `show` says at each request, ready or not.
    pub fn detail(&self, name: &'static str, show: impl Fn() -> String + Send + Sync + 'static) {
        self.details
            .lock()
            .expect("readiness lock")
            .push((name, Detail(Arc::new(show))));
    }

    /// Each detail and what it shows now, in registration order.
    pub fn details(&self) -> Vec<(&'static str, String)> {
        self.details
            .lock()
            .expect("readiness lock")
            .iter()
            .map(|(name, detail)| (*name, (detail.0)()))
            .collect()
    }

    /// The components not ready yet.
    pub fn pending(&self) -> Vec<&'static str> {
        self.components()
            .into_iter()
            .filter(|(_, ready)| !ready)
            .map(|(name, _)| name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_registered_component_is() {
        let readiness = Readiness::new();
        assert!(readiness.pending().is_empty());
        let relay = readiness.register("relay");
        let workers = readiness.register("projection workers");
        assert_eq!(readiness.pending(), ["relay", "projection workers"]);
        workers.set();
        assert_eq!(readiness.pending(), ["relay"]);
        relay.clone().set();
        assert!(readiness.pending().is_empty());
        assert_eq!(
            readiness.components(),
            [("relay", true), ("projection workers", true)]
        );
        readiness.detail("carrier", || "open".to_owned());
        assert_eq!(readiness.details(), [("carrier", "open".to_owned())]);
        assert!(readiness.pending().is_empty());
    }
}
