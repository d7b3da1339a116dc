//! Integration tests of the projections: projector tests need only Postgres;
//! worker tests also need the Kafka broker at `KAFKA_BROKERS`.

mod correlation;
mod outage;
mod projector;
mod randomised;
mod saga_sim;
mod sagas;
mod rebuild;
mod support;
mod worker;
