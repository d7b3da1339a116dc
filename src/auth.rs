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
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
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

/// `90`, `90s`, `15m`, `1h`, `7d`: a positive duration.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?}: use seconds, or a number with s, m, h or d"
            ))
        }
    };
    let seconds = number
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit_seconds))
        .filter(|&seconds| seconds > 0)
        .ok_or_else(|| format!("{text:?} is not a positive duration"))?;
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_are_seconds_or_a_number_with_a_unit() {
        for (text, seconds) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("7d", 604_800),
        ] {
            assert_eq!(parse_ttl(text), Ok(Duration::from_secs(seconds)), "{text}");
        }
        for text in [
            "",
            "0",
            "0h",
            "h",
            "1w",
            "-1h",
            "1.5h",
            "1 h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(text).is_err(), "{text}");
        }
    }
}
