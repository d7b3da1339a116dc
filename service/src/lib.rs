//! What Purser's processes share.
//!
//! - [`auth`]: the authentication layer both APIs install (bearer tokens,
//!   roles, abuse limits) and the bearer scheme of their OpenAPI documents.
//! - [`problem`]: RFC 9457 problem details (`application/problem+json`), the
//!   body of every error either HTTP API answers with. Each API keeps its own
//!   error enum and maps it to a [`Problem`].
//! - [`duration`]: durations as flags and environment variables write them
//!   (`90s`, `15m`, `24h`).
//! - [`http`]: serving a router with header-read and idle timeouts and
//!   graceful shutdown ([`http::serve`]), configured by [`HttpConfig`].
//! - [`middleware`]: the request id rule, the request's span (joined to a
//!   caller's `traceparent`) and load shedding, the same in both APIs.
//! - [`metrics`]: the process's one metrics registry (`prometheus-client`),
//!   `/metrics`, the APIs' RED metrics, and the admin listener of the
//!   processes without an API.
//! - [`otel`]: the OpenTelemetry trace pipeline (OTLP export) a process
//!   installs when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`openapi`]: what both OpenAPI documents say beyond each handler's
//!   annotations (the shared headers, answers, codes and uuid form).
//! - [`component`]: the one shape every long-running part of `purser` has
//!   (built with the process's pool, then run until the shutdown token is
//!   cancelled), and [`Components`], which runs several as tasks of their
//!   own and stops them all when one fails.
//! - [`readiness`]: whether each component of a process does its job yet
//!   ([`Readiness`]), which both APIs' `/health/ready` tell in `purser
//!   serve`.
//! - [`shutdown`]: the process's one signal handler (SIGTERM, ctrl-c), which
//!   cancels the shutdown token.

#![warn(unreachable_pub)]

pub mod auth;
pub mod component;
pub mod duration;
pub mod http;
pub mod metrics;
pub mod middleware;
pub mod openapi;
pub mod otel;
pub mod problem;
pub mod readiness;
pub mod shutdown;

pub use component::{Component, Components, Stopped};
pub use http::HttpConfig;
pub use middleware::ConcurrencyCap;
pub use problem::{problem_response, Problem, PROBLEM_JSON};
pub use readiness::{Readiness, ReadyFlag};
pub use shutdown::cancel_on_signal;
pub use tokio_util::sync::CancellationToken;
