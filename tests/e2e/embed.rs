//! `gust_core::embed`: an agent called in-process through the sync path's own code, under
//! gust's engine settings and under wasmtime's defaults (the two the call benchmark
//! compares). Each call must get a fresh instance whatever the pool keeps resident.

use gust_core::Error;
use gust_core::embed::LoadedAgent;
use gust_server::options::Tuning;
use serde_json::{Value, json};

async fn call(agent: &LoadedAgent, input: Value) -> Result<Value, Error> {
    let output = agent.call(serde_json::to_vec(&input).unwrap()).await?;
    Ok(serde_json::from_slice(&output).unwrap())
}

#[tokio::test]
async fn an_agent_runs_in_process_on_a_fresh_instance_per_call_under_each_tuning() {
    let cache = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gust_test_guests::PROBE_A).unwrap();
    for tuning in [Tuning::default(), Tuning::wasmtime_defaults()] {
        let agent = LoadedAgent::load("probe", &bytes, &tuning, cache.path()).unwrap();
        for n in 0..20 {
            let answer = call(&agent, json!({"op": "echo", "n": n})).await.unwrap();
            assert_eq!(answer["input"]["n"], n, "{tuning:?}");
            assert_eq!(answer["agent"], "probe");
            // Dirty the heap, then check that a static starts from zero in the next call:
            // the pool's reset (PAGEMAP_SCAN, pages kept resident) must restore every page.
            call(&agent, json!({"op": "alloc", "mb": 2})).await.unwrap();
            let counted = call(&agent, json!({"op": "count"})).await.unwrap();
            assert_eq!(counted["count"], 1, "state carried over under {tuning:?}");
        }
        let failed = call(&agent, json!({"op": "fail"})).await.unwrap_err();
        assert!(matches!(failed, Error::Failed(_)), "{failed:?}");
        let trapped = call(&agent, json!({"op": "panic"})).await.unwrap_err();
        assert!(matches!(trapped, Error::Trap), "{trapped:?}");
        // After a trap the next call is as good as the first.
        let counted = call(&agent, json!({"op": "count"})).await.unwrap();
        assert_eq!(counted["count"], 1);
    }
}

#[test]
fn a_component_that_is_not_an_agent_is_refused_with_its_diagnostics() {
    let cache = tempfile::tempdir().unwrap();
    let error = LoadedAgent::load("junk", b"\0asm junk", &Tuning::default(), cache.path())
        .err()
        .expect("junk must not load");
    assert!(
        error.to_string().starts_with("junk is not a valid agent:"),
        "{error:#}"
    );
}
