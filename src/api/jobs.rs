//! SQL jobs: `bgw_run()` runs a statement in a background worker, once or
//! every interval; `bgw_result()` waits for a run's outcome; `bgw_cancel()`
//! stops a job. Jobs and their runs are rows in `bgw_job_defs` and
//! `bgw_job_runs`, in the database the scheduler connects to
//! (`bgworker_rs.database`); a job may run in any database.

use crate::access;
use crate::api::{args, launch, manage};
use crate::pg;
use crate::pg::UserError;
use crate::settings;
use crate::shmem::job_slots::{self, SQL_MAX};
use crate::shmem::{Kind, registry};
use crate::store::{first_value, installed_tables};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

pgrx::extension_sql!(
    r#"
CREATE TABLE bgw_job_defs (
    id int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sql text NOT NULL,
    database name NOT NULL,
    role name NOT NULL,
    every interval CHECK (every > '0'),
    timeout interval CHECK (timeout > '0'),
    state text NOT NULL DEFAULT 'scheduled'
        CHECK (state IN ('scheduled', 'finished', 'cancelled')),
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by name NOT NULL,
    next_run_at timestamptz,
    runs int4 NOT NULL DEFAULT 0
);
COMMENT ON TABLE bgw_job_defs IS
'Jobs created by bgw_run(); read them through the view bgw_jobs. state: scheduled (a run is due or to come), finished (a one-shot job has run), cancelled (bgw_cancel).';

CREATE TABLE bgw_job_runs (
    job int8 NOT NULL REFERENCES bgw_job_defs (id) ON DELETE CASCADE,
    run int4 NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    status text NOT NULL
        CHECK (status IN ('running', 'succeeded', 'failed', 'cancelled', 'timed out')),
    pid int4,
    rows int8,
    sqlstate text,
    error text,
    result jsonb,
    PRIMARY KEY (job, run)
);
COMMENT ON TABLE bgw_job_runs IS
'One row per run of a bgw_run() job. rows: rows returned or affected by the last statement; result: its first rows as a JSON array, at most 8 kB; error and sqlstate: why a run failed, was cancelled or timed out.';

-- Kept by pg_dump, as user data.
SELECT pg_catalog.pg_extension_config_dump('bgw_job_defs', '');
SELECT pg_catalog.pg_extension_config_dump('bgw_job_runs', '');

CREATE VIEW bgw_jobs AS
SELECT d.id, d.sql, d.database, d.role, d.every, d.timeout,
       CASE WHEN p.pid IS NOT NULL THEN 'running' ELSE d.state END AS state,
       d.created_at, d.created_by, d.next_run_at, d.runs, p.pid
  FROM bgw_job_defs d
  LEFT JOIN LATERAL (SELECT bgw_job_pid(d.id) AS pid) p ON true;
COMMENT ON VIEW bgw_jobs IS
'Every bgw_run() job: state is running (pid: its current run), scheduled, finished or cancelled.';

REVOKE ALL ON bgw_job_defs, bgw_job_runs, bgw_jobs FROM PUBLIC;
"#,
    name = "jobs_schema",
    requires = [bgw_job_pid],
);

/// An interval that must be greater than zero; NULL stays `None`.
fn positive(value: Option<Interval>, name: &str) -> Option<Duration> {
    let d = args::duration(value, name)?;
    if d.is_zero() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{name} must be greater than zero"),
        )
        .hint("Pass NULL for none.")
        .raise();
    }
    Some(d)
}

/// Jobs need the library preloaded with `bgworker_rs.max_jobs` > 0, and are
/// kept in the scheduler's database.
fn require_jobs() {
    manage::require_registry();
    if !job_slots::is_available() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "bgworker_rs jobs are disabled",
        )
        .detail("bgworker_rs.max_jobs is 0.")
        .hint("Set bgworker_rs.max_jobs in postgresql.conf and restart the server.")
        .raise();
    }
    let home = settings::DATABASE
        .get()
        .map(|d| d.to_string_lossy().into_owned())
        .unwrap_or_default();
    let here = pg::database_name(pg::current_database());
    if here != home {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("bgworker_rs jobs are kept in database \"{home}\", not \"{here}\""),
        )
        .detail("The job scheduler connects to the database named by bgworker_rs.database.")
        .hint(format!(
            "Connect to \"{home}\"; bgw_run(..., database => '{here}') runs a job in this database."
        ))
        .raise();
    }
}

fn wake_scheduler_at_commit() {
    if let Some(pid) = registry::live_pid(Kind::Scheduler) {
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
            pg::wake_backend(pid)
        });
    }
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_run(
    "sql" text,
    "every" interval DEFAULT NULL,
    "database" name DEFAULT NULL,
    "role" name DEFAULT NULL,
    "timeout" interval DEFAULT NULL
) RETURNS int8
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_run_wrapper';
COMMENT ON FUNCTION bgw_run(text, interval, name, name, interval) IS
'Creates a job that runs sql in a background worker, once or every interval (NULL: once), in database as role (NULL: the caller''s current ones, with bgw_launch''s permission rules), and returns its id. The first run starts when the calling transaction commits. A run taking longer than timeout is cancelled (statement_timeout). Outcomes go to bgw_job_runs; bgw_result() waits for one.';
"#)]
fn bgw_run(
    sql: Option<&str>,
    every: Option<Interval>,
    database: Option<&CStr>,
    role: Option<&CStr>,
    timeout: Option<Interval>,
) -> i64 {
    let sql = args::required(sql, "sql");
    if sql.len() > SQL_MAX {
        UserError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            format!("sql is too long ({} bytes)", sql.len()),
        )
        .detail(format!(
            "A job's statement may have at most {SQL_MAX} bytes."
        ))
        .hint("Put a longer statement in a function and run a call of it.")
        .raise();
    }
    let _ = positive(every, "every");
    let timeout_ms = positive(timeout, "timeout").map(|t| t.as_millis());
    if timeout_ms.is_some_and(|ms| ms > i32::MAX as u128 || ms == 0) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must be between 1 millisecond and 2147483647 milliseconds",
        )
        .raise();
    }
    require_jobs();
    if pg::recovery_in_progress() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot create a bgworker_rs job while the server is in recovery",
        )
        .raise();
    }
    let database = database.map_or_else(pg::current_database, launch::resolve_database);
    let role = role.map_or_else(pg::current_user, launch::resolve_role);
    access::check_permissions(database, role, 0);
    let me = pg::role_name(pg::current_user());
    let (database, role) = (pg::database_name(database), pg::role_name(role));

    let id = pg::as_table_owner(|| {
        Spi::connect_mut(|client| {
            let t = installed_tables(client)?;
            client
                .update(
                    &format!(
                        "INSERT INTO {} (sql, database, role, every, timeout, created_by, next_run_at) \
                         VALUES ($1, $2::name, $3::name, $4, $5, $6::name, now()) RETURNING id",
                        t.defs
                    ),
                    None,
                    &[
                        sql.into(),
                        database.into(),
                        role.into(),
                        every.into(),
                        timeout.into(),
                        me.into(),
                    ],
                )?
                .first()
                .get_one::<i64>()
        })
    });
    let id = id
        .unwrap_or_else(|e| error!("cannot create the job: {e}"))
        .unwrap_or_else(|| error!("cannot create the job: no id returned"));
    wake_scheduler_at_commit();
    id
}

/// What `bgw_result()` and `bgw_cancel()` need to know of a job.
struct JobRow {
    state: String,
    runs: i32,
    created_by: String,
    role: String,
    xmin: u32,
    running: Option<i32>,
}

fn job_row(job: i64) -> JobRow {
    let row = pg::as_table_owner(|| {
        Spi::connect_mut(|client| {
            let t = installed_tables(client)?;
            let table = client.update(
                &format!(
                    "SELECT state, runs, created_by::text, role::text, xmin::text::int8, \
                            (SELECT max(run) FROM {runs} r WHERE r.job = d.id AND r.finished_at IS NULL) \
                       FROM {defs} d WHERE id = $1",
                    runs = t.runs,
                    defs = t.defs
                ),
                None,
                &[job.into()],
            )?;
            if table.is_empty() {
                return Ok(None);
            }
            let row = table.first();
            Ok::<_, pgrx::spi::Error>(Some(JobRow {
                state: row.get::<String>(1)?.unwrap_or_default(),
                runs: row.get::<i32>(2)?.unwrap_or(0),
                created_by: row.get::<String>(3)?.unwrap_or_default(),
                role: row.get::<String>(4)?.unwrap_or_default(),
                xmin: row.get::<i64>(5)?.unwrap_or(0) as u32,
                running: row.get::<i32>(6)?,
            }))
        })
    })
    .unwrap_or_else(|e| error!("cannot read job {job}: {e}"));
    let Some(row) = row else {
        UserError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("bgworker_rs job {job} does not exist"),
        )
        .raise()
    };
    // Superusers, and roles with the privileges of the job's creator or of
    // the role it runs as.
    let me = pg::current_user();
    let privs_of = |name: &str| {
        std::ffi::CString::new(name)
            .ok()
            .and_then(|n| pg::role_oid(&n))
            .is_some_and(|oid| pg::has_privs_of_role(me, oid))
    };
    if !pg::is_superuser() && !privs_of(&row.created_by) && !privs_of(&row.role) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for bgworker_rs job {job}"),
        )
        .detail(format!(
            "Only superusers and roles with the privileges of role \"{}\" or \"{}\" may manage it.",
            row.created_by, row.role
        ))
        .raise();
    }
    row
}

/// The outcome of run `run` of job `job` once it has finished.
fn outcome(job: i64, run: i32) -> Option<pgrx::JsonB> {
    pg::as_table_owner(|| {
        Spi::connect_mut(|client| {
            let t = installed_tables(client)?;
            // Not read-only: each call takes a new snapshot, and so sees
            // what the scheduler committed meanwhile.
            client
                .update(
                    &format!(
                        "SELECT jsonb_build_object('job', job, 'run', run, 'status', status, \
                                'started_at', started_at, 'finished_at', finished_at, 'pid', pid, \
                                'rows', rows, 'sqlstate', sqlstate, 'error', error, 'result', result) \
                           FROM {} WHERE job = $1 AND run = $2 AND finished_at IS NOT NULL",
                        t.runs
                    ),
                    None,
                    &[job.into(), run.into()],
                )
                .and_then(first_value::<pgrx::JsonB>)
        })
    })
    .unwrap_or_else(|e| error!("cannot read the runs of job {job}: {e}"))
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_result("job" int8, "timeout" interval DEFAULT NULL) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_result_wrapper';
COMMENT ON FUNCTION bgw_result(int8, interval) IS
'Waits for the outcome of a run of job and returns it: the run in progress, else the next one of a scheduled job, else (finished or cancelled job) its last one. NULL if there is no such run, or none finished within timeout (NULL: no limit). Keys: job, run, status, started_at, finished_at, pid, rows, sqlstate, error, result.';
"#)]
fn bgw_result(job: Option<i64>, timeout: Option<Interval>) -> Option<pgrx::JsonB> {
    let job = args::required(job, "job");
    let timeout = args::duration(timeout, "timeout");
    require_jobs();
    if pg::isolation_uses_xact_snapshot() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "bgw_result cannot wait in a REPEATABLE READ or SERIALIZABLE transaction",
        )
        .detail("Its snapshot would never show runs recorded after it was taken.")
        .hint("Call it in a READ COMMITTED transaction.")
        .raise();
    }
    let row = job_row(job);
    if pg::is_current_transaction(row.xmin) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("bgworker_rs job {job} has not started: this transaction created it"),
        )
        .hint("Commit first; the job starts when the transaction that created it commits.")
        .raise();
    }
    let target = match (row.running, row.state.as_str()) {
        (Some(run), _) => run,
        (None, "scheduled") => row.runs + 1,
        (None, _) if row.runs > 0 => row.runs,
        (None, _) => return None, // cancelled before its first run
    };
    job_slots::wait_recorded(timeout, || {
        if let Some(found) = outcome(job, target) {
            return Some(Some(found));
        }
        // No run `target` will come once the job is over.
        let now = job_row(job);
        (now.state != "scheduled" && now.runs < target && now.running.is_none()).then_some(None)
    })
    .flatten()
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_cancel("job" int8) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_cancel_wrapper';
COMMENT ON FUNCTION bgw_cancel(int8) IS
'Cancels job: no further run starts, and a run in progress is stopped at once and recorded as cancelled. true if the job was scheduled or running; false if it had already finished or been cancelled.';
"#)]
fn bgw_cancel(job: Option<i64>) -> bool {
    let job = args::required(job, "job");
    require_jobs();
    job_row(job); // exists, and the caller may manage it
    let stopped = match job_slots::request_cancel(job) {
        Some(handle) => {
            if let Some(handle) = handle {
                pg::terminate_worker(handle);
            }
            true
        }
        None => false,
    };
    let updated = pg::as_table_owner(|| {
        Spi::connect_mut(|client| {
            let t = installed_tables(client)?;
            let n = client
                .update(
                    &format!(
                        "UPDATE {} SET state = 'cancelled', next_run_at = NULL \
                          WHERE id = $1 AND state = 'scheduled'",
                        t.defs
                    ),
                    None,
                    &[job.into()],
                )?
                .len();
            Ok::<_, pgrx::spi::Error>(n)
        })
    })
    .unwrap_or_else(|e| error!("cannot cancel job {job}: {e}"));
    wake_scheduler_at_commit();
    stopped || updated > 0
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_job_pid("job" int8) RETURNS int4
STABLE PARALLEL SAFE STRICT
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_job_pid_wrapper';
COMMENT ON FUNCTION bgw_job_pid(int8) IS
'The pid of the worker running job now, or NULL; used by the view bgw_jobs.';
"#)]
fn bgw_job_pid(job: i64) -> Option<i32> {
    job_slots::running_pid(job)
}
