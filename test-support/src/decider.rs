//! A tiny given/when/then harness for deciders (in the manner of cqrs-es's
//! `TestFramework`), and the round-trip checks the property tests share.

use std::fmt::Debug;

use domain::{Aggregate, DomainError, DomainEvent, ErrorKind};

/// Starts a scenario from the state that folding `events` gives; a command
/// is decided as the repository decides it, with the past it needs
/// recalled from `events` (`domain::decide_recalling`).
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    Given {
        state: A::fold(A::initial(), &events),
        history: events,
    }
}

/// Starts a scenario from an explicit state (one no short event history
/// reaches, e.g. a balance next to `i64::MAX`), with no past to recall.
pub fn given_state<A: Aggregate>(state: A::State) -> Given<A> {
    Given {
        state,
        history: Vec::new(),
    }
}

pub struct Given<A: Aggregate> {
    state: A::State,
    history: Vec<A::Event>,
}

impl<A: Aggregate> Given<A> {
    pub fn when(self, command: A::Command) -> Then<A> {
        let result = domain::decide_recalling::<A>(&self.state, &self.history, &command);
        Then {
            state: self.state,
            command,
            result,
        }
    }
}

pub struct Then<A: Aggregate> {
    state: A::State,
    command: A::Command,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Then<A>
where
    A::Error: Debug,
{
    /// Asserts the command was accepted with exactly `expected`, and returns
    /// the state after them.
    #[track_caller]
    pub fn then(self, expected: impl IntoIterator<Item = A::Event>) -> A::State {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "events for {:?}", self.command);
                for event in &events {
                    assert_round_trips(event);
                }
                A::fold(self.state, &events)
            }
            Err(error) => panic!(
                "{:?} was refused with {} ({error}), expected {expected:?}",
                self.command,
                error.code()
            ),
        }
    }

    /// Asserts the command was accepted with at least one event, and
    /// returns the state after them.
    #[track_caller]
    pub fn then_some_events(self) -> A::State {
        match self.result {
            Ok(events) if !events.is_empty() => {
                for event in &events {
                    assert_round_trips(event);
                }
                A::fold(self.state, &events)
            }
            Ok(_) => panic!("{:?} appended nothing", self.command),
            Err(error) => panic!("{:?} was refused with {}", self.command, error.code()),
        }
    }

    /// Asserts the command was accepted and appended nothing (idempotent).
    #[track_caller]
    pub fn then_nothing(self) {
        self.then([]);
    }

    /// Asserts the command was refused with `code` and returns the error.
    #[track_caller]
    pub fn then_error(self, code: &str) -> A::Error {
        match self.result {
            Ok(events) => panic!(
                "{:?} was accepted with {events:?}, expected error {code}",
                self.command
            ),
            Err(error) => {
                assert_eq!(error.code(), code, "error for {:?}: {error}", self.command);
                error
            }
        }
    }

    /// Asserts the refusal's code and its kind.
    #[track_caller]
    pub fn then_error_kind(self, code: &str, kind: ErrorKind) -> A::Error {
        let error = self.then_error(code);
        assert_eq!(error.kind(), kind, "kind of {code}");
        error
    }
}

/// The event survives the stored form: payload JSON text, type name and
/// schema version back to the same event.
#[track_caller]
pub fn assert_round_trips<E: DomainEvent>(event: &E) {
    let payload = event.to_payload();
    assert!(
        payload.is_object(),
        "payload of {event:?} is not an object: {payload}"
    );
    assert!(
        payload.get("event_type").is_none(),
        "payload of {event:?} leaks the tag: {payload}"
    );
    // The event store recalls an order's past by the payload's `order_id`.
    if let Some(order_id) = event.order_id() {
        assert_eq!(
            payload.get("order_id").and_then(serde_json::Value::as_str),
            Some(order_id.to_string().as_str()),
            "payload of {event:?} is not found by its order"
        );
    }
    let text = serde_json::to_string(&payload).expect("payload serialises");
    let reparsed: serde_json::Value = serde_json::from_str(&text).expect("payload parses");
    let decoded = E::from_stored(event.event_type(), event.schema_version(), reparsed)
        .unwrap_or_else(|e| panic!("{event:?} does not decode from {text}: {e}"));
    assert_eq!(&decoded, event);
}

/// Every aggregate state serialises (snapshots) and comes back equal.
#[track_caller]
pub fn assert_state_round_trips<A: Aggregate>(state: &A::State) {
    let text = serde_json::to_string(state).expect("state serialises");
    let back: A::State = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("state does not deserialise from {text}: {e}"));
    assert_eq!(&back, state);
}

/// Decodes the events from their stored form and folds them from `initial`.
pub fn refold_from_stored<A: Aggregate>(events: &[A::Event]) -> A::State {
    let decoded: Vec<A::Event> = events
        .iter()
        .map(|e| {
            A::Event::from_stored(e.event_type(), e.schema_version(), e.to_payload())
                .unwrap_or_else(|err| panic!("{e:?} does not decode: {err}"))
        })
        .collect();
    A::fold(A::initial(), &decoded)
}

/// What the reference model expects of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Accepted, appending events.
    Accepted,
    /// Accepted, appending nothing (idempotent repeat).
    Nothing,
    /// Refused with this code.
    Refused(&'static str),
}

impl Expect {
    pub fn of<E, Err: DomainError>(result: &Result<Vec<E>, Err>) -> Expect {
        match result {
            Ok(events) if events.is_empty() => Expect::Nothing,
            Ok(_) => Expect::Accepted,
            Err(error) => Expect::Refused(error.code()),
        }
    }
}
