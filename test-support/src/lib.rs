//! What Purser's integration tests and benchmarks share, written once.
//!
//! - Always: [`eventually`] and [`Deadline`] (waits with a deadline, never a
//!   bare sleep), [`env_or`] (benchmark knobs), [`init_tracing`], the
//!   given/when/then harness for deciders ([`decider`]) and domain values
//!   built from plain numbers ([`fixtures`]).
//! - Feature `postgres`: [`TestDatabase`] (a fresh, migrated database per
//!   test), the [`Harness`] that runs commands through the real repository,
//!   the saga simulation ([`saga_sim`]) and a throwaway PostgreSQL cluster
//!   that speaks TLS only ([`tls_postgres`]).
//! - Feature `kafka`: topics of their own on the test broker ([`kafka`]).
//! - Feature `command-api`: the Command API on port 0 ([`command_api`]),
//!   HTTP assertions ([`http`]), real keys and tokens ([`tokens`]) and the
//!   nginx gateway on free ports ([`gateway`]).
//! - Feature `services`: the read side on a [`Harness`] ([`projections`]),
//!   the Query API's router without a socket ([`router`]), every component
//!   under one shutdown token ([`pipeline`]) and the saga tests' world
//!   ([`world`]).
//!
//! Only integration tests (`tests/`) and benchmarks use this crate: a unit
//! test inside a crate's `src` would see two copies of that crate.

#![warn(unreachable_pub)]

pub mod decider;
pub mod fixtures;
mod wait;

pub use wait::{env_or, eventually, init_tracing, wait_until, Deadline};

#[cfg(feature = "postgres")]
mod database;
#[cfg(feature = "postgres")]
pub mod saga_sim;
#[cfg(feature = "postgres")]
pub mod store;
#[cfg(feature = "postgres")]
pub mod tls_postgres;
#[cfg(feature = "postgres")]
pub use database::{TestDatabase, DEFAULT_DATABASE_URL, NAME_PREFIX};
#[cfg(feature = "postgres")]
pub use store::Harness;

#[cfg(feature = "kafka")]
pub mod kafka;

#[cfg(feature = "command-api")]
pub mod command_api;
#[cfg(feature = "command-api")]
pub mod gateway;
#[cfg(feature = "command-api")]
pub mod http;
#[cfg(feature = "command-api")]
pub mod tokens;

#[cfg(feature = "services")]
pub mod pipeline;
#[cfg(feature = "services")]
pub mod projections;
#[cfg(feature = "services")]
pub mod router;
#[cfg(feature = "services")]
pub mod world;
