//! Integration tests of the `kafka` crate: a real Postgres (one database per
//! test) and a real broker at `KAFKA_BROKERS` (default 127.0.0.1:9092), each
//! test with its own random topic prefix.

mod common;
mod consumer;
mod leadership;
mod relay;
mod topics;
