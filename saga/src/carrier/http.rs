//! A carrier over HTTP: the client of the carrier API that `purser carrier`
//! serves ([`CarrierServer`](super::CarrierServer)).
//!
//! - `POST {url}/shipments` with the shipment's key in `Idempotency-Key`
//!   and `{"order_id", "address", "lines"}`: 200 or 201
//!   `{"tracking_number"}`; the same key answers the same tracking number
//!   and ships once, however often it is sent.
//! - `POST {url}/cancellations` with the shipment's key in
//!   `Idempotency-Key`: 200 (a shipment never made is nothing to cancel).
//!
//! A 4xx answer is the carrier's refusal (its problem's `detail` is the
//! reason), except 408, 409, 425 and 429, which say "not now"; a 5xx, a
//! connection that fails and an answer that does not come within the
//! request timeout are transient ([`CarrierError::Unavailable`],
//! [`CarrierError::TimedOut`]).

use std::time::Duration;

use domain::{OrderId, OrderLine, ShippingAddress};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{Carrier, CarrierError, Shipment};

/// The header that carries a shipment's key.
pub(super) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// How the saga reaches a carrier over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct HttpCarrierConfig {
    /// Base URL of the carrier's HTTP API (such as `purser carrier`'s,
    /// `http://127.0.0.1:8085`); without it, the saga ships through the
    /// simulated carrier in its own process.
    #[arg(id = "carrier_url", long = "carrier-url", env = "PURSER_CARRIER_URL")]
    pub url: Option<String>,
    /// How long connecting to the carrier may take.
    #[arg(id = "carrier_connect_timeout_ms", long = "carrier-connect-timeout-ms", env = "PURSER_CARRIER_CONNECT_TIMEOUT_MS",
          default_value_t = HttpCarrierConfig::DEFAULT.connect_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// How long one call to the carrier may take, connecting included
    /// (keep it below `--saga-step-timeout-ms`, so that a carrier that does
    /// not answer is recorded as `carrier_timeout`).
    #[arg(id = "carrier_request_timeout_ms", long = "carrier-request-timeout-ms", env = "PURSER_CARRIER_REQUEST_TIMEOUT_MS",
          default_value_t = HttpCarrierConfig::DEFAULT.request_timeout_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,
}

impl HttpCarrierConfig {
    /// The defaults, of the command line too.
    pub const DEFAULT: HttpCarrierConfig = HttpCarrierConfig {
        url: None,
        connect_timeout_ms: 1_000,
        request_timeout_ms: 4_000,
    };
}

impl Default for HttpCarrierConfig {
    fn default() -> Self {
        HttpCarrierConfig::DEFAULT
    }
}

/// What `POST /shipments` carries besides the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ShipmentBody {
    pub(super) order_id: OrderId,
    pub(super) address: ShippingAddress,
    pub(super) lines: Vec<OrderLine>,
}

/// A shipment's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Shipped {
    pub(super) tracking_number: String,
}

/// A refusal or failure's answer (problem+json; only `detail` is read).
#[derive(Debug, Default, Deserialize)]
struct ProblemBody {
    #[serde(default)]
    detail: Option<String>,
}

/// The HTTP adapter of the [`Carrier`] port.
#[derive(Debug, Clone)]
pub struct HttpCarrier {
    client: reqwest::Client,
    base: String,
}

impl HttpCarrier {
    /// A client of the carrier at `config.url` (`http://127.0.0.1:8085`
    /// when none is configured), with its timeouts.
    pub fn new(config: &HttpCarrierConfig) -> Result<HttpCarrier, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()?;
        let base = config
            .url
            .as_deref()
            .unwrap_or("http://127.0.0.1:8085")
            .trim_end_matches('/')
            .to_owned();
        Ok(HttpCarrier { client, base })
    }

    async fn post(
        &self,
        path: &str,
        key: &str,
        body: Option<&ShipmentBody>,
    ) -> Result<reqwest::Response, CarrierError> {
        let mut request = self
            .client
            .post(format!("{}{path}", self.base))
            .header(IDEMPOTENCY_KEY, key);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(failure)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let detail = match response.json::<ProblemBody>().await {
            Ok(ProblemBody {
                detail: Some(detail),
            }) => detail,
            _ => status.to_string(),
        };
        if status.is_client_error() && !transient(status) {
            Err(CarrierError::Refused(detail))
        } else {
            Err(CarrierError::Unavailable(format!("{status}: {detail}")))
        }
    }
}

/// The 4xx answers that mean "not now" rather than "no".
fn transient(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::REQUEST_TIMEOUT
            | StatusCode::CONFLICT
            | StatusCode::TOO_EARLY
            | StatusCode::TOO_MANY_REQUESTS
    )
}

/// A request that got no answer: timed out, or unavailable.
fn failure(error: reqwest::Error) -> CarrierError {
    if error.is_timeout() {
        CarrierError::TimedOut(error.to_string())
    } else {
        CarrierError::Unavailable(error.to_string())
    }
}

#[async_trait::async_trait]
impl Carrier for HttpCarrier {
    #[tracing::instrument(skip_all, fields(order_id = %shipment.order_id), err)]
    async fn ship(&self, shipment: &Shipment) -> Result<String, CarrierError> {
        let body = ShipmentBody {
            order_id: shipment.order_id,
            address: shipment.address.clone(),
            lines: shipment.lines.clone(),
        };
        let response = self.post("/shipments", &shipment.key, Some(&body)).await?;
        let shipped: Shipped = response.json().await.map_err(failure)?;
        Ok(shipped.tracking_number)
    }

    #[tracing::instrument(skip_all, fields(order_id = %shipment.order_id), err)]
    async fn cancel(&self, shipment: &Shipment) -> Result<(), CarrierError> {
        self.post("/cancellations", &shipment.key, None).await?;
        Ok(())
    }
}
