//! The `gust` binary: parse the command line, start tracing, hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;

// jemalloc rather than glibc's malloc. With 10,000 calls waiting at once, glibc spent 39–49 µs
// of every call in `_int_malloc`'s slow paths (every tokio task is a 128-byte-aligned
// allocation, which glibc 2.36 serves without its per-thread cache), its arenas grew by
// `mprotect` in small steps against the other threads' page faults, and the host used
// 380–470 µs of CPU per call against 330–350 with jemalloc (BENCHMARKS.md, "The allocator").
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = gust_cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("gust: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the trace exporter sends through it.
    let telemetry = {
        let _inside = runtime.enter();
        match gust_cli::telemetry::init(&cli) {
            Ok(telemetry) => telemetry,
            Err(e) => {
                eprintln!("gust: {e:#}");
                return ExitCode::from(2);
            }
        }
    };
    let code = runtime.block_on(gust_cli::run(cli));
    // The last spans leave while the runtime still runs.
    drop(telemetry);
    code
}
