//! The circuit breaker every carrier is called through: [`Circuit`], the
//! state machine, and [`CircuitBreaker`], the [`Carrier`] that calls
//! another through one and counts what it does in the process's registry.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Carrier, CarrierError, Shipment};

/// When the circuit opens, and for how long: `--carrier-breaker-*`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BreakerConfig {
    /// Failures of the carrier (unavailable, timed out) within the window,
    /// with no success between them, that open the circuit breaker.
    #[arg(id = "carrier_breaker_failures", long = "carrier-breaker-failures", env = "PURSER_CARRIER_BREAKER_FAILURES",
          default_value_t = BreakerConfig::DEFAULT.failures,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub failures: u32,
    /// The window those failures are counted in.
    #[arg(id = "carrier_breaker_window_ms", long = "carrier-breaker-window-ms", env = "PURSER_CARRIER_BREAKER_WINDOW_MS",
          default_value_t = BreakerConfig::DEFAULT.window_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub window_ms: u64,
    /// How long the open breaker lets no call through; then one call probes
    /// the carrier (half-open).
    #[arg(id = "carrier_breaker_cooldown_ms", long = "carrier-breaker-cooldown-ms", env = "PURSER_CARRIER_BREAKER_COOLDOWN_MS",
          default_value_t = BreakerConfig::DEFAULT.cooldown_ms,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cooldown_ms: u64,
}

impl BreakerConfig {
    /// The defaults, of the command line too.
    pub const DEFAULT: BreakerConfig = BreakerConfig {
        failures: 5,
        window_ms: 30_000,
        cooldown_ms: 10_000,
    };
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig::DEFAULT
    }
}

/// The state of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls fail at once.
    Open,
    /// One probe is (or may be) under way.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// Its value in `purser_carrier_breaker_state`: 0 closed, 1 open, 2
    /// half-open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A call the circuit let through: an ordinary one, or the half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Let through while closed.
    Closed,
    /// The probe of a half-open circuit.
    Probe,
}

#[derive(Debug)]
enum Phase {
    Closed { failures: VecDeque<Instant> },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker's state machine, told the time by its caller (so tests move
/// the clock by hand):
///
/// - **closed**: every call goes through; `failures` failures within
///   `window`, with no success between them, open it;
/// - **open**: no call goes through (each fails at once with
///   [`CarrierError::CircuitOpen`]) until `cooldown` has passed;
/// - **half-open**: the first call after the cool-down is the one probe
///   (the others still fail at once); its success closes the circuit, its
///   failure opens it for another cool-down.
///
/// A failure is a call that ended [`CarrierError::Unavailable`] or
/// [`CarrierError::TimedOut`], or was cut short (by the saga's step
/// deadline); a refusal is an answer, so a success. A call let through
/// while closed that ends after the circuit opened changes nothing.
#[derive(Debug)]
pub struct Circuit {
    config: BreakerConfig,
    phase: Phase,
}

impl Circuit {
    /// A closed circuit.
    pub fn new(config: BreakerConfig) -> Circuit {
        Circuit {
            config,
            phase: Phase::Closed {
                failures: VecDeque::new(),
            },
        }
    }

    /// Its state.
    pub fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Whether a call may go through at `now`; `None` when it must fail at
    /// once. The first call after the cool-down is the probe.
    pub fn admit(&mut self, now: Instant) -> Option<Ticket> {
        match self.phase {
            Phase::Closed { .. } => Some(Ticket::Closed),
            Phase::Open { until } if now >= until => {
                self.phase = Phase::HalfOpen;
                Some(Ticket::Probe)
            }
            Phase::Open { .. } | Phase::HalfOpen => None,
        }
    }

    /// How the call let through with `ticket` ended, at `now`: `ok` for an
    /// answer (refusals included), not for a failure.
    pub fn record(&mut self, ticket: Ticket, ok: bool, now: Instant) {
        let cooldown = Duration::from_millis(self.config.cooldown_ms);
        let window = Duration::from_millis(self.config.window_ms);
        match (ticket, &mut self.phase) {
            (Ticket::Probe, Phase::HalfOpen) if ok => {
                self.phase = Phase::Closed {
                    failures: VecDeque::new(),
                }
            }
            (Ticket::Probe, Phase::HalfOpen) => {
                self.phase = Phase::Open {
                    until: now + cooldown,
                }
            }
            (Ticket::Closed, Phase::Closed { failures }) if ok => failures.clear(),
            (Ticket::Closed, Phase::Closed { failures }) => {
                while failures
                    .front()
                    .is_some_and(|first| now.saturating_duration_since(*first) >= window)
                {
                    failures.pop_front();
                }
                failures.push_back(now);
                if failures.len() >= self.config.failures as usize {
                    self.phase = Phase::Open {
                        until: now + cooldown,
                    };
                }
            }
            // A call let through before the circuit changed: too late to
            // count.
            _ => {}
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    call: &'static str,
    outcome: &'static str,
}

/// What the breaker counts (`purser_carrier_*`).
#[derive(Debug, Clone, Default)]
struct BreakerMetrics {
    state: Gauge,
    opened: Counter,
    probes: Counter,
    calls: Family<CallLabels, Counter>,
}

/// A [`Carrier`] called through a [`Circuit`]: a call the circuit does not
/// let through fails at once with [`CarrierError::CircuitOpen`], and one
/// cut short (dropped) counts as a failure.
/// Cheap to clone: clones share the circuit.
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<dyn Carrier>,
    circuit: Arc<Mutex<Circuit>>,
    metrics: BreakerMetrics,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreaker {
    /// `inner` behind a closed circuit.
    pub fn new(inner: Arc<dyn Carrier>, config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker {
            inner,
            circuit: Arc::new(Mutex::new(Circuit::new(config))),
            metrics: BreakerMetrics::default(),
        }
    }

    /// Registers the breaker's metrics in the process's registry `r`.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "purser_carrier_breaker_state",
            "State of the carrier's circuit breaker: 0 closed, 1 open (calls fail at once), 2 half-open (one probe)",
            self.metrics.state.clone(),
        );
        r.register(
            "purser_carrier_breaker_opened",
            "Times the carrier's circuit breaker opened (a probe that failed included)",
            self.metrics.opened.clone(),
        );
        r.register(
            "purser_carrier_breaker_probes",
            "Calls let through a half-open breaker to probe the carrier",
            self.metrics.probes.clone(),
        );
        r.register(
            "purser_carrier_calls",
            "Calls to the carrier by call (ship, cancel) and outcome (ok, refused, unavailable, timed_out, cut_short; circuit_open: not called)",
            self.metrics.calls.clone(),
        );
    }

    /// The circuit's state.
    pub fn state(&self) -> BreakerState {
        self.lock().state()
    }

    /// Times the circuit opened so far.
    pub fn opened(&self) -> u64 {
        self.metrics.opened.get()
    }

    /// Probes let through so far.
    pub fn probes(&self) -> u64 {
        self.metrics.probes.get()
    }

    /// Calls of `call` (`ship`, `cancel`) that ended with `outcome` so far.
    pub fn calls(&self, call: &'static str, outcome: &'static str) -> u64 {
        self.metrics
            .calls
            .get_or_create(&CallLabels { call, outcome })
            .get()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the circuit under the lock, and the state gauge with it.
    fn change<T>(&self, change: impl FnOnce(&mut Circuit) -> T) -> T {
        let mut circuit = self.lock();
        let before = circuit.state();
        let answer = change(&mut circuit);
        let after = circuit.state();
        if after != before {
            self.metrics.state.set(after.gauge());
            match after {
                BreakerState::Open => {
                    self.metrics.opened.inc();
                    tracing::warn!(
                        cooldown_ms = circuit.config.cooldown_ms,
                        "carrier circuit breaker open: calls fail at once until the cool-down passes"
                    );
                }
                BreakerState::HalfOpen => {
                    self.metrics.probes.inc();
                    tracing::info!("carrier circuit breaker half-open: probing the carrier");
                }
                BreakerState::Closed => tracing::info!("carrier circuit breaker closed"),
            }
        }
        answer
    }

    async fn call<T>(
        &self,
        call: &'static str,
        attempt: impl Future<Output = Result<T, CarrierError>>,
    ) -> Result<T, CarrierError> {
        let count = |outcome| {
            self.metrics
                .calls
                .get_or_create(&CallLabels { call, outcome })
                .inc();
        };
        let Some(ticket) = self.change(|circuit| circuit.admit(Instant::now())) else {
            count("circuit_open");
            return Err(CarrierError::CircuitOpen);
        };
        // Dropped before the call ends (the step's deadline cut it short):
        // a failure, or a half-open circuit would wait for its probe for
        // ever.
        let mut pending = Pending {
            breaker: self,
            ticket,
            call,
            settled: false,
        };
        let result = attempt.await;
        let (ok, outcome) = match &result {
            Ok(_) => (true, "ok"),
            Err(CarrierError::Refused(_)) => (true, "refused"),
            Err(CarrierError::Unavailable(_)) => (false, "unavailable"),
            Err(CarrierError::TimedOut(_)) => (false, "timed_out"),
            // Another breaker's (one carrier behind two): not an answer.
            Err(CarrierError::CircuitOpen) => (false, "circuit_open"),
        };
        pending.settled = true;
        count(outcome);
        self.change(|circuit| circuit.record(ticket, ok, Instant::now()));
        result
    }
}

/// A call let through and not ended yet.
struct Pending<'a> {
    breaker: &'a CircuitBreaker,
    ticket: Ticket,
    call: &'static str,
    settled: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let (ticket, call) = (self.ticket, self.call);
            self.breaker
                .metrics
                .calls
                .get_or_create(&CallLabels {
                    call,
                    outcome: "cut_short",
                })
                .inc();
            self.breaker
                .change(|circuit| circuit.record(ticket, false, Instant::now()));
        }
    }
}

#[async_trait::async_trait]
impl Carrier for CircuitBreaker {
    async fn ship(&self, shipment: &Shipment) -> Result<String, CarrierError> {
        self.call("ship", self.inner.ship(shipment)).await
    }

    async fn cancel(&self, shipment: &Shipment) -> Result<(), CarrierError> {
        self.call("cancel", self.inner.cancel(shipment)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig {
        failures: 3,
        window_ms: 1_000,
        cooldown_ms: 500,
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Fails `n` calls at `at`.
    fn fail(circuit: &mut Circuit, at: Instant, n: usize) {
        for _ in 0..n {
            let ticket = circuit.admit(at).expect("let through");
            circuit.record(ticket, false, at);
        }
    }

    #[test]
    fn opens_after_the_failures_within_the_window_and_fails_fast_until_the_cooldown() {
        let t0 = Instant::now();
        let mut circuit = Circuit::new(CONFIG);
        fail(&mut circuit, t0, 2);
        assert_eq!(circuit.state(), BreakerState::Closed);
        fail(&mut circuit, t0 + ms(10), 1);
        assert_eq!(circuit.state(), BreakerState::Open);
        assert_eq!(circuit.admit(t0 + ms(10)), None);
        assert_eq!(circuit.admit(t0 + ms(509)), None);
        assert_eq!(circuit.state(), BreakerState::Open);
    }

    #[test]
    fn failures_outside_the_window_or_before_a_success_do_not_count() {
        let t0 = Instant::now();
        let mut circuit = Circuit::new(CONFIG);
        fail(&mut circuit, t0, 2);
        // The window moved past both.
        fail(&mut circuit, t0 + ms(1_000), 2);
        assert_eq!(circuit.state(), BreakerState::Closed);
        // A success forgets them.
        let ticket = circuit.admit(t0 + ms(1_001)).expect("closed");
        circuit.record(ticket, true, t0 + ms(1_001));
        fail(&mut circuit, t0 + ms(1_002), 2);
        assert_eq!(circuit.state(), BreakerState::Closed);
        fail(&mut circuit, t0 + ms(1_003), 1);
        assert_eq!(circuit.state(), BreakerState::Open);
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_or_opens_again() {
        let t0 = Instant::now();
        let mut circuit = Circuit::new(CONFIG);
        fail(&mut circuit, t0, 3);
        let probe = circuit.admit(t0 + ms(500));
        assert_eq!(probe, Some(Ticket::Probe));
        assert_eq!(circuit.state(), BreakerState::HalfOpen);
        // One probe at a time.
        assert_eq!(circuit.admit(t0 + ms(501)), None);
        // It fails: open for another cool-down.
        circuit.record(Ticket::Probe, false, t0 + ms(600));
        assert_eq!(circuit.state(), BreakerState::Open);
        assert_eq!(circuit.admit(t0 + ms(1_099)), None);
        assert_eq!(circuit.admit(t0 + ms(1_100)), Some(Ticket::Probe));
        // It answers: closed, and everything goes through.
        circuit.record(Ticket::Probe, true, t0 + ms(1_150));
        assert_eq!(circuit.state(), BreakerState::Closed);
        assert_eq!(circuit.admit(t0 + ms(1_151)), Some(Ticket::Closed));
        // The failures before it opened are forgotten.
        fail(&mut circuit, t0 + ms(1_152), 2);
        assert_eq!(circuit.state(), BreakerState::Closed);
    }

    #[test]
    fn a_call_let_through_before_the_circuit_opened_changes_nothing_when_it_ends() {
        let t0 = Instant::now();
        let mut circuit = Circuit::new(CONFIG);
        let late = circuit.admit(t0).expect("closed");
        fail(&mut circuit, t0, 3);
        circuit.record(late, true, t0 + ms(1));
        assert_eq!(circuit.state(), BreakerState::Open);
        let probe = circuit.admit(t0 + ms(500)).expect("probe");
        circuit.record(late, false, t0 + ms(501));
        assert_eq!(circuit.state(), BreakerState::HalfOpen);
        circuit.record(probe, true, t0 + ms(502));
        assert_eq!(circuit.state(), BreakerState::Closed);
    }

    /// A carrier that never answers, or always fails.
    struct Down {
        hang: bool,
    }

    #[async_trait::async_trait]
    impl Carrier for Down {
        async fn ship(&self, _: &Shipment) -> Result<String, CarrierError> {
            if self.hang {
                std::future::pending::<()>().await;
            }
            Err(CarrierError::Unavailable("down".to_owned()))
        }

        async fn cancel(&self, _: &Shipment) -> Result<(), CarrierError> {
            Err(CarrierError::Unavailable("down".to_owned()))
        }
    }

    fn shipment() -> Shipment {
        Shipment {
            key: "k".to_owned(),
            order_id: domain::OrderId::new(uuid::Uuid::from_u128(1)),
            address: domain::ShippingAddress::new(
                "Ana".into(),
                "Calle Mayor 1".into(),
                None,
                "Madrid".into(),
                "28013".into(),
                domain::CountryCode::parse("ES").expect("country"),
            )
            .expect("address"),
            lines: Vec::new(),
        }
    }

    #[tokio::test]
    async fn the_breaker_fails_fast_once_open_and_counts_calls_cut_short() {
        let config = BreakerConfig {
            failures: 2,
            window_ms: 60_000,
            cooldown_ms: 60_000,
        };
        let breaker = CircuitBreaker::new(Arc::new(Down { hang: false }), config.clone());
        let mut registry = Registry::default();
        breaker.register(&mut registry);
        for _ in 0..2 {
            assert!(matches!(
                breaker.ship(&shipment()).await,
                Err(CarrierError::Unavailable(_))
            ));
        }
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(
            breaker.ship(&shipment()).await,
            Err(CarrierError::CircuitOpen)
        );
        assert_eq!(breaker.calls("ship", "unavailable"), 2);
        assert_eq!(breaker.calls("ship", "circuit_open"), 1);
        assert_eq!(breaker.opened(), 1);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        assert!(
            text.lines().any(|l| l == "purser_carrier_breaker_state 1"),
            "{text}"
        );

        // Calls cut short by the caller count as failures.
        let hanging = CircuitBreaker::new(Arc::new(Down { hang: true }), config);
        for _ in 0..2 {
            let cut = tokio::time::timeout(ms(10), hanging.ship(&shipment())).await;
            assert!(cut.is_err());
        }
        assert_eq!(hanging.state(), BreakerState::Open);
        assert_eq!(hanging.calls("ship", "cut_short"), 2);
    }
}
