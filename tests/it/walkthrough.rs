//! The book's walkthrough runs as written: `scripts/walkthrough` against a
//! real `purser serve` (configured as `scripts/up` runs it) behind a real
//! nginx gateway, and what it prints must be what the page shows
//! (`docs/src/walkthrough.out`): every status line, header and answer,
//! field for field. Only what differs from run to run is left out of the
//! comparison: ids, times, global positions, tracking numbers, cursors and
//! the run's SKU.
//!
//! After a deliberate change to the API, re-record the page's output with
//! `PURSER_WALKTHROUGH_RECORD=1 cargo nextest run -E 'test(walkthrough)'`
//! and read the diff.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use test_support::{eventually, TestDatabase};
use tokio::process::Command;

use crate::{DEADLINE, PURSER};
use test_support::gateway::{free_port, Gateway, Settings};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn transcript() -> PathBuf {
    root().join("docs/src/walkthrough.out")
}

/// Keys whose values differ from run to run (when they are not null).
const VOLATILE: &[&str] = &[
    "account_id",
    "at",
    "checkpoint",
    "customer_id",
    "events_applied",
    "events_done",
    "finished_at",
    "head",
    "next",
    "order_id",
    "placed_at",
    "position",
    "saga_id",
    "started_at",
    "tracking_number",
    "updated_at",
];

/// `text` with what differs between runs replaced by placeholders.
fn normalise(text: &str) -> String {
    text.lines()
        .map(|line| {
            let line = volatile_value(line);
            let line = rebuild_summary(&line);
            let line = uuids(&line);
            let line = after_cursor(&line);
            sku(&line)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `  "key": value,` of a volatile key -> `  "key": <key>,`.
fn volatile_value(line: &str) -> String {
    let trimmed = line.trim_start();
    for key in VOLATILE {
        let prefix = format!("\"{key}\": ");
        if let Some(value) = trimmed.strip_prefix(&prefix) {
            let comma = if value.ends_with(',') { "," } else { "" };
            let value = value.trim_end_matches(',');
            if value != "null" {
                let indent = &line[..line.len() - trimmed.len()];
                return format!("{indent}{prefix}<{key}>{comma}");
            }
        }
    }
    line.to_owned()
}

fn is_uuid(candidate: &[u8]) -> bool {
    candidate.len() == 36
        && candidate.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// `purser projections rebuild`'s summary with its figures (which count
/// the whole event store, and time) as `<n>`.
fn rebuild_summary(line: &str) -> String {
    if !line.contains(": rebuilt from ") {
        return line.to_owned();
    }
    let mut out = String::new();
    let mut in_number = false;
    for ch in line.chars() {
        let digit = ch.is_ascii_digit() || (in_number && ch == '.');
        if digit && !in_number {
            out.push_str("<n>");
        } else if !digit {
            out.push(ch);
        }
        in_number = digit;
    }
    out
}

/// Every UUID -> `<uuid>`.
fn uuids(line: &str) -> String {
    let bytes = line.as_bytes();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < bytes.len() {
        if i + 36 <= bytes.len() && is_uuid(&bytes[i..i + 36]) {
            out.push_str("<uuid>");
            i += 36;
        } else {
            let ch = line[i..].chars().next().expect("a char");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// `after=CURSOR` (up to a space, `&` or the end) -> `after=<cursor>`.
fn after_cursor(line: &str) -> String {
    match line.find("after=") {
        Some(start) => {
            let from = start + "after=".len();
            let end = line[from..]
                .find([' ', '&', '"'])
                .map_or(line.len(), |n| from + n);
            format!(
                "{}after=<cursor>{}",
                &line[..from - "after=".len()],
                &line[end..]
            )
        }
        None => line.to_owned(),
    }
}

/// The run's SKU, `LAPTOP-` and 8 hex digits -> `LAPTOP-<run>`.
fn sku(line: &str) -> String {
    let mut out = line.to_owned();
    let mut from = 0;
    while let Some(found) = out[from..].find("LAPTOP-") {
        let start = from + found + "LAPTOP-".len();
        let run = out.as_bytes()[start..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        if run == 8 {
            out.replace_range(start..start + 8, "<run>");
        }
        from = start;
    }
    out
}

/// The first line where the two differ, with a few lines around it.
fn first_difference(expected: &str, actual: &str) -> String {
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    let at = expected
        .iter()
        .zip(&actual)
        .position(|(e, a)| e != a)
        .unwrap_or(expected.len().min(actual.len()));
    let window = |lines: &[&str]| {
        lines[at.saturating_sub(8)..(at + 4).min(lines.len())]
            .iter()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "first difference at line {} (normalised)\n  the page shows:\n{}\n  the run printed:\n{}",
        at + 1,
        window(&expected),
        window(&actual)
    )
}

async fn ready(client: &reqwest::Client, url: String) {
    eventually(&url, DEADLINE, Duration::from_millis(100), || async {
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(response.status().to_string()),
            Err(error) => Err(error.to_string()),
        }
    })
    .await;
}

#[tokio::test]
async fn the_walkthrough_runs_as_the_book_shows_it() {
    let db = TestDatabase::create().await;
    let keys = tempfile::tempdir().expect("temporary directory");
    auth::init_keys(keys.path()).expect("auth init");
    let (command, query, carrier) = (free_port(), free_port(), free_port());
    let kafka = test_support::kafka::config("walkthrough");
    // As scripts/up runs it: the simulated carrier over HTTP (`purser
    // carrier`), taking 2 s per call.
    let _carrier = Command::new(PURSER)
        .args(["carrier", "--addr", &format!("127.0.0.1:{carrier}")])
        .env("RUST_LOG", "warn")
        .env("PURSER_CARRIER_DELAY_MS", "2000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("purser carrier starts");
    let _serve = Command::new(PURSER)
        .args(["serve", "--database-url", &db.url])
        .args(["--bind", &format!("127.0.0.1:{command}")])
        .args(["--query-api-addr", &format!("127.0.0.1:{query}")])
        .args(["--saga-metrics-addr", "127.0.0.1:0"])
        .args(["--kafka-brokers", &kafka.brokers])
        .args(["--kafka-topic-prefix", &kafka.topic_prefix])
        .args(["--kafka-session-timeout-ms", "2000"])
        .env("RUST_LOG", "warn")
        .env("PURSER_CARRIER_URL", format!("http://127.0.0.1:{carrier}"))
        .env("PURSER_AUTH_JWKS", keys.path().join(auth::JWKS_FILE))
        .env_remove("PURSER_INSECURE_NO_AUTH")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("purser serve starts");
    let gateway = Gateway::start(Settings::to(vec![command], vec![query])).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    ready(&client, format!("http://127.0.0.1:{carrier}/health/live")).await;
    ready(&client, format!("http://127.0.0.1:{command}/health/ready")).await;
    ready(&client, gateway.url("/health/ready")).await;

    let run = Command::new("bash")
        .arg(root().join("scripts/walkthrough"))
        .env("PURSER_URL", gateway.url(""))
        .env("PURSER_BIN", PURSER)
        .env(
            "PURSER_AUTH_SIGNING_KEY",
            keys.path().join(auth::SIGNING_KEY_FILE),
        )
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "warn")
        .env("PURSER_WALKTHROUGH_ANCHORS", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the walkthrough finishes within 4 minutes")
        .expect("run bash");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "scripts/walkthrough failed ({}):\n{}\n{printed}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    if std::env::var_os("PURSER_WALKTHROUGH_RECORD").is_some() {
        std::fs::write(transcript(), &printed).expect("record the transcript");
    }
    let shown = std::fs::read_to_string(transcript()).expect("docs/src/walkthrough.out");
    let (expected, actual) = (normalise(&shown), normalise(&printed));
    if expected != actual {
        let saved = std::env::temp_dir().join("purser-walkthrough.out");
        let _ = std::fs::write(&saved, &printed);
        panic!(
            "scripts/walkthrough printed something else than the book shows; \
             its output is in {}\n{}",
            saved.display(),
            first_difference(&expected, &actual)
        );
    }
    drop(gateway);
    db.drop().await;
}

/// Every part the page includes, of the script and of its output, exists
/// (mdBook would include nothing for an anchor that does not).
#[test]
fn every_part_the_page_includes_exists() {
    let page = std::fs::read_to_string(root().join("docs/src/walkthrough.md")).expect("the page");
    let script = std::fs::read_to_string(root().join("scripts/walkthrough")).expect("the script");
    let shown = std::fs::read_to_string(transcript()).expect("docs/src/walkthrough.out");
    let mut parts = 0;
    for include in page.split("{{#include ").skip(1) {
        let target = include.split("}}").next().expect("an include ends with }}");
        let (file, anchor) = target.split_once(':').expect("an include names its part");
        let text = match file {
            "../../scripts/walkthrough" => &script,
            "walkthrough.out" => &shown,
            other => panic!("the page includes {other}, neither the script nor its output"),
        };
        for marker in [
            format!("ANCHOR: {anchor}\n"),
            format!("ANCHOR_END: {anchor}\n"),
        ] {
            assert!(text.contains(&marker), "{file} has no {marker:?}");
        }
        parts += 1;
    }
    assert!(parts > 20, "the page includes {parts} parts");
}

#[test]
fn normalising_keeps_statuses_and_shapes_and_drops_what_varies() {
    let a = "POST /accounts/0193a2b4-0000-7000-8000-000000000001/deposits\nHTTP/1.1 200 OK\n{\n  \"position\": 12,\n  \"finished_at\": null,\n  \"sku\": \"LAPTOP-0A1B2C3D\"\n}\nGET /x?limit=3&after=abc";
    let b = "POST /accounts/0193a2b4-0000-7000-8000-00000000000f/deposits\nHTTP/1.1 200 OK\n{\n  \"position\": 97,\n  \"finished_at\": null,\n  \"sku\": \"LAPTOP-FFFFFFFF\"\n}\nGET /x?limit=3&after=xyz";
    assert_eq!(normalise(a), normalise(b));
    assert_ne!(normalise(a), normalise(&a.replace("200 OK", "201 Created")));
    assert_ne!(
        normalise(a),
        normalise(&a.replace("\"finished_at\": null", "\"finished_at\": \"2026\""))
    );
    assert_ne!(normalise(a), normalise(&a.replace("\"sku\"", "\"skus\"")));
    assert_eq!(
        normalise("accounts: rebuilt from 7 events in 0.3 s (26 events/s)"),
        normalise("accounts: rebuilt from 1200 events in 12.5 s (96 events/s)")
    );
}
