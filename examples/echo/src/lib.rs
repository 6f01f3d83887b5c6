//! The smallest useful agent: it answers with what it was sent, the version it ran on and
//! the `marker` value from its deployment's configuration, which makes it handy for seeing
//! which deployment served a call.
//!
//! Build and deploy (from the repository root, with `gust serve` running):
//!
//! ```text
//! cargo build -p echo --release --target wasm32-wasip2
//! gust config echo --set marker=hello
//! gust deploy echo target/wasm32-wasip2/release/echo.wasm
//! gust run echo '{"say":"hi"}'
//! ```

use gust_sdk::{Context, Error};
use serde::Serialize;
use serde_json::Value;

#[derive(Serialize)]
struct Echo {
    input: Value,
    version: u32,
    marker: Option<String>,
}

#[gust_sdk::agent]
fn run(input: Value, ctx: &Context) -> Result<Echo, Error> {
    Ok(Echo {
        input,
        version: ctx.version(),
        marker: ctx.config("marker"),
    })
}
