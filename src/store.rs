//! The extension's tables in the database: where they are, and the SQL the
//! extension runs on them on its own behalf, for the job functions and the
//! scheduler alike.

use crate::pg::UserError;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, quote_identifier};

/// The extension's tables, schema-qualified and quoted.
pub struct Tables {
    pub defs: String,
    pub runs: String,
}

/// `None` where the extension is not installed (the scheduler's database
/// may not have it yet).
pub fn tables(client: &SpiClient<'_>) -> Result<Option<Tables>, pgrx::spi::Error> {
    let schema = client
        .select(
            "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname = 'bgworker_rs'",
            None,
            &[],
        )
        .and_then(first_value::<String>)?;
    Ok(schema.map(|s| {
        let s = quote_identifier(s);
        Tables {
            defs: format!("{s}.bgw_job_defs"),
            runs: format!("{s}.bgw_job_runs"),
        }
    }))
}

/// The first column of the first row; `None` also for no row at all.
pub fn first_value<T: FromDatum + IntoDatum>(
    table: pgrx::spi::SpiTupleTable<'_>,
) -> Result<Option<T>, pgrx::spi::Error> {
    if table.is_empty() {
        Ok(None)
    } else {
        table.first().get_one::<T>()
    }
}

/// The tables where the caller runs one of the extension's functions.
pub fn installed_tables(client: &SpiClient<'_>) -> Result<Tables, pgrx::spi::Error> {
    Ok(tables(client)?.unwrap_or_else(|| {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension \"bgworker_rs\" is not installed in this database",
        )
        .raise()
    }))
}

/// The registry index of job `job`'s runs: the job id while it fits in int4.
pub fn registry_index(job: i64) -> i32 {
    ((job - 1).rem_euclid(i32::MAX as i64) + 1) as i32
}
