//! Checking an upload against the agent world, with diagnostics a user can act on.
//!
//! The checks run in the order a user would fix things: is it a component at all, does it
//! import only what the host provides and export `run`, do the types match, and does it
//! instantiate within the host's limits.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gust_model::{AgentConfig, Diagnostic};
use wasmtime::component::Component;

use crate::bindings::AgentPre;
use crate::engine::WasmEngine;
use crate::host::{CallInfo, CallLimits, CallState, HostLog, new_store};

/// How long the trial instantiation of an upload may take.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A component that passed the check: its imports linked to what the host provides, its
/// `run` export of the agent world's type. Cheap to clone.
#[derive(Clone)]
pub struct Linked(pub(crate) AgentPre<CallState>);

/// An upload compiled by this host and checked: what to cache, and what to call.
pub struct Compiled {
    component: Component,
    /// The component, linked.
    pub linked: Linked,
}

impl Compiled {
    /// Writes the precompiled form to the host's cache, so the next load of `digest` skips
    /// compilation. Blocking.
    ///
    /// # Errors
    /// When the artifact cannot be serialized or written.
    pub fn cache(&self, engine: &WasmEngine, digest: &str) -> anyhow::Result<()> {
        engine.cache_artifact(digest, &self.component)
    }
}

/// Why a component did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The component cannot run here; every problem found.
    #[error("the component is not a valid agent: {0:?}")]
    Invalid(Vec<Diagnostic>),
    /// Something failed inside the host while checking.
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// The packages the host links, with the version family it serves of each. An import from
/// any other package cannot link, whatever its interface; within these packages the linker
/// itself is the judge (see `check`), so this list cannot wrongly refuse an interface the
/// host does provide.
const PROVIDED: &[(&str, &str)] = &[
    ("wasi:io", "0.2"),
    ("wasi:clocks", "0.2"),
    ("wasi:random", "0.2"),
    ("wasi:filesystem", "0.2"),
    ("wasi:sockets", "0.2"),
    ("wasi:cli", "0.2"),
    ("wasi:http", "0.2"),
    ("gust:agent", "0.1"),
];

/// Whether the host can provide an import of this name; `Err` says why not.
fn provided(name: &str) -> Result<(), String> {
    let Some((path, version)) = name.split_once('@') else {
        return Err(format!(
            "`{name}` is not a versioned interface; the host provides WASI 0.2 and gust:agent@0.1"
        ));
    };
    let Some((package, _interface)) = path.split_once('/') else {
        return Err(format!("`{name}` is not an interface import"));
    };
    let Some((_, family)) = PROVIDED.iter().find(|(p, _)| *p == package) else {
        return Err(format!("the host provides no package `{package}`"));
    };
    let compatible = version
        .strip_prefix(family)
        .is_some_and(|rest| rest.starts_with('.'));
    if !compatible {
        return Err(format!(
            "the host provides `{package}` at version {family}.x, not {version}"
        ));
    }
    Ok(())
}

/// The first bytes of the binary: a component, a core module, or neither.
///
/// # Errors
/// The diagnostic for an empty body, a non-Wasm file or a core module.
pub fn classify(bytes: &[u8]) -> Result<(), Diagnostic> {
    if bytes.is_empty() {
        return Err(Diagnostic::new(
            "not_a_component",
            "",
            "the upload is empty",
        ));
    }
    if !bytes.starts_with(b"\0asm") || bytes.len() < 8 {
        return Err(Diagnostic::new(
            "not_a_component",
            "",
            "this is not WebAssembly (it does not start with the `\\0asm` magic number)",
        ));
    }
    if wasmtime::wasmparser::Parser::is_core_wasm(bytes) {
        return Err(Diagnostic::new(
            "core_module",
            "",
            "this is a core WebAssembly module, not a component: build for `wasm32-wasip2`, or wrap it with `wasm-tools component new`",
        ));
    }
    if !wasmtime::wasmparser::Parser::is_component(bytes) {
        return Err(Diagnostic::new(
            "not_a_component",
            "",
            "this WebAssembly binary has an unknown version or layer",
        ));
    }
    Ok(())
}

/// Compiles client bytes (blocking; seconds for a large guest) and checks them against the
/// agent world, returning everything a deploy needs.
///
/// # Errors
/// [`CheckError::Invalid`] with every diagnostic found.
pub fn compile_and_check(engine: &WasmEngine, bytes: &[u8]) -> Result<Compiled, CheckError> {
    classify(bytes).map_err(|d| CheckError::Invalid(vec![d]))?;
    let component = engine.compile(bytes).map_err(|e| {
        let text = format!("{e:#}");
        // The pooling allocator refuses, at compile time, a module whose declared minimum
        // memory or table is larger than a slot.
        let diagnostic = if text.contains("pooling allocator") {
            Diagnostic::new(
                "limit_exceeded",
                "",
                format!("the component does not fit the host's limits: {text}"),
            )
        } else {
            Diagnostic::new(
                "not_a_component",
                "",
                format!("the component is malformed: {text}"),
            )
        };
        CheckError::Invalid(vec![diagnostic])
    })?;
    let linked = check(engine, &component).map_err(CheckError::Invalid)?;
    Ok(Compiled { component, linked })
}

/// A stored component, linked: from the precompiled cache when it holds it, else compiled
/// from `component_file` (and cached). Blocking; seconds when it compiles.
///
/// # Errors
/// [`CheckError::Internal`] when the file cannot be read or compiled, [`CheckError::Invalid`]
/// when it no longer passes the check (an upgraded host may provide less).
pub fn load(
    engine: &WasmEngine,
    digest: &str,
    component_file: &Path,
) -> Result<Linked, CheckError> {
    let component = engine
        .load(digest, component_file)
        .map_err(CheckError::Internal)?;
    check(engine, &component).map_err(CheckError::Invalid)
}

/// The component `digest`, linked, if the precompiled cache holds it (no compile).
/// Blocking; milliseconds.
pub fn load_cached(engine: &WasmEngine, digest: &str) -> Option<Result<Linked, CheckError>> {
    let component = engine.cached(digest)?;
    Some(check(engine, &component).map_err(CheckError::Invalid))
}

/// `bytes` (whose digest is `digest`), linked: from the precompiled cache when it holds
/// them, else compiled, checked and cached. Blocking; seconds when it compiles.
///
/// # Errors
/// What [`compile_and_check`] finds, or a failure to write the cache.
pub fn load_bytes(engine: &WasmEngine, digest: &str, bytes: &[u8]) -> Result<Linked, CheckError> {
    if let Some(component) = engine.cached(digest) {
        return check(engine, &component).map_err(CheckError::Invalid);
    }
    let compiled = compile_and_check(engine, bytes)?;
    compiled
        .cache(engine, digest)
        .map_err(CheckError::Internal)?;
    Ok(compiled.linked)
}

/// Checks a compiled component's imports and exports against the agent world.
///
/// # Errors
/// Every diagnostic found.
pub fn check(wasm: &WasmEngine, component: &Component) -> Result<Linked, Vec<Diagnostic>> {
    let engine = wasm.engine();
    let ty = component.component_type();
    let mut diagnostics: Vec<Diagnostic> = ty
        .imports(engine)
        .filter_map(|(name, _)| {
            provided(name)
                .err()
                .map(|why| Diagnostic::new("unknown_import", name, why))
        })
        .collect();
    match ty.exports(engine).find(|(name, _)| *name == "run") {
        None => diagnostics.push(Diagnostic::new(
            "missing_export",
            "run",
            "the component does not export `run`; it must target the world `gust:agent/agent` (0.1.x)",
        )),
        Some((_, item))
            if matches!(item.ty, wasmtime::component::types::ComponentItem::ComponentFunc(_)) => {}
        Some(_) => diagnostics.push(Diagnostic::new(
            "export_type_mismatch",
            "run",
            "`run` is exported, but not as a function",
        )),
    }
    if !diagnostics.is_empty() {
        return Err(diagnostics);
    }
    // Names are all known; the linker now checks every type.
    let instance_pre = wasm.linker().instantiate_pre(component).map_err(|e| {
        vec![Diagnostic::new(
            "unknown_import",
            import_named_in(&e, &ty, engine),
            format!("an import does not match what the host provides: {e:#}"),
        )]
    })?;
    AgentPre::new(instance_pre).map(Linked).map_err(|e| {
        vec![Diagnostic::new(
            "export_type_mismatch",
            "run",
            format!("`run` does not have the type of `gust:agent/agent` (0.1.x): {e:#}"),
        )]
    })
}

/// Instantiates once, without calling anything, to prove the component fits the host's
/// limits — and the agent's memory limit, `memory_bytes` — before it is accepted.
///
/// # Errors
/// `limit_exceeded` when it does not fit (or takes too long), `instantiation_failed` when
/// it fails otherwise.
pub async fn trial_instantiate(
    engine: &WasmEngine,
    linked: &Linked,
    memory_bytes: usize,
) -> Result<(), Diagnostic> {
    let outbound = engine
        .outbound_policy(&AgentConfig::default())
        .map_err(|e| Diagnostic::new("instantiation_failed", "", e))?;
    let sink = HostLog::new(CallInfo {
        agent: Arc::from("(upload check)"),
        version: 0,
        run_id: Arc::from("(upload check)"),
    });
    let state = CallState::new(
        Arc::new(BTreeMap::new()),
        CallLimits {
            memory_bytes,
            // Nothing is called, so nothing is emitted.
            output_bytes: 0,
        },
        engine.stats().live_instance(),
        sink,
        outbound,
    );
    let mut store = new_store(engine.engine(), state);
    let limit = |message: String| Diagnostic::new("limit_exceeded", "", message);
    match tokio::time::timeout(TRIAL_TIMEOUT, linked.0.instantiate_async(&mut store)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => match store.data().limiter.refused() {
            Some(why) => Err(limit(format!(
                "the component does not fit the host's limits: {why}"
            ))),
            None => Err(Diagnostic::new(
                "instantiation_failed",
                "",
                format!("the component failed to instantiate: {e:#}"),
            )),
        },
        Err(_) => Err(limit(format!(
            "instantiation did not finish within {}s",
            TRIAL_TIMEOUT.as_secs()
        ))),
    }
}

/// The import a linker error is about, when its message names one.
fn import_named_in(
    error: &wasmtime::Error,
    ty: &wasmtime::component::types::Component,
    engine: &wasmtime::Engine,
) -> String {
    let text = format!("{error:#}");
    ty.imports(engine)
        .map(|(name, _)| name)
        .find(|name| text.contains(name))
        .unwrap_or_default()
        .to_owned()
}

/// The component's imports and exports as WIT text, for the read-only version view.
///
/// # Errors
/// When the bytes cannot be decoded (they were checked at upload, so this is unexpected).
pub fn wit_text(bytes: &[u8]) -> anyhow::Result<String> {
    let decoded = wit_component::decode(bytes)?;
    let resolve = decoded.resolve();
    let mut printer = wit_component::WitPrinter::default();
    printer.print(resolve, decoded.package(), &[])?;
    Ok(printer.output.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_tells_modules_components_and_junk_apart() {
        assert_eq!(classify(b"").unwrap_err().code, "not_a_component");
        assert_eq!(
            classify(b"hello world!").unwrap_err().code,
            "not_a_component"
        );
        assert_eq!(
            classify(b"\0asm\x01\0\0\0").unwrap_err().code,
            "core_module"
        );
        assert!(classify(b"\0asm\x0d\0\x01\0").is_ok());
        assert_eq!(
            classify(b"\0asm\x09\0\x09\0").unwrap_err().code,
            "not_a_component"
        );
    }

    #[test]
    fn provided_accepts_compatible_versions_only() {
        assert!(provided("wasi:io/streams@0.2.0").is_ok());
        assert!(provided("wasi:http/outgoing-handler@0.2.12").is_ok());
        assert!(provided("gust:agent/host@0.1.0").is_ok());
        assert!(provided("gust:agent/host@0.1.1").is_ok());
        assert!(provided("gust:agent/host@0.2.0").is_err());
        assert!(provided("wasi:io/streams@0.3.0").is_err());
        assert!(provided("wasi:io/streams@0.20.1").is_err());
        assert!(provided("wasi:keyvalue/store@0.2.0").is_err());
        assert!(provided("bare-function").is_err());
    }

    /// An engine with the default settings, its cache in a folder dropped with it.
    fn engine() -> (tempfile::TempDir, WasmEngine) {
        let dir = tempfile::tempdir().unwrap();
        let runtime = WasmEngine::new(
            dir.path(),
            Default::default(),
            256 << 20,
            Default::default(),
            &Default::default(),
        )
        .unwrap();
        (dir, runtime)
    }

    /// The linker, not the package list, decides within a provided package: a real host
    /// function links, a function the interface lacks does not.
    #[test]
    fn linker_judges_interfaces_within_provided_packages() {
        let (_dir, runtime) = engine();
        let links = |func: &str| {
            let wat = format!(
                r#"(component (import "gust:agent/host@0.1.0" (instance (export "{func}" (func (param "key" string) (result (option string)))))))"#
            );
            let bytes = wat::parse_str(&wat).unwrap();
            let component = Component::from_binary(runtime.engine(), &bytes).unwrap();
            runtime.linker().instantiate_pre(&component).is_ok()
        };
        assert!(links("config"));
        assert!(!links("no-such-function"));
    }

    /// The host serves the newest 0.1.x: guests built against 0.1.0 (before `emit`) and
    /// against 0.1.1 both link, each through the version it names.
    #[test]
    fn guests_of_every_0_1_version_link() {
        let (_dir, runtime) = engine();
        let links = |version: &str, func: &str, ty: &str| {
            let wat = format!(
                r#"(component (import "gust:agent/host@{version}" (instance (export "{func}" (func {ty})))))"#
            );
            let bytes = wat::parse_str(&wat).unwrap();
            let component = Component::from_binary(runtime.engine(), &bytes).unwrap();
            runtime.linker().instantiate_pre(&component).map(|_| ())
        };
        let progress = r#"(param "fraction" f32) (param "message" string)"#;
        let emit = r#"(param "chunk" (list u8))"#;
        links("0.1.0", "progress", progress).unwrap();
        links("0.1.1", "progress", progress).unwrap();
        links("0.1.1", "emit", emit).unwrap();
        // A function's type is checked whatever the version.
        assert!(links("0.1.1", "emit", r#"(param "chunk" string)"#).is_err());
        assert!(links("0.2.0", "progress", progress).is_err());
    }
}
