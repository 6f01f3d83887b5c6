//! A bare wasmtime embedding of the agent world: store data with nothing but what a guest's
//! imports need (a WASI context made on first use, wasi:http's context, a resource table),
//! WASI and wasi:http linked as wasmtime-wasi and wasmtime-wasi-http provide them, the agent
//! world's host interface as plain functions (`config` answers `none`), and gust's epoch
//! deadline. What it costs per call is wasmtime's own work under an engine configuration:
//! the floor of any host built on this wasmtime. Shared by the criterion bench
//! (`benches/call.rs`) and the HTTP benchmark's `hyper_wasmtime` server
//! (`examples/hyper_wasmtime.rs`).

use gust_wasm::Tuning;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

// The agent world, typed (gust's own bindings are private to its runtime).
wasmtime::component::bindgen!({
    world: "gust:agent/agent@0.1.1",
    path: "../wit",
    exports: { default: async },
});

use gust::agent::host::Level;
use gust::agent::invocation::Mode;

/// The store data (see the module's comment).
pub(crate) struct Bare {
    wasi: Option<WasiCtx>,
    http: WasiHttpCtx,
    table: ResourceTable,
}

impl Bare {
    fn new() -> Self {
        Self {
            wasi: None,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
        }
    }
}

impl gust::agent::host::Host for Bare {
    fn log(&mut self, _level: Level, _message: String) {}

    fn config(&mut self, _key: String) -> Option<String> {
        None
    }

    fn progress(&mut self, _fraction: f32, _message: String) {}

    fn emit(&mut self, _chunk: Vec<u8>) {}
}

impl gust::agent::invocation::Host for Bare {}

impl WasiHttpView for Bare {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasiView for Bare {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: self
                .wasi
                .get_or_insert_with(|| WasiCtxBuilder::new().build()),
            table: &mut self.table,
        }
    }
}

/// An agent compiled and linked in a bare embedding, ready to instantiate per call.
pub(crate) struct BareAgent {
    engine: Engine,
    pre: AgentPre<Bare>,
    epochs: bool,
}

impl BareAgent {
    /// Compiles `bytes` on an engine with `tuning`'s settings (and its epoch ticker, when it
    /// interrupts by epochs) and links it.
    ///
    /// # Panics
    /// When the component does not compile or link: a benchmark cannot go on without it.
    pub(crate) fn new(tuning: &Tuning, bytes: &[u8]) -> Self {
        let max_memory = (gust_model::DEFAULT_MEMORY_MIB as usize) << 20;
        let engine = Engine::new(&tuning.wasmtime_config(max_memory)).expect("an engine");
        if tuning.epoch_interruption {
            gust_wasm::engine::start_epoch_ticker(&engine);
        }
        let component = Component::new(&engine, bytes).expect("the component compiles");
        let mut linker = Linker::<Bare>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("linking WASI");
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .expect("linking wasi:http");
        gust::agent::host::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .expect("linking the host interface");
        gust::agent::invocation::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .expect("linking the invocation interface");
        let pre = AgentPre::new(
            linker
                .instantiate_pre(&component)
                .expect("pre-instantiated"),
        )
        .expect("the agent world's exports");
        Self {
            engine,
            pre,
            epochs: tuning.epoch_interruption,
        }
    }

    /// A sync call's request for `input`.
    pub(crate) fn request(input: Vec<u8>) -> Request {
        Request {
            input,
            content_type: "application/json".to_owned(),
            agent: "echo".to_owned(),
            version: 1,
            run_id: "run_0".to_owned(),
            mode: Mode::Sync,
            attempt: 1,
            deadline_ms: None,
        }
    }

    /// Store + instantiate + call + drop: the agent's output.
    ///
    /// # Panics
    /// When the guest traps or fails.
    pub(crate) async fn call(&self, request: &Request) -> Vec<u8> {
        let mut store = Store::new(&self.engine, Bare::new());
        if self.epochs {
            store.set_epoch_deadline(1);
            store.epoch_deadline_async_yield_and_update(1);
        }
        let agent = self
            .pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiated");
        agent
            .call_run(&mut store, request)
            .await
            .expect("no trap")
            .expect("the echo answers")
            .output
    }
}
