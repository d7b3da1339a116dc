//! `purser query-api`: serves the read models over HTTP.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

use crate::{db, GlobalArgs};

/// Connections the Query API uses.
pub const POOL_SIZE: u32 = ::query_api::config::POOL_SIZE;

/// Options of `purser query-api`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub http: service::HttpConfig,
    #[command(flatten)]
    pub config: ::query_api::QueryApiConfig,
    #[command(flatten)]
    pub auth: ::auth::AuthConfig,
}

/// Binds the Query API's address.
pub async fn build(
    config: &::query_api::QueryApiConfig,
    pool: sqlx::PgPool,
    access: service::auth::Access,
    registry: &service::metrics::Registry,
) -> Result<::query_api::Application> {
    ::query_api::Application::build_in(config, pool, access, registry)
        .await
        .with_context(|| format!("binding the query API to {}", config.addr))
}

/// `purser query-api`: serves until shutdown, then finishes the requests in
/// flight.
pub async fn run(global: &GlobalArgs, args: Args, shutdown: CancellationToken) -> Result<()> {
    // Refused before anything else without a JWKS (unless insecure).
    let access = service::auth::Access::from_config(&args.auth)?;
    let mut config = args.config;
    config.http = args.http;
    let pool = db::open(global, POOL_SIZE).await?;
    let registry = service::metrics::Registry::new();
    crate::metrics::register_pool(&registry, &pool);
    build(&config, pool, access, &registry)
        .await?
        .run(shutdown)
        .await
        .context("serving the query API")
}
