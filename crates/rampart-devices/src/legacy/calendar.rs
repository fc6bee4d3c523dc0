//! Proleptic Gregorian calendar arithmetic on Unix time, for the CMOS clock.
//!
//! Days are counted from 1970-01-01 through 400-year cycles (146 097 days each), with the
//! year taken to start on March 1st so that the leap day falls at its end.

/// Seconds in a day.
const DAY: i64 = 86_400;
/// Days in a 400-year cycle.
const CYCLE_DAYS: i64 = 146_097;
/// Days from 0000-03-01 to 1970-01-01.
const EPOCH_SHIFT: i64 = 719_468;

/// Earliest and latest instants the clock can show: 0000-01-01T00:00:00 and
/// 9999-12-31T23:59:59 (four decimal digits of year: century and year registers).
pub const MIN_TIME: i64 = -62_167_219_200;
pub const MAX_TIME: i64 = 253_402_300_799;

/// A broken-down UTC time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    /// 0..=23
    pub hour: u8,
    /// 0..=59
    pub minute: u8,
    /// 0..=59
    pub second: u8,
    /// 0 = Sunday ..= 6 = Saturday
    pub weekday: u8,
}

pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// Days in `month` (1..=12) of `year`; 0 for a month out of range.
pub fn days_in_month(year: i64, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a valid date whose year lies in `0..=9999`.
fn days_from_date(year: i64, month: u8, day: u8) -> i64 {
    // Years start in March: January and February belong to the previous one.
    let y = if month <= 2 { year - 1 } else { year };
    let cycle = y.div_euclid(400);
    let year_of_cycle = y.rem_euclid(400);
    let month_from_march = (i64::from(month) + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    cycle * CYCLE_DAYS + day_of_cycle - EPOCH_SHIFT
}

/// The instant of a broken-down time, or `None` when a field is out of range or the year is
/// outside `0..=9999`. The weekday is not checked.
pub fn to_unix(t: &DateTime) -> Option<i64> {
    let valid = (0..=9999).contains(&t.year)
        && (1..=12).contains(&t.month)
        && t.day >= 1
        && t.day <= days_in_month(t.year, t.month)
        && t.hour < 24
        && t.minute < 60
        && t.second < 60;
    if !valid {
        return None;
    }
    let days = days_from_date(t.year, t.month, t.day);
    let secs = i64::from(t.hour) * 3600 + i64::from(t.minute) * 60 + i64::from(t.second);
    Some(days * DAY + secs)
}

/// The broken-down UTC time of `unix` seconds, clamped to [`MIN_TIME`]..=[`MAX_TIME`].
pub fn from_unix(unix: i64) -> DateTime {
    let unix = unix.clamp(MIN_TIME, MAX_TIME);
    let days = unix.div_euclid(DAY);
    let secs = unix.rem_euclid(DAY);

    let z = days + EPOCH_SHIFT;
    let cycle = z.div_euclid(CYCLE_DAYS);
    let day_of_cycle = z.rem_euclid(CYCLE_DAYS);
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524
        - day_of_cycle / (CYCLE_DAYS - 1))
        / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_cycle + cycle * 400 + i64::from(month <= 2);

    // All narrowing below is of values bounded by construction (day < 32, month < 13, ...).
    DateTime {
        year,
        month: month as u8,
        day: day as u8,
        hour: (secs / 3600) as u8,
        minute: (secs / 60 % 60) as u8,
        second: (secs % 60) as u8,
        // 1970-01-01 was a Thursday.
        weekday: (days + 4).rem_euclid(7) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dt(
        year: i64,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        weekday: u8,
    ) -> DateTime {
        DateTime {
            year,
            month,
            day,
            hour,
            minute,
            second,
            weekday,
        }
    }

    /// Year, month, day, hour, minute, second, weekday.
    type Fields = (i64, u8, u8, u8, u8, u8, u8);

    /// (unix time, date) pairs checked against `date -u -d @N '+%Y-%m-%d %H:%M:%S %w'`.
    const KNOWN: &[(i64, Fields)] = &[
        (0, (1970, 1, 1, 0, 0, 0, 4)),
        (951_782_400, (2000, 2, 29, 0, 0, 0, 2)),
        (946_684_799, (1999, 12, 31, 23, 59, 59, 5)),
        (1_709_251_199, (2024, 2, 29, 23, 59, 59, 4)),
        (1_709_251_200, (2024, 3, 1, 0, 0, 0, 5)),
        (2_147_483_647, (2038, 1, 19, 3, 14, 7, 2)),
        (4_107_542_400, (2100, 3, 1, 0, 0, 0, 1)),
        (-1, (1969, 12, 31, 23, 59, 59, 3)),
        (-2_208_988_800, (1900, 1, 1, 0, 0, 0, 1)),
        (MIN_TIME, (0, 1, 1, 0, 0, 0, 6)),
        (MAX_TIME, (9999, 12, 31, 23, 59, 59, 5)),
    ];

    #[test]
    fn converts_known_instants_to_dates() {
        for &(unix, (y, mo, d, h, mi, s, wd)) in KNOWN {
            assert_eq!(from_unix(unix), dt(y, mo, d, h, mi, s, wd), "unix {unix}");
        }
    }

    #[test]
    fn converts_known_dates_to_instants() {
        for &(unix, (y, mo, d, h, mi, s, wd)) in KNOWN {
            assert_eq!(
                to_unix(&dt(y, mo, d, h, mi, s, wd)),
                Some(unix),
                "unix {unix}"
            );
        }
    }

    #[test]
    fn round_trips_every_day_of_four_centuries() {
        let start = to_unix(&dt(1900, 1, 1, 12, 30, 15, 0)).unwrap();
        for day in 0..CYCLE_DAYS {
            let t = start + day * DAY;
            assert_eq!(to_unix(&from_unix(t)), Some(t));
        }
    }

    #[test]
    fn knows_which_years_are_leap() {
        assert!(is_leap_year(2000));
        assert!(is_leap_year(2024));
        assert!(!is_leap_year(1900));
        assert!(!is_leap_year(2100));
        assert!(!is_leap_year(2023));
        assert_eq!(days_in_month(2024, 2), 29);
        assert_eq!(days_in_month(2100, 2), 28);
        assert_eq!(days_in_month(2024, 13), 0);
    }

    #[test]
    fn rejects_impossible_dates() {
        assert_eq!(to_unix(&dt(2023, 2, 29, 0, 0, 0, 0)), None);
        assert_eq!(to_unix(&dt(2024, 4, 31, 0, 0, 0, 0)), None);
        assert_eq!(to_unix(&dt(2024, 0, 1, 0, 0, 0, 0)), None);
        assert_eq!(to_unix(&dt(2024, 1, 0, 0, 0, 0, 0)), None);
        assert_eq!(to_unix(&dt(2024, 1, 1, 24, 0, 0, 0)), None);
        assert_eq!(to_unix(&dt(2024, 1, 1, 0, 60, 0, 0)), None);
        assert_eq!(to_unix(&dt(2024, 1, 1, 0, 0, 60, 0)), None);
        assert_eq!(to_unix(&dt(10_000, 1, 1, 0, 0, 0, 0)), None);
        assert_eq!(to_unix(&dt(-1, 1, 1, 0, 0, 0, 0)), None);
    }

    #[test]
    fn clamps_instants_beyond_four_digit_years() {
        assert_eq!(from_unix(i64::MAX).year, 9999);
        assert_eq!(from_unix(i64::MIN).year, 0);
    }
}
