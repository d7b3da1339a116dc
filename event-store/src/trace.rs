//! W3C trace context (`traceparent`) carried in the events' metadata, so
//! that whatever an event causes downstream (its relay publish, the
//! projection batch that applies it, a saga's steps) joins the trace of the
//! request that appended it.
//!
//! Spans are `tracing` spans; the OpenTelemetry layer of `tracing-opentelemetry`
//! gives them their trace and span ids. A process exports traces only when
//! it installs that layer (and calls [`enable`]): until then
//! [`current_traceparent`] answers `None` at once and nothing is recorded
//! in the metadata, so tracing off costs nearly nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns trace propagation on: the process installed an OpenTelemetry
/// layer.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// Turns trace propagation off again: for a benchmark that measures
/// tracing on and off in one process (`command-api`'s `commands` bench),
/// switching its OpenTelemetry layer off between rounds.
pub fn disable() {
    ENABLED.store(false, Ordering::Release);
}

/// Whether trace propagation is on ([`enable`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The `traceparent` of the current span (`00-{trace id}-{span id}-{flags}`),
/// or `None` when tracing is off or the span is not recorded.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    traceparent_of(&tracing::Span::current())
}

/// The `traceparent` of `span`, or `None` when it has no valid context.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| format(&span_context))
}

/// Makes `span` a child of the span `traceparent` names (if it is valid).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    if let Some(parent) = parse(traceparent) {
        let context = opentelemetry::Context::new().with_remote_span_context(parent);
        // Only fails once the span has started a child or was entered.
        let _ = span.set_parent(context);
    }
}

/// Links `span` to the span `traceparent` names (if it is valid): a saga
/// step to the order's request, a batch to the other events it applies.
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if !enabled() {
        return;
    }
    if let Some(linked) = parse(traceparent) {
        span.add_link(linked);
    }
}

/// Records the OpenTelemetry ids of `span` in its `trace_id` and `span_id`
/// fields (declared `tracing::field::Empty`), so the log lines in it show
/// them. Call once its parent is set.
pub fn record_ids(span: &tracing::Span) {
    if !enabled() {
        return;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
        span.record("span_id", span_context.span_id().to_string());
    }
}

fn format(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// A `traceparent` of version `00`: `00-{32 hex}-{16 hex}-{2 hex}`, ids not
/// all zero.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, span_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace_id.len() != 32
        || span_id.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_back_as_written() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse(text).expect("valid");
        assert_eq!(format(&context), text);
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn nothing_is_propagated_while_tracing_is_off() {
        assert!(current_traceparent().is_none());
    }
}
