//! One call of `run`: a fresh `Store`, limits, the deadline, and the mapping of what the
//! guest did to an outcome.
//!
//! Nothing of one call survives into another: the `Store` (and with it the instance, its
//! memory and every host resource) is dropped when the call ends, however it ends. If the
//! caller goes away, the future holding the `Store` is dropped, which ends the call too.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use crate::bindings::{Mode, Request, RunError};
use crate::clock;
use crate::engine::Runtime;
use crate::error::Error;
use crate::host::{CallInfo, CallLimits, CallState};
use crate::registry::Deployment;
use crate::runs::recorder::RunRecorder;

/// What the caller sent, and how to run it.
pub(crate) struct Call {
    pub(crate) run_id: Arc<str>,
    pub(crate) input: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) mode: Mode,
    pub(crate) attempt: u32,
    /// Wall-time limit; `None` for none.
    pub(crate) timeout: Option<Duration>,
    /// Where a queued run's logs and progress go; `None` for a sync call (host log).
    pub(crate) recorder: Option<Arc<RunRecorder>>,
}

/// What the guest answered.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) bytes: Vec<u8>,
    pub(crate) content_type: String,
}

/// Runs `call` on `deployment`, within `call.timeout`.
///
/// # Errors
/// `InvalidInput` and `Failed` carry the guest's message; `Trap` and `Timeout` say what
/// the host did.
pub(crate) async fn invoke(
    runtime: &Runtime,
    deployment: &Deployment,
    call: Call,
) -> Result<Output, Error> {
    let timeout = call.timeout;
    let deadline_ms = timeout
        .map(|t| clock::now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX)));
    let info = CallInfo {
        agent: Arc::clone(&deployment.agent),
        version: deployment.version,
        run_id: Arc::clone(&call.run_id),
    };
    let state = CallState::new(
        info,
        Arc::clone(&deployment.config),
        CallLimits {
            memory_bytes: deployment.memory_bytes,
        },
        runtime.stats().live_instance(),
        call.recorder,
        deployment.outbound.clone(),
    );
    let mut store = new_store(runtime, state);
    let request = Request {
        input: call.input,
        content_type: call.content_type,
        // `String::from(&str)` copies; `Arc<str>::to_string` would go through `Display`.
        agent: String::from(&*deployment.agent),
        version: deployment.version,
        run_id: String::from(&*call.run_id),
        mode: call.mode,
        attempt: call.attempt,
        deadline_ms: deadline_ms.and_then(|ms| u64::try_from(ms).ok()),
    };

    let run = async {
        let agent = deployment.pre.instantiate_async(&mut store).await?;
        agent.call_run(&mut store, &request).await
    };
    let outcome = match timeout {
        Some(timeout) => tokio::time::timeout(timeout, run).await,
        None => Ok(run.await),
    };
    store.data_mut().flush_output();

    let log_trap = |e: &wasmtime::Error| {
        tracing::warn!(agent = %deployment.agent, version = deployment.version, run_id = %call.run_id, "the agent trapped: {e:#}");
    };
    match outcome {
        Ok(Ok(Ok(response))) if response.output.len() > deployment.output_bytes => {
            Err(Error::OutputTooLarge(format!(
                "the agent answered {} bytes; this deployment allows at most {} MiB",
                response.output.len(),
                deployment.output_bytes >> 20
            )))
        }
        Ok(Ok(Ok(response))) => Ok(Output {
            bytes: response.output,
            content_type: bounded_content_type(response.content_type),
        }),
        Ok(Ok(Err(RunError::InvalidInput(message)))) => {
            Err(Error::InvalidInput(bounded_message(message)))
        }
        Ok(Ok(Err(RunError::Failed(message)))) => Err(Error::Failed(bounded_message(message))),
        // A guest that cannot grow its memory usually aborts: name the limit, not the trap.
        Ok(Err(_)) if store.data().limiter.refused().is_some() => Err(Error::MemoryLimit(
            store
                .data()
                .limiter
                .refused()
                .unwrap_or_default()
                .to_owned(),
        )),
        Ok(Err(trap)) if is_pool_exhausted(&trap) => Err(Error::Overloaded {
            message: "the host has no free instance slot; retry shortly".into(),
            retry_after: Some(Duration::from_secs(1)),
        }),
        Ok(Err(trap)) => {
            log_trap(&trap);
            Err(Error::Trap)
        }
        Err(_elapsed) => Err(Error::Timeout(format!(
            "the agent did not answer within {}",
            human(timeout.unwrap_or_default())
        ))),
    }
}

/// A store for one call or one trial instantiation: limits on, and an epoch deadline that
/// makes a guest running pure CPU yield every tick, so timeouts and disconnects reach it.
pub(crate) fn new_store(runtime: &Runtime, state: CallState) -> Store<CallState> {
    let mut store = Store::new(runtime.engine(), state);
    store.limiter(|s| &mut s.limiter);

    store.set_epoch_deadline(1);
    store.epoch_deadline_async_yield_and_update(1);
    store
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

/// Whether instantiation failed because every pooled slot is taken.
fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    let text = format!("{error:#}");
    text.contains("maximum concurrent") || text.contains("pooling allocator")
}

fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 && d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
