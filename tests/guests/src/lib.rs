//! Paths of guest components built from source by this crate's build script, one constant
//! per component, so a test that names a missing guest does not compile.
//!
//! - `ECHO`, `ROUTER`, `TRIAGE`: the examples;
//! - `PROBE_A`, `PROBE_B`: the probe test guest, built twice with different markers;
//! - `AGENT_0_1_0`: a guest built against the agent world as it was at 0.1.0.

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
