//! A small test aggregate, its streams and events.

use domain::{Aggregate, DecodeError, DomainError, DomainEvent, ErrorKind};
use event_store::{Metadata, NewEvent, StreamId};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

/// A counter that must be opened before amounts are added to it.
pub struct Counter;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    pub opened: bool,
    pub total: i64,
    pub additions: u64,
}

#[derive(Debug)]
pub enum CounterCommand {
    Open,
    /// 0 is accepted and appends nothing; negative amounts are refused.
    Add(i64),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CounterEvent {
    Opened,
    /// Schema version 2 is `{"amount": n}`; version 1 was `{"value": n}`.
    Added {
        amount: i64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CounterError {
    #[error("counter not opened")]
    NotOpened,
    #[error("counter already opened")]
    AlreadyOpened,
    #[error("negative amount")]
    Negative,
}

impl DomainError for CounterError {
    fn code(&self) -> &'static str {
        match self {
            CounterError::NotOpened => "counter_not_found",
            CounterError::AlreadyOpened => "counter_already_exists",
            CounterError::Negative => "negative_amount",
        }
    }

    fn kind(&self) -> ErrorKind {
        match self {
            CounterError::NotOpened => ErrorKind::NotFound,
            CounterError::AlreadyOpened => ErrorKind::AlreadyExists,
            CounterError::Negative => ErrorKind::Rejected,
        }
    }
}

#[derive(Deserialize)]
struct AddedV2 {
    amount: i64,
}

#[derive(Deserialize)]
struct AddedV1 {
    value: i64,
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CounterEvent::Opened => "Opened",
            CounterEvent::Added { .. } => "Added",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            CounterEvent::Opened => 1,
            CounterEvent::Added { .. } => 2,
        }
    }

    fn to_payload(&self) -> serde_json::Value {
        match self {
            CounterEvent::Opened => json!({}),
            CounterEvent::Added { amount } => json!({ "amount": amount }),
        }
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        let invalid = |source| DecodeError::Payload {
            event_type: event_type.to_owned(),
            source,
        };
        match (event_type, schema_version) {
            ("Opened", 1) => Ok(CounterEvent::Opened),
            ("Added", 1) => {
                let v1: AddedV1 = serde_json::from_value(payload).map_err(invalid)?;
                Ok(CounterEvent::Added { amount: v1.value })
            }
            ("Added", 2) => {
                let v2: AddedV2 = serde_json::from_value(payload).map_err(invalid)?;
                Ok(CounterEvent::Added { amount: v2.amount })
            }
            _ => Err(DecodeError::UnknownType {
                event_type: event_type.to_owned(),
                schema_version,
            }),
        }
    }
}

impl Aggregate for Counter {
    const STREAM_TYPE: &'static str = "counter";
    type State = CounterState;
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;

    fn initial() -> CounterState {
        CounterState::default()
    }

    fn decide(
        state: &CounterState,
        command: &CounterCommand,
    ) -> Result<Vec<CounterEvent>, CounterError> {
        match command {
            CounterCommand::Open if state.opened => Err(CounterError::AlreadyOpened),
            CounterCommand::Open => Ok(vec![CounterEvent::Opened]),
            CounterCommand::Add(_) if !state.opened => Err(CounterError::NotOpened),
            CounterCommand::Add(n) if *n < 0 => Err(CounterError::Negative),
            CounterCommand::Add(0) => Ok(vec![]),
            CounterCommand::Add(n) => Ok(vec![CounterEvent::Added { amount: *n }]),
        }
    }

    fn evolve(mut state: CounterState, event: &CounterEvent) -> CounterState {
        match event {
            CounterEvent::Opened => state.opened = true,
            CounterEvent::Added { amount } => {
                state.total += amount;
                state.additions += 1;
            }
        }
        state
    }
}

/// A stream of the test aggregate with a fresh id.
pub fn new_counter_stream() -> (String, StreamId) {
    let id = Uuid::now_v7().to_string();
    let stream = StreamId::of::<Counter>(&id);
    (id, stream)
}

/// A persisted `Added` event.
pub fn added(amount: i64) -> NewEvent {
    NewEvent::from_domain(&CounterEvent::Added { amount })
}

pub fn metadata(correlation: &str) -> Metadata {
    Metadata {
        correlation_id: Some(correlation.to_owned()),
        causation_id: None,
        actor: Some("test".to_owned()),
        traceparent: None,
    }
}

/// What a caller keeps of a counter command under its idempotency key: a
/// typed record, stored as JSON and handed back as the same value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum CounterRecord {
    Done {
        total: i64,
        version: u64,
        position: Option<i64>,
    },
    Refused {
        code: String,
    },
}

/// The record of a counter command: the outcome's total, version and
/// position, or the refusal's code.
pub fn record(result: Result<&event_store::Outcome<Counter>, &CounterError>) -> CounterRecord {
    match result {
        Ok(outcome) => CounterRecord::Done {
            total: outcome.state.total,
            version: outcome.version,
            position: outcome.position,
        },
        Err(refusal) => CounterRecord::Refused {
            code: refusal.code().to_owned(),
        },
    }
}
