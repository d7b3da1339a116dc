//! Purser's Command API: every command of the API guide over HTTP.
//!
//! A request is parsed at the edge into domain newtypes ([`dto`],
//! [`extract`]), run through the event store's repository (load, decide,
//! append, with the idempotent answer stored in the same transaction:
//! [`commands`]), and answered with the aggregate's new version and global
//! position, or with an RFC 9457 problem ([`error`]).
//!
//! [`router`] builds the routes and middleware without I/O;
//! [`Application`] binds and serves them with graceful shutdown, and
//! purges expired idempotency keys in the background (`retention`).

#![warn(unreachable_pub)]

use std::net::SocketAddr;

pub mod access;
pub mod backlog;
pub mod catalog;
pub mod commands;
pub mod config;
pub mod dto;
pub mod error;
pub mod extract;
pub mod metrics;
pub mod middleware;
pub mod openapi;
mod retention;
pub mod routes;
mod startup;
pub mod state;

pub use config::Config;
pub use error::{ApiError, Problem};
pub use startup::{router, Application};
pub use state::AppState;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the application could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot bind {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),
}
