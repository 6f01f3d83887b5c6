//! The `gust` binary: parse the command line, start tracing, hand over to the library.

use std::process::ExitCode;

use clap::Parser as _;

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
