//! `purser auth init` and `purser token`: the key pair the binary writes
//! and the tokens it prints verify with the `auth` crate.

use std::process::Output;

use crate::{stderr, stdout, PURSER};

fn run(args: &[&str]) -> Output {
    std::process::Command::new(PURSER)
        .args(args)
        .env_remove("PURSER_AUTH_SIGNING_KEY")
        .env_remove("PURSER_AUTH_ISSUER")
        .env_remove("PURSER_AUTH_AUDIENCE")
        .output()
        .expect("run purser")
}

#[test]
fn auth_init_then_token_prints_a_token_the_crate_verifies() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let keys = dir.path().join("keys");
    let keys = keys.to_str().expect("utf-8 path");
    let init = run(&["auth", "init", "--dir", keys]);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(stdout(&init).contains("wrote"), "{}", stdout(&init));

    let signing_key = format!("{keys}/signing-key.pem");
    let token = run(&[
        "token",
        "--signing-key",
        &signing_key,
        "--operator",
        "alice",
    ]);
    assert!(token.status.success(), "{}", stderr(&token));
    let printed = stdout(&token);
    assert_eq!(
        printed.lines().count(),
        1,
        "one token on stdout: {printed:?}"
    );

    let verifier = auth::Verifier::from_jwks_file(
        &dir.path().join("keys/jwks.json"),
        auth::DEFAULT_ISSUER,
        auth::DEFAULT_AUDIENCE,
    )
    .expect("the JWKS auth init wrote");
    let caller = verifier
        .verify(Some(&format!("Bearer {}", printed.trim_end())))
        .expect("a valid token");
    assert_eq!(caller, auth::Caller::operator("alice"));

    // A second init keeps the key, so the token still verifies.
    let again = run(&["auth", "init", "--dir", keys]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("kept"), "{}", stdout(&again));
    let reloaded = auth::Verifier::from_jwks_file(
        &dir.path().join("keys/jwks.json"),
        auth::DEFAULT_ISSUER,
        auth::DEFAULT_AUDIENCE,
    )
    .expect("the same JWKS");
    assert!(reloaded
        .verify(Some(&format!("Bearer {}", printed.trim_end())))
        .is_ok());
}

#[test]
fn token_for_a_customer_from_the_environment_key_with_another_audience() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let keys = dir.path().to_str().expect("utf-8 path");
    assert!(run(&["auth", "init", "--dir", keys]).status.success());
    let customer = uuid::Uuid::new_v4().to_string();
    let token = std::process::Command::new(PURSER)
        .args(["token", "--customer", &customer, "--ttl", "5m"])
        .args(["--audience", "shop"])
        .env(
            "PURSER_AUTH_SIGNING_KEY",
            dir.path().join("signing-key.pem"),
        )
        .env_remove("PURSER_AUTH_ISSUER")
        .env_remove("PURSER_AUTH_AUDIENCE")
        .output()
        .expect("run purser");
    assert!(token.status.success(), "{}", stderr(&token));
    let header = format!("Bearer {}", stdout(&token).trim_end());
    let jwks = dir.path().join("jwks.json");
    let shop = auth::Verifier::from_jwks_file(&jwks, "purser-dev", "shop").expect("JWKS");
    let caller = shop.verify(Some(&header)).expect("a valid token");
    assert_eq!(
        caller.customer_id().map(|id| id.to_string()),
        Some(customer)
    );
    let purser = auth::Verifier::from_jwks_file(&jwks, "purser-dev", "purser").expect("JWKS");
    assert_eq!(
        purser.verify(Some(&header)).map_err(|e| e.code()),
        Err("invalid_token")
    );
}

#[test]
fn token_without_a_readable_key_fails_clearly() {
    let output = run(&[
        "token",
        "--signing-key",
        "/nonexistent/key.pem",
        "--operator",
        "a",
    ]);
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(
        stderr(&output).contains("/nonexistent/key.pem"),
        "{}",
        stderr(&output)
    );
}

/// Both APIs, alone or in `purser serve`, refuse to start without a JWKS
/// and say what to do, unless `--insecure-no-auth` (which `scripts/up` and
/// the test harnesses never rely on by default).
#[test]
fn services_refuse_to_start_without_a_jwks() {
    for command in ["command-api", "query-api", "serve"] {
        let output = std::process::Command::new(PURSER)
            .arg(command)
            .env_remove("PURSER_AUTH_JWKS")
            .env_remove("PURSER_INSECURE_NO_AUTH")
            // Never reached: the refusal comes before any connection.
            .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
            .output()
            .expect("run purser");
        assert!(!output.status.success(), "{command} started");
        let message = stderr(&output);
        assert!(message.contains("PURSER_AUTH_JWKS"), "{command}: {message}");
        assert!(
            message.contains("--insecure-no-auth"),
            "{command}: {message}"
        );
    }
}
