mod properties;
mod rules;
mod upcasting;

use domain::{
    AccountCommand, AccountEvent, AccountId, Amount, Currency, CustomerId, Money, OrderId,
};
use uuid::Uuid;

pub fn account_id() -> AccountId {
    AccountId::new(Uuid::from_u128(0xA1))
}

pub fn customer() -> CustomerId {
    CustomerId::new(Uuid::from_u128(0xC1))
}

pub fn other_customer() -> CustomerId {
    CustomerId::new(Uuid::from_u128(0xC2))
}

pub fn order(n: u128) -> OrderId {
    OrderId::new(Uuid::from_u128(0x0D00 + n))
}

pub fn amount(v: i64) -> Amount {
    Amount::new(v).expect("positive amount")
}

pub fn money(v: i64) -> Money {
    Money::new(v).expect("non-negative money")
}

pub fn opened() -> AccountEvent {
    AccountEvent::AccountOpened {
        account_id: account_id(),
        customer_id: customer(),
        currency: Currency::EUR,
    }
}

pub fn deposited(amount_: i64, balance_after: i64) -> AccountEvent {
    AccountEvent::MoneyDeposited {
        amount: amount(amount_),
        balance_after: money(balance_after),
    }
}

pub fn charged(order_: u128, amount_: i64, balance_after: i64) -> AccountEvent {
    AccountEvent::AccountCharged {
        order_id: order(order_),
        amount: amount(amount_),
        balance_after: money(balance_after),
    }
}

pub fn charge(order_: u128, amount_: i64) -> AccountCommand {
    AccountCommand::Charge {
        order_id: order(order_),
        customer_id: customer(),
        currency: Currency::EUR,
        amount: amount(amount_),
    }
}
