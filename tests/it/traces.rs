//! Traces end to end, in this process, through an in-memory span exporter:
//! the Command API, the relay to a real Kafka, the projection workers and
//! the saga, each span joined to the request's trace by the `traceparent`
//! in the event's metadata and the Kafka headers; and a Query API read,
//! joined to its caller's trace by the request's `traceparent` header.

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use reqwest::StatusCode;
use saga::SimulatedCarrier;
use serde_json::json;
use test_support::http::order_body_for;
use test_support::pipeline::Pipeline;
use test_support::world::fast_config;
use test_support::{eventually, TestDatabase};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

fn has(span: &SpanData, key: &str, value: &str) -> bool {
    attribute(span, key).is_some_and(|v| v.as_str() == value)
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn id(span: &SpanData) -> (TraceId, SpanId) {
    (span.span_context.trace_id(), span.span_context.span_id())
}

/// The one span named `name` with `key` = `value` whose parent is
/// `parent` (trace and span).
fn child_of<'a>(
    spans: &'a [SpanData],
    name: &str,
    (key, value): (&str, &str),
    parent: (TraceId, SpanId),
) -> &'a SpanData {
    let found: Vec<&SpanData> = named(spans, name)
        .into_iter()
        .filter(|s| has(s, key, value))
        .filter(|s| s.span_context.trace_id() == parent.0 && s.parent_span_id == parent.1)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span with {key}={value} under {parent:?}; among {:#?}",
        named(spans, name)
    );
    found[0]
}

/// Spans of this thread exported to memory, and propagation on. The test's
/// runtime must be a current-thread one: then every task of it traces.
fn traced() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    // The layer and the filter `purser` installs (`service::otel`).
    let subscriber = tracing_subscriber::registry()
        .with(service::otel::layer(&provider).with_filter(service::otel::exported()));
    let guard = tracing::subscriber::set_default(subscriber);
    event_store::trace::enable();
    (exporter, provider, guard)
}

/// A deposit and an order, each followed through its trace: the request,
/// the decide-and-append (`command`, with no span of the store's under it),
/// the relay's publish of each event and
/// the projection batch that applied it are one trace, each span the child
/// of the one before across the Kafka hop; every step of the order's saga
/// is a trace of its own that links to the order's append.
#[tokio::test(flavor = "current_thread")]
async fn a_deposit_and_an_order_each_make_one_trace_across_the_kafka_hop() {
    let (exporter, provider, _traced) = traced();

    let db = TestDatabase::create().await;
    let store = event_store::EventStore::new(db.pool.clone());
    let kafka = test_support::kafka::isolated("traces");
    kafka::ensure_topics(&kafka, kafka::STREAM_TYPES)
        .await
        .expect("topics");
    let mut pipeline = Pipeline::new();
    let api = pipeline.command_api(&db.pool).await;
    pipeline.relay(&store, &kafka);
    pipeline.workers(&store, &kafka, None);
    pipeline.saga(&store, fast_config(), SimulatedCarrier::default());
    let pool = &db.pool;

    // An account, projected before the deposit: the deposit's batch is its own.
    let customer = uuid::Uuid::now_v7();
    let (status, body) = api
        .post(
            "/accounts",
            &json!({"customer_id": customer, "currency": "EUR"}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let account: uuid::Uuid = body["account_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let balance = |expected: i64| async move {
        eventually(
            "the accounts read model",
            Duration::from_secs(60),
            Duration::from_millis(20),
            || async move {
                let balance: Option<i64> = sqlx::query_scalar(
                    "SELECT balance FROM read_models.accounts WHERE account_id = $1",
                )
                .bind(account)
                .fetch_optional(pool)
                .await
                .expect("read model");
                if balance == Some(expected) {
                    Ok(())
                } else {
                    Err(balance)
                }
            },
        )
        .await;
    };
    balance(0).await;
    let (status, body) = api
        .post(
            &format!("/accounts/{account}/deposits"),
            &json!({"amount": 5_000}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    balance(5_000).await;

    // An order that ships.
    let (status, body) = api
        .post(
            "/inventory",
            &json!({"sku": "T-1", "name": "Traced", "quantity": 5, "unit_price": 1_000, "currency": "EUR"}),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = api
        .post(
            "/orders",
            &order_body_for(
                customer,
                account,
                json!([{"sku": "T-1", "quantity": 2, "unit_price": 1_000}]),
                "ES",
            ),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let order: uuid::Uuid = body["order_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    eventually(
        "the order to ship and its status to be projected",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || async move {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM read_models.orders WHERE order_id = $1")
                    .bind(order)
                    .fetch_optional(pool)
                    .await
                    .expect("read model");
            if status.as_deref() == Some("shipped") {
                Ok(())
            } else {
                Err(status)
            }
        },
    )
    .await;
    pipeline.stop().await;
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().expect("spans");

    // The deposit: request -> command -> relay publish -> projection batch.
    let stream = format!("account-{account}");
    let deposit = named(&spans, "command")
        .into_iter()
        .filter(|s| has(s, "stream", &stream))
        .max_by_key(|s| s.start_time)
        .expect("the deposit's command span");
    let request = spans
        .iter()
        .find(|s| s.span_context.span_id() == deposit.parent_span_id)
        .expect("the deposit's request span");
    assert_eq!(request.name, "request");
    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "the request is the root"
    );
    // What is exported of them (`service::otel`): the request's status in
    // its fields, not as the event of its log line; no source location,
    // thread or busy time; and the store's spans inside the command (its
    // append, the repository's execute) are DEBUG, not exported: only the
    // relay's publishes are the command's children.
    assert!(has(request, "status", "200"), "{request:#?}");
    for span in [request, deposit] {
        assert!(span.events.is_empty(), "{span:#?}");
        for key in ["code.file.path", "thread.id", "busy_ns"] {
            assert!(attribute(span, key).is_none(), "{key} in {span:#?}");
        }
    }
    let children: Vec<&str> = spans
        .iter()
        .filter(|s| s.parent_span_id == deposit.span_context.span_id())
        .map(|s| s.name.as_ref())
        .collect();
    assert!(
        !children.is_empty() && children.iter().all(|name| *name == "relay publish"),
        "the command's children: {children:?}"
    );
    let published = child_of(&spans, "relay publish", ("stream_id", &stream), id(deposit));
    child_of(
        &spans,
        "projection batch",
        ("projection", "accounts"),
        id(published),
    );

    // The order: its append is published and projected in its trace...
    let stream = format!("order-{order}");
    let placed = named(&spans, "command")
        .into_iter()
        .find(|s| has(s, "stream", &stream))
        .expect("the order's command span");
    let published = named(&spans, "relay publish")
        .into_iter()
        .filter(|s| has(s, "stream_id", &stream))
        .find(|s| s.parent_span_id == placed.span_context.span_id())
        .expect("the OrderPlaced publish, a child of the order's append");
    child_of(
        &spans,
        "projection batch",
        ("projection", "orders"),
        id(published),
    );
    // ...and each saga step is a trace of its own, linked to it.
    let order_id = order.to_string();
    let steps: Vec<&SpanData> = named(&spans, "saga step")
        .into_iter()
        .filter(|s| has(s, "order_id", &order_id))
        .collect();
    let names: Vec<String> = steps
        .iter()
        .filter_map(|s| attribute(s, "step").map(|v| v.as_str().into_owned()))
        .collect();
    for step in ["reserve_stock", "charge_payment", "ship", "mark_shipped"] {
        assert!(names.iter().any(|n| n == step), "{step} not in {names:?}");
    }
    for step in &steps {
        assert_eq!(step.parent_span_id, SpanId::INVALID, "{step:#?}");
        assert_ne!(step.span_context.trace_id(), placed.span_context.trace_id());
        assert!(
            step.links
                .links
                .iter()
                .any(
                    |link| link.span_context.trace_id() == placed.span_context.trace_id()
                        && link.span_context.span_id() == placed.span_context.span_id()
                ),
            "{step:#?} does not link to the order's append"
        );
    }
    // A step's command joins the step's trace: the OrderShipped its
    // mark_shipped appended is published under it.
    let marked = steps
        .iter()
        .find(|s| attribute(s, "step").is_some_and(|v| v.as_str() == "mark_shipped"))
        .expect("mark_shipped");
    assert!(
        named(&spans, "relay publish")
            .iter()
            .any(|s| has(s, "stream_id", &stream)
                && s.span_context.trace_id() == marked.span_context.trace_id()),
        "OrderShipped is not published in the mark_shipped step's trace"
    );
    db.drop().await;
}

/// A read joins its caller's trace: the Query API's request span is a
/// child of the span that the request's W3C `traceparent` names, as the
/// Command API's is.
#[tokio::test(flavor = "current_thread")]
async fn a_read_joins_the_trace_of_its_callers_traceparent() {
    let (exporter, provider, _traced) = traced();
    let db = TestDatabase::create().await;
    let mut pipeline = Pipeline::new();
    let api = pipeline.query_api(&db.pool).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";

    let response = api
        .http
        .get(api.url("/inventory"))
        .header("traceparent", format!("00-{caller_trace}-{caller_span}-01"))
        .send()
        .await
        .expect("read");
    assert_eq!(response.status(), StatusCode::OK);
    pipeline.stop().await;
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().expect("spans");

    let read = named(&spans, "request")
        .into_iter()
        .find(|s| has(s, "path", "/inventory"))
        .unwrap_or_else(|| panic!("no request span for the read among {spans:#?}"));
    assert_eq!(
        id(read).0,
        TraceId::from_hex(caller_trace).expect("trace id"),
        "{read:#?}"
    );
    assert_eq!(
        read.parent_span_id,
        SpanId::from_hex(caller_span).expect("span id"),
        "{read:#?}"
    );
    db.drop().await;
}
