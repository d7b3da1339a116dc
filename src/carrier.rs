//! `purser carrier`: the simulated carrier as an HTTP server of its own,
//! which `purser serve` and `purser saga` call when given its URL
//! (`PURSER_CARRIER_URL`). It refuses country `XX`, can be slow, fail the
//! first N shipments or hang (the `--carrier-*` options), ships once per
//! idempotency key, and counts what it receives (`GET /stats`).

use std::net::SocketAddr;

use anyhow::{Context, Result};
use service::{Component, Components};
use tokio_util::sync::CancellationToken;

/// Where `purser carrier` listens by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8085";

/// Options of `purser carrier`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the carrier listens (port 0 picks a free one).
    #[arg(long = "addr", env = "PURSER_CARRIER_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub behaviour: ::saga::SimulatedCarrierConfig,
}

/// The simulated carrier's server as a component of the process.
struct Carrier(::saga::CarrierServer);

impl Component for Carrier {
    type Error = std::io::Error;

    fn name(&self) -> &'static str {
        "simulated carrier"
    }

    async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        self.0.run(shutdown).await
    }
}

/// `purser carrier`: serves until stopped. Needs no database.
pub async fn run(args: Args, shutdown: CancellationToken) -> Result<()> {
    let state = ::saga::SimulatorState::new(&args.behaviour);
    let server = ::saga::CarrierServer::bind(args.addr, state)
        .await
        .with_context(|| format!("binding the simulated carrier to {}", args.addr))?;
    let mut components = Components::new(shutdown);
    components.spawn(Carrier(server));
    Ok(components.wait().await?)
}
