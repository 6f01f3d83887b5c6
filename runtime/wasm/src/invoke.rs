//! One call of `run`: a fresh `Store`, limits, the deadline, and the mapping of what the
//! guest did to an outcome.
//!
//! Nothing of one call survives into another: the `Store` (and with it the instance, its
//! memory and every host resource) is dropped when the call ends, however it ends. If the
//! caller goes away, the future holding the `Store` is dropped, which ends the call too.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use gust_model::{AgentConfig, clock};
use wasmtime::PoolConcurrencyLimitError;

use crate::bindings::{AgentPre, CallKind, Request, RunError};
use crate::check::Linked;
use crate::engine::WasmEngine;
use crate::host::{CallInfo, CallLimits, CallSink, CallState, HostLog, OutboundPolicy, new_store};
use crate::standby::{Standby, StoreMaker, Warm};

/// A component ready to be called: compiled, checked against the agent world, pre-linked,
/// with the settings every call of it runs under. Built once per deployment and shared by
/// its calls.
pub struct PreparedAgent {
    /// The agent's name.
    pub agent: Arc<str>,
    /// The version that runs.
    pub version: u32,
    pre: AgentPre<CallState>,
    /// Where its guests may send HTTP requests.
    outbound: OutboundPolicy,
    /// Largest linear memory of an instance.
    memory_bytes: usize,
    /// Largest output of a call: the chunks it emits and what it returns, together.
    output_bytes: usize,
    /// Values the guest reads through `config`; shared by every call.
    config: Arc<BTreeMap<String, String>>,
    /// Instances made ahead of demand (for guests slow to instantiate); dropped with this.
    standby: Arc<Standby>,
}

impl PreparedAgent {
    /// `linked` as `version` of `agent`, with the limits and values of `config` and the
    /// outbound `policy` made from it.
    pub fn new(
        agent: &str,
        version: u32,
        linked: Linked,
        config: &AgentConfig,
        outbound: OutboundPolicy,
    ) -> Self {
        Self {
            agent: Arc::from(agent),
            version,
            pre: linked.0,
            outbound,
            memory_bytes: (config.memory_mib as usize) << 20,
            output_bytes: (config.output_mib as usize) << 20,
            config: Arc::new(config.config.clone()),
            standby: Arc::new(Standby::new()),
        }
    }

    /// Whether this deployment is live: one that is not keeps no standby instances.
    pub fn set_live(&self, live: bool) {
        self.standby.set_live(live);
    }

    /// What the standby task needs to make instances of this deployment on its own.
    fn store_maker(&self, engine: &WasmEngine) -> (StoreMaker, AgentPre<CallState>) {
        let wasmtime = engine.engine().clone();
        let stats = Arc::clone(engine.stats());
        let (config, outbound) = (Arc::clone(&self.config), self.outbound.clone());
        let limits = CallLimits {
            memory_bytes: self.memory_bytes,
            output_bytes: self.output_bytes,
        };
        let info = CallInfo {
            agent: Arc::clone(&self.agent),
            version: self.version,
            run_id: Arc::from("standby"),
        };
        let maker: StoreMaker = Box::new(move || {
            let sink = HostLog::new(info.clone());
            let state = CallState::new(
                Arc::clone(&config),
                limits,
                stats.live_instance(),
                sink,
                outbound.clone(),
            );
            new_store(&wasmtime, state)
        });
        (maker, self.pre.clone())
    }
}

/// What the caller sent, and how to run it.
pub struct Call {
    /// The run id the guest sees.
    pub run_id: Arc<str>,
    /// The input, as sent.
    pub input: Vec<u8>,
    /// Its content type.
    pub content_type: String,
    /// A sync call or a queued run.
    pub kind: CallKind,
    /// The attempt number, from 1.
    pub attempt: u32,
    /// Wall-time limit; `None` for none.
    pub timeout: Option<Duration>,
    /// Where the guest's logs, output, progress and outgoing requests go.
    pub sink: Arc<dyn CallSink>,
    /// Told when instantiation is over (however it went): from then on the instance's
    /// memory shows in the process's committed memory, which admission budgets.
    pub instantiated: Option<Box<dyn FnOnce() + Send>>,
}

/// What the guest answered.
#[derive(Debug)]
pub struct Output {
    /// The answer.
    pub bytes: Vec<u8>,
    /// Its content type (bounded; opaque bytes when the guest's was too long).
    pub content_type: String,
}

/// How a call can end other than with an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The guest refused its input (`invalid-input`); its message, bounded.
    #[error("{0}")]
    InvalidInput(String),
    /// The guest returned `failed`; its message, bounded.
    #[error("{0}")]
    Failed(String),
    /// The guest tried to grow its memory past the deployment's limit.
    #[error("the agent ran out of memory: {0}")]
    MemoryLimit(String),
    /// The guest answered (or emitted, and answered) more bytes than the deployment allows.
    #[error("{0}")]
    OutputTooLarge(String),
    /// The guest trapped (the detail is in the host log).
    #[error("the agent trapped")]
    Trap,
    /// The call ran past its deadline.
    #[error("{0}")]
    Timeout(String),
    /// Every pooled instance slot is taken.
    #[error("the host has no free instance slot; retry shortly")]
    PoolExhausted,
}

/// Runs `call` on `agent`, within `call.timeout`.
///
/// # Errors
/// `InvalidInput` and `Failed` carry the guest's message; the others say what the host did.
pub async fn invoke(
    engine: &WasmEngine,
    agent: &PreparedAgent,
    call: Call,
) -> Result<Output, CallError> {
    let timeout = call.timeout;
    let deadline_ms = timeout
        .map(|t| clock::now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
    let warm = if engine.warm_standby() {
        agent.standby.take(|| agent.store_maker(engine))
    } else {
        None
    };
    let (mut store, instance) = match warm {
        Some(Warm {
            mut store,
            instance,
        }) => {
            store.data_mut().bind(call.sink);
            // Its deadline counts from the call, not from when it was made.
            store.set_epoch_deadline(crate::host::FIRST_SLICE_TICKS);
            (store, Some(instance))
        }
        None => {
            let state = CallState::new(
                Arc::clone(&agent.config),
                CallLimits {
                    memory_bytes: agent.memory_bytes,
                    output_bytes: agent.output_bytes,
                },
                engine.stats().live_instance(),
                call.sink,
                agent.outbound.clone(),
            );
            (new_store(engine.engine(), state), None)
        }
    };
    let request = Request {
        input: call.input,
        content_type: call.content_type,
        // `String::from(&str)` copies; `Arc<str>::to_string` would go through `Display`.
        agent: String::from(&*agent.agent),
        version: agent.version,
        run_id: String::from(&*call.run_id),
        mode: call.kind,
        attempt: call.attempt,
        deadline_ms: deadline_ms.and_then(|ms| u64::try_from(ms).ok()),
    };

    let mut instantiated = call.instantiated;
    let run = async {
        let warm = instance.is_some();
        let instance = async {
            match instance {
                Some(warm) => Ok(warm),
                None => {
                    let started = std::time::Instant::now();
                    let instance = agent.pre.instantiate_async(&mut store).await;
                    agent.standby.instantiated(started.elapsed(), &instance);
                    instance
                }
            }
        }
        .instrument(tracing::info_span!(target: crate::trace::TARGET, "instantiate", warm))
        .await;
        if let Some(tell) = instantiated.take() {
            tell();
        }
        // Only here is a failed mapping the host's capacity: later it would be a host
        // function's, after the guest may have done things a retry would repeat.
        instance
            .map_err(|e| {
                if is_out_of_mappings(&e) {
                    e.context(OutOfMappings)
                } else {
                    e
                }
            })?
            .call_run(&mut store, &request)
            .instrument(tracing::info_span!(target: crate::trace::TARGET, "guest.run"))
            .await
    };
    let outcome = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, run).await,
        None => Ok(run.await),
    };
    store.data_mut().flush_output();

    let log_trap = |e: &wasmtime::Error| {
        tracing::warn!(agent = %agent.agent, version = agent.version, run_id = %call.run_id, "the agent trapped: {e:#}");
    };
    let too_large = |did: &str, bytes: usize| {
        CallError::OutputTooLarge(format!(
            "the agent {did} {bytes} bytes; this deployment allows at most {} MiB",
            agent.output_bytes >> 20
        ))
    };
    match outcome {
        // The output is what the guest emitted, then what it returned.
        Ok(Ok(Ok(response))) => match store.data_mut().emitted.complete(response.output) {
            Ok(bytes) => Ok(Output {
                bytes,
                content_type: bounded_content_type(response.content_type),
            }),
            Err(total) => Err(too_large("answered", total)),
        },
        Ok(Ok(Err(RunError::InvalidInput(message)))) => {
            Err(CallError::InvalidInput(bounded_message(message)))
        }
        Ok(Ok(Err(RunError::Failed(message)))) => Err(CallError::Failed(bounded_message(message))),
        // A guest that cannot grow its memory usually aborts: name the limit, not the trap.
        Ok(Err(_)) if store.data().limiter.refused().is_some() => Err(CallError::MemoryLimit(
            store
                .data()
                .limiter
                .refused()
                .unwrap_or_default()
                .to_owned(),
        )),
        // Stopped at the chunk that took it past the limit.
        Ok(Err(_)) if store.data().emitted.refused().is_some() => Err(too_large(
            "emitted",
            store.data().emitted.refused().unwrap_or_default(),
        )),
        Ok(Err(trap)) if is_pool_exhausted(&trap) => Err(CallError::PoolExhausted),
        Ok(Err(trap)) if trap.downcast_ref::<OutOfMappings>().is_some() => {
            warn_out_of_mappings(&trap);
            Err(CallError::PoolExhausted)
        }
        Ok(Err(trap)) => {
            log_trap(&trap);
            Err(CallError::Trap)
        }
        Err(_elapsed) => Err(CallError::Timeout(format!(
            "the agent did not answer within {}",
            human(timeout.unwrap_or_default())
        ))),
    }
}

/// Longest guest error message passed on (to the caller, and into the store for runs).
const MAX_MESSAGE_BYTES: usize = 4096;
/// Longest content type a guest may answer with.
const MAX_CONTENT_TYPE_BYTES: usize = 256;

fn bounded_message(mut message: String) -> String {
    if message.len() > MAX_MESSAGE_BYTES {
        let cut = crate::host::truncate(&message, MAX_MESSAGE_BYTES).len();
        message.truncate(cut);
        message.push('…');
    }
    message
}

fn bounded_content_type(content_type: String) -> String {
    if content_type.len() > MAX_CONTENT_TYPE_BYTES {
        "application/octet-stream".to_owned()
    } else {
        content_type
    }
}

/// Whether instantiation failed because every pooled slot of some kind (instances,
/// memories, tables, stacks) is taken: wasmtime says so with a typed error somewhere in the
/// chain.
fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.downcast_ref::<PoolConcurrencyLimitError>().is_some())
}

/// Whether the process could not map memory for the instance (its memory slot, its stack):
/// it reached `vm.max_map_count`, or its address space. During instantiation that is the
/// host's capacity, not the agent's fault, and the call may be retried as when the pool is
/// full. (A guest that cannot grow its memory sees `memory.grow` fail, not this error.)
fn is_out_of_mappings(error: &wasmtime::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<rustix::io::Errno>() == Some(&rustix::io::Errno::NOMEM)
            || cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.raw_os_error() == Some(rustix::io::Errno::NOMEM.raw_os_error()))
    })
}

/// Marks an instantiation that failed for want of a memory mapping.
#[derive(Debug)]
struct OutOfMappings;

impl std::fmt::Display for OutOfMappings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no memory mapping for a new instance")
    }
}

/// Says why, at most once a minute: a burst past the limit fails many calls at once.
fn warn_out_of_mappings(error: &wasmtime::Error) {
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(i64::MIN);
    let now = clock::now_ms();
    let last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000
        && LAST
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(
            "an instance could not be made: {error:#}; the process is out of memory mappings (raise vm.max_map_count, see deploy/60-gust.conf, or lower --max-instances) or of address space; calls are refused with 429 meanwhile"
        );
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_without_a_memory_mapping_is_the_hosts_capacity_not_a_trap() {
        // As wasmtime reports an `mprotect` or `mmap` that failed while it made the instance.
        let mapping = wasmtime::Error::from(rustix::io::Errno::NOMEM)
            .context("failed to make the memory accessible");
        assert!(is_out_of_mappings(&mapping));
        // The mark `invoke` puts on it is what the outcome is matched by.
        let marked = mapping.context(OutOfMappings);
        assert!(marked.downcast_ref::<OutOfMappings>().is_some());
        assert!(!is_pool_exhausted(&marked));
        let io = wasmtime::Error::from(std::io::Error::from_raw_os_error(
            rustix::io::Errno::NOMEM.raw_os_error(),
        ));
        assert!(is_out_of_mappings(&io));
        let trap = wasmtime::Error::from(wasmtime::Trap::UnreachableCodeReached);
        assert!(!is_out_of_mappings(&trap));
        assert!(!is_out_of_mappings(
            &wasmtime::Error::from(rustix::io::Errno::ACCESS).context("mmap")
        ));
    }
}
