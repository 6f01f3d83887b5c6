//! Where the process reports what it does: log lines on stderr (text or JSON), and with
//! `gust serve --otlp-endpoint` traces exported over OTLP/HTTP (protobuf) to a collector.
//!
//! Log lines and spans are filtered apart: the log shows events only (a call's lines carry
//! `agent`, `version` and `run_id` as fields, not span prefixes), and spans — the host makes
//! them with the target `gust::trace` — go only to the OpenTelemetry layer. Without an
//! endpoint no layer takes spans, so they are disabled where they are made.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::cli::{Cli, Command};

/// How long the last spans may take to leave at exit.
const FLUSH: Duration = Duration::from_secs(5);

/// Flushes the traces still buffered when dropped; keep it until the process ends (and
/// drop it while the async runtime still runs: the exporter sends through it).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(FLUSH)
        {
            crate::output::note!("gust: the last traces could not be exported: {e}");
        }
    }
}

/// Starts logging to stderr — the server's filter for `serve`, warnings only for client
/// commands (whose output is for people and scripts) — and, for `serve --otlp-endpoint`,
/// the trace export. Call it inside the async runtime.
///
/// # Errors
/// When the trace exporter cannot be set up (a bad endpoint).
pub fn init(cli: &Cli) -> anyhow::Result<Telemetry> {
    let (filter, json, endpoint) = match &cli.command {
        Command::Serve(args) => (
            args.log.clone(),
            args.log_format == crate::serve::LogFormat::Json,
            args.otlp_endpoint.clone(),
        ),
        _ => ("warn".to_owned(), false, None),
    };
    // PostgreSQL's notices (such as "relation … already exists, skipping" from the
    // migrations' `IF NOT EXISTS`) reach tokio-postgres's log at `info`: they are for a
    // database's administrator, not the host's log, unless asked for by name.
    let filter = if filter.contains("tokio_postgres") {
        filter
    } else {
        format!("{filter},tokio_postgres=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Events only: spans would turn into prefixes on every line. One filter, decided per call
    // site and carrying the level hint, so that a disabled `debug!` (wasmtime's WASI
    // bindings make trace events on every call) costs a cached check, as without this layer.
    let hint = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let events_only = filter_fn(|meta| meta.is_event()).with_max_level_hint(hint);
    let logged = filter.and(events_only);
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = if json {
        // One object per line, the event's fields (agent, version, run_id) flattened beside
        // `message`, for log pipelines.
        // No span fields: the log layer sees no spans, so there is nothing to look up.
        log.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_filter(logged)
            .boxed()
    } else {
        log.with_filter(logged).boxed()
    };
    let Some(endpoint) = endpoint else {
        // No layer takes spans: the host's spans are disabled where they are made.
        tracing_subscriber::registry().with(log).init();
        return Ok(Telemetry { provider: None });
    };
    let provider = provider(&endpoint)?;
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("gust"))
        .with_filter(Targets::new().with_target(gust_server::trace::TARGET, Level::INFO));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing_subscriber::registry().with(log).with(traces).init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The tracer provider exporting to `endpoint` (a collector's OTLP/HTTP base URL;
/// `/v1/traces` is added unless it is there).
fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
    // Checked to be an http(s) URL when the flag was read.
    let url = url::Url::parse(endpoint)?;
    let traces = if url.path().ends_with("/v1/traces") {
        url.to_string()
    } else {
        format!("{}/v1/traces", url.as_str().trim_end_matches('/'))
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_timeout(Duration::from_secs(10))
        .with_http_client(Client::new()?)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name("gust")
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The exporter's HTTP client: the host's reqwest, on the host's runtime. The exporter
/// sends from a thread of its own, outside the runtime, so each request is spawned onto it.
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl Client {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|_| anyhow::anyhow!("tracing starts inside the async runtime"))?,
        })
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let sent = self.runtime.spawn(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = http.execute(request).await?;
            let mut answer = http::Response::builder().status(response.status());
            for (name, value) in response.headers() {
                answer = answer.header(name, value);
            }
            let body = response.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
        });
        sent.await?
    }
}
