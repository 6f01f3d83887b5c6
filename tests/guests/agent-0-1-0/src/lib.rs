//! A guest of the agent world exactly as it was published at 0.1.0: `wit/agent.wit` here is
//! a frozen copy of that version (never edit it; `wit/deps` is the repository's WASI
//! packages, which 0.1.0 imported at the same versions). It uses every host function 0.1.0
//! had — `log`, `config`, `progress` — and answers its input back, so a test can show that a
//! host serving a newer 0.1.x still links and runs guests built before that version.
//!
//! Bindings come straight from wit-bindgen, not from the SDK: the SDK always follows the
//! current world.
#![expect(
    clippy::too_many_arguments,
    reason = "the generated export glue mirrors the canonical ABI"
)]

wit_bindgen::generate!({
    world: "gust:agent/agent@0.1.0",
    path: "wit",
    generate_all,
});

use gust::agent::host;

struct Guest01;

impl Guest for Guest01 {
    fn run(request: Request) -> Result<Response, RunError> {
        let input: serde_json::Value = serde_json::from_slice(&request.input)
            .map_err(|e| RunError::InvalidInput(format!("input: {e}")))?;
        host::log(
            host::Level::Info,
            &format!("0.1.0 guest ran {}", request.run_id),
        );
        host::progress(1.0, "done");
        let answer = serde_json::json!({
            "world": "gust:agent@0.1.0",
            "input": input,
            "marker": host::config("marker"),
        });
        Ok(Response {
            output: answer.to_string().into_bytes(),
            content_type: "application/json".to_owned(),
        })
    }
}

export!(Guest01);
