//! The extension's tables in the database, and the one way the extension
//! runs SQL on them on its own behalf, for the job functions and the
//! scheduler alike. Whatever the caller's `search_path`, temporary
//! relations or the database's contents, that SQL means the same thing:
//! - `search_path` is pinned to `pg_catalog, pg_temp` for its duration;
//! - the tables are named through the extension's schema, read from
//!   `pg_catalog.pg_extension`, never found by name lookup;
//! - it runs as the extension's owner (who owns the tables), in a
//!   security-restricted operation, and only around that SQL.
//!
//! Callers check the caller's permissions before they get here.

use crate::pg::{self, UserError};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, quote_identifier};

pub type SpiResult<T> = Result<T, pgrx::spi::Error>;

/// The extension's tables, schema-qualified and quoted, and their owner.
pub struct Tables {
    pub defs: String,
    pub runs: String,
    pub owner: pg_sys::Oid,
}

/// Runs `body` on the extension's tables with the pinned path and the
/// owner's rights. `None` where the extension is not installed (the
/// scheduler's database may not have it yet).
pub fn with_tables<R>(
    body: impl FnOnce(&mut SpiClient<'_>, &Tables) -> SpiResult<R>,
) -> SpiResult<Option<R>> {
    pg::with_pinned_search_path(|| {
        Spi::connect_mut(|client| {
            let Some(t) = locate(client)? else {
                return Ok(None);
            };
            pg::as_user_restricted(t.owner, || body(client, &t)).map(Some)
        })
    })
}

/// As [`with_tables`], for the SQL functions: the extension must be
/// installed in this database (55000 otherwise).
pub fn with_installed_tables<R>(
    body: impl FnOnce(&mut SpiClient<'_>, &Tables) -> SpiResult<R>,
) -> SpiResult<R> {
    Ok(with_tables(body)?.unwrap_or_else(|| {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension \"bgworker_rs\" is not installed in this database",
        )
        .raise()
    }))
}

fn locate(client: &SpiClient<'_>) -> SpiResult<Option<Tables>> {
    let table = client.select(
        "SELECT n.nspname::pg_catalog.text, e.extowner \
           FROM pg_catalog.pg_extension e \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
          WHERE e.extname OPERATOR(pg_catalog.=) 'bgworker_rs'",
        None,
        &[],
    )?;
    if table.is_empty() {
        return Ok(None);
    }
    let row = table.first();
    let (Some(schema), Some(owner)) = (row.get::<String>(1)?, row.get::<pg_sys::Oid>(2)?) else {
        return Ok(None);
    };
    let s = quote_identifier(schema);
    Ok(Some(Tables {
        defs: format!("{s}.bgw_job_defs"),
        runs: format!("{s}.bgw_job_runs"),
        owner,
    }))
}

/// The first column of the first row; `None` also for no row at all.
pub fn first_value<T: FromDatum + IntoDatum>(
    table: pgrx::spi::SpiTupleTable<'_>,
) -> SpiResult<Option<T>> {
    if table.is_empty() {
        Ok(None)
    } else {
        table.first().get_one::<T>()
    }
}

/// The registry index of job `job`'s runs: the job id while it fits in int4.
pub fn registry_index(job: i64) -> i32 {
    ((job - 1).rem_euclid(i32::MAX as i64) + 1) as i32
}
