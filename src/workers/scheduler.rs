//! The job scheduler: a static worker (when `bgworker_rs.max_jobs` > 0)
//! connected to `bgworker_rs.database`, where the jobs are kept. Each time it
//! wakes (a job committed or cancelled, a run's worker exited, a run due) it
//! does one transaction:
//! 1. the first time, marks runs that a crash or restart left unfinished as
//!    failed;
//! 2. records the outcomes its run workers left in the job slots;
//! 3. starts the runs that are due: a job slot, a registry entry, a run row,
//!    then (after commit) a dynamic worker. Without a free slot the run is
//!    recorded as failed with SQLSTATE 53000, and a recurring job tries
//!    again at its next tick.
//!
//! It then wakes `bgw_result()` waiters and sleeps until the next run is due.

use crate::pg::{self, CapturedError, Connection, WorkerStatus};
use crate::settings;
use crate::shmem::Kind;
use crate::shmem::job_slots::{self, Outcome, Run, Slot, SlotState, Status};
use crate::shmem::registry::{self, Ticket};
use crate::store::{self, Tables};
use crate::workers::registration::{self, ConnectArgs};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::ffi::CString;

type SpiResult<T> = Result<T, pgrx::spi::Error>;

/// Longest sleep between two looks at the tables, in case a wake-up was lost.
const MAX_SLEEP_MS: i64 = 60_000;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_scheduler_main(_main_arg: pg_sys::Datum) {
    pg::capture_errors();
    registry::enter(Kind::Scheduler, 0, 0, 0, None);
    pg::install_signal_handlers();
    // As the bootstrap superuser: the scheduler writes the job tables and
    // checks each job's rights itself.
    let database = settings::DATABASE
        .get()
        .unwrap_or_else(|| c"postgres".to_owned());
    pg::connect(
        &Connection::Names {
            database: &database,
            role: None,
        },
        0,
    );
    registry::report_running();
    log!(
        "bgworker_rs job scheduler started in database \"{}\" with {} job slots",
        database.to_string_lossy(),
        settings::MAX_JOBS.get()
    );

    let mut first = true;
    loop {
        let tick = pg::in_transaction(c"bgworker_rs job scheduler", || tick(first))
            .unwrap_or_else(|e| error!("bgworker_rs job scheduler: {e}"));
        first = false;
        for (slot, job, run) in &tick.recorded {
            job_slots::free(*slot, *job, *run);
        }
        job_slots::announce_recorded();
        let failed_launches = launch(&tick.launches);
        let sleep_ms = if failed_launches {
            0 // record them at once
        } else {
            tick.next_due_ms.clamp(0, MAX_SLEEP_MS)
        };
        pg::wait_latch(sleep_ms, pg::worker_wait_event());
        pg_sys::check_for_interrupts!();
        pg::reload_config_if_requested();
        registry::report_iteration();
    }
}

struct Launch {
    job: i64,
    slot: usize,
    index: i32,
    args: ConnectArgs,
}

struct Tick {
    /// Slots whose outcome is committed: (slot, job, run).
    recorded: Vec<(usize, i64, i32)>,
    launches: Vec<Launch>,
    next_due_ms: i64,
}

fn tick(first: bool) -> SpiResult<Tick> {
    Spi::connect_mut(|client| {
        let mut tick = Tick {
            recorded: Vec::new(),
            launches: Vec::new(),
            next_due_ms: settings::NAPTIME_MS.get().into(),
        };
        let Some(t) = store::tables(client)? else {
            return Ok(tick); // CREATE EXTENSION has not run here yet
        };
        let busy = job_slots::busy();
        if first {
            mark_lost(client, &t, &busy)?;
        }
        for (i, slot) in &busy {
            // A worker may have left its outcome since `busy` was read.
            let slot = &job_slots::get(*i).unwrap_or(*slot);
            if let Some(outcome) = finished(slot, first) {
                record(client, &t, slot, &outcome)?;
                tick.recorded.push((*i, slot.job, slot.run));
            }
        }
        // Jobs with a run in progress: not due, however late.
        let mut running: Vec<i64> = busy
            .iter()
            .filter(|(i, _)| !tick.recorded.iter().any(|(r, ..)| r == i))
            .map(|(_, s)| s.job)
            .collect();
        start_due(client, &t, &running, &mut tick.launches)?;
        running.extend(tick.launches.iter().map(|l| l.job));
        tick.next_due_ms = client
            .update(
                &format!(
                    "SELECT (extract(epoch FROM min(next_run_at) - clock_timestamp()) * 1000)::int8 \
                       FROM {} WHERE state = 'scheduled' AND id <> ALL($1)",
                    t.defs
                ),
                None,
                // A job whose run is in progress is not due, however late:
                // its worker's exit wakes us (bgw_notify_pid).
                &[running.into()],
            )?
            .first()
            .get_one::<i64>()?
            .unwrap_or(MAX_SLEEP_MS);
        Ok(tick)
    })
}

/// Runs left unfinished by a crash or a restart: their worker is gone, and
/// no job slot holds them (a crash reinitializes shared memory).
fn mark_lost(client: &mut SpiClient<'_>, t: &Tables, busy: &[(usize, Slot)]) -> SpiResult<()> {
    let jobs: Vec<i64> = busy.iter().map(|(_, s)| s.job).collect();
    let runs: Vec<i32> = busy.iter().map(|(_, s)| s.run).collect();
    let lost = client
        .update(
            &format!(
                "UPDATE {runs} SET status = 'failed', finished_at = clock_timestamp(), \
                        sqlstate = '57P02', \
                        error = 'the run was interrupted: the server crashed or restarted before it finished' \
                  WHERE finished_at IS NULL \
                    AND (job, run) NOT IN (SELECT * FROM unnest($1::int8[], $2::int4[])) \
                 RETURNING job",
                runs = t.runs
            ),
            None,
            &[jobs.into(), runs.into()],
        )?
        .len();
    if lost > 0 {
        client.update(
            &format!(
                "UPDATE {defs} d SET state = 'finished' \
                  WHERE every IS NULL AND state = 'scheduled' AND runs > 0 \
                    AND NOT EXISTS (SELECT 1 FROM {runs} r WHERE r.job = d.id AND r.finished_at IS NULL)",
                defs = t.defs,
                runs = t.runs
            ),
            None,
            &[],
        )?;
        log!("bgworker_rs job scheduler: marked {lost} unfinished run(s) as failed");
    }
    Ok(())
}

fn error(code: PgSqlErrorCode, message: impl Into<String>) -> CapturedError {
    CapturedError {
        sqlerrcode: code as i32,
        message: message.into(),
    }
}

/// The outcome of a slot's run, if it is over.
fn finished(slot: &Slot, first: bool) -> Option<Outcome> {
    match slot.state {
        SlotState::Done => Some(Outcome {
            status: slot.status,
            rows: slot.rows,
            error: slot.error(),
            result: slot.result(),
        }),
        SlotState::Launched => match pg::worker_status(slot.handle) {
            // Read the slot again: the worker may have finished meanwhile.
            WorkerStatus::Stopped => Some(match job_slots::get_done(slot) {
                Some(done) => finished(&done, first)?,
                None => ended_without_outcome(slot),
            }),
            _ => None,
        },
        // Reserved by an earlier life of this scheduler that died before it
        // registered the worker.
        SlotState::Reserved if first => Some(Outcome {
            status: Status::Failed,
            rows: 0,
            error: Some(error(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "the job scheduler restarted before the run's worker was started",
            )),
            result: None,
        }),
        _ => None,
    }
}

/// A run whose worker exited without leaving an outcome: cancelled, or
/// ended by an error, which the registry kept.
fn ended_without_outcome(slot: &Slot) -> Outcome {
    let ticket = Ticket {
        slot: slot.registry_slot,
        epoch: slot.registry_epoch,
    };
    let entry = registry::get(ticket);
    let terminated = |message: &str| error(PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN, message);
    let (status, error) = match entry.and_then(|e| e.last_error()) {
        _ if slot.cancel_requested => (Status::Cancelled, terminated("cancelled by bgw_cancel()")),
        Some(e) if e.sqlstate() == "57014" => {
            let ran_ms = entry.map_or(0, |e| (pg::now() - e.started_at) / 1000);
            if slot.timeout_ms > 0 && ran_ms >= slot.timeout_ms.into() {
                (Status::TimedOut, e)
            } else {
                (Status::Cancelled, e) // pg_cancel_backend
            }
        }
        Some(e) => (Status::Failed, e),
        // The registry keeps no error for SIGTERM (bgw_terminate,
        // pg_terminate_backend): the worker counts as stopped.
        None if entry.is_some_and(|e| e.state == registry::State::Stopped) => (
            Status::Cancelled,
            terminated("the run's worker was terminated"),
        ),
        None => (
            Status::Failed,
            error(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "the run's worker exited without reporting an outcome",
            ),
        ),
    };
    Outcome {
        status,
        rows: 0,
        error: Some(error),
        result: None,
    }
}

fn record(client: &mut SpiClient<'_>, t: &Tables, slot: &Slot, o: &Outcome) -> SpiResult<()> {
    client.update(
        &format!(
            "UPDATE {} SET finished_at = clock_timestamp(), status = $3, rows = $4, \
                    sqlstate = $5, error = $6, result = $7::jsonb, pid = nullif($8, 0) \
              WHERE job = $1 AND run = $2 AND finished_at IS NULL",
            t.runs
        ),
        None,
        &[
            slot.job.into(),
            slot.run.into(),
            o.status.as_str().into(),
            o.rows.into(),
            o.error.as_ref().map(|e| e.sqlstate()).into(),
            o.error.as_ref().map(|e| e.message.clone()).into(),
            o.result.clone().into(),
            slot.pid.into(),
        ],
    )?;
    finish_one_shot(client, t, slot.job)
}

fn finish_one_shot(client: &mut SpiClient<'_>, t: &Tables, job: i64) -> SpiResult<()> {
    client.update(
        &format!(
            "UPDATE {} SET state = 'finished' WHERE id = $1 AND every IS NULL AND state = 'scheduled'",
            t.defs
        ),
        None,
        &[job.into()],
    )?;
    Ok(())
}

/// A due job, as read from `bgw_job_defs`.
struct Due {
    id: i64,
    sql: String,
    database: String,
    role: String,
    created_by: String,
    timeout_ms: i64,
    run: i32,
}

fn start_due(
    client: &mut SpiClient<'_>,
    t: &Tables,
    running: &[i64],
    launches: &mut Vec<Launch>,
) -> SpiResult<()> {
    let due: Vec<Due> = {
        let table = client.update(
            &format!(
                "UPDATE {defs} d SET runs = runs + 1, \
                        next_run_at = CASE WHEN every IS NULL THEN NULL \
                                           WHEN next_run_at + every > clock_timestamp() THEN next_run_at + every \
                                           ELSE clock_timestamp() + every END \
                  WHERE state = 'scheduled' AND next_run_at <= clock_timestamp() AND id <> ALL($1) \
                 RETURNING id, sql, database::text, role::text, created_by::text, \
                           coalesce((extract(epoch FROM timeout) * 1000)::int8, 0), runs",
                defs = t.defs
            ),
            None,
            &[running.to_vec().into()],
        )?;
        let mut due = Vec::new();
        for row in table {
            due.push(Due {
                id: row.get::<i64>(1)?.unwrap_or(0),
                sql: row.get::<String>(2)?.unwrap_or_default(),
                database: row.get::<String>(3)?.unwrap_or_default(),
                role: row.get::<String>(4)?.unwrap_or_default(),
                created_by: row.get::<String>(5)?.unwrap_or_default(),
                timeout_ms: row.get::<i64>(6)?.unwrap_or(0),
                run: row.get::<i32>(7)?.unwrap_or(1),
            });
        }
        due
    };
    for job in due {
        match prepare(&job) {
            Ok(launch) => {
                client.update(
                    &format!(
                        "INSERT INTO {} (job, run, started_at, status) VALUES ($1, $2, clock_timestamp(), 'running')",
                        t.runs
                    ),
                    None,
                    &[job.id.into(), job.run.into()],
                )?;
                launches.push(launch);
            }
            Err(e) => {
                client.update(
                    &format!(
                        "INSERT INTO {} (job, run, started_at, finished_at, status, sqlstate, error) \
                         VALUES ($1, $2, clock_timestamp(), clock_timestamp(), 'failed', $3, $4)",
                        t.runs
                    ),
                    None,
                    &[
                        job.id.into(),
                        job.run.into(),
                        e.sqlstate().into(),
                        e.message.into(),
                    ],
                )?;
                finish_one_shot(client, t, job.id)?;
            }
        }
    }
    Ok(())
}

/// Checks a due run and claims its job slot and registry entry.
fn prepare(job: &Due) -> Result<Launch, CapturedError> {
    let oid_of = |name: &str, lookup: fn(&std::ffi::CStr) -> Option<pg_sys::Oid>| {
        CString::new(name).ok().and_then(|n| lookup(&n))
    };
    let database = oid_of(&job.database, pg::database_oid).ok_or_else(|| {
        error(
            PgSqlErrorCode::ERRCODE_INVALID_CATALOG_NAME,
            format!("database \"{}\" does not exist", job.database),
        )
    })?;
    let role = oid_of(&job.role, pg::role_oid).ok_or_else(|| {
        error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("role \"{}\" does not exist", job.role),
        )
    })?;
    // The creator's rights are checked again before every run, so a job
    // never keeps privileges its creator has lost.
    let creator = oid_of(&job.created_by, pg::role_oid).ok_or_else(|| {
        error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "role \"{}\", the job's creator, does not exist",
                job.created_by
            ),
        )
    })?;
    let allowed = pg::is_role_superuser(creator)
        || (pg::has_privs_of_role(creator, role) && pg::has_connect(database, creator));
    if !allowed {
        return Err(error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{}\" may no longer run jobs as role \"{}\" in database \"{}\"",
                job.created_by, job.role, job.database
            ),
        ));
    }

    let index = store::registry_index(job.id);
    let ticket = registry::claim_for_launch(Kind::Job, index, database.to_u32(), role.to_u32())
        .map_err(|_| no_slot("no bgworker_rs registry entry is free"))?;
    let run = Run {
        job: job.id,
        run: job.run,
        database: database.to_u32(),
        role: role.to_u32(),
        timeout_ms: job.timeout_ms.clamp(0, i32::MAX.into()) as i32,
        sql: &job.sql,
    };
    let Some(slot) = job_slots::reserve(&run, ticket) else {
        registry::release(ticket);
        return Err(no_slot(&format!(
            "all {} job slots are in use (bgworker_rs.max_jobs)",
            settings::MAX_JOBS.get()
        )));
    };
    Ok(Launch {
        job: job.id,
        slot,
        index,
        args: ConnectArgs {
            database: database.to_u32(),
            role: role.to_u32(),
            flags: 0,
            ticket,
        },
    })
}

fn no_slot(why: &str) -> CapturedError {
    error(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_RESOURCES,
        format!("could not start the run: {why}"),
    )
}

/// Registers the workers of the runs just committed. A run that finds no
/// worker slot gets a failed outcome, recorded by the next tick. Returns
/// whether any did.
fn launch(launches: &[Launch]) -> bool {
    let mut failed = false;
    for l in launches {
        match registration::register_dynamic_worker(Kind::Job, l.index, l.args, None) {
            Some(handle) => {
                registry::set_handle(l.args.ticket, handle);
                job_slots::set_launched(l.slot, handle);
            }
            None => {
                registry::release(l.args.ticket);
                let e = no_slot(&format!(
                    "all background worker slots are in use (max_worker_processes = {})",
                    pg::max_worker_processes()
                ));
                job_slots::finish(
                    l.slot,
                    &Outcome {
                        status: Status::Failed,
                        rows: 0,
                        error: Some(e),
                        result: None,
                    },
                );
                failed = true;
            }
        }
    }
    failed
}
