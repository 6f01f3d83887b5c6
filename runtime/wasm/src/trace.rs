//! Trace context across process boundaries (W3C Trace Context): read from the request that
//! calls an agent, written on what the host sends on the call's behalf (a guest's outgoing
//! requests, pushes).
//!
//! The spans themselves are `tracing` spans with the target [`TARGET`]; the OpenTelemetry
//! layer `gust serve --otlp-endpoint` installs exports them. Without that layer they are
//! disabled (a cached check per call site), and these functions do nothing.

use std::time::SystemTime;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The target of every span the host makes for tracing (the log output leaves them out).
pub const TARGET: &str = "gust::trace";

/// The W3C Trace Context headers.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` W3C Trace Context allows (32 members).
const MAX_TRACESTATE: usize = 512;
/// A `traceparent` of a later version may add fields; this bounds what is kept.
const MAX_TRACEPARENT: usize = 256;

/// Whether spans are exported (`--otlp-endpoint`): a check cached at its call site.
pub fn active() -> bool {
    tracing::span_enabled!(target: TARGET, tracing::Level::INFO)
}

/// The trace a request names, read with `header` — only while spans are exported (nothing
/// is kept or allocated otherwise), and only a `traceparent` of the W3C shape
/// (`version-trace_id-parent_id-flags`, lowercase hex) with a `tracestate` within the
/// standard's 512 characters: these are kept with a run.
pub fn from_headers<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<TraceContext> {
    if !active() {
        return None;
    }
    let traceparent = header(TRACEPARENT).filter(|t| well_formed(t))?;
    Some(TraceContext {
        traceparent: traceparent.to_owned(),
        tracestate: header(TRACESTATE)
            .filter(|state| state.len() <= MAX_TRACESTATE)
            .map(str::to_owned),
    })
}

pub use gust_model::TraceContext;

/// Reads a [`TraceContext`] as the propagator asks for it.
struct Carrier<'a>(&'a TraceContext);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.0.traceparent),
            TRACESTATE => self.0.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

/// `version-trace_id-parent_id-flags` in lowercase hex (a later version may append fields).
fn well_formed(traceparent: &str) -> bool {
    traceparent.len() <= MAX_TRACEPARENT
        && traceparent.get(..55).is_some_and(|head| {
            head.split('-').map(str::len).eq([2, 32, 16, 2])
                && head
                    .bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        && traceparent
            .get(55..)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
}

/// Makes `span` a child of the trace the caller sent. A malformed `traceparent` starts a
/// new trace instead (the propagator ignores it).
pub fn set_parent(span: &tracing::Span, incoming: &TraceContext) {
    if span.is_disabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Carrier(incoming))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The headers that carry `span`'s context to the next hop; empty when tracing is off.
pub fn headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
    if span.is_disabled() {
        return Vec::new();
    }
    struct Headers(Vec<(&'static str, String)>);
    impl Injector for Headers {
        fn set(&mut self, key: &str, value: String) {
            let name = match key {
                TRACEPARENT => TRACEPARENT,
                TRACESTATE => TRACESTATE,
                _ => return,
            };
            self.0.push((name, value));
        }
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut headers = Headers(Vec::new());
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut headers);
    });
    headers.0
}

/// The context of `span`, to keep with a queued run (its attempts and pushes are then its
/// children); `None` when tracing is off.
pub fn context(span: &tracing::Span) -> Option<TraceContext> {
    let headers = headers(span);
    let value = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
    };
    Some(TraceContext {
        traceparent: value(TRACEPARENT)?,
        tracestate: value(TRACESTATE),
    })
}

/// Records, under `parent`, a span that began at `started` and ends now: time spent before
/// any code of this host ran for it (a run waiting in the queue).
pub fn elapsed_span(parent: &tracing::Span, name: &'static str, started: SystemTime) {
    if parent.is_disabled() {
        return;
    }
    let context = parent.context();
    if !context.span().span_context().is_valid() {
        return;
    }
    let tracer = opentelemetry::global::tracer("gust");
    let mut span = tracer
        .span_builder(name)
        .with_start_time(started)
        .start_with_context(&tracer, &context);
    span.end();
}

#[cfg(test)]
mod tests {
    use super::well_formed;

    #[test]
    fn only_w3c_shaped_traceparents_are_kept() {
        assert!(well_formed(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        // A later version may append fields.
        assert!(well_formed(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-ff"
        ));
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            &format!(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-{}",
                "a".repeat(300)
            ),
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }
}
