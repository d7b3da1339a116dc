//! `purser`: the one binary of Purser. Each subcommand lives in its own
//! module; `main` only parses the command line, sets up telemetry and
//! dispatches.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod auth;
mod db;
mod migrate;
mod orchestrate;
mod projection_ops;
mod read_side;
mod relay;
mod telemetry;

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
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the pending database migrations and list what was applied.
    Migrate(migrate::Args),
    /// Serve the Command API (default 127.0.0.1:8080).
    #[command(name = "command-api")]
    WriteApi(command_api::Config),
    /// Publish the event log to Kafka (the relay).
    Relay(relay::RelayArgs),
    /// Run the projection workers that build the read models.
    Project(read_side::ProjectArgs),
    /// Operate the projections: list, status, rebuild, reset, unpark.
    Projections(projection_ops::ProjectionsArgs),
    /// Serve the Query API (default 127.0.0.1:8081).
    #[command(name = "query-api")]
    QueryApi(query_api::QueryApiConfig),
    /// Run the order-fulfilment saga orchestrator, or `saga retry ORDER_ID`.
    Saga(Box<orchestrate::SagaArgs>),
    /// Run every component in one process: Command API, relay, projection
    /// workers, saga orchestrator and Query API.
    Serve(Box<ServeArgs>),
    /// Manage keys: `auth init --dir DIR` writes a development key pair.
    Auth(auth::AuthArgs),
    /// Print a bearer token signed with the key of `purser auth init`.
    Token(auth::TokenArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.global.log_format);
    let outcome = match cli.command {
        Command::Migrate(args) => migrate::run(&cli.global, args).await,
        Command::Relay(args) => relay::run(&cli.global, args).await,
        Command::Project(args) => read_side::run_project(&cli.global, args).await,
        Command::Projections(args) => projection_ops::run(&cli.global, args).await,
        Command::QueryApi(config) => read_side::run_query_api(&cli.global, config).await,
        Command::WriteApi(config) => run_command_api(&cli.global, config).await,
        Command::Saga(args) => orchestrate::run(&cli.global, *args).await,
        Command::Serve(args) => serve(&cli.global, *args).await,
        Command::Auth(args) => auth::run_auth(args),
        Command::Token(args) => auth::run_token(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            report(&error, cli.global.log_format);
            ExitCode::FAILURE
        }
    }
}

/// `purser command-api`: serves until SIGTERM or ctrl-c, then finishes
/// the requests in flight.
async fn run_command_api(
    global: &GlobalArgs,
    mut config: command_api::Config,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    config.database_url = global.database_url.clone();
    let application = command_api::Application::build(config)
        .await
        .context("starting the command API")?;
    application
        .run_until_stopped()
        .await
        .context("serving the command API")
}

/// Options of `purser serve`: those of every component it runs.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    command_api: command_api::Config,
    #[command(flatten)]
    kafka: kafka::KafkaConfig,
    #[command(flatten)]
    relay: kafka::RelayOptions,
    #[command(flatten)]
    query_api: query_api::QueryApiConfig,
    #[command(flatten)]
    saga: saga::SagaConfig,
    /// Where the saga orchestrator serves its `/metrics`.
    #[arg(
        long = "saga-metrics-addr",
        env = "PURSER_SAGA_METRICS_ADDR",
        default_value = "127.0.0.1:8082"
    )]
    saga_metrics_addr: std::net::SocketAddr,
}

/// `purser serve`: every component in one process. Each stops on SIGTERM or
/// ctrl-c after finishing its work in flight; the first to fail stops the
/// process with its error.
async fn serve(global: &GlobalArgs, args: ServeArgs) -> anyhow::Result<()> {
    let project = read_side::ProjectArgs {
        kafka: args.kafka.clone(),
        projections: Vec::new(),
        batch_size: 500,
        max_attempts: projections::DEFAULT_MAX_ATTEMPTS,
        unpark: None,
    };
    let saga = orchestrate::SagaArgs {
        action: None,
        saga: args.saga,
        metrics_addr: args.saga_metrics_addr,
    };
    let relay = relay::RelayArgs {
        kafka: args.kafka,
        relay: args.relay,
    };
    tokio::try_join!(
        run_command_api(global, args.command_api),
        relay::run(global, relay),
        read_side::run_project(global, project),
        orchestrate::run(global, saga),
        read_side::run_query_api(global, args.query_api),
    )?;
    Ok(())
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
}
