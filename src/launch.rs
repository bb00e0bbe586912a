//! `bgw_launch()`: start a dynamic worker from SQL.

use crate::errors::UserError;
use crate::registration::{self, ConnectArgs, Kind};
use crate::toolkit;
use pgrx::bgworkers::BackgroundWorkerStatus;
use pgrx::prelude::*;
use std::ffi::CStr;

const FLAG_NAMES: &str = "ALLOWCONN";

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_launch(
    "index" int4,
    "database" name DEFAULT NULL,
    "role" name DEFAULT NULL,
    "flags" text[] DEFAULT '{}'
) RETURNS int4
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_launch_wrapper';
COMMENT ON FUNCTION bgw_launch(int4, name, name, text[]) IS
'Starts dynamic worker "bgworker_rs dynamic worker <index>", which folds schema<index>.counted, and returns its pid once the postmaster has started it. NULL database or role: the caller''s current one. flags: ALLOWCONN (superuser only) connects even where datallowconn is false.';
"#)]
fn bgw_launch(
    index: Option<i32>,
    database: Option<&CStr>,
    role: Option<&CStr>,
    flags: Option<Array<'_, String>>,
) -> i32 {
    let index = check_index(index);
    let flags = parse_flags(flags);
    if toolkit::recovery_in_progress() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot launch a bgworker_rs worker while the server is in recovery",
        )
        .hint("The worker writes; launch it on the primary.")
        .raise();
    }
    let database = database.map_or_else(toolkit::current_database, resolve_database);
    let role = role.map_or_else(toolkit::current_user, resolve_role);
    check_permissions(database, role, flags);
    start(
        index,
        ConnectArgs {
            database: database.to_u32(),
            role: role.to_u32(),
            flags,
        },
    )
}

fn check_index(index: Option<i32>) -> i32 {
    match index {
        None => UserError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "index must not be NULL",
        )
        .raise(),
        Some(i) if i < 1 => UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid worker index {i}"),
        )
        .detail("The index must be 1 or greater.")
        .raise(),
        Some(i) => i,
    }
}

// PostgreSQL's own messages and SQLSTATEs for unknown names, raised here
// rather than inside the catalog look-up.
fn resolve_database(name: &CStr) -> pg_sys::Oid {
    toolkit::database_oid(name).unwrap_or_else(|| {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", name.to_string_lossy()),
        )
        .raise()
    })
}

fn resolve_role(name: &CStr) -> pg_sys::Oid {
    toolkit::role_oid(name).unwrap_or_else(|| {
        UserError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("role \"{}\" does not exist", name.to_string_lossy()),
        )
        .raise()
    })
}

/// The flags array: one-dimensional, no NULLs, each known flag at most once.
fn parse_flags(flags: Option<Array<'_, String>>) -> u32 {
    let Some(flags) = flags else {
        UserError::new(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "flags must not be NULL",
        )
        .hint("Pass '{}' for no flags.")
        .raise()
    };
    let names: Vec<Option<String>> = flags.iter().collect();
    if toolkit::array_ndim(flags.into_array_type()) > 1 {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "flags array must be one-dimensional",
        )
        .raise();
    }
    let mut bits = 0;
    for name in names {
        let Some(name) = name else {
            UserError::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "flags array must not contain NULLs",
            )
            .raise()
        };
        let bit = match name.as_str() {
            "ALLOWCONN" => toolkit::BYPASS_ALLOWCONN,
            _ => UserError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unrecognized flag \"{name}\""),
            )
            .hint(format!(
                "Valid flags are: {FLAG_NAMES}. Flags are case-sensitive."
            ))
            .raise(),
        };
        if bits & bit != 0 {
            UserError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("flag \"{name}\" specified more than once"),
            )
            .raise();
        }
        bits |= bit;
    }
    bits
}

/// A superuser may launch anything. Anyone else granted EXECUTE may launch a
/// worker only as a role whose privileges they have, into a database they may
/// connect to, and without ALLOWCONN.
fn check_permissions(database: pg_sys::Oid, role: pg_sys::Oid, flags: u32) {
    if toolkit::is_superuser() {
        return;
    }
    let me = toolkit::current_user();
    if flags & toolkit::BYPASS_ALLOWCONN != 0 {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to use flag \"ALLOWCONN\"",
        )
        .detail("Only superusers may launch workers that bypass datallowconn.")
        .raise();
    }
    if !toolkit::has_privs_of_role(me, role) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to launch a worker as role \"{}\"", toolkit::role_name(role)),
        )
        .detail(format!(
            "Only superusers and roles with the privileges of role \"{}\" may launch workers as it.",
            toolkit::role_name(role)
        ))
        .raise();
    }
    if !toolkit::has_connect(database, me) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to launch a worker in database \"{}\"",
                toolkit::database_name(database)
            ),
        )
        .detail("You need the CONNECT privilege on that database.")
        .raise();
    }
}

/// Registers the worker and waits until the postmaster has started it.
fn start(index: i32, args: ConnectArgs) -> i32 {
    let name = Kind::Dynamic.worker_name(index);
    let Some(worker) = registration::register_dynamic_worker(index, args) else {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            format!("could not register background worker \"{name}\""),
        )
        .detail(format!(
            "All background worker slots are in use (max_worker_processes = {}).",
            toolkit::max_worker_processes()
        ))
        .hint("You may need to increase max_worker_processes.")
        .raise()
    };
    match worker.wait_for_startup() {
        Ok(pid) => pid,
        Err(BackgroundWorkerStatus::PostmasterDied) => UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            "cannot start background processes without postmaster",
        )
        .hint("Kill all remaining database processes and restart the database.")
        .raise(),
        Err(status) => UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            format!("could not start background worker \"{name}\""),
        )
        .detail(format!("The postmaster reported {status:?}."))
        .hint("More details may be available in the server log.")
        .raise(),
    }
}
