//! The `{{agent}}` agent: greets whoever it is asked to.
//!
//! `gust build` compiles it to a WebAssembly component; see README.md.

use gust_sdk::{Context, Error};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    name: Option<String>,
}

#[derive(Serialize)]
struct Output {
    greeting: String,
    version: u32,
}

#[gust_sdk::agent]
fn run(input: Input, ctx: &Context) -> Result<Output, Error> {
    let name = input
        .name
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| Error::invalid_input("`name` is missing"))?;
    ctx.info(format!("greeting {name}"));
    // Set per deployment: `gust config {{agent}} --set GREETING=Hi`, then deploy again.
    let greeting = ctx.config("GREETING").unwrap_or_else(|| "Hello".to_owned());
    Ok(Output {
        greeting: format!("{greeting}, {name}!"),
        version: ctx.version(),
    })
}
