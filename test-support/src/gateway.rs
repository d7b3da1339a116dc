//! The gateway: a real nginx running `deploy/nginx/purser.conf.template` as
//! `scripts/lib.sh` renders it (with the development certificate the script
//! makes), on free ports, in a folder of its own. For the gateway's tests and
//! benchmark.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use uuid::Uuid;

use crate::eventually;

/// How long the gateway may take to start, or a log line to appear.
const DEADLINE: Duration = Duration::from_secs(60);

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// The nginx binary (Debian's package).
pub fn nginx() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .expect("nginx is not installed: scripts/test installs it (ensure_nginx), or apt-get install nginx")
}

/// Where the gateway sends each method, and how many requests an address
/// may make.
pub struct Settings {
    /// Ports of the Command API instances.
    pub command: Vec<u16>,
    /// Ports of the Query API instances.
    pub query: Vec<u16>,
    /// Requests per client address, as nginx writes it (`50r/s`).
    pub rate: &'static str,
    /// Requests allowed above the rate before 429.
    pub burst: u32,
}

impl Settings {
    /// To these instances, with a rate no test reaches.
    pub fn to(command: Vec<u16>, query: Vec<u16>) -> Settings {
        Settings {
            command,
            query,
            rate: "1000r/s",
            burst: 1000,
        }
    }
}

/// A running nginx in a folder of its own, removed on drop.
pub struct Gateway {
    /// Its folder: configuration, certificate, logs.
    pub dir: PathBuf,
    child: Child,
    /// The plain HTTP port.
    pub http: u16,
    /// The TLS port.
    pub https: u16,
}

fn addresses(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl Gateway {
    /// Renders the configuration and starts nginx; returns once it listens.
    ///
    /// # Panics
    /// When nginx is missing or does not start.
    pub async fn start(settings: Settings) -> Gateway {
        let nginx = nginx();
        let dir = std::env::temp_dir().join(format!("purser-gateway-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("gateway folder");
        let (http, https) = (free_port(), free_port());
        let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/lib.sh");
        let rendered = Command::new("bash")
            .arg("-c")
            .arg(r#"set -e; source "$1"; _ensure_dev_cert; render_gateway_config "$2""#)
            .arg("render")
            .arg(&lib)
            .arg(&dir)
            .env("PURSER_GATEWAY_HTTP", format!("127.0.0.1:{http}"))
            .env("PURSER_GATEWAY_HTTPS", format!("127.0.0.1:{https}"))
            .env(
                "PURSER_GATEWAY_COMMAND_UPSTREAMS",
                addresses(&settings.command),
            )
            .env("PURSER_GATEWAY_QUERY_UPSTREAMS", addresses(&settings.query))
            .env("PURSER_GATEWAY_RATE", settings.rate)
            .env("PURSER_GATEWAY_BURST", settings.burst.to_string())
            .env("PURSER_GATEWAY_CERT", dir.join("cert.pem"))
            .env("PURSER_GATEWAY_KEY", dir.join("key.pem"))
            .output()
            .await
            .expect("run bash");
        assert!(
            rendered.status.success(),
            "rendering the gateway configuration failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        // One process (no master and workers) in the foreground, so that
        // killing it on drop leaves nothing behind.
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nginx starts");
        let mut gateway = Gateway {
            dir,
            child,
            http,
            https,
        };
        let address = format!("127.0.0.1:{http}");
        eventually(
            "nginx to listen",
            DEADLINE,
            Duration::from_millis(20),
            || {
                let exited = gateway.child.try_wait().expect("nginx status");
                let log = gateway.file("error.log");
                let address = address.clone();
                async move {
                    assert!(exited.is_none(), "nginx exited ({exited:?}): {log}");
                    tokio::net::TcpStream::connect(address).await.map(drop)
                }
            },
        )
        .await;
        gateway
    }

    /// A file of the gateway's folder (`access.log`, `error.log`), or "".
    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// The access log's line of the request with this id.
    pub async fn log_line(&self, request_id: &str) -> String {
        let marker = format!("request_id={request_id} ");
        eventually(
            "the access log line",
            DEADLINE,
            Duration::from_millis(20),
            || {
                let log = self.file("access.log");
                let marker = marker.clone();
                async move {
                    log.lines()
                        .find(|line| line.contains(&marker))
                        .map(str::to_owned)
                        .ok_or(log)
                }
            },
        )
        .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
