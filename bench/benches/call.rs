//! Store + instantiate + call + drop of an echo agent, in-process, through the code a sync
//! call runs (`gust_core::embed`): gust's engine settings beside wasmtime's defaults in
//! the same run, then each of gust's settings changed one at a time, to show what it buys.
//! Last, the same four steps in a bare wasmtime embedding (the WASI crates and the agent
//! world's host interface doing nothing, no other host state), with gust's settings and with
//! the defaults: the floor of what any host built on this wasmtime pays per call, so what is
//! gust's own cost and what is wasmtime's.
//!
//! Components come from the environment (`bench/run` builds them and sets these):
//! `GUST_BENCH_RUST_ECHO` (required), `GUST_BENCH_PYTHON_ECHO` and `GUST_BENCH_JS_ECHO`
//! (benched when set); `GUST_BENCH_ARTIFACTS` optionally names a folder that keeps their
//! compiled artifacts between runs.

use std::path::PathBuf;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gust_core::embed::LoadedAgent;
use gust_wasm::{PoolTuning, Tuning};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

// The agent world, typed, for the bare embedding (gust's own bindings are private to its
// runtime).
wasmtime::component::bindgen!({
    world: "gust:agent/agent@0.1.1",
    path: "../wit",
    exports: { default: async },
});

use gust::agent::host::Level;
use gust::agent::invocation::Mode;

const INPUT: &[u8] = br#"{"say":"hi"}"#;

/// The settings compared: a name, and the engine settings.
fn variants() -> Vec<(&'static str, Tuning)> {
    let gust = Tuning::default();
    let pool = PoolTuning::default();
    let with_pool = |change: PoolTuning| Tuning {
        pool: Some(change),
        ..gust.clone()
    };
    vec![
        ("gust", gust.clone()),
        ("wasmtime-defaults", Tuning::wasmtime_defaults()),
        (
            "gust-on-demand",
            Tuning {
                pool: None,
                ..gust.clone()
            },
        ),
        (
            "gust-no-pagemap-scan",
            with_pool(PoolTuning {
                pagemap_scan: false,
                ..pool.clone()
            }),
        ),
        (
            "gust-no-pagemap-scan-64kib",
            with_pool(PoolTuning {
                pagemap_scan: false,
                keep_resident: 64 << 10,
                ..pool.clone()
            }),
        ),
        (
            "gust-keep-resident-0",
            with_pool(PoolTuning {
                keep_resident: 0,
                ..pool.clone()
            }),
        ),
        (
            "gust-keep-resident-16mib",
            with_pool(PoolTuning {
                keep_resident: 16 << 20,
                ..pool.clone()
            }),
        ),
        (
            "gust-decommit-batch-32",
            with_pool(PoolTuning {
                decommit_batch: 32,
                ..pool.clone()
            }),
        ),
        (
            "gust-no-warm-slots",
            with_pool(PoolTuning {
                max_unused_warm_slots: 0,
                ..pool.clone()
            }),
        ),
        (
            "gust-no-cow",
            Tuning {
                memory_init_cow: false,
                ..gust.clone()
            },
        ),
        (
            "gust-no-epoch",
            Tuning {
                epoch_interruption: false,
                ..gust.clone()
            },
        ),
    ]
}

fn component(var: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(std::env::var_os(var)?);
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{var}={}: {e} (bench/run builds it)", path.display()));
    Some(bytes)
}

/// One current-thread runtime per group: calls are measured on one thread.
fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Checked once per variant before it is measured: the echo answered its input.
fn assert_echoed(output: &[u8], variant: &str) {
    let answer: serde_json::Value = serde_json::from_slice(output).expect("the echo answers JSON");
    let input: serde_json::Value = serde_json::from_slice(INPUT).expect("JSON input");
    assert_eq!(
        answer["input"], input,
        "the echo did not answer its input ({variant})"
    );
}

fn bench_agent(c: &mut Criterion, group: &str, bytes: &[u8], variants: &[(&str, Tuning)]) {
    let tokio = tokio_runtime();
    // Compiled artifacts are kept between runs when bench/run names a folder for them
    // (Python and JavaScript guests take seconds each to compile).
    let scratch = tempfile::tempdir().expect("a temporary folder");
    let cache = std::env::var_os("GUST_BENCH_ARTIFACTS")
        .map_or_else(|| scratch.path().to_owned(), PathBuf::from);
    let mut group = c.benchmark_group(group);
    for (name, tuning) in variants {
        // One engine at a time: each pool reserves terabytes of address space.
        let agent = LoadedAgent::load("echo", bytes, tuning, &cache)
            .unwrap_or_else(|e| panic!("loading the agent with {name}: {e:#}"));
        let answer = tokio
            .block_on(agent.call(INPUT.to_vec()))
            .unwrap_or_else(|e| panic!("calling the agent with {name}: {e}"));
        assert_echoed(&answer, name);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&tokio)
                .iter(|| async { agent.call(INPUT.to_vec()).await.expect("a call") });
        });
    }
    group.finish();
}

/// The store data of the bare embedding: WASI, made on the guest's first WASI import (the
/// Rust echo makes none; Python and JavaScript need it to start), wasi:http with the crate's
/// defaults, and the agent world's host interface doing nothing.
struct Bare {
    wasi: Option<WasiCtx>,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl Bare {
    fn new() -> Self {
        Self {
            wasi: None,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        }
    }
}

impl gust::agent::host::Host for Bare {
    fn log(&mut self, _level: Level, _message: String) {}

    fn config(&mut self, _key: String) -> Option<String> {
        None
    }

    fn progress(&mut self, _fraction: f32, _message: String) {}

    fn emit(&mut self, _chunk: Vec<u8>) {}
}

impl gust::agent::invocation::Host for Bare {}

impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| WasiCtxBuilder::new().build()),
            table: &mut self.table,
        }
    }
}

/// Store + instantiate + call + drop in a bare wasmtime embedding: WASI and wasi:http linked
/// as their crates provide them, the host interface as plain functions (`config` answers
/// `none`), the same epoch deadline as gust. What is left is wasmtime's own per-call work
/// under each engine configuration.
fn bench_bare(c: &mut Criterion, group: &str, bytes: &[u8]) {
    let tokio = tokio_runtime();
    let max_memory = (gust_model::DEFAULT_MEMORY_MIB as usize) << 20;
    let request = Request {
        input: INPUT.to_vec(),
        content_type: "application/json".to_owned(),
        agent: "echo".to_owned(),
        version: 1,
        run_id: "run_0".to_owned(),
        mode: Mode::Sync,
        attempt: 1,
        deadline_ms: None,
    };
    let mut group = c.benchmark_group(group);
    for (name, tuning) in [
        ("bare-wasmtime-gust-settings", Tuning::default()),
        ("bare-wasmtime-defaults", Tuning::wasmtime_defaults()),
    ] {
        let engine = Engine::new(&tuning.wasmtime_config(max_memory)).expect("an engine");
        if tuning.epoch_interruption {
            gust_wasm::engine::start_epoch_ticker(&engine);
        }
        let component = Component::new(&engine, bytes).expect("the component compiles");
        let mut linker = Linker::<Bare>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("linking WASI");
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .expect("linking wasi:http");
        gust::agent::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .expect("linking the host interface");
        gust::agent::invocation::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .expect("linking the invocation interface");
        let pre = AgentPre::new(
            linker
                .instantiate_pre(&component)
                .expect("pre-instantiated"),
        )
        .expect("the agent world's exports");
        let call = || async {
            let mut store = Store::new(&engine, Bare::new());
            if tuning.epoch_interruption {
                store.set_epoch_deadline(1);
                store.epoch_deadline_async_yield_and_update(1);
            }
            let agent = pre
                .instantiate_async(&mut store)
                .await
                .expect("instantiated");
            agent
                .call_run(&mut store, &request)
                .await
                .expect("no trap")
                .expect("the echo answers")
        };
        assert_echoed(&tokio.block_on(call()).output, name);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&tokio).iter(call);
        });
    }
    group.finish();
}

fn calls(c: &mut Criterion) {
    let Some(rust) = component("GUST_BENCH_RUST_ECHO") else {
        panic!("set GUST_BENCH_RUST_ECHO to the echo example's component (bench/run does)");
    };
    let variants = variants();
    bench_agent(c, "rust-echo", &rust, &variants);
    bench_bare(c, "rust-echo", &rust);
    // Guests of 13-18 MB: gust's settings against wasmtime's, gust's settings before
    // PAGEMAP_SCAN, and more memory kept resident.
    let few: Vec<_> = variants
        .iter()
        .filter(|(name, _)| {
            [
                "gust",
                "wasmtime-defaults",
                "gust-no-pagemap-scan-64kib",
                "gust-keep-resident-16mib",
            ]
            .contains(name)
        })
        .cloned()
        .collect();
    for (group, var) in [
        ("python-echo", "GUST_BENCH_PYTHON_ECHO"),
        ("js-echo", "GUST_BENCH_JS_ECHO"),
    ] {
        if let Some(bytes) = component(var) {
            bench_agent(c, group, &bytes, &few);
            bench_bare(c, group, &bytes);
        }
    }
}

criterion_group!(benches, calls);
criterion_main!(benches);
