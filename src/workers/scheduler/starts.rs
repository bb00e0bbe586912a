//! Starting the runs that are due: each job in a subtransaction of its own,
//! checked against its creator's rights, with a job slot and a registry
//! entry claimed last; the workers are registered after commit. Without a
//! free slot the run is recorded as failed with SQLSTATE 53000, and a
//! recurring job tries again at its next tick.

use super::outcomes::error;
use super::{QUARANTINE, State, Tick};
use crate::access;
use crate::pg::{self, CapturedError};
use crate::settings;
use crate::shmem::Kind;
use crate::shmem::job_slots::{self, Outcome, Run, Status};
use crate::shmem::registry;
use crate::store::{self, SpiResult, Tables};
use crate::workers::registration::{self, ConnectArgs};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::time::Instant;

/// At most this many runs start in one wake, so that a flood of due jobs
/// never makes one long transaction; the rest start at the next wake, at once.
const START_BATCH: i64 = 64;

pub(super) struct Launch {
    pub job: i64,
    slot: usize,
    index: i32,
    args: ConnectArgs,
}

/// Starts every due job not in `skip`. Rows a client holds locked are
/// skipped until the next wake. A job whose handling fails is cancelled with
/// the reason; if even that fails, it is left alone for a while.
pub(super) fn start_due(
    client: &mut SpiClient<'_>,
    t: &Tables,
    skip: &[i64],
    state: &mut State,
    tick: &mut Tick,
) {
    let due = pg::in_subtransaction(|| due_jobs(client, t, skip));
    let due = match due {
        Ok(Ok(due)) => {
            // More may be due: come back at once, after this transaction.
            tick.retry |= due.len() as i64 >= START_BATCH;
            due
        }
        _ => {
            tick.retry = true;
            return;
        }
    };
    for id in due {
        let failure = match pg::in_subtransaction(|| start_one(client, t, id)) {
            Ok(Ok(launch)) => {
                tick.launches.extend(launch);
                continue;
            }
            Ok(Err(e)) => error(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, e.to_string()),
            Err(e) => e,
        };
        warning!(
            "bgworker_rs job scheduler: cannot start job {id}: {} (SQLSTATE {})",
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

fn due_jobs(client: &mut SpiClient<'_>, t: &Tables, skip: &[i64]) -> SpiResult<Vec<i64>> {
    let table = client.update(
        &format!(
            "SELECT id FROM {} \
              WHERE state = 'scheduled' AND next_run_at <= clock_timestamp() AND id <> ALL($1) \
              ORDER BY next_run_at, id LIMIT $2 FOR NO KEY UPDATE SKIP LOCKED",
            t.defs
        ),
        None,
        &[skip.to_vec().into(), START_BATCH.into()],
    )?;
    let mut due = Vec::new();
    for row in table {
        due.extend(row.get::<i64>(1)?);
    }
    Ok(due)
}

/// A due job, as read from `bgw_job_defs`.
struct Due {
    id: i64,
    sql: String,
    database: pg_sys::Oid,
    database_name: String,
    role: pg_sys::Oid,
    created_by: pg_sys::Oid,
    timeout_ms: i64,
    run: i32,
    atomic: bool,
    gexec: bool,
}

/// Counts the run and moves the job's next time, writes its run row, then
/// claims what it needs in shared memory (last, so that no SQL can fail
/// after a claim). `None`: the run could not start and is recorded failed.
fn start_one(client: &mut SpiClient<'_>, t: &Tables, id: i64) -> SpiResult<Option<Launch>> {
    let row = client.update(
        &format!(
            "UPDATE {} SET runs = runs + 1, \
                    next_run_at = CASE WHEN every IS NULL THEN NULL \
                                       WHEN next_run_at + every > clock_timestamp() THEN next_run_at + every \
                                       ELSE clock_timestamp() + every END \
              WHERE id = $1 \
             RETURNING sql, database, role::oid, created_by::oid, \
                       coalesce((extract(epoch FROM timeout) * 1000)::int8, 0), runs, \
                       database_name::text, atomic, gexec",
            t.defs
        ),
        None,
        &[id.into()],
    )?;
    let row = row.first();
    let job = Due {
        id,
        sql: row.get::<String>(1)?.unwrap_or_default(),
        database: row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
        role: row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
        created_by: row.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
        timeout_ms: row.get::<i64>(5)?.unwrap_or(0),
        run: row.get::<i32>(6)?.unwrap_or(1),
        database_name: row.get::<String>(7)?.unwrap_or_default(),
        atomic: row.get::<bool>(8)?.unwrap_or(true),
        gexec: row.get::<bool>(9)?.unwrap_or(false),
    };
    client.update(
        &format!(
            "INSERT INTO {} (job, run, started_at, status) VALUES ($1, $2, clock_timestamp(), 'running')",
            t.runs
        ),
        None,
        &[job.id.into(), job.run.into()],
    )?;
    match prepare(&job) {
        Ok(launch) => Ok(Some(launch)),
        Err(e) => {
            client.update(
                &format!(
                    "UPDATE {} SET finished_at = clock_timestamp(), status = 'failed', \
                            sqlstate = $3, error = $4 WHERE job = $1 AND run = $2",
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
            Ok(None)
        }
    }
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
               UPDATE {defs} SET runs = runs + 1, state = 'cancelled', next_run_at = NULL, reason = $2 \
                WHERE id = $1 RETURNING id, runs) \
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

/// Checks a due run and claims its job slot and registry entry.
fn prepare(job: &Due) -> Result<Launch, CapturedError> {
    let gone = |what: String| error(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, what);
    if !pg::database_exists(job.database) || pg::database_name(job.database) != job.database_name {
        return Err(gone(format!(
            "database \"{}\" with OID {} does not exist",
            job.database_name,
            job.database.to_u32()
        )));
    }
    for (role, what) in [
        (job.role, "the job's role"),
        (job.created_by, "its creator"),
    ] {
        if !pg::role_exists(role) {
            return Err(gone(format!(
                "role with OID {} ({what}) does not exist",
                role.to_u32()
            )));
        }
    }
    // The creator's rights are checked again before every run, so a job
    // never keeps privileges its creator has lost.
    if access::check(job.created_by, job.database, job.role, 0).is_err() {
        return Err(error(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{}\" may no longer run jobs as role \"{}\" in database \"{}\"",
                pg::role_name(job.created_by),
                pg::role_name(job.role),
                pg::database_name(job.database)
            ),
        ));
    }

    let index = store::registry_index(job.id);
    let (database, role) = (job.database.to_u32(), job.role.to_u32());
    let ticket = registry::claim_for_launch(Kind::Job, index, database, role)
        .map_err(|_| no_slot("no bgworker_rs registry entry is free"))?;
    let run = Run {
        job: job.id,
        run: job.run,
        database,
        role,
        timeout_ms: job.timeout_ms.clamp(0, i32::MAX.into()) as i32,
        atomic: job.atomic,
        gexec: job.gexec,
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
            database,
            role,
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
pub(super) fn launch(launches: &[Launch]) -> bool {
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
                        error: Some(e),
                        ..Outcome::default()
                    },
                );
                failed = true;
            }
        }
    }
    failed
}
