//! The simulated carrier as an HTTP server of its own (`purser carrier`):
//! the API [`HttpCarrier`](super::HttpCarrier) calls, with the behaviours
//! of [`SimulatedCarrier`] (refuses country `XX`, slow, fails the first N
//! shipments, hangs), honouring the idempotency key (one key ships once and
//! always answers the same tracking number), and counting what it receives
//! (`GET /stats`).
//!
//! | route | answer |
//! |---|---|
//! | `POST /shipments` (`Idempotency-Key`, `{"order_id", "address", "lines"}`) | 201 `{"tracking_number"}`; 200 with the same for a key shipped before; 422 `shipment_refused`; 503 while failing; 400 without a key |
//! | `POST /cancellations` (`Idempotency-Key`: the shipment's) | 200 `{}` |
//! | `GET /stats` | [`CarrierStats`] |
//! | `GET /health/live` | 200 |
//!
//! What it shipped lives in its memory ([`SimulatorState`]): a server
//! started again with the same state remembers it, as a real carrier's
//! database would.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::http::{ShipmentBody, Shipped, IDEMPOTENCY_KEY};
use super::{
    Carrier, CarrierControls, CarrierError, Shipment, SimulatedCarrier, SimulatedCarrierConfig,
};

/// What the simulated carrier received so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarrierStats {
    /// Requests to ship or cancel, whatever came of them.
    pub calls: u64,
    /// Shipments made: one per key.
    pub shipments: u64,
    /// Shipments asked again under a key shipped before (answered with its
    /// tracking number, not shipped again).
    pub duplicates: u64,
    /// Shipments refused (country `XX`).
    pub refused: u64,
    /// Calls answered 503 (the first N shipments, or a shutdown while
    /// hanging).
    pub failed: u64,
    /// Cancellations answered.
    pub cancellations: u64,
}

/// The simulated carrier's memory and counters, which outlive a server.
#[derive(Debug, Default)]
pub struct SimulatorState {
    carrier: SimulatedCarrier,
    shipped: Mutex<HashSet<String>>,
    calls: AtomicU64,
    shipments: AtomicU64,
    duplicates: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    cancellations: AtomicU64,
}

impl SimulatorState {
    /// A carrier that behaves as `config` says and has shipped nothing.
    pub fn new(config: &SimulatedCarrierConfig) -> Arc<SimulatorState> {
        Arc::new(SimulatorState {
            carrier: SimulatedCarrier::new(config),
            ..SimulatorState::default()
        })
    }

    /// The knobs of its behaviour.
    pub fn controls(&self) -> Arc<CarrierControls> {
        self.carrier.controls()
    }

    /// What it received so far.
    pub fn stats(&self) -> CarrierStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::SeqCst);
        CarrierStats {
            calls: get(&self.calls),
            shipments: get(&self.shipments),
            duplicates: get(&self.duplicates),
            refused: get(&self.refused),
            failed: get(&self.failed),
            cancellations: get(&self.cancellations),
        }
    }

    /// Whether a shipment was made under `key`.
    pub fn shipped(&self, key: &str) -> bool {
        self.shipped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(key)
    }
}

/// The simulated carrier's HTTP server, bound.
#[derive(Debug)]
pub struct CarrierServer {
    listener: TcpListener,
    state: Arc<SimulatorState>,
}

impl CarrierServer {
    /// Binds `addr` (port 0 picks a free one) for a carrier with `state`.
    pub async fn bind(addr: SocketAddr, state: Arc<SimulatorState>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(CarrierServer { listener, state })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; a call still hanging then is answered 503.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tracing::info!(address = %self.listener.local_addr()?, "simulated carrier listening");
        let app = router(self.state, shutdown.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    }
}

#[derive(Clone)]
struct AppState {
    carrier: Arc<SimulatorState>,
    shutdown: CancellationToken,
}

/// The simulated carrier's routes.
fn router(carrier: Arc<SimulatorState>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/shipments", post(ship))
        .route("/cancellations", post(cancel))
        .route(
            "/stats",
            get(|State(state): State<AppState>| async move { Json(state.carrier.stats()) }),
        )
        .route("/health/live", get(|| async { "ok" }))
        .with_state(AppState { carrier, shutdown })
}

fn problem(status: StatusCode, code: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn key_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
}

/// `carrier` called as `call` goes, unless the server stops first.
async fn or_shutdown<T>(
    shutdown: &CancellationToken,
    call: impl std::future::Future<Output = Result<T, CarrierError>>,
) -> Result<T, CarrierError> {
    tokio::select! {
        answer = call => answer,
        () = shutdown.cancelled() => Err(CarrierError::Unavailable("shutting down".to_owned())),
    }
}

async fn ship(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let carrier = &state.carrier;
    carrier.calls.fetch_add(1, Ordering::SeqCst);
    let Some(key) = key_of(&headers) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
            "a shipment needs an Idempotency-Key",
        );
    };
    let body: ShipmentBody = match serde_json::from_slice(&body) {
        Ok(body) => body,
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "invalid_body", &error.to_string());
        }
    };
    let shipment = Shipment {
        key,
        order_id: body.order_id,
        address: body.address,
        lines: body.lines,
    };
    match or_shutdown(&state.shutdown, carrier.carrier.ship(&shipment)).await {
        Ok(tracking_number) => {
            let first = carrier
                .shipped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(shipment.key.clone());
            let status = if first {
                carrier.shipments.fetch_add(1, Ordering::SeqCst);
                tracing::info!(key = %shipment.key, order_id = %shipment.order_id, %tracking_number, "shipped");
                StatusCode::CREATED
            } else {
                carrier.duplicates.fetch_add(1, Ordering::SeqCst);
                tracing::info!(key = %shipment.key, %tracking_number, "shipped before: same tracking number");
                StatusCode::OK
            };
            (status, Json(Shipped { tracking_number })).into_response()
        }
        Err(CarrierError::Refused(reason)) => {
            carrier.refused.fetch_add(1, Ordering::SeqCst);
            problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "shipment_refused",
                &reason,
            )
        }
        Err(error) => {
            carrier.failed.fetch_add(1, Ordering::SeqCst);
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "carrier_unavailable",
                &error.to_string(),
            )
        }
    }
}

async fn cancel(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let carrier = &state.carrier;
    carrier.calls.fetch_add(1, Ordering::SeqCst);
    let Some(key) = key_of(&headers) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "idempotency_key_missing",
            "a cancellation needs the shipment's Idempotency-Key",
        );
    };
    match or_shutdown(&state.shutdown, carrier.carrier.behave()).await {
        Ok(()) => {
            carrier.cancellations.fetch_add(1, Ordering::SeqCst);
            tracing::info!(%key, "cancelled");
            (StatusCode::OK, Json(serde_json::json!({}))).into_response()
        }
        Err(error) => {
            carrier.failed.fetch_add(1, Ordering::SeqCst);
            problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "carrier_unavailable",
                &error.to_string(),
            )
        }
    }
}
