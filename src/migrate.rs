//! `purser migrate`: applies the pending migrations and prints each one it
//! applied.

use std::collections::HashSet;
use std::time::Instant;

use anyhow::{Context, Result};
use sqlx::migrate::Migrate;

use crate::{db, GlobalArgs};

/// Options of `purser migrate` (none yet besides the global ones).
#[derive(Debug, clap::Args)]
pub struct Args {}

pub async fn run(global: &GlobalArgs, _args: Args) -> Result<()> {
    let pool = db::connect(&global.database_url, 2).await?;
    let server = db::describe(&db::parse_url(&global.database_url)?);

    let already: HashSet<i64> = {
        let mut conn = pool.acquire().await.context("acquiring a connection")?;
        conn.ensure_migrations_table()
            .await
            .context("creating the migrations table")?;
        conn.list_applied_migrations()
            .await
            .context("listing the applied migrations")?
            .into_iter()
            .map(|applied| applied.version)
            .collect()
    };

    let started = Instant::now();
    migrations::MIGRATOR
        .run(&pool)
        .await
        .with_context(|| format!("applying the migrations to {server}"))?;
    let elapsed = started.elapsed();

    let applied: Vec<_> = migrations::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration() && !already.contains(&m.version))
        .collect();
    for m in &applied {
        println!("applied {:04} {}", m.version, m.description);
    }
    let total = migrations::MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .count();
    if applied.is_empty() {
        println!("{server}: up to date ({total} migrations)");
    } else {
        println!(
            "{server}: applied {} of {total} migrations in {} ms",
            applied.len(),
            elapsed.as_millis()
        );
    }
    pool.close().await;
    Ok(())
}
