//! Properties over random command sequences, valid and refused, checked
//! against a reference model of the status machine and of the catalog's
//! prices: an order's total is the sum of catalog price times quantity.

use std::collections::BTreeSet;

use domain::{
    Aggregate, CancellationReason, CatalogPrice, Currency, LineToPlace, Order, OrderCommand as C,
    OrderState, OrderStatus as S, Price, Quantity, Sku, UnitPrice,
};
use proptest::prelude::*;

use super::place_lines;
use crate::strategies::{positive_i64, proptest_config};
use test_support::decider::{
    assert_round_trips, assert_state_round_trips, refold_from_stored, Expect,
};

fn line(sku: String, quantity: i64, catalog: CatalogPrice, expected: Option<i64>) -> LineToPlace {
    LineToPlace {
        sku: Sku::parse(&sku).expect("valid sku"),
        quantity: Quantity::new(quantity).expect("valid quantity"),
        expected_price: expected.map(|p| UnitPrice::new(p).expect("positive price")),
        catalog,
    }
}

fn price() -> impl Strategy<Value = i64> {
    prop_oneof![6 => 1..=100_000i64, 3 => positive_i64()]
}

/// Mostly priced in the order's currency (EUR); now and then unknown,
/// unpriced or in USD.
fn catalog() -> impl Strategy<Value = CatalogPrice> {
    let priced = |currency| {
        price().prop_map(move |p| {
            CatalogPrice::Priced(Price::new(UnitPrice::new(p).expect("positive"), currency))
        })
    };
    prop_oneof![
        40 => priced(Currency::EUR),
        1 => priced(Currency::USD),
        1 => Just(CatalogPrice::Unknown),
        1 => Just(CatalogPrice::Unpriced),
    ]
}

/// A line of `sku`: its catalog price, and the price the client saw (none,
/// the catalog's, or another).
fn line_of(sku: String) -> impl Strategy<Value = LineToPlace> {
    (quantity(), catalog(), 0..20u8, price()).prop_map(move |(q, catalog, seen, other)| {
        let current = match catalog {
            CatalogPrice::Priced(p) => Some(p.unit_price.amount()),
            _ => None,
        };
        let expected = match seen {
            0 => Some(other),
            1..=9 => current,
            _ => None,
        };
        line(sku.clone(), q, catalog, expected)
    })
}

fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 1..=5i64, 1 => Just(i64::from(Quantity::MAX)), 1 => 1..=i64::from(Quantity::MAX)]
}

fn lines() -> impl Strategy<Value = Vec<LineToPlace>> {
    // SKUs from a pool of 8: duplicates happen on purpose.
    let few = prop::collection::vec(
        (0..8u8).prop_flat_map(|i| line_of(format!("SKU-{i}"))),
        0..6,
    );
    // Around the 100-line limit, all SKUs distinct.
    let many = (99usize..=101, 1..=1_000i64).prop_map(|(n, p)| {
        let eur = CatalogPrice::Priced(Price::new(
            UnitPrice::new(p).expect("positive"),
            Currency::EUR,
        ));
        (0..n)
            .map(|i| line(format!("BULK-{i}"), 1, eur, None))
            .collect()
    });
    prop_oneof![9 => few, 1 => many]
}

fn reason() -> impl Strategy<Value = CancellationReason> {
    prop::sample::select(CancellationReason::ALL.to_vec())
}

fn command() -> impl Strategy<Value = C> {
    prop_oneof![
        1 => lines().prop_map(place_lines),
        3 => Just(C::MarkReserved),
        3 => Just(C::MarkPaid),
        3 => "[A-Z0-9]{1,10}".prop_map(|tracking_number| C::MarkShipped { tracking_number }),
        1 => ".{0,20}".prop_map(|reason| C::RequestCancellation { reason }),
        1 => reason().prop_map(|reason| C::Cancel { reason }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<C>> {
    (
        proptest::option::weighted(0.9, lines().prop_map(place_lines)),
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
    /// The catalog's unit price of each line, once placed.
    prices: Vec<i64>,
}

impl Model {
    fn step(&mut self, command: &C) -> Expect {
        let invalid = Expect::Refused("invalid_transition");
        match (self.status, command) {
            (S::NotPlaced, C::Place { lines, .. }) => {
                let skus: BTreeSet<_> = lines.iter().map(|l| &l.sku).collect();
                if lines.is_empty() || lines.len() > 100 || skus.len() != lines.len() {
                    return Expect::Refused("invalid_order");
                }
                let mut total = 0i128;
                let mut prices = Vec::new();
                for l in lines {
                    let price = match l.catalog {
                        CatalogPrice::Unknown => return Expect::Refused("unknown_sku"),
                        CatalogPrice::Unpriced => return Expect::Refused("item_not_priced"),
                        CatalogPrice::Priced(p) if p.currency != Currency::EUR => {
                            return Expect::Refused("currency_mismatch")
                        }
                        CatalogPrice::Priced(p) => p.unit_price.amount(),
                    };
                    if l.expected_price.is_some_and(|e| e.amount() != price) {
                        return Expect::Refused("price_changed");
                    }
                    total += i128::from(l.quantity.get()) * i128::from(price);
                    prices.push(price);
                }
                if total > i128::from(i64::MAX) {
                    return Expect::Refused("invalid_order");
                }
                self.status = S::Placed;
                self.total = total;
                self.prices = prices;
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
        let recorded: Vec<i64> = after.lines.iter().map(|l| l.unit_price.amount()).collect();
        assert_eq!(
            recorded, model.prices,
            "the lines carry the catalog's prices"
        );
        assert!(recorded.iter().all(|p| *p > 0), "every price is > 0");
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
