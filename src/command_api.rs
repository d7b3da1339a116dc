//! `purser command-api`: serves the commands over HTTP.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Options of `purser command-api`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub http: service::HttpConfig,
    #[command(flatten)]
    pub config: ::command_api::Config,
    #[command(flatten)]
    pub auth: ::auth::AuthConfig,
}

/// Binds the Command API's address.
pub async fn build(
    config: &::command_api::Config,
    pool: sqlx::PgPool,
    access: service::auth::Access,
    registry: &service::metrics::Registry,
) -> Result<::command_api::Application> {
    ::command_api::Application::build_in(config, pool, access, registry)
        .await
        .context("starting the command API")
}

/// `purser command-api`: serves until shutdown, then finishes the requests
/// in flight.
pub async fn run(global: &GlobalArgs, args: Args, shutdown: CancellationToken) -> Result<()> {
    // Refused before anything else without a JWKS (unless insecure).
    let access = service::auth::Access::from_config(&args.auth)?;
    let mut config = args.config;
    config.http = args.http;
    let pool = db::open(global, config.db_max_connections).await?;
    let registry = service::metrics::Registry::new();
    crate::metrics::register_pool(&registry, &pool);
    build(&config, pool, access, &registry)
        .await?
        .run(shutdown)
        .await
        .context("serving the command API")
}
