//! Timestamps: stored as milliseconds since the Unix epoch, shown as RFC 3339 UTC with
//! milliseconds (`2026-11-29T18:08:22.123Z`).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat};

/// Milliseconds since the Unix epoch, now. Straight from the system clock: every sync call
/// reads it for its deadline, and `chrono::Utc::now` first builds a calendar date.
pub(crate) fn now_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        // A clock set before 1970.
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// `ms` as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::{now_ms, rfc3339};

    #[test]
    fn formats_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_975_702_123), "2026-11-29T18:08:22.123Z");
    }

    #[test]
    fn now_agrees_with_chrono() {
        let before = chrono::Utc::now().timestamp_millis();
        let now = now_ms();
        let after = chrono::Utc::now().timestamp_millis();
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }
}
