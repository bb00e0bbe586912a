//! Managing workers from any session: `bgw_list()`, `bgw_terminate()`,
//! `bgw_wait()`, all over the shared-memory registry.

use crate::api::args;
use crate::pg::UserError;
use crate::pg::{self, SqlName};
use crate::shmem::Kind;
use crate::shmem::registry::{self, Entry, Ticket};
use pgrx::prelude::*;
use std::time::Duration;

/// The registry exists only when the library was preloaded.
pub fn require_registry() {
    if !registry::is_available() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "bgworker_rs must be loaded via shared_preload_libraries",
        )
        .hint("Add bgworker_rs to shared_preload_libraries and restart the server.")
        .raise();
    }
}

/// Superusers manage every worker; others the workers of roles whose
/// privileges they have.
fn may_manage(entry: &Entry) -> bool {
    pg::is_superuser() || pg::has_privs_of_role(pg::current_user(), entry.role.into())
}

fn check_may_manage(entry: &Entry, pid: i32) {
    if !may_manage(entry) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to manage bgworker_rs worker with pid {pid}"),
        )
        .detail(format!(
            "Only superusers and roles with the privileges of role \"{}\" may manage it.",
            pg::role_name(entry.role.into())
        ))
        .raise();
    }
}

/// Waits until the process `pid` of this entry has exited.
fn wait_exit(ticket: Ticket, pid: i32, timeout: Option<Duration>) -> bool {
    pg::wait_for(timeout, || {
        (!registry::is_running_as(ticket, pid) && !pg::process_exists(pid)).then_some(())
    })
    .is_some()
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_list() RETURNS TABLE(
    "index" int4, "pid" int4, "name" text, "type" text, "kind" text,
    "database" name, "role" name, "state" text, "started_at" timestamptz,
    "restarts" int4, "iterations" int8, "last_error" text
)
VOLATILE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_list_wrapper';
COMMENT ON FUNCTION bgw_list() IS
'Every worker bgworker_rs knows, static and dynamic, running or not, from any session; non-superusers see the workers of roles whose privileges they have. pid is NULL once a worker has exited.';
"#)]
#[allow(clippy::type_complexity)]
fn bgw_list() -> TableIterator<
    'static,
    (
        name!(index, i32),
        name!(pid, Option<i32>),
        name!(name, String),
        name!(worker_type, String),
        name!(kind, String),
        name!(database, Option<SqlName>),
        name!(role, Option<SqlName>),
        name!(state, String),
        name!(started_at, Option<TimestampWithTimeZone>),
        name!(restarts, i32),
        name!(iterations, i64),
        name!(last_error, Option<String>),
    ),
> {
    require_registry();
    let mut entries = registry::snapshot();
    entries.sort_by_key(|e| (e.kind as u8, e.index));
    let rows: Vec<_> = entries
        .into_iter()
        .filter(may_manage)
        .map(|e| {
            (
                e.index,
                (e.pid != 0).then_some(e.pid),
                e.kind.worker_name(e.index),
                e.kind.worker_type().to_string(),
                e.kind.as_str().to_string(),
                (e.database != 0).then(|| SqlName(pg::database_name(e.database.into()))),
                (e.role != 0).then(|| SqlName(pg::role_name(e.role.into()))),
                e.state.as_str().to_string(),
                (e.started_at != 0)
                    .then(|| TimestampWithTimeZone::try_from(e.started_at).ok())
                    .flatten(),
                e.restarts(),
                e.iterations.min(i64::MAX as u64) as i64,
                e.last_error()
                    .map(|err| format!("{}: {}", err.sqlstate(), err.message)),
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_terminate("pid" int4, "timeout" interval DEFAULT '10s') RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_terminate_wrapper';
COMMENT ON FUNCTION bgw_terminate(int4, interval) IS
'Stops a bgworker_rs worker and waits up to timeout (NULL: no limit) until it has exited. A dynamic worker is stopped with TerminateBackgroundWorker and not restarted; a static one gets SIGTERM and its restart policy applies. false for a pid that is not a running worker of ours, or on timeout (with a WARNING).';
"#)]
fn bgw_terminate(pid: Option<i32>, timeout: Option<Interval>) -> bool {
    let pid = args::required(pid, "pid");
    let timeout = args::duration(timeout, "timeout");
    require_registry();
    let Some((ticket, entry)) = registry::find_by_pid(pid).filter(|(_, e)| e.pid == pid) else {
        return false;
    };
    check_may_manage(&entry, pid);
    registry::set_stopping(ticket);
    match (entry.kind, entry.handle()) {
        (Kind::Dynamic, Some(handle)) => pg::terminate_worker(handle),
        // Static workers, and dynamic ones that came back after crash
        // recovery (the registry no longer has their handle).
        _ => {
            registry::sigterm_if_current(ticket, pid);
        }
    }
    if wait_exit(ticket, pid, timeout) {
        return true;
    }
    pgrx::warning!("bgworker_rs worker with pid {pid} did not exit within {timeout:?}");
    false
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_wait("pid" int4, "timeout" interval DEFAULT NULL) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_wait_wrapper';
COMMENT ON FUNCTION bgw_wait(int4, interval) IS
'Waits until the bgworker_rs worker with this pid has exited (true; also if it already had), or timeout passes (false; NULL: no limit). false for a pid bgworker_rs does not know.';
"#)]
fn bgw_wait(pid: Option<i32>, timeout: Option<Interval>) -> bool {
    let pid = args::required(pid, "pid");
    let timeout = args::duration(timeout, "timeout");
    require_registry();
    let Some((ticket, entry)) = registry::find_by_pid(pid) else {
        return false;
    };
    check_may_manage(&entry, pid);
    if entry.pid != pid {
        return true; // found by its last pid: already gone
    }
    wait_exit(ticket, pid, timeout)
}
