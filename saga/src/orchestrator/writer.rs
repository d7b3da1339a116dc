//! The orchestrator's commands to items, accounts and orders, serialised per
//! stream within the process: the sagas of one hot item queue for it here,
//! one command at a time, instead of colliding on its next version and
//! deciding again (across processes, the store's version check stays the
//! guard). Each command first decides on the state the previous one left
//! (the append at its version proves it current; else the repository reads
//! afresh), so a queue of sagas on one item reads the item's stream once.

use domain::Aggregate;
use event_store::{
    ExecuteError, ExecuteOptions, Executed, Loaded, Outcome, Repository, StreamId, StreamLocks,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(super) struct Writer<A: Aggregate> {
    repository: Repository<A>,
    /// Per stream: a place in the queue, and the state the last command left.
    locks: StreamLocks<Loaded<A>>,
}

impl<A: Aggregate> Writer<A> {
    /// `remember`: how many streams' states each of the 1,024 stripes keeps.
    pub(super) fn new(repository: Repository<A>, remember: usize) -> Self {
        Writer {
            repository,
            locks: StreamLocks::new(remember),
        }
    }

    pub(super) fn repository(&self) -> &Repository<A> {
        &self.repository
    }

    /// Waits for the turn of aggregate `id` in this process, for a caller
    /// that loads, decides and appends itself (a step in one transaction),
    /// holding it until its commit. What the last command left is
    /// forgotten: that caller's append moves the stream on.
    pub(super) async fn turn(&self, id: &str) -> Box<dyn Send + '_> {
        let stream = StreamId::of::<A>(id);
        let mut stripe = self.locks.lock(stream.as_str()).await;
        stripe.remove(stream.as_str());
        Box::new(stripe)
    }

    /// [`Repository::execute`], once the stream's turn in this process has
    /// come.
    pub(super) async fn execute<R>(
        &self,
        id: &str,
        command: &A::Command,
        options: ExecuteOptions,
        record: impl Fn(Result<&Outcome<A>, &A::Error>) -> R + Send + Sync,
    ) -> Result<Executed<A, R>, ExecuteError<A::Error>>
    where
        R: Serialize + DeserializeOwned + Send,
    {
        let stream = StreamId::of::<A>(id);
        let mut stripe = self.locks.lock(stream.as_str()).await;
        let known = stripe.get(stream.as_str()).cloned();
        let result = self
            .repository
            .execute_from(known, id, command, options, record)
            .await;
        match &result {
            Ok(Executed::Done(outcome)) => stripe.insert(
                stream.as_str(),
                Loaded {
                    state: outcome.state.clone(),
                    version: outcome.version,
                    position: outcome.position,
                },
            ),
            // Decided on a fresh read, or not at all: what it read is not
            // at hand, so the next command reads afresh.
            _ => stripe.remove(stream.as_str()),
        }
        result
    }
}
