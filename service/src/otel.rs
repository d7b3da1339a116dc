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
/// spans (a process filters it to INFO and above).
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span> + 'static,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("purser"))
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
