//! Properties over random command sequences, valid and refused, checked
//! against a reference model in plain `i128` arithmetic.

use std::collections::{BTreeMap, BTreeSet};

use domain::{
    decide_recalling, Aggregate, CatalogPrice, Currency, Inventory, InventoryCommand as C,
    InventoryEvent, InventoryState, OrderId, Price, Quantity, ReservationEnd, Sku, UnitPrice,
};
use proptest::prelude::*;

use crate::strategies::{pooled_uuid, positive_i64, proptest_config};
use test_support::decider::{
    assert_round_trips, assert_state_round_trips, refold_from_stored, Expect,
};

fn quantity() -> impl Strategy<Value = Quantity> {
    prop_oneof![
        8 => 1..=20i64,
        1 => (i64::from(Quantity::MAX) - 5)..=i64::from(Quantity::MAX),
        1 => 1..=i64::from(Quantity::MAX),
    ]
    .prop_map(|v| Quantity::new(v).expect("in range"))
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[A-Za-z0-9 \"]{0,12}[A-Za-z]",
        1 => Just(String::new()),
        1 => Just(" ".repeat(3)),
        1 => (199usize..=201).prop_map(|n| "x".repeat(n)),
    ]
}

/// Prices from a small pool (so that re-pricing at the current price
/// happens) and the extremes.
fn unit_price() -> impl Strategy<Value = UnitPrice> {
    prop_oneof![4 => 1..=3i64, 1 => positive_i64()]
        .prop_map(|v| UnitPrice::new(v).expect("positive"))
}

fn currency() -> impl Strategy<Value = Currency> {
    prop::sample::select(vec![Currency::EUR, Currency::USD])
}

fn create() -> impl Strategy<Value = C> {
    (name(), quantity(), unit_price(), currency()).prop_map(|(name, quantity, p, c)| C::Create {
        sku: Sku::parse("SKU-1").expect("valid"),
        name,
        quantity,
        price: Price::new(p, c),
    })
}

fn command() -> impl Strategy<Value = C> {
    let order = || pooled_uuid(6).prop_map(OrderId::new);
    prop_oneof![
        1 => create(),
        2 => quantity().prop_map(|quantity| C::Restock { quantity }),
        2 => (unit_price(), proptest::option::of(currency()))
            .prop_map(|(unit_price, currency)| C::SetPrice { unit_price, currency }),
        6 => (order(), quantity()).prop_map(|(order_id, quantity)| C::Reserve { order_id, quantity }),
        3 => order().prop_map(|order_id| C::Release { order_id }),
        3 => order().prop_map(|order_id| C::Commit { order_id }),
    ]
}

fn commands() -> impl Strategy<Value = Vec<C>> {
    (
        proptest::option::weighted(0.9, create()),
        prop::collection::vec(command(), 0..50),
    )
        .prop_map(|(first, rest)| first.into_iter().chain(rest).collect())
}

/// The reference model: what the item should do, in `i128`.
#[derive(Debug, Default)]
struct Model {
    exists: bool,
    /// (unit price, currency) once priced.
    price: Option<(i64, Currency)>,
    on_hand: i128,
    open: BTreeMap<OrderId, i128>,
    seen: BTreeSet<OrderId>,
    committed: BTreeSet<OrderId>,
}

impl Model {
    fn reserved(&self) -> i128 {
        self.open.values().sum()
    }

    fn step(&mut self, command: &C) -> Expect {
        match (self.exists, command) {
            (true, C::Create { .. }) => return Expect::Refused("item_already_exists"),
            (
                false,
                C::Create {
                    name,
                    quantity,
                    price,
                    ..
                },
            ) => {
                let chars = name.chars().count();
                if name.trim().is_empty() || chars > 200 {
                    return Expect::Refused("invalid_name");
                }
                self.exists = true;
                self.price = Some((price.unit_price.amount(), price.currency));
                self.on_hand = i128::from(quantity.get());
                return Expect::Accepted;
            }
            (false, _) => return Expect::Refused("item_not_found"),
            (true, _) => {}
        }
        match command {
            C::Create { .. } => unreachable!("handled above"),
            C::Restock { quantity } => {
                let after = self.on_hand + i128::from(quantity.get());
                if after > i128::from(i64::MAX) {
                    return Expect::Refused("stock_overflow");
                }
                self.on_hand = after;
            }
            C::SetPrice {
                unit_price,
                currency,
            } => {
                let Some(currency) = currency.or(self.price.map(|(_, c)| c)) else {
                    return Expect::Refused("currency_required");
                };
                let price = Some((unit_price.amount(), currency));
                if self.price == price {
                    return Expect::Nothing;
                }
                self.price = price;
            }
            C::Reserve { order_id, quantity } => {
                if self.seen.contains(order_id) {
                    return Expect::Nothing;
                }
                let quantity = i128::from(quantity.get());
                if self.on_hand - self.reserved() < quantity {
                    return Expect::Refused("insufficient_stock");
                }
                self.seen.insert(*order_id);
                self.open.insert(*order_id, quantity);
            }
            C::Release { order_id } => {
                if self.open.remove(order_id).is_none() {
                    return Expect::Nothing;
                }
            }
            C::Commit { order_id } => match self.open.remove(order_id) {
                Some(quantity) => {
                    self.on_hand -= quantity;
                    self.committed.insert(*order_id);
                }
                None if self.committed.contains(order_id) => return Expect::Nothing,
                None => return Expect::Refused("reservation_not_found"),
            },
        }
        Expect::Accepted
    }
}

fn check_invariants(state: &InventoryState, model: &Model, log: &[InventoryEvent]) {
    assert!(
        state.reserved <= state.on_hand,
        "reserved > on_hand: {state:?}"
    );
    let open_sum: u64 = state
        .reservations
        .values()
        .map(|q| u64::from(q.get()))
        .sum();
    assert_eq!(
        state.reserved, open_sum,
        "reserved is not the sum of open reservations"
    );
    assert_eq!(state.available(), state.on_hand - state.reserved);
    assert_eq!(state.exists, model.exists);
    assert_eq!(i128::from(state.on_hand), model.on_hand, "on_hand");
    assert_eq!(i128::from(state.reserved), model.reserved(), "reserved");
    let open: BTreeMap<_, _> = state
        .reservations
        .iter()
        .map(|(order, q)| (*order, i128::from(q.get())))
        .collect();
    assert_eq!(open, model.open, "open reservations");
    assert!(
        state.ended.is_empty(),
        "the folded state keeps no ended order"
    );
    // Recalling the whole log recalls how every ended reservation ended.
    let committed: BTreeSet<OrderId> = Inventory::recall(state.clone(), log)
        .ended
        .into_iter()
        .filter(|(_, end)| *end == ReservationEnd::Committed)
        .map(|(order, _)| order)
        .collect();
    assert_eq!(committed, model.committed, "committed orders");
    let price = state.price.map(|p| (p.unit_price.amount(), p.currency));
    assert_eq!(price, model.price, "price");
    assert!(price.is_none_or(|(p, _)| p > 0), "a price is always > 0");
    match state.catalog_price() {
        CatalogPrice::Unknown => assert!(!model.exists),
        CatalogPrice::Unpriced => assert!(model.exists && model.price.is_none()),
        CatalogPrice::Priced(p) => assert_eq!(Some((p.unit_price.amount(), p.currency)), price),
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn every_reachable_inventory_state_is_sound(commands in commands()) {
        let mut state = Inventory::initial();
        let mut model = Model::default();
        let mut log = Vec::new();
        for command in &commands {
            let result = decide_recalling::<Inventory>(&state, &log, command);
            let expected = model.step(command);
            prop_assert_eq!(Expect::of(&result), expected, "{:?} on {:?}", command, state);
            if let Ok(events) = result {
                for event in &events {
                    assert_round_trips(event);
                }
                state = Inventory::fold(state, &events);
                log.extend(events);
            }
            // A refusal carries no events: the state is left as it was.
            check_invariants(&state, &model, &log);
        }
        prop_assert_eq!(&refold_from_stored::<Inventory>(&log), &state);
        assert_state_round_trips::<Inventory>(&state);
    }
}
