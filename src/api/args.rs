//! Checks of SQL arguments shared by the functions: each bad value is an
//! ERROR with its SQLSTATE, never a panic.

use crate::pg::UserError;
use pgrx::prelude::*;
use std::time::Duration;

/// A required argument: NULL is SQLSTATE 22004.
pub fn required<T>(value: Option<T>, name: &str) -> T {
    value.unwrap_or_else(|| {
        UserError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{name} must not be NULL"),
        )
        .raise()
    })
}

/// A worker index, 1 or greater.
pub fn index(index: Option<i32>) -> i32 {
    match required(index, "index") {
        i if i < 1 => UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid worker index {i}"),
        )
        .detail("The index must be 1 or greater.")
        .raise(),
        i => i,
    }
}

/// An interval that must not be negative, as a duration; NULL stays `None`.
/// Each part (months, days, time) must be finite and not negative: a mix
/// such as '1 mon -29 days' has no single length.
pub fn duration(value: Option<Interval>, name: &str) -> Option<Duration> {
    let value = value?;
    let parts = [
        i64::from(value.months()),
        i64::from(value.days()),
        value.micros(),
    ];
    let invalid = |message: String, detail: Option<&str>| -> ! {
        let error = UserError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message);
        match detail {
            Some(detail) => error.detail(detail).raise(),
            None => error.raise(),
        }
    };
    // PostgreSQL 17+ infinity: every part at its extreme.
    if value.months() == i32::MAX || value.months() == i32::MIN {
        invalid(
            format!("{name} must be finite"),
            Some("Pass NULL for none, or a finite interval."),
        );
    }
    if parts.iter().all(|&p| p <= 0) && parts.iter().any(|&p| p < 0) {
        invalid(format!("{name} must not be negative"), None);
    }
    if parts.iter().any(|&p| p < 0) {
        invalid(
            format!("{name} must not mix positive and negative parts"),
            Some("Months, days and time must each be zero or positive, as in '1 day 2 hours'."),
        );
    }
    Some(Duration::from_micros(
        u64::try_from(value.as_micros()).unwrap_or(u64::MAX),
    ))
}

/// An interval greater than zero and at most `max` (named `max_text` in the
/// message), with [`duration`]'s rules; NULL stays `None`.
pub fn bounded(
    value: Option<Interval>,
    name: &str,
    max: Duration,
    max_text: &str,
) -> Option<Duration> {
    let d = duration(value, name)?;
    if d.is_zero() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be greater than zero"),
        )
        .hint("Pass NULL for none.")
        .raise();
    }
    if d > max {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be at most {max_text}"),
        )
        .raise();
    }
    Some(d)
}
