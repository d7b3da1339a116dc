//! The operator console in a real browser: Debian's Chromium, headless,
//! driven through WebDriver ([`crate::webdriver`]), on the page as the
//! gateway serves it (nginx in front of a Command API and a Query API that
//! verify tokens, over a pipeline of every component: relay, projection
//! workers, the saga with a simulated carrier, the runner of requested
//! rebuilds). Each test leaves screenshots of the pages it saw in the target
//! directory's `console-screenshots`.

use std::net::SocketAddr;
use std::time::Duration;

use event_store::{ExpectedVersion, Metadata, NewEvent, StreamId};
use projections::rebuild::RebuildOptions;
use projections::requests::RequestRunner;
use saga::{SagaConfig, SimulatedCarrier};
use serde_json::{json, Value};
use test_support::gateway::{Gateway, Settings};
use test_support::pipeline::Pipeline;
use test_support::tokens::{generous, Keys};
use test_support::Harness;
use uuid::Uuid;

use crate::webdriver::Browser;

const DEADLINE: Duration = Duration::from_secs(90);

/// Every component, behind the gateway, over a database of its own.
struct Stack {
    h: Harness,
    keys: Keys,
    pipeline: Pipeline,
    gateway: Gateway,
    carrier: SimulatedCarrier,
    http: reqwest::Client,
}

impl Stack {
    async fn start() -> Stack {
        let h = Harness::new().await;
        let kafka = test_support::kafka::topics("console").await;
        let keys = Keys::new();
        let mut pipeline = Pipeline::new();
        pipeline.relay(&h.store, &kafka);
        pipeline.workers(&h.store, &kafka, None);
        let carrier = SimulatedCarrier::default();
        pipeline.saga(
            &h.store,
            SagaConfig {
                step_timeout_ms: 300,
                max_attempts: 2,
                backoff_ms: 50,
                backoff_max_ms: 200,
                poll_ms: 50,
                ..SagaConfig::default()
            },
            carrier.clone(),
        );
        let command = command_api::Application::build(
            &command_api::Config {
                bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..command_api::Config::default()
            },
            h.db.pool.clone(),
            keys.access(generous()),
        )
        .await
        .expect("command API binds");
        let command_port = command.port();
        pipeline.spawn("command API", command.run(pipeline.shutdown.clone()));
        let query = query_api::Application::build(
            &query_api::QueryApiConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..query_api::QueryApiConfig::default()
            },
            h.db.pool.clone(),
            keys.access(generous()),
        )
        .await
        .expect("query API binds");
        let query_port = query.port();
        pipeline.spawn("query API", query.run(pipeline.shutdown.clone()));
        // Requested rebuilds, in small throttled windows: slow enough to
        // be watched.
        let runner = RequestRunner::new(
            h.store.clone(),
            &[],
            RebuildOptions {
                batch_size: 500,
                max_events_per_second: Some(3_000),
                ..RebuildOptions::default()
            },
        )
        .expect("runner");
        let stop = pipeline.shutdown.clone();
        pipeline.spawn("rebuild requests", async move {
            runner.run(stop).await;
            Ok::<(), String>(())
        });
        let gateway = Gateway::start(Settings::to(vec![command_port], vec![query_port])).await;
        Stack {
            h,
            keys,
            pipeline,
            gateway,
            carrier,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("client"),
        }
    }

    fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }

    /// The console's link as `scripts/up` prints it: signed in as `name`.
    fn link(&self, name: &str) -> String {
        format!(
            "{}#token={}",
            self.url("/console"),
            self.keys.operator(name)
        )
    }

    /// A POST through the gateway with `token`.
    async fn post(&self, token: &str, path: &str, body: Value) -> Value {
        let response = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn stop(self) {
        self.pipeline.stop().await;
        drop(self.gateway);
        self.h.drop().await;
    }
}

/// Signs in through the link `scripts/up` prints, and waits for the live
/// feed.
async fn signed_in(browser: &Browser, stack: &Stack, name: &str) {
    browser.goto(&stack.link(name)).await;
    browser.wait_shown("the console", "#console").await;
    browser
        .wait_text("the live feed", "#live", |t| t == "live")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_takes_an_operator_token_and_refuses_the_others() {
    let stack = Stack::start().await;
    let browser = Browser::start(1280, 900).await;
    browser.goto(&stack.url("/console")).await;
    browser
        .wait_shown("the sign-in form", "#sign-in-form")
        .await;
    assert!(!browser.shown("#console").await);
    browser.screenshot("sign-in").await;

    // A customer's token, then a bad one: refused, each with its reason.
    browser
        .type_into("#token", &stack.keys.customer(Uuid::now_v7()))
        .await;
    browser.click("#sign-in-button").await;
    browser
        .wait_text("a customer token refused", "#sign-in-error", |t| {
            t.contains("not an operator")
        })
        .await;
    browser.screenshot("sign-in-customer-refused").await;
    browser.type_into("#token", "not.a.token").await;
    browser.click("#sign-in-button").await;
    browser
        .wait_text("a bad token refused", "#sign-in-error", |t| {
            t.contains("refused") && t.contains("invalid_token")
        })
        .await;
    assert!(!browser.shown("#console").await);

    // An operator's, pasted and sent with the keyboard (Enter).
    browser
        .type_into("#token", &stack.keys.operator("olga"))
        .await;
    browser.keys("\u{e007}").await;
    browser.wait_shown("the console", "#console").await;
    browser
        .wait_text("who is signed in", "#who", |t| t.contains("olga"))
        .await;
    browser
        .wait_text("the live feed", "#live", |t| t == "live")
        .await;
    browser
        .wait_text("the projections", "#projection-table tbody", |t| {
            ["accounts", "inventory", "orders", "sagas"]
                .iter()
                .all(|p| t.contains(p))
        })
        .await;
    browser.screenshot("signed-in").await;

    // Kept for the tab (a reload stays signed in); signing out forgets it.
    browser.goto(&stack.url("/console")).await;
    browser.wait_shown("still signed in", "#console").await;
    browser.click("#sign-out").await;
    browser
        .wait_shown("the sign-in form", "#sign-in-form")
        .await;
    let kept = browser
        .execute("return sessionStorage.length;", json!([]))
        .await;
    assert_eq!(kept, 0, "the token is forgotten");

    // The link of scripts/up signs in, and the token leaves the address.
    signed_in(&browser, &stack, "olga").await;
    let url = browser.url().await;
    assert!(!url.contains("token"), "{url}");

    // Readable on a phone.
    browser.resize(390, 844).await;
    browser.screenshot("phone").await;
    browser.quit().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_show_live_and_a_parked_stream_is_unparked_from_the_page() {
    let stack = Stack::start().await;
    let customer = Uuid::now_v7();
    let ana = stack.keys.customer(customer);
    let opened = stack
        .post(&ana, "/accounts", json!({"currency": "EUR"}))
        .await;
    let account = opened["account_id"]
        .as_str()
        .expect("account id")
        .to_owned();
    stack
        .post(
            &ana,
            &format!("/accounts/{account}/deposits"),
            json!({"amount": 10_000}),
        )
        .await;

    let browser = Browser::start(1280, 1000).await;
    signed_in(&browser, &stack, "olga").await;
    // Marks this page: a reload would lose it.
    browser
        .execute("window.sameDocument = true;", json!([]))
        .await;
    browser.select("#lookup-kind", "account").await;
    browser.type_into("#lookup-id", &account).await;
    browser.click("#lookup-form button[type=submit]").await;
    browser
        .wait_text("the balance", "#lookup-result [data-field=balance]", |t| {
            t.starts_with("100.00")
        })
        .await;
    let checkpoint = browser
        .wait_text(
            "the accounts projection's checkpoint",
            "tr[data-projection=accounts] [data-field=checkpoint]",
            |t| t != "0",
        )
        .await;

    // A deposit through the API: the lookup and the figures follow.
    stack
        .post(
            &ana,
            &format!("/accounts/{account}/deposits"),
            json!({"amount": 2_550}),
        )
        .await;
    browser
        .wait_text(
            "the new balance",
            "#lookup-result [data-field=balance]",
            |t| t.starts_with("125.50"),
        )
        .await;
    browser
        .wait_text(
            "the checkpoint moves",
            "tr[data-projection=accounts] [data-field=checkpoint]",
            |t| t != checkpoint,
        )
        .await;
    browser
        .wait_text("the ledger", "#ledger tbody", |t| {
            t.matches("deposit").count() == 2
        })
        .await;
    browser.scroll_to("#lookup").await;
    browser.screenshot("account-lookup").await;

    // A poison event parks the account's stream: listed with its error.
    let stream = format!("account-{account}");
    stack
        .h
        .store
        .append(
            &StreamId::new("account", &account),
            ExpectedVersion::Exact(3),
            &[NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "MoneyDeposited".to_owned(),
                schema_version: 1,
                payload: json!({ "amount": "lots" }),
            }],
            &Metadata::default(),
        )
        .await
        .expect("append the poison");
    let row = format!("tr[data-stream=\"{stream}\"]");
    browser.wait_shown("the parked stream", &row).await;
    let error = browser
        .text(&format!("{row} [data-field=error]"))
        .await
        .unwrap_or_default();
    assert!(!error.is_empty(), "the error that parked it is shown");
    assert_eq!(
        browser
            .text(&format!("{row} [data-field=version]"))
            .await
            .as_deref(),
        Some("4")
    );
    browser
        .wait_text(
            "the degraded status",
            "tr[data-projection=accounts] [data-field=status]",
            |t| t == "degraded",
        )
        .await;
    browser.screenshot("parked-stream").await;

    // Fixed (an upcaster, say), then unparked from the page: it goes.
    sqlx::query("UPDATE event_store.events SET payload = $2 WHERE stream_id = $1 AND version = 4")
        .bind(&stream)
        .bind(json!({ "amount": 50, "balance_after": 12_600 }))
        .execute(&stack.h.db.pool)
        .await
        .expect("fix the payload");
    browser
        .click(&format!("{row} button[data-action=unpark]"))
        .await;
    browser.wait_shown("the confirmation", "#confirm").await;
    browser.click("#confirm-ok").await;
    browser.wait_gone("the stream un-parked", &row).await;
    browser
        .wait_text(
            "the balance with the fixed event",
            "#lookup-result [data-field=balance]",
            |t| t.starts_with("126.00"),
        )
        .await;
    browser
        .wait_text(
            "accounts up to date",
            "tr[data-projection=accounts] [data-field=status]",
            |t| t == "up to date",
        )
        .await;
    assert_eq!(
        browser
            .execute("return window.sameDocument === true;", json!([]))
            .await,
        true,
        "no reload"
    );
    browser.screenshot("unparked").await;
    browser.quit().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_that_needs_attention_is_retried_from_the_page() {
    let stack = Stack::start().await;
    stack.carrier.controls().set_hang(true);
    let customer = Uuid::now_v7();
    stack.h.create_item("LAPTOP-15", 10).await;
    stack.h.create_item("MOUSE-1", 10).await;
    let account = stack.h.open_account_of(customer, "EUR").await;
    stack.h.deposit(account, 10_000_000).await;
    let order = stack.h.place_order(customer, account).await;

    let browser = Browser::start(1280, 1100).await;
    signed_in(&browser, &stack, "olga").await;
    let row = format!("#saga-table tr[data-order=\"{order}\"]");
    browser.wait_shown("the saga needing attention", &row).await;
    browser
        .wait_text(
            "the count",
            "#saga-counts [data-state=needs_attention] [data-field=count]",
            |t| t == "1",
        )
        .await;
    browser.click(&format!("{row} button")).await;
    browser.wait_shown("the saga's retry", "#saga-retry").await;
    browser
        .wait_text(
            "the ship step's attempts",
            "#saga-timeline li[data-step=ship] [data-field=attempts]",
            |t| t == "2 attempts",
        )
        .await;
    browser
        .wait_text(
            "the order next to it",
            "#saga-order [data-field=total]",
            |t| t.contains("EUR"),
        )
        .await;
    browser.scroll_to("#saga-detail").await;
    browser.screenshot("saga-needs-attention").await;

    // The carrier is back; retried from the page, the saga completes.
    stack.carrier.controls().set_hang(false);
    browser.click("#saga-retry").await;
    browser.wait_shown("the confirmation", "#confirm").await;
    browser.click("#confirm-ok").await;
    browser
        .wait_text(
            "the saga completes",
            "#saga-timeline h4 [data-field=status]",
            |t| t == "completed",
        )
        .await;
    browser
        .wait_text(
            "the attempts",
            "#saga-timeline li[data-step=ship] [data-field=attempts]",
            |t| t == "3 attempts",
        )
        .await;
    browser
        .wait_text(
            "the tracking number",
            "#saga-order [data-field=tracking]",
            |t| t != "-",
        )
        .await;
    browser
        .wait_text(
            "no saga needs attention",
            "#saga-counts [data-state=needs_attention] [data-field=count]",
            |t| t == "0",
        )
        .await;
    browser.scroll_to("#saga-detail").await;
    browser.screenshot("saga-retried").await;
    browser.scroll_to("#main").await;
    browser.screenshot("overview").await;
    browser.quit().await;
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_started_from_the_page_shows_progress_and_leaves_the_read_model_equal() {
    let stack = Stack::start().await;
    crate::seed_accounts(&stack.h.db.pool, 3_000, 4).await;
    stack
        .h
        .caught_up(&["accounts"], "the seeded accounts projected", DEADLINE)
        .await;
    let before = stack.h.snapshot().await;

    let browser = Browser::start(1280, 1000).await;
    signed_in(&browser, &stack, "olga").await;
    browser
        .click("tr[data-projection=accounts] button[data-action=rebuild]")
        .await;
    browser.wait_shown("the confirmation", "#confirm").await;
    browser.click("#confirm-ok").await;
    let progress = "tr[data-projection=accounts] [data-field=rebuild] progress";
    browser.wait_shown("the rebuild's progress", progress).await;
    browser
        .wait_text(
            "events replayed",
            "tr[data-projection=accounts] [data-field=rebuild]",
            |t| t.contains("/ 12,000 events") && !t.starts_with("0 /"),
        )
        .await;
    browser.screenshot("rebuild-running").await;
    browser
        .wait_text(
            "the rebuild swapped in",
            "tr[data-projection=accounts] [data-field=rebuild]",
            |t| t == "-",
        )
        .await;
    assert_eq!(stack.h.snapshot().await, before);
    browser.screenshot("rebuild-done").await;
    browser.quit().await;
    stack.stop().await;
}
