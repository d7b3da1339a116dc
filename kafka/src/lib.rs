//! Relay from the event store to Kafka. Filled by the Kafka fan-out issue.
