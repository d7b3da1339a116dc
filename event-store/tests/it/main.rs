//! Integration tests of the event store against a real PostgreSQL, each test
//! in its own database (`migrations::testing::TestDatabase`).

mod append;
mod idempotency;
mod read_all;
mod repository;
mod retention;
mod subscription;
mod support;
mod upcasting;
