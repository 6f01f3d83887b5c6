//! The one `bindgen!` call for the agent world (`wit/agent.wit`). WASI interfaces come from
//! wasmtime-wasi and wasmtime-wasi-http, so their resources are the ones those crates manage.

wasmtime::component::bindgen!({
    world: "gust:agent/agent@0.1.1",
    path: "../../wit",
    imports: { default: async | trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
    },
});

pub use gust::agent::host::Level;
/// The kind of a call as the guest sees it (`invocation.mode`): a sync call answered
/// inline, or a queued run.
pub use gust::agent::invocation::Mode as CallKind;
