//! Which carrier the saga ships through, and how it is called.

use std::sync::Arc;

use super::{
    BreakerConfig, Carrier, CircuitBreaker, HttpCarrier, HttpCarrierConfig, SimulatedCarrier,
    SimulatedCarrierConfig,
};

/// The carrier's options (`purser saga`, `purser serve`): a carrier over
/// HTTP at `--carrier-url`, or without one the simulated carrier in this
/// process; either way behind a circuit breaker.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct CarrierConfig {
    // Flattened groups of options (a doc comment here would be taken by
    // clap as help text).
    #[allow(missing_docs)]
    #[command(flatten)]
    pub http: HttpCarrierConfig,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub breaker: BreakerConfig,
    #[allow(missing_docs)]
    #[command(flatten)]
    pub simulated: SimulatedCarrierConfig,
}

impl CarrierConfig {
    /// The defaults, of the command line too.
    pub const DEFAULT: CarrierConfig = CarrierConfig {
        http: HttpCarrierConfig::DEFAULT,
        breaker: BreakerConfig::DEFAULT,
        simulated: SimulatedCarrierConfig {
            delay_ms: 0,
            fail_first: 0,
            hang: false,
        },
    };

    /// The carrier these options name, behind its circuit breaker: the
    /// HTTP carrier at the configured URL, or the simulated one.
    pub fn build(&self) -> Result<CircuitBreaker, reqwest::Error> {
        let inner: Arc<dyn Carrier> = match &self.http.url {
            Some(_) => Arc::new(HttpCarrier::new(&self.http)?),
            None => Arc::new(SimulatedCarrier::new(&self.simulated)),
        };
        Ok(CircuitBreaker::new(inner, self.breaker.clone()))
    }
}

impl Default for CarrierConfig {
    fn default() -> Self {
        CarrierConfig::DEFAULT
    }
}
