//! The shape of every long-running part of `purser` (the two HTTP APIs, the
//! relay, the projection workers, the saga orchestrator): built from its
//! configuration and the process's pool (binding its address, if it has
//! one), then run until the process's shutdown token is cancelled, finishing
//! its work in flight. None of them connects, migrates or listens for
//! signals: the process does that once.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;

/// An error of any component.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A built component, ready to run.
pub trait Component: Send + 'static {
    type Error: Into<BoxError> + Send;

    /// What logs and errors call it (`command API`, `relay`...).
    fn name(&self) -> &'static str;

    /// Runs until `shutdown` is cancelled, then finishes the work in flight
    /// and returns; or returns early with the error that stopped it.
    fn run(
        self,
        shutdown: CancellationToken,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The component that stopped the others, and why.
#[derive(Debug, thiserror::Error)]
#[error("{component} failed")]
pub struct Stopped {
    pub component: &'static str,
    #[source]
    pub source: BoxError,
}

/// Components running as tasks of their own (so the runtime's worker threads
/// share their work), watching one shutdown token. The first to fail (or
/// panic) cancels the token: the others finish their work in flight and
/// stop.
pub struct Components {
    shutdown: CancellationToken,
    tasks: JoinSet<Result<(), BoxError>>,
    names: HashMap<Id, &'static str>,
}

impl Components {
    pub fn new(shutdown: CancellationToken) -> Components {
        Components {
            shutdown,
            tasks: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// Starts `component` in a task of its own.
    pub fn spawn(&mut self, component: impl Component) {
        let name = component.name();
        let shutdown = self.shutdown.clone();
        let handle = self
            .tasks
            .spawn(async move { component.run(shutdown).await.map_err(Into::into) });
        self.names.insert(handle.id(), name);
    }

    /// Waits until every component has stopped. The first failure cancels
    /// the shutdown token and is returned once the others have drained.
    pub async fn wait(mut self) -> Result<(), Stopped> {
        let mut first: Option<Stopped> = None;
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let (component, outcome) = match joined {
                Ok((id, outcome)) => (self.name(id), outcome),
                Err(error) => (self.name(error.id()), Err(BoxError::from(error))),
            };
            match outcome {
                Ok(()) => tracing::info!(component, "stopped"),
                Err(source) => {
                    tracing::error!(component, error = %source, "failed; stopping the others");
                    self.shutdown.cancel();
                    if first.is_none() {
                        first = Some(Stopped { component, source });
                    }
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("a component")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Fails at once, or runs until cancelled and records that it drained.
    struct Probe {
        name: &'static str,
        fail: bool,
        drained: Arc<AtomicBool>,
    }

    impl Component for Probe {
        type Error = std::io::Error;

        fn name(&self) -> &'static str {
            self.name
        }

        async fn run(self, shutdown: CancellationToken) -> Result<(), std::io::Error> {
            if self.fail {
                return Err(std::io::Error::other("broken"));
            }
            shutdown.cancelled().await;
            self.drained.store(true, Ordering::SeqCst);
            Ok(())
        }
    }

    fn probe(name: &'static str, fail: bool) -> (Probe, Arc<AtomicBool>) {
        let drained = Arc::new(AtomicBool::new(false));
        let probe = Probe {
            name,
            fail,
            drained: Arc::clone(&drained),
        };
        (probe, drained)
    }

    #[tokio::test]
    async fn the_first_failure_stops_the_others_after_they_drain() {
        let shutdown = CancellationToken::new();
        let mut components = Components::new(shutdown.clone());
        let (steady, drained) = probe("steady", false);
        let (broken, _) = probe("broken", true);
        components.spawn(steady);
        components.spawn(broken);
        let stopped = components.wait().await.expect_err("one failed");
        assert_eq!(stopped.component, "broken");
        assert_eq!(stopped.source.to_string(), "broken");
        assert!(shutdown.is_cancelled());
        assert!(drained.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn cancelling_the_token_stops_every_component_cleanly() {
        let shutdown = CancellationToken::new();
        let mut components = Components::new(shutdown.clone());
        let (a, a_drained) = probe("a", false);
        let (b, b_drained) = probe("b", false);
        components.spawn(a);
        components.spawn(b);
        shutdown.cancel();
        components.wait().await.expect("clean stop");
        assert!(a_drained.load(Ordering::SeqCst) && b_drained.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panic_is_a_failure_that_names_the_component() {
        struct Panics;
        impl Component for Panics {
            type Error = std::io::Error;
            fn name(&self) -> &'static str {
                "panics"
            }
            async fn run(self, _shutdown: CancellationToken) -> Result<(), std::io::Error> {
                panic!("bug")
            }
        }
        let shutdown = CancellationToken::new();
        let mut components = Components::new(shutdown.clone());
        let (steady, drained) = probe("steady", false);
        components.spawn(steady);
        components.spawn(Panics);
        let stopped = components.wait().await.expect_err("it panicked");
        assert_eq!(stopped.component, "panics");
        assert!(drained.load(Ordering::SeqCst));
    }
}
