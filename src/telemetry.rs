//! Logging and traces: `tracing` events to stderr, as text or JSON lines,
//! filtered by `RUST_LOG` (default `info,sqlx=warn`: sqlx reports every
//! server notice and slow statement at info); and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the spans exported as
//! OpenTelemetry traces over OTLP (http/protobuf, batched), their
//! `traceparent` carried in the events' metadata and Kafka headers
//! (`event_store::trace`). Without it no OpenTelemetry layer is installed
//! and nothing is propagated. Log lines in a request's, a relay publish's,
//! a projection batch's or a saga step's span carry its `trace_id` and
//! `span_id` when traces are on.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// The variable that turns trace export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// Shape of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What `main` keeps until the end: the trace pipeline to flush.
#[must_use]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: exporting the last traces failed: {error}");
            }
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`, in
/// the runtime (the exporter's HTTP client runs on it).
pub fn init(format: LogFormat) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let provider = match std::env::var(OTLP_ENDPOINT_ENV) {
        Ok(endpoint) if !endpoint.trim().is_empty() => match provider() {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("warning: traces not exported ({OTLP_ENDPOINT_ENV}={endpoint}): {error}");
                None
            }
        },
        _ => None,
    };
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let otel = provider.as_ref().map(|provider| {
        event_store::trace::enable();
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("purser"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry()
        .with(otel)
        .with(fmt.with_filter(filter))
        .init();
    Telemetry { provider }
}

/// The tracer provider exporting over OTLP http/protobuf to the endpoint of
/// the `OTEL_EXPORTER_OTLP_*` variables, in batches, as service `purser`
/// (`OTEL_SERVICE_NAME` overrides it).
fn provider() -> Result<SdkTracerProvider, Box<dyn std::error::Error>> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(TokioHttpClient::new()?)
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let resource = Resource::builder().with_service_name("purser").build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// The exporter's HTTP client: the process's reqwest, run on the process's
/// runtime (the batch exporter calls it from a thread of its own).
#[derive(Debug)]
struct TokioHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl TokioHttpClient {
    fn new() -> Result<TokioHttpClient, Box<dyn std::error::Error>> {
        Ok(TokioHttpClient {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            runtime: tokio::runtime::Handle::try_current()?,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for TokioHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (parts, body) = request.into_parts();
        let mut outgoing = self
            .client
            .request(parts.method, parts.uri.to_string())
            .body(body);
        for (name, value) in &parts.headers {
            outgoing = outgoing.header(name, value);
        }
        let answer = self
            .runtime
            .spawn(async move {
                let response = outgoing.send().await?;
                let status = response.status();
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, body))
            })
            .await??;
        let (status, body) = answer;
        Ok(Response::builder().status(status.as_u16()).body(body)?)
    }
}
