//! What the host asks of the operating system at start: file descriptors and a listen
//! backlog sized for thousands of calls in flight.
//!
//! A call waiting on a model holds a descriptor for its connection, and one more for each
//! outgoing connection of its guest; 10,000 such calls need over 20,000. Linux starts
//! processes with a soft limit of 1,024 open files, well below the hard limit an operator
//! sets (systemd's `LimitNOFILE`, `ulimit -Hn`), so the host raises the soft limit to the
//! hard one, as servers built for many connections do.
//!
//! Each instance also takes memory mappings, which Linux counts per process against
//! `vm.max_map_count` (65,530 by default): the pool maps a guard page beside each fiber stack
//! at start (two mappings per instance slot), and a memory slot in use is split into about
//! four (the component's image, the pages made accessible, the reserved rest). Past the
//! limit, instantiating fails with "Cannot allocate memory"; the default instance count is
//! sized to fit under it, as the connection defaults are to the open-file limit.

use std::net::SocketAddr;

use anyhow::Context as _;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::net::{TcpListener, TcpSocket};

/// Connections waiting to be accepted. The kernel caps it at `net.core.somaxconn` (4,096
/// on current kernels); asking for more lets an operator raise that sysctl without a new
/// build.
const LISTEN_BACKLOG: u32 = 65_535;

/// Connections at most, inbound and per outgoing origin, when the open-file limit allows.
const MOST_CONNECTIONS: usize = 16_384;

/// Descriptors kept for the host's own files (database, artifacts, logs, the runtime).
const OWN_FILES: u64 = 256;

/// The defaults of `--max-connections` and `--outbound-connections-per-host` for a process
/// that may open `open_files` files: 16,384 each, or, where the limit is lower, three fifths
/// and two fifths of what the host's own files leave, so that a host full of calls each
/// waiting on one upstream never runs out of descriptors (calls past the outbound bound wait
/// for a connection instead of failing to open one).
#[must_use]
pub fn connection_defaults(open_files: Option<u64>) -> (usize, usize) {
    let Some(open_files) = open_files else {
        return (MOST_CONNECTIONS, MOST_CONNECTIONS);
    };
    let usable = open_files.saturating_sub(OWN_FILES);
    let share = |fifths: u64| {
        usize::try_from(usable / 5 * fifths)
            .unwrap_or(usize::MAX)
            .clamp(1, MOST_CONNECTIONS)
    };
    (share(3), share(2))
}

/// Raises the soft open-file limit to the hard one; returns the limit in force (`None`:
/// unlimited).
pub fn raise_open_files() -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!("could not raise the open-file limit to its hard limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Says so when `open_files` cannot hold `max_connections` calls and `per_origin` outgoing
/// connections to one origin: past it, accepting or connecting fails with "too many open
/// files".
pub(crate) fn check_open_files(open_files: Option<u64>, max_connections: usize, per_origin: usize) {
    let wanted = (max_connections as u64)
        .saturating_add(per_origin as u64)
        .saturating_add(OWN_FILES);
    if let Some(open_files) = open_files.filter(|&n| n < wanted) {
        tracing::warn!(
            "the open-file limit is {open_files}: {max_connections} connections and {per_origin} outgoing ones to one host need about {wanted}; raise the hard limit (LimitNOFILE=, ulimit -Hn) or lower --max-connections and --outbound-connections-per-host"
        );
    }
}

/// Memory mappings of a stack slot (the stack and its guard page, from the start) and of a
/// linear-memory slot once used (the image, two runs of accessible pages, the reserved
/// rest), counted in `/proc/<pid>/maps` with the Rust waiting echo at 10,000 calls in flight;
/// table slots took none of their own.
const MAPPINGS_PER_STACK: u64 = 2;
const MAPPINGS_PER_MEMORY: u64 = 4;

/// An instance of a guest with one linear memory (Rust, JavaScript; componentize-py's
/// Python has two, which the memory slots below bound).
const MAPPINGS_PER_INSTANCE: u64 = MAPPINGS_PER_STACK + MAPPINGS_PER_MEMORY;

/// Pool slots beyond `--max-instances`: the warm standby's.
const STANDBY_SLOTS: u64 = gust_wasm::standby::HOST_WIDE as u64;

/// Mappings kept for the rest of the process: an idle host with a 1,000-instance pool holds
/// 2,209, 2,128 of them its stacks; threads of the blocking pool (name lookups, files) take
/// two each, up to 512 of them.
const OWN_MAPPINGS: u64 = 2048;

/// `vm.max_map_count`, when it can be read; read once, by whichever of the CLI's defaults and
/// the start-up check asks first.
#[must_use]
pub fn max_map_count() -> Option<u64> {
    static READ: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *READ.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/vm/max_map_count")
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

/// The default of `--max-instances`: `most`, or as many as `max_map_count` mappings hold
/// with their standby slots.
#[must_use]
pub fn instances_default(most: usize, max_map_count: Option<u64>) -> usize {
    max_map_count.map_or(most, |limit| {
        usize::try_from(
            (limit.saturating_sub(OWN_MAPPINGS) / MAPPINGS_PER_INSTANCE)
                .saturating_sub(STANDBY_SLOTS),
        )
        .unwrap_or(usize::MAX)
        .clamp(1, most)
    })
}

/// The linear-memory slots `max_map_count` holds beside the stacks of `instances` (and their
/// standby slots), when it bounds them: a slot once used keeps its mappings, and slots used
/// by different components over time add up to the pool's size. `None` when the limit is
/// unknown or does not hold one each.
#[must_use]
pub fn memories_default(instances: usize, max_map_count: Option<u64>) -> Option<u32> {
    let limit = max_map_count?;
    let stacks = (instances as u64 + STANDBY_SLOTS).saturating_mul(MAPPINGS_PER_STACK);
    let memories = limit.saturating_sub(OWN_MAPPINGS).saturating_sub(stacks) / MAPPINGS_PER_MEMORY;
    // Fewer than one each: `--max-instances` was set past the limit (the host warns); the
    // memories are not what to cut then.
    (memories >= instances as u64 + STANDBY_SLOTS)
        .then(|| u32::try_from(memories).unwrap_or(u32::MAX))
}

/// Says so when `max_map_count` cannot hold `instances` (past it, instantiating fails with
/// "Cannot allocate memory"), or holds fewer than `default` (the default was lowered to fit).
pub(crate) fn check_map_count(max_map_count: Option<u64>, instances: usize, default: usize) {
    let Some(limit) = max_map_count else {
        return;
    };
    let wanted =
        |n: usize| (n as u64 + STANDBY_SLOTS).saturating_mul(MAPPINGS_PER_INSTANCE) + OWN_MAPPINGS;
    if limit < wanted(instances) {
        tracing::warn!(
            "vm.max_map_count is {limit}: {instances} instances take about {} memory mappings, and instantiating past the limit fails; raise it (sysctl -w vm.max_map_count=262144, deploy/60-gust.conf) or lower --max-instances",
            wanted(instances)
        );
    } else if limit < wanted(default) {
        tracing::info!(
            "vm.max_map_count is {limit}: instances at once default to {instances}, not {default}; raise it (sysctl -w vm.max_map_count=262144, deploy/60-gust.conf) for more"
        );
    }
}

/// A listener on `addr` with the large backlog above.
pub(crate) fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating the listening socket")?;
    // As std's and tokio's `bind` do: a restarted host can bind while the previous one's
    // connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
        let hard = getrlimit(Resource::Nofile).maximum;
        let raised = raise_open_files();
        assert_eq!(raised, hard);
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
    }

    #[test]
    fn connection_defaults_fit_the_open_file_limit() {
        assert_eq!(connection_defaults(None), (16_384, 16_384));
        assert_eq!(connection_defaults(Some(1 << 20)), (16_384, 16_384));
        // This machine's hard limit: 10,000 calls waiting on one upstream fit.
        let (inbound, outbound) = connection_defaults(Some(20_000));
        assert_eq!((inbound, outbound), (11_844, 7_896));
        assert!(inbound as u64 + outbound as u64 + OWN_FILES <= 20_000);
        assert_eq!(connection_defaults(Some(100)), (1, 1));
    }

    #[test]
    fn the_instance_default_fits_the_map_count() {
        assert_eq!(instances_default(12_288, None), 12_288);
        assert_eq!(instances_default(12_288, Some(1 << 20)), 12_288);
        // Linux's default: the pool's stacks and a memory slot in use for each fit.
        let fit = instances_default(12_288, Some(65_530));
        assert_eq!(fit, 10_516);
        let memories = memories_default(fit, Some(65_530)).unwrap();
        assert!(memories as usize >= fit + STANDBY_SLOTS as usize);
        let mappings = (fit as u64 + STANDBY_SLOTS) * MAPPINGS_PER_STACK
            + u64::from(memories) * MAPPINGS_PER_MEMORY
            + OWN_MAPPINGS;
        assert!(mappings <= 65_530, "{mappings}");
        assert_eq!(instances_default(12_288, Some(100)), 1);
        assert_eq!(memories_default(12_288, None), None);
        assert_eq!(
            memories_default(12_288, Some(65_530)),
            None,
            "past the limit"
        );
    }

    #[tokio::test]
    async fn the_listener_accepts() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (_client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        accepted.unwrap();
    }
}
