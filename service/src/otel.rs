//! The OpenTelemetry trace pipeline a process installs when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`purser`'s telemetry; the Command
//! API's benchmark installs the same one to measure what it costs): spans
//! exported over OTLP http/protobuf, in batches, as service `purser`.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, FilterFn, LevelFilter};
use tracing_subscriber::registry::LookupSpan;

pub use opentelemetry_sdk;

/// The variable that turns trace export on.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The tracer provider exporting over OTLP http/protobuf to the endpoint of
/// the `OTEL_EXPORTER_OTLP_*` variables, in batches, as service `purser`
/// (`OTEL_SERVICE_NAME` overrides it). Call it in the runtime: the
/// exporter's HTTP client runs on it.
pub fn exporting_provider() -> Result<SdkTracerProvider, Box<dyn std::error::Error + Send + Sync>> {
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

/// The `tracing` layer that turns spans into `provider`'s OpenTelemetry
/// spans (a process filters it with [`exported`]).
///
/// A span carries its name, its target, its fields, its times and its
/// parent or links: what a reader of a trace needs. Left out, as each costs
/// every span its work and its bytes on the wire: the source file, module
/// and line (`with_location`; the target names the module), the thread
/// (`with_threads`; tasks move between a runtime's threads), the busy and
/// idle times (`with_tracked_inactivity`; an instant taken at every poll of
/// every span), and attaching the span's OpenTelemetry context at each
/// entry (`with_context_activation`): nothing here reads
/// `opentelemetry::Context::current()`; a span's parent is found through
/// `tracing`'s own current span, and `event_store::trace` reads a span's
/// context from the span.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + 'static,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("purser"))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
}

/// What [`layer`] exports: spans at INFO and above (a request, a command's
/// decide-and-append, a relay publish, a projection batch, a saga step;
/// the repository's `execute_from` and the store's `append` that every
/// command goes through are DEBUG, details of its span), and
/// events at WARN and above, which become events of the span they happen
/// in (an ERROR marks its span's status as an error). INFO events are log
/// lines only: they carry their span's `trace_id` and `span_id`, and what
/// they say of a span (a request's status and latency) is in its fields.
pub fn exported() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool> {
    filter_fn(|metadata| {
        let lowest = if metadata.is_span() {
            Level::INFO
        } else {
            Level::WARN
        };
        *metadata.level() <= lowest
    })
    .with_max_level_hint(LevelFilter::INFO)
}

/// The exporter's HTTP client: the process's reqwest, run on the process's
/// runtime (the batch exporter calls it from a thread of its own).
#[derive(Debug)]
struct TokioHttpClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl TokioHttpClient {
    fn new() -> Result<TokioHttpClient, Box<dyn std::error::Error + Send + Sync>> {
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
