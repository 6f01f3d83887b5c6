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
const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

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

/// Makes `span` a child of the trace the caller sent. A malformed `traceparent` starts a
/// new trace instead (the propagator ignores it).
pub fn set_parent(span: &tracing::Span, incoming: &TraceContext) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Carrier(incoming))
    });
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The headers that carry `span`'s context to the next hop; empty when tracing is off.
pub fn headers(span: &tracing::Span) -> Vec<(&'static str, String)> {
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

/// Records, under `parent`, a span that began at `started` and ends now: time spent before
/// any code of this host ran for it (a run waiting in the queue).
pub fn elapsed_span(parent: &tracing::Span, name: &'static str, started: SystemTime) {
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
