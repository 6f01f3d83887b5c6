//! What gust's echo agent does, as a `wasi:http/proxy` component for `wasmtime serve`: read
//! the request body whole and answer it inside the same JSON envelope
//! (`{"input":…,"version":1,"marker":null}`). The HTTP benchmark serves it beside gust.
//!
//! Build: `cargo build -p wasi-http-echo --release --target wasm32-wasip2`.

use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct Echo;

wasi::http::proxy::export!(Echo);

impl wasi::exports::http::incoming_handler::Guest for Echo {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let input = read_body(&request).unwrap_or_default();
        let mut answer = Vec::with_capacity(input.len() + 40);
        answer.extend_from_slice(b"{\"input\":");
        answer.extend_from_slice(if input.is_empty() { b"null" } else { &input });
        answer.extend_from_slice(b",\"version\":1,\"marker\":null}");

        let headers = Fields::new();
        // A header name and value that are always valid: this cannot fail.
        let _ = headers.set("content-type", &[b"application/json".to_vec()]);
        let response = OutgoingResponse::new(headers);
        let Ok(body) = response.body() else { return };
        ResponseOutparam::set(response_out, Ok(response));
        if let Ok(out) = body.write() {
            for chunk in answer.chunks(4096) {
                if out.blocking_write_and_flush(chunk).is_err() {
                    return;
                }
            }
        }
        let _ = OutgoingBody::finish(body, None);
    }
}

/// The request body, whole; `None` when it cannot be read.
fn read_body(request: &IncomingRequest) -> Option<Vec<u8>> {
    let body = request.consume().ok()?;
    let stream = body.stream().ok()?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(wasi::io::streams::StreamError::Closed) => break,
            Err(_) => return None,
        }
    }
    Some(bytes)
}
