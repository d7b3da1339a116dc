//! Phase 2: the shadow schema, created (or an interrupted rebuild's
//! resumed), and finished with its secondary indexes and foreign keys when
//! the bulk replay is over (phase 4).

use std::collections::HashSet;

use event_store::Checkpoint;
use sqlx::{Postgres, Transaction};

use super::{Phase, Rebuild, State};
use crate::projector::quote_ident;
use crate::Result;

/// The bookkeeping tables a shadow schema has copies of.
pub(super) const BOOKKEEPING: [&str; 3] = ["applied", "parked", "projection_status"];

impl Rebuild {
    /// Resumes the rebuild in progress, or creates the shadow schema.
    pub(super) async fn prepare(&self) -> Result<State> {
        let row: Option<(String, i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT phase, transaction_id::text::bigint, position, events_done, last_position \
             FROM read_models.rebuilds WHERE projection = $1",
        )
        // Run rarely: unprepared (ARCHITECTURE.md, Invariants).
        .persistent(false)
        .bind(self.name())
        .fetch_optional(self.pool())
        .await?;
        let schema_exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&self.schema)
                .fetch_one(self.pool())
                .await?;
        if let (Some((phase, transaction_id, position, done, last_position)), true, false) =
            (row, schema_exists, self.options.restart)
        {
            let stale = self.stale_shadow_tables().await?;
            if !stale.is_empty() {
                return Err(self.unsupported(format!(
                    "the interrupted rebuild's shadow tables ({}) predate a migration that \
                     changed them; start over with --restart",
                    stale.join(", ")
                )));
            }
            let state = State {
                phase: if phase == "catch_up" {
                    Phase::CatchUp
                } else {
                    Phase::Replay
                },
                checkpoint: Checkpoint {
                    transaction_id: u64::try_from(transaction_id).unwrap_or_default(),
                    position,
                },
                events_done: u64::try_from(done).unwrap_or_default(),
                last_position,
            };
            tracing::info!(
                projection = self.name(),
                events_done = state.events_done,
                phase = state.phase.as_str(),
                "resuming an interrupted rebuild"
            );
            return Ok(state);
        }

        let mut tx = self.pool().begin().await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.shadow))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM read_models.rebuilds WHERE projection = $1")
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
        self.create_shadow(&mut tx).await?;
        sqlx::query("INSERT INTO read_models.rebuilds (projection, shadow_schema) VALUES ($1, $2)")
            .bind(self.name())
            .bind(&self.schema)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(
            projection = self.name(),
            schema = %self.schema,
            "rebuild started"
        );
        Ok(State {
            phase: Phase::Replay,
            checkpoint: Checkpoint::START,
            events_done: 0,
            last_position: 0,
        })
    }

    /// The tables of the shadow schema whose columns differ from those of
    /// their `read_models` counterparts: a migration changed them since the
    /// rebuild started, so what it wrote cannot be swapped in.
    async fn stale_shadow_tables(&self) -> Result<Vec<String>> {
        let tables: Vec<&str> = BOOKKEEPING
            .iter()
            .copied()
            .chain(self.projection.tables().iter().map(|t| t.name))
            .collect();
        Ok(sqlx::query_scalar(
            "WITH columns AS ( \
                SELECT t, s, (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) \
                                               ORDER BY attnum) \
                              FROM pg_attribute \
                              WHERE attrelid = to_regclass(quote_ident(s) || '.' || quote_ident(t)) \
                                AND attnum > 0 AND NOT attisdropped) AS c \
                FROM unnest($1::text[]) AS t, unnest(ARRAY['read_models', $2]) AS s) \
             SELECT live.t FROM columns AS live JOIN columns AS shadow ON shadow.t = live.t \
             WHERE live.s = 'read_models' AND shadow.s = $2 AND live.c IS DISTINCT FROM shadow.c \
             ORDER BY 1",
        )
        .bind(&tables)
        .bind(&self.schema)
        .fetch_all(self.pool())
        .await?)
    }

    /// The shadow schema: the bookkeeping tables, and the projection's tables
    /// with their columns, defaults, checks and primary or unique keys.
    /// Secondary indexes and foreign keys come after the bulk replay.
    async fn create_shadow(&self, tx: &mut Transaction<'_, Postgres>) -> Result<()> {
        let s = &self.shadow;
        sqlx::query(&format!("CREATE SCHEMA {s}"))
            .execute(&mut **tx)
            .await?;
        for table in BOOKKEEPING {
            sqlx::query(&format!(
                "CREATE TABLE {s}.{table} (LIKE read_models.{table} INCLUDING ALL)"
            ))
            .execute(&mut **tx)
            .await?;
        }
        for table in self.projection.tables() {
            let t = quote_ident(table.name);
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(format!("read_models.{t}"))
                .fetch_one(&mut **tx)
                .await?;
            if !exists {
                return Err(
                    self.unsupported(format!("table read_models.{} does not exist", table.name))
                );
            }
            sqlx::query(&format!(
                "CREATE TABLE {s}.{t} (LIKE read_models.{t} INCLUDING ALL EXCLUDING INDEXES)"
            ))
            .execute(&mut **tx)
            .await?;
            let keys: Vec<(String, String)> = sqlx::query_as(
                "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
                 WHERE conrelid = $1::regclass AND contype IN ('p', 'u', 'x') ORDER BY conname",
            )
            .bind(format!("read_models.{t}"))
            .fetch_all(&mut **tx)
            .await?;
            for (name, definition) in keys {
                sqlx::query(&format!(
                    "ALTER TABLE {s}.{t} ADD CONSTRAINT {} {definition}",
                    quote_ident(&name)
                ))
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// The shadow tables' secondary indexes and foreign keys, named as in
    /// `read_models`.
    pub(super) async fn finish_shadow(&self, tx: &mut Transaction<'_, Postgres>) -> Result<()> {
        let s = &self.shadow;
        let own: HashSet<&str> = self.projection.tables().iter().map(|t| t.name).collect();
        // With `read_models` as search_path, definitions name its tables
        // unqualified; they are executed with the shadow schema's.
        sqlx::query("SELECT set_config('search_path', 'read_models', true)")
            .execute(&mut **tx)
            .await?;
        let mut statements = Vec::new();
        for table in self.projection.tables() {
            let t = quote_ident(table.name);
            let regclass = format!("read_models.{t}");
            let indexes: Vec<(String, bool, String)> = sqlx::query_as(
                "SELECT i.relname::text, x.indisunique, pg_get_indexdef(x.indexrelid) \
                 FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid \
                 WHERE x.indrelid = $1::regclass \
                   AND NOT EXISTS (SELECT 1 FROM pg_constraint c \
                                   WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid \
                                     AND c.contype IN ('p', 'u', 'x')) \
                 ORDER BY 1",
            )
            .bind(&regclass)
            .fetch_all(&mut **tx)
            .await?;
            for (name, unique, definition) in indexes {
                let Some((_, method)) = definition.split_once(" USING ") else {
                    return Err(self.unsupported(format!("index {name}: {definition}")));
                };
                statements.push(format!(
                    "CREATE {}INDEX {} ON {s}.{t} USING {method}",
                    if unique { "UNIQUE " } else { "" },
                    quote_ident(&name)
                ));
            }
            let foreign: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT conname::text, pg_get_constraintdef(oid), \
                        (SELECT relname::text FROM pg_class WHERE oid = confrelid) \
                 FROM pg_constraint WHERE conrelid = $1::regclass AND contype = 'f' ORDER BY 1",
            )
            .bind(&regclass)
            .fetch_all(&mut **tx)
            .await?;
            for (name, definition, target) in foreign {
                if !own.contains(target.as_str()) {
                    return Err(self.unsupported(format!(
                        "foreign key {name} of {} points to {target}, a table of another projection",
                        table.name
                    )));
                }
                statements.push(format!(
                    "ALTER TABLE {s}.{t} ADD CONSTRAINT {} {definition}",
                    quote_ident(&name)
                ));
            }
        }
        sqlx::query("SELECT set_config('search_path', $1, true)")
            .bind(s)
            .execute(&mut **tx)
            .await?;
        for statement in statements {
            sqlx::query(&statement).execute(&mut **tx).await?;
        }
        Ok(())
    }
}
