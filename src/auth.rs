//! `purser auth init` (a development key pair) and `purser token` (a token
//! signed with it). Neither touches the database.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use uuid::Uuid;

/// Options of `purser auth`.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    #[command(subcommand)]
    action: AuthAction,
}

#[derive(Debug, clap::Subcommand)]
enum AuthAction {
    /// Write a new Ed25519 key pair: DIR/signing-key.pem (private, mode
    /// 0600) and DIR/jwks.json (public, for PURSER_AUTH_JWKS). Existing
    /// files are left alone.
    Init {
        /// Directory to write the key pair in (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
}

/// Options of `purser token`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("subject").required(true).args(["customer", "operator"])))]
pub struct TokenArgs {
    /// The Ed25519 private key (PKCS#8 PEM) that `purser auth init` wrote.
    #[arg(long, env = "PURSER_AUTH_SIGNING_KEY")]
    signing_key: PathBuf,

    /// A customer token: `sub` is this customer id, role `customer`.
    #[arg(long, value_name = "UUID")]
    customer: Option<Uuid>,

    /// An operator token: `sub` is this name, role `operator`.
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,

    /// How long the token is valid: seconds, or a number with s, m, h or d.
    #[arg(long, default_value = "1h", value_parser = service::duration::parse_duration)]
    ttl: Duration,

    /// The token's `iss`.
    #[arg(long, env = "PURSER_AUTH_ISSUER", default_value = auth::DEFAULT_ISSUER)]
    issuer: String,

    /// The token's `aud`.
    #[arg(long, env = "PURSER_AUTH_AUDIENCE", default_value = auth::DEFAULT_AUDIENCE)]
    audience: String,
}

/// `purser auth init --dir DIR`: says what it wrote and what it kept.
pub fn run_auth(args: AuthArgs) -> Result<()> {
    let AuthAction::Init { dir } = args.action;
    let outcome =
        auth::init_keys(&dir).with_context(|| format!("making a key pair in {}", dir.display()))?;
    let said = |created: bool| if created { "wrote" } else { "kept" };
    println!(
        "{} {} (private: keep it secret)",
        said(outcome.created_signing_key),
        outcome.signing_key.display()
    );
    println!("{} {}", said(outcome.created_jwks), outcome.jwks.display());
    println!(
        "services: PURSER_AUTH_JWKS={}; tokens: purser token --signing-key {} --operator NAME",
        outcome.jwks.display(),
        outcome.signing_key.display()
    );
    Ok(())
}

/// `purser token ...`: prints one token and a newline on stdout.
pub fn run_token(args: TokenArgs) -> Result<()> {
    let subject = match (args.customer, args.operator) {
        (Some(id), None) => auth::Subject::Customer(id),
        (None, Some(name)) => auth::Subject::Operator(name),
        _ => unreachable!("clap requires exactly one of --customer and --operator"),
    };
    let pem = std::fs::read_to_string(&args.signing_key)
        .with_context(|| format!("reading the signing key {}", args.signing_key.display()))?;
    let token = auth::issue_token(&pem, &subject, args.ttl, &args.issuer, &args.audience)
        .with_context(|| format!("signing with {}", args.signing_key.display()))?;
    println!("{token}");
    Ok(())
}
