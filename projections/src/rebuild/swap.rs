//! Phase 5: the swap, in one transaction under the projection's apply lock
//! (the live workers of the projection pause; other projections and the
//! Query API go on): the last events of the log, what the live workers got
//! further in than the shadow, then the shadow's bookkeeping, grants, owners
//! and tables replace the live ones.

use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};

use super::writes::Writes;
use super::{Rebuild, State, CATCH_UP_BATCH};
use crate::projector::{parse_stream_id, quote_ident};
use crate::{Error, Projector, Result, APPLY_LOCK, NOTIFY_CHANNEL};

/// How many times the swap is tried when it cannot get its locks within
/// [`SWAP_LOCK_TIMEOUT`] (a long query holding a read-model table).
const SWAP_ATTEMPTS: u32 = 5;
const SWAP_LOCK_TIMEOUT: &str = "5s";

/// The bookkeeping tables the swap replaces a projection's rows of, with
/// their columns.
const BOOKKEEPING_COLUMNS: [(&str, &str); 3] = [
    ("applied", "projection, stream_id, version, base"),
    (
        "parked",
        "projection, stream_id, version, event_id, error, attempts, parked_at",
    ),
    (
        "projection_status",
        "projection, last_position, last_transaction_id, events_applied, updated_at, \
         replayed_transaction_id, replayed_position, replayed_events",
    ),
];

impl Rebuild {
    /// Phase 5, retried when its locks are not granted in time.
    pub(super) async fn swap(&self, state: &mut State) -> Result<()> {
        let mut attempt = 1;
        loop {
            match self.try_swap(state).await {
                Err(Error::Database(sqlx::Error::Database(e)))
                    if e.code().as_deref() == Some("55P03") && attempt < SWAP_ATTEMPTS =>
                {
                    tracing::warn!(projection = self.name(), attempt, error = %e, "swap could not take its locks; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// One attempt at the swap: everything in one transaction, adopted as
    /// `state` once it commits.
    async fn try_swap(&self, state: &mut State) -> Result<()> {
        let projector = self.projector();
        let mut tx = self.pool().begin().await?;
        self.pause_live_workers(&mut tx).await?;
        let before = Writes::take(&mut tx).await?;
        let next = self.apply_last_events(&mut tx, &projector, state).await?;
        self.apply_what_the_live_workers_applied_beyond(&mut tx, &projector, &next)
            .await?;
        self.check_live_untouched(&mut tx, &before).await?;
        self.replace_bookkeeping(&mut tx).await?;
        let owners = self.carry_grants_over(&mut tx).await?;
        self.move_tables_in(&mut tx, owners).await?;
        self.drop_shadow(&mut tx).await?;
        tx.commit().await?;
        *state = next;
        Ok(())
    }

    /// Takes the projection's apply lock exclusively (within
    /// [`SWAP_LOCK_TIMEOUT`], as every lock of the swap): the live workers
    /// of this projection wait from here on.
    async fn pause_live_workers(&self, tx: &mut PgConnection) -> Result<()> {
        sqlx::query(&format!("SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1), hashtext($2))")
            .bind(APPLY_LOCK)
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }

    /// The last events of the log, from `state`'s checkpoint on; returns the
    /// state after them.
    async fn apply_last_events(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        projector: &Projector,
        state: &State,
    ) -> Result<State> {
        let batch = i64::try_from(self.options.batch_size.min(CATCH_UP_BATCH)).unwrap_or(i64::MAX);
        let mut next = *state;
        loop {
            let events = self
                .store
                .read_all_of_types(next.checkpoint, self.types, batch)
                .await?;
            if events.is_empty() {
                break;
            }
            projector.apply_batch_in(tx, &events).await?;
            next = self.advance(tx, &next, &events).await?;
            if (events.len() as i64) < batch {
                break;
            }
        }
        Ok(next)
    }

    /// Streams the live workers got further in than the shadow: one with a
    /// row in the shadow (parked there, unparked live, or met in catch-up)
    /// the live row passes, or one the live workers applied an event of
    /// that the gap-safe read does not show yet (beyond the shadow's
    /// checkpoint in `next`); everything else up to that checkpoint the
    /// shadow holds. Their events beyond the shadow's version are applied
    /// to the shadow, so it holds everything the live tables hold.
    async fn apply_what_the_live_workers_applied_beyond(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        projector: &Projector,
        next: &State,
    ) -> Result<()> {
        let s = &self.shadow;
        // With the version the shadow has of each.
        let behind: Vec<(String, i64)> = sqlx::query_as(&format!(
            "SELECT l.stream_id, s.version FROM {s}.applied AS s \
             JOIN read_models.applied AS l ON l.projection = s.projection AND l.stream_id = s.stream_id \
             WHERE s.projection = $1 AND l.version > s.version \
             UNION \
             SELECT l.stream_id, \
                    (SELECT coalesce(max(f.version), 0) FROM event_store.events AS f \
                     JOIN {s}.projection_status AS st ON st.projection = $1 \
                      AND (f.transaction_id, f.position) \
                          <= (st.replayed_transaction_id, st.replayed_position) \
                     WHERE f.stream_id = l.stream_id) \
             FROM event_store.events AS e \
             JOIN read_models.applied AS l \
               ON l.projection = $1 AND l.stream_id = e.stream_id AND l.version >= e.version \
             WHERE e.stream_type = ANY($2) AND (e.transaction_id, e.position) > ($3::text::xid8, $4) \
               AND NOT EXISTS (SELECT 1 FROM {s}.applied AS s \
                               WHERE s.projection = $1 AND s.stream_id = e.stream_id)"
        ))
        .bind(self.name())
        .bind(self.types)
        .bind(next.checkpoint.transaction_id.to_string())
        .bind(next.checkpoint.position)
        .fetch_all(&mut **tx)
        .await?;
        if behind.is_empty() {
            return Ok(());
        }
        let mut events = Vec::new();
        for (stream_id, version) in &behind {
            let Some(stream) = parse_stream_id(stream_id, self.types) else {
                continue;
            };
            let from = u64::try_from(*version).unwrap_or_default() + 1;
            events.extend(self.store.read_stream(&stream, from).await?);
        }
        tracing::info!(
            projection = self.name(),
            streams = behind.len(),
            events = events.len(),
            "applying to the shadow what the live workers applied beyond it"
        );
        projector.apply_batch_in(tx, &events).await?;
        Ok(())
    }

    /// The shadow's bookkeeping rows (`applied`, `parked`,
    /// `projection_status`) replace the projection's live ones.
    async fn replace_bookkeeping(&self, tx: &mut PgConnection) -> Result<()> {
        let s = &self.shadow;
        for (table, columns) in BOOKKEEPING_COLUMNS {
            sqlx::query(&format!(
                "DELETE FROM read_models.{table} WHERE projection = $1"
            ))
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
            sqlx::query(&format!(
                "INSERT INTO read_models.{table} ({columns}) SELECT {columns} FROM {s}.{table} \
                 WHERE projection = $1"
            ))
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }

    /// Grants on the live tables carry over to the shadow ones (a Query API
    /// running as a role that may only read them goes on reading). Returns
    /// each table with its live owner (quoted) when that is not the role
    /// rebuilding, for [`Rebuild::move_tables_in`] to hand the new table to.
    async fn carry_grants_over(
        &self,
        tx: &mut PgConnection,
    ) -> Result<Vec<(&'static str, Option<String>)>> {
        let s = &self.shadow;
        let mut owners = Vec::new();
        for table in self.projection.tables() {
            let live_table = format!("read_models.{}", quote_ident(table.name));
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT quote_ident(pg_get_userbyid(relowner)) FROM pg_class \
                 WHERE oid = $1::regclass AND pg_get_userbyid(relowner) <> current_user",
            )
            .bind(&live_table)
            .fetch_optional(&mut *tx)
            .await?;
            owners.push((table.name, owner));
            let shadow_table = format!("{s}.{}", quote_ident(table.name));
            let grants: Vec<String> = sqlx::query_scalar(
                "SELECT format('GRANT %s ON %s TO %s%s', a.privilege_type, $2::text, \
                        CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END, \
                        CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END) \
                 FROM pg_class AS c CROSS JOIN LATERAL aclexplode(c.relacl) AS a \
                 LEFT JOIN pg_roles AS r ON r.oid = a.grantee \
                 WHERE c.oid = $1::regclass AND a.grantee <> c.relowner \
                 ORDER BY 1",
            )
            .bind(&live_table)
            .bind(&shadow_table)
            .fetch_all(&mut *tx)
            .await?;
            for grant in grants {
                sqlx::query(&grant).execute(&mut *tx).await?;
            }
        }
        Ok(owners)
    }

    /// Drops the live tables and moves the shadow tables into `read_models`,
    /// given to the live tables' `owners`. From here to the commit the Query
    /// API's reads of them wait.
    async fn move_tables_in(
        &self,
        tx: &mut PgConnection,
        owners: Vec<(&'static str, Option<String>)>,
    ) -> Result<()> {
        let s = &self.shadow;
        for table in self.projection.tables().iter().rev() {
            sqlx::query(&format!(
                "DROP TABLE read_models.{}",
                quote_ident(table.name)
            ))
            .execute(&mut *tx)
            .await?;
        }
        for table in self.projection.tables() {
            sqlx::query(&format!(
                "ALTER TABLE {s}.{} SET SCHEMA read_models",
                quote_ident(table.name)
            ))
            .execute(&mut *tx)
            .await?;
        }
        for (table, owner) in owners {
            if let Some(owner) = owner {
                sqlx::query(&format!(
                    "ALTER TABLE read_models.{} OWNER TO {owner}",
                    quote_ident(table)
                ))
                .execute(&mut *tx)
                .await?;
            }
        }
        Ok(())
    }

    /// Drops the (now empty of read-model tables) shadow schema and the
    /// projection's `rebuilds` row, and notifies the swap (delivered on
    /// commit).
    async fn drop_shadow(&self, tx: &mut PgConnection) -> Result<()> {
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.shadow))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM read_models.rebuilds WHERE projection = $1")
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(self.name())
            .execute(&mut *tx)
            .await?;
        Ok(())
    }
}
