//! An upload's bytes, as `POST …/versions` checks them: classified, compiled and checked
//! against the agent world. Whatever the bytes, the check answers (a component or
//! diagnostics) and never panics.

#![no_main]

use std::sync::{Arc, OnceLock};

use gust_wasm::check::{self, CheckError};
use gust_wasm::{OutboundSettings, Stats, Tuning, WasmEngine};
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static WasmEngine {
    static ENGINE: OnceLock<WasmEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let cache = std::env::temp_dir().join(format!("gust-fuzz-cache-{}", std::process::id()));
        WasmEngine::new(
            &cache,
            Arc::new(Stats::default()),
            256 << 20,
            OutboundSettings::default(),
            &Tuning::default(),
        )
        .expect("an engine")
    })
}

fuzz_target!(|bytes: &[u8]| {
    match check::compile_and_check(engine(), bytes) {
        Ok(_) => {}
        Err(CheckError::Invalid(diagnostics)) => {
            assert!(
                !diagnostics.is_empty(),
                "a refusal names at least one problem"
            );
            for d in &diagnostics {
                assert!(!d.message.is_empty(), "every diagnostic says what is wrong");
            }
        }
        Err(CheckError::Internal(e)) => panic!("an internal error on client bytes: {e:#}"),
    }
});
