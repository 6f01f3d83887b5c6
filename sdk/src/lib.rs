//! Write gust agents in Rust: WebAssembly components of the agent world (`wit/agent.wit`)
//! that a gust host deploys and calls.
//!
//! An agent is one function from a JSON input to a JSON output. Mark it with
//! [`#[gust_sdk::agent]`](agent) and build the crate as a `cdylib` for `wasm32-wasip2`:
//!
//! ```
//! use gust_sdk::{Context, Error};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Ask {
//!     question: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Answer {
//!     answer: String,
//!     version: u32,
//! }
//!
//! #[gust_sdk::agent]
//! fn run(input: Ask, ctx: &Context) -> Result<Answer, Error> {
//!     if input.question.trim().is_empty() {
//!         return Err(Error::invalid_input("`question` is empty"));
//!     }
//!     ctx.info(format!("answering {:?}", input.question));
//!     let tone = ctx.config("TONE").unwrap_or_else(|| "plain".to_owned());
//!     Ok(Answer { answer: format!("({tone}) you asked: {}", input.question), version: ctx.version() })
//! }
//! # fn main() {}
//! ```
//!
//! - Input that is not valid JSON for the input type is answered as `invalid_input` (HTTP 422)
//!   before your function runs; an empty body is read as JSON `null`, so an `Option<T>` or
//!   `()` input accepts it.
//! - The output is serialized as JSON and sent with `Content-Type: application/json`.
//! - [`Error::Failed`] becomes HTTP 502 `failed` with your message; a panic becomes a `trap`
//!   (HTTP 502, no detail), so return errors rather than panicking.
//! - Every call runs on a fresh instance: globals and statics do not survive between calls.
//! - [`Context::emit`] streams output as it is produced (a chat agent's tokens): callers that
//!   stream the call see each chunk at once; the output is the chunks followed by what the
//!   function returns (`()` returns nothing more, and the answer is `text/plain`).
//!
//! Raw bindings stay private; the WIT contract lives in the repository's `wit/` folder.

mod context;
mod error;
pub mod http;

pub use context::{Context, Level, Mode};
pub use error::{Error, ResultExt};

/// Marks the function that handles each run.
///
/// The function takes the deserialized input and a [`&Context`](Context) and returns
/// `Result<Output, Error>`, where the input implements `serde::de::DeserializeOwned` and the
/// output `serde::Serialize`. Exactly one function per component carries this attribute.
pub use gust_sdk_macros::agent;

/// Glue used by the code that [`agent`] expands to. Not a public API: it changes without
/// notice.
#[doc(hidden)]
#[path = "glue.rs"]
pub mod __private;
