//! Given/when/then: one test per rule and per refusal of an inventory item.

use domain::{
    Aggregate, ErrorKind, Inventory, InventoryCommand as C, InventoryEvent as E, InventoryState,
};

use super::*;
use test_support::decider::{given, given_state};

fn create(name: &str, quantity: i64) -> C {
    C::Create {
        sku: sku(),
        name: name.to_owned(),
        quantity: qty(quantity),
        price: laptop_price(),
    }
}

#[test]
fn create_emits_item_created() {
    let state = given::<Inventory>([])
        .when(create("Laptop 15\"", 10))
        .then([created(10)]);
    assert!(state.exists);
    assert_eq!(state.sku, Some(sku()));
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (10, 0, 10)
    );
}

#[test]
fn create_twice_is_already_exists() {
    given::<Inventory>([created(10)])
        .when(create("Laptop 15\"", 10))
        .then_error_kind("item_already_exists", ErrorKind::AlreadyExists);
}

#[test]
fn create_with_a_blank_or_too_long_name_is_invalid_name() {
    for name in ["", "   ", &"n".repeat(201)] {
        given::<Inventory>([])
            .when(create(name, 1))
            .then_error_kind("invalid_name", ErrorKind::Rejected);
    }
}

#[test]
fn a_name_of_200_characters_is_accepted() {
    let name = "ñ".repeat(200);
    given::<Inventory>([])
        .when(create(&name, 1))
        .then([E::ItemCreated {
            sku: sku(),
            name,
            quantity: qty(1),
            price: Some(laptop_price()),
        }]);
}

#[test]
fn any_command_but_create_on_a_missing_item_is_not_found() {
    for command in [
        C::Restock { quantity: qty(1) },
        C::Reserve {
            order_id: order(1),
            quantity: qty(1),
        },
        C::Release { order_id: order(1) },
        C::Commit { order_id: order(1) },
    ] {
        given::<Inventory>([])
            .when(command)
            .then_error_kind("item_not_found", ErrorKind::NotFound);
    }
}

#[test]
fn restock_adds_to_on_hand() {
    let state = given::<Inventory>([created(10), reserved(1, 4)])
        .when(C::Restock { quantity: qty(5) })
        .then([E::ItemRestocked { quantity: qty(5) }]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (15, 4, 11)
    );
}

#[test]
fn restock_beyond_i64_max_is_stock_overflow() {
    let state = InventoryState {
        on_hand: InventoryState::MAX_ON_HAND - 4,
        ..Inventory::fold(Inventory::initial(), &[created(1)])
    };
    given_state::<Inventory>(state.clone())
        .when(C::Restock { quantity: qty(5) })
        .then_error_kind("stock_overflow", ErrorKind::Rejected);
    let after = given_state::<Inventory>(state)
        .when(C::Restock { quantity: qty(4) })
        .then([E::ItemRestocked { quantity: qty(4) }]);
    assert_eq!(after.on_hand, InventoryState::MAX_ON_HAND);
}

#[test]
fn reserve_holds_stock_for_the_order() {
    let state = given::<Inventory>([created(10)])
        .when(C::Reserve {
            order_id: order(1),
            quantity: qty(4),
        })
        .then([reserved(1, 4)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (10, 4, 6)
    );
    assert_eq!(state.reservations.get(&order(1)), Some(&qty(4)));
}

#[test]
fn reserve_of_exactly_what_is_available_is_accepted() {
    given::<Inventory>([created(10), reserved(1, 4)])
        .when(C::Reserve {
            order_id: order(2),
            quantity: qty(6),
        })
        .then([reserved(2, 6)]);
}

#[test]
fn reserve_beyond_what_is_available_is_insufficient_stock() {
    given::<Inventory>([created(10), reserved(1, 4)])
        .when(C::Reserve {
            order_id: order(2),
            quantity: qty(7),
        })
        .then_error_kind("insufficient_stock", ErrorKind::Rejected);
}

#[test]
fn reserving_again_for_the_same_order_appends_nothing() {
    for history in [
        vec![created(10), reserved(1, 4)],
        vec![created(10), reserved(1, 4), released(1, 4)],
        vec![created(10), reserved(1, 4), committed(1, 4)],
    ] {
        given::<Inventory>(history)
            .when(C::Reserve {
                order_id: order(1),
                quantity: qty(2),
            })
            .then_nothing();
    }
}

#[test]
fn release_gives_the_stock_back() {
    let state = given::<Inventory>([created(10), reserved(1, 4), reserved(2, 3)])
        .when(C::Release { order_id: order(1) })
        .then([released(1, 4)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (10, 3, 7)
    );
    assert!(!state.reservations.contains_key(&order(1)));
}

#[test]
fn release_of_an_unknown_released_or_committed_reservation_appends_nothing() {
    for history in [
        vec![created(10)],
        vec![created(10), reserved(1, 4), released(1, 4)],
        vec![created(10), reserved(1, 4), committed(1, 4)],
    ] {
        given::<Inventory>(history)
            .when(C::Release { order_id: order(1) })
            .then_nothing();
    }
}

#[test]
fn commit_drops_on_hand_and_reserved() {
    let state = given::<Inventory>([created(10), reserved(1, 4), reserved(2, 3)])
        .when(C::Commit { order_id: order(1) })
        .then([committed(1, 4)]);
    assert_eq!(
        (state.on_hand, state.reserved, state.available()),
        (6, 3, 3)
    );
    assert!(!state.reservations.contains_key(&order(1)));
    // The state keeps no trace of the finished order: only its recalled
    // past tells a repeated commit from one never reserved.
    assert_eq!(
        state,
        Inventory::fold(Inventory::initial(), &[created(6), reserved(2, 3)])
    );
}

#[test]
fn committing_again_appends_nothing() {
    given::<Inventory>([created(10), reserved(1, 4), committed(1, 4)])
        .when(C::Commit { order_id: order(1) })
        .then_nothing();
}

#[test]
fn commit_of_an_order_never_reserved_or_released_is_reservation_not_found() {
    for history in [
        vec![created(10)],
        vec![created(10), reserved(1, 4), released(1, 4)],
    ] {
        given::<Inventory>(history)
            .when(C::Commit { order_id: order(1) })
            .then_error_kind("reservation_not_found", ErrorKind::Rejected);
    }
}

#[test]
fn payloads_have_the_documented_shape() {
    use domain::DomainEvent;
    use serde_json::json;

    assert_eq!(
        created(10).to_payload(),
        json!({"sku": "LAPTOP-15", "name": "Laptop 15\"", "quantity": 10,
               "price": {"unit_price": 99_999, "currency": "EUR"}})
    );
    assert_eq!(created(10).schema_version(), 2);
    assert_eq!(
        reserved(1, 4).to_payload(),
        json!({"order_id": "00000000-0000-0000-0000-000000000d01", "quantity": 4})
    );
    assert_eq!(reserved(1, 4).event_type(), "StockReserved");
    assert_eq!(released(1, 4).event_type(), "ReservationReleased");
    assert_eq!(committed(1, 4).event_type(), "ReservationCommitted");
    assert!(matches!(
        E::from_stored("StockReserved", 2, json!({})),
        Err(domain::DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        E::from_stored("StockReserved", 1, json!({"order_id": "x", "quantity": 1})),
        Err(domain::DecodeError::Payload { .. })
    ));
}

#[test]
fn after_ten_thousand_orders_the_state_is_what_one_open_reservation_needs() {
    let cycles: u128 = 10_000;
    let stock = 20_000;
    let mut state = Inventory::fold(Inventory::initial(), &[created(stock)]);
    for n in 0..cycles {
        for command in [
            C::Reserve {
                order_id: order(n),
                quantity: qty(1),
            },
            C::Commit { order_id: order(n) },
        ] {
            let events = Inventory::decide(&state, &command).expect("accepted");
            assert_eq!(events.len(), 1, "{command:?}");
            state = Inventory::fold(state, &events);
        }
    }
    let events = Inventory::decide(
        &state,
        &C::Reserve {
            order_id: order(cycles),
            quantity: qty(1),
        },
    )
    .expect("accepted");
    state = Inventory::fold(state, &events);

    // Exactly the state of an item with that stock and one reservation,
    // as a snapshot stores it too: nothing of the 10,000 finished orders.
    let stock_left = stock - i64::try_from(cycles).expect("fits");
    let one_open = Inventory::fold(
        Inventory::initial(),
        &[created(stock_left), reserved(cycles, 1)],
    );
    assert_eq!(state, one_open);
    assert_eq!(
        serde_json::to_string(&state).expect("serialises"),
        serde_json::to_string(&one_open).expect("serialises")
    );
}
