//! Correlation ids flow from the HTTP request (`x-request-id`) through the
//! event metadata and Kafka into the projection's log spans, on the
//! set-based path too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka::{Relay, RelayOutcome};
use projections::{Accounts, Outcome, Worker, WorkerConfig};
use serde_json::{json, Value};
use tokio::time::Instant;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;
use uuid::Uuid;

use test_support::http::Client;
use test_support::pipeline::Pipeline;
use test_support::Harness;

const DEADLINE: Duration = Duration::from_secs(60);

/// A span's fields by name, as recorded (at creation or later).
type SpanFields = BTreeMap<String, String>;

/// Every span opened while it is the thread's subscriber: its name and
/// fields.
#[derive(Clone, Default)]
struct Spans {
    spans: Arc<Mutex<Vec<(&'static str, SpanFields)>>>,
    /// Span id -> index in `spans` of the span that has it now (ids are reused).
    open: Arc<Mutex<HashMap<u64, usize>>>,
}

struct Fields<'a>(&'a mut SpanFields);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: Subscriber> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().expect("spans");
        spans.push((attrs.metadata().name(), fields));
        let index = spans.len() - 1;
        self.open.lock().expect("open").insert(id.into_u64(), index);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let Some(&index) = self.open.lock().expect("open").get(&id.into_u64()) else {
            return;
        };
        values.record(&mut Fields(&mut self.spans.lock().expect("spans")[index].1));
    }
}

impl Spans {
    /// The fields of every span called `name`.
    fn named(&self, name: &str) -> Vec<SpanFields> {
        self.spans
            .lock()
            .expect("spans")
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

async fn post(http: &reqwest::Client, url: String, request_id: &str, body: Value) -> Value {
    let response = http
        .post(url)
        .header("x-request-id", request_id)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("json body")
}

// A current-thread runtime: the capturing subscriber is the thread's
// default, and every task of the test (the command API's too) runs here.
#[tokio::test]
async fn correlation_ids_of_http_requests_reach_the_projection_batch_span() {
    let spans = Spans::default();
    let _subscriber =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(spans.clone()));

    let h = Harness::new().await;
    let kafka = test_support::kafka::topics("projections-correlation").await;

    // Two commands over HTTP, each with its own request id.
    let mut pipeline = Pipeline::new();
    let Client { http, base } = pipeline.command_api(&h.db.pool).await;
    let (open_id, deposit_id) = (
        format!("open-{}", Uuid::new_v4()),
        format!("deposit-{}", Uuid::new_v4()),
    );
    let opened = post(
        &http,
        format!("{base}/accounts"),
        &open_id,
        json!({"customer_id": Uuid::now_v7(), "currency": "EUR"}),
    )
    .await;
    let account = opened["account_id"]
        .as_str()
        .expect("account_id")
        .to_owned();
    post(
        &http,
        format!("{base}/accounts/{account}/deposits"),
        &deposit_id,
        json!({"amount": 500}),
    )
    .await;
    pipeline.stop().await;

    // Relay them to Kafka (the gap-safe read may hold them back a moment).
    let mut relay = Relay::new(h.store.clone(), kafka.clone()).expect("relay");
    let deadline = Instant::now() + DEADLINE;
    let mut published = 0;
    while published < 2 {
        assert!(Instant::now() < deadline, "relay did not publish in time");
        if let RelayOutcome::Published { events, .. } =
            relay.process_batch().await.expect("relay step")
        {
            published += events;
        }
    }

    // The accounts worker applies them on the set-based path.
    let mut worker = Worker::new(
        Arc::new(Accounts),
        h.store.clone(),
        &kafka,
        WorkerConfig {
            batch_size: 100,
            poll_wait: Duration::from_millis(200),
            ..WorkerConfig::default()
        },
    )
    .expect("worker");
    let stream_id = format!("account-{account}");
    let mut applied = 0;
    while projections::applied_version(h.store.pool(), Accounts::NAME, &stream_id)
        .await
        .expect("applied version")
        < 2
    {
        assert!(Instant::now() < deadline, "worker did not apply in time");
        if let Outcome::Applied(report) = worker.process_batch().await.expect("worker step") {
            assert!(!report.one_by_one, "the set-based path applied the batch");
            applied += report.applied;
        }
    }
    assert_eq!(applied, 2);

    let batches: Vec<_> = spans
        .named("apply_batch")
        .into_iter()
        .filter(|fields| fields.get("events").is_some_and(|n| n != "0"))
        .collect();
    assert!(!batches.is_empty(), "no apply_batch span with events");
    let seen: BTreeSet<String> = batches
        .iter()
        .flat_map(|fields| {
            fields
                .get("correlation_ids")
                .expect("every batch span records its correlation ids")
                .split(',')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        seen,
        BTreeSet::from([open_id, deposit_id]),
        "the batch spans name exactly the requests' ids"
    );
    for fields in &batches {
        assert_eq!(
            fields.get("projection").map(String::as_str),
            Some("accounts")
        );
    }
    drop(worker);
    h.drop().await;
}
