//! `bgw_launch()`: start a dynamic worker from SQL.

use crate::access;
use crate::api::args;
use crate::api::manage;
use crate::pg::UserError;
use crate::pg::{self, CapturedError, WorkerStatus};
use crate::settings;
use crate::shmem::Kind;
use crate::shmem::registry::{self, ClaimError, State};
use crate::workers::registration::{self, ConnectArgs};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

/// The flags this server accepts, for hints.
fn flag_names() -> &'static str {
    if pg::BYPASS_ROLELOGINCHECK.is_some() {
        "ALLOWCONN, ROLELOGINCHECK"
    } else {
        "ALLOWCONN"
    }
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_launch(
    "index" int4,
    "database" name DEFAULT NULL,
    "role" name DEFAULT NULL,
    "flags" text[] DEFAULT '{}',
    "restart_after" interval DEFAULT NULL
) RETURNS int4
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_launch_wrapper';
COMMENT ON FUNCTION bgw_launch(int4, name, name, text[], interval) IS
'Starts dynamic worker "bgworker_rs dynamic worker <index>", which folds schema<index>.counted, and returns its pid once it has connected and initialized; if it fails first, raises its error. NULL database or role: the caller''s current one. flags (superuser only): ALLOWCONN connects even where datallowconn is false; ROLELOGINCHECK (PostgreSQL 17+) as a role that may not log in. restart_after: restart it that long after a failure (NULL: never).';
"#)]
fn bgw_launch(
    index: Option<i32>,
    database: Option<&CStr>,
    role: Option<&CStr>,
    flags: Option<Array<'_, String>>,
    restart_after: Option<Interval>,
) -> i32 {
    let index = args::index(index);
    let flags = parse_flags(flags);
    let restart_after = parse_restart_after(restart_after);
    manage::require_registry();
    if pg::recovery_in_progress() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot launch a bgworker_rs worker while the server is in recovery",
        )
        .hint("The worker writes; launch it on the primary.")
        .raise();
    }
    let database = database.map_or_else(pg::current_database, resolve_database);
    let role = role.map_or_else(pg::current_user, resolve_role);
    access::check_permissions(database, role, flags);
    start(
        index,
        database.to_u32(),
        role.to_u32(),
        flags,
        restart_after,
    )
}

/// `restart_after` as whole seconds for `bgw_restart_time` (rounded up).
fn parse_restart_after(restart_after: Option<Interval>) -> Option<Duration> {
    let after = args::duration(restart_after, "restart_after")?;
    let secs = after.as_micros().div_ceil(1_000_000);
    if secs > settings::MAX_RESTART_TIME_S as u128 {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "restart_after must be at most {} seconds",
                settings::MAX_RESTART_TIME_S
            ),
        )
        .raise();
    }
    Some(Duration::from_secs(secs as u64))
}

// PostgreSQL's own messages and SQLSTATEs for unknown names, raised here
// rather than inside the catalog look-up.
pub fn resolve_database(name: &CStr) -> pg_sys::Oid {
    pg::database_oid(name).unwrap_or_else(|| {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", name.to_string_lossy()),
        )
        .raise()
    })
}

pub fn resolve_role(name: &CStr) -> pg_sys::Oid {
    pg::role_oid(name).unwrap_or_else(|| {
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
    if pg::array_ndim(flags.into_array_type()) > 1 {
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
            "ALLOWCONN" => pg::BYPASS_ALLOWCONN,
            "ROLELOGINCHECK" => pg::BYPASS_ROLELOGINCHECK.unwrap_or_else(|| {
                UserError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "flag \"ROLELOGINCHECK\" requires PostgreSQL 17 or later",
                )
                .detail(format!(
                    "This server is PostgreSQL {}.",
                    pg::server_version()
                ))
                .raise()
            }),
            _ => UserError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("unrecognized flag \"{name}\""),
            )
            .hint(format!(
                "Valid flags are: {}. Flags are case-sensitive.",
                flag_names()
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

/// Claims a registry entry, registers the worker, and waits until it has
/// connected and initialized its table; if it fails first, raises its error.
fn start(index: i32, database: u32, role: u32, flags: u32, restart_after: Option<Duration>) -> i32 {
    let name = Kind::Dynamic.worker_name(index);
    let ticket = match registry::claim_for_launch(Kind::Dynamic, index, database, role) {
        Ok(ticket) => ticket,
        Err(ClaimError::IndexInUse { pid, state }) => UserError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("a bgworker_rs worker with index {index} is already running"),
        )
        .detail(format!("Worker pid {pid} is {}.", state.as_str()))
        .hint(format!(
            "Stop it with bgw_terminate({pid}), or choose another index."
        ))
        .raise(),
        Err(ClaimError::Full) => out_of_slots(&name),
    };
    let args = ConnectArgs {
        database,
        role,
        flags,
        ticket,
    };
    let Some(handle) =
        registration::register_dynamic_worker(Kind::Dynamic, index, args, restart_after)
    else {
        registry::release(ticket);
        out_of_slots(&name)
    };
    registry::set_handle(ticket, handle);

    enum Outcome {
        Ready(i32),
        Failed(Option<CapturedError>),
        PostmasterDied,
    }
    let timeout = Duration::from_millis(settings::LAUNCH_TIMEOUT_MS.get() as u64);
    let outcome = pg::wait_for(Some(timeout), || {
        let entry = registry::get(ticket);
        match entry.map(|e| e.state) {
            Some(State::Running) => return entry.map(|e| Outcome::Ready(e.pid)),
            Some(State::Failed) => {
                return Some(Outcome::Failed(entry.and_then(|e| e.last_error())));
            }
            _ => {}
        }
        match pg::worker_status(handle) {
            WorkerStatus::Stopped => Some(Outcome::Failed(entry.and_then(|e| e.last_error()))),
            WorkerStatus::PostmasterDied => Some(Outcome::PostmasterDied),
            _ => None,
        }
    });

    // From here on the launch has failed: make sure the postmaster neither
    // keeps nor restarts the worker, and leave the reason in the registry.
    let fail = |error: CapturedError| {
        pg::terminate_worker(handle);
        registry::mark_failed(ticket, &error);
    };
    match outcome {
        Some(Outcome::Ready(pid)) => pid,
        Some(Outcome::Failed(Some(error))) => {
            fail(error.clone());
            UserError::new(PgSqlErrorCode::from(error.sqlerrcode), error.message)
                .detail(format!(
                    "Reported by background worker \"{name}\" while starting."
                ))
                .raise()
        }
        Some(Outcome::Failed(None)) => {
            let message = format!("background worker \"{name}\" stopped before it was ready");
            fail(CapturedError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES as i32,
                message.clone(),
            ));
            UserError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES, message)
                .hint("More details may be available in the server log.")
                .raise()
        }
        Some(Outcome::PostmasterDied) => UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
            "cannot start background processes without postmaster",
        )
        .hint("Kill all remaining database processes and restart the database.")
        .raise(),
        None => {
            let message = format!(
                "timed out after {} ms waiting for background worker \"{name}\" to start",
                timeout.as_millis()
            );
            fail(CapturedError::new(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED as i32,
                message.clone(),
            ));
            UserError::new(PgSqlErrorCode::ERRCODE_QUERY_CANCELED, message)
                .detail("The worker was stopped.")
                .hint("Raise bgworker_rs.launch_timeout, or look in the server log.")
                .raise()
        }
    }
}

fn out_of_slots(name: &str) -> ! {
    UserError::new(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
        format!("could not register background worker \"{name}\""),
    )
    .detail(format!(
        "All background worker slots are in use (max_worker_processes = {}).",
        pg::max_worker_processes()
    ))
    .hint("You may need to increase max_worker_processes.")
    .raise()
}
