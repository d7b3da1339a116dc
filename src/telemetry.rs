//! Logging and traces: `tracing` events to stderr, as text or JSON lines,
//! filtered by `RUST_LOG` (default `info,sqlx=warn`: sqlx reports every
//! server notice and slow statement at info); and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the spans exported as
//! OpenTelemetry traces over OTLP (`service::otel`), their `traceparent`
//! carried in the events' metadata and Kafka headers
//! (`event_store::trace`). Without it no OpenTelemetry layer is installed
//! and nothing is propagated. Log lines in a request's, a relay publish's,
//! a projection batch's or a saga step's span carry its `trace_id` and
//! `span_id` when traces are on.
//!
//! The subscriber also times the pool's acquires (`crate::metrics`): sqlx
//! reports each one as an event, which becomes a histogram sample.

use opentelemetry_sdk::trace::SdkTracerProvider;
use service::otel::OTLP_ENDPOINT_ENV;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

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
        Ok(endpoint) if !endpoint.trim().is_empty() => match service::otel::exporting_provider() {
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
        service::otel::layer(provider).with_filter(service::otel::exported())
    });
    tracing_subscriber::registry()
        .with(otel)
        .with(crate::metrics::pool_acquire_layer())
        .with(fmt.with_filter(filter))
        .init();
    Telemetry { provider }
}
