//! `accounts`: one row per bank account, and its transaction ledger.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{AccountEvent, Aggregate, BankAccount};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::projection::{expect_rows, stream_uuid, version_i64};
use crate::{ApplyError, Projection, Table};

/// Builds `read_models.accounts` and `read_models.account_transactions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts;

impl Accounts {
    /// The projection's name, `accounts`.
    pub const NAME: &'static str = "accounts";
}

#[async_trait]
impl Projection for Accounts {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn stream_types(&self) -> &'static [&'static str] {
        &[BankAccount::STREAM_TYPE]
    }

    fn tables(&self) -> &'static [Table] {
        &[
            Table {
                name: "accounts",
                stream_key: "account_id",
            },
            Table {
                name: "account_transactions",
                stream_key: "account_id",
            },
        ]
    }

    /// Set-based: one INSERT for the accounts opened, one UPDATE for the
    /// final state of every account touched and one INSERT for every ledger
    /// entry, whatever the number of events.
    async fn apply_many(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        streams: &[&[&RecordedEvent]],
    ) -> Result<(), ApplyError> {
        let mut opened = Opened::default();
        let mut ledger = Ledger::default();
        let mut last = Last::default();
        for events in streams {
            let Some(newest) = events.last() else {
                continue;
            };
            let account_id = stream_uuid(newest)?;
            let mut balance = None;
            let mut closed = false;
            for event in events.iter() {
                let version = version_i64(event)?;
                let mut entry = |kind, amount: i64, balance_after: i64, order_id: Option<Uuid>| {
                    ledger.push(
                        account_id,
                        version,
                        kind,
                        amount,
                        balance_after,
                        order_id,
                        event,
                    );
                    balance = Some(balance_after);
                };
                match event.decode::<AccountEvent>()? {
                    AccountEvent::AccountOpened {
                        account_id: id,
                        customer_id,
                        currency,
                    } => {
                        if id.as_uuid() != account_id {
                            return Err(ApplyError::Invalid(format!(
                                "AccountOpened for {id} in stream {}",
                                event.stream_id
                            )));
                        }
                        opened.ids.push(account_id);
                        opened.customers.push(customer_id.as_uuid());
                        opened.currencies.push(currency.as_str().to_owned());
                        opened.versions.push(version);
                        opened.at.push(event.recorded_at);
                    }
                    AccountEvent::MoneyDeposited {
                        amount,
                        balance_after,
                    } => {
                        entry("deposit", i64::from(amount), i64::from(balance_after), None);
                    }
                    AccountEvent::MoneyWithdrawn {
                        amount,
                        balance_after,
                    } => {
                        entry(
                            "withdrawal",
                            i64::from(amount),
                            i64::from(balance_after),
                            None,
                        );
                    }
                    AccountEvent::AccountCharged {
                        order_id,
                        amount,
                        balance_after,
                    } => entry(
                        "charge",
                        i64::from(amount),
                        i64::from(balance_after),
                        Some(order_id.as_uuid()),
                    ),
                    AccountEvent::ChargeRefunded {
                        order_id,
                        amount,
                        balance_after,
                    } => entry(
                        "refund",
                        i64::from(amount),
                        i64::from(balance_after),
                        Some(order_id.as_uuid()),
                    ),
                    AccountEvent::AccountClosed => closed = true,
                }
            }
            last.ids.push(account_id);
            last.balances.push(balance);
            last.statuses.push(closed.then(|| "closed".to_owned()));
            last.versions.push(version_i64(newest)?);
            last.at.push(newest.recorded_at);
        }

        if !opened.ids.is_empty() {
            let result = sqlx::query(
                "INSERT INTO accounts \
                    (account_id, customer_id, currency, balance, status, version, updated_at) \
                 SELECT a, c, cur, 0, 'open', v, t \
                 FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::timestamptz[]) \
                    AS o (a, c, cur, v, t) \
                 ON CONFLICT (account_id) DO NOTHING",
            )
            .bind(&opened.ids)
            .bind(&opened.customers)
            .bind(&opened.currencies)
            .bind(&opened.versions)
            .bind(&opened.at)
            .execute(&mut **tx)
            .await?;
            expect_rows(result.rows_affected(), opened.ids.len(), "account", streams)?;
        }
        if !last.ids.is_empty() {
            let result = sqlx::query(
                "UPDATE accounts AS a \
                 SET balance = coalesce(l.balance, a.balance), status = coalesce(l.status, a.status), \
                     version = l.version, updated_at = l.at \
                 FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], $5::timestamptz[]) \
                    AS l (account_id, balance, status, version, at) \
                 WHERE a.account_id = l.account_id",
            )
            .bind(&last.ids)
            .bind(&last.balances)
            .bind(&last.statuses)
            .bind(&last.versions)
            .bind(&last.at)
            .execute(&mut **tx)
            .await?;
            expect_rows(result.rows_affected(), last.ids.len(), "account", streams)?;
        }
        if !ledger.ids.is_empty() {
            // The accounts are all there: the UPDATE above found them.
            sqlx::query(
                "INSERT INTO account_transactions \
                    (account_id, seq, kind, amount, balance_after, order_id, at) \
                 SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[], $4::bigint[], \
                                      $5::bigint[], $6::uuid[], $7::timestamptz[])",
            )
            .bind(&ledger.ids)
            .bind(&ledger.seqs)
            .bind(&ledger.kinds)
            .bind(&ledger.amounts)
            .bind(&ledger.balances)
            .bind(&ledger.orders)
            .bind(&ledger.at)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Columns of the accounts opened by a batch.
#[derive(Default)]
struct Opened {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    currencies: Vec<String>,
    versions: Vec<i64>,
    at: Vec<DateTime<Utc>>,
}

/// Columns of the ledger entries of a batch.
#[derive(Default)]
struct Ledger {
    ids: Vec<Uuid>,
    seqs: Vec<i64>,
    kinds: Vec<&'static str>,
    amounts: Vec<i64>,
    balances: Vec<i64>,
    orders: Vec<Option<Uuid>>,
    at: Vec<DateTime<Utc>>,
}

impl Ledger {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        account_id: Uuid,
        seq: i64,
        kind: &'static str,
        amount: i64,
        balance_after: i64,
        order_id: Option<Uuid>,
        event: &RecordedEvent,
    ) {
        self.ids.push(account_id);
        self.seqs.push(seq);
        self.kinds.push(kind);
        self.amounts.push(amount);
        self.balances.push(balance_after);
        self.orders.push(order_id);
        self.at.push(event.recorded_at);
    }
}

/// The state each account of a batch ends in (`None`: unchanged).
#[derive(Default)]
struct Last {
    ids: Vec<Uuid>,
    balances: Vec<Option<i64>>,
    statuses: Vec<Option<String>>,
    versions: Vec<i64>,
    at: Vec<DateTime<Utc>>,
}
