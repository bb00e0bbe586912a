//! Starting runs, in two steps a wake:
//! 1. `enqueue_due`: each job whose tick (or retry) is due gets a run row in
//!    state `queued`, and its next time moves on: a `every` from the last
//!    tick, or the cron schedule's next time in the job's time zone. A tick
//!    that falls while the job's last run is still going or waiting is
//!    skipped and counted: a job never overlaps itself, and never has two
//!    runs waiting.
//! 2. `start_queued`: queued runs start in due-time order while job slots
//!    are free, each checked against its creator's rights, with a job slot
//!    and a registry entry claimed last; the workers are registered after
//!    commit. A run that finds no slot waits; it fails with 53000 only once
//!    it has waited past `expires_at` (its job's period, or
//!    `bgworker_rs.queue_timeout` for one-shot jobs and extra runs).
//!
//! Each job is handled in a subtransaction of its own.

use super::outcomes::error;
use super::{QUARANTINE, State, Tick};
use crate::access;
use crate::pg::{self, CapturedError};
use crate::schedule;
use crate::settings;
use crate::shmem::Kind;
use crate::shmem::job_slots::{self, Launched, Run};
use crate::shmem::registry;
use crate::store::{self, Kept, SpiResult, Tables};
use crate::workers::registration::{self, ConnectArgs};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::time::Instant;

/// At most this many jobs are looked at, and runs started, in one wake, so
/// that a flood of due jobs never makes one long transaction; the rest come
/// at once in the next wake.
const BATCH: i64 = 64;

pub(super) struct Launch {
    pub job: i64,
    pub run: i32,
    slot: usize,
    /// Handed to a warm worker: nothing to register.
    warm: bool,
    index: i32,
    args: ConnectArgs,
}

/// Handles `ids` one at a time, each in a subtransaction; a job whose
/// handling fails is cancelled with the reason, and if even that fails, left
/// alone for a while.
fn each_job(
    client: &mut SpiClient<'_>,
    t: &Tables,
    ids: Vec<i64>,
    state: &mut State,
    what: &str,
    mut handle: impl FnMut(&mut SpiClient<'_>, i64) -> SpiResult<()>,
) {
    for id in ids {
        let failure = match pg::in_subtransaction(|| handle(client, id)) {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => error(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()),
            Err(e) => e,
        };
        warning!(
            "bgworker_rs job scheduler: cannot {what} job {id}: {} (SQLSTATE {})",
            failure.message,
            failure.sqlstate()
        );
        if !matches!(
            pg::in_subtransaction(|| give_up(client, t, id, &failure)),
            Ok(Ok(()))
        ) {
            state.quarantine.insert(id, Instant::now() + QUARANTINE);
        }
    }
}

/// Step 1: queues a run of every job whose tick or retry is due.
pub(super) fn enqueue_due(
    client: &mut SpiClient<'_>,
    t: &Tables,
    skip: &[i64],
    state: &mut State,
    tick: &mut Tick,
) {
    // Now as a value, not clock_timestamp(): a comparison with a volatile
    // function is no index condition, and every scheduled job would be
    // read at each wake.
    let now = pg::now_unix_micros();
    let due = pg::in_subtransaction(|| {
        ids(
            client,
            &format!(
                "SELECT id FROM {} \
                  WHERE state = 'scheduled' AND active \
                    AND LEAST(next_run_at, retry_at) <= {} AND id <> ALL($1) \
                  ORDER BY LEAST(next_run_at, retry_at), id LIMIT $2 \
                    FOR NO KEY UPDATE SKIP LOCKED",
                t.defs,
                time_param(3)
            ),
            &[skip.to_vec().into(), BATCH.into(), now.into()],
        )
    });
    let due = match due {
        Ok(Ok(due)) => due,
        _ => {
            tick.retry = true;
            return;
        }
    };
    if due.len() as i64 >= BATCH {
        tick.more = true;
    } else if !matches!(
        pg::in_subtransaction(|| count_due(client, t, skip, now)),
        Ok(Ok(n)) if n <= due.len() as i64
    ) {
        // Due rows a client holds locked: looked at again after RETRY_MS.
        tick.retry = true;
    }
    each_job(client, t, due, state, "queue a run of", |client, id| {
        enqueue_one(client, t, id)
    });
}

/// Parameter `$n`, microseconds since 1970, as a time.
fn time_param(n: usize) -> String {
    format!("(timestamptz 'epoch' + ${n}::int8 * interval '1 microsecond')")
}

/// Jobs due at `now` (microseconds since 1970), locked or not.
fn count_due(client: &mut SpiClient<'_>, t: &Tables, skip: &[i64], now: i64) -> SpiResult<i64> {
    Ok(client
        .update_kept(
            &format!(
                "SELECT count(*) FROM {} \
                  WHERE state = 'scheduled' AND active \
                    AND LEAST(next_run_at, retry_at) <= {} AND id <> ALL($1)",
                t.defs,
                time_param(2)
            ),
            None,
            &[skip.to_vec().into(), now.into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

fn ids(client: &mut SpiClient<'_>, sql: &str, args: &[DatumWithOid<'_>]) -> SpiResult<Vec<i64>> {
    let table = client.update_kept(sql, None, args)?;
    let mut ids = Vec::new();
    for row in table {
        ids.extend(row.get::<i64>(1)?);
    }
    Ok(ids)
}

/// A due job, as `enqueue_one` reads it; times in microseconds since 1970.
struct DueJob {
    schedule: Option<String>,
    timezone: Option<String>,
    next_run_at: Option<i64>,
    retry_at: Option<i64>,
    busy: bool,
    now: i64,
}

/// SQL for a time given in microseconds since 1970.
const FROM_MICROS: &str = "(timestamptz 'epoch' + $N::int8 * interval '1 microsecond')";

fn at(n: usize) -> String {
    FROM_MICROS.replace("$N", &format!("${n}"))
}

fn micros(column: &str) -> String {
    format!("(extract(epoch FROM {column}) * 1000000)::int8")
}

fn enqueue_one(client: &mut SpiClient<'_>, t: &Tables, id: i64) -> SpiResult<()> {
    let row = client.update_kept(
        &format!(
            "SELECT schedule, timezone, {}, {}, \
                    EXISTS (SELECT FROM {runs} r WHERE r.job = d.id AND r.finished_at IS NULL), \
                    {} \
               FROM {defs} d WHERE id = $1",
            micros("next_run_at"),
            micros("retry_at"),
            micros("clock_timestamp()"),
            runs = t.runs,
            defs = t.defs
        ),
        None,
        &[id.into()],
    )?;
    let row = row.first();
    let job = DueJob {
        schedule: row.get::<String>(1)?,
        timezone: row.get::<String>(2)?,
        next_run_at: row.get::<i64>(3)?,
        retry_at: row.get::<i64>(4)?,
        busy: row.get::<bool>(5)?.unwrap_or(false),
        now: row.get::<i64>(6)?.unwrap_or(0),
    };
    let tick_due = job.next_run_at.is_some_and(|n| n <= job.now);
    let retry_due = job.retry_at.is_some_and(|r| r <= job.now);
    // A cron job's next time: the schedule's first after now, from the tick
    // just taken (so a time a DST change repeats runs once).
    let cron_next = match (&job.schedule, tick_due) {
        (Some(s), true) => {
            let tz = job.timezone.as_deref().unwrap_or("UTC");
            match schedule::next_micros(s, tz, job.now, job.next_run_at) {
                Ok(next) => next,
                // Checked when it was stored; the job is cancelled with this.
                Err(e) => pg::UserError::new(
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!("its schedule cannot be read: {e}"),
                )
                .raise(),
            }
        }
        _ => None,
    };
    // The job's next tick, as SQL: moved on when the tick is taken.
    let next = format!(
        "CASE WHEN NOT $2 THEN next_run_at \
              WHEN schedule IS NOT NULL THEN {} \
              WHEN every IS NULL THEN NULL \
              WHEN next_run_at + every > clock_timestamp() THEN next_run_at + every \
              ELSE clock_timestamp() + every END",
        at(3)
    );
    if job.busy {
        // Skipped and counted; a retry is moot while a run is going.
        client.update_kept(
            &format!(
                "UPDATE {} SET next_run_at = {next}, \
                        skipped = skipped + CASE WHEN $2 THEN 1 ELSE 0 END, \
                        retry_at = NULL, retry_attempt = NULL \
                  WHERE id = $1",
                t.defs
            ),
            None,
            &[id.into(), tick_due.into(), cron_next.into()],
        )?;
        return Ok(());
    }
    // The scheduled tick wins over a retry due at the same time.
    let retry = retry_due && !tick_due;
    client.update_kept(
        &format!(
            "WITH job AS ( \
               UPDATE {defs} d SET runs = runs + 1, next_run_at = {next}, \
                      state = CASE WHEN $2 AND schedule IS NOT NULL AND {cron_next} IS NULL \
                                   THEN 'finished' ELSE state END, \
                      retry_at = NULL, retry_attempt = NULL \
                 FROM (SELECT id, next_run_at AS tick, retry_at AS retry, \
                              retry_attempt AS attempt \
                         FROM {defs} WHERE id = $1) old \
                WHERE d.id = old.id \
                RETURNING d.id, d.runs, d.next_run_at, \
                          CASE WHEN $4 THEN coalesce(old.attempt, 2) ELSE 1 END AS attempt, \
                          CASE WHEN $4 THEN old.retry ELSE old.tick END AS due) \
             INSERT INTO {runs} (job, run, attempt, due_at, expires_at, status) \
             SELECT id, runs, attempt, due, \
                    coalesce(next_run_at, \
                             greatest(due, clock_timestamp()) + $5 * interval '1 millisecond'), \
                    'queued' \
               FROM job",
            defs = t.defs,
            runs = t.runs,
            cron_next = at(3),
        ),
        None,
        &[
            id.into(),
            tick_due.into(),
            cron_next.into(),
            retry.into(),
            settings::QUEUE_TIMEOUT_MS.get().into(),
        ],
    )?;
    Ok(())
}

/// Fails the queued runs that waited past their `expires_at` (53000).
pub(super) fn expire_queued(client: &mut SpiClient<'_>, t: &Tables) -> SpiResult<()> {
    let expired = client
        .update_kept(
            &format!(
                "UPDATE {runs} SET status = 'failed', finished_at = clock_timestamp(), \
                        sqlstate = '53000', \
                        error = format('the run waited %s for a free slot and could not start: all %s job slots (bgworker_rs.max_jobs) or all background worker slots (max_worker_processes) were in use', \
                                       date_trunc('milliseconds', clock_timestamp() - due_at), $1::int4) \
                  WHERE ctid = ANY (ARRAY( \
                          SELECT ctid FROM {runs} \
                           WHERE status = 'queued' AND expires_at <= clock_timestamp() \
                             FOR UPDATE SKIP LOCKED))",
                runs = t.runs
            ),
            None,
            &[settings::MAX_JOBS.get().into()],
        )?
        .len();
    if expired > 0 {
        log!("bgworker_rs job scheduler: {expired} queued run(s) waited too long for a slot");
    }
    Ok(())
}

/// Step 2: starts queued runs in due-time order while job slots are free.
pub(super) fn start_queued(
    client: &mut SpiClient<'_>,
    t: &Tables,
    skip: &[i64],
    state: &mut State,
    tick: &mut Tick,
) {
    if !matches!(
        pg::in_subtransaction(|| expire_queued(client, t)),
        Ok(Ok(()))
    ) {
        tick.retry = true;
    }
    // A job with a run going waits for it to end (its exit wakes us). A
    // run whose row, or whose job's row, another transaction holds is left
    // out (it may be cancelling the job): it is looked at again soon, and
    // never takes the place of runs that can start.
    // `OFFSET 0` keeps `NOT EXISTS` a subplan, an index probe of the job's
    // runs for each queued run, whatever the statistics: turned into an
    // anti join, a plan made while the table looked empty (kept, and
    // generic) read all the runs for each queued one.
    let queued = pg::in_subtransaction(|| {
        ids(
            client,
            &format!(
                "SELECT r.job FROM {runs} r JOIN {defs} d ON d.id = r.job \
                  WHERE r.status = 'queued' AND r.job <> ALL($1) \
                    AND NOT EXISTS (SELECT FROM {runs} g \
                                     WHERE g.job = r.job AND g.status = 'running' OFFSET 0) \
                  ORDER BY r.due_at, r.job LIMIT $2 \
                    FOR SHARE OF d SKIP LOCKED FOR NO KEY UPDATE OF r SKIP LOCKED",
                runs = t.runs,
                defs = t.defs
            ),
            &[skip.to_vec().into(), BATCH.into()],
        )
    });
    let queued = match queued {
        Ok(Ok(queued)) => queued,
        _ => {
            tick.retry = true;
            return;
        }
    };
    let whole_batch = queued.len() as i64 >= BATCH;
    if !whole_batch
        && !matches!(
            pg::in_subtransaction(|| count_queued(client, t, skip)),
            Ok(Ok(n)) if n <= queued.len() as i64
        )
    {
        // Queued runs another transaction holds: looked at after RETRY_MS.
        tick.retry = true;
    }
    let mut full = false;
    let mut started_all = true;
    // An idle warm worker gives its slot way only if no slot frees up
    // anyway when this wake commits (the runs it recorded).
    let evict = tick.recorded.is_empty();
    each_job(client, t, queued, state, "start a run of", |client, id| {
        if full {
            return Ok(()); // waits, in order, for the next wake
        }
        match start_one(client, t, id, evict)? {
            Started::Launch(launch) => tick.launches.push(launch),
            Started::NoSlot => {
                full = true;
                started_all = false;
                tick.slots_full = true;
            }
            Started::Failed => {}
            Started::JobLocked => {
                started_all = false;
                tick.retry = true;
            }
        }
        Ok(())
    });
    // More to start at once only if this whole batch could be handled: a
    // full batch that waits for slots, or for locks, must not make the
    // scheduler look again without sleeping.
    tick.more |= whole_batch && started_all;
}

/// Runs that could start but for a lock (none of its job's runs going;
/// `OFFSET 0` as in [`start_queued`]).
fn count_queued(client: &mut SpiClient<'_>, t: &Tables, skip: &[i64]) -> SpiResult<i64> {
    Ok(client
        .update_kept(
            &format!(
                "SELECT count(*) FROM {runs} r \
                  WHERE r.status = 'queued' AND r.job <> ALL($1) \
                    AND NOT EXISTS (SELECT FROM {runs} g \
                                     WHERE g.job = r.job AND g.status = 'running' OFFSET 0)",
                runs = t.runs
            ),
            None,
            &[skip.to_vec().into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

enum Started {
    Launch(Launch),
    /// Every slot is busy: the run stays queued, and so do those after it.
    NoSlot,
    /// Recorded as failed (or cancelled).
    Failed,
    /// The job's row is locked by another transaction, which may be
    /// cancelling it (`bgw_cancel` of a run started again after its worker
    /// could not be registered, whose row it then does not find queued):
    /// the run waits for that transaction, whose commit wakes us, and is
    /// looked at again soon in any case. (Read without the lock, a job
    /// cancelled meanwhile would start a run nobody stops.)
    JobLocked,
}

/// A queued run, with its job, as `start_one` reads it.
struct Queued {
    id: i64,
    run: i32,
    sql: String,
    /// `None`: the database that keeps the job, whatever its name now.
    database: Option<pg_sys::Oid>,
    database_name: Option<String>,
    role: pg_sys::Oid,
    created_by: pg_sys::Oid,
    timeout_ms: i64,
    atomic: bool,
    gexec: bool,
    cancelled: bool,
}

fn start_one(client: &mut SpiClient<'_>, t: &Tables, id: i64, evict: bool) -> SpiResult<Started> {
    let row = client.update_kept(
        &format!(
            "SELECT r.run, d.sql, d.database, d.role::oid, d.created_by::oid, \
                    coalesce((extract(epoch FROM d.timeout) * 1000)::int8, 0), \
                    d.database_name::text, d.atomic, d.gexec, d.state = 'cancelled' \
               FROM {runs} r JOIN {defs} d ON d.id = r.job \
              WHERE r.job = $1 AND r.status = 'queued' \
              ORDER BY r.run LIMIT 1 FOR SHARE OF d SKIP LOCKED",
            runs = t.runs,
            defs = t.defs
        ),
        None,
        &[id.into()],
    )?;
    if row.is_empty() {
        // Its queued run is ours (locked): the job's row is locked by a
        // transaction that may be cancelling it.
        return Ok(Started::JobLocked);
    }
    let row = row.first();
    let q = Queued {
        id,
        run: row.get::<i32>(1)?.unwrap_or(0),
        sql: row.get::<String>(2)?.unwrap_or_default(),
        database: row.get::<pg_sys::Oid>(3)?,
        role: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
        created_by: row.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
        timeout_ms: row.get::<i64>(6)?.unwrap_or(0),
        database_name: row.get::<String>(7)?,
        atomic: row.get::<bool>(8)?.unwrap_or(true),
        gexec: row.get::<bool>(9)?.unwrap_or(false),
        cancelled: row.get::<bool>(10)?.unwrap_or(false),
    };
    if q.cancelled {
        let e = error(
            PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            "the job was cancelled before the run started",
        );
        finish_unstarted(client, t, &q, "cancelled", &e)?;
        return Ok(Started::Failed);
    }
    crate::faults::before_reserve(q.id, q.run);
    match prepare(&q, evict) {
        Ok(launch) => {
            crate::faults::after_reserve(q.id);
            client.update_kept(
                &format!(
                    "UPDATE {} SET status = 'running', started_at = clock_timestamp() \
                      WHERE job = $1 AND run = $2",
                    t.runs
                ),
                None,
                &[q.id.into(), q.run.into()],
            )?;
            Ok(Started::Launch(launch))
        }
        Err(Refused::NoSlot) => Ok(Started::NoSlot),
        Err(Refused::Because(e)) => {
            finish_unstarted(client, t, &q, "failed", &e)?;
            Ok(Started::Failed)
        }
    }
}

/// A run that never started: recorded with why, and counted on its job.
fn finish_unstarted(
    client: &mut SpiClient<'_>,
    t: &Tables,
    q: &Queued,
    status: &str,
    e: &CapturedError,
) -> SpiResult<()> {
    client.update(
        &format!(
            "UPDATE {} SET finished_at = clock_timestamp(), status = $3, \
                    sqlstate = $4, error = $5 \
              WHERE job = $1 AND run = $2",
            t.runs
        ),
        None,
        &[
            q.id.into(),
            q.run.into(),
            status.into(),
            e.sqlstate().into(),
            e.message.clone().into(),
        ],
    )?;
    Ok(())
}

/// A job the scheduler could not handle: one more run, recorded failed with
/// the error, and the job cancelled with it as the reason.
fn give_up(client: &mut SpiClient<'_>, t: &Tables, id: i64, e: &CapturedError) -> SpiResult<()> {
    let reason = format!(
        "the scheduler could not start it: {} (SQLSTATE {})",
        e.message,
        e.sqlstate()
    );
    client.update(
        &format!(
            "WITH job AS ( \
               UPDATE {defs} SET runs = runs + 1, state = 'cancelled', next_run_at = NULL, \
                      retry_at = NULL, reason = $2 \
                WHERE id = $1 RETURNING id, runs), \
             gone AS ( \
               UPDATE {runs} SET status = 'cancelled', finished_at = clock_timestamp() \
                WHERE job = $1 AND status = 'queued') \
             INSERT INTO {runs} (job, run, started_at, finished_at, status, sqlstate, error) \
             SELECT id, runs, clock_timestamp(), clock_timestamp(), 'failed', $3, $4 FROM job",
            defs = t.defs,
            runs = t.runs
        ),
        None,
        &[
            id.into(),
            reason.into(),
            e.sqlstate().into(),
            e.message.clone().into(),
        ],
    )?;
    Ok(())
}

enum Refused {
    /// No job slot or registry entry is free: the run waits.
    NoSlot,
    Because(CapturedError),
}

/// Checks a queued run and claims its job slot and registry entry.
fn prepare(q: &Queued, evict: bool) -> Result<Launch, Refused> {
    let gone =
        |what: String| Refused::Because(error(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, what));
    let here = pg::current_database();
    let target = q.database.unwrap_or(here);
    if let Some(name) = q.database.and(q.database_name.as_ref())
        && (!pg::database_exists(target) || &pg::database_name(target) != name)
    {
        return Err(gone(format!(
            "database \"{name}\" with OID {} does not exist",
            target.to_u32()
        )));
    }
    for (role, what) in [(q.role, "the job's role"), (q.created_by, "its creator")] {
        if !pg::role_exists(role) {
            return Err(gone(format!(
                "role with OID {} ({what}) does not exist",
                role.to_u32()
            )));
        }
    }
    // The creator's rights are checked again before every run, so a job
    // never keeps privileges its creator has lost.
    if access::check(q.created_by, target, q.role, 0).is_err() {
        return Err(Refused::Because(error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{}\" may no longer run jobs as role \"{}\" in database \"{}\"",
                pg::role_name(q.created_by),
                pg::role_name(q.role),
                pg::database_name(target)
            ),
        )));
    }

    let index = store::registry_index(q.id);
    let (database, role) = (target.to_u32(), q.role.to_u32());
    let ticket = registry::claim_for_launch(Kind::Job, index, database, role)
        .map_err(|_| Refused::NoSlot)?;
    let run = Run {
        home: here.to_u32(),
        job: q.id,
        run: q.run,
        database,
        role,
        created_by: q.created_by.to_u32(),
        stamp: pg::connect_stamp(q.role, target),
        timeout_ms: q.timeout_ms.clamp(0, i32::MAX.into()) as i32,
        atomic: q.atomic,
        gexec: q.gexec,
        sql: &q.sql,
    };
    let Some((slot, warm)) = job_slots::reserve(&run, ticket, evict) else {
        registry::release(ticket);
        return Err(Refused::NoSlot);
    };
    if warm {
        registry::release(ticket); // the warm worker has its own entry
    }
    Ok(Launch {
        job: q.id,
        run: q.run,
        slot,
        warm,
        index,
        args: ConnectArgs {
            database,
            role,
            flags: 0,
            ticket,
        },
    })
}

/// Registers the workers of the runs just committed, or wakes the warm
/// workers they were handed to. A run that finds no worker slot
/// (`max_worker_processes`) gives its job slot back and is returned, to be
/// queued again at the next wake; an idle warm worker, if any, gives its
/// worker slot way meanwhile. A run `bgw_cancel` asked to stop meanwhile
/// (it found the slot reserved, with no worker to terminate yet) has its
/// worker terminated here, at once.
pub(super) fn launch(launches: &[Launch]) -> Vec<(i64, i32)> {
    let mut requeue = Vec::new();
    for l in launches {
        crate::faults::before_launch(l.job, l.run);
        let id = super::run_id(l.job, l.run);
        if l.warm {
            job_slots::launch_warm(l.slot, id);
            continue;
        }
        match registration::register_dynamic_worker(Kind::Job, l.index, l.args, None) {
            Some(handle) => {
                registry::set_handle(l.args.ticket, handle);
                if job_slots::set_launched(l.slot, id, handle) == Launched::CancelRequested {
                    pg::terminate_worker(handle);
                }
            }
            None => {
                registry::release(l.args.ticket);
                job_slots::free_quietly(l.slot, id);
                requeue.push((l.job, l.run));
                job_slots::dismiss_one_warm();
            }
        }
    }
    requeue
}

/// Runs whose worker could not be registered wait again, as if never
/// started.
pub(super) fn requeue(
    client: &mut SpiClient<'_>,
    t: &Tables,
    runs: &[(i64, i32)],
) -> SpiResult<()> {
    let jobs: Vec<i64> = runs.iter().map(|r| r.0).collect();
    let numbers: Vec<i32> = runs.iter().map(|r| r.1).collect();
    client.update(
        &format!(
            "UPDATE {} SET status = 'queued', started_at = NULL \
              WHERE (job, run) IN (SELECT * FROM unnest($1::int8[], $2::int4[])) \
                AND status = 'running' AND finished_at IS NULL",
            t.runs
        ),
        None,
        &[jobs.into(), numbers.into()],
    )?;
    Ok(())
}
