mod properties;
mod rules;

use domain::{Money, OrderLine, SagaEvent, SagaOrder, Situation, Step};
use uuid::Uuid;

use crate::order::{address, line, order_id};

pub fn saga_id() -> Uuid {
    Uuid::from_u128(0x5A6A)
}

pub fn saga_order(lines: Vec<OrderLine>, country: &str) -> SagaOrder {
    let total = lines
        .iter()
        .try_fold(Money::ZERO, |t, l| {
            l.line_total().and_then(|x| t.checked_add(x))
        })
        .expect("total fits");
    SagaOrder {
        order_id: order_id(),
        customer_id: domain::CustomerId::new(Uuid::from_u128(0xC1)),
        account_id: domain::AccountId::new(Uuid::from_u128(0xA1)),
        currency: domain::Currency::EUR,
        lines,
        total,
        shipping_address: address(country),
    }
}

/// Two lines, A (2 at 10.00) and B (1 at 5.00), shipped to Spain.
pub fn two_lines() -> SagaOrder {
    saga_order(vec![line("A", 2, 1_000), line("B", 1, 500)], "ES")
}

pub fn started(order: SagaOrder) -> SagaEvent {
    SagaEvent::SagaStarted {
        saga_id: saga_id(),
        order,
    }
}

pub fn sku_step(name: &str, sku: &str) -> Step {
    let sku = domain::Sku::parse(sku).expect("valid sku");
    match name {
        "reserve" => Step::ReserveStock { sku },
        "commit" => Step::CommitStock { sku },
        "release" => Step::ReleaseStock { sku },
        other => panic!("no per-line step {other}"),
    }
}

pub fn at(now_ms: i64) -> Situation {
    Situation {
        now_ms,
        cancellation_requested: false,
        max_attempts: 3,
    }
}

/// `StepStarted` then `StepSucceeded` for `step`.
pub fn done(step: Step) -> [SagaEvent; 2] {
    [
        SagaEvent::StepStarted {
            step: step.clone(),
            attempt: 1,
            deadline_ms: 1_000,
        },
        SagaEvent::StepSucceeded {
            step,
            tracking_number: None,
        },
    ]
}
