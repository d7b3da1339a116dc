//! Integration tests of the projections: projector tests need only Postgres;
//! worker tests also need the Kafka broker at `KAFKA_BROKERS`.

mod correlation;
mod http_operations;
mod outage;
mod prices;
mod projector;
mod randomised;
mod readiness;
mod rebuild;
mod sagas;
mod worker;
