//! SQL jobs: `bgw_run()` runs a statement in a background worker, once or
//! every interval; `bgw_result()` waits for a run's outcome; `bgw_cancel()`
//! stops a job. Jobs and their runs are rows in `bgw_job_defs` and
//! `bgw_job_runs`, in each database where the extension is installed; that
//! database's scheduler runs them, there or (`database =>`) in another.

use crate::access;
use crate::api::{args, launch, manage};
use crate::pg;
use crate::pg::UserError;
use crate::settings;
use crate::shmem::job_slots::{self, SQL_MAX};
use crate::shmem::schedulers;
use crate::store::{self, Kept, first_value};
use pgrx::prelude::*;
use std::ffi::CStr;
use std::time::Duration;

// Every name is qualified: the script runs with the target schema on the
// search_path, where a role with CREATE may have left look-alike functions
// and operators before the extension was installed (pgspot checks this).
pgrx::extension_sql!(
    r#"
CREATE TABLE @extschema@.bgw_job_defs (
    -- Named, so that a look-alike made beforehand fails the install instead
    -- of being taken under another name.
    id pg_catalog.int8 GENERATED ALWAYS AS IDENTITY
        (SEQUENCE NAME @extschema@.bgw_job_defs_id_seq) PRIMARY KEY,
    sql pg_catalog.text NOT NULL,
    -- NULL: this database, the one that keeps the job, whatever its OID or
    -- name (after a rename, or a restore into another cluster). Another
    -- database is kept with its name when the job was created: a run needs
    -- both to match, so that a restore into another cluster, where the OID
    -- may be another database's, never runs a job there.
    database pg_catalog.oid,
    database_name pg_catalog.name,
    role pg_catalog.regrole NOT NULL,
    every pg_catalog.interval,
    timeout pg_catalog.interval,
    atomic pg_catalog.bool NOT NULL DEFAULT true,
    gexec pg_catalog.bool NOT NULL DEFAULT false,
    -- bgw_schedule(): a name (unique per creator among live jobs), a cron
    -- schedule and the IANA time zone it is read in.
    name pg_catalog.text,
    schedule pg_catalog.text,
    timezone pg_catalog.text,
    active pg_catalog.bool NOT NULL DEFAULT true,
    retries pg_catalog.int4 NOT NULL DEFAULT 0
        CHECK (retries OPERATOR(pg_catalog.>=) 0),
    retry_delay pg_catalog.interval NOT NULL DEFAULT '10s',
    consecutive_failures pg_catalog.int4 NOT NULL DEFAULT 0,
    last_status pg_catalog.text,
    last_finished_at pg_catalog.timestamptz,
    -- Ticks that fell while a run was still going or waiting.
    skipped pg_catalog.int8 NOT NULL DEFAULT 0,
    -- The next retry of a failed run, and its attempt number.
    retry_at pg_catalog.timestamptz,
    retry_attempt pg_catalog.int4,
    state pg_catalog.text NOT NULL DEFAULT 'scheduled'
        CHECK (state OPERATOR(pg_catalog.=) ANY ('{scheduled,finished,cancelled}'::pg_catalog.text[])),
    reason pg_catalog.text,
    created_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by pg_catalog.regrole NOT NULL,
    next_run_at pg_catalog.timestamptz,
    runs pg_catalog.int4 NOT NULL DEFAULT 0
);
COMMENT ON TABLE @extschema@.bgw_job_defs IS
'Jobs created by bgw_run() and bgw_schedule() in this database; read them through the view bgw_jobs. database (NULL: this one), role and created_by are identities (OIDs), so a renamed role keeps its jobs and a new role with an old name never inherits them. state: scheduled (a run is due or to come), finished (a one-shot job has run), cancelled (bgw_cancel, or the scheduler, with the reason).';

CREATE TABLE @extschema@.bgw_job_runs (
    job pg_catalog.int8 NOT NULL REFERENCES @extschema@.bgw_job_defs (id) ON DELETE CASCADE,
    run pg_catalog.int4 NOT NULL,
    attempt pg_catalog.int4 NOT NULL DEFAULT 1,
    -- When it was due, and when, still waiting for a slot, it fails.
    due_at pg_catalog.timestamptz,
    expires_at pg_catalog.timestamptz,
    started_at pg_catalog.timestamptz,
    finished_at pg_catalog.timestamptz,
    status pg_catalog.text NOT NULL
        CHECK (status OPERATOR(pg_catalog.=) ANY ('{queued,running,succeeded,failed,cancelled,timed out}'::pg_catalog.text[])),
    pid pg_catalog.int4,
    rows pg_catalog.int8,
    sqlstate pg_catalog.text,
    error pg_catalog.text,
    detail pg_catalog.text,
    hint pg_catalog.text,
    error_position pg_catalog.int4,
    error_statement pg_catalog.text,
    statements pg_catalog.jsonb,
    result pg_catalog.jsonb,
    -- Taken into its job's last_status, consecutive_failures and retry.
    counted pg_catalog.bool NOT NULL DEFAULT false,
    PRIMARY KEY (job, run)
);
CREATE INDEX bgw_job_defs_due ON @extschema@.bgw_job_defs
    (LEAST(next_run_at, retry_at))
    WHERE state OPERATOR(pg_catalog.=) 'scheduled';
CREATE UNIQUE INDEX bgw_job_defs_name ON @extschema@.bgw_job_defs (created_by, name)
    WHERE name IS NOT NULL AND state OPERATOR(pg_catalog.<>) 'cancelled';
CREATE INDEX bgw_job_runs_queued ON @extschema@.bgw_job_runs (due_at)
    WHERE status OPERATOR(pg_catalog.=) 'queued';
CREATE INDEX bgw_job_runs_uncounted ON @extschema@.bgw_job_runs (finished_at)
    WHERE NOT counted;
-- A job's run going, if any: found without reading the job's history.
CREATE INDEX bgw_job_runs_running ON @extschema@.bgw_job_runs (job)
    WHERE status OPERATOR(pg_catalog.=) 'running';

COMMENT ON TABLE @extschema@.bgw_job_runs IS
'One row per run (or retry: attempt) of a job; status queued while it waits for a free slot (started_at NULL), until expires_at. statements: the statements that finished, in order, each {"position", "tag", "rows"} (rows where the command tag counts them; generated statements also have "generated" and the start of their "text"); rows: the last statement''s count; result: the first rows of the last statement that returned rows, as a JSON array, at most 8 kB; sqlstate, error, detail, hint: why a run failed, was cancelled or timed out; error_position and error_statement: the statement that failed or was stopped (its position and the start of its text).';

-- Kept by pg_dump, as user data; the sequence too, so that a restored
-- database goes on with new job ids.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.bgw_job_defs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.bgw_job_runs', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.bgw_job_defs_id_seq', '');

CREATE VIEW @extschema@.bgw_jobs WITH (security_barrier) AS
SELECT d.id, d.name, d.sql, d.schedule, d.timezone,
       CASE WHEN d.database IS NULL THEN pg_catalog.current_database()
            ELSE (SELECT db.datname FROM pg_catalog.pg_database db
                   WHERE db.oid OPERATOR(pg_catalog.=) d.database) END AS database,
       pg_catalog.pg_get_userbyid(d.role::pg_catalog.oid) AS role,
       d.every, d.timeout, d.atomic, d.gexec, d.active, d.retries, d.retry_delay,
       CASE WHEN p.pid IS NOT NULL THEN 'running'
            WHEN EXISTS (SELECT FROM @extschema@.bgw_job_runs q
                          WHERE q.job OPERATOR(pg_catalog.=) d.id
                            AND q.status OPERATOR(pg_catalog.=) 'queued') THEN 'queued'
            ELSE d.state END AS state,
       d.created_at,
       pg_catalog.pg_get_userbyid(d.created_by::pg_catalog.oid) AS created_by,
       d.next_run_at, d.runs, p.pid, d.reason,
       d.consecutive_failures, d.last_status, d.last_finished_at, d.skipped
  FROM @extschema@.bgw_job_defs d
  LEFT JOIN LATERAL (SELECT @extschema@.bgw_job_pid(d.id) AS pid) p ON true
 WHERE @extschema@.bgw_job_visible(d.created_by::pg_catalog.oid, d.role::pg_catalog.oid);
COMMENT ON VIEW @extschema@.bgw_jobs IS
'The jobs the reader may manage (superusers: all): state is running (pid: its current run), queued (waiting for a free slot), scheduled, finished or cancelled; active false: paused (bgw_alter); reason: why the scheduler cancelled it (a dropped role or database); skipped: ticks that fell while a run was going.';

REVOKE ALL ON @extschema@.bgw_job_defs, @extschema@.bgw_job_runs, @extschema@.bgw_jobs FROM PUBLIC;
"#,
    name = "jobs_schema",
    requires = [bgw_job_pid, bgw_job_visible],
);

/// The longest `every`: a longer one is a mistake, and near the end of
/// PostgreSQL's calendar it could not be added to a time.
pub(super) const EVERY_MAX: Duration = Duration::from_secs(3653 * 86_400);
pub(super) const EVERY_MAX_TEXT: &str = "10 years (3653 days)";

/// Jobs need the library preloaded with `bgworker_rs.max_jobs` > 0.
pub(super) fn require_jobs() {
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
}

/// This database's scheduler looks at the jobs when the transaction
/// commits: woken if it runs, else started by the launcher.
pub(super) fn wake_scheduler_at_commit() {
    wake_scheduler_at_commit_of(pg::current_database());
}

/// As [`wake_scheduler_at_commit`], for `database`'s scheduler.
pub(super) fn wake_scheduler_at_commit_of(database: pg_sys::Oid) {
    let db = database.to_u32();
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        schedulers::ask_for(db);
    });
}

/// Where a new job runs: `None` is this database (stored as NULL, so that
/// the job follows its database through a rename or a restore), as is
/// this database named. Returns what to store (OID and name, or NULLs)
/// and the OID to check permissions on.
pub(super) fn target_database(
    database: Option<&CStr>,
) -> (Option<pg_sys::Oid>, Option<String>, pg_sys::Oid) {
    let here = pg::current_database();
    match database.map(launch::resolve_database) {
        Some(db) if db != here => (Some(db), Some(pg::database_name(db)), db),
        _ => (None, None, here),
    }
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_run(
    "sql" text,
    "every" interval DEFAULT NULL,
    "database" name DEFAULT NULL,
    "role" name DEFAULT NULL,
    "timeout" interval DEFAULT NULL,
    "atomic" boolean DEFAULT true,
    "gexec" boolean DEFAULT false,
    "at" timestamptz DEFAULT NULL
) RETURNS int8
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_run_wrapper';
COMMENT ON FUNCTION bgw_run(text, interval, name, name, interval, boolean, boolean, timestamptz) IS
'Creates a job that runs sql in a background worker, once or every interval (NULL: once), in database as role (NULL: the caller''s current ones, with bgw_launch''s permission rules), and returns its id. The first run starts at at, or (NULL) when the calling transaction commits; with every, runs go on from at. Its statements run at top level, as a client''s: atomic (the default) runs them in one transaction, and a lone statement such as VACUUM outside any; atomic => false runs each in its own transaction and stops at the first that fails. gexec => true runs each value of the last statement''s rows as a statement of its own, as psql''s \gexec. A run taking longer than timeout in all is cancelled. Outcomes go to bgw_job_runs; bgw_result() waits for one.';
"#)]
#[allow(clippy::too_many_arguments)] // the SQL signature
fn bgw_run(
    sql: Option<&str>,
    every: Option<Interval>,
    database: Option<&CStr>,
    role: Option<&CStr>,
    timeout: Option<Interval>,
    atomic: Option<bool>,
    gexec: Option<bool>,
    at: Option<TimestampWithTimeZone>,
) -> i64 {
    let sql = checked_sql(sql);
    let atomic = args::required(atomic, "atomic");
    let gexec = args::required(gexec, "gexec");
    let _ = args::bounded(every, "every", EVERY_MAX, EVERY_MAX_TEXT);
    checked_timeout(timeout);
    if at.is_some_and(|t| t.is_infinity() || t.is_neg_infinity()) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "at must be a finite time",
        )
        .raise();
    }
    require_writable_jobs();
    let (database, database_name, target) = target_database(database);
    let role = role.map_or_else(pg::current_user, launch::resolve_role);
    access::check_permissions(target, role, 0);
    let me = pg::current_user();

    let home = pg::current_database().to_u32();
    let created = store::with_installed_tables(|client, t| {
        let (id, timeout_ms) = client
            .update_kept(
                &format!(
                    "INSERT INTO {} (sql, database, database_name, role, every, timeout, created_by, next_run_at, atomic, gexec) \
                     VALUES ($1, $2, $7, $3::oid::regrole, $4, $5, $6::oid::regrole, coalesce($10, now()), $8, $9) \
                     RETURNING id, coalesce((extract(epoch FROM timeout) * 1000)::int8, 0)",
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
                    database_name.into(),
                    atomic.into(),
                    gexec.into(),
                    at.into(),
                ],
            )?
            .first()
            .get_two::<i64, i64>()?;
        if let Some(id) = id
            && every.is_none()
            && at.is_none()
        {
            let run = job_slots::Run {
                home,
                job: id,
                run: 1,
                database: target.to_u32(),
                role: role.to_u32(),
                created_by: me.to_u32(),
                stamp: pg::connect_stamp(role, target),
                timeout_ms: timeout_ms.unwrap_or(0).clamp(0, i32::MAX.into()) as i32,
                atomic,
                gexec,
                sql,
            };
            let handed = start_on_warm_worker(client, t, &run)?;
            return Ok((Some(id), handed));
        }
        Ok((id, false))
    });
    let (id, handed) = created.unwrap_or_else(|e| error!("cannot create the job: {e}"));
    let id = id.unwrap_or_else(|| error!("cannot create the job: no id returned"));
    // A run handed to a warm worker needs no look from the scheduler until
    // it ends: the worker asks for one then, as does the commit that finds
    // the worker gone.
    if !handed {
        wake_scheduler_at_commit();
    }
    id
}

/// The fast path of a one-shot job due now: an idle warm worker for its
/// database and role takes its first run, which starts as soon as this
/// transaction commits, without waiting for the scheduler. The run is
/// recorded as started in this transaction, so that a crash after the
/// commit finds it unfinished (and marks it failed), as for any run; the
/// scheduler records its outcome. The worker is given back if this
/// transaction, or the savepoint the run was created under, rolls back,
/// whatever fails. Not on a server that may prepare transactions
/// (`PREPARE TRANSACTION` fires no commit callback), nor while a database
/// waits for a job slot (its runs go first).
fn start_on_warm_worker(
    client: &mut pgrx::spi::SpiClient<'_>,
    t: &store::Tables,
    run: &job_slots::Run<'_>,
) -> store::SpiResult<bool> {
    if settings::JOB_WORKER_IDLE_MS.get() <= 0
        || pg::setting(c"max_prepared_transactions").as_deref() != Some("0")
    {
        return Ok(false);
    }
    // The job's row, inserted above, belongs to this (sub)transaction: at
    // commit, its id tells whether the rows written here were kept.
    let xid = pg::current_xid();
    let Some(slot) = job_slots::claim_warm(run) else {
        return Ok(false);
    };
    let id = job_slots::RunId {
        home: run.home,
        job: run.job,
        run: run.run,
    };
    // Both registered before anything below can fail.
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Abort, move || {
        job_slots::unclaim(slot, id);
    });
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        if pg::did_commit(xid) {
            job_slots::launch_claimed(slot, id);
        } else {
            job_slots::unclaim(slot, id);
        }
    });
    crate::faults::after_reserve(run.job);
    client.update_kept(
        &format!(
            "WITH job AS (UPDATE {defs} SET runs = 1, next_run_at = NULL \
                           WHERE id = $1 AND runs = 0 \
                           RETURNING id, now() AS due) \
             INSERT INTO {runs} (job, run, attempt, due_at, expires_at, started_at, status) \
             SELECT id, 1, 1, due, due + $2 * interval '1 millisecond', clock_timestamp(), 'running' \
               FROM job",
            defs = t.defs,
            runs = t.runs
        ),
        None,
        &[run.job.into(), settings::QUEUE_TIMEOUT_MS.get().into()],
    )?;
    Ok(true)
}

/// A job's statement: given, and not longer than a job slot holds.
pub(super) fn checked_sql(sql: Option<&str>) -> &str {
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
    sql
}

/// A run's timeout: finite, positive, at most i32::MAX milliseconds.
pub(super) fn checked_timeout(timeout: Option<Interval>) {
    let timeout_ms = args::bounded(timeout, "timeout", Duration::MAX, "").map(|t| t.as_millis());
    if timeout_ms.is_some_and(|ms| ms > i32::MAX as u128 || ms == 0) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "timeout must be between 1 millisecond and 2147483647 milliseconds",
        )
        .raise();
    }
}

/// Jobs are available, and may be created or changed (not in recovery,
/// not in a template database, where no scheduler runs).
pub(super) fn require_writable_jobs() {
    require_jobs();
    if pg::recovery_in_progress() {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "cannot create or change a bgworker_rs job while the server is in recovery",
        )
        .raise();
    }
    if pg::is_template_database(pg::current_database()) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "cannot create or change a bgworker_rs job in template database \"{}\"",
                pg::database_name(pg::current_database())
            ),
        )
        .detail("No job scheduler runs in a template database: it would keep CREATE DATABASE from copying it.")
        .hint("Create the job in another database; database => runs it elsewhere.")
        .raise();
    }
}

/// What `bgw_result()` and `bgw_cancel()` need to know of a job.
pub(super) struct JobRow {
    pub(super) state: String,
    runs: i32,
    created_by: pg_sys::Oid,
    role: pg_sys::Oid,
    xmin: u32,
    running: Option<i32>,
}

/// How long a look at a job waits for the outcomes its runs left to be
/// recorded (the scheduler's next wake, or its restart).
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) fn job_row(job: i64) -> JobRow {
    // `bgw_result` returns an outcome as soon as the worker leaves it; the
    // scheduler records it moments later. Whoever reads or changes the job
    // then (bgw_cancel of a job just finished, say) waits for that, a
    // little at most, to see the job as the outcome left it.
    job_slots::await_recorded(pg::current_database().to_u32(), job, RECORD_WAIT);
    job_row_now(job)
}

/// [`job_row`] as the tables show it now, without waiting (inside a wait
/// on the same condition variable).
fn job_row_now(job: i64) -> JobRow {
    let row = store::with_installed_tables(|client, t| {
        let table = client.update_kept(
            &format!(
                "SELECT state, runs, created_by::oid, role::oid, xmin::text::int8, \
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
        Ok(Some(JobRow {
            state: row.get::<String>(1)?.unwrap_or_default(),
            runs: row.get::<i32>(2)?.unwrap_or(0),
            created_by: row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
            role: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
            xmin: row.get::<i64>(5)?.unwrap_or(0) as u32,
            running: row.get::<i32>(6)?,
        }))
    })
    .unwrap_or_else(|e| error!("cannot read job {job}: {e}"));
    let Some(row) = row else {
        UserError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("bgworker_rs job {job} does not exist"),
        )
        .raise()
    };
    if !may_manage(row.created_by, row.role) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for bgworker_rs job {job}"),
        )
        .detail(format!(
            "Only superusers and roles with the privileges of role \"{}\" or \"{}\" may manage it.",
            pg::role_name(row.created_by),
            pg::role_name(row.role)
        ))
        .raise();
    }
    row
}

/// The outcome of run `run` of job `job` once it has finished.
fn outcome(job: i64, run: i32) -> Option<pgrx::JsonB> {
    store::with_installed_tables(|client, t| {
        // Not read-only: each call takes a new snapshot, and so sees what
        // the scheduler committed meanwhile.
        client
            .update_kept(
                &format!(
                    "SELECT jsonb_build_object('job', job, 'run', run, 'status', status, \
                            'started_at', started_at, 'finished_at', finished_at, 'pid', pid, \
                            'rows', rows, 'sqlstate', sqlstate, 'error', error, 'detail', detail, \
                            'hint', hint, 'error_position', error_position, \
                            'error_statement', error_statement, 'statements', statements, \
                            'result', result) \
                       FROM {} WHERE job = $1 AND run = $2 AND finished_at IS NOT NULL",
                    t.runs
                ),
                None,
                &[job.into(), run.into()],
            )
            .and_then(first_value::<pgrx::JsonB>)
    })
    .unwrap_or_else(|e| error!("cannot read the runs of job {job}: {e}"))
}

/// The outcome of a run as its worker left it in `slot`, before the
/// scheduler records it: the same values, `finished_at` included.
fn outcome_left(slot: &job_slots::Slot) -> Option<pgrx::JsonB> {
    let outcome = slot.outcome();
    store::with_installed_tables(|client, t| {
        client
            .update_kept(
                &format!(
                    "SELECT jsonb_build_object('job', job, 'run', run, 'status', $3::text, \
                            'started_at', started_at, \
                            'finished_at', coalesce({finished}, clock_timestamp()), \
                            'pid', nullif($8::int4, 0), 'rows', $4::int8, 'sqlstate', $5::text, \
                            'error', $6::text, 'detail', $9::text, 'hint', $10::text, \
                            'error_position', nullif($12::int4, 0), \
                            'error_statement', $13::text, 'statements', $11::jsonb, \
                            'result', $7::jsonb) \
                       FROM {runs} WHERE job = $1 AND run = $2 AND finished_at IS NULL",
                    runs = t.runs,
                    finished = store::FINISHED_AT,
                ),
                None,
                &store::outcome_args(slot, &outcome),
            )
            .and_then(first_value::<pgrx::JsonB>)
    })
    .unwrap_or_else(|e| error!("cannot read the runs of job {}: {e}", slot.job))
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_result("job" int8, "timeout" interval DEFAULT NULL) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_result_wrapper';
COMMENT ON FUNCTION bgw_result(int8, interval) IS
'Waits for the outcome of a run of job and returns it: the run in progress, else the next one of a scheduled job, else (finished or cancelled job) its last one. NULL if there is no such run, or none finished within timeout (NULL: no limit). Keys: job, run, status, started_at, finished_at, pid, rows, sqlstate, error, detail, hint, error_position, error_statement, statements, result (see bgw_job_runs).';
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
    // Not job_row: a run's outcome left in its slot is what we return;
    // waiting for it to be recorded first could find its job not yet
    // finished, and wait for a run that never comes.
    let row = job_row_now(job);
    // A job this transaction created or changed: the scheduler cannot see
    // it (or is kept from recording its run) until we commit, so waiting
    // here would wait forever.
    if pg::is_current_transaction(row.xmin) {
        let message = if row.state == "cancelled" {
            format!("bgworker_rs job {job} was cancelled by this transaction")
        } else {
            format!("bgworker_rs job {job} has not started: this transaction created it")
        };
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            message,
        )
        .hint("Commit first; the scheduler sees the job when the transaction commits.")
        .raise();
    }
    let target = match (row.running, row.state.as_str()) {
        (Some(run), _) => run,
        (None, "scheduled") => row.runs + 1,
        (None, _) if row.runs > 0 => row.runs,
        (None, _) => return None, // cancelled before its first run
    };
    let home = pg::current_database().to_u32();
    job_slots::wait_recorded(timeout, || {
        // Shared memory first: a run in progress needs no look at the
        // tables, and one just finished is returned before it is recorded.
        match job_slots::find(home, job, target) {
            Some(slot) if slot.state == job_slots::SlotState::Done => {
                if let Some(found) = outcome_left(&slot) {
                    return Some(Some(found));
                }
            }
            Some(_) => return None,
            None => {}
        }
        if let Some(found) = outcome(job, target) {
            return Some(Some(found));
        }
        // No run `target` will come once the job is over.
        let now = job_row_now(job);
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
    cancel(job)
}

/// Cancels a job the caller may manage: its run in progress is stopped, a
/// queued one never starts, and no more come.
///
/// The order matters, as the scheduler may be starting a run meanwhile. It
/// holds that run's row locked until it commits, so the update of queued
/// runs waits for that commit and then finds the run running: only then
/// are the job slots looked at, where the run now holds one. (A slot only
/// reserved has no worker yet: the scheduler terminates the one it
/// registers, and a worker that finds the request as it starts runs
/// nothing.) The scheduler also holds the job's row while it starts a run,
/// and skips a job whose row another transaction holds: the update of the
/// job waits for a start under way, and the slots are looked at once more
/// after it; from then on, until this transaction ends, no run of the job
/// starts.
///
/// A finished job with a run still to end (`bgw_run_now`), or whose run
/// this call stopped and the scheduler recorded meanwhile, is cancelled
/// too. Stopping a run is not undone if
/// this transaction rolls back.
pub(super) fn cancel(job: i64) -> bool {
    let home = pg::current_database().to_u32();
    let stop = || match job_slots::request_cancel(home, job) {
        Some(handle) => {
            if let Some(handle) = handle {
                pg::terminate_worker(handle);
            }
            true
        }
        None => false,
    };
    let (updated, stopped) = store::with_installed_tables(|client, t| {
        let queued = client
            .update(
                &format!(
                    "UPDATE {} SET status = 'cancelled', finished_at = clock_timestamp(), \
                            sqlstate = '57014', error = 'cancelled by bgw_cancel() before it started' \
                      WHERE job = $1 AND status = 'queued'",
                    t.runs
                ),
                None,
                &[job.into()],
            )?
            .len();
        let stopped = stop();
        if stopped {
            crate::faults::cancel_stopped_a_run();
        }
        let n = client
            .update(
                &format!(
                    "UPDATE {defs} SET state = 'cancelled', next_run_at = NULL, \
                            retry_at = NULL, retry_attempt = NULL \
                      WHERE id = $1 \
                        AND (state = 'scheduled' \
                             OR state = 'finished' AND ($2 OR EXISTS ( \
                                  SELECT FROM {runs} WHERE job = $1 AND finished_at IS NULL)))",
                    defs = t.defs,
                    runs = t.runs
                ),
                None,
                // A run queued or stopped by this call counts as one still to
                // end: the scheduler may have recorded the stopped one, and
                // marked a one-shot job finished, in between.
                &[job.into(), (queued > 0 || stopped).into()],
            )?
            .len();
        Ok((n + queued, stop() || stopped))
    })
    .unwrap_or_else(|e| error!("cannot cancel job {job}: {e}"));
    wake_scheduler_at_commit();
    stopped || updated > 0
}

/// Superusers, and roles with the privileges of the job's creator or of the
/// role it runs as. A dropped role's OID matches nobody but superusers.
pub(super) fn may_manage(created_by: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    let me = pg::current_user();
    pg::is_superuser() || pg::has_privs_of_role(me, created_by) || pg::has_privs_of_role(me, role)
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_job_visible("created_by" oid, "role" oid) RETURNS bool
STABLE PARALLEL SAFE STRICT
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_job_visible_wrapper';
COMMENT ON FUNCTION bgw_job_visible(oid, oid) IS
'May the current user manage a job of this creator and role? The row filter of the view bgw_jobs.';
"#)]
fn bgw_job_visible(created_by: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    may_manage(created_by, role)
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_job_pid("job" int8) RETURNS int4
STABLE PARALLEL SAFE STRICT
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_job_pid_wrapper';
COMMENT ON FUNCTION bgw_job_pid(int8) IS
'The pid of the worker running job now, or NULL; used by the view bgw_jobs.';
"#)]
fn bgw_job_pid(job: i64) -> Option<i32> {
    job_slots::running_pid(pg::current_database().to_u32(), job)
}
