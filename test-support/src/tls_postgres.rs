//! A throwaway PostgreSQL cluster that speaks TLS only, for the tests of
//! `DATABASE_URL`'s `sslmode`: whatever the shared server at `DATABASE_URL`
//! is configured with, these tests run against a server whose certificate
//! they made.
//!
//! [`TlsPostgres::start`] makes a test CA and a server certificate for
//! `127.0.0.1` and `localhost` signed by it (with `openssl`), a cluster in a
//! temporary folder (`initdb`, as the `postgres` user when the tests run as
//! root, the way `scripts/lib.sh` starts the project's cluster) whose
//! `pg_hba.conf` trusts TLS connections from loopback and rejects the
//! others, and starts it with `ssl=on` on a free port. Dropping it stops the
//! server (`pg_ctl stop -m immediate`) and removes the folder.
//!
//! Needs PostgreSQL's server binaries (`initdb` on `PATH`, or Debian's
//! `/usr/lib/postgresql/*/bin`) and `openssl`, which `scripts/test`
//! installs; without them it panics (the test is not skipped).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running cluster with TLS on; stopped and removed on drop.
#[derive(Debug)]
pub struct TlsPostgres {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    as_postgres: bool,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl TlsPostgres {
    /// Makes the certificates and the cluster, and starts it.
    ///
    /// # Panics
    /// When `openssl` or PostgreSQL's binaries are missing, or the server
    /// does not start.
    pub fn start() -> TlsPostgres {
        let bindir = pg_bindir();
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("purser-tls-pg-")
            .tempdir()
            .expect("temporary folder");
        make_certificates(dir.path());
        if as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path()));
        }
        let mut cluster = TlsPostgres {
            dir,
            bindir,
            as_postgres,
            port: 0,
        };
        let data = cluster.data();
        let mut initdb = cluster.pg_command("initdb");
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run(&mut initdb);
        // TLS from loopback only: a connection that succeeds used TLS.
        std::fs::write(
            data.join("pg_hba.conf"),
            "hostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n",
        )
        .expect("write pg_hba.conf");

        // A port taken between our probe and the server's bind: try another.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let dir = cluster.dir.path();
            let options = format!(
                "-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' \
                 -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key} \
                 -c fsync=off -c max_connections=20",
                cert = dir.join("server.pem").display(),
                key = dir.join("server.key").display(),
            );
            let output = cluster
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .args(["-w", "-t", "60", "-o", &options, "start"])
                .output()
                .expect("run pg_ctl");
            if output.status.success() {
                cluster.port = port;
                return cluster;
            }
            last = std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default();
        }
        panic!("the TLS PostgreSQL cluster did not start; its log:\n{last}");
    }

    /// `postgres://postgres@127.0.0.1:{port}/postgres?{query}`.
    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// The CA (PEM) that signed the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Another CA (PEM), which signed nothing the server has.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A PostgreSQL binary, run as the cluster's owner from `/`.
    fn pg_command(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.current_dir("/");
        command
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// Runs a command to success, or panics with its output.
fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn running_as_root() -> bool {
    let output = Command::new("id").arg("-u").output().expect("run id -u");
    String::from_utf8_lossy(&output.stdout).trim() == "0"
}

/// The folder of `initdb` and `pg_ctl`: from `PATH`, or Debian's newest
/// `/usr/lib/postgresql/N/bin`.
fn pg_bindir() -> PathBuf {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file())
    });
    if let Some(dir) = from_path {
        return dir;
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    debian.sort();
    debian.pop().map(|(_, bin)| bin).expect(
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed; \
         scripts/test installs Debian's postgresql package",
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// `ca.pem`, `server.pem`/`server.key` (for 127.0.0.1 and localhost, signed
/// by the CA) and `other-ca.pem`, EC P-256, valid for two days.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        run(Command::new("openssl").args(args).current_dir(dir));
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, subject) in [("ca", "/CN=Purser test CA"), ("other-ca", "/CN=Another CA")] {
        let (key, cert) = (format!("{name}.key"), format!("{name}.pem"));
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subject];
        args.extend(ec);
        args.extend(["-keyout", key.as_str(), "-out", cert.as_str()]);
        openssl(&args);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    let mut args = vec!["req", "-new", "-subj", "/CN=localhost"];
    args.extend(ec);
    args.extend(["-keyout", "server.key", "-out", "server.csr"]);
    openssl(&args);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    // PostgreSQL refuses a key that others can read.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod server.key");
}
