//! `accounts`: one row per bank account, and its transaction ledger.

use async_trait::async_trait;
use domain::{AccountEvent, Aggregate, BankAccount};
use event_store::RecordedEvent;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::projection::{expect_one_row, stream_uuid, version_i64};
use crate::{ApplyError, Projection};

/// Builds `read_models.accounts` and `read_models.account_transactions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts;

impl Accounts {
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

    async fn apply(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let account_id = stream_uuid(event)?;
        let version = version_i64(event)?;
        let entry = |kind, amount: i64, balance_after: i64, order_id: Option<Uuid>| LedgerEntry {
            account_id,
            seq: version,
            kind,
            amount,
            balance_after,
            order_id,
        };
        match event.decode::<AccountEvent>()? {
            AccountEvent::AccountOpened {
                account_id: opened,
                customer_id,
                currency,
            } => {
                if opened.as_uuid() != account_id {
                    return Err(ApplyError::Invalid(format!(
                        "AccountOpened for {opened} in stream {}",
                        event.stream_id
                    )));
                }
                let result = sqlx::query(
                    "INSERT INTO read_models.accounts \
                        (account_id, customer_id, currency, balance, status, version, updated_at) \
                     VALUES ($1, $2, $3, 0, 'open', $4, $5) \
                     ON CONFLICT (account_id) DO NOTHING",
                )
                .bind(account_id)
                .bind(customer_id.as_uuid())
                .bind(currency.as_str())
                .bind(version)
                .bind(event.recorded_at)
                .execute(&mut **tx)
                .await?;
                expect_one_row(result, event, "account")
            }
            AccountEvent::MoneyDeposited {
                amount,
                balance_after,
            } => {
                let entry = entry("deposit", i64::from(amount), i64::from(balance_after), None);
                entry.write(tx, event).await
            }
            AccountEvent::MoneyWithdrawn {
                amount,
                balance_after,
            } => {
                let entry = entry(
                    "withdrawal",
                    i64::from(amount),
                    i64::from(balance_after),
                    None,
                );
                entry.write(tx, event).await
            }
            AccountEvent::AccountCharged {
                order_id,
                amount,
                balance_after,
            } => {
                let entry = entry(
                    "charge",
                    i64::from(amount),
                    i64::from(balance_after),
                    Some(order_id.as_uuid()),
                );
                entry.write(tx, event).await
            }
            AccountEvent::ChargeRefunded {
                order_id,
                amount,
                balance_after,
            } => {
                let entry = entry(
                    "refund",
                    i64::from(amount),
                    i64::from(balance_after),
                    Some(order_id.as_uuid()),
                );
                entry.write(tx, event).await
            }
            AccountEvent::AccountClosed => {
                let result = sqlx::query(
                    "UPDATE read_models.accounts \
                     SET status = 'closed', version = $2, updated_at = $3 \
                     WHERE account_id = $1",
                )
                .bind(account_id)
                .bind(version)
                .bind(event.recorded_at)
                .execute(&mut **tx)
                .await?;
                expect_one_row(result, event, "account")
            }
        }
    }
}

/// One balance change: updates the account and appends to its ledger in one
/// statement.
struct LedgerEntry {
    account_id: Uuid,
    seq: i64,
    kind: &'static str,
    amount: i64,
    balance_after: i64,
    order_id: Option<Uuid>,
}

impl LedgerEntry {
    async fn write(
        self,
        tx: &mut Transaction<'_, Postgres>,
        event: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        let result = sqlx::query(
            "WITH account AS ( \
                 UPDATE read_models.accounts \
                 SET balance = $2, version = $3, updated_at = $4 \
                 WHERE account_id = $1 \
                 RETURNING account_id \
             ) \
             INSERT INTO read_models.account_transactions \
                 (account_id, seq, kind, amount, balance_after, order_id, at) \
             SELECT account_id, $3, $5, $6, $2, $7, $4 FROM account",
        )
        .bind(self.account_id)
        .bind(self.balance_after)
        .bind(self.seq)
        .bind(event.recorded_at)
        .bind(self.kind)
        .bind(self.amount)
        .bind(self.order_id)
        .execute(&mut **tx)
        .await?;
        expect_one_row(result, event, "ledger")
    }
}
