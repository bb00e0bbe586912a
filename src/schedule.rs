//! Schedules: cron expressions (5 fields, or 6 with seconds first),
//! `@hourly` and the other nicknames, and pg_cron's `'N seconds'`, each in
//! an IANA time zone. Parsing and the calendar are the crates' (`croner`,
//! `chrono-tz`); this file only says which forms are accepted and how a DST
//! change is handled: a time it skips runs at the first time after the gap,
//! and a time it repeats runs once.
//!
//! Pure Rust: nothing of PostgreSQL, so the next-time computation is tested
//! deterministically (`cargo test`).

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// The forms a schedule may take, for hints.
pub const FORMS: &str = "A schedule is a cron expression of 5 fields (minute hour day-of-month month day-of-week), \
or 6 with a leading seconds field, with lists, ranges, steps, month and weekday names and L for the last day of the month; \
or @hourly, @daily, @weekly, @monthly, @yearly; or 'N seconds' with N from 1 to 59.";

#[derive(Clone, Debug)]
pub enum Schedule {
    Cron(Box<Cron>),
    /// Every N seconds, from the previous run's time.
    Seconds(u32),
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        if let [n, unit] = words[..]
            && (unit.eq_ignore_ascii_case("seconds") || unit.eq_ignore_ascii_case("second"))
        {
            return match n.parse::<u32>() {
                Ok(n @ 1..=59) => Ok(Schedule::Seconds(n)),
                _ => Err(format!(
                    "\"{trimmed}\": the number of seconds must be from 1 to 59"
                )),
            };
        }
        if trimmed.starts_with('@') {
            let known = ["@hourly", "@daily", "@weekly", "@monthly", "@yearly"];
            if !known.iter().any(|k| k.eq_ignore_ascii_case(trimmed)) {
                return Err(format!("\"{trimmed}\" is not a known nickname"));
            }
        } else if !(5..=6).contains(&words.len()) {
            return Err(format!(
                "\"{trimmed}\" has {} fields, not 5 or 6",
                words.len()
            ));
        }
        CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build()
            .parse(trimmed)
            .map(|cron| Schedule::Cron(Box::new(cron)))
            .map_err(|e| format!("\"{trimmed}\": {e}"))
    }

    /// The first run time after `after`. `last` is the previous run time:
    /// a cron time is only taken if its wall-clock time in `tz` is also
    /// later than `last`'s, so that a time a DST change repeats runs once;
    /// `'N seconds'` counts from it. `None`: no such time before the year
    /// 5000.
    pub fn next(
        &self,
        tz: Tz,
        after: DateTime<Utc>,
        last: Option<DateTime<Utc>>,
    ) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Seconds(n) => {
                let step = chrono::Duration::seconds(i64::from(*n));
                let from_last = last.map(|l| l + step).filter(|t| *t > after);
                Some(from_last.unwrap_or(after + step))
            }
            Schedule::Cron(cron) => {
                // The schedule names wall-clock times: search them in naive
                // local time (croner in UTC, which has no DST), then place
                // each in the zone. Whole seconds only.
                let after = after.with_nanosecond(0).unwrap_or(after);
                let mut from = after.with_timezone(&tz).naive_local();
                // A wall-clock time repeated by a fall-back change runs once:
                // never at or before the last run's wall-clock time.
                if let Some(last) = last {
                    from = from.max(last.with_timezone(&tz).naive_local());
                }
                for _ in 0..SEARCH_MAX {
                    let naive = Utc.from_utc_datetime(&from);
                    let wall = cron.find_next_occurrence(&naive, false).ok()?.naive_utc();
                    let at = match tz.from_local_datetime(&wall) {
                        LocalResult::Single(t) => t,
                        LocalResult::Ambiguous(first, _) => first,
                        // In a spring-forward gap: the first time after it.
                        LocalResult::None => after_gap(tz, wall)?,
                    };
                    if at.with_timezone(&Utc) > after {
                        return Some(at.with_timezone(&Utc));
                    }
                    from = wall;
                }
                None
            }
        }
    }
}

/// Bound of the search for a time later than `after` (gaps and repeats
/// only ever skip a few candidates).
const SEARCH_MAX: usize = 10_000;

/// The first instant after a DST gap that swallowed the wall-clock time
/// `wall`: gaps end on a whole minute and last at most a day.
fn after_gap(tz: Tz, wall: NaiveDateTime) -> Option<DateTime<Tz>> {
    let start = wall.with_second(0)?;
    (1..=24 * 60).find_map(|m| {
        tz.from_local_datetime(&(start + chrono::Duration::minutes(m)))
            .earliest()
    })
}

/// The next run time, in microseconds since 1970 (as the scheduler reads
/// them from SQL), of `schedule` in `timezone` after `after_us`; `last_us`
/// is the previous run time. `Ok(None)`: the schedule has no next time.
pub fn next_micros(
    schedule: &str,
    timezone: &str,
    after_us: i64,
    last_us: Option<i64>,
) -> Result<Option<i64>, String> {
    let schedule = Schedule::parse(schedule)?;
    let tz = time_zone(timezone)?;
    let at = |us: i64| {
        DateTime::<Utc>::from_timestamp_micros(us).ok_or_else(|| format!("time {us} out of range"))
    };
    let after = at(after_us)?;
    let last = last_us.map(at).transpose()?;
    Ok(schedule.next(tz, after, last).map(|t| t.timestamp_micros()))
}

/// An IANA time zone by name (case as in the database, e.g.
/// `Europe/Paris`; `UTC`).
pub fn time_zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .or_else(|_| Tz::from_str_insensitive(name))
        .map_err(|_| format!("\"{name}\" is not a known IANA time zone"))
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(schedule: &str, zone: &str, after: &str) -> Option<String> {
        Schedule::parse(schedule)
            .unwrap()
            .next(time_zone(zone).unwrap(), utc(after), None)
            .map(|t| t.to_rfc3339())
    }

    /// Run times from `after`, each taken as the next `last`.
    fn times(schedule: &str, zone: &str, after: &str, n: usize) -> Vec<String> {
        let s = Schedule::parse(schedule).unwrap();
        let tz = time_zone(zone).unwrap();
        let mut at = utc(after);
        let mut last = None;
        (0..n)
            .map(|_| {
                let t = s.next(tz, at, last).unwrap();
                at = t;
                last = Some(t);
                t.to_rfc3339()
            })
            .collect()
    }

    #[test]
    fn month_ends_and_leap_days() {
        // L: the last day, 29 February in a leap year.
        assert_eq!(
            times("0 0 L * *", "UTC", "2024-01-31T00:00:01Z", 3),
            [
                "2024-02-29T00:00:00+00:00",
                "2024-03-31T00:00:00+00:00",
                "2024-04-30T00:00:00+00:00"
            ]
        );
        assert_eq!(
            next("0 0 L 2 *", "UTC", "2023-03-01T00:00:00Z").as_deref(),
            Some("2024-02-29T00:00:00+00:00")
        );
        // 29 February comes every four years (2100 is not a leap year).
        assert_eq!(
            next("0 12 29 2 *", "UTC", "2025-01-01T00:00:00Z").as_deref(),
            Some("2028-02-29T12:00:00+00:00")
        );
        assert_eq!(
            next("0 12 29 2 *", "UTC", "2096-03-01T00:00:00Z").as_deref(),
            Some("2104-02-29T12:00:00+00:00")
        );
        // The 31st skips the months without one.
        assert_eq!(
            times("0 6 31 * *", "UTC", "2025-04-01T00:00:00Z", 2),
            ["2025-05-31T06:00:00+00:00", "2025-07-31T06:00:00+00:00"]
        );
        // Never: 30 February.
        assert_eq!(next("0 0 30 2 *", "UTC", "2025-01-01T00:00:00Z"), None);
    }

    #[test]
    fn fields_names_nicknames_and_seconds() {
        // 1 January 2026 is a Thursday.
        assert_eq!(
            next("0 9 * JAN-MAR MON-FRI", "UTC", "2025-04-01T00:00:00Z").as_deref(),
            Some("2026-01-01T09:00:00+00:00")
        );
        assert_eq!(
            times("*/20 8-9 * * *", "UTC", "2025-06-01T08:30:00Z", 4),
            [
                "2025-06-01T08:40:00+00:00",
                "2025-06-01T09:00:00+00:00",
                "2025-06-01T09:20:00+00:00",
                "2025-06-01T09:40:00+00:00"
            ]
        );
        // Cron times are whole seconds, whatever the fraction of `after`.
        assert_eq!(
            next("@hourly", "UTC", "2025-06-04T10:30:00.25Z").as_deref(),
            Some("2025-06-04T11:00:00+00:00")
        );
        assert_eq!(
            next("*/2 * * * * *", "UTC", "2025-06-04T10:30:00.25Z").as_deref(),
            Some("2025-06-04T10:30:02+00:00")
        );
        // Six fields: seconds first.
        assert_eq!(
            times("*/10 * * * * *", "UTC", "2025-06-01T12:00:01Z", 2),
            ["2025-06-01T12:00:10+00:00", "2025-06-01T12:00:20+00:00"]
        );
        let from = "2025-06-04T10:30:00Z"; // a Wednesday
        assert_eq!(
            next("@hourly", "UTC", from).as_deref(),
            Some("2025-06-04T11:00:00+00:00")
        );
        assert_eq!(
            next("@daily", "UTC", from).as_deref(),
            Some("2025-06-05T00:00:00+00:00")
        );
        assert_eq!(
            next("@weekly", "UTC", from).as_deref(),
            Some("2025-06-08T00:00:00+00:00")
        );
        assert_eq!(
            next("@monthly", "UTC", from).as_deref(),
            Some("2025-07-01T00:00:00+00:00")
        );
        assert_eq!(
            next("@yearly", "UTC", from).as_deref(),
            Some("2026-01-01T00:00:00+00:00")
        );
        // 'N seconds': from the last run, or from now when behind.
        assert_eq!(
            times("30 seconds", "UTC", "2025-06-04T10:30:00Z", 2),
            ["2025-06-04T10:30:30+00:00", "2025-06-04T10:31:00+00:00"]
        );
        // A zone: 09:00 in Paris in summer is 07:00 UTC.
        assert_eq!(
            next("0 9 * * *", "Europe/Paris", "2025-06-04T10:30:00Z").as_deref(),
            Some("2025-06-05T07:00:00+00:00")
        );
    }

    #[test]
    fn dst_in_a_zone_with_a_30_minute_change() {
        // Lord Howe Island: +10:30, and +11:00 in summer; the clocks move by
        // 30 minutes. On 5 October 2025, 02:00 becomes 02:30.
        // A daily 02:15 falls in the gap and runs once, at 02:30 (+11:00).
        assert_eq!(
            times(
                "15 2 * * *",
                "Australia/Lord_Howe",
                "2025-10-03T16:00:00Z",
                3
            ),
            [
                "2025-10-04T15:30:00+00:00",
                "2025-10-05T15:15:00+00:00",
                "2025-10-06T15:15:00+00:00"
            ]
        );
        // On 5 April 2026, 02:00 (+11:00) becomes 01:30 (+10:30): 01:30 to
        // 02:00 come twice. A daily 01:45 runs once, the first time.
        assert_eq!(
            times(
                "45 1 * * *",
                "Australia/Lord_Howe",
                "2026-04-04T12:00:00Z",
                2
            ),
            ["2026-04-04T14:45:00+00:00", "2026-04-05T15:15:00+00:00"]
        );
        // Every 15 minutes across the repeated half hour: 01:30 and 01:45
        // are not run again; the next run is 02:00 (+10:30).
        assert_eq!(
            times(
                "*/15 * * * *",
                "Australia/Lord_Howe",
                "2026-04-04T14:20:00Z",
                4
            ),
            [
                "2026-04-04T14:30:00+00:00",
                "2026-04-04T14:45:00+00:00",
                "2026-04-04T15:30:00+00:00",
                "2026-04-04T15:45:00+00:00"
            ]
        );
    }

    #[test]
    fn a_time_a_gap_swallows_runs_once_after_it_even_on_the_next_day() {
        // Nuuk, 27 March 2027: the clocks move from 23:00 (-02:00) to 00:00
        // (-01:00), so 23:30 does not exist; the run comes at 00:00, the
        // first time after the gap, on the 28th.
        assert_eq!(
            next("30 23 27 3 *", "America/Nuuk", "2027-03-27T12:00:00Z").as_deref(),
            Some("2027-03-28T01:00:00+00:00")
        );
        // New York, 14 March 2027: 02:00 becomes 03:00. Every ten minutes of
        // the 2 o'clock hour runs once, at 03:00; then the next year.
        assert_eq!(
            times(
                "*/10 2 14 3 *",
                "America/New_York",
                "2027-03-14T05:00:00Z",
                2
            ),
            ["2027-03-14T07:00:00+00:00", "2028-03-14T06:00:00+00:00"]
        );
    }

    #[test]
    fn dst_in_a_zone_with_a_30_minute_offset() {
        // Adelaide: +09:30, and +10:30 in summer. On 5 October 2025, 02:00
        // becomes 03:00; a daily 02:30 runs at 03:00 (+10:30) that day.
        assert_eq!(
            times(
                "30 2 * * *",
                "Australia/Adelaide",
                "2025-10-04T12:00:00Z",
                2
            ),
            ["2025-10-04T16:30:00+00:00", "2025-10-05T16:00:00+00:00"]
        );
        // On 5 April 2026, 03:00 (+10:30) becomes 02:00 (+09:30); a daily
        // 02:30 runs once.
        assert_eq!(
            times(
                "30 2 * * *",
                "Australia/Adelaide",
                "2026-04-04T12:00:00Z",
                2
            ),
            ["2026-04-04T16:00:00+00:00", "2026-04-05T17:00:00+00:00"]
        );
    }

    #[test]
    fn malformed_schedules_say_why() {
        for bad in [
            "",
            "* * * *",
            "* * * * * * *",
            "61 * * * *",
            "* 24 * * *",
            "0 0 32 * *",
            "0 0 * 13 *",
            "0 0 * * FOO",
            "@often",
            "0 seconds",
            "60 seconds",
            "-1 seconds",
            "five seconds",
        ] {
            assert!(Schedule::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(time_zone("Mars/Olympus_Mons").is_err());
        assert!(time_zone("europe/paris").is_ok());
    }
}
