//! Timestamps as the API shows them: RFC 3339 UTC with milliseconds
//! (`2026-11-29T18:08:22.123Z`). They are stored as milliseconds since the Unix epoch
//! ([`gust_model::clock`]).

use chrono::{DateTime, SecondsFormat};

pub use gust_model::clock::now_ms;

/// `ms` as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_975_702_123), "2026-11-29T18:08:22.123Z");
    }
}
