//! Properties over random command sequences, valid and refused, checked
//! against a reference model in plain `i128` arithmetic.

use std::collections::BTreeMap;

use domain::{
    decide_recalling, AccountCommand as C, AccountEvent as E, AccountId, AccountState,
    AccountStatus, Aggregate, Amount, BankAccount, Currency, CustomerId, OrderId,
};
use proptest::prelude::*;

use crate::strategies::{pooled_uuid, positive_i64, proptest_config};
use test_support::decider::{
    assert_round_trips, assert_state_round_trips, refold_from_stored, Expect,
};

fn currency() -> impl Strategy<Value = Currency> {
    prop_oneof![4 => Just(Currency::EUR), 1 => Just(Currency::USD)]
}

fn customer() -> impl Strategy<Value = CustomerId> {
    prop_oneof![4 => pooled_uuid(1), 1 => pooled_uuid(3)].prop_map(CustomerId::new)
}

fn amount() -> impl Strategy<Value = Amount> {
    positive_i64().prop_map(|v| Amount::new(v).expect("positive"))
}

fn open() -> impl Strategy<Value = C> {
    (pooled_uuid(2), customer(), currency()).prop_map(|(a, customer_id, currency)| C::Open {
        account_id: AccountId::new(a),
        customer_id,
        currency,
    })
}

fn command() -> impl Strategy<Value = C> {
    let order = || pooled_uuid(5).prop_map(OrderId::new);
    prop_oneof![
        1 => open(),
        4 => amount().prop_map(|amount| C::Deposit { amount }),
        3 => amount().prop_map(|amount| C::Withdraw { amount }),
        4 => (order(), customer(), currency(), amount()).prop_map(
            |(order_id, customer_id, currency, amount)| C::Charge { order_id, customer_id, currency, amount }
        ),
        3 => order().prop_map(|order_id| C::Refund { order_id }),
        1 => Just(C::Close),
    ]
}

/// Mostly an `Open` first, so that the rest has something to act on.
fn commands() -> impl Strategy<Value = Vec<C>> {
    (
        proptest::option::weighted(0.9, open()),
        prop::collection::vec(command(), 0..50),
    )
        .prop_map(|(first, rest)| first.into_iter().chain(rest).collect())
}

/// The reference model: what the account should do, in `i128`.
#[derive(Debug, Default)]
struct Model {
    status: Option<bool>, // None: not opened, Some(true): open, Some(false): closed
    customer: Option<CustomerId>,
    currency: Option<Currency>,
    balance: i128,
    charges: BTreeMap<OrderId, (i128, bool)>,
}

const MAX: i128 = i64::MAX as i128;

impl Model {
    /// Applies `command` and says what the aggregate should have answered.
    fn step(&mut self, command: &C) -> Expect {
        let open = match (self.status, command) {
            (
                None,
                C::Open {
                    customer_id,
                    currency,
                    ..
                },
            ) => {
                self.status = Some(true);
                self.customer = Some(*customer_id);
                self.currency = Some(*currency);
                return Expect::Accepted;
            }
            (None, _) => return Expect::Refused("account_not_found"),
            (Some(_), C::Open { .. }) => return Expect::Refused("account_already_exists"),
            (Some(open), _) => open,
        };
        if !open {
            return Expect::Refused("account_closed");
        }
        match command {
            C::Open { .. } => unreachable!("handled above"),
            C::Deposit { amount } => {
                let after = self.balance + i128::from(amount.amount());
                if after > MAX {
                    return Expect::Refused("balance_overflow");
                }
                self.balance = after;
            }
            C::Withdraw { amount } => {
                let after = self.balance - i128::from(amount.amount());
                if after < 0 {
                    return Expect::Refused("insufficient_funds");
                }
                self.balance = after;
            }
            C::Charge {
                order_id,
                customer_id,
                currency,
                amount,
            } => {
                if self.customer != Some(*customer_id) {
                    return Expect::Refused("customer_mismatch");
                }
                if self.currency != Some(*currency) {
                    return Expect::Refused("currency_mismatch");
                }
                if self.charges.contains_key(order_id) {
                    return Expect::Nothing;
                }
                let amount = i128::from(amount.amount());
                if self.balance < amount {
                    return Expect::Refused("insufficient_funds");
                }
                self.balance -= amount;
                self.charges.insert(*order_id, (amount, false));
            }
            C::Refund { order_id } => {
                let Some((amount, refunded)) = self.charges.get_mut(order_id) else {
                    return Expect::Refused("charge_not_found");
                };
                if *refunded {
                    return Expect::Nothing;
                }
                if self.balance + *amount > MAX {
                    return Expect::Refused("balance_overflow");
                }
                *refunded = true;
                self.balance += *amount;
            }
            C::Close => {
                if self.balance != 0 {
                    return Expect::Refused("account_not_empty");
                }
                self.status = Some(false);
            }
        }
        Expect::Accepted
    }
}

fn check_invariants(state: &AccountState, model: &Model, log: &[E]) {
    assert!(state.balance.amount() >= 0, "negative balance {state:?}");
    assert_eq!(i128::from(state.balance.amount()), model.balance, "balance");
    let expected_status = match model.status {
        None => AccountStatus::NotOpened,
        Some(true) => AccountStatus::Open,
        Some(false) => AccountStatus::Closed,
    };
    assert_eq!(state.status, expected_status);
    if state.status == AccountStatus::Closed {
        assert_eq!(state.balance.amount(), 0, "closed with money");
    }
    if state.status != AccountStatus::NotOpened {
        assert!(state.customer_id.is_some() && state.currency.is_some());
    }
    assert!(state.charges.is_empty(), "the folded state keeps no charge");
    // Recalling the whole log recalls every order's charge.
    let recalled = BankAccount::recall(state.clone(), log);
    let charges: BTreeMap<_, _> = recalled
        .charges
        .iter()
        .map(|(order, charge)| {
            (
                *order,
                (i128::from(charge.amount.amount()), charge.refunded),
            )
        })
        .collect();
    assert_eq!(charges, model.charges, "charges");
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn every_reachable_account_state_is_sound(commands in commands()) {
        let mut state = BankAccount::initial();
        let mut model = Model::default();
        let mut log = Vec::new();
        for command in &commands {
            let result = decide_recalling::<BankAccount>(&state, &log, command);
            let expected = model.step(command);
            prop_assert_eq!(Expect::of(&result), expected, "{:?} on {:?}", command, state);
            if let Ok(events) = result {
                for event in &events {
                    assert_round_trips(event);
                    state = BankAccount::evolve(state, event);
                    if let Some(balance) = event.balance_after() {
                        prop_assert_eq!(state.balance, balance, "after {:?}", event);
                    }
                }
                log.extend(events);
            }
            // A refusal carries no events: the state is left as it was.
            check_invariants(&state, &model, &log);
        }
        prop_assert_eq!(&refold_from_stored::<BankAccount>(&log), &state);
        assert_state_round_trips::<BankAccount>(&state);
    }
}
