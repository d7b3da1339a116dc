//! Given/when/then rules of the saga's decider, and what its planner says
//! in each situation.

use domain::{
    next_action, Action, Aggregate, CancellationReason, FulfilmentSaga, SagaCommand as C,
    SagaEvent as E, SagaState, SagaStatus, Step,
};

use super::{at, done, saga_id, saga_order, sku_step, started, two_lines};
use crate::order::line;
use test_support::decider::{assert_round_trips, given};

fn fold(events: impl IntoIterator<Item = E>) -> SagaState {
    let events: Vec<E> = events.into_iter().collect();
    FulfilmentSaga::fold(FulfilmentSaga::initial(), &events)
}

fn all_forward_done() -> Vec<E> {
    let order = two_lines();
    let mut events = vec![started(order.clone())];
    for step in order.forward_steps() {
        events.extend(done(step));
    }
    events
}

#[test]
fn a_saga_starts_once_per_order() {
    given::<FulfilmentSaga>([started(two_lines())])
        .when(C::Start {
            saga_id: uuid::Uuid::from_u128(0xBEEF),
            order: two_lines(),
        })
        .then_nothing();
}

#[test]
fn an_unstarted_saga_refuses_everything_but_start() {
    given::<FulfilmentSaga>([])
        .when(C::Complete)
        .then_error("saga_not_found");
    given::<FulfilmentSaga>([])
        .when(C::Retry)
        .then_error("saga_not_found");
}

#[test]
fn forward_steps_run_in_order_reserve_charge_ship_commit() {
    let order = two_lines();
    let names: Vec<String> = order.forward_steps().iter().map(Step::to_string).collect();
    assert_eq!(
        names,
        [
            "reserve_stock:A",
            "reserve_stock:B",
            "mark_reserved",
            "charge_payment",
            "mark_paid",
            "ship",
            "mark_shipped",
            "commit_stock:A",
            "commit_stock:B"
        ]
    );
    let mut events = vec![started(order.clone())];
    for step in order.forward_steps() {
        let state = fold(events.clone());
        assert_eq!(
            next_action(&state, &at(0)),
            Action::Attempt {
                step: step.clone(),
                attempt: 1
            }
        );
        events.extend(done(step));
    }
    let state = fold(events.clone());
    assert_eq!(next_action(&state, &at(0)), Action::Complete);
    let state = given::<FulfilmentSaga>(events)
        .when(C::Complete)
        .then([E::SagaCompleted]);
    assert_eq!(state.status, SagaStatus::Completed);
    assert_eq!(next_action(&state, &at(0)), Action::Done);
}

#[test]
fn an_order_with_a_zero_total_is_not_charged() {
    let order = saga_order(vec![line("FREE", 1, 0)], "ES");
    let steps = order.forward_steps();
    assert!(!steps.contains(&Step::ChargePayment));
    assert!(steps.contains(&Step::MarkPaid));
}

#[test]
fn completing_with_steps_left_is_refused() {
    given::<FulfilmentSaga>([started(two_lines())])
        .when(C::Complete)
        .then_error("invalid_transition");
}

#[test]
fn out_of_stock_on_the_second_line_releases_both_lines_in_reverse() {
    let mut events = vec![started(two_lines())];
    events.extend(done(sku_step("reserve", "A")));
    events.push(E::StepStarted {
        step: sku_step("reserve", "B"),
        attempt: 1,
        deadline_ms: 1_000,
    });
    let state = given::<FulfilmentSaga>(events.clone())
        .when(C::RefuseStep {
            step: sku_step("reserve", "B"),
            code: "insufficient_stock".into(),
            error: "only 0 available".into(),
        })
        .then([
            E::StepRefused {
                step: sku_step("reserve", "B"),
                code: "insufficient_stock".into(),
                error: "only 0 available".into(),
            },
            E::CompensationStarted {
                reason: CancellationReason::OutOfStock,
            },
        ]);
    assert_eq!(state.status, SagaStatus::Compensating);
    assert_eq!(
        state.compensation_steps(),
        [
            sku_step("release", "B"),
            sku_step("release", "A"),
            Step::CancelOrder
        ]
    );
    assert_eq!(
        next_action(&state, &at(0)),
        Action::Attempt {
            step: sku_step("release", "B"),
            attempt: 1
        }
    );
}

#[test]
fn a_refused_charge_refunds_nothing_it_did_not_attempt_but_the_charge_itself() {
    let order = two_lines();
    let mut events = vec![started(order)];
    events.extend(done(sku_step("reserve", "A")));
    events.extend(done(sku_step("reserve", "B")));
    events.extend(done(Step::MarkReserved));
    events.push(E::StepStarted {
        step: Step::ChargePayment,
        attempt: 1,
        deadline_ms: 1_000,
    });
    events.push(E::StepRefused {
        step: Step::ChargePayment,
        code: "insufficient_funds".into(),
        error: "balance 0".into(),
    });
    events.push(E::CompensationStarted {
        reason: CancellationReason::PaymentDeclined,
    });
    let state = fold(events);
    // The refund of a refused charge is a no-op, but the saga cannot tell a
    // refusal stored under its key from a charge made before a crash.
    assert_eq!(
        state.compensation_steps(),
        [
            Step::RefundPayment,
            sku_step("release", "B"),
            sku_step("release", "A"),
            Step::CancelOrder
        ]
    );
}

#[test]
fn a_carrier_refusal_cancels_the_shipment_refunds_and_releases() {
    let order = two_lines();
    let mut events = vec![started(order.clone())];
    for step in order.forward_steps().into_iter().take(5) {
        events.extend(done(step));
    }
    events.push(E::StepStarted {
        step: Step::Ship,
        attempt: 1,
        deadline_ms: 1_000,
    });
    let state = given::<FulfilmentSaga>(events)
        .when(C::RefuseStep {
            step: Step::Ship,
            code: "shipment_refused".into(),
            error: "no delivery to XX".into(),
        })
        .then([
            E::StepRefused {
                step: Step::Ship,
                code: "shipment_refused".into(),
                error: "no delivery to XX".into(),
            },
            E::CompensationStarted {
                reason: CancellationReason::ShippingFailed,
            },
        ]);
    assert_eq!(
        state.compensation_steps(),
        [
            Step::CancelShipment,
            Step::RefundPayment,
            sku_step("release", "B"),
            sku_step("release", "A"),
            Step::CancelOrder
        ]
    );
}

#[test]
fn transient_failures_wait_for_their_retry_time_then_run_out_of_budget() {
    let step = sku_step("reserve", "A");
    let mut events = vec![started(two_lines())];
    for attempt in 1..=3 {
        let state = fold(events.clone());
        if attempt > 1 {
            assert_eq!(
                next_action(&state, &at(attempt * 100 - 1)),
                Action::Wait {
                    until_ms: attempt * 100
                }
            );
        }
        assert_eq!(
            next_action(&state, &at(attempt * 100)),
            Action::Attempt {
                step: step.clone(),
                attempt: attempt as u32
            }
        );
        events.push(E::StepStarted {
            step: step.clone(),
            attempt: attempt as u32,
            deadline_ms: 10_000,
        });
        events.push(E::StepFailed {
            step: step.clone(),
            attempt: attempt as u32,
            error: "database unavailable".into(),
            retry_at_ms: (attempt + 1) * 100,
        });
    }
    let state = fold(events.clone());
    let Action::NeedsAttention { step: stuck, error } = next_action(&state, &at(10_000)) else {
        panic!("expected needs_attention");
    };
    assert_eq!(stuck, step);
    // The code of the last failure, never its text.
    assert_eq!(error, "unavailable");

    let state = given::<FulfilmentSaga>(events)
        .when(C::NeedAttention {
            step: step.clone(),
            error,
        })
        .then_some_events();
    assert_eq!(state.status, SagaStatus::NeedsAttention);
    assert_eq!(next_action(&state, &at(10_000)), Action::Idle);

    // An operator's retry gives the step a fresh budget and a new key.
    let retried = FulfilmentSaga::evolve(state, &E::SagaRetried);
    assert_eq!(retried.status, SagaStatus::Running);
    assert_eq!(retried.retries, 1);
    assert_eq!(
        next_action(&retried, &at(10_000)),
        Action::Attempt { step, attempt: 4 }
    );
}

#[test]
fn an_attempt_cut_short_by_a_crash_is_resumed_until_its_persisted_deadline() {
    let mut events = vec![started(two_lines())];
    events.push(E::StepStarted {
        step: sku_step("reserve", "A"),
        attempt: 1,
        deadline_ms: 5_000,
    });
    let state = fold(events);
    assert_eq!(
        next_action(&state, &at(4_999)),
        Action::Resume {
            step: sku_step("reserve", "A"),
            attempt: 1,
            deadline_ms: 5_000
        }
    );
    assert_eq!(
        next_action(&state, &at(5_000)),
        Action::TimedOut {
            step: sku_step("reserve", "A"),
            attempt: 1
        }
    );
}

#[test]
fn a_customer_cancellation_is_honoured_until_the_order_is_marked_shipped() {
    let order = two_lines();
    let cancel = |now_ms| domain::Situation {
        cancellation_requested: true,
        ..at(now_ms)
    };
    let mut events = vec![started(order.clone())];
    for step in order.forward_steps() {
        let state = fold(events.clone());
        let expected = if state.succeeded(&Step::MarkShipped) {
            Action::Attempt {
                step: step.clone(),
                attempt: 1,
            }
        } else {
            Action::BeginCompensation(CancellationReason::CustomerRequest)
        };
        assert_eq!(next_action(&state, &cancel(0)), expected, "before {step}");
        events.extend(done(step));
    }
    given::<FulfilmentSaga>(events)
        .when(C::BeginCompensation {
            reason: CancellationReason::CustomerRequest,
        })
        .then_error("invalid_transition");
}

#[test]
fn an_attempt_in_progress_is_settled_before_a_cancellation() {
    let mut events = vec![started(two_lines())];
    events.push(E::StepStarted {
        step: sku_step("reserve", "A"),
        attempt: 1,
        deadline_ms: 5_000,
    });
    let state = fold(events);
    let situation = domain::Situation {
        cancellation_requested: true,
        ..at(0)
    };
    assert!(matches!(
        next_action(&state, &situation),
        Action::Resume { .. }
    ));
}

#[test]
fn a_refused_compensation_needs_attention() {
    let mut events = vec![started(two_lines())];
    events.extend(done(sku_step("reserve", "A")));
    events.push(E::CompensationStarted {
        reason: CancellationReason::CustomerRequest,
    });
    events.push(E::StepStarted {
        step: sku_step("release", "A"),
        attempt: 1,
        deadline_ms: 1_000,
    });
    let state = given::<FulfilmentSaga>(events)
        .when(C::RefuseStep {
            step: sku_step("release", "A"),
            code: "inventory_not_found".into(),
            error: "gone".into(),
        })
        .then_some_events();
    assert_eq!(state.status, SagaStatus::NeedsAttention);
    // Retried, the compensation goes on, not the forward path.
    let retried = FulfilmentSaga::evolve(state, &E::SagaRetried);
    assert_eq!(retried.status, SagaStatus::Compensating);
    assert_eq!(
        next_action(&retried, &at(0)),
        Action::Attempt {
            step: sku_step("release", "A"),
            attempt: 2
        }
    );
}

#[test]
fn recording_an_outcome_needs_a_running_step() {
    given::<FulfilmentSaga>([started(two_lines())])
        .when(C::SucceedStep {
            step: Step::MarkReserved,
            tracking_number: None,
        })
        .then_error("step_not_running");
}

#[test]
fn a_finished_saga_takes_no_more_steps() {
    let mut events = all_forward_done();
    events.push(E::SagaCompleted);
    given::<FulfilmentSaga>(events)
        .when(C::StartStep {
            step: Step::Ship,
            attempt: 2,
            deadline_ms: 0,
        })
        .then_error("invalid_transition");
}

#[test]
fn every_event_round_trips_through_its_stored_form() {
    let mut events = all_forward_done();
    events.extend([
        E::StepFailed {
            step: Step::Ship,
            attempt: 1,
            error: "timeout".into(),
            retry_at_ms: 1,
        },
        E::StepRefused {
            step: sku_step("reserve", "A"),
            code: "insufficient_stock".into(),
            error: "x".into(),
        },
        E::CompensationStarted {
            reason: CancellationReason::OutOfStock,
        },
        E::SagaCompensated,
        E::SagaNeedsAttention {
            step: Step::CancelOrder,
            error: "x".into(),
        },
        E::SagaRetried,
        E::StepSucceeded {
            step: Step::Ship,
            tracking_number: Some("SIM-1".into()),
        },
    ]);
    for event in &events {
        assert_round_trips(event);
    }
    let payload = domain::DomainEvent::to_payload(&E::StepStarted {
        step: sku_step("reserve", "A"),
        attempt: 1,
        deadline_ms: 7,
    });
    assert_eq!(payload["step"]["name"], "reserve_stock");
    assert_eq!(payload["step"]["sku"], "A");
    let _ = saga_id();
}

#[test]
fn an_attempt_in_progress_is_never_overlapped_by_another() {
    let mut events = vec![started(two_lines())];
    events.push(E::StepStarted {
        step: sku_step("reserve", "A"),
        attempt: 1,
        deadline_ms: 1_000,
    });
    given::<FulfilmentSaga>(events)
        .when(C::StartStep {
            step: sku_step("reserve", "A"),
            attempt: 2,
            deadline_ms: 2_000,
        })
        .then_error("invalid_transition");
}
