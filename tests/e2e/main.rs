//! End-to-end tests: start the real `gust` binary on a free port with a temporary data
//! folder, and speak HTTP to it. Guests are built from source by `gust-test-guests`.

mod calls;
mod cli;
mod deploy;
mod guard;
mod http;
mod isolation;
mod limits;
mod mutants;
mod outbound;
mod push;
mod receiver;
mod redeploy;
mod restart;
mod runs;

mod server;
mod support;
mod triage;
mod uploads;
