//! Guard of every rebuild transaction: the projection must write its
//! tables unqualified (so, in the shadow schema), never `read_models`'.

use sqlx::PgConnection;

use super::Rebuild;
use crate::{Error, Result};

/// Rows written to each table by this backend and not yet reported to the
/// cumulative statistics, by table oid, with the table's name when it is in
/// `read_models` (but the rebuild's own `rebuilds`). The counts only grow
/// within a transaction, so two readings bracket what it wrote. By oid,
/// because a shadow table written earlier on this connection may have been
/// swapped into `read_models` (by another rebuild) in between.
pub(super) struct Writes(Vec<(i64, Option<String>, i64)>);

impl Writes {
    pub(super) async fn take(tx: &mut PgConnection) -> Result<Writes> {
        Ok(Writes(
            sqlx::query_as(
                "SELECT relid::int8, \
                        CASE WHEN schemaname = 'read_models' AND relname <> 'rebuilds' \
                             THEN relname::text END, \
                        n_tup_ins + n_tup_upd + n_tup_del \
                 FROM pg_stat_xact_user_tables",
            )
            .fetch_all(&mut *tx)
            .await?,
        ))
    }

    /// A table of `read_models` written since `before`.
    fn live_written_since(&self, before: &Writes) -> Option<&str> {
        self.0.iter().find_map(|(oid, name, n)| {
            let name = name.as_deref()?;
            let earlier = before
                .0
                .iter()
                .find(|(o, _, _)| o == oid)
                .map_or(0, |(_, _, n)| *n);
            (earlier < *n).then_some(name)
        })
    }
}

impl Rebuild {
    /// Fails if the transaction wrote to a table of `read_models` since
    /// `before` was taken: the projection names a table qualified, bypassing
    /// the shadow schema.
    pub(super) async fn check_live_untouched(
        &self,
        tx: &mut PgConnection,
        before: &Writes,
    ) -> Result<()> {
        let after = Writes::take(tx).await?;
        match after.live_written_since(before) {
            Some(table) => Err(Error::WritesLiveTables {
                projection: self.name().to_owned(),
                table: table.to_owned(),
            }),
            None => Ok(()),
        }
    }
}
