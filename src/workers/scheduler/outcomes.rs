//! Recording the outcomes that run workers (or failed launches) left in the
//! job slots, and the runs a crash left unfinished.

use super::Tick;
use crate::pg::{self, CapturedError, WorkerStatus};
use crate::shmem::job_slots::{self, Outcome, Slot, SlotState, Status};
use crate::shmem::registry::{self, Ticket};
use crate::store::{Kept, SpiResult, Tables};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// Records every finished run, each in a subtransaction of its own. A run
/// whose job row a client holds locked is left for the next wake; one whose
/// outcome cannot be stored is recorded as failed, with why.
pub(super) fn record_finished(
    client: &mut SpiClient<'_>,
    t: &Tables,
    busy: &[(usize, Slot)],
    first: bool,
    tick: &mut Tick,
) {
    for (i, slot) in busy {
        // A worker may have left its outcome since `busy` was read.
        let slot = &job_slots::get(*i).unwrap_or(*slot);
        let Some(outcome) = finished(slot, first) else {
            continue;
        };
        let stored = match pg::in_subtransaction(|| record(client, t, slot, &outcome)) {
            Ok(Ok(())) => true,
            Err(e) if e.sqlstate() == "55P03" => false, // locked: next wake
            Ok(Err(e)) => stored_as_failed(client, t, slot, &outcome, &e.to_string()),
            Err(e) => stored_as_failed(client, t, slot, &outcome, &e.message),
        };
        if stored {
            tick.recorded.push((*i, slot.job, slot.run));
        } else {
            tick.retry = true;
        }
    }
}

fn stored_as_failed(
    client: &mut SpiClient<'_>,
    t: &Tables,
    slot: &Slot,
    outcome: &Outcome,
    why: &str,
) -> bool {
    let failed = Outcome {
        status: Status::Failed,
        rows: outcome.rows,
        error: Some(error(
            PgSqlErrorCode::ERRCODE_DATA_EXCEPTION,
            format!("the run's outcome could not be recorded: {why}"),
        )),
        ..Outcome::default()
    };
    matches!(
        pg::in_subtransaction(|| record(client, t, slot, &failed)),
        Ok(Ok(()))
    )
}

/// Runs left unfinished by a crash or a restart: their worker is gone, no
/// job slot holds them (a crash reinitializes shared memory), and this
/// scheduler is not about to queue them again (`requeue`: their worker
/// could not be registered). Only runs started before `busy` was read
/// (`busy_at`, microseconds since 1970): one `bgw_run` handed to a warm
/// worker since was not in it, and is not lost.
pub(super) fn mark_lost(
    client: &mut SpiClient<'_>,
    t: &Tables,
    (busy, busy_at): (&[(usize, Slot)], i64),
    requeue: &[(i64, i32)],
) -> SpiResult<()> {
    let (mut jobs, mut runs): (Vec<i64>, Vec<i32>) =
        busy.iter().map(|(_, s)| (s.job, s.run)).unzip();
    jobs.extend(requeue.iter().map(|&(job, _)| job));
    runs.extend(requeue.iter().map(|&(_, run)| run));
    let lost = client
        .update(
            &format!(
                "UPDATE {runs} SET status = 'failed', finished_at = clock_timestamp(), \
                        sqlstate = '57P02', \
                        error = 'the run was interrupted: the server crashed or restarted before it finished' \
                  WHERE finished_at IS NULL AND status <> 'queued' \
                    AND (job, run) NOT IN (SELECT * FROM unnest($1::int8[], $2::int4[])) \
                    AND started_at < timestamptz 'epoch' + $3 * interval '1 microsecond' \
                 RETURNING job",
                runs = t.runs
            ),
            None,
            &[jobs.into(), runs.into(), busy_at.into()],
        )?
        .len();
    if lost > 0 {
        log!("bgworker_rs job scheduler: marked {lost} unfinished run(s) as failed");
    }
    Ok(())
}

pub(super) fn error(code: PgSqlErrorCode, message: impl Into<String>) -> CapturedError {
    CapturedError::new(code as i32, message)
}

/// The outcome of a slot's run, if it is over.
fn finished(slot: &Slot, first: bool) -> Option<Outcome> {
    match slot.state {
        SlotState::Done => Some(slot.outcome()),
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
            error: Some(error(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                "the job scheduler restarted before the run's worker was started",
            )),
            ..Outcome::default()
        }),
        _ => None,
    }
}

/// A run whose worker exited without leaving an outcome: cancelled, or
/// ended by an error, which the registry kept. The statements it finished,
/// and the one it was running, are those it last noted in its slot.
fn ended_without_outcome(slot: &Slot) -> Outcome {
    let ticket = Ticket {
        slot: slot.registry_slot,
        epoch: slot.registry_epoch,
    };
    // A worker stopped before it ever started (bgw_cancel as it was being
    // launched) leaves its registry entry "starting": not any more.
    if slot.pid == 0 {
        registry::forget_unstarted(ticket);
    }
    let entry = registry::get(ticket);
    let terminated = |message: &str| error(PgSqlErrorCode::ERRCODE_ADMIN_SHUTDOWN, message);
    let (status, error) = match entry.and_then(|e| e.last_error()) {
        _ if slot.cancel_requested => (Status::Cancelled, terminated("cancelled by bgw_cancel()")),
        Some(e) if e.sqlstate() == "57014" => {
            // A warm worker's process started long before the run.
            let since = match slot.handed_at {
                0 => entry.map_or(pg::now(), |e| e.started_at),
                at => at,
            };
            let ran_ms = (pg::now() - since) / 1000;
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
        statements: slot.statements(),
        statement: slot.statement(),
    }
}

/// Records a run's outcome in its row only: the job's row, which a client
/// may hold locked, is brought up to date by `account_runs`.
fn record(client: &mut SpiClient<'_>, t: &Tables, slot: &Slot, o: &Outcome) -> SpiResult<()> {
    client.update_kept(
        &format!(
            "UPDATE {runs} SET finished_at = coalesce({finished}, clock_timestamp()), \
                    status = $3, rows = $4, \
                    sqlstate = $5, error = $6, result = $7::jsonb, pid = nullif($8, 0), \
                    detail = $9, hint = $10, statements = $11::jsonb, \
                    error_position = nullif($12, 0), error_statement = $13 \
              WHERE job = $1 AND run = $2 AND finished_at IS NULL",
            runs = t.runs,
            finished = crate::store::FINISHED_AT,
        ),
        None,
        &crate::store::outcome_args(slot, o),
    )?;
    Ok(())
}

/// Brings jobs up to date with their runs that finished: the last status,
/// the failures in a row, and, for a failed run with retries left, when the
/// next attempt is due: `retry_delay` doubled for each attempt so far, with
/// up to 10% jitter, and never at or after the job's next scheduled run
/// (which then takes its place). A run that waited too long for a slot
/// (53000) is not retried. Each run once (`counted`), in the order they
/// finished, each in a subtransaction; a job whose row a client holds
/// locked is left for a later wake.
pub(super) fn account_runs(client: &mut SpiClient<'_>, t: &Tables, tick: &mut Tick) {
    let pending = pg::in_subtransaction(|| {
        // Runs whose job another transaction holds are left out: they never
        // take the place of others' (every run has its job: a foreign key).
        let table = client.update_kept(
            &format!(
                "SELECT r.job, r.run FROM {runs} r JOIN {defs} d ON d.id = r.job \
                  WHERE NOT r.counted AND r.finished_at IS NOT NULL \
                  ORDER BY r.finished_at, r.job, r.run LIMIT 256 \
                    FOR NO KEY UPDATE OF d SKIP LOCKED",
                runs = t.runs,
                defs = t.defs
            ),
            None,
            &[],
        )?;
        let mut pending = Vec::new();
        for row in table {
            if let (Some(job), Some(run)) = (row.get::<i64>(1)?, row.get::<i32>(2)?) {
                pending.push((job, run));
            }
        }
        Ok::<_, pgrx::spi::Error>(pending)
    });
    let Ok(Ok(pending)) = pending else {
        tick.retry = true;
        return;
    };
    let whole_batch = pending.len() >= 256;
    if !whole_batch
        && !matches!(
            pg::in_subtransaction(|| count_uncounted(client, t)),
            Ok(Ok(n)) if n <= pending.len() as i64
        )
    {
        // Runs of jobs another transaction holds: looked at after RETRY_MS.
        tick.retry = true;
    }
    let mut counted_all = true;
    for (job, run) in pending {
        let counted = pg::in_subtransaction(|| account_run(client, t, job, run));
        if !matches!(counted, Ok(Ok(true))) {
            counted_all = false;
            tick.retry = true;
        }
    }
    // More at once only after a whole batch counted: never a wake without
    // sleep over runs that cannot be counted now.
    tick.more |= whole_batch && counted_all;
}

/// Finished runs not counted yet, whoever holds their jobs.
fn count_uncounted(client: &mut SpiClient<'_>, t: &Tables) -> SpiResult<i64> {
    Ok(client
        .update_kept(
            &format!(
                "SELECT count(*) FROM {} WHERE NOT counted AND finished_at IS NOT NULL",
                t.runs
            ),
            None,
            &[],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(0))
}

fn account_run(client: &mut SpiClient<'_>, t: &Tables, job: i64, run: i32) -> SpiResult<bool> {
    let n = client
        .update_kept(
            &format!(
                "WITH d AS (SELECT id, retry_delay FROM {defs} WHERE id = $1 \
                             FOR NO KEY UPDATE SKIP LOCKED), \
                 r AS (UPDATE {runs} SET counted = true \
                        WHERE job = $1 AND run = $2 AND NOT counted AND EXISTS (SELECT FROM d) \
                        RETURNING job, attempt, status, sqlstate, finished_at), \
                 n AS (SELECT r.*, r.status IN ('failed', 'timed out') AS failed, \
                              r.finished_at + make_interval(secs => least( \
                                  extract(epoch FROM d.retry_delay)::float8 \
                                    * power(2, least(r.attempt - 1, 60)) * (1 + random() * 0.1), \
                                  315576000)) AS retry \
                         FROM r, d) \
                 UPDATE {defs} j SET last_status = n.status, last_finished_at = n.finished_at, \
                        consecutive_failures = CASE WHEN n.status = 'succeeded' THEN 0 \
                                                    WHEN n.failed THEN j.consecutive_failures + 1 \
                                                    ELSE j.consecutive_failures END, \
                        retry_at = CASE WHEN n.failed AND n.attempt <= j.retries \
                                             AND n.sqlstate IS DISTINCT FROM '53000' \
                                             AND j.state = 'scheduled' \
                                             AND (j.next_run_at IS NULL OR n.retry < j.next_run_at) \
                                        THEN n.retry END, \
                        retry_attempt = CASE WHEN n.failed AND n.attempt <= j.retries \
                                             AND n.sqlstate IS DISTINCT FROM '53000' \
                                             AND j.state = 'scheduled' \
                                             AND (j.next_run_at IS NULL OR n.retry < j.next_run_at) \
                                        THEN n.attempt + 1 END \
                   FROM n WHERE j.id = n.job RETURNING j.id",
                runs = t.runs,
                defs = t.defs
            ),
            None,
            &[job.into(), run.into()],
        )?
        .len();
    if n == 0 {
        // The job's row is locked, or the job is gone: counted later, or
        // with the job's rows.
        let gone = client
            .update_kept(
                &format!("SELECT NOT EXISTS (SELECT FROM {} WHERE id = $1)", t.defs),
                None,
                &[job.into()],
            )?
            .first()
            .get_one::<bool>()?
            .unwrap_or(false);
        return Ok(gone);
    }
    Ok(true)
}

/// One-shot jobs whose run is over are finished: among those with no next
/// time, which `bgw_job_defs_due` finds without reading the recurring jobs.
/// Rows a client holds locked (an open transaction that called
/// `bgw_cancel`) are skipped until the next wake: recording a run never
/// waits for a client, so no job slot is kept busy by one. (`OFFSET 0`:
/// see [`super::starts::start_queued`].)
pub(super) fn finish_one_shots(client: &mut SpiClient<'_>, t: &Tables) -> SpiResult<()> {
    client.update_kept(
        &format!(
            "UPDATE {defs} SET state = 'finished' \
              WHERE id IN (SELECT d.id FROM {defs} d \
                            WHERE d.every IS NULL AND d.schedule IS NULL \
                              AND d.state = 'scheduled' AND d.runs > 0 AND d.retry_at IS NULL \
                              AND LEAST(d.next_run_at, d.retry_at) IS NULL \
                              AND NOT EXISTS (SELECT FROM {runs} c \
                                               WHERE c.job = d.id AND NOT c.counted OFFSET 0) \
                              AND NOT EXISTS (SELECT FROM {runs} r \
                                               WHERE r.job = d.id AND r.finished_at IS NULL \
                                               OFFSET 0) \
                              FOR NO KEY UPDATE SKIP LOCKED)",
            defs = t.defs,
            runs = t.runs
        ),
        None,
        &[],
    )?;
    Ok(())
}
