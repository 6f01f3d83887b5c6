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

use anyhow::{Context as _, ensure};

/// Resident KiB by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    /// The whole process (`Rss` of every mapping).
    pub total: u64,
    /// Guest linear memories: pages written by guests, and pages of memory images they
    /// mapped (the latter are shared with the page cache when mapped from the artifact).
    pub memories: u64,
    /// The part of `memories` mapped from memory images (file or memfd).
    pub memory_images: u64,
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
/// Read-write anonymous mappings this large are the table pool (4,000 tables of 20,000
/// entries); malloc arenas and thread stacks are far smaller.
const TABLE_POOL_MIN: u64 = 64 << 20;

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
            });
        } else if first == "Rss:"
            && let Some(last) = mappings.last_mut()
        {
            last.rss = words.next().and_then(|v| v.parse().ok()).unwrap_or(0);
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
            resident.memory_images += m.rss;
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
    ensure!(
        resident.memories + resident.stacks + resident.tables <= resident.total,
        "the pools' shares exceed the process's resident memory"
    );
    Ok(resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One mapping in `smaps` form: `start`, size in KiB, permissions, path, Rss in KiB.
    fn mapping(start: u64, kib: u64, perms: &str, path: &str, rss: u64) -> String {
        let end = start + kib * 1024;
        format!(
            "{start:x}-{end:x} {perms} 00000000 00:00 {inode} {path}\nSize: {kib} kB\nRss: {rss} kB\n",
            inode = u64::from(!path.is_empty())
        )
    }

    /// The layout seen on this machine: stacks, tables, the memory pool (guard, two used
    /// slots, one mapped from the artifact), then a malloc arena right after it.
    #[test]
    fn tells_pools_and_the_heap_apart() {
        let mut at = 0x7000_0000_0000_u64;
        let mut smaps = mapping(0x5000_0000, 400, "r-xp", "/usr/bin/gust", 400);
        let mut push = |kib: u64, perms: &str, path: &str, rss: u64| {
            smaps.push_str(&mapping(at, kib, perms, path, rss));
            at += kib * 1024;
        };
        for rss in [8, 12] {
            push(4, "---p", "", 0);
            push(2048, "rw-p", "", rss);
        }
        push(642_048, "rw-p", "", 16);
        push(32_768, "---p", "", 0);
        push(1024, "rw-p", "", 4);
        push(48, "rw-p", "/data/artifacts/abc.cwasm", 48);
        push(16, "rw-p", "", 4);
        push(4_225_984, "---p", "", 0);
        push(1024, "rw-p", "", 4);
        push(48, "rw-p", "/memfd:wasm-memory-image (deleted)", 48);
        push(16, "rw-p", "", 8);
        push(8_449_915_840, "---p", "", 0);
        push(6808, "rw-p", "", 5364);
        push(58_728, "---p", "", 0);

        let resident = classify(&smaps).unwrap();
        assert_eq!(
            resident,
            Resident {
                total: 400 + 8 + 12 + 16 + 4 + 48 + 4 + 4 + 48 + 8 + 5364,
                memories: 4 + 48 + 4 + 4 + 48 + 8,
                memory_images: 96,
                stacks: 20,
                tables: 16,
            }
        );
        assert_eq!(resident.host(), 400 + 5364);
        assert_eq!(resident.beyond_memories(), 400 + 20 + 16 + 5364);
    }

    #[test]
    fn without_a_pool_says_so() {
        let smaps = mapping(0x5000_0000, 400, "r-xp", "/usr/bin/gust", 400);
        let error = classify(&smaps).unwrap_err();
        assert!(error.to_string().contains("no pool reservation"), "{error}");
    }
}
