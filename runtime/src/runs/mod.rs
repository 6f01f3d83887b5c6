//! Runs: one invocation of an agent, named by a run id.
//!
//! Sync calls are runs that live only for the request (never written to the database). Queued
//! runs with poll and push delivery build on this module: the run id format is shared so
//! that a caller sees one kind of id whichever way it called.

use uuid::Uuid;

/// A new run id: `run_` and a UUIDv7 in hex, so ids sort by creation time (which keeps the
/// newest-first listing of queued runs an index scan) and are unguessable enough to be
/// used as handles.
pub(crate) fn new_run_id() -> String {
    format!("run_{}", Uuid::now_v7().simple())
}

#[cfg(test)]
mod tests {
    use super::new_run_id;

    #[test]
    fn run_ids_are_unique_and_time_ordered() {
        let a = new_run_id();
        let b = new_run_id();
        assert_ne!(a, b);
        assert!(a.starts_with("run_") && a.len() == 36, "{a}");
        assert!(a < b, "a later id sorts after an earlier one: {a} {b}");
    }
}
