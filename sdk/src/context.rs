use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::__private::bindings::gust::agent::{host, invocation};

/// How the caller asked for this run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An inline HTTP call; the caller waits for the answer.
    Sync,
    /// A queued run; the result is polled or pushed. It may be attempted more than once.
    Async,
}

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine detail, normally filtered out.
    Trace,
    /// Detail for the author.
    Debug,
    /// A step of the flow.
    Info,
    /// Something unexpected that the flow handled.
    Warn,
    /// Something that went wrong.
    Error,
}

/// What the host tells a run about itself, and the host functions it may call.
///
/// One `Context` exists per invocation; an agent keeps no state between invocations (each
/// runs on a fresh instance), so nothing here needs to be shared or stored.
#[derive(Debug)]
pub struct Context {
    agent: String,
    version: u32,
    run_id: String,
    mode: Mode,
    attempt: u32,
    deadline_ms: Option<u64>,
    content_type: String,
    /// Whether [`Context::emit`] sent a chunk: a run that streamed and returns nothing
    /// answers its chunks alone. (Atomic, not a `Cell`, so a `Context` stays `Sync`.)
    emitted: AtomicBool,
}

impl Context {
    pub(crate) fn new(request: &invocation::Request) -> Self {
        Self {
            agent: request.agent.clone(),
            version: request.version,
            run_id: request.run_id.clone(),
            mode: match request.mode {
                invocation::Mode::Sync => Mode::Sync,
                invocation::Mode::Async => Mode::Async,
            },
            attempt: request.attempt,
            deadline_ms: request.deadline_ms,
            content_type: request.content_type.clone(),
            emitted: AtomicBool::new(false),
        }
    }

    /// Whether a chunk was emitted.
    pub(crate) fn emitted(&self) -> bool {
        self.emitted.load(Ordering::Relaxed)
    }

    /// The agent's name, as in its endpoint URL.
    pub fn agent(&self) -> &str {
        &self.agent
    }

    /// The version number of the component that is running.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The run id the caller sees in the `gust-run-id` header.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// Whether the caller waits inline or this is a queued run.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// 1 on the first attempt; higher when a queued run is executed again.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The media type the caller sent the input with.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// When the host will cut this run off, if a limit applies.
    pub fn deadline(&self) -> Option<SystemTime> {
        self.deadline_ms
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// A configuration value of this deployment (set with `gust config --set KEY=VALUE`,
    /// frozen by the deploy), or `None` when the key is not set.
    pub fn config(&self, key: &str) -> Option<String> {
        host::config(key)
    }

    /// Records a log line, tagged by the host with the agent, version and run id.
    pub fn log(&self, level: Level, message: impl AsRef<str>) {
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message.as_ref());
    }

    /// Logs at [`Level::Info`].
    pub fn info(&self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    /// Logs at [`Level::Warn`].
    pub fn warn(&self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }

    /// Logs at [`Level::Error`].
    pub fn error(&self, message: impl AsRef<str>) {
        self.log(Level::Error, message);
    }

    /// Reports how far the run has come (`fraction` from 0.0 to 1.0). Pollers of a queued
    /// run see it; for sync calls the host ignores it.
    pub fn progress(&self, fraction: f32, message: impl AsRef<str>) {
        host::progress(fraction.clamp(0.0, 1.0), message.as_ref());
    }

    /// Sends the next chunk of the output now, before the function returns: a chat agent
    /// streams tokens as the model produces them.
    ///
    /// A caller streaming the call (`Accept: text/event-stream`) and the followers of a
    /// queued run's events get each chunk as it is emitted. The output of the run — what a
    /// plain call answers and a poll shows — is the chunks in order, followed by what the
    /// function returns. A function that emitted and returns `()` (or `None`) answers the
    /// chunks alone, as `text/plain; charset=utf-8`; one that returns a value answers the
    /// chunks followed by that value's JSON, as `application/json`.
    ///
    /// The chunks count against the deployment's output limit with the returned value: the
    /// chunk that would pass it ends the run (`output_too_large`) without returning here.
    /// An empty chunk sends nothing.
    ///
    /// ```no_run
    /// # fn example(ctx: &gust_sdk::Context) {
    /// for token in ["Hello", ", ", "world"] {
    ///     ctx.emit(token);
    /// }
    /// # }
    /// ```
    pub fn emit(&self, chunk: impl AsRef<[u8]>) {
        let chunk = chunk.as_ref();
        if chunk.is_empty() {
            return;
        }
        self.emitted.store(true, Ordering::Relaxed);
        host::emit(chunk);
    }
}
