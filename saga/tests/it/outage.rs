//! The broker stops answering while orders keep coming: on a Tansu of this
//! test's own (the shared one serves every other test), frozen with SIGSTOP
//! and thawed with SIGCONT, so it keeps its topics and offsets as a broker
//! that was only unreachable would.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use domain::{SagaStatus, StepStatus};

use crate::support::{fast_config, kafka_config_on, World};

/// A Tansu broker on a free port, with memory storage, killed on drop.
struct PrivateBroker {
    child: Child,
    address: String,
}

impl PrivateBroker {
    /// Starts the project's pinned Tansu (`scripts/lib.sh` installs it into
    /// `.local/tansu` when it is not there yet).
    fn start() -> PrivateBroker {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the workspace root")
            .to_path_buf();
        let installed = Command::new("bash")
            .arg("-c")
            .arg("source scripts/lib.sh && install_tansu && printf %s \"$TANSU_BIN\"")
            .current_dir(&root)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/lib.sh");
        assert!(installed.status.success(), "cannot install Tansu");
        let binary = String::from_utf8(installed.stdout).expect("path");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://{address}"),
                "--advertised-listener-url",
                &format!("tcp://{address}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start Tansu");
        let broker = PrivateBroker { child, address };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&broker.address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "Tansu does not answer"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal}");
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
        self.thaw();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_frozen_broker_holds_new_orders_back_and_loses_no_money_or_stock() {
    let broker = PrivateBroker::start();
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
        let saga = world.finished(*order).await;
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
