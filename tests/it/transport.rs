//! Transport security: `DATABASE_URL` with `sslmode=require` and
//! `verify-full` against a PostgreSQL that speaks TLS only (a throwaway
//! cluster with a certificate of the test's own, whatever the shared server
//! is configured with), and Kafka settings refused before anything starts.

use sqlx::{Connection, PgConnection};
use test_support::tls_postgres::TlsPostgres;

use crate::{stderr, PURSER};

async fn purser_with_database(url: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(PURSER)
        .args(args)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "info,sqlx=warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run purser")
}

#[tokio::test]
async fn sslmode_require_and_verify_full_connect_over_tls() {
    let server = TlsPostgres::start();

    // The server refuses a connection without TLS...
    let plain = PgConnection::connect(&server.url("sslmode=disable")).await;
    let error = plain
        .expect_err("a connection without TLS is rejected")
        .to_string();
    assert!(error.contains("no encryption"), "{error}");

    // ...and `require` connects, over TLS as the server sees it.
    let mut connection = PgConnection::connect(&server.url("sslmode=require"))
        .await
        .expect("sslmode=require connects");
    let ssl: bool = sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        .fetch_one(&mut connection)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the connection of sslmode=require is not TLS");
    connection.close().await.expect("close");

    // `verify-full` with the CA that signed the server's certificate: the
    // binary connects (and migrates) through its own DATABASE_URL.
    let url = server.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        server.ca().display()
    ));
    let output = purser_with_database(&url, &["migrate"]).await;
    assert!(output.status.success(), "{}", stderr(&output));

    let mut connection = PgConnection::connect(&url)
        .await
        .expect("verify-full connects");
    let (ssl, applied): (bool, i64) = sqlx::query_as(
        "select (select ssl from pg_stat_ssl where pid = pg_backend_pid()), \
                (select count(*) from _sqlx_migrations)",
    )
    .fetch_one(&mut connection)
    .await
    .expect("pg_stat_ssl and the migrations");
    assert!(ssl, "the connection of sslmode=verify-full is not TLS");
    assert!(applied > 0, "purser migrate applied nothing");
    connection.close().await.expect("close");
}

#[tokio::test]
async fn verify_full_with_the_wrong_ca_is_refused() {
    let server = TlsPostgres::start();
    let url = server.url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        server.other_ca().display()
    ));

    let error = PgConnection::connect(&url)
        .await
        .expect_err("a certificate the CA did not sign is refused")
        .to_string();
    assert!(
        error.contains("invalid peer certificate: UnknownIssuer"),
        "{error}"
    );

    let output = purser_with_database(&url, &["migrate"]).await;
    assert!(
        !output.status.success(),
        "purser migrate connected with the wrong CA"
    );
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "cannot connect to PostgreSQL at postgres@127.0.0.1:{}/postgres",
            server.port
        )),
        "{message}"
    );
    assert!(
        message.contains("invalid peer certificate: UnknownIssuer"),
        "{message}"
    );
}

#[tokio::test]
async fn services_refuse_bad_kafka_settings_before_starting() {
    // Nothing listens on port 1: the settings are refused before the
    // database is even tried.
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("PURSER_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")],
            "invalid Kafka settings: PURSER_KAFKA_SECURITY_PROTOCOL=sasl_ssl needs PURSER_KAFKA_SASL_MECHANISM",
        ),
        (
            &[("PURSER_KAFKA_SECURITY_PROTOCOL", "tls")],
            "invalid value 'tls'",
        ),
        (
            &[("PURSER_KAFKA_PROPERTIES", "no.such.property=1")],
            "no.such.property",
        ),
    ];
    for command in [
        ["relay"].as_slice(),
        &["project"],
        &["serve", "--insecure-no-auth"],
    ] {
        for (env, expected) in cases {
            let output = tokio::process::Command::new(PURSER)
                .args(command)
                .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/postgres")
                .envs(env.iter().copied())
                .kill_on_drop(true)
                .output()
                .await
                .expect("run purser");
            let message = stderr(&output);
            assert!(!output.status.success(), "{command:?} {env:?} started");
            assert!(message.contains(expected), "{command:?} {env:?}: {message}");
            assert!(
                !message.contains("cannot connect to PostgreSQL"),
                "{message}"
            );
        }
    }
}
