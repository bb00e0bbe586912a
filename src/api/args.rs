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
pub fn duration(value: Option<Interval>, name: &str) -> Option<Duration> {
    let micros = value?.as_micros();
    if micros < 0 {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must not be negative"),
        )
        .raise();
    }
    Some(Duration::from_micros(
        u64::try_from(micros).unwrap_or(u64::MAX),
    ))
}
