//! The extension's tables in the database, and the one way the extension
//! runs SQL on them on its own behalf, for the job functions and the
//! scheduler alike. Whatever the caller's `search_path`, temporary
//! relations or the database's contents, that SQL means the same thing:
//! - `search_path` is pinned to `pg_catalog, pg_temp` for its duration,
//!   and sequential scans are off where an index serves
//!   (`pg::with_pinned_settings`);
//! - the tables are named through the extension's schema, read from
//!   `pg_catalog.pg_extension`, never found by name lookup;
//! - it runs as the extension's owner (who owns the tables), in a
//!   security-restricted operation, and only around that SQL.
//!
//! Callers check the caller's permissions before they get here.

use crate::pg::{self, UserError};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::PgOid;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable, quote_identifier};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

pub type SpiResult<T> = Result<T, pgrx::spi::Error>;

/// The version of the extension's SQL objects this library works with.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A run's `finished_at` as its worker left it in its job slot: parameter
/// `$14`, microseconds since 1970, 0 for unknown (then NULL).
pub const FINISHED_AT: &str =
    "(timestamptz 'epoch' + nullif($14::int8, 0) * interval '1 microsecond')";

/// A run's outcome as SQL parameters, `$1` to `$14`, as the scheduler
/// records it and as `bgw_result()` returns it before that.
pub fn outcome_args(
    slot: &crate::shmem::job_slots::Slot,
    o: &crate::shmem::job_slots::Outcome,
) -> Vec<pgrx::datum::DatumWithOid<'static>> {
    vec![
        slot.job.into(),
        slot.run.into(),
        o.status.as_str().into(),
        o.rows.into(),
        o.error.as_ref().map(|e| e.sqlstate()).into(),
        o.error.as_ref().map(|e| e.message.clone()).into(),
        o.result.clone().into(),
        slot.pid.into(),
        o.error.as_ref().and_then(|e| e.detail.clone()).into(),
        o.error.as_ref().and_then(|e| e.hint.clone()).into(),
        o.statements.clone().into(),
        o.statement.as_ref().map(|s| s.0).into(),
        o.statement.as_ref().map(|s| s.1.clone()).into(),
        slot.finished_at.into(),
    ]
}

/// What [`with_tables`] found in the database.
pub enum Found<R> {
    Installed(R),
    /// `CREATE EXTENSION bgworker_rs` has not run here.
    Missing,
    /// Installed at another version: `ALTER EXTENSION bgworker_rs UPDATE`
    /// has not run since the library was upgraded.
    OtherVersion(String),
}

/// The extension's tables, schema-qualified and quoted, and their owner.
pub struct Tables {
    pub defs: String,
    pub runs: String,
    pub owner: pg_sys::Oid,
}

/// Runs `body` on the extension's tables with the pinned path and the
/// owner's rights, if the extension is installed here at this library's
/// version.
pub fn with_tables<R>(
    body: impl FnOnce(&mut SpiClient<'_>, &Tables) -> SpiResult<R>,
) -> SpiResult<Found<R>> {
    pg::with_pinned_settings(|| {
        Spi::connect_mut(|client| match locate(client)? {
            Found::Installed(t) => {
                pg::as_user_restricted(t.owner, || body(client, &t)).map(Found::Installed)
            }
            Found::Missing => Ok(Found::Missing),
            Found::OtherVersion(v) => Ok(Found::OtherVersion(v)),
        })
    })
}

/// As [`with_tables`], for the SQL functions: the extension must be
/// installed in this database, at this library's version (55000 otherwise).
pub fn with_installed_tables<R>(
    body: impl FnOnce(&mut SpiClient<'_>, &Tables) -> SpiResult<R>,
) -> SpiResult<R> {
    match with_tables(body)? {
        Found::Installed(r) => Ok(r),
        Found::Missing => UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "extension \"bgworker_rs\" is not installed in this database",
        )
        .raise(),
        Found::OtherVersion(v) => UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "extension \"bgworker_rs\" in this database is version {v}, but the library is version {VERSION}"
            ),
        )
        .hint("Run ALTER EXTENSION bgworker_rs UPDATE.")
        .raise(),
    }
}

fn locate(client: &mut SpiClient<'_>) -> SpiResult<Found<Tables>> {
    let table = client.update_kept(
        "SELECT n.nspname::pg_catalog.text, e.extowner, e.extversion \
           FROM pg_catalog.pg_extension e \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
          WHERE e.extname OPERATOR(pg_catalog.=) 'bgworker_rs'",
        None,
        &[],
    )?;
    if table.is_empty() {
        return Ok(Found::Missing);
    }
    let row = table.first();
    let (Some(schema), Some(owner), Some(version)) = (
        row.get::<String>(1)?,
        row.get::<pg_sys::Oid>(2)?,
        row.get::<String>(3)?,
    ) else {
        return Ok(Found::Missing);
    };
    if version != VERSION {
        return Ok(Found::OtherVersion(version));
    }
    let s = quote_identifier(schema);
    Ok(Found::Installed(Tables {
        defs: format!("{s}.bgw_job_defs"),
        runs: format!("{s}.bgw_job_runs"),
        owner,
    }))
}

type PlanKey = (String, Vec<pg_sys::Oid>);

thread_local! {
    /// Plans kept for the life of the process ([`kept`]).
    static KEPT: RefCell<HashMap<PlanKey, Rc<OwnedPreparedStatement>>> =
        RefCell::new(HashMap::new());
}

/// More distinct statements than the scheduler has: past this, statements
/// run unprepared (a bound, should one ever be built from data).
const KEPT_MAX: usize = 64;

/// `SpiClient::update` through a plan prepared once and kept for the life
/// of the process: a scheduler runs the same few statements at every wake,
/// and parsing and planning them was half its CPU; `bgw_run` and
/// `bgw_result` spent most of their time in it. Only for statements whose
/// text depends on nothing but the tables' names (the key is the text and
/// the argument types), and run often: each plan costs memory (10 to 100
/// kB), given back by [`forget_kept`] (a scheduler) or when the session
/// ends (a client). [`with_tables`] makes the plan generic, once.
///
/// PostgreSQL's plan cache keeps such a plan correct: it is checked again
/// after any change to what it uses (the tables dropped and made again, an
/// index added, statistics) and after a change of `search_path`, which
/// [`with_tables`] pins. Privileges are checked at each execution, as the
/// role then current.
pub trait Kept<'c> {
    fn update_kept(
        &mut self,
        sql: &str,
        limit: Option<libc::c_long>,
        args: &[DatumWithOid<'_>],
    ) -> SpiResult<SpiTupleTable<'c>>;
}

impl<'c> Kept<'c> for SpiClient<'c> {
    fn update_kept(
        &mut self,
        sql: &str,
        limit: Option<libc::c_long>,
        args: &[DatumWithOid<'_>],
    ) -> SpiResult<SpiTupleTable<'c>> {
        let key: PlanKey = (sql.to_owned(), args.iter().map(|a| a.oid()).collect());
        let found = KEPT.with(|k| k.borrow().get(&key).cloned());
        let plan = match found {
            Some(plan) => plan,
            None if KEPT.with(|k| k.borrow().len()) >= KEPT_MAX => {
                return self.update(sql, limit, args);
            }
            None => {
                let types: Vec<PgOid> = key.1.iter().map(|&o| PgOid::from(o)).collect();
                let plan = Rc::new(self.prepare_mut(sql, &types)?.keep());
                KEPT.with(|k| k.borrow_mut().insert(key, Rc::clone(&plan)));
                plan
            }
        };
        // (A clone of the Rc: no borrow of the map is held while the
        // statement runs, nor a plan dropped should it raise an error.)
        self.update(&*plan, limit, args)
    }
}

/// Frees the kept plans: a scheduler about to sleep long gives their memory
/// back, and plans again when it next has work.
pub fn forget_kept() {
    KEPT.with(|k| k.borrow_mut().clear());
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
