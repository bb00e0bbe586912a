//! A Rust port of PostgreSQL's `worker_spi`: each worker owns
//! `schemaN.counted`, and every `bgworker_rs.naptime` folds the 'delta' rows
//! into the 'total' row in one SPI transaction.

use crate::faults;
use crate::pg::{self, Connection};
use crate::settings;
use crate::shmem::{Kind, registry};
use crate::workers::registration::ConnectArgs;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, quote_identifier};
use std::ffi::{CStr, CString};

const TABLE: &str = "counted";

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_main(main_arg: pg_sys::Datum) {
    // registration.rs always passes the index as an int4 by value.
    let index = main_arg.value() as i32;
    let schema = format!("schema{index}");

    let args = ConnectArgs::of_this_worker();

    // Register before connecting, so that a failed connection is recorded.
    pg::capture_errors();
    match args {
        Some(a) => registry::enter(Kind::Dynamic, index, a.database, a.role, Some(a.ticket)),
        None => registry::enter(Kind::Static, index, 0, 0, None),
    }

    pg::install_signal_handlers();
    connect(args);
    // Its own SQL means the same whatever the database or role sets.
    pg::pin_search_path_for_process();

    let name = pg::worker_name();
    log!("{name} initialized with {schema}.{TABLE}");
    initialize(&schema);
    registry::report_running();

    let fold = fold_query(&schema);
    let fold_sql = fold.to_str().unwrap_or_default();
    // Planned once and kept (SPI_keepplan) for the life of the worker; the
    // plan cache replans it by itself when the table changes.
    let mut plan: Option<OwnedPreparedStatement> = None;
    let mut iteration: u64 = 0;
    loop {
        pg::wait_latch(settings::NAPTIME_MS.get().into(), pg::worker_wait_event());
        pg_sys::check_for_interrupts!();
        pg::reload_config_if_requested();

        iteration += 1;
        let total = pg::in_transaction(fold, || {
            Spi::connect_mut(|client| {
                let stmt = match plan.take() {
                    Some(stmt) => stmt,
                    None => client.prepare_mut(fold_sql, &[])?.keep(),
                };
                let result = client.update(&stmt, None, &[]);
                plan = Some(stmt);
                let table = result?;
                // Test builds: a panic here, mid-transaction, must roll back.
                faults::at_iteration(iteration);
                if table.is_empty() {
                    Ok(None)
                } else {
                    table.first().get_one::<i32>()
                }
            })
        })
        .unwrap_or_else(|e| error!("cannot fold deltas in {schema}.{TABLE}: {e}"));

        if let Some(total) = total {
            log!("{name}: count in {schema}.{TABLE} is now {total}");
        }
        registry::report_iteration();
    }
}

fn connect(args: Option<ConnectArgs>) {
    match args {
        Some(args) => pg::connect(
            &Connection::Oids {
                database: args.database.into(),
                role: args.role.into(),
            },
            args.flags,
        ),
        None => super::connect_as_configured(),
    }
}

/// Creates `schemaN.counted` and its unique partial index with worker_spi's
/// DDL unless the schema exists. Unlike worker_spi, a schema whose table was
/// dropped gets the table back, so that a restarted worker heals itself.
fn initialize(schema: &str) {
    let (s, t, i) = (
        quote_identifier(schema),
        quote_identifier(TABLE),
        quote_identifier(format!("{TABLE}_unique_total")),
    );
    let columns = "(type text CHECK (type IN ('total', 'delta')), value integer)";
    let create_schema = format!(
        "CREATE SCHEMA {s} CREATE TABLE {t} {columns} CREATE UNIQUE INDEX {i} ON {t} (type) WHERE type = 'total'"
    );
    let create_table = format!(
        "CREATE TABLE {s}.{t} {columns}; CREATE UNIQUE INDEX {i} ON {s}.{t} (type) WHERE type = 'total'"
    );
    pg::in_transaction(c"initializing bgworker_rs schema", || {
        Spi::connect_mut(|client| {
            // Two workers starting at once may both find the schema missing:
            // the second's CREATE fails on the catalog's unique index, and it
            // looks again. No lock that another session could hold.
            for attempt in 0..2 {
                // Not read-only, so this statement takes a fresh snapshot and
                // sees what another worker committed meanwhile.
                let row = client.update(
                    "SELECT (SELECT nspowner FROM pg_namespace WHERE nspname = $1), \
                            (SELECT relowner FROM pg_class WHERE oid = to_regclass($2))",
                    None,
                    &[schema.into(), format!("{s}.{t}").into()],
                )?;
                let row = row.first();
                let schema_owner = row.get::<pg_sys::Oid>(1)?;
                let table_owner = row.get::<pg_sys::Oid>(2)?;
                for (what, owner) in [("schema", schema_owner), ("table", table_owner)] {
                    refuse_foreign_owner(what, schema, owner);
                }
                let create = match (schema_owner, table_owner) {
                    (None, _) => &create_schema,
                    (Some(_), None) => &create_table,
                    (Some(_), Some(_)) => return Ok(()),
                };
                match pg::in_subtransaction(|| {
                    client.update(create.as_str(), None, &[]).map(|_| ())
                }) {
                    Ok(result) => return result,
                    Err(e)
                        if attempt == 0
                            && ["42P06", "42P07", "23505"].contains(&e.sqlstate().as_str()) => {}
                    Err(e) => {
                        pg::UserError::new(PgSqlErrorCode::from(e.sqlerrcode), e.message).raise()
                    }
                }
            }
            Ok::<_, pgrx::spi::Error>(())
        })
    })
    .unwrap_or_else(|e| error!("cannot initialize {schema}.{TABLE}: {e}"));
}

/// The worker writes `schemaN.counted` with its role's rights, often a
/// superuser's: a schema or table that another, lesser role created first
/// (with a trigger, say) would run that role's code with those rights. Only
/// objects of the worker's own role, or of a superuser, are used.
fn refuse_foreign_owner(what: &str, schema: &str, owner: Option<pg_sys::Oid>) {
    let me = pg::current_user();
    let Some(owner) = owner.filter(|&o| o != me && !pg::is_role_superuser(o)) else {
        return;
    };
    let name = if what == "schema" {
        format!("schema \"{schema}\"")
    } else {
        format!("table \"{schema}.{TABLE}\"")
    };
    pg::UserError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!(
            "{name} is owned by role \"{}\", not by the worker's role \"{}\"",
            pg::role_name(owner),
            pg::role_name(me)
        ),
    )
    .hint("Drop or rename it; the worker creates its own.")
    .raise();
}

/// worker_spi's statement, built once per worker and kept for the life of the
/// process, so that `pg_stat_activity` and error reports can point at it.
fn fold_query(schema: &str) -> &'static CStr {
    let (s, t) = (quote_identifier(schema), quote_identifier(TABLE));
    let sql = format!(
        "WITH deleted AS (DELETE FROM {s}.{t} WHERE type = 'delta' RETURNING value), \
         total AS (SELECT coalesce(sum(value), 0) as sum FROM deleted) \
         UPDATE {s}.{t} SET value = {t}.value + total.sum \
         FROM total WHERE type = 'total' RETURNING {t}.value"
    );
    let sql = CString::new(sql).expect("quoted identifiers contain no NUL");
    Box::leak(sql.into_boxed_c_str())
}
