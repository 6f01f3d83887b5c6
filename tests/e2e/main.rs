//! End-to-end tests: start the real `gust` binary on a free port with a temporary data
//! folder, and speak HTTP to it. Rust guests are built from source by `gust-test-guests`,
//! Python and JavaScript guests by `componentize` (with the code behind `gust build`).

mod calls;
mod cli;
mod cli_habits;
mod cluster;
mod console;
mod deploy;
mod embed;
mod events;
mod guard;
mod http;
mod isolation;
mod languages;
mod limits;
mod logs;
mod metrics;
mod mutants;
mod once;
mod openapi;
mod outbound;
mod push;
mod readme;
mod redeploy;
mod restart;
mod runs;
mod scaffold;
mod serve_config;
mod server;
mod streaming;
mod support;
mod traces;
mod triage;
mod uploads;
mod waiting;
