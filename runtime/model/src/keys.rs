//! Invoke keys as they are stored (never the key itself), and their rate limits.

use serde::{Deserialize, Serialize};

/// A key's rate limit: a token bucket refilled at `per_second`, holding at most `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

impl RateLimit {
    /// # Errors
    /// A message when the numbers are out of range.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.001..=1_000_000.0).contains(&self.per_second)
            || !(1..=1_000_000).contains(&self.burst)
        {
            return Err(
                "`rate_limit` needs `per_second` from 0.001 to 1000000 and `burst` from 1 to 1000000"
                    .into(),
            );
        }
        Ok(())
    }
}

/// A key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    /// `key_…`, for listing and revoking.
    pub id: String,
    /// The agent it may call.
    pub agent: String,
    /// A name for people.
    pub name: String,
    /// SHA-256 of the key, hex.
    pub hash: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// Last use, ms (flushed in the background, so up to a few seconds late).
    pub last_used_at: Option<i64>,
    /// Its rate limit, if it has one.
    pub rate_limit: Option<RateLimit>,
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn rate_limits_out_of_range_are_refused() {
        for (per_second, burst) in [
            (0.0, 1),
            (1e-20, 1),
            (f64::NAN, 1),
            (f64::INFINITY, 1),
            (1.0, 0),
        ] {
            assert!(
                RateLimit { per_second, burst }.validate().is_err(),
                "{per_second} {burst}"
            );
        }
        assert!(
            RateLimit {
                per_second: 0.001,
                burst: 1
            }
            .validate()
            .is_ok()
        );
    }
}
