//! Purser's Query API: the read models built by the projection workers, over
//! HTTP (the API guide, "Query API").
//!
//! Single-entity reads accept `?min_version=N&wait_ms=`: the handler waits
//! until the read model has applied version N, woken by the projections'
//! `pg_notify` (LISTEN) or a slow poll, never a busy loop ([`Progress`]).
//! Lists use keyset pagination with an opaque cursor. `/projections` and
//! `/metrics` compute head and lag from the event store. [`console`] is the
//! operator console (`GET /console`) and its live feed.
//!
//! [`router`] builds the service without I/O (handlers are tested with
//! `tower::ServiceExt::oneshot`); [`Application`] binds it and serves until
//! the process's shutdown token is cancelled (a [`service::Component`]).

#![warn(unreachable_pub)]

pub mod config;
pub mod console;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod pagination;
pub mod progress;
pub mod routes;
pub mod startup;
pub mod state;

pub use config::QueryApiConfig;
pub use error::{ApiError, Problem};
pub use openapi::ApiDoc;
pub use progress::Progress;
pub use startup::{router, Application};
pub use state::AppState;
