//! The carrier over HTTP, behind its circuit breaker: the simulated
//! carrier's server (`purser carrier`'s) in this process, reached through a
//! TCP proxy that can cut it off and counts the connections it gets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use domain::{SagaEvent, SagaStatus, Step};
use saga::{
    BreakerConfig, BreakerState, CarrierServer, CircuitBreaker, HttpCarrier, HttpCarrierConfig,
    SagaConfig, SimulatedCarrierConfig, SimulatorState,
};
use test_support::eventually;
use test_support::world::{fast_config, World};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

/// The simulated carrier's server, running until stopped.
struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start(state: &Arc<SimulatorState>) -> Running {
        let server = CarrierServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), Arc::clone(state))
            .await
            .expect("bind the carrier");
        let addr = server.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.run(shutdown.clone()));
        Running {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the carrier stops")
            .expect("join")
            .expect("the carrier ran");
    }
}

/// A TCP proxy in front of the carrier. Cut off, it closes every
/// connection, those open included, as a dead process's address would.
/// It counts the connections it accepts while the breaker is not closed.
struct Proxy {
    addr: SocketAddr,
    backend: Arc<Mutex<Option<SocketAddr>>>,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    while_cut_off: Arc<AtomicU64>,
    while_not_closed: Arc<AtomicU64>,
    breaker: Arc<OnceLock<CircuitBreaker>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(backend: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut proxy = Proxy {
            addr,
            backend: Arc::new(Mutex::new(Some(backend))),
            connections: Arc::default(),
            while_cut_off: Arc::default(),
            while_not_closed: Arc::default(),
            breaker: Arc::default(),
            task: tokio::spawn(async {}),
        };
        let breaker = Arc::clone(&proxy.breaker);
        let (backend, connections) = (Arc::clone(&proxy.backend), Arc::clone(&proxy.connections));
        let (cut_off, not_closed) = (
            Arc::clone(&proxy.while_cut_off),
            Arc::clone(&proxy.while_not_closed),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if breaker
                    .get()
                    .is_some_and(|b| b.state() != BreakerState::Closed)
                {
                    not_closed.fetch_add(1, Ordering::SeqCst);
                }
                let to = *backend.lock().expect("backend");
                let Some(to) = to else {
                    cut_off.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                let connection = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections
                    .lock()
                    .expect("connections")
                    .push(connection.abort_handle());
            }
        });
        proxy.task = task;
        proxy
    }

    /// Counts the connections it gets while `breaker` is not closed.
    fn watch(&self, breaker: CircuitBreaker) {
        self.breaker.set(breaker).expect("watched once");
    }

    fn cut_off(&self) {
        *self.backend.lock().expect("backend") = None;
        for connection in self.connections.lock().expect("connections").drain(..) {
            connection.abort();
        }
    }

    fn reconnect(&self, backend: SocketAddr) {
        *self.backend.lock().expect("backend") = Some(backend);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_off();
    }
}

fn http_carrier(addr: SocketAddr, request_timeout_ms: u64) -> Arc<HttpCarrier> {
    Arc::new(
        HttpCarrier::new(&HttpCarrierConfig {
            url: Some(format!("http://{addr}")),
            connect_timeout_ms: 500,
            request_timeout_ms,
        })
        .expect("HTTP client"),
    )
}

/// Retries enough that no saga needs attention while the carrier is away.
fn patient() -> SagaConfig {
    SagaConfig {
        max_attempts: 10_000,
        step_timeout_ms: 3_000,
        ..fast_config()
    }
}

/// The `StepFailed` codes recorded for `ship`, over every saga.
async fn ship_failures(world: &World) -> Vec<String> {
    world
        .all_events()
        .await
        .iter()
        .filter(|e| e.event_type == "StepFailed")
        .filter_map(|e| match e.decode::<SagaEvent>() {
            SagaEvent::StepFailed {
                step: Step::Ship,
                error,
                ..
            } => Some(error),
            _ => None,
        })
        .collect()
}

/// The carrier dies while orders are being shipped: the breaker opens
/// after the configured failures, the carrier's address gets no call while
/// it is open but the half-open probes, the ship steps fail fast
/// (`carrier_circuit_open`) and are retried, never compensated; once the
/// carrier is back (with its memory, as a real one's database), every order
/// ships exactly once, with exact money and stock.
#[tokio::test]
async fn a_carrier_killed_mid_load_opens_the_breaker_and_every_order_ships_once_after() {
    // One saga at a time: a call let through while the breaker was closed
    // cannot reach the carrier after it opened.
    let mut world = World::new(SagaConfig {
        concurrency: 1,
        ..patient()
    })
    .await;
    let carrier = SimulatorState::new(&SimulatedCarrierConfig::default());
    let server = Running::start(&carrier).await;
    let breaker_config = BreakerConfig {
        failures: 3,
        window_ms: 30_000,
        cooldown_ms: 300,
    };
    let proxy = Proxy::start(server.addr).await;
    let breaker = CircuitBreaker::new(http_carrier(proxy.addr, 1_000), breaker_config.clone());
    proxy.watch(breaker.clone());
    world.start_saga_with(Arc::new(breaker.clone()), None);

    world.item("A", 100, 100).await;
    let accounts = [world.account(10_000).await, world.account(10_000).await];
    let mut orders = Vec::new();
    for n in 0..12 {
        orders.push(world.place(accounts[n % 2], &[("A", 2, 100)], "ES").await);
    }
    let carrier_ref = &carrier;
    eventually(
        "a few orders to ship",
        Duration::from_secs(30),
        Duration::from_millis(5),
        || async move {
            let stats = carrier_ref.stats();
            if stats.shipments >= 2 {
                Ok(())
            } else {
                Err(stats)
            }
        },
    )
    .await;

    // Killed mid-load.
    proxy.cut_off();
    server.stop().await;
    let calls_at_death = carrier.stats().calls;
    let breaker_ref = &breaker;
    eventually(
        "the breaker to open and fail ship steps fast, probing twice",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || async move {
            let seen = (
                breaker_ref.opened(),
                breaker_ref.probes(),
                breaker_ref.calls("ship", "circuit_open"),
            );
            if seen.0 >= 2 && seen.1 >= 2 && seen.2 >= 5 {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await;
    assert_eq!(carrier.stats().calls, calls_at_death);
    // The calls that opened it were let through; once open, the only
    // connections its address got were the probes.
    assert!(
        breaker.calls("ship", "unavailable") >= u64::from(breaker_config.failures),
        "{}",
        breaker.calls("ship", "unavailable")
    );
    let probes_before_return = breaker.probes();
    assert!(
        proxy.while_not_closed.load(Ordering::SeqCst) <= probes_before_return,
        "{} connections while not closed, {probes_before_return} probes",
        proxy.while_not_closed.load(Ordering::SeqCst)
    );
    assert!(proxy.while_cut_off.load(Ordering::SeqCst) >= 1);

    // The carrier returns, remembering what it shipped.
    let server = Running::start(&carrier).await;
    proxy.reconnect(server.addr);
    for order in &orders {
        let saga = world.finished(*order).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
        let key = format!("saga:{}:ship", saga.saga_id.expect("saga id"));
        assert!(carrier.shipped(&key), "{key} not shipped");
        assert_eq!(
            world.event_types(&format!("order-{order}")).await,
            ["OrderPlaced", "OrderReserved", "OrderPaid", "OrderShipped"]
        );
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert!(
        proxy.while_not_closed.load(Ordering::SeqCst) <= breaker.probes(),
        "{} connections while not closed, {} probes",
        proxy.while_not_closed.load(Ordering::SeqCst),
        breaker.probes()
    );
    // One shipment per order, exact money and stock, nothing compensated.
    let stats = carrier.stats();
    assert_eq!(stats.shipments, orders.len() as u64, "{stats:?}");
    for (account, _) in accounts {
        assert_eq!(world.balance_of(account).await, 10_000 - 6 * 200);
    }
    let stock = world.stock("A").await;
    assert_eq!((stock.on_hand, stock.reserved), (100 - 12 * 2, 0));
    let events = world.all_events().await;
    for forbidden in ["CompensationStarted", "StepRefused", "SagaNeedsAttention"] {
        assert!(
            events.iter().all(|e| e.event_type != forbidden),
            "{forbidden} recorded"
        );
    }
    let failures = ship_failures(&world).await;
    assert!(
        failures.iter().any(|code| code == "carrier_circuit_open"),
        "{failures:?}"
    );
    assert!(
        failures.iter().any(|code| code == "carrier_unavailable"),
        "{failures:?}"
    );

    world.stop().await;
    server.stop().await;
    drop(proxy);
}

/// A carrier that hangs: the request timeout fires (well before the step's
/// deadline), the attempt is recorded as `carrier_timeout`, and the breaker
/// counts it (and opens); once the carrier answers again the order ships.
#[tokio::test]
async fn a_hanging_carrier_times_out_and_the_breaker_counts_it() {
    let mut world = World::new(patient()).await;
    let carrier = SimulatorState::new(&SimulatedCarrierConfig {
        hang: true,
        ..SimulatedCarrierConfig::default()
    });
    let server = Running::start(&carrier).await;
    let breaker = CircuitBreaker::new(
        http_carrier(server.addr, 300),
        BreakerConfig {
            failures: 2,
            window_ms: 30_000,
            cooldown_ms: 200,
        },
    );
    world.start_saga_with(Arc::new(breaker.clone()), None);
    world.item("A", 10, 100).await;
    let account = world.account(1_000).await;
    let order = world.place(account, &[("A", 1, 100)], "ES").await;

    world
        .wait_saga(order, |s| {
            s.record(&Step::Ship)
                .and_then(|r| r.error.as_deref())
                .is_some_and(|error| error == "carrier_timeout")
        })
        .await;
    let breaker_ref = &breaker;
    eventually(
        "the breaker to count the timeouts and open",
        Duration::from_secs(30),
        Duration::from_millis(10),
        || async move {
            let seen = (breaker_ref.calls("ship", "timed_out"), breaker_ref.opened());
            if seen.0 >= 2 && seen.1 >= 1 {
                Ok(())
            } else {
                Err(seen)
            }
        },
    )
    .await;
    let failures = ship_failures(&world).await;
    assert!(
        failures.iter().all(|code| code != "timeout"),
        "the step's deadline fired, not the request timeout: {failures:?}"
    );

    carrier.controls().set_hang(false);
    let saga = world.finished(order).await;
    assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    assert_eq!(carrier.stats().shipments, 1);
    assert_eq!(world.balance_of(account.0).await, 900);

    world.stop().await;
    server.stop().await;
}

/// The HTTP adapter against the simulated carrier's server: one key ships
/// once and answers one tracking number, `XX` is a refusal, the first N
/// failures are transient.
#[tokio::test]
async fn the_http_carrier_ships_once_per_key_and_tells_refusals_from_failures() {
    use domain::{CountryCode, OrderId, ShippingAddress};
    use saga::{Carrier, CarrierError, Shipment, SimulatedCarrier};

    let carrier = SimulatorState::new(&SimulatedCarrierConfig {
        fail_first: 1,
        ..SimulatedCarrierConfig::default()
    });
    let server = Running::start(&carrier).await;
    let http = http_carrier(server.addr, 2_000);
    let shipment = |key: &str, country: &str| Shipment {
        key: key.to_owned(),
        order_id: OrderId::new(uuid::Uuid::now_v7()),
        address: ShippingAddress::new(
            "Ana".into(),
            "Calle Mayor 1".into(),
            None,
            "Madrid".into(),
            "28013".into(),
            CountryCode::parse(country).expect("country"),
        )
        .expect("address"),
        lines: Vec::new(),
    };
    let one = shipment("saga:1:ship", "ES");
    assert!(matches!(
        http.ship(&one).await,
        Err(CarrierError::Unavailable(_))
    ));
    let first = http.ship(&one).await.expect("shipped");
    assert_eq!(first, SimulatedCarrier::tracking_number("saga:1:ship"));
    assert_eq!(http.ship(&one).await.expect("shipped again"), first);
    assert!(matches!(
        http.ship(&shipment("saga:2:ship", "XX")).await,
        Err(CarrierError::Refused(reason)) if reason.contains("XX")
    ));
    http.cancel(&one).await.expect("cancelled");
    assert_eq!(
        carrier.stats(),
        saga::CarrierStats {
            calls: 5,
            shipments: 1,
            duplicates: 1,
            refused: 1,
            failed: 1,
            cancellations: 1,
        }
    );
    server.stop().await;
    // Nobody listens any more: unavailable, not refused.
    assert!(matches!(
        http.ship(&one).await,
        Err(CarrierError::Unavailable(_))
    ));
}
