//! Where a process's resident memory lies, read from `/proc/<pid>/smaps`: guest linear
//! memories, fiber stacks and tables (the pooling allocator's three pools), and the rest
//! (the host's heap, code, thread stacks).
//!
//! The pools cannot be asked for their resident size, but their shapes in `smaps` are
//! distinct. The memory pool is one reservation of terabytes: a guard, then per slot the
//! accessible part (anonymous, and the memory image mapped copy-on-write from the
//! precompiled artifact or a memfd) followed by gigabytes of inaccessible reservation;
//! unused slots merge into one inaccessible mapping. The stack pool alternates a 4 KiB
//! guard with a read-write stack. The table pool is one read-write mapping of hundreds of
//! MiB. The kernel places the three side by side, and often a malloc arena right after
//! them, so each is told apart by shape, not by adjacency alone.
//!
//! Two approximations, both outside guest memory and so without effect on what a call
//! costs beyond it: the topmost fiber stack can merge with the table pool's mapping (it is
//! then counted as tables), and a thread stack mapped right next to the stack pool has the
//! same shape as a fiber stack (it is then counted as one).

use anyhow::Context as _;

/// Resident KiB by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// The whole process (`Rss` of every mapping).
    pub total: u64,
    /// Guest linear memories: pages written by guests, and pages of memory images they
    /// mapped (the latter are shared with the page cache when mapped from the artifact).
    pub memories: u64,
    /// The part of `memories` that is page cache of memory images (the artifact file or a
    /// memfd), shared by every slot that maps it; pages a guest wrote are its own copies
    /// and are not counted here.
    pub shared_images: u64,
    /// Fiber stacks the calls run on.
    pub stacks: u64,
    /// Tables (function references) of instances.
    pub tables: u64,
}

impl Resident {
    /// Everything outside guest linear memories: what a call costs beyond the guest's own
    /// memory.
    #[must_use]
    pub fn beyond_memories(&self) -> u64 {
        self.total.saturating_sub(self.memories)
    }

    /// What is neither a guest memory, a stack nor a table: the host's heap and the rest.
    #[must_use]
    pub fn host(&self) -> u64 {
        self.total
            .saturating_sub(self.memories + self.stacks + self.tables)
    }
}

/// Reads process `pid`'s resident memory by kind.
///
/// # Errors
/// When `smaps` cannot be read or shows no pooling allocator.
pub fn of_process(pid: u32) -> anyhow::Result<Resident> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .with_context(|| format!("reading /proc/{pid}/smaps"))?;
    classify(&smaps)
}

#[derive(Debug)]
struct Mapping<'a> {
    start: u64,
    end: u64,
    perms: &'a str,
    path: &'a str,
    rss: u64,
    /// Resident pages that are private copies (for a file mapping: pages written to).
    anonymous_pages: u64,
}

impl Mapping<'_> {
    fn size(&self) -> u64 {
        self.end - self.start
    }
    fn inaccessible(&self) -> bool {
        self.perms == "---p"
    }
    fn image(&self) -> bool {
        self.path.starts_with("/memfd:") || self.path.ends_with(".cwasm")
    }
    fn anonymous(&self) -> bool {
        self.path.is_empty()
    }
}

const GIB: u64 = 1 << 30;
/// Read-write anonymous mappings larger than this are the table pool (4,000 tables of
/// 20,000 entries: 625 MiB). A glibc malloc heap grows to at most 64 MiB, read-write when
/// full, so the bound is twice that.
const TABLE_POOL_MIN: u64 = 128 << 20;

fn parse(smaps: &str) -> Vec<Mapping<'_>> {
    let mut mappings = Vec::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let fields: Vec<&str> = words.collect();
            mappings.push(Mapping {
                start,
                end,
                perms: fields.first().copied().unwrap_or_default(),
                // offset, device, inode, then a path for named mappings.
                path: fields.get(4).copied().unwrap_or_default(),
                rss: 0,
                anonymous_pages: 0,
            });
        } else if let Some(last) = mappings.last_mut() {
            let mut kib = || words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match first {
                "Rss:" => last.rss = kib(),
                "Anonymous:" => last.anonymous_pages = kib(),
                _ => {}
            }
        }
    }
    mappings
}

fn classify(smaps: &str) -> anyhow::Result<Resident> {
    let mappings = parse(smaps);
    let mut resident = Resident {
        total: mappings.iter().map(|m| m.rss).sum(),
        ..Resident::default()
    };

    // The run of adjacent mappings that holds the memory pool's reservation.
    let huge = |m: &Mapping<'_>| m.inaccessible() && m.anonymous() && m.size() >= GIB;
    let first_huge = mappings
        .iter()
        .position(|m| huge(m) && m.size() >= 1 << 40)
        .context("no pool reservation found (is the pooling allocator on?)")?;
    let mut run_start = first_huge;
    while run_start > 0 && mappings[run_start - 1].end == mappings[run_start].start {
        run_start -= 1;
    }
    let mut run_end = first_huge;
    while run_end + 1 < mappings.len() && mappings[run_end].end == mappings[run_end + 1].start {
        run_end += 1;
    }
    let run = &mappings[run_start..=run_end];

    // The memory pool: from its leading guard (or the table pool before it) to the last
    // slot's reservation.
    let first_slot = run.iter().position(huge).unwrap_or_default();
    let last_slot = run.iter().rposition(huge).unwrap_or_default();
    let mut pool_start = first_slot;
    while pool_start > 0 {
        let before = &run[pool_start - 1];
        if before.perms == "rw-p" && before.anonymous() && before.size() >= TABLE_POOL_MIN {
            break;
        }
        pool_start -= 1;
        if before.inaccessible() {
            break;
        }
    }
    for m in &run[pool_start..=last_slot] {
        resident.memories += m.rss;
        if m.image() {
            resident.shared_images += m.rss.saturating_sub(m.anonymous_pages);
        }
    }

    // Stacks and tables lie in the same run, outside the memory pool.
    for (i, m) in run.iter().enumerate() {
        if (pool_start..=last_slot).contains(&i) || m.perms != "rw-p" || !m.anonymous() {
            continue;
        }
        let after_guard = i > 0 && run[i - 1].inaccessible() && run[i - 1].size() == 4096;
        if m.size() >= TABLE_POOL_MIN {
            resident.tables += m.rss;
        } else if after_guard {
            resident.stacks += m.rss;
        }
    }
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One mapping in `smaps` form: `start`, size in KiB, permissions, path, Rss and
    /// Anonymous in KiB.
    fn mapping(start: u64, kib: u64, perms: &str, path: &str, rss: u64, anonymous: u64) -> String {
        let end = start + kib * 1024;
        format!(
            "{start:x}-{end:x} {perms} 00000000 00:00 {inode} {path}\nSize: {kib} kB\nRss: {rss} kB\nAnonymous: {anonymous} kB\nVmFlags: rd wr mr mw me ac\n",
            inode = u64::from(!path.is_empty())
        )
    }

    /// Appends mappings side by side from `at`.
    struct Layout {
        smaps: String,
        at: u64,
    }

    impl Layout {
        fn new() -> Self {
            Self {
                smaps: mapping(0x5000_0000, 400, "r-xp", "/usr/bin/gust", 400, 0),
                at: 0x7000_0000_0000,
            }
        }
        fn push(&mut self, kib: u64, perms: &str, path: &str, rss: u64, anonymous: u64) {
            self.smaps
                .push_str(&mapping(self.at, kib, perms, path, rss, anonymous));
            self.at += kib * 1024;
        }
        fn stacks_and_tables(&mut self) {
            for rss in [8, 12] {
                self.push(4, "---p", "", 0, 0);
                self.push(2048, "rw-p", "", rss, rss);
            }
            self.push(640_000, "rw-p", "", 16, 16);
        }
    }

    /// The layout seen on this machine with calls in flight: stacks, tables, the memory pool
    /// (guard, two used slots, one image mapped from the artifact, one from a memfd), then
    /// malloc heaps right after it, one of them full (64 MiB, all read-write).
    #[test]
    fn tells_pools_and_the_heap_apart() {
        let mut layout = Layout::new();
        layout.stacks_and_tables();
        layout.push(32_768, "---p", "", 0, 0);
        layout.push(1024, "rw-p", "", 4, 4);
        layout.push(48, "rw-p", "/data/artifacts/abc.cwasm", 48, 8);
        layout.push(16, "rw-p", "", 4, 4);
        layout.push(4_225_984, "---p", "", 0, 0);
        layout.push(1024, "rw-p", "", 4, 4);
        layout.push(48, "rw-p", "/memfd:wasm-memory-image (deleted)", 48, 0);
        layout.push(16, "rw-p", "", 8, 8);
        layout.push(8_449_915_840, "---p", "", 0, 0);
        layout.push(6808, "rw-p", "", 5364, 5364);
        layout.push(58_728, "---p", "", 0, 0);
        layout.push(65_536, "rw-p", "", 60_016, 60_016);

        let resident = classify(&layout.smaps).unwrap();
        assert_eq!(
            resident,
            Resident {
                total: 400 + 8 + 12 + 16 + 4 + 48 + 4 + 4 + 48 + 8 + 5364 + 60_016,
                memories: 4 + 48 + 4 + 4 + 48 + 8,
                shared_images: 40 + 48,
                stacks: 20,
                tables: 16,
            }
        );
        assert_eq!(resident.host(), 400 + 5364 + 60_016);
        assert_eq!(resident.beyond_memories(), 400 + 20 + 16 + 5364 + 60_016);
    }

    /// With no slot in use the pool's leading guard merges with the unused slots into one
    /// mapping: no guest memory, and the table pool before it is still tables.
    #[test]
    fn an_idle_pool_holds_no_guest_memory() {
        let mut layout = Layout::new();
        layout.stacks_and_tables();
        layout.push(17_000_000_000, "---p", "", 0, 0);
        layout.push(132, "rw-p", "", 76, 76);

        let resident = classify(&layout.smaps).unwrap();
        assert_eq!(resident.memories, 0);
        assert_eq!(resident.tables, 16);
        assert_eq!(resident.stacks, 20);
        assert_eq!(resident.host(), 400 + 76);
    }

    #[test]
    fn without_a_pool_says_so() {
        let smaps = mapping(0x5000_0000, 400, "r-xp", "/usr/bin/gust", 400, 0);
        let error = classify(&smaps).unwrap_err();
        assert!(error.to_string().contains("no pool reservation"), "{error}");
    }
}
