//! What `#[gust_sdk::agent]` expands to calls into this module.

#[path = "bindings.rs"]
pub mod bindings;

use crate::{Context, Error};
pub use bindings::__export_agent as export;
pub use bindings::Guest;
use bindings::gust::agent::invocation::{Request, Response, RunError};

const JSON: &str = "application/json";
/// The type of a run that emitted its output and returned nothing.
const TEXT: &str = "text/plain; charset=utf-8";

/// Decodes the input, runs the author's function and encodes its answer.
pub fn dispatch<I, O, F>(request: Request, handler: F) -> Result<Response, RunError>
where
    I: serde::de::DeserializeOwned,
    O: serde::Serialize,
    F: FnOnce(I, &Context) -> Result<O, Error>,
{
    let ctx = Context::new(&request);
    // An empty body reads as `null` so that `Option<T>` and `()` inputs accept a bare POST.
    let raw: &[u8] = if request.input.iter().all(u8::is_ascii_whitespace) {
        b"null"
    } else {
        &request.input
    };
    let input: I = serde_json::from_slice(raw).map_err(|e| {
        RunError::InvalidInput(format!("input is not valid JSON for this agent: {e}"))
    })?;
    match handler(input, &ctx) {
        Ok(output) => {
            let output = serde_json::to_vec(&output).map_err(|e| {
                RunError::Failed(format!("could not encode the output as JSON: {e}"))
            })?;
            // A streamed answer is its chunks; a trailing `null` would only corrupt it.
            if ctx.emitted() && output == b"null" {
                return Ok(Response {
                    output: Vec::new(),
                    content_type: TEXT.to_owned(),
                });
            }
            Ok(Response {
                output,
                content_type: JSON.to_owned(),
            })
        }
        Err(Error::InvalidInput(m)) => Err(RunError::InvalidInput(m)),
        Err(Error::Failed(m)) => Err(RunError::Failed(m)),
    }
}
