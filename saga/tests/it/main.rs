//! The saga's integration tests, against a real PostgreSQL and a real
//! Kafka-protocol broker: orders placed over HTTP, the relay publishing to
//! Kafka, and the orchestrator (trigger and driver) in this process.

mod outage;
mod paths;
mod simulation;
mod support;
