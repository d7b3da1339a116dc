//! Integration tests of the Query API: handler tests over a real database
//! (read models built by the real projectors), end-to-end tests through the
//! relay, the broker at `KAFKA_BROKERS` and the projection workers, and the
//! operator's loop with the saga orchestrator and the Command API too.

mod access;
mod console;
mod e2e;
mod handlers;
mod limits;
mod operator;
mod prices;
mod progress;
mod sagas;
