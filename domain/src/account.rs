//! The bank account: open, deposit, withdraw, charge for an order, refund
//! that charge, close.
//!
//! Rules: the balance is never negative; a closed account refuses everything;
//! an order is charged at most once (a repeated charge appends nothing) and
//! only to an account of the same customer and currency; a refund returns
//! exactly what that order was charged, once; an account closes only at a
//! zero balance.
//!
//! The state keeps no record of the orders charged, so it does not grow with
//! them: a charge or a refund recalls that one order's past in the stream
//! ([`Aggregate::recall`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::codec;
use crate::values::{AccountId, Amount, Currency, CustomerId, Money, OrderId};
use crate::{Aggregate, DecodeError, DomainError, DomainEvent, ErrorKind};

/// The bank account aggregate. Stream id: `account-{account_id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BankAccount;

/// What may be asked of a [`BankAccount`]. Sums are [`Amount`]s: integer
/// minor units of the account's currency, always `> 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Opens the account with a zero balance. On a stream that already has
    /// an account, open or closed: `account_already_exists`.
    Open {
        /// The account's id; its stream is `account-{account_id}`.
        account_id: AccountId,
        /// Who owns it: only this customer's orders may be charged to it.
        customer_id: CustomerId,
        /// The currency of its balance, for good: only orders in it may be
        /// charged to it.
        currency: Currency,
    },
    /// Pays money in (`balance_overflow` if the balance would pass
    /// [`Money::MAX`]).
    Deposit {
        /// How much, in minor units.
        amount: Amount,
    },
    /// Pays money out (`insufficient_funds` if the balance is smaller: it
    /// never goes negative).
    Withdraw {
        /// How much, in minor units.
        amount: Amount,
    },
    /// Sent by the order saga only. The customer and currency are the
    /// order's, checked against the account's (`customer_mismatch`,
    /// `currency_mismatch`), then the balance (`insufficient_funds`). An
    /// order is charged at most once: charging it again, even after a
    /// refund, appends nothing.
    Charge {
        /// The order paid for.
        order_id: OrderId,
        /// The order's customer.
        customer_id: CustomerId,
        /// The order's currency.
        currency: Currency,
        /// The order's total, in minor units.
        amount: Amount,
    },
    /// Sent by the order saga only: gives back what `order_id` was charged.
    /// An order never charged here is `charge_not_found`; a second refund
    /// appends nothing.
    Refund {
        /// The order whose charge is given back.
        order_id: OrderId,
    },
    /// Closes the account for good, at a zero balance only
    /// (`account_not_empty` otherwise). After it, every command but `Open`
    /// is refused with `account_closed`.
    Close,
}

/// What happened to a [`BankAccount`], as stored. Every event that moves
/// money carries the balance after it, so a reader (a projection, `evolve`)
/// never does arithmetic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event_type")]
pub enum AccountEvent {
    /// The account exists, with a zero balance.
    ///
    /// Schema version 2. Version 1 had no `currency` and meant EUR.
    AccountOpened {
        /// The account's id.
        account_id: AccountId,
        /// Its owner.
        customer_id: CustomerId,
        /// The currency of its balance.
        currency: Currency,
    },
    /// Money was paid in.
    MoneyDeposited {
        /// How much, in minor units.
        amount: Amount,
        /// The balance afterwards, in minor units.
        balance_after: Money,
    },
    /// Money was paid out.
    MoneyWithdrawn {
        /// How much, in minor units.
        amount: Amount,
        /// The balance afterwards, in minor units.
        balance_after: Money,
    },
    /// An order was paid for from the account, by its saga.
    AccountCharged {
        /// The order paid for.
        order_id: OrderId,
        /// What it was charged (its total), in minor units.
        amount: Amount,
        /// The balance afterwards, in minor units.
        balance_after: Money,
    },
    /// An order's charge was given back in full, by its saga compensating.
    ChargeRefunded {
        /// The order whose charge was given back.
        order_id: OrderId,
        /// What was given back: exactly what the order was charged.
        amount: Amount,
        /// The balance afterwards, in minor units.
        balance_after: Money,
    },
    /// The account closed at a zero balance; nothing happens to it after.
    AccountClosed,
}

impl AccountEvent {
    /// Every event type name, in declaration order.
    pub const EVENT_TYPES: &'static [&'static str] = &[
        "AccountOpened",
        "MoneyDeposited",
        "MoneyWithdrawn",
        "AccountCharged",
        "ChargeRefunded",
        "AccountClosed",
    ];

    /// The current schema version of `AccountOpened`.
    pub const ACCOUNT_OPENED_SCHEMA_VERSION: u32 = 2;

    /// The currency a v1 `AccountOpened` (which had none) meant.
    pub const V1_CURRENCY: Currency = Currency::EUR;

    /// The schema version `to_payload` writes for `event_type`, if known.
    pub fn current_schema_version(event_type: &str) -> Option<u32> {
        match event_type {
            "AccountOpened" => Some(Self::ACCOUNT_OPENED_SCHEMA_VERSION),
            t if Self::EVENT_TYPES.contains(&t) => Some(1),
            _ => None,
        }
    }

    /// The balance after this event, for the events that move money.
    pub fn balance_after(&self) -> Option<Money> {
        match self {
            AccountEvent::MoneyDeposited { balance_after, .. }
            | AccountEvent::MoneyWithdrawn { balance_after, .. }
            | AccountEvent::AccountCharged { balance_after, .. }
            | AccountEvent::ChargeRefunded { balance_after, .. } => Some(*balance_after),
            AccountEvent::AccountOpened { .. } | AccountEvent::AccountClosed => None,
        }
    }
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::AccountOpened { .. } => "AccountOpened",
            AccountEvent::MoneyDeposited { .. } => "MoneyDeposited",
            AccountEvent::MoneyWithdrawn { .. } => "MoneyWithdrawn",
            AccountEvent::AccountCharged { .. } => "AccountCharged",
            AccountEvent::ChargeRefunded { .. } => "ChargeRefunded",
            AccountEvent::AccountClosed => "AccountClosed",
        }
    }

    fn order_id(&self) -> Option<OrderId> {
        match self {
            AccountEvent::AccountCharged { order_id, .. }
            | AccountEvent::ChargeRefunded { order_id, .. } => Some(*order_id),
            _ => None,
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            AccountEvent::AccountOpened { .. } => Self::ACCOUNT_OPENED_SCHEMA_VERSION,
            _ => 1,
        }
    }

    fn to_payload(&self) -> Value {
        codec::to_payload(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: Value,
    ) -> Result<Self, DecodeError> {
        let current = Self::current_schema_version(event_type)
            .ok_or_else(|| codec::unknown(event_type, schema_version))?;
        let payload = match (event_type, schema_version) {
            (_, v) if v == current => payload,
            ("AccountOpened", 1) => upcast_account_opened_v1(payload),
            _ => return Err(codec::unknown(event_type, schema_version)),
        };
        codec::from_payload(event_type, payload)
    }
}

/// v1 `{account_id, customer_id}` -> v2 `{account_id, customer_id, currency: "EUR"}`.
fn upcast_account_opened_v1(payload: Value) -> Value {
    match payload {
        Value::Object(mut map) => {
            map.entry("currency")
                .or_insert_with(|| Value::String(AccountEvent::V1_CURRENCY.as_str().to_owned()));
            Value::Object(map)
        }
        // Not an object: let decoding report it.
        other => other,
    }
}

/// Where an account is in its life: `not_opened -> open -> closed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// No account in this stream yet: the initial state.
    #[default]
    NotOpened,
    /// Takes deposits, withdrawals, charges and refunds.
    Open,
    /// Closed at a zero balance, for good.
    Closed,
}

impl AccountStatus {
    /// The status in snake case, as serde writes it: `not_opened`, `open`,
    /// `closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::NotOpened => "not_opened",
            AccountStatus::Open => "open",
            AccountStatus::Closed => "closed",
        }
    }
}

/// What an order was charged, and whether it was refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// What the order was charged, in minor units.
    pub amount: Amount,
    /// Whether the charge was given back (it is, at most once).
    pub refunded: bool,
}

/// A bank account as its events leave it. The ids and the currency are
/// `None` until the account is opened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountState {
    /// Where the account is in its life.
    pub status: AccountStatus,
    /// The account's id.
    pub account_id: Option<AccountId>,
    /// Its owner, the only customer whose orders it pays for.
    pub customer_id: Option<CustomerId>,
    /// The currency of its balance and of the orders it pays for.
    pub currency: Option<Currency>,
    /// The balance, in minor units of `currency`; never negative.
    pub balance: Money,
    /// The charges of the orders recalled for the decision at hand
    /// ([`Aggregate::recall`]). Never folded, never snapshotted: an account
    /// does not keep every order it paid for.
    #[serde(skip)]
    pub charges: BTreeMap<OrderId, Charge>,
}

/// Why a [`BankAccount`] refuses a command; nothing is appended. Each
/// variant's doc starts with its [`DomainError::code`]. `NotFound` is of
/// [`ErrorKind::NotFound`], `AlreadyExists` of [`ErrorKind::AlreadyExists`],
/// every other of [`ErrorKind::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// `account_not_found`: no account in this stream (any command but
    /// `Open`).
    #[error("account not found")]
    NotFound,
    /// `account_already_exists`: `Open` where an account, open or closed,
    /// exists.
    #[error("account already exists")]
    AlreadyExists,
    /// `insufficient_funds`: a withdrawal or a charge larger than the
    /// balance.
    #[error("insufficient funds: balance {balance}, requested {requested}")]
    InsufficientFunds {
        /// The balance, in minor units.
        balance: Money,
        /// What was asked for, in minor units.
        requested: Amount,
    },
    /// `account_closed`: any command but `Open` on a closed account.
    #[error("account is closed")]
    Closed,
    /// `account_not_empty`: `Close` while money is left.
    #[error("account balance is {balance}, it must be zero to close")]
    NotEmpty {
        /// The balance left, in minor units.
        balance: Money,
    },
    /// `currency_mismatch`: a charge for an order in another currency than
    /// the account's.
    #[error("currency mismatch: account is in {account}, charge is in {requested}")]
    CurrencyMismatch {
        /// The account's currency.
        account: Currency,
        /// The order's currency.
        requested: Currency,
    },
    /// `customer_mismatch`: a charge for another customer's order.
    #[error("the order's customer does not own this account")]
    CustomerMismatch,
    /// `charge_not_found`: a refund for an order never charged here.
    #[error("order {order_id} was never charged to this account")]
    ChargeNotFound {
        /// The order the refund named.
        order_id: OrderId,
    },
    /// `balance_overflow`: a deposit or a refund that would take the
    /// balance past [`Money::MAX`].
    #[error("balance would overflow")]
    BalanceOverflow,
}

impl DomainError for AccountError {
    fn code(&self) -> &'static str {
        match self {
            AccountError::NotFound => "account_not_found",
            AccountError::AlreadyExists => "account_already_exists",
            AccountError::InsufficientFunds { .. } => "insufficient_funds",
            AccountError::Closed => "account_closed",
            AccountError::NotEmpty { .. } => "account_not_empty",
            AccountError::CurrencyMismatch { .. } => "currency_mismatch",
            AccountError::CustomerMismatch => "customer_mismatch",
            AccountError::ChargeNotFound { .. } => "charge_not_found",
            AccountError::BalanceOverflow => "balance_overflow",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            AccountError::NotFound => ErrorKind::NotFound,
            AccountError::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Rejected,
        }
    }
}

impl Aggregate for BankAccount {
    const STREAM_TYPE: &'static str = "account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    /// 2: `charges` (every order ever charged) is no longer folded.
    const STATE_SCHEMA: u32 = 2;

    fn initial() -> AccountState {
        AccountState::default()
    }

    /// A charge or a refund needs what the order was charged, if anything.
    fn recall_key(_state: &AccountState, command: &AccountCommand) -> Option<OrderId> {
        match command {
            AccountCommand::Charge { order_id, .. } | AccountCommand::Refund { order_id } => {
                Some(*order_id)
            }
            _ => None,
        }
    }

    fn recall(mut state: AccountState, past: &[AccountEvent]) -> AccountState {
        for event in past {
            match event {
                AccountEvent::AccountCharged {
                    order_id, amount, ..
                } => {
                    state.charges.insert(
                        *order_id,
                        Charge {
                            amount: *amount,
                            refunded: false,
                        },
                    );
                }
                AccountEvent::ChargeRefunded {
                    order_id, amount, ..
                } => {
                    state
                        .charges
                        .entry(*order_id)
                        .and_modify(|c| c.refunded = true)
                        .or_insert(Charge {
                            amount: *amount,
                            refunded: true,
                        });
                }
                _ => {}
            }
        }
        state
    }

    fn decide(
        state: &AccountState,
        command: &AccountCommand,
    ) -> Result<Vec<AccountEvent>, AccountError> {
        use AccountCommand as C;
        match (state.status, command) {
            (
                AccountStatus::NotOpened,
                C::Open {
                    account_id,
                    customer_id,
                    currency,
                },
            ) => Ok(vec![AccountEvent::AccountOpened {
                account_id: *account_id,
                customer_id: *customer_id,
                currency: *currency,
            }]),
            (AccountStatus::NotOpened, _) => Err(AccountError::NotFound),
            (_, C::Open { .. }) => Err(AccountError::AlreadyExists),
            (AccountStatus::Closed, _) => Err(AccountError::Closed),
            (AccountStatus::Open, command) => decide_open(state, command),
        }
    }

    fn evolve(mut state: AccountState, event: &AccountEvent) -> AccountState {
        match event {
            AccountEvent::AccountOpened {
                account_id,
                customer_id,
                currency,
            } => {
                state.status = AccountStatus::Open;
                state.account_id = Some(*account_id);
                state.customer_id = Some(*customer_id);
                state.currency = Some(*currency);
            }
            AccountEvent::MoneyDeposited { balance_after, .. }
            | AccountEvent::MoneyWithdrawn { balance_after, .. }
            | AccountEvent::AccountCharged { balance_after, .. }
            | AccountEvent::ChargeRefunded { balance_after, .. } => {
                state.balance = *balance_after;
            }
            AccountEvent::AccountClosed => state.status = AccountStatus::Closed,
        }
        state
    }
}

/// Decides a command other than `Open` on an open account.
fn decide_open(
    state: &AccountState,
    command: &AccountCommand,
) -> Result<Vec<AccountEvent>, AccountError> {
    match command {
        AccountCommand::Open { .. } => Err(AccountError::AlreadyExists),
        AccountCommand::Deposit { amount } => {
            let balance_after = state
                .balance
                .checked_add(amount.money())
                .ok_or(AccountError::BalanceOverflow)?;
            Ok(vec![AccountEvent::MoneyDeposited {
                amount: *amount,
                balance_after,
            }])
        }
        AccountCommand::Withdraw { amount } => {
            let balance_after = debit(state, *amount)?;
            Ok(vec![AccountEvent::MoneyWithdrawn {
                amount: *amount,
                balance_after,
            }])
        }
        AccountCommand::Charge {
            order_id,
            customer_id,
            currency,
            amount,
        } => {
            if state.customer_id != Some(*customer_id) {
                return Err(AccountError::CustomerMismatch);
            }
            if let Some(account) = state.currency.filter(|c| c != currency) {
                return Err(AccountError::CurrencyMismatch {
                    account,
                    requested: *currency,
                });
            }
            if state.charges.contains_key(order_id) {
                return Ok(vec![]);
            }
            let balance_after = debit(state, *amount)?;
            Ok(vec![AccountEvent::AccountCharged {
                order_id: *order_id,
                amount: *amount,
                balance_after,
            }])
        }
        AccountCommand::Refund { order_id } => {
            let charge = state
                .charges
                .get(order_id)
                .ok_or(AccountError::ChargeNotFound {
                    order_id: *order_id,
                })?;
            if charge.refunded {
                return Ok(vec![]);
            }
            let balance_after = state
                .balance
                .checked_add(charge.amount.money())
                .ok_or(AccountError::BalanceOverflow)?;
            Ok(vec![AccountEvent::ChargeRefunded {
                order_id: *order_id,
                amount: charge.amount,
                balance_after,
            }])
        }
        AccountCommand::Close => {
            if !state.balance.is_zero() {
                return Err(AccountError::NotEmpty {
                    balance: state.balance,
                });
            }
            Ok(vec![AccountEvent::AccountClosed])
        }
    }
}

fn debit(state: &AccountState, amount: Amount) -> Result<Money, AccountError> {
    state
        .balance
        .checked_sub(amount.money())
        .ok_or(AccountError::InsufficientFunds {
            balance: state.balance,
            requested: amount,
        })
}
