//! Given/when/then: one test per rule and per refusal of the bank account.

use domain::{
    AccountCommand as C, AccountEvent as E, AccountStatus, Aggregate, BankAccount, Currency,
    ErrorKind,
};

use super::*;
use test_support::decider::given;

fn open_command() -> C {
    C::Open {
        account_id: account_id(),
        customer_id: customer(),
        currency: Currency::EUR,
    }
}

/// One of each command that needs an existing account.
fn commands_on_existing() -> Vec<C> {
    vec![
        C::Deposit { amount: amount(1) },
        C::Withdraw { amount: amount(1) },
        charge(1, 1),
        C::Refund { order_id: order(1) },
        C::Close,
    ]
}

#[test]
fn open_emits_account_opened() {
    let state = given::<BankAccount>([])
        .when(open_command())
        .then([opened()]);
    assert_eq!(state.status, AccountStatus::Open);
    assert_eq!(state.customer_id, Some(customer()));
    assert_eq!(state.currency, Some(Currency::EUR));
    assert_eq!(state.balance, Money::ZERO);
}

#[test]
fn open_twice_is_already_exists() {
    given::<BankAccount>([opened()])
        .when(open_command())
        .then_error_kind("account_already_exists", ErrorKind::AlreadyExists);
}

#[test]
fn open_on_a_closed_account_is_already_exists() {
    given::<BankAccount>([opened(), E::AccountClosed])
        .when(open_command())
        .then_error_kind("account_already_exists", ErrorKind::AlreadyExists);
}

#[test]
fn any_command_but_open_on_a_missing_account_is_not_found() {
    for command in commands_on_existing() {
        given::<BankAccount>([])
            .when(command)
            .then_error_kind("account_not_found", ErrorKind::NotFound);
    }
}

#[test]
fn deposit_raises_the_balance() {
    let state = given::<BankAccount>([opened(), deposited(100, 100)])
        .when(C::Deposit { amount: amount(50) })
        .then([deposited(50, 150)]);
    assert_eq!(state.balance, money(150));
}

#[test]
fn deposit_that_would_overflow_is_refused() {
    given::<BankAccount>([opened(), deposited(i64::MAX, i64::MAX)])
        .when(C::Deposit { amount: amount(1) })
        .then_error_kind("balance_overflow", ErrorKind::Rejected);
}

#[test]
fn deposit_up_to_exactly_i64_max_is_accepted() {
    given::<BankAccount>([opened(), deposited(i64::MAX - 1, i64::MAX - 1)])
        .when(C::Deposit { amount: amount(1) })
        .then([deposited(1, i64::MAX)]);
}

#[test]
fn withdraw_lowers_the_balance() {
    given::<BankAccount>([opened(), deposited(100, 100)])
        .when(C::Withdraw { amount: amount(30) })
        .then([E::MoneyWithdrawn {
            amount: amount(30),
            balance_after: money(70),
        }]);
}

#[test]
fn withdraw_of_the_whole_balance_leaves_zero() {
    let state = given::<BankAccount>([opened(), deposited(100, 100)])
        .when(C::Withdraw {
            amount: amount(100),
        })
        .then([E::MoneyWithdrawn {
            amount: amount(100),
            balance_after: Money::ZERO,
        }]);
    assert_eq!(state.balance, Money::ZERO);
}

#[test]
fn withdraw_beyond_the_balance_is_insufficient_funds() {
    given::<BankAccount>([opened(), deposited(100, 100)])
        .when(C::Withdraw {
            amount: amount(101),
        })
        .then_error_kind("insufficient_funds", ErrorKind::Rejected);
    given::<BankAccount>([opened()])
        .when(C::Withdraw {
            amount: amount(i64::MAX),
        })
        .then_error("insufficient_funds");
}

#[test]
fn charge_debits_the_balance_and_remembers_the_order() {
    let state = given::<BankAccount>([opened(), deposited(100, 100)])
        .when(charge(1, 60))
        .then([charged(1, 60, 40)]);
    assert_eq!(state.balance, money(40));
    // Remembered in the stream, not in the state: the charge is recalled
    // from the order's past when a command for that order needs it.
    assert!(state.charges.is_empty());
    let recalled = BankAccount::recall(state, &[charged(1, 60, 40)]);
    let recorded = recalled.charges.get(&order(1)).expect("charge recalled");
    assert_eq!(recorded.amount, amount(60));
    assert!(!recorded.refunded);
}

#[test]
fn charging_the_same_order_again_appends_nothing() {
    given::<BankAccount>([opened(), deposited(100, 100), charged(1, 60, 40)])
        .when(charge(1, 60))
        .then_nothing();
    // even with another amount: an order is charged at most once
    given::<BankAccount>([opened(), deposited(100, 100), charged(1, 60, 40)])
        .when(charge(1, 10))
        .then_nothing();
}

#[test]
fn charging_a_refunded_order_again_appends_nothing() {
    let refunded = E::ChargeRefunded {
        order_id: order(1),
        amount: amount(60),
        balance_after: money(100),
    };
    given::<BankAccount>([opened(), deposited(100, 100), charged(1, 60, 40), refunded])
        .when(charge(1, 60))
        .then_nothing();
}

#[test]
fn charge_for_another_customer_is_customer_mismatch() {
    given::<BankAccount>([opened(), deposited(100, 100)])
        .when(C::Charge {
            order_id: order(1),
            customer_id: other_customer(),
            currency: Currency::EUR,
            amount: amount(10),
        })
        .then_error_kind("customer_mismatch", ErrorKind::Rejected);
}

#[test]
fn charge_in_another_currency_is_currency_mismatch() {
    given::<BankAccount>([opened(), deposited(100, 100)])
        .when(C::Charge {
            order_id: order(1),
            customer_id: customer(),
            currency: Currency::USD,
            amount: amount(10),
        })
        .then_error_kind("currency_mismatch", ErrorKind::Rejected);
}

#[test]
fn charge_beyond_the_balance_is_insufficient_funds() {
    given::<BankAccount>([opened(), deposited(100, 100)])
        .when(charge(1, 101))
        .then_error_kind("insufficient_funds", ErrorKind::Rejected);
}

#[test]
fn refund_returns_exactly_what_the_order_was_charged() {
    let history = [
        opened(),
        deposited(100, 100),
        charged(1, 60, 40),
        charged(2, 15, 25),
    ];
    let refunded = E::ChargeRefunded {
        order_id: order(1),
        amount: amount(60),
        balance_after: money(85),
    };
    let state = given::<BankAccount>(history.clone())
        .when(C::Refund { order_id: order(1) })
        .then([refunded.clone()]);
    assert_eq!(state.balance, money(85));
    let past: Vec<E> = history.into_iter().chain([refunded]).collect();
    given::<BankAccount>(past.clone())
        .when(C::Refund { order_id: order(1) })
        .then_nothing();
    given::<BankAccount>(past)
        .when(C::Refund { order_id: order(2) })
        .then([E::ChargeRefunded {
            order_id: order(2),
            amount: amount(15),
            balance_after: money(100),
        }]);
}

#[test]
fn refunding_twice_appends_nothing() {
    let refunded = E::ChargeRefunded {
        order_id: order(1),
        amount: amount(60),
        balance_after: money(100),
    };
    given::<BankAccount>([opened(), deposited(100, 100), charged(1, 60, 40), refunded])
        .when(C::Refund { order_id: order(1) })
        .then_nothing();
}

#[test]
fn refund_of_an_order_never_charged_is_charge_not_found() {
    given::<BankAccount>([opened(), deposited(100, 100), charged(1, 60, 40)])
        .when(C::Refund { order_id: order(2) })
        .then_error_kind("charge_not_found", ErrorKind::Rejected);
}

#[test]
fn refund_that_would_overflow_is_refused() {
    given::<BankAccount>([
        opened(),
        deposited(10, 10),
        charged(1, 10, 0),
        deposited(i64::MAX, i64::MAX),
    ])
    .when(C::Refund { order_id: order(1) })
    .then_error_kind("balance_overflow", ErrorKind::Rejected);
}

#[test]
fn close_at_zero_balance_closes() {
    let state = given::<BankAccount>([opened(), deposited(10, 10), charged(1, 10, 0)])
        .when(C::Close)
        .then([E::AccountClosed]);
    assert_eq!(state.status, AccountStatus::Closed);
}

#[test]
fn close_with_money_left_is_account_not_empty() {
    given::<BankAccount>([opened(), deposited(1, 1)])
        .when(C::Close)
        .then_error_kind("account_not_empty", ErrorKind::Rejected);
}

#[test]
fn a_closed_account_refuses_everything() {
    for command in commands_on_existing() {
        given::<BankAccount>([opened(), charged(1, 1, 0), E::AccountClosed])
            .when(command)
            .then_error_kind("account_closed", ErrorKind::Rejected);
    }
}

#[test]
fn payloads_have_the_documented_shape() {
    use domain::DomainEvent;
    use serde_json::json;

    assert_eq!(
        opened().to_payload(),
        json!({
            "account_id": "00000000-0000-0000-0000-0000000000a1",
            "customer_id": "00000000-0000-0000-0000-0000000000c1",
            "currency": "EUR",
        })
    );
    assert_eq!(opened().schema_version(), 2);
    assert_eq!(opened().event_type(), "AccountOpened");
    assert_eq!(
        deposited(5, 7).to_payload(),
        json!({"amount": 5, "balance_after": 7})
    );
    assert_eq!(deposited(5, 7).schema_version(), 1);
    assert_eq!(
        charged(1, 5, 0).to_payload(),
        json!({"order_id": "00000000-0000-0000-0000-000000000d01", "amount": 5, "balance_after": 0})
    );
    assert_eq!(E::AccountClosed.to_payload(), json!({}));
    assert_eq!(E::AccountClosed.event_type(), "AccountClosed");
}
