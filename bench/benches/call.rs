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

mod bare;

use std::path::PathBuf;

use bare::BareAgent;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use gust_core::embed::LoadedAgent;
use gust_wasm::{PoolTuning, Tuning};

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

/// Store + instantiate + call + drop in the bare embedding (`bare`), with gust's engine
/// settings and with wasmtime's defaults: what is left is wasmtime's own per-call work under
/// each configuration.
fn bench_bare(c: &mut Criterion, group: &str, bytes: &[u8]) {
    let tokio = tokio_runtime();
    let request = BareAgent::request(INPUT.to_vec());
    let mut group = c.benchmark_group(group);
    for (name, tuning) in [
        ("bare-wasmtime-gust-settings", Tuning::default()),
        ("bare-wasmtime-defaults", Tuning::wasmtime_defaults()),
    ] {
        let agent = BareAgent::new(&tuning, bytes);
        assert_echoed(&tokio.block_on(agent.call(&request)), name);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.to_async(&tokio).iter(|| agent.call(&request));
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
