//! Calling an agent: the one path every call takes — a sync call at its endpoint, a queued
//! run on a worker, an agent embedded in a program. [`Calls::call`] resolves the deployment,
//! reads the input, admits, invokes, and counts, in that order:
//!
//! - resolving first answers 404 for an agent that is not deployed before a byte of the body
//!   is read (and waits for the start-up load instead of failing during it);
//! - the deployment found is the one the call runs on to its end, whatever is deployed
//!   meanwhile; the caller gets it back to say which deployment answered.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;
use tracing::Instrument as _;

use gust_model::{HostPattern, OutboundRequest};
pub use gust_wasm::CallKind;
use gust_wasm::{Call, CallInfo, CallSink, HostLog, Output, WasmEngine};

use crate::deploy::{Admission, Admitted, Deployment, Registry, Slot};
use crate::error::Error;
use crate::logs::AgentLogs;
use crate::metrics::Metrics;

/// What to call.
pub enum Target {
    /// The agent's live deployment (a sync call).
    Live(String),
    /// This deployment (a queued run's, resolved by the queue; an embedded agent's).
    Deployment(Arc<Deployment>),
}

/// How the call gets room to run.
pub enum Admit {
    /// Wait for room in the agent's and the server's gates, at most the admission wait
    /// (a sync call).
    Wait,
    /// A slot was taken before (a queue worker takes it before it starts a run); the rest
    /// of admission (memory, a place to start) is waited for here, without a deadline. It is
    /// all given back when the call ends.
    Slot(Slot),
    /// No admission: the embedding bounds its own concurrency.
    Skip,
}

/// The input of a call.
pub struct Input {
    /// As sent.
    pub bytes: Vec<u8>,
    /// Its content type.
    pub content_type: String,
}

/// Who is calling and where the guest's reports go.
pub struct CallRequest {
    /// The run id the guest sees.
    pub run_id: Arc<str>,
    /// A sync call (timeout `sync_timeout_s`) or a queued run (`async_timeout_s`).
    pub kind: CallKind,
    /// The attempt, from 1.
    pub attempt: u32,
    /// Where the guest's logs, output, progress and outgoing requests go; `None` for the
    /// host log.
    pub sink: Option<Arc<dyn CallSink>>,
    /// Also told of each log line, output line, progress report and emitted chunk as it
    /// comes (a sync call streamed to its caller); `None` for no one.
    pub watcher: Option<Arc<dyn CallSink>>,
    /// The trace the caller's request belongs to (W3C `traceparent`), if it sent one: the
    /// call's span continues it.
    pub trace: Option<gust_model::TraceContext>,
}

/// How a call went, and on which deployment (`None` when none was found).
pub struct Called {
    /// The deployment that answered.
    pub deployment: Option<Arc<Deployment>>,
    /// The answer, or why there is none.
    pub outcome: Result<Output, Error>,
}

/// See the module docs.
pub struct Calls {
    engine: Arc<WasmEngine>,
    registry: Arc<Registry>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    /// Guest lines of sync calls, per agent.
    logs: Arc<AgentLogs>,
}

/// Counts a call that ended with `outcome` (`ok` or an error's kind): in the agent's sync
/// calls and failures (the agents list) and in the calls metric.
fn count(
    metrics: &Metrics,
    deployment: &Deployment,
    sync: bool,
    outcome: &'static str,
    started: Instant,
) {
    if sync {
        deployment.gate.calls.fetch_add(1, Ordering::Relaxed);
        if outcome != "ok" {
            deployment.gate.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
    metrics.called(
        deployment.name(),
        deployment.version(),
        !sync,
        outcome,
        started.elapsed(),
    );
}

/// What the calls metric calls a call dropped before it ended: its caller went away (the
/// server drops a sync call with its connection, and the guest's instance with it), a
/// queued attempt was cancelled or stopped, or the host shut down under it.
const ABANDONED: &str = "abandoned";

/// Counts a call that is dropped before it ends, as [`ABANDONED`]: without it such a call
/// was in no count, and a host whose callers all gave up showed no calls at all.
struct Unanswered<'a> {
    span: &'a tracing::Span,
    metrics: &'a Metrics,
    deployment: &'a Deployment,
    sync: bool,
    started: Instant,
    /// Cleared when the call ends and is counted as it ended.
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.span.record("otel.status_code", "ERROR");
            self.span.record("error.kind", ABANDONED);
            count(
                self.metrics,
                self.deployment,
                self.sync,
                ABANDONED,
                self.started,
            );
        }
    }
}

impl Calls {
    pub(crate) fn new(
        engine: Arc<WasmEngine>,
        registry: Arc<Registry>,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            engine,
            registry,
            admission,
            metrics,
            logs: Arc::default(),
        }
    }

    /// The guest lines of sync calls, per agent.
    pub fn logs(&self) -> &Arc<AgentLogs> {
        &self.logs
    }

    /// The host's metrics (the run queue records into them too).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Calls `target` with the `input` (read only once the deployment is found).
    pub async fn call(
        &self,
        target: Target,
        input: impl Future<Output = Result<Input, Error>>,
        request: CallRequest,
        admit: Admit,
    ) -> Called {
        let deployment = match target {
            Target::Deployment(deployment) => deployment,
            Target::Live(agent) => {
                // A call that arrives while the host is still loading deployments at start
                // waits for the load instead of being told the agent does not exist.
                self.registry.wait_ready().await;
                match self.registry.get(&agent) {
                    Some(deployment) => deployment,
                    None => {
                        return Called {
                            deployment: None,
                            outcome: Err(crate::deploy::not_deployed(&agent)),
                        };
                    }
                }
            }
        };
        let sync = request.kind == CallKind::Sync;
        let started = Instant::now();
        let span = tracing::info_span!(
            target: gust_wasm::trace::TARGET,
            "call",
            agent = %deployment.name(),
            // i64: the OpenTelemetry layer writes unsigned numbers as text.
            version = i64::from(deployment.version()),
            deployment = i64::from(deployment.number),
            run_id = %request.run_id,
            kind = if sync { "sync" } else { "async" },
            attempt = i64::from(request.attempt),
            otel.status_code = tracing::field::Empty,
            error.kind = tracing::field::Empty,
        );
        if let Some(incoming) = &request.trace {
            gust_wasm::trace::set_parent(&span, incoming);
        }
        let mut unanswered = Unanswered {
            span: &span,
            metrics: &self.metrics,
            deployment: &deployment,
            sync,
            started,
            armed: true,
        };
        // Boxed: the call's future takes kilobytes, copied again each time it is moved into
        // the future around it.
        let outcome = Box::pin(self.run(&deployment, input, request, admit))
            .instrument(span.clone())
            .await;
        unanswered.armed = false;
        drop(unanswered);
        if let Err(e) = &outcome {
            span.record("otel.status_code", "ERROR");
            span.record("error.kind", e.kind());
        }
        let kind = match &outcome {
            Ok(_) => "ok",
            Err(e) => {
                if let Error::Overloaded {
                    bound: Some(bound), ..
                } = e
                {
                    self.metrics.refused(deployment.name(), bound);
                }
                e.kind()
            }
        };
        count(&self.metrics, &deployment, sync, kind, started);
        Called {
            deployment: Some(deployment),
            outcome,
        }
    }

    async fn run(
        &self,
        deployment: &Deployment,
        input: impl Future<Output = Result<Input, Error>>,
        request: CallRequest,
        admit: Admit,
    ) -> Result<Output, Error> {
        let input = input.await?;
        let timeout = match request.kind {
            CallKind::Sync => Some(deployment.sync_timeout),
            CallKind::Async => deployment.async_timeout,
        };
        if request.kind == CallKind::Sync {
            self.engine.stats().called();
        }
        let admission = tracing::info_span!(target: gust_wasm::trace::TARGET, "admission");
        let mut admitted = async {
            Ok::<_, Error>(match admit {
                Admit::Wait => Some(self.admission.admit_sync(&deployment.gate).await?),
                Admit::Slot(slot) => Some(self.admission.start(slot, None).await?),
                Admit::Skip => None,
            })
        }
        .instrument(admission)
        .await?;
        let starting = admitted.as_mut().and_then(Admitted::starting);
        let (metrics, admitted_at) = (Arc::clone(&self.metrics), Instant::now());
        let instantiated: Box<dyn FnOnce() + Send> = Box::new(move || {
            if let Some(starting) = starting {
                starting();
            }
            metrics.instantiated(admitted_at.elapsed());
        });
        // A sync call's lines go to the host log and the agent's ring; a queued run keeps
        // its own on the run.
        let ring = request.sink.is_none().then(|| Arc::clone(&self.logs));
        let watcher = request.watcher.clone();
        let sink = request.sink.unwrap_or_else(|| {
            HostLog::new(CallInfo {
                agent: Arc::clone(deployment.name()),
                version: deployment.version(),
                run_id: Arc::clone(&request.run_id),
            })
        });
        // Outgoing requests are counted on their way to the call's own sink.
        let sink = Arc::new(Observed {
            inner: sink,
            agent: Arc::clone(deployment.name()),
            version: deployment.version(),
            run_id: Arc::clone(&request.run_id),
            allowed: Arc::clone(&deployment.allowed),
            metrics: Arc::clone(&self.metrics),
            ring,
            watcher,
        });
        let call = Call {
            run_id: request.run_id,
            input: input.bytes,
            content_type: input.content_type,
            kind: request.kind,
            attempt: request.attempt,
            timeout,
            sink,
            instantiated: Some(instantiated),
        };
        let output = gust_wasm::invoke(&self.engine, &deployment.agent, call).await;
        drop(admitted);
        Ok(output?)
    }
}

/// A call's sink around the one the call asked for: it counts each outgoing request by the
/// allowed-host pattern that let it through (`denied` when none did: a guest can vary
/// destinations without bound, not the patterns its deployment allows), and keeps a sync
/// call's lines in the agent's ring.
struct Observed {
    inner: Arc<dyn CallSink>,
    agent: Arc<str>,
    version: u32,
    run_id: Arc<str>,
    allowed: Arc<[(HostPattern, Arc<str>)]>,
    metrics: Arc<Metrics>,
    ring: Option<Arc<AgentLogs>>,
    watcher: Option<Arc<dyn CallSink>>,
}

impl CallSink for Observed {
    fn log(&self, level: gust_wasm::Level, message: &str) {
        if let Some(watcher) = &self.watcher {
            watcher.log(level, message);
        }
        if let Some(ring) = &self.ring {
            let level = gust_wasm::host::level_name(level);
            ring.push(
                &self.agent,
                level,
                "log",
                self.version,
                &self.run_id,
                message,
            );
        }
        self.inner.log(level, message);
    }

    fn output(&self, stream: gust_wasm::Stream, line: &str) {
        if let Some(watcher) = &self.watcher {
            watcher.output(stream, line);
        }
        if let Some(ring) = &self.ring {
            let source = stream.as_str();
            ring.push(
                &self.agent,
                "info",
                source,
                self.version,
                &self.run_id,
                line,
            );
        }
        self.inner.output(stream, line);
    }

    fn progress(&self, fraction: f32, message: &str) {
        if let Some(watcher) = &self.watcher {
            watcher.progress(fraction, message);
        }
        self.inner.progress(fraction, message);
    }

    fn emit(&self, chunk: &[u8]) {
        if let Some(watcher) = &self.watcher {
            watcher.emit(chunk);
        }
        self.inner.emit(chunk);
    }

    fn outbound(&self, request: OutboundRequest) {
        let pattern = self
            .allowed
            .iter()
            .find(|(p, _)| p.matches_origin(&request.host))
            .map(|(_, shown)| Arc::clone(shown));
        let (pattern, outcome) = match (pattern, request.status, &request.error) {
            (None, _, _) => (Arc::from("denied"), "denied"),
            (Some(p), Some(status), _) if status < 400 => (p, "ok"),
            (Some(p), Some(_), _) => (p, "http_error"),
            (Some(p), None, _) => (p, "error"),
        };
        self.metrics.outbound(&self.agent, pattern, outcome);
        self.inner.outbound(request);
    }
}
