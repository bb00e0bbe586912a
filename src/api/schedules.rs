//! Named jobs on a cron schedule, as pg_cron's `cron.schedule(name, ...)`:
//! `bgw_schedule()` creates or replaces one, `bgw_alter()` changes any job
//! (and pauses or resumes it), `bgw_run_now()` queues one extra run,
//! `bgw_unschedule()` cancels by name. Schedules are parsed, and their
//! times computed, by `crate::schedule`.

use crate::access;
use crate::api::jobs::{
    self, EVERY_MAX, EVERY_MAX_TEXT, checked_sql, checked_timeout, job_row, require_writable_jobs,
    wake_scheduler_at_commit,
};
use crate::api::{args, launch};
use crate::pg::{self, UserError};
use crate::schedule;
use crate::settings;
use crate::store::{self, first_value};
use pgrx::prelude::*;
use std::ffi::CStr;

/// Longest job name, in bytes.
const NAME_MAX: usize = 200;
/// Longest schedule, in bytes: the scheduler reads it at every tick.
const SCHEDULE_MAX: usize = 1000;
/// Most retries of a failed run.
const RETRIES_MAX: i32 = 1000;

fn invalid(message: String) -> UserError {
    UserError::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
}

/// A schedule and the time zone it is read in, checked; with its next
/// time (microseconds since 1970). `timezone` NULL: the caller's TimeZone.
fn checked_schedule(text: &str, timezone: Option<&str>) -> (String, String, i64) {
    let timezone = timezone
        .map(str::to_string)
        .or_else(|| pg::setting(c"TimeZone"))
        .unwrap_or_else(|| "UTC".into());
    if text.len() > SCHEDULE_MAX {
        invalid(format!(
            "schedule is too long ({} bytes; at most {SCHEDULE_MAX})",
            text.len()
        ))
        .hint(schedule::FORMS)
        .raise();
    }
    if let Err(e) = schedule::Schedule::parse(text) {
        invalid(format!("schedule is not valid: {e}"))
            .hint(schedule::FORMS)
            .raise();
    }
    if let Err(e) = schedule::time_zone(&timezone) {
        invalid(format!("timezone is not valid: {e}"))
            .hint("Give an IANA time zone name, such as Europe/Paris or UTC; pg_timezone_names lists them.")
            .raise();
    }
    let next = schedule::next_micros(text, &timezone, pg::now_unix_micros(), None)
        .unwrap_or_else(|e| invalid(format!("schedule is not valid: {e}")).raise());
    let Some(next) = next else {
        invalid(format!(
            "schedule \"{}\" never comes: it has no next time",
            text.trim()
        ))
        .hint(schedule::FORMS)
        .raise()
    };
    (text.trim().to_string(), timezone, next)
}

fn checked_retries(retries: Option<i32>) -> Option<i32> {
    if let Some(n) = retries.filter(|n| !(0..=RETRIES_MAX).contains(n)) {
        invalid(format!(
            "retries must be between 0 and {RETRIES_MAX}, not {n}"
        ))
        .raise();
    }
    retries
}

fn checked_name(name: Option<&str>) -> &str {
    let name = args::required(name, "name");
    if name.trim().is_empty() || name.len() > NAME_MAX {
        invalid(format!(
            "name must have 1 to {NAME_MAX} bytes and not only white space"
        ))
        .raise();
    }
    name
}

/// SQL for a time in microseconds since 1970, given as parameter `$n`.
fn at(n: usize) -> String {
    format!("(timestamptz 'epoch' + ${n}::int8 * interval '1 microsecond')")
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_schedule(
    "name" text,
    "schedule" text,
    "sql" text,
    "database" name DEFAULT NULL,
    "role" name DEFAULT NULL,
    "timezone" text DEFAULT NULL,
    "timeout" interval DEFAULT NULL,
    "atomic" boolean DEFAULT true,
    "retries" int4 DEFAULT 0,
    "retry_delay" interval DEFAULT '10s'
) RETURNS int8
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_schedule_wrapper';
COMMENT ON FUNCTION bgw_schedule(text, text, text, name, name, text, interval, boolean, int4, interval) IS
'Creates the job name, which runs sql on schedule (5-field cron, 6 fields with seconds first, @hourly/@daily/@weekly/@monthly/@yearly, or ''N seconds'') read in timezone (an IANA name; NULL: the caller''s TimeZone now), and returns its id; or, if the caller already has a job of that name, makes it this one. A failed run is retried up to retries times, after retry_delay, doubled each time. Names are unique per creator.';
"#)]
#[allow(clippy::too_many_arguments)] // the SQL signature
fn bgw_schedule(
    name: Option<&str>,
    schedule: Option<&str>,
    sql: Option<&str>,
    database: Option<&CStr>,
    role: Option<&CStr>,
    timezone: Option<&str>,
    timeout: Option<Interval>,
    atomic: Option<bool>,
    retries: Option<i32>,
    retry_delay: Option<Interval>,
) -> i64 {
    let name = checked_name(name);
    let schedule = args::required(schedule, "schedule");
    let sql = checked_sql(sql);
    checked_timeout(timeout);
    let atomic = args::required(atomic, "atomic");
    let retries = args::required(checked_retries(retries), "retries");
    let retry_delay = args::required(retry_delay, "retry_delay");
    let _ = args::bounded(Some(retry_delay), "retry_delay", EVERY_MAX, EVERY_MAX_TEXT);
    let (schedule, timezone, next) = checked_schedule(schedule, timezone);
    require_writable_jobs();
    let (database, database_name, target) = jobs::target_database(database);
    let role = role.map_or_else(pg::current_user, launch::resolve_role);
    access::check_permissions(target, role, 0);
    let me = pg::current_user();

    // One statement, so that two sessions scheduling one name meet at the
    // unique index: the second replaces what the first made.
    let id = store::with_installed_tables(|client, t| {
        client
            .update(
                &format!(
                    "INSERT INTO {defs} AS d (created_by, name, sql, database, database_name, role, \
                                          schedule, timezone, timeout, atomic, retries, \
                                          retry_delay, next_run_at) \
                     VALUES ($1::oid::regrole, $2, $3, $4, $5, $6::oid::regrole, $7, $8, $9, $10, \
                             $11, $12, {next}) \
                     ON CONFLICT (created_by, name) \
                        WHERE name IS NOT NULL AND state <> 'cancelled' \
                     DO UPDATE SET sql = excluded.sql, database = excluded.database, \
                            database_name = excluded.database_name, schedule = excluded.schedule, \
                            timezone = excluded.timezone, timeout = excluded.timeout, \
                            atomic = excluded.atomic, retries = excluded.retries, \
                            retry_delay = excluded.retry_delay, next_run_at = excluded.next_run_at, \
                            every = NULL, gexec = false, active = true, state = 'scheduled', \
                            reason = NULL, retry_at = NULL, retry_attempt = NULL \
                      WHERE d.role = excluded.role \
                     RETURNING id",
                    defs = t.defs,
                    next = at(13)
                ),
                None,
                &[
                    me.into(),
                    name.into(),
                    sql.into(),
                    database.into(),
                    database_name.into(),
                    role.into(),
                    schedule.as_str().into(),
                    timezone.as_str().into(),
                    timeout.into(),
                    atomic.into(),
                    retries.into(),
                    retry_delay.into(),
                    next.into(),
                ],
            )
            .and_then(first_value::<i64>)
    })
    .unwrap_or_else(|e| error!("cannot schedule job \"{name}\": {e}"));
    // No row: the caller's job of that name runs as another role.
    let Some(id) = id else {
        UserError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("you already have a job named \"{name}\", which runs as another role"),
        )
        .detail(format!(
            "Replacing it would make it run as role \"{}\".",
            pg::role_name(role)
        ))
        .hint("Choose another name, or bgw_unschedule() that job first.")
        .raise()
    };
    wake_scheduler_at_commit();
    id
}

/// What `bgw_alter()` needs of a job beyond `job_row`.
struct Current {
    schedule: Option<String>,
    timezone: Option<String>,
    database: pg_sys::Oid,
    role: pg_sys::Oid,
    active: bool,
}

fn current(job: i64) -> Current {
    store::with_installed_tables(|client, t| {
        let table = client.update(
            &format!(
                "SELECT schedule, timezone, database, role::oid, active FROM {} WHERE id = $1",
                t.defs
            ),
            None,
            &[job.into()],
        )?;
        let row = table.first();
        Ok(Current {
            schedule: row.get::<String>(1)?,
            timezone: row.get::<String>(2)?,
            database: row
                .get::<pg_sys::Oid>(3)?
                .unwrap_or_else(pg::current_database),
            role: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
            active: row.get::<bool>(5)?.unwrap_or(true),
        })
    })
    .unwrap_or_else(|e| error!("cannot read job {job}: {e}"))
}

fn refuse_cancelled(job: i64, state: &str) {
    if state == "cancelled" {
        UserError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("bgworker_rs job {job} is cancelled"),
        )
        .hint("Create a new job.")
        .raise();
    }
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_alter(
    "job" int8,
    "schedule" text DEFAULT NULL,
    "sql" text DEFAULT NULL,
    "timezone" text DEFAULT NULL,
    "timeout" interval DEFAULT NULL,
    "retries" int4 DEFAULT NULL,
    "retry_delay" interval DEFAULT NULL,
    "active" boolean DEFAULT NULL
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_alter_wrapper';
COMMENT ON FUNCTION bgw_alter(int8, text, text, text, interval, int4, interval, boolean) IS
'Changes job: each argument given replaces that field, NULL leaves it. active => false pauses the job (a run going goes on), true resumes it from its schedule. A new sql needs the rights bgw_run would, and makes the caller the job''s creator.';
"#)]
#[allow(clippy::too_many_arguments)] // the SQL signature
fn bgw_alter(
    job: Option<i64>,
    schedule: Option<&str>,
    sql: Option<&str>,
    timezone: Option<&str>,
    timeout: Option<Interval>,
    retries: Option<i32>,
    retry_delay: Option<Interval>,
    active: Option<bool>,
) {
    let job = args::required(job, "job");
    let sql = sql.map(|s| checked_sql(Some(s)));
    checked_timeout(timeout);
    let retries = checked_retries(retries);
    let _ = args::bounded(retry_delay, "retry_delay", EVERY_MAX, EVERY_MAX_TEXT);
    require_writable_jobs();
    let row = job_row(job);
    refuse_cancelled(job, &row.state);
    let now = current(job);
    if timezone.is_some() && schedule.is_none() && now.schedule.is_none() {
        invalid(format!(
            "job {job} has no cron schedule for timezone to apply to"
        ))
        .hint("Give a schedule too.")
        .raise();
    }
    // A new schedule or zone, or a resume: the next time from now.
    let resumed = active == Some(true) && !now.active;
    let new_schedule = match (schedule, &now.schedule) {
        (Some(s), _) => Some(checked_schedule(s, timezone.or(now.timezone.as_deref()))),
        (None, Some(s)) if timezone.is_some() || resumed => {
            Some(checked_schedule(s, timezone.or(now.timezone.as_deref())))
        }
        _ => None,
    };
    let me = pg::current_user();
    if sql.is_some() {
        access::check_permissions(now.database, now.role, 0);
    }
    let changed = store::with_installed_tables(|client, t| {
        let changed = client.update(
            &format!(
                "UPDATE {defs} SET \
                   schedule = coalesce($2, schedule), timezone = coalesce($3, timezone), \
                   next_run_at = CASE WHEN $2 IS NOT NULL THEN {next} \
                                      WHEN $9 AND every IS NOT NULL AND next_run_at < now() \
                                        THEN next_run_at + every * ceil( \
                                               extract(epoch FROM now() - next_run_at) \
                                               / extract(epoch FROM every)) \
                                      ELSE next_run_at END, \
                   every = CASE WHEN $2 IS NOT NULL THEN NULL ELSE every END, \
                   state = CASE WHEN $2 IS NOT NULL THEN 'scheduled' ELSE state END, \
                   sql = coalesce($4, sql), \
                   created_by = CASE WHEN $4 IS NOT NULL THEN $10::oid::regrole ELSE created_by END, \
                   timeout = coalesce($5, timeout), retries = coalesce($6, retries), \
                   retry_delay = coalesce($7, retry_delay), active = coalesce($8, active) \
                 WHERE id = $1 AND state <> 'cancelled'",
                defs = t.defs,
                next = at(11)
            ),
            None,
            &[
                job.into(),
                new_schedule.as_ref().map(|s| s.0.clone()).into(),
                new_schedule.as_ref().map(|s| s.1.clone()).into(),
                sql.into(),
                timeout.into(),
                retries.into(),
                retry_delay.into(),
                active.into(),
                resumed.into(),
                me.into(),
                new_schedule.as_ref().map(|s| s.2).into(),
            ],
        )?;
        Ok(changed.len())
    })
    .unwrap_or_else(|e| error!("cannot change job {job}: {e}"));
    if changed == 0 {
        // Cancelled by a transaction that committed while this one waited
        // for the job's row: a cancel is never undone.
        refuse_cancelled(job, "cancelled");
    }
    wake_scheduler_at_commit();
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_run_now("job" int8) RETURNS int4
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_run_now_wrapper';
COMMENT ON FUNCTION bgw_run_now(int8) IS
'Queues one extra run of job, to start at once (after a run going, if any), leaving its schedule alone; returns the run''s number. A run already waiting is that run.';
"#)]
fn bgw_run_now(job: Option<i64>) -> i32 {
    let job = args::required(job, "job");
    require_writable_jobs();
    let row = job_row(job);
    refuse_cancelled(job, &row.state);
    let mut cancelled = false;
    let run = store::with_installed_tables(|client, t| {
        // The job's row first: a second caller waits here, then finds the
        // run the first queued; one that waited for a bgw_cancel finds the
        // job cancelled.
        let state = client
            .update(
                &format!("SELECT state FROM {} WHERE id = $1 FOR UPDATE", t.defs),
                None,
                &[job.into()],
            )
            .and_then(first_value::<String>)?;
        if state.as_deref() == Some("cancelled") {
            cancelled = true;
            return Ok(None);
        }
        let waiting = client
            .update(
                &format!(
                    "SELECT run FROM {} WHERE job = $1 AND status = 'queued'",
                    t.runs
                ),
                None,
                &[job.into()],
            )
            .and_then(first_value::<i32>)?;
        if let Some(run) = waiting {
            return Ok(Some(run));
        }
        client
            .update(
                &format!(
                    "WITH j AS (UPDATE {defs} SET runs = runs + 1 WHERE id = $1 RETURNING id, runs) \
                     INSERT INTO {runs} (job, run, attempt, due_at, expires_at, status) \
                     SELECT id, runs, 1, now(), now() + $2 * interval '1 millisecond', 'queued' \
                       FROM j RETURNING run",
                    defs = t.defs,
                    runs = t.runs
                ),
                None,
                &[job.into(), settings::QUEUE_TIMEOUT_MS.get().into()],
            )
            .and_then(first_value::<i32>)
    })
    .unwrap_or_else(|e| error!("cannot queue a run of job {job}: {e}"));
    if cancelled {
        refuse_cancelled(job, "cancelled");
    }
    let run = run.unwrap_or_else(|| error!("cannot queue a run of job {job}"));
    wake_scheduler_at_commit();
    run
}

#[pg_extern(sql = r#"
CREATE FUNCTION bgw_unschedule("name" text) RETURNS bool
VOLATILE PARALLEL UNSAFE
LANGUAGE c AS 'MODULE_PATHNAME', 'bgw_unschedule_wrapper';
COMMENT ON FUNCTION bgw_unschedule(text) IS
'Cancels the caller''s job of that name, as bgw_cancel() does; false if the caller has none.';
"#)]
fn bgw_unschedule(name: Option<&str>) -> bool {
    let name = args::required(name, "name");
    require_writable_jobs();
    let me = pg::current_user();
    let id = store::with_installed_tables(|client, t| {
        client
            .update(
                &format!(
                    "SELECT id FROM {} WHERE created_by = $1::oid::regrole AND name = $2 \
                       AND state <> 'cancelled'",
                    t.defs
                ),
                None,
                &[me.into(), name.into()],
            )
            .and_then(first_value::<i64>)
    })
    .unwrap_or_else(|e| error!("cannot read the jobs: {e}"));
    id.is_some_and(jobs::cancel)
}
