//! Integration tests of the Query API: handler tests over a real database
//! (read models built by the real projectors), and an end-to-end test through
//! the relay, the broker at `KAFKA_BROKERS` and the projection workers.

mod e2e;
mod handlers;
mod saga_sim;
mod sagas;
mod support;
