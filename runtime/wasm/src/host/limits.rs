//! The per-call resource limiter: caps the memory all of a call's instances hold — every
//! linear memory and table of every core instance a component makes, together, not each
//! alone — and remembers when it refused, so a failure can be reported as an exhausted
//! limit rather than guessed from an error message.

use wasmtime::ResourceLimiter;

/// Largest table a guest may grow, in elements.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// What one table element costs the host: a pointer (a function reference). Counted with
/// the linear memories, so a component cannot hold host memory through large tables.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

#[derive(Debug)]
pub(crate) struct Limiter {
    /// The bound on all memories and tables of the call together.
    memory_bytes: usize,
    /// What the call's memories and tables hold now, in bytes.
    held: usize,
    /// What was refused first, if anything was.
    refused: Option<String>,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            held: 0,
            refused: None,
        }
    }

    /// Admits a growth of one memory or table from `current` to `desired` bytes, if the
    /// call's total stays within the bound.
    fn grow(&mut self, what: &str, current: usize, desired: usize) -> bool {
        let after = self.held.saturating_sub(current).saturating_add(desired);
        if after > self.memory_bytes {
            self.refused.get_or_insert_with(|| {
                format!(
                    "a {what} would grow to {} MiB, and the call's memories and tables to {} MiB, over the limit of {} MiB",
                    desired >> 20,
                    after >> 20,
                    self.memory_bytes >> 20
                )
            });
            return false;
        }
        self.held = after;
        true
    }

    /// Why growth was refused during this call, if it was.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow("memory", current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.refused.get_or_insert_with(|| {
                format!("a table would grow to {desired} elements, over the limit of {MAX_TABLE_ELEMENTS}")
            });
            return Ok(false);
        }
        Ok(self.grow(
            "table",
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_limit_and_remembers_the_first_refusal() {
        let mut limiter = Limiter::new(1 << 20);
        assert!(limiter.memory_growing(0, 1 << 20, None).unwrap());
        assert!(limiter.refused().is_none());
        assert!(!limiter.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(
            !limiter
                .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
                .unwrap()
        );
        assert_eq!(
            limiter.refused(),
            Some(
                "a memory would grow to 2 MiB, and the call's memories and tables to 2 MiB, over the limit of 1 MiB"
            )
        );
    }

    /// The bound is on all of a call's memories and tables together: three memories of
    /// 100 MiB do not fit in 256 MiB, though each alone would.
    #[test]
    fn memories_and_tables_count_together() {
        let mut limiter = Limiter::new(256 << 20);
        assert!(limiter.memory_growing(0, 100 << 20, None).unwrap());
        assert!(limiter.memory_growing(0, 100 << 20, None).unwrap());
        assert!(!limiter.memory_growing(0, 100 << 20, None).unwrap());
        assert!(limiter.refused().unwrap().contains("300 MiB"));
        // Growing one memory counts only the growth.
        let mut limiter = Limiter::new(10 << 20);
        assert!(limiter.memory_growing(0, 4 << 20, None).unwrap());
        assert!(limiter.memory_growing(4 << 20, 8 << 20, None).unwrap());
        assert!(
            limiter.table_growing(0, 1 << 18, None).unwrap(),
            "2 MiB of table"
        );
        assert!(!limiter.table_growing(1 << 18, 1 << 19, None).unwrap());
    }
}
