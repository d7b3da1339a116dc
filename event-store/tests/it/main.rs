//! Integration tests of the event store against a real PostgreSQL, each test
//! in its own database (`test_support::TestDatabase`).

mod append;
mod bounded;
mod cache;
mod counter;
mod group;
mod idempotency;
mod read_all;
mod repository;
mod retention;
mod subscription;
mod upcasting;
