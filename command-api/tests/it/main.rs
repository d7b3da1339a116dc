//! Integration tests of the Command API: a real server on 127.0.0.1:0 over
//! a fresh PostgreSQL database per test.

mod access;
mod accounts;
mod backlog;
mod cache;
mod callers;
mod concurrency;
mod connection;
mod idempotency;
mod inventory;
mod limits;
mod observability;
mod orders;
mod owners;
mod ownership;
mod prices;
mod sagas;
mod scoped_keys;
mod shutdown;
mod validation;
