//! The carrier port, and its adapters: the simulated carrier Purser ships
//! with (in this process, [`SimulatedCarrier`], or as an HTTP server of its
//! own, [`CarrierServer`]), the HTTP client of a carrier ([`HttpCarrier`]),
//! and the [`CircuitBreaker`] every carrier is called through.

mod breaker;
mod config;
mod http;
mod server;

pub use breaker::{BreakerConfig, BreakerState, Circuit, CircuitBreaker, Ticket};
pub use config::CarrierConfig;
pub use http::{HttpCarrier, HttpCarrierConfig};
pub use server::{CarrierServer, CarrierStats, SimulatorState};

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::{OrderId, OrderLine, ShippingAddress};
use sha2::{Digest, Sha256};

/// A shipment the saga asks for. `key` is the same for every attempt of one
/// saga's shipment: a carrier that honours it ships once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shipment {
    /// The same for every attempt of one saga's shipment: a carrier that honours it ships once.
    pub key: String,
    /// The order shipped.
    pub order_id: OrderId,
    /// Where to.
    pub address: ShippingAddress,
    /// What: the order's lines.
    pub lines: Vec<OrderLine>,
}

/// Why a carrier did not ship (or cancel) a shipment. Every variant but
/// [`CarrierError::Refused`] is transient: the saga retries the step with
/// backoff, and never compensates because of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    /// The carrier will not take this shipment (a business refusal: the
    /// order is cancelled with `shipping_failed`).
    #[error("shipment refused: {0}")]
    Refused(String),
    /// The carrier could not be reached, or answered that it cannot now.
    #[error("carrier unavailable: {0}")]
    Unavailable(String),
    /// The carrier did not answer within the request timeout.
    #[error("carrier timed out: {0}")]
    TimedOut(String),
    /// The carrier was not called: the circuit breaker is open.
    #[error("carrier not called: the circuit breaker is open")]
    CircuitOpen,
}

impl CarrierError {
    /// The stable code a transient failure is recorded as
    /// ([`domain::step_errors`]); `None` for a refusal, whose code depends
    /// on the call refused.
    pub fn transient_code(&self) -> Option<&'static str> {
        use domain::step_errors;
        match self {
            CarrierError::Refused(_) => None,
            CarrierError::Unavailable(_) => Some(step_errors::CARRIER_UNAVAILABLE),
            CarrierError::TimedOut(_) => Some(step_errors::CARRIER_TIMEOUT),
            CarrierError::CircuitOpen => Some(step_errors::CARRIER_CIRCUIT_OPEN),
        }
    }
}

/// Where the saga ships through. Calls may be cut short by the saga's step
/// deadline, and repeated with the same key after a crash.
#[async_trait::async_trait]
pub trait Carrier: Send + Sync + 'static {
    /// Ships, answering the tracking number.
    async fn ship(&self, shipment: &Shipment) -> Result<String, CarrierError>;
    /// Cancels the shipment made under `shipment.key`; a no-op when none was.
    async fn cancel(&self, shipment: &Shipment) -> Result<(), CarrierError>;
}

/// How the simulated carrier behaves: the `--carrier-*` options of `purser
/// carrier` (its HTTP server), and of `purser saga` and `purser serve` (in
/// the process, when no `--carrier-url` is given).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SimulatedCarrierConfig {
    /// Every call of the simulated carrier takes this long.
    #[arg(
        long = "carrier-delay-ms",
        env = "PURSER_CARRIER_DELAY_MS",
        default_value_t = 0
    )]
    pub delay_ms: u64,
    /// The first N shipments fail as if the carrier were down (transient).
    #[arg(
        long = "carrier-fail-first",
        env = "PURSER_CARRIER_FAIL_FIRST",
        default_value_t = 0
    )]
    pub fail_first: u32,
    /// The carrier never answers: every shipment times out.
    #[arg(
        long = "carrier-hang",
        env = "PURSER_CARRIER_HANG",
        default_value_t = false
    )]
    pub hang: bool,
}

/// The built-in carrier: refuses every shipment to country `XX` (the API guide) and
/// otherwise answers a tracking number derived from the shipment key, so a
/// repeated shipment gets the same one. Its behaviour can be changed while it
/// runs ([`SimulatedCarrier::controls`]), for tests and demos.
#[derive(Debug, Clone, Default)]
pub struct SimulatedCarrier {
    controls: Arc<CarrierControls>,
}

/// The knobs of a running [`SimulatedCarrier`].
#[derive(Debug, Default)]
pub struct CarrierControls {
    delay_ms: AtomicU64,
    fail_next: AtomicU32,
    hang: AtomicBool,
    shipments: AtomicU64,
    cancellations: AtomicU64,
}

impl CarrierControls {
    /// Every call takes `delay` from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// The next `n` shipments fail transiently.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Whether every call hangs (and so times out).
    pub fn set_hang(&self, hang: bool) {
        self.hang.store(hang, Ordering::SeqCst);
    }

    /// Shipments answered with a tracking number so far (repeats included).
    pub fn shipments(&self) -> u64 {
        self.shipments.load(Ordering::SeqCst)
    }

    /// Cancellations answered so far.
    pub fn cancellations(&self) -> u64 {
        self.cancellations.load(Ordering::SeqCst)
    }
}

impl SimulatedCarrier {
    /// The country code the simulated carrier never delivers to.
    pub const REFUSED_COUNTRY: &'static str = "XX";

    /// A carrier that behaves as `config` says.
    pub fn new(config: &SimulatedCarrierConfig) -> Self {
        let carrier = SimulatedCarrier::default();
        carrier
            .controls
            .set_delay(Duration::from_millis(config.delay_ms));
        carrier.controls.fail_next(config.fail_first);
        carrier.controls.set_hang(config.hang);
        carrier
    }

    /// The knobs of this carrier, to change its behaviour while it runs.
    pub fn controls(&self) -> Arc<CarrierControls> {
        Arc::clone(&self.controls)
    }

    /// `SIM-` and 16 hex digits of the key's SHA-256.
    pub fn tracking_number(key: &str) -> String {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02X}")).collect();
        format!("SIM-{hex}")
    }

    /// Waits as configured (delay, hang).
    pub(super) async fn behave(&self) -> Result<(), CarrierError> {
        if self.controls.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let delay = self.controls.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Carrier for SimulatedCarrier {
    async fn ship(&self, shipment: &Shipment) -> Result<String, CarrierError> {
        self.behave().await?;
        let failing = self
            .controls
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(CarrierError::Unavailable(
                "simulated carrier outage".to_owned(),
            ));
        }
        if shipment.address.country().as_str() == Self::REFUSED_COUNTRY {
            return Err(CarrierError::Refused(format!(
                "no delivery to country {}",
                Self::REFUSED_COUNTRY
            )));
        }
        self.controls.shipments.fetch_add(1, Ordering::SeqCst);
        Ok(Self::tracking_number(&shipment.key))
    }

    async fn cancel(&self, _shipment: &Shipment) -> Result<(), CarrierError> {
        self.behave().await?;
        self.controls.cancellations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{CountryCode, Money, Quantity, Sku};

    fn shipment(country: &str) -> Shipment {
        Shipment {
            key: "saga:1:0:ship".to_owned(),
            order_id: OrderId::new(uuid::Uuid::from_u128(1)),
            address: ShippingAddress::new(
                "Ana".into(),
                "Calle Mayor 1".into(),
                None,
                "Madrid".into(),
                "28013".into(),
                CountryCode::parse(country).expect("country"),
            )
            .expect("address"),
            lines: vec![OrderLine::new(
                Sku::parse("A").expect("sku"),
                Quantity::new(1).expect("quantity"),
                Money::new(1).expect("price"),
            )],
        }
    }

    #[tokio::test]
    async fn refuses_country_xx_and_answers_the_same_tracking_number_for_one_key() {
        let carrier = SimulatedCarrier::default();
        let first = carrier.ship(&shipment("ES")).await.expect("shipped");
        let again = carrier.ship(&shipment("ES")).await.expect("shipped");
        assert_eq!(first, again);
        assert!(first.starts_with("SIM-"), "{first}");
        assert!(matches!(
            carrier.ship(&shipment("XX")).await,
            Err(CarrierError::Refused(_))
        ));
    }

    #[tokio::test]
    async fn fails_the_configured_number_of_times_then_ships() {
        let carrier = SimulatedCarrier::new(&SimulatedCarrierConfig {
            fail_first: 2,
            ..SimulatedCarrierConfig::default()
        });
        for _ in 0..2 {
            assert!(matches!(
                carrier.ship(&shipment("ES")).await,
                Err(CarrierError::Unavailable(_))
            ));
        }
        assert!(carrier.ship(&shipment("ES")).await.is_ok());
        assert_eq!(carrier.controls().shipments(), 1);
    }

    #[tokio::test]
    async fn a_hanging_carrier_never_answers() {
        let carrier = SimulatedCarrier::new(&SimulatedCarrierConfig {
            hang: true,
            ..SimulatedCarrierConfig::default()
        });
        let answered =
            tokio::time::timeout(Duration::from_millis(100), carrier.ship(&shipment("ES"))).await;
        assert!(answered.is_err(), "a hanging carrier answered");
    }
}
