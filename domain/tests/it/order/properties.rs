//! Properties over random command sequences, valid and refused, checked
//! against a reference model of the status machine.

use std::collections::BTreeSet;

use domain::{
    Aggregate, CancellationReason, Money, Order, OrderCommand as C, OrderLine, OrderState,
    OrderStatus as S, Quantity, Sku,
};
use proptest::prelude::*;

use super::place;
use crate::support::{
    assert_round_trips, assert_state_round_trips, positive_i64, proptest_config,
    refold_from_stored, Expect,
};

fn line(sku: String, quantity: i64, unit_price: i64) -> OrderLine {
    OrderLine::new(
        Sku::parse(&sku).expect("valid sku"),
        Quantity::new(quantity).expect("valid quantity"),
        Money::new(unit_price).expect("valid price"),
    )
}

fn price() -> impl Strategy<Value = i64> {
    prop_oneof![1 => Just(0i64), 6 => 1..=100_000i64, 3 => positive_i64()]
}

fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 1..=5i64, 1 => Just(i64::from(Quantity::MAX)), 1 => 1..=i64::from(Quantity::MAX)]
}

fn lines() -> impl Strategy<Value = Vec<OrderLine>> {
    // SKUs from a pool of 8: duplicates happen on purpose.
    let few = prop::collection::vec(
        ((0..8u8), quantity(), price()).prop_map(|(i, q, p)| line(format!("SKU-{i}"), q, p)),
        0..6,
    );
    // Around the 100-line limit, all SKUs distinct.
    let many = (99usize..=101, 0..=1_000i64)
        .prop_map(|(n, p)| (0..n).map(|i| line(format!("BULK-{i}"), 1, p)).collect());
    prop_oneof![9 => few, 1 => many]
}

fn reason() -> impl Strategy<Value = CancellationReason> {
    prop::sample::select(CancellationReason::ALL.to_vec())
}

fn command() -> impl Strategy<Value = C> {
    prop_oneof![
        1 => lines().prop_map(place),
        3 => Just(C::MarkReserved),
        3 => Just(C::MarkPaid),
        3 => "[A-Z0-9]{1,10}".prop_map(|tracking_number| C::MarkShipped { tracking_number }),
        1 => ".{0,20}".prop_map(|reason| C::RequestCancellation { reason }),
        1 => reason().prop_map(|reason| C::Cancel { reason }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<C>> {
    (
        proptest::option::weighted(0.9, lines().prop_map(place)),
        prop::collection::vec(command(), 0..50),
    )
        .prop_map(|(first, rest)| first.into_iter().chain(rest).collect())
}

/// The reference model: the status machine and the total in `i128`.
#[derive(Debug, Default)]
struct Model {
    status: S,
    requested: bool,
    total: i128,
}

impl Model {
    fn step(&mut self, command: &C) -> Expect {
        let invalid = Expect::Refused("invalid_transition");
        match (self.status, command) {
            (S::NotPlaced, C::Place { lines, .. }) => {
                let skus: BTreeSet<_> = lines.iter().map(|l| &l.sku).collect();
                let total: i128 = lines
                    .iter()
                    .map(|l| i128::from(l.quantity.get()) * i128::from(l.unit_price.amount()))
                    .sum();
                if lines.is_empty()
                    || lines.len() > 100
                    || skus.len() != lines.len()
                    || total > i128::from(i64::MAX)
                {
                    return Expect::Refused("invalid_order");
                }
                self.status = S::Placed;
                self.total = total;
                Expect::Accepted
            }
            (S::NotPlaced, _) => Expect::Refused("order_not_found"),
            (_, C::Place { .. }) => Expect::Refused("order_already_exists"),
            (S::Shipped, C::RequestCancellation { .. } | C::Cancel { .. }) => {
                Expect::Refused("order_not_cancellable")
            }
            (S::Cancelled, C::RequestCancellation { .. } | C::Cancel { .. }) => Expect::Nothing,
            (_, C::RequestCancellation { .. }) if self.requested => Expect::Nothing,
            (_, C::RequestCancellation { .. }) => {
                self.requested = true;
                Expect::Accepted
            }
            (_, C::Cancel { .. }) => {
                self.status = S::Cancelled;
                Expect::Accepted
            }
            (S::Placed, C::MarkReserved) => {
                self.status = S::Reserved;
                Expect::Accepted
            }
            (S::Reserved, C::MarkPaid) => {
                self.status = S::Paid;
                Expect::Accepted
            }
            (S::Paid, C::MarkShipped { .. }) if !self.requested => {
                self.status = S::Shipped;
                Expect::Accepted
            }
            (_, C::MarkReserved | C::MarkPaid | C::MarkShipped { .. }) => invalid,
        }
    }
}

fn check_invariants(before: &OrderState, after: &OrderState, model: &Model) {
    assert!(
        before.status.can_become(after.status),
        "illegal transition {} -> {}",
        before.status,
        after.status
    );
    if before.status.is_terminal() {
        assert_eq!(before, after, "a terminal order changed");
    }
    assert_eq!(after.status, model.status, "status");
    assert_eq!(after.cancellation_requested.is_some(), model.requested);
    assert_eq!(i128::from(after.total.amount()), model.total, "total");
    if after.status != S::NotPlaced {
        let sum: i128 = after
            .lines
            .iter()
            .map(|l| i128::from(l.quantity.get()) * i128::from(l.unit_price.amount()))
            .sum();
        assert_eq!(
            sum,
            i128::from(after.total.amount()),
            "total is the sum of the lines"
        );
        assert!((1..=100).contains(&after.lines.len()));
        assert!(after.shipping_address.is_some() && after.order_id.is_some());
    }
    match after.status {
        S::Shipped => {
            assert!(after.tracking_number.is_some());
            assert!(
                after.cancellation_requested.is_none(),
                "shipped despite a request"
            );
        }
        S::Cancelled => assert!(after.cancellation_reason.is_some()),
        _ => assert!(after.tracking_number.is_none() && after.cancellation_reason.is_none()),
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn every_reachable_order_state_is_sound(commands in commands()) {
        let mut state = Order::initial();
        let mut model = Model::default();
        let mut log = Vec::new();
        for command in &commands {
            let result = Order::decide(&state, command);
            let expected = model.step(command);
            prop_assert_eq!(Expect::of(&result), expected, "{:?} on {:?}", command, state);
            let before = state.clone();
            if let Ok(events) = result {
                for event in &events {
                    assert_round_trips(event);
                }
                state = Order::fold(state, &events);
                log.extend(events);
            }
            // A refusal carries no events: the state is left as it was.
            check_invariants(&before, &state, &model);
        }
        prop_assert_eq!(&refold_from_stored::<Order>(&log), &state);
        assert_state_round_trips::<Order>(&state);
    }
}
