//! The per-call resource limiter: caps memory and table growth, and remembers when it
//! refused, so a failure can be reported as an exhausted limit rather than guessed from an
//! error message.

use wasmtime::ResourceLimiter;

/// Largest table a guest may grow, in elements.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

#[derive(Debug)]
pub(crate) struct Limiter {
    memory_bytes: usize,
    /// What was refused first, if anything was.
    refused: Option<String>,
}

impl Limiter {
    pub(crate) fn new(memory_bytes: usize) -> Self {
        Self {
            memory_bytes,
            refused: None,
        }
    }

    /// Why growth was refused during this call, if it was.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.refused.get_or_insert_with(|| {
                format!(
                    "a memory would grow to {} MiB, over the limit of {} MiB",
                    desired >> 20,
                    self.memory_bytes >> 20
                )
            });
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.refused.get_or_insert_with(|| {
                format!("a table would grow to {desired} elements, over the limit of {MAX_TABLE_ELEMENTS}")
            });
            return Ok(false);
        }
        Ok(true)
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
        assert!(!limiter.memory_growing(0, 2 << 20, None).unwrap());
        assert!(
            !limiter
                .table_growing(0, MAX_TABLE_ELEMENTS + 1, None)
                .unwrap()
        );
        assert_eq!(
            limiter.refused(),
            Some("a memory would grow to 2 MiB, over the limit of 1 MiB")
        );
    }
}
