//! The job scheduler: a static worker (when `bgworker_rs.max_jobs` > 0)
//! connected to `bgworker_rs.database`, where the jobs are kept. Each time it
//! wakes (a job committed or cancelled, a run's worker exited, a run due) it
//! does one transaction, with the extension's tables through `store` (pinned
//! path, the extension owner's rights):
//! 1. the first time, marks runs that a crash or restart left unfinished as
//!    failed;
//! 2. cancels jobs whose role, creator or database was dropped (a database
//!    also when renamed, or when a restore from another cluster gave its OID
//!    to another one), with the reason;
//! 3. records the outcomes its run workers left in the job slots
//!    (`outcomes`);
//! 4. queues a run of each job whose tick or retry is due, and starts
//!    queued runs in due-time order while slots are free (`starts`), at
//!    most 64 of each a wake: a run row, a job slot, a registry entry, then
//!    (after commit) a dynamic worker;
//! 5. finishes one-shot jobs whose run is over;
//! 6. now and then, prunes the history of runs (`history`).
//!
//! Each job is handled in a subtransaction of its own: a failure (bad data,
//! arithmetic, a result that cannot be stored) is recorded on that job's
//! run, a row a client holds locked is skipped until the next wake, and no
//! job can make the scheduler exit. It then wakes `bgw_result()` waiters
//! and sleeps until the next run is due.

mod history;
mod outcomes;
mod starts;

use crate::pg::{self, Connection};
use crate::settings;
use crate::shmem::{Kind, job_slots, registry};
use crate::store::{self, SpiResult, Tables};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest sleep between two looks at the tables, in case a wake-up was lost.
const MAX_SLEEP_MS: i64 = 60_000;
/// Sleep after a wake that left work for later (a locked row, an error).
const RETRY_MS: i64 = 1_000;
/// How long a job the scheduler could not handle at all is left alone.
const QUARANTINE: Duration = Duration::from_secs(60);
/// How long the scheduler waits for a lock before it leaves the work for
/// the next wake; row locks are skipped without waiting.
const LOCK_TIMEOUT: &std::ffi::CStr = c"1s";

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_scheduler_main(_main_arg: pg_sys::Datum) {
    pg::capture_errors();
    registry::enter(Kind::Scheduler, 0, 0, 0, None);
    pg::install_signal_handlers();
    // As the bootstrap superuser, so that it can read every role and
    // database; its SQL runs with the extension owner's rights (`store`).
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
    // Over any ALTER DATABASE/ROLE ... SET.
    pg::pin_search_path_for_process();
    pg::set_option_for_process(c"lock_timeout", LOCK_TIMEOUT);
    registry::report_running();
    log!(
        "bgworker_rs job scheduler started in database \"{}\" with {} job slots",
        database.to_string_lossy(),
        settings::MAX_JOBS.get()
    );

    let mut state = State {
        first: true,
        quarantine: HashMap::new(),
        requeue: Vec::new(),
        pruned: None,
    };
    loop {
        let outcome = pg::in_transaction(c"bgworker_rs job scheduler", || {
            pg::in_subtransaction(|| tick(&mut state))
        });
        let sleep_ms = match outcome {
            Ok(Ok(tick)) => {
                for (slot, job, run) in &tick.recorded {
                    job_slots::free(*slot, *job, *run);
                }
                job_slots::announce_recorded();
                let requeue = starts::launch(&tick.launches);
                if tick.slots_full && !tick.recorded.is_empty() {
                    // The slots of the runs just recorded are free only
                    // now: start the queued runs at once.
                    state.requeue.extend(requeue);
                    0
                } else if !requeue.is_empty() {
                    // No worker slot: queued again next wake, and looked at
                    // again soon, as a slot freed by others wakes nobody.
                    state.requeue.extend(requeue);
                    RETRY_MS
                } else if tick.more {
                    0
                } else if tick.retry {
                    // Never a busy loop over what is locked or failing.
                    if tick.next_due_ms <= 0 {
                        RETRY_MS
                    } else {
                        tick.next_due_ms.min(RETRY_MS)
                    }
                } else {
                    tick.next_due_ms.clamp(0, MAX_SLEEP_MS)
                }
            }
            // Not one job's fault (those are handled inside): the tables
            // are locked or unreadable. Try again, never exit.
            Ok(Err(e)) | Err(e) => {
                warning!(
                    "bgworker_rs job scheduler: {} (SQLSTATE {}); trying again",
                    e.message,
                    e.sqlstate()
                );
                RETRY_MS
            }
        };
        pg::wait_latch(sleep_ms, pg::worker_wait_event());
        pg_sys::check_for_interrupts!();
        if pg::reload_config_if_requested() {
            state.pruned = None; // new history bounds apply at once
        }
        registry::report_iteration();
    }
}

/// What the scheduler keeps from one wake to the next.
struct State {
    /// No wake has completed yet: look for runs a crash left unfinished.
    first: bool,
    /// Jobs left alone until then, because handling them failed and even
    /// recording that failed.
    quarantine: HashMap<i64, Instant>,
    /// Runs whose worker could not be registered: queued again.
    requeue: Vec<(i64, i32)>,
    /// When the history was last pruned.
    pruned: Option<Instant>,
}

impl State {
    fn quarantined(&mut self) -> Vec<i64> {
        let now = Instant::now();
        self.quarantine.retain(|_, until| *until > now);
        self.quarantine.keys().copied().collect()
    }
}

struct Tick {
    /// Slots whose outcome is committed: (slot, job, run).
    recorded: Vec<(usize, i64, i32)>,
    launches: Vec<starts::Launch>,
    next_due_ms: i64,
    /// Something was left for a later wake (a locked row, an error): look
    /// again within RETRY_MS, but not at once.
    retry: bool,
    /// A batch was full: more is due now, come back at once.
    more: bool,
    /// A queued run found no free slot.
    slots_full: bool,
}

fn tick(state: &mut State) -> Result<Tick, pg::CapturedError> {
    let tick = store::with_tables(|client, t| {
        let mut tick = Tick {
            recorded: Vec::new(),
            launches: Vec::new(),
            next_due_ms: settings::NAPTIME_MS.get().into(),
            retry: false,
            more: false,
            slots_full: false,
        };
        let busy = job_slots::busy();
        if state.first {
            match pg::in_subtransaction(|| outcomes::mark_lost(client, t, &busy)) {
                Ok(result) => {
                    result?;
                    state.first = false;
                }
                Err(e) => {
                    warning!(
                        "bgworker_rs job scheduler: cannot mark lost runs: {}",
                        e.message
                    );
                    tick.retry = true;
                }
            }
        }
        match pg::in_subtransaction(|| cancel_orphans(client, t)) {
            Ok(result) => result?,
            Err(_) => tick.retry = true,
        }
        if !state.requeue.is_empty() {
            let runs = std::mem::take(&mut state.requeue);
            if !matches!(
                pg::in_subtransaction(|| starts::requeue(client, t, &runs)),
                Ok(Ok(()))
            ) {
                state.requeue = runs;
                tick.retry = true;
            }
        }
        outcomes::record_finished(client, t, &busy, state.first, &mut tick);
        let skip = state.quarantined();
        starts::enqueue_due(client, t, &skip, state, &mut tick);
        starts::start_queued(client, t, &skip, state, &mut tick);
        // Runs recorded, expired or refused above: their jobs' status and
        // retries (a retry is never due at once, so none waits for this).
        outcomes::account_runs(client, t, &mut tick);
        if !matches!(
            pg::in_subtransaction(|| outcomes::finish_one_shots(client, t)),
            Ok(Ok(()))
        ) {
            tick.retry = true;
        }
        history::prune_now_and_then(client, t, state, &mut tick);
        // After the claims made above nothing may fail the whole wake.
        match pg::in_subtransaction(|| next_due_ms(client, t, &skip)) {
            Ok(Ok(ms)) => tick.next_due_ms = ms,
            _ => tick.retry = true,
        }
        Ok(tick)
    });
    match tick {
        Ok(Some(tick)) => Ok(tick),
        // CREATE EXTENSION has not run here yet.
        Ok(None) => Ok(Tick {
            recorded: Vec::new(),
            launches: Vec::new(),
            next_due_ms: settings::NAPTIME_MS.get().into(),
            retry: false,
            more: false,
            slots_full: false,
        }),
        Err(e) => Err(pg::CapturedError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32,
            e.to_string(),
        )),
    }
}

/// Jobs whose role, creator or database no longer exists never run again:
/// a role created later with the same name is another identity. Rows a
/// client holds locked wait for the next wake.
fn cancel_orphans(client: &mut SpiClient<'_>, t: &Tables) -> SpiResult<()> {
    let cancelled = client
        .update(
            &format!(
                "WITH orphan AS ( \
                   SELECT id, \
                          CASE WHEN NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = d.created_by) \
                                 THEN format('role with OID %s, the job''s creator, was dropped', d.created_by::oid) \
                               WHEN NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = d.role) \
                                 THEN format('role with OID %s, which the job runs as, was dropped', d.role::oid) \
                               ELSE format('database %I with OID %s was dropped or renamed', \
                                           d.database_name, d.database) END AS why \
                     FROM {defs} d \
                    WHERE state = 'scheduled' \
                      AND (NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = d.created_by) \
                           OR NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = d.role) \
                           OR NOT EXISTS (SELECT FROM pg_database db \
                                           WHERE db.oid = d.database AND db.datname = d.database_name)) \
                      FOR NO KEY UPDATE OF d SKIP LOCKED) \
                 UPDATE {defs} d SET state = 'cancelled', next_run_at = NULL, reason = orphan.why \
                   FROM orphan WHERE d.id = orphan.id RETURNING d.id, orphan.why",
                defs = t.defs
            ),
            None,
            &[],
        )?;
    for row in cancelled {
        let (job, why) = (row.get::<i64>(1)?, row.get::<String>(2)?);
        log!(
            "bgworker_rs job scheduler: job {} cancelled: {}",
            job.unwrap_or(0),
            why.unwrap_or_default()
        );
    }
    Ok(())
}

/// Milliseconds until the next tick or retry of a job not in `skip`, or
/// until a queued run expires.
fn next_due_ms(client: &mut SpiClient<'_>, t: &Tables, skip: &[i64]) -> SpiResult<i64> {
    Ok(client
        .update(
            &format!(
                "SELECT (extract(epoch FROM least( \
                           (SELECT min(LEAST(next_run_at, retry_at)) FROM {defs} \
                             WHERE state = 'scheduled' AND active AND id <> ALL($1)), \
                           (SELECT min(expires_at) FROM {runs} WHERE status = 'queued')) \
                         - clock_timestamp()) * 1000)::int8",
                defs = t.defs,
                runs = t.runs
            ),
            None,
            &[skip.to_vec().into()],
        )?
        .first()
        .get_one::<i64>()?
        .unwrap_or(MAX_SLEEP_MS))
}
