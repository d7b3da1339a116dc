//! Given/when/then: one test per rule and per refusal of an order.

use domain::{
    CancellationReason as R, ErrorKind, Order, OrderCommand as C, OrderEvent as E, OrderStatus,
};

use super::*;
use test_support::decider::given;

fn shipped() -> E {
    E::OrderShipped {
        tracking_number: "TRK-1".into(),
    }
}

fn requested() -> E {
    E::CancellationRequested {
        reason: "changed my mind".into(),
    }
}

fn request_cancellation() -> C {
    C::RequestCancellation {
        reason: "changed my mind".into(),
    }
}

fn mark_shipped() -> C {
    C::MarkShipped {
        tracking_number: "TRK-1".into(),
    }
}

/// Histories ending in each non-terminal status.
fn open_histories() -> Vec<(OrderStatus, Vec<E>)> {
    vec![
        (OrderStatus::Placed, vec![placed_one()]),
        (OrderStatus::Reserved, vec![placed_one(), E::OrderReserved]),
        (
            OrderStatus::Paid,
            vec![placed_one(), E::OrderReserved, E::OrderPaid],
        ),
    ]
}

fn shipped_history() -> Vec<E> {
    vec![placed_one(), E::OrderReserved, E::OrderPaid, shipped()]
}

fn cancelled_history() -> Vec<E> {
    vec![
        placed_one(),
        E::OrderCancelled {
            reason: R::OutOfStock,
        },
    ]
}

#[test]
fn place_emits_order_placed_with_the_total() {
    let lines = vec![line("LAPTOP-15", 2, 99_999), line("MOUSE", 3, 1_500)];
    let state = given::<Order>([])
        .when(place(lines.clone()))
        .then([placed(lines.clone(), 2 * 99_999 + 3 * 1_500)]);
    assert_eq!(state.status, OrderStatus::Placed);
    assert_eq!(state.lines, lines);
    assert_eq!(state.total.amount(), 204_498);
    assert_eq!(state.order_id, Some(order_id()));
}

#[test]
fn a_hundred_lines_are_accepted() {
    let lines: Vec<_> = (0..100).map(|i| line(&format!("SKU-{i}"), 1, 1)).collect();
    given::<Order>([])
        .when(place(lines.clone()))
        .then([placed(lines, 100)]);
}

#[test]
fn a_total_of_exactly_i64_max_is_accepted() {
    let lines = vec![line("A", 1, i64::MAX - 1), line("B", 1, 1)];
    given::<Order>([])
        .when(place(lines.clone()))
        .then([placed(lines, i64::MAX)]);
}

#[test]
fn place_on_an_existing_order_is_already_exists() {
    for history in [vec![placed_one()], shipped_history(), cancelled_history()] {
        given::<Order>(history)
            .when(place(vec![line("LAPTOP-15", 1, 1)]))
            .then_error_kind("order_already_exists", ErrorKind::AlreadyExists);
    }
}

#[test]
fn place_without_lines_is_invalid_order() {
    given::<Order>([])
        .when(place(vec![]))
        .then_error_kind("invalid_order", ErrorKind::Rejected);
}

#[test]
fn place_with_more_than_a_hundred_lines_is_invalid_order() {
    let lines = (0..101).map(|i| line(&format!("SKU-{i}"), 1, 1)).collect();
    given::<Order>([])
        .when(place(lines))
        .then_error_kind("invalid_order", ErrorKind::Rejected);
}

#[test]
fn place_with_a_sku_twice_is_invalid_order() {
    given::<Order>([])
        .when(place(vec![
            line("A", 1, 1),
            line("B", 1, 1),
            line("A", 2, 1),
        ]))
        .then_error_kind("invalid_order", ErrorKind::Rejected);
}

#[test]
fn place_whose_total_overflows_is_invalid_order() {
    // one line overflowing by itself
    given::<Order>([])
        .when(place(vec![line("A", 2, i64::MAX / 2 + 1)]))
        .then_error("invalid_order");
    // lines that fit, summing past i64::MAX
    given::<Order>([])
        .when(place(vec![line("A", 1, i64::MAX), line("B", 1, 1)]))
        .then_error("invalid_order");
}

#[test]
fn any_command_but_place_on_a_missing_order_is_not_found() {
    for command in [
        C::MarkReserved,
        C::MarkPaid,
        mark_shipped(),
        request_cancellation(),
        C::Cancel {
            reason: R::CustomerRequest,
        },
    ] {
        given::<Order>([])
            .when(command)
            .then_error_kind("order_not_found", ErrorKind::NotFound);
    }
}

#[test]
fn the_happy_path_is_placed_reserved_paid_shipped() {
    let state = given::<Order>([placed_one()])
        .when(C::MarkReserved)
        .then([E::OrderReserved]);
    assert_eq!(state.status, OrderStatus::Reserved);
    let state = given::<Order>([placed_one(), E::OrderReserved])
        .when(C::MarkPaid)
        .then([E::OrderPaid]);
    assert_eq!(state.status, OrderStatus::Paid);
    let state = given::<Order>([placed_one(), E::OrderReserved, E::OrderPaid])
        .when(mark_shipped())
        .then([shipped()]);
    assert_eq!(state.status, OrderStatus::Shipped);
    assert_eq!(state.tracking_number.as_deref(), Some("TRK-1"));
}

#[test]
fn steps_out_of_order_are_invalid_transitions() {
    let placed_h = vec![placed_one()];
    let reserved_h = vec![placed_one(), E::OrderReserved];
    let paid_h = vec![placed_one(), E::OrderReserved, E::OrderPaid];
    for (history, command) in [
        (placed_h.clone(), C::MarkPaid),
        (placed_h, mark_shipped()),
        (reserved_h.clone(), C::MarkReserved),
        (reserved_h, mark_shipped()),
        (paid_h.clone(), C::MarkReserved),
        (paid_h, C::MarkPaid),
    ] {
        given::<Order>(history)
            .when(command)
            .then_error_kind("invalid_transition", ErrorKind::Rejected);
    }
}

#[test]
fn steps_on_a_terminal_order_are_invalid_transitions() {
    for history in [shipped_history(), cancelled_history()] {
        for command in [C::MarkReserved, C::MarkPaid, mark_shipped()] {
            given::<Order>(history.clone())
                .when(command)
                .then_error_kind("invalid_transition", ErrorKind::Rejected);
        }
    }
}

#[test]
fn request_cancellation_records_the_reason_before_shipping() {
    for (status, history) in open_histories() {
        let state = given::<Order>(history)
            .when(request_cancellation())
            .then([requested()]);
        assert_eq!(state.status, status, "a request does not change the status");
        assert_eq!(
            state.cancellation_requested.as_deref(),
            Some("changed my mind")
        );
    }
}

#[test]
fn repeated_cancellation_requests_append_nothing() {
    given::<Order>([placed_one(), requested()])
        .when(C::RequestCancellation {
            reason: "really".into(),
        })
        .then_nothing();
}

#[test]
fn shipping_after_a_cancellation_request_is_an_invalid_transition() {
    given::<Order>([placed_one(), E::OrderReserved, E::OrderPaid, requested()])
        .when(mark_shipped())
        .then_error_kind("invalid_transition", ErrorKind::Rejected);
}

#[test]
fn steps_before_shipping_still_apply_after_a_cancellation_request() {
    // The saga may be mid-step when the request arrives; it compensates after.
    given::<Order>([placed_one(), requested()])
        .when(C::MarkReserved)
        .then([E::OrderReserved]);
    given::<Order>([placed_one(), requested(), E::OrderReserved])
        .when(C::MarkPaid)
        .then([E::OrderPaid]);
}

#[test]
fn cancel_works_from_every_state_before_shipping() {
    for reason in R::ALL {
        for (_, history) in open_histories() {
            let state = given::<Order>(history)
                .when(C::Cancel { reason })
                .then([E::OrderCancelled { reason }]);
            assert_eq!(state.status, OrderStatus::Cancelled);
            assert_eq!(state.cancellation_reason, Some(reason));
        }
    }
}

#[test]
fn cancelling_or_requesting_on_a_shipped_order_is_not_cancellable() {
    for command in [
        request_cancellation(),
        C::Cancel {
            reason: R::CustomerRequest,
        },
    ] {
        given::<Order>(shipped_history())
            .when(command)
            .then_error_kind("order_not_cancellable", ErrorKind::Rejected);
    }
}

#[test]
fn cancelling_or_requesting_on_a_cancelled_order_appends_nothing() {
    for command in [
        request_cancellation(),
        C::Cancel {
            reason: R::PaymentDeclined,
        },
    ] {
        given::<Order>(cancelled_history())
            .when(command)
            .then_nothing();
    }
}

#[test]
fn enums_serialise_snake_case() {
    let reasons: Vec<_> = R::ALL
        .iter()
        .map(|r| serde_json::to_value(r).expect("serialises"))
        .collect();
    assert_eq!(
        reasons,
        [
            "out_of_stock",
            "payment_declined",
            "shipping_failed",
            "customer_request"
        ]
    );
    for r in R::ALL {
        assert_eq!(serde_json::to_value(r).expect("serialises"), r.as_str());
    }
    for status in [
        OrderStatus::Placed,
        OrderStatus::Reserved,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ] {
        assert_eq!(
            serde_json::to_value(status).expect("serialises"),
            status.as_str()
        );
    }
    assert_eq!(OrderStatus::Paid.as_str(), "paid");
}

#[test]
fn payloads_have_the_documented_shape() {
    use domain::DomainEvent;
    use serde_json::json;

    assert_eq!(
        placed_one().to_payload(),
        json!({
            "order_id": "00000000-0000-0000-0000-000000000d01",
            "customer_id": "00000000-0000-0000-0000-0000000000c1",
            "account_id": "00000000-0000-0000-0000-0000000000a1",
            "currency": "EUR",
            "lines": [{"sku": "LAPTOP-15", "quantity": 1, "unit_price": 99_999}],
            "total": 99_999,
            "shipping_address": {"name": "Ana", "line1": "Calle Mayor 1", "city": "Madrid",
                                 "postal_code": "28013", "country": "ES"},
        })
    );
    assert_eq!(E::OrderReserved.to_payload(), json!({}));
    assert_eq!(
        E::OrderCancelled {
            reason: R::ShippingFailed
        }
        .to_payload(),
        json!({"reason": "shipping_failed"})
    );
    assert_eq!(shipped().to_payload(), json!({"tracking_number": "TRK-1"}));
    assert_eq!(requested().event_type(), "CancellationRequested");
}
