//! Purser's components in this process under one shutdown token: the
//! Command and Query APIs on port 0, the relay, the projection workers, the
//! saga orchestrator. A test starts the ones it needs and stops them all at
//! once.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use event_store::EventStore;
use kafka::KafkaConfig;
use projections::WorkerConfig;
use saga::{SagaConfig, SagaMetrics, SimulatedCarrier};
use service::auth::Access;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::Client;

/// How long a component may take to stop.
const STOP_WITHIN: Duration = Duration::from_secs(30);

/// Components running until [`Pipeline::stop`].
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Cancelled by [`Pipeline::stop`]; components started by hand take a
    /// child of it.
    pub shutdown: CancellationToken,
    tasks: Vec<(String, JoinHandle<Result<(), String>>)>,
}

impl Pipeline {
    pub fn new() -> Pipeline {
        Pipeline::default()
    }

    /// Runs `component` until the pipeline stops; [`Pipeline::stop`] then
    /// asserts it ended without an error.
    pub fn spawn<E: Display>(
        &mut self,
        name: &str,
        component: impl Future<Output = Result<(), E>> + Send + 'static,
    ) {
        let task = tokio::spawn(async move { component.await.map_err(|e| e.to_string()) });
        self.tasks.push((name.to_owned(), task));
    }

    /// The relay, from `store` to the topics of `kafka`.
    pub fn relay(&mut self, store: &EventStore, kafka: &KafkaConfig) {
        let relay = kafka::Relay::new(store.clone(), kafka.clone()).expect("relay");
        self.spawn("relay", relay.run(self.shutdown.clone()));
    }

    /// A worker per projection, polling every 200 ms, in batches of
    /// `batch_size` (the default when `None`).
    pub fn workers(&mut self, store: &EventStore, kafka: &KafkaConfig, batch_size: Option<usize>) {
        let mut config = WorkerConfig {
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        };
        if let Some(batch_size) = batch_size {
            config.batch_size = batch_size;
        }
        let (store, kafka, shutdown) = (store.clone(), kafka.clone(), self.shutdown.clone());
        self.spawn("projection workers", async move {
            projections::run_workers(&[], store, &kafka, config, shutdown).await
        });
    }

    /// The saga orchestrator (trigger and driver) with `carrier`.
    pub fn saga(&mut self, store: &EventStore, config: SagaConfig, carrier: SimulatedCarrier) {
        let (store, shutdown) = (store.clone(), self.shutdown.clone());
        self.spawn("saga", async move {
            saga::run(
                store,
                config,
                Arc::new(carrier),
                Arc::new(SagaMetrics::new()),
                shutdown,
            )
            .await
        });
    }

    /// The Command API on 127.0.0.1:0 over `pool`, without authentication;
    /// a client of it.
    pub async fn command_api(&mut self, pool: &PgPool) -> Client {
        let config = command_api::Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..command_api::Config::default()
        };
        let application =
            command_api::Application::build(&config, pool.clone(), Access::insecure())
                .await
                .expect("command API binds");
        let client = Client::new(application.address());
        let shutdown = self.shutdown.clone();
        self.spawn("command API", application.run(shutdown));
        client
    }

    /// The Query API on 127.0.0.1:0 over `pool`, without authentication; a
    /// client of it.
    pub async fn query_api(&mut self, pool: &PgPool) -> Client {
        let config = query_api::QueryApiConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..query_api::QueryApiConfig::default()
        };
        let application = query_api::Application::build(&config, pool.clone(), Access::insecure())
            .await
            .expect("query API binds");
        let client = Client::new(application.address());
        self.spawn("query API", application.run(self.shutdown.clone()));
        client
    }

    /// Cancels every component and waits for each; asserts each ended
    /// without an error.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for (name, task) in self.tasks {
            let result = tokio::time::timeout(STOP_WITHIN, task)
                .await
                .unwrap_or_else(|_| panic!("{name} did not stop within {STOP_WITHIN:?}"))
                .unwrap_or_else(|e| panic!("{name} panicked: {e}"));
            if let Err(error) = result {
                panic!("{name} failed: {error}");
            }
        }
    }

    /// Cancels every component and gives each `within` to stop, whatever
    /// it returns (for tests that take the broker away).
    pub async fn stop_whatever_happened(self, within: Duration) {
        self.shutdown.cancel();
        for (_, task) in self.tasks {
            let _ = tokio::time::timeout(within, task).await;
        }
    }
}
