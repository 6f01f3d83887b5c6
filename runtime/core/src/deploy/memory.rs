//! The host's memory budget: admission bounds instances by the memory they actually commit,
//! not by what their deployments may grow to.
//!
//! A deployment's `memory_mib` is a ceiling its guests rarely reach: an agent waiting on a
//! model holds tens of KiB (the memory benchmark in BENCHMARKS.md), while reserving its
//! 256 MiB for each of 10,000 waiting calls would take 2.5 TiB. So the budget is checked
//! against the memory the process commits (its private resident pages and page tables, see
//! `own_committed`), read from `/proc/self/status` at most once per [`SAMPLE_EVERY`], less
//! the pages the instance pool keeps in freed slots for reuse.
//! Instances the reading cannot show yet — admitted since it was taken, or instantiating when
//! it was — count at the committed memory per started instance seen so far, so a burst
//! admits against the budget, not against a stale reading. What an instance grows to after
//! it starts shows in the next reading; the overshoot is what admitted instances grow by
//! within 10 ms.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How stale a reading of the committed memory may be.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Instances admitted and still instantiating, at most. Instantiation is CPU work (15 µs for
/// a Rust guest, about 0.75 ms for componentize-py's), so more at once would only queue on
/// the cores.
pub(crate) const STARTING: usize = 256;

/// Bounds of the per-instance estimate, so one odd reading (a compile's heap just freed,
/// say) can neither open the gate wide nor shut it.
const MIN_PER_INSTANCE: u64 = 64 << 10;
const MAX_PER_INSTANCE: u64 = 64 << 20;

/// The default budget: three quarters of the memory this process may use (the cgroup's
/// limit when it has one, else the machine's), leaving the rest to the kernel's page cache
/// (which holds the compiled artifacts the instances map) and to the host itself.
#[must_use]
pub fn default_budget() -> u64 {
    let machine = meminfo_total().unwrap_or(4 << 30);
    let limit = cgroup_limit().map_or(machine, |cgroup| cgroup.min(machine));
    limit / 4 * 3
}

/// Where the committed memory is read from: the process's own in `gust serve`, a script in
/// tests.
pub(crate) type ResidentSource = Box<dyn Fn() -> Option<u64> + Send + Sync>;

/// See the module docs.
pub(crate) struct MemoryBudget {
    budget: u64,
    source: ResidentSource,
    /// Instances admitted and not yet dropped.
    admitted: AtomicUsize,
    /// Instances ever admitted: those admitted since the last reading are not in it.
    admissions: AtomicU64,
    /// Of those, the ones still instantiating.
    starting: AtomicUsize,
    reading: Mutex<Reading>,
}

struct Reading {
    at: Option<Instant>,
    resident: u64,
    /// `admissions` when it was read.
    admissions: u64,
    /// Instances still instantiating when it was read: what they grow to is not in it yet.
    starting: u64,
    /// The committed memory with no instance started: what the host holds by itself.
    baseline: u64,
    per_instance: u64,
}

impl MemoryBudget {
    /// A budget of `budget` bytes against the memory this process commits, less what
    /// `reusable` says is kept resident for reuse (the instance pool's freed slots keep
    /// their pages, up to `keep_resident`: a new instance reuses them rather than adding to
    /// them, so they must not close the gate after a burst).
    pub(crate) fn new(budget: u64, reusable: Box<dyn Fn() -> u64 + Send + Sync>) -> Self {
        Self::with_source(
            budget,
            Box::new(move || Some(own_committed()?.saturating_sub(reusable()))),
        )
    }

    pub(crate) fn with_source(budget: u64, source: ResidentSource) -> Self {
        Self {
            budget,
            source,
            admitted: AtomicUsize::new(0),
            admissions: AtomicU64::new(0),
            starting: AtomicUsize::new(0),
            reading: Mutex::new(Reading {
                at: None,
                resident: 0,
                admissions: 0,
                starting: 0,
                baseline: 0,
                per_instance: 1 << 20,
            }),
        }
    }

    pub(crate) fn budget(&self) -> u64 {
        self.budget
    }

    /// Whether one more instance fits: the committed memory, plus this one and the instances
    /// the reading cannot show (admitted since it was taken, or instantiating when it was)
    /// at the estimate per instance, is within the budget.
    pub(crate) fn fits(&self) -> bool {
        let mut reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        if reading.at.is_none_or(|at| at.elapsed() >= SAMPLE_EVERY) {
            self.refresh(&mut reading);
        }
        let since = self
            .admissions
            .load(Ordering::Relaxed)
            .saturating_sub(reading.admissions);
        let unseen = since.saturating_add(reading.starting);
        let projected = reading.resident.saturating_add(
            unseen
                .saturating_add(1)
                .saturating_mul(reading.per_instance),
        );
        projected <= self.budget
    }

    fn refresh(&self, reading: &mut Reading) {
        reading.at = Some(Instant::now());
        reading.admissions = self.admissions.load(Ordering::Relaxed);
        reading.starting = self.starting.load(Ordering::Relaxed) as u64;
        let Some(resident) = (self.source)() else {
            // No reading (not Linux): the budget cannot be checked, and the pool's slots
            // still bound the instances (beside the instances admitted within one reading's
            // time, counted at the estimate per instance).
            reading.resident = 0;
            return;
        };
        reading.resident = resident;
        let started = self
            .admitted
            .load(Ordering::Relaxed)
            .saturating_sub(self.starting.load(Ordering::Relaxed)) as u64;
        if started == 0 || resident < reading.baseline {
            reading.baseline = resident;
        } else if started >= 8 {
            reading.per_instance =
                ((resident - reading.baseline) / started).clamp(MIN_PER_INSTANCE, MAX_PER_INSTANCE);
        }
    }

    /// Counts an admitted instance until the first guard is dropped, and as starting until
    /// the second is.
    pub(crate) fn charge(self: &Arc<Self>) -> (Charged, Starting) {
        self.admitted.fetch_add(1, Ordering::Relaxed);
        self.admissions.fetch_add(1, Ordering::Relaxed);
        self.starting.fetch_add(1, Ordering::Relaxed);
        (Charged(Arc::clone(self)), Starting(Arc::clone(self)))
    }

    /// The latest reading of the committed memory and the estimate per instance, in bytes.
    pub(crate) fn reading(&self) -> (u64, u64) {
        let reading = self.reading.lock().unwrap_or_else(|e| e.into_inner());
        (reading.resident, reading.per_instance)
    }
}

/// One admitted instance in the budget's counts.
pub(crate) struct Charged(Arc<MemoryBudget>);

impl Drop for Charged {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One admitted instance not yet instantiated: dropped once it is, when its memory starts
/// to show in the committed memory.
pub(crate) struct Starting(Arc<MemoryBudget>);

impl Drop for Starting {
    fn drop(&mut self) {
        self.0.starting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The memory this process commits (Linux), in bytes: its private resident pages
/// (`RssAnon`) and its page tables (`VmPTE`), from `/proc/self/status`.
///
/// Not its resident size: that counts a page once per mapping it is mapped into. A guest's
/// memory image is mapped copy-on-write into every slot an instance of it uses, so each page
/// of the image a guest reads without writing counts again for every instance, though the
/// machine holds it once, whether as page cache of the compiled artifact or as the
/// component's one sealed memfd (made when the host compiled it and kept it loaded); those
/// pages are bounded by the components deployed, not by calls, and are left to the quarter
/// of memory [`default_budget`] keeps outside the budget. A waiting componentize-py call
/// reads about 6.8 MiB of its 12 MiB image without writing it and writes 1.4 MiB: its
/// resident size grew by 8.7 MiB, while the machine's memory grew by about 2 MiB (the
/// written pages, its tables, its share of the host's heap). Pages a guest writes are
/// private copies, counted here, as are tables, stacks and the host's heap. The page tables
/// are counted because the reads cost them per mapping (8 bytes a page): a guest that reads
/// a large image and waits commits page tables and little else. Guests cannot grow shared
/// memory: linear memories, tables and stacks are private anonymous mappings.
fn own_committed() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((kib("RssAnon:")? + kib("VmPTE:")?) << 10)
}

fn meminfo_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// The cgroup v2 memory limit of this process, when one is set.
fn cgroup_limit() -> Option<u64> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).ok()?;
    max.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scripted(budget: u64) -> (Arc<MemoryBudget>, Arc<AtomicU64>) {
        let resident = Arc::new(AtomicU64::new(100 << 20));
        let source = Arc::clone(&resident);
        let budget = MemoryBudget::with_source(
            budget,
            Box::new(move || Some(source.load(Ordering::Relaxed))),
        );
        (Arc::new(budget), resident)
    }

    #[test]
    fn instances_fit_while_resident_memory_and_starting_ones_are_within_the_budget() {
        let (budget, resident) = scripted(110 << 20);
        // 100 MiB resident, 1 MiB estimated per instance: ten fit while they start.
        let (charged, starting): (Vec<_>, Vec<_>) = (0..10)
            .map(|_| {
                assert!(budget.fits());
                budget.charge()
            })
            .unzip();
        assert!(
            !budget.fits(),
            "ten starting instances fill the last 10 MiB"
        );
        // They start, and each turns out to hold 256 KiB.
        drop(starting);
        resident.store((100 << 20) + 10 * (256 << 10), Ordering::Relaxed);
        std::thread::sleep(SAMPLE_EVERY);
        assert!(budget.fits());
        assert_eq!(budget.reading().1, 256 << 10, "learned from the reading");
        // The process grows past the budget by itself: nothing more fits.
        resident.store(111 << 20, Ordering::Relaxed);
        std::thread::sleep(SAMPLE_EVERY);
        assert!(!budget.fits());
        // Calls end, memory is given back, and there is room again.
        drop(charged);
        resident.store(100 << 20, Ordering::Relaxed);
        std::thread::sleep(SAMPLE_EVERY);
        assert!(budget.fits());
    }

    /// A Rust guest instantiates in about 15 µs, so hundreds can be admitted and started
    /// between two readings. They were not counted once started, and more than 10 fitted
    /// where 10 did (50 in 123 µs, in a review's run).
    #[test]
    fn instances_admitted_since_the_reading_count_once_started() {
        let (budget, _resident) = scripted(110 << 20);
        assert!(budget.fits());
        // No new reading during the test: it shows 100 MiB however long the test takes.
        budget.reading.lock().unwrap().at = Some(Instant::now() + Duration::from_secs(3600));
        let mut held = Vec::new();
        while budget.fits() {
            let (charged, starting) = budget.charge();
            drop(starting);
            held.push(charged);
            assert!(
                held.len() <= 10,
                "{} fit in 10 MiB at 1 MiB each",
                held.len()
            );
        }
        assert_eq!(held.len(), 10);
    }

    #[test]
    fn the_default_budget_follows_the_machine() {
        let total = meminfo_total().expect("Linux has /proc/meminfo");
        let budget = default_budget();
        assert!(budget > 0 && budget <= total / 4 * 3, "{budget} of {total}");
        assert!(own_committed().is_some_and(|r| r > 0));
    }
}
