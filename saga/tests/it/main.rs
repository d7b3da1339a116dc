//! The saga's integration tests, against a real PostgreSQL and a real
//! Kafka-protocol broker: orders placed over HTTP, the relay publishing to
//! Kafka (for the read models; the saga does not read it), and the
//! orchestrator (the trigger tailing the event store, and the driver) in
//! this process.

mod backlog;
mod carrier;
mod flash;
mod outage;
mod paths;
mod simulation;
mod trigger;
