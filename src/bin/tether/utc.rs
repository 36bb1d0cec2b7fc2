//! Wall-clock milliseconds as a UTC date a person reads, without a date crate for one format.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in milliseconds since 1970 (the clock tokens carry).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `2026-12-02 17:30:05 UTC`.
pub fn format(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The Gregorian date `days` after 1970-01-01: counted in 400-year eras of 146 097 days from
/// 0000-03-01, so that the leap day ends each year of the count.
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(format(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(format(4_102_444_799_999), "2099-12-31 23:59:59 UTC");
        assert_eq!(format(1_709_251_199_000), "2024-02-29 23:59:59 UTC");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut previous = civil(0);
        for days in 1..200_000 {
            let next = civil(days);
            let (y, m, d) = previous;
            let ok = next == (y, m, d + 1) || next == (y, m + 1, 1) || next == (y + 1, 1, 1);
            assert!(ok, "{previous:?} then {next:?}");
            assert!(next.2 <= 31 && (1..=12).contains(&next.1));
            previous = next;
        }
    }
}
