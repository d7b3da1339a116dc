//! `purser`: the one binary of Purser. Each subcommand lives in the module
//! of its name; `main` only parses the command line, sets up telemetry,
//! owns the process's shutdown token (and, for the commands that run until
//! stopped, the one signal handler that cancels it) and dispatches. Each
//! command opens the process's one pool ([`db::open`]).

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod auth;
mod carrier;
mod command_api;
mod db;
mod metrics;
mod migrate;
mod project;
mod projection_ops;
mod query_api;
mod relay;
mod saga;
mod serve;
mod telemetry;

/// jemalloc rather than glibc's malloc, for every allocation of the process
/// (it also takes librdkafka's `malloc`): it gives back to the system, ten
/// seconds after, the pages that a burst of work freed (a database stall
/// piles requests up to the process's caps, a consumer's fetches grow),
/// where glibc's heaps keep their widest extent for the life of the
/// process, so its resident memory only ever stepped up, a stall at a time
/// (BENCHMARKS.md, the soak).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Event-sourced CQRS backend for orders, payments and inventory.
#[derive(Debug, Parser)]
#[command(name = "purser", version, about)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,

    #[command(subcommand)]
    command: Command,
}

/// Options every subcommand understands.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// PostgreSQL server holding the event store and the read models.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = db::DEFAULT_DATABASE_URL,
        hide_env_values = true
    )]
    pub database_url: String,

    /// Log output: `text` for people, `json` for log collectors. The level
    /// comes from `RUST_LOG` (default `info,sqlx=warn`).
    #[arg(
        long,
        global = true,
        env = "PURSER_LOG_FORMAT",
        value_enum,
        default_value_t = telemetry::LogFormat::Text
    )]
    pub log_format: telemetry::LogFormat,

    /// Apply the pending database migrations first (as `purser migrate`
    /// does). Without it, a command refuses to run on a database that
    /// lacks a migration; no command migrates by itself.
    #[arg(long, global = true)]
    pub migrate: bool,
}

#[derive(Debug, Subcommand)]
#[expect(
    clippy::enum_variant_names,
    reason = "each variant is named after its subcommand, `command-api` included"
)]
enum Command {
    /// Apply the pending database migrations and list what was applied.
    Migrate(migrate::Args),
    /// Serve the Command API (default 127.0.0.1:8080).
    CommandApi(command_api::Args),
    /// Publish the event log to Kafka (the relay).
    Relay(relay::RelayCommand),
    /// Run the projection workers that build the read models.
    Project(project::Args),
    /// Operate the projections: list, status, rebuild, reset, unpark.
    Projections(projection_ops::ProjectionsArgs),
    /// Serve the Query API (default 127.0.0.1:8081).
    QueryApi(query_api::Args),
    /// Run the order-fulfilment saga orchestrator, or `saga retry ORDER_ID`.
    Saga(Box<saga::Args>),
    /// Run every component in one process: Command API, relay, projection
    /// workers, saga orchestrator and Query API.
    Serve(Box<serve::Args>),
    /// Run the simulated carrier as an HTTP server (default 127.0.0.1:8085),
    /// for `--carrier-url` of `serve` and `saga`.
    Carrier(carrier::Args),
    /// Manage keys: `auth init --dir DIR` writes a development key pair.
    Auth(auth::AuthArgs),
    /// Print a bearer token signed with the key of `purser auth init`.
    Token(auth::TokenArgs),
}

impl Command {
    /// Whether the command runs until stopped (and so listens for SIGTERM
    /// and ctrl-c, finishing its work in flight when one comes); the others
    /// keep the default: a signal ends them at once.
    fn runs_until_stopped(&self) -> bool {
        match self {
            Command::Migrate(_) | Command::Auth(_) | Command::Token(_) => false,
            Command::Projections(args) => {
                matches!(args.command, projection_ops::ProjectionsCommand::Rebuild(_))
            }
            Command::Saga(args) => args.action.is_none(),
            Command::CommandApi(_)
            | Command::Relay(_)
            | Command::Project(_)
            | Command::QueryApi(_)
            | Command::Serve(_)
            | Command::Carrier(_) => true,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let telemetry = telemetry::init(cli.global.log_format);
    let shutdown = CancellationToken::new();
    if cli.command.runs_until_stopped() {
        service::cancel_on_signal(shutdown.clone());
    }
    let global = &cli.global;
    let outcome = match cli.command {
        Command::Migrate(args) => migrate::run(global, args).await,
        Command::CommandApi(args) => command_api::run(global, args, shutdown).await,
        Command::Relay(args) => relay::run(global, args, shutdown).await,
        Command::Project(args) => project::run(global, args, shutdown).await,
        Command::Projections(args) => projection_ops::run(global, args, shutdown).await,
        Command::QueryApi(args) => query_api::run(global, args, shutdown).await,
        Command::Saga(args) => saga::run(global, *args, shutdown).await,
        Command::Serve(args) => serve::run(global, *args, shutdown).await,
        Command::Carrier(args) => carrier::run(args, shutdown).await,
        Command::Auth(args) => auth::run_auth(args),
        Command::Token(args) => auth::run_token(args),
    };
    let code = match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, cli.global.log_format);
            ExitCode::FAILURE
        }
    };
    // The exporter's last batch goes out on the runtime; wait for it off it.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    code
}

/// Prints a failure and its causes, one per line (no backtrace: this is a
/// message for the operator); as a log event too when logs are JSON.
fn report(error: &anyhow::Error, format: telemetry::LogFormat) {
    if format == telemetry::LogFormat::Json {
        tracing::error!(error = format!("{error:#}"), "purser failed");
    }
    eprintln!("error: {error}");
    let mut previous = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        // sqlx's errors repeat their source in their own message.
        if !previous.ends_with(&cause) {
            eprintln!("  caused by: {cause}");
        }
        previous = cause;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_are_accepted_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "purser",
            "migrate",
            "--database-url",
            "postgres://u@db.example:6543/app",
            "--log-format",
            "json",
        ])
        .expect("valid command line");
        assert_eq!(cli.global.database_url, "postgres://u@db.example:6543/app");
        assert_eq!(cli.global.log_format, telemetry::LogFormat::Json);
        assert!(matches!(cli.command, Command::Migrate(_)));
    }

    #[test]
    fn a_token_names_exactly_one_subject() {
        let base = ["purser", "token", "--signing-key", "k.pem"];
        let parse = |extra: &[&str]| Cli::try_parse_from(base.iter().chain(extra));
        assert!(parse(&["--operator", "alice"]).is_ok());
        let customer = "0190b4d2-6f3e-7a4c-9d2e-5b1f0c3a8e71";
        assert!(parse(&["--customer", customer]).is_ok());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--operator", "alice", "--customer", customer]).is_err());
        assert!(parse(&["--customer", "alice"]).is_err());
    }

    #[test]
    fn an_unknown_log_format_is_refused() {
        let parsed = Cli::try_parse_from(["purser", "--log-format", "xml", "migrate"]);
        assert!(parsed.is_err());
    }

    /// The anonymous memory this process has resident, in KiB.
    pub(crate) fn resident_anon_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .expect("/proc/self/status")
            .lines()
            .find_map(|line| line.strip_prefix("RssAnon:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("RssAnon in /proc/self/status")
    }

    /// What a burst of small allocations freed goes back to the system,
    /// though a few of them live on among the freed ones. glibc's malloc
    /// keeps such a heap's extent resident for the life of the process
    /// (64 MiB here); jemalloc purges the pages it freed.
    #[tokio::test]
    async fn memory_a_burst_freed_goes_back_to_the_system() {
        const PIECES: usize = 64 * 1024;
        const PIECE: usize = 1024;
        let before = resident_anon_kib();
        let burst: Vec<Vec<u8>> = (0..PIECES).map(|_| vec![7u8; PIECE]).collect();
        let peak = resident_anon_kib().saturating_sub(before);
        assert!(peak > 48 * 1024, "the burst made {peak} KiB resident");
        // One piece in 256 outlives the burst, scattered through it.
        let kept: Vec<Vec<u8>> = burst.into_iter().step_by(256).collect();
        test_support::eventually(
            "the pages the burst freed to leave the process",
            std::time::Duration::from_secs(60),
            std::time::Duration::from_millis(200),
            || async {
                let grown = resident_anon_kib().saturating_sub(before);
                if grown < 24 * 1024 {
                    Ok(())
                } else {
                    Err(format!("{grown} KiB more resident than before the burst"))
                }
            },
        )
        .await;
        assert_eq!(kept.len(), PIECES / 256);
    }
}
