//! Timestamps: stored as milliseconds since the Unix epoch, shown as RFC 3339 UTC with
//! milliseconds (`2026-11-29T18:08:22.123Z`).

use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat};

/// Milliseconds since the Unix epoch, now. Straight from the system clock: every sync call
/// reads it for its deadline, and `chrono::Utc::now` first builds a calendar date.
pub(crate) fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `time` in milliseconds since the Unix epoch, rounded down.
fn unix_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        // A clock set before 1970: rounded down, as for times after it.
        Err(before) => {
            let before = before.duration();
            let ms = before.as_millis() + u128::from(before.subsec_nanos() % 1_000_000 != 0);
            i64::try_from(ms).map_or(i64::MIN, |ms| -ms)
        }
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
    use std::time::{Duration, UNIX_EPOCH};

    use super::{now_ms, rfc3339, unix_ms};

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

    #[test]
    fn times_before_1970_round_down_like_chrono() {
        let at = |micros: i64| match u64::try_from(micros) {
            Ok(after) => UNIX_EPOCH + Duration::from_micros(after),
            Err(_) => UNIX_EPOCH - Duration::from_micros(micros.unsigned_abs()),
        };
        for micros in [-1_500, -1_000, -1, 0, 1, 1_500, -86_400_000_123] {
            let chrono = chrono::DateTime::<chrono::Utc>::from(at(micros)).timestamp_millis();
            assert_eq!(unix_ms(at(micros)), chrono, "{micros} µs");
        }
    }
}
