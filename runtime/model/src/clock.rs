//! Timestamps: stored as milliseconds since the Unix epoch (shown as RFC 3339 by the API).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now. Straight from the system clock: every sync call
/// reads it for its deadline, and `chrono::Utc::now` first builds a calendar date.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

/// `time` in milliseconds since the Unix epoch, rounded down.
pub fn unix_ms(time: SystemTime) -> i64 {
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{now_ms, unix_ms};

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
