//! A job scheduler: a dynamic worker the launcher starts for one database
//! that has active jobs, connected to it as the bootstrap superuser; the
//! database's jobs are kept there. Each time it wakes (a job committed or
//! cancelled, a run's worker exited, a run due, a slot freed) it does one
//! transaction, with the extension's tables through `store` (pinned path,
//! the extension owner's rights):
//! 1. the first time, marks runs that a crash or restart left unfinished as
//!    failed;
//! 2. cancels jobs whose role, creator or database was dropped (a database
//!    also when renamed, or when a restore from another cluster gave its OID
//!    to another one), with the reason: when a role or database changed
//!    (a syscache invalidation), and at least once a minute;
//! 3. records the outcomes its run workers left in the job slots
//!    (`outcomes`);
//! 4. queues a run of each job whose tick or retry is due, and starts
//!    queued runs in due-time order while slots are free and it is this
//!    database's turn (`starts`), at most 64 of each a wake: a run row, a
//!    job slot, a registry entry, then (after commit) a dynamic worker;
//! 5. finishes one-shot jobs whose run is over;
//! 6. now and then, prunes the history of runs (`history`).
//!
//! Each job is handled in a subtransaction of its own: a failure (bad data,
//! arithmetic, a result that cannot be stored) is recorded on that job's
//! run, a row a client holds locked is skipped until the next wake, and no
//! job can make the scheduler exit. It then wakes `bgw_result()` waiters
//! and sleeps until the next run is due.
//!
//! It leaves when its database has had no active job for `LINGER` (nothing
//! scheduled and active, queued, running or left to count), and at once,
//! with a log line, when the extension is dropped or is another version,
//! or the database stops accepting connections or becomes a template.

mod history;
mod outcomes;
mod starts;

use crate::pg::{self, Connection};
use crate::settings;
use crate::shmem::job_slots::{self, RunId};
use crate::shmem::{Kind, registry, schedulers};
use crate::store::{self, Found, Kept, SpiResult, Tables};
use crate::workers::registration::ConnectArgs;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Longest sleep between two looks at the tables, in case a wake-up was lost.
const MAX_SLEEP_MS: i64 = 60_000;
/// Sleep after a wake that left work for later (a locked row, an error),
/// and longest sleep while runs wait for a slot another database frees.
const RETRY_MS: i64 = 1_000;
/// A scheduler that has recorded or started no run for this long, and will
/// sleep at least this long, frees its kept plans (about 1 MB) and gives
/// its free heap back; one with runs more often than this keeps them, and
/// plans nothing again (a third less CPU a run).
const RELEASE_MS: i64 = 10_000;
/// How long a job the scheduler could not handle at all is left alone.
const QUARANTINE: Duration = Duration::from_secs(60);
/// How long the scheduler waits for a lock before it leaves the work for
/// the next wake (row locks are skipped without waiting): 1 s, or less
/// than half of `deadlock_timeout` (see [`pin_lock_timeout`]).
const LOCK_TIMEOUT_MS: i32 = 1_000;
/// Longest time between two looks for jobs of dropped roles and databases
/// when no change of a role or database was seen.
const ORPHANS_CHECK_MAX: Duration = Duration::from_secs(60);
/// How long a scheduler with nothing to do stays, so that jobs created one
/// after the other do not each start one.
const LINGER: Duration = Duration::from_secs(5);

/// A run of this database's jobs.
fn run_id(job: i64, run: i32) -> RunId {
    RunId {
        home: pg::current_database().to_u32(),
        job,
        run,
    }
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_scheduler_main(main_arg: pg_sys::Datum) {
    // The launcher passes its entry's place + 1 and, in bgw_extra, the
    // database and the registry entry it claimed.
    let index = main_arg.value() as i32;
    let Some(args) = ConnectArgs::of_this_worker() else {
        ereport!(
            FATAL,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "a bgworker_rs job scheduler needs its bgw_extra"
        );
    };
    let entry = (index - 1).max(0) as usize;
    pg::capture_errors();
    registry::enter(Kind::Scheduler, index, args.database, 0, Some(args.ticket));
    pg::install_signal_handlers();
    if !schedulers::attach(entry, args.database) {
        log!("bgworker_rs job scheduler: its entry was taken back; exiting");
        pg::exit_quietly();
    }
    // As the bootstrap superuser (InvalidOid), so that it can read every
    // role and database; its SQL runs with the extension owner's rights
    // (`store`). A database that was dropped meanwhile, or does not accept
    // connections, ends the worker here with PostgreSQL's own FATAL.
    pg::connect(
        &Connection::Oids {
            database: args.database.into(),
            role: pg_sys::InvalidOid,
        },
        0,
    );
    pg::watch_roles_and_databases();
    // Over any ALTER DATABASE/ROLE ... SET: the database's owner must not
    // be able to make every wake fail (read-only transactions), wait
    // (isolation, deferrable) or be cancelled, which would keep the
    // scheduler from ever leaving.
    pg::pin_search_path_for_process();
    pin_lock_timeout();
    for (name, value) in [
        (c"default_transaction_read_only", c"off"),
        (c"default_transaction_isolation", c"read committed"),
        (c"default_transaction_deferrable", c"off"),
        (c"statement_timeout", c"0"),
        (c"idle_in_transaction_session_timeout", c"0"),
        // An error it handles must never end it (FATAL).
        (c"exit_on_error", c"off"),
    ] {
        pg::set_option_for_process(name, value);
    }
    // PostgreSQL 17+: a transaction timeout would end it (FATAL) in every
    // wake, and the launcher would start it again and again.
    #[cfg(feature = "pg18")]
    pg::set_option_for_process(c"transaction_timeout", c"0");
    registry::report_running();

    let mut state = State {
        first: true,
        orphans_due: true,
        orphans_checked: None,
        quarantine: HashMap::new(),
        requeue: Vec::new(),
        pruned: None,
        idle_since: None,
        announced: false,
        had_jobs: false,
        worked_at: None,
    };
    loop {
        schedulers::begin_wake(entry);
        let outcome = pg::in_transaction(c"bgworker_rs job scheduler", || {
            pg::in_subtransaction(|| wake(&mut state))
        });
        let sleep_ms = match outcome {
            Ok(Ok(Step::Leave(why))) => leave(entry, &why),
            Ok(Ok(Step::Ticked(tick))) => {
                if tick.marked_lost {
                    state.first = false; // committed
                }
                if tick.orphans_checked {
                    state.orphans_due = false;
                    state.orphans_checked = Some(Instant::now());
                }
                if !state.announced {
                    state.announced = true;
                    schedulers::set_running(entry);
                    if !tick.idle {
                        log!(
                            "bgworker_rs job scheduler started for database \"{}\" ({} job slots in all)",
                            tick.database,
                            settings::MAX_JOBS.get()
                        );
                    }
                }
                if !tick.recorded.is_empty() || !tick.launches.is_empty() {
                    state.worked_at = Some(Instant::now());
                }
                for (slot, job, run) in &tick.recorded {
                    job_slots::free(*slot, run_id(*job, *run));
                }
                job_slots::announce_recorded();
                let requeue = starts::launch(&tick.launches);
                free_unlaunched();
                schedulers::set_waiting(entry, tick.slots_full || !requeue.is_empty());
                let ms = if tick.slots_full && !tick.recorded.is_empty() {
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
                } else if tick.retry || tick.slots_full {
                    // Never a busy loop over what is locked or failing; a
                    // slot another database frees wakes us, but look again
                    // soon in case that wake was lost.
                    if tick.next_due_ms <= 0 {
                        RETRY_MS
                    } else {
                        tick.next_due_ms.min(RETRY_MS)
                    }
                } else {
                    tick.next_due_ms.clamp(0, MAX_SLEEP_MS)
                };
                if !tick.idle {
                    state.had_jobs = true;
                }
                if tick.idle && state.requeue.is_empty() {
                    let since = *state.idle_since.get_or_insert_with(Instant::now);
                    // A look that found nothing (the check at server start,
                    // CREATE EXTENSION) does not linger.
                    let linger = if state.had_jobs {
                        LINGER
                    } else {
                        Duration::ZERO
                    };
                    match linger.checked_sub(since.elapsed()) {
                        Some(left) if !left.is_zero() => ms.min(left.as_millis() as i64 + 1),
                        _ if schedulers::try_leave(entry) => {
                            debug1!(
                                "bgworker_rs job scheduler for database \"{}\": no active job; leaving",
                                tick.database
                            );
                            pg::exit_quietly();
                        }
                        // A job committed meanwhile: look again at once.
                        _ => 0,
                    }
                } else {
                    state.idle_since = None;
                    ms
                }
            }
            // Not one job's fault (those are handled inside): the tables
            // are locked or unreadable. Try again, never exit.
            // (`tick` returns an error only before it starts anything: the
            // slots of an aborted wake are the ones to give back.)
            Ok(Err(e)) | Err(e) => {
                free_unlaunched();
                warning!(
                    "bgworker_rs job scheduler: {} (SQLSTATE {}); trying again",
                    e.message,
                    e.sqlstate()
                );
                RETRY_MS
            }
        };
        sleep(sleep_ms, state.worked_at);
        pg_sys::check_for_interrupts!();
        if pg::reload_config_if_requested() {
            state.pruned = None; // new history bounds apply at once
            pin_lock_timeout(); // deadlock_timeout may have changed
        }
        registry::report_iteration();
    }
}

/// The scheduler's `lock_timeout`: [`LOCK_TIMEOUT_MS`], and always under
/// half of `deadlock_timeout`. A wait of ours that closes a cycle (say a
/// wake that holds `bgw_job_runs` and waits for `bgw_job_defs`, while
/// `DROP EXTENSION` holds the one and waits for the other) then ends on
/// our side, in a retry a second later, before the other side's deadlock
/// check would fail its statement.
fn pin_lock_timeout() {
    // SAFETY: a plain int setting of this process, read in its own thread.
    let deadlock_ms = unsafe { pg_sys::DeadlockTimeout };
    let ms = LOCK_TIMEOUT_MS.min(deadlock_ms / 2).max(1);
    let value = std::ffi::CString::new(format!("{ms}ms")).unwrap_or_default();
    pg::set_option_for_process(c"lock_timeout", &value);
}

/// Sleeps `ms`, or until woken. With nothing to do for a while, once
/// `RELEASE_MS` have passed since the last wake that recorded or started a
/// run (`worked_at`), the kept plans and freed memory go back first, and
/// the next busy wake plans again. Not at every long sleep: a scheduler
/// asked for at the end of each run (one-shot jobs, one after another)
/// would plan all its statements again at every wake.
fn sleep(ms: i64, worked_at: Option<Instant>) {
    let event = pg::worker_wait_event();
    if ms >= RELEASE_MS {
        let release = Duration::from_millis(RELEASE_MS as u64);
        match worked_at.and_then(|at| release.checked_sub(at.elapsed())) {
            // Looks again (a wake of its own) when that time has come.
            Some(left) if !left.is_zero() => {
                pg::wait_latch(left.as_millis() as i64 + 1, event);
                return;
            }
            _ => {
                store::forget_kept();
                pg::release_free_memory();
            }
        }
    }
    pg::wait_latch(ms, event);
}

/// Job slots taken in a wake for starts that then failed (their runs are
/// queued again, rolled back) are given back at once, not kept until the
/// scheduler restarts.
fn free_unlaunched() {
    let leaked = job_slots::free_unlaunched(pg::current_database().to_u32());
    if leaked > 0 {
        warning!("bgworker_rs job scheduler: freed {leaked} job slot(s) of starts that failed");
    }
}

/// Why a scheduler leaves at once.
enum Leave {
    /// The extension is not installed: `true` if it was when this
    /// scheduler started (it was dropped).
    NoExtension(bool),
    /// The extension is another version (the library was upgraded).
    OtherVersion(String),
    /// The database no longer accepts connections, or became a template.
    Database(String, &'static str),
}

/// Leaves for good: the runs in progress are stopped and their slots
/// freed (nobody could record them; the next scheduler here marks them
/// failed), and the entry is left for the launcher to free.
fn leave(entry: usize, why: &Leave) -> ! {
    let here = pg::current_database().to_u32();
    let stopped = job_slots::abandon(here);
    schedulers::leave(entry);
    let runs = if stopped > 0 {
        format!("; {stopped} run(s) in progress stopped")
    } else {
        String::new()
    };
    match why {
        // A database without the extension, looked at once: no news.
        Leave::NoExtension(false) if stopped == 0 => debug1!(
            "bgworker_rs job scheduler: extension \"bgworker_rs\" is not installed in database with OID {here}; leaving"
        ),
        Leave::NoExtension(_) => log!(
            "bgworker_rs job scheduler: extension \"bgworker_rs\" was dropped from database with OID {here}; leaving{runs}"
        ),
        Leave::OtherVersion(v) => log!(
            "bgworker_rs job scheduler: extension \"bgworker_rs\" in database with OID {here} is version {v}, the library {}; its jobs wait for ALTER EXTENSION bgworker_rs UPDATE{runs}",
            store::VERSION
        ),
        Leave::Database(name, what) => {
            log!("bgworker_rs job scheduler: database \"{name}\" {what}; leaving{runs}")
        }
    }
    pg::exit_quietly();
}

/// What the scheduler keeps from one wake to the next.
struct State {
    /// No wake has yet committed the marking of runs a crash left
    /// unfinished: look for them, and record the slots an earlier life of
    /// this scheduler reserved and never launched as failed runs.
    first: bool,
    /// A role or database changed since the jobs of dropped ones were last
    /// cancelled (committed).
    orphans_due: bool,
    /// When they were last cancelled (committed).
    orphans_checked: Option<Instant>,
    /// Jobs left alone until then, because handling them failed and even
    /// recording that failed.
    quarantine: HashMap<i64, Instant>,
    /// Runs whose worker could not be registered: queued again.
    requeue: Vec<(i64, i32)>,
    /// When the history was last pruned.
    pruned: Option<Instant>,
    /// Since when the database has had no active job.
    idle_since: Option<Instant>,
    /// A first wake completed: the launcher was told, and the extension
    /// was there.
    announced: bool,
    /// Some wake found an active job: leaving waits `LINGER`.
    had_jobs: bool,
    /// When a wake last recorded or started a run.
    worked_at: Option<Instant>,
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
    /// A queued run found no free slot (or it was another database's turn).
    slots_full: bool,
    /// No job is active: nothing scheduled and active, queued, running or
    /// left to count.
    idle: bool,
    /// The database's name, for the log.
    database: String,
    /// This wake marked the runs a crash or restart left unfinished; once
    /// it commits, later wakes need not.
    marked_lost: bool,
    /// This wake cancelled the jobs of dropped roles and databases.
    orphans_checked: bool,
}

enum Step {
    Ticked(Tick),
    Leave(Leave),
}

/// One wake: the database is still one to serve, then one tick.
fn wake(state: &mut State) -> Result<Step, pg::CapturedError> {
    let database = match database_state() {
        Ok(Ok(name)) => name,
        Ok(Err(leave)) => return Ok(Step::Leave(leave)),
        Err(e) => {
            return Err(pg::CapturedError::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32,
                e.to_string(),
            ));
        }
    };
    tick(state, database)
}

/// This database's name, or why the scheduler must leave it.
fn database_state() -> SpiResult<Result<String, Leave>> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT datname::pg_catalog.text, datallowconn, datistemplate \
               FROM pg_catalog.pg_database WHERE oid OPERATOR(pg_catalog.=) $1",
            None,
            &[pg::current_database().into()],
        )?;
        if table.is_empty() {
            // Dropped under us: DROP DATABASE stops us first, so only by
            // a path we do not know.
            return Ok(Err(Leave::Database(
                format!("with OID {}", pg::current_database().to_u32()),
                "no longer exists",
            )));
        }
        let row = table.first();
        let name = row.get::<String>(1)?.unwrap_or_default();
        if !row.get::<bool>(2)?.unwrap_or(false) {
            return Ok(Err(Leave::Database(name, "no longer accepts connections")));
        }
        if row.get::<bool>(3)?.unwrap_or(false) {
            return Ok(Err(Leave::Database(name, "is a template")));
        }
        Ok(Ok(name))
    })
}

fn tick(state: &mut State, database: String) -> Result<Step, pg::CapturedError> {
    let tick = store::with_tables(|client, t| {
        let mut tick = Tick {
            recorded: Vec::new(),
            launches: Vec::new(),
            next_due_ms: settings::NAPTIME_MS.get().into(),
            retry: false,
            more: false,
            slots_full: false,
            idle: false,
            database,
            marked_lost: false,
            orphans_checked: false,
        };
        // Both tables first, in the order DROP EXTENSION takes them, before
        // anything else: a wake never holds one while it waits for the
        // other (a deadlock whose check would fail the DROP). Waiting here
        // ends with the lock timeout, and this wake before it started.
        client.update(
            &format!("LOCK TABLE {}, {} IN ACCESS SHARE MODE", t.defs, t.runs),
            None,
            &[],
        )?;
        let busy_at = pg::now_unix_micros();
        let busy = job_slots::busy(pg::current_database().to_u32());
        if state.first {
            crate::faults::before_mark_lost();
            let busy_then = (busy.as_slice(), busy_at);
            match pg::in_subtransaction(|| {
                outcomes::mark_lost(client, t, busy_then, &state.requeue)
            }) {
                Ok(result) => {
                    result?;
                    tick.marked_lost = true;
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
        // Only when a role or database changed (or a while passed): with
        // many jobs this scan is most of a wake's cost. Runs are safe without
        // it: each start checks its roles and database again.
        state.orphans_due |= pg::roles_or_databases_changed();
        if state.orphans_due
            || state
                .orphans_checked
                .is_none_or(|at| at.elapsed() >= ORPHANS_CHECK_MAX)
        {
            match pg::in_subtransaction(|| cancel_orphans(client, t)) {
                Ok(result) => {
                    result?;
                    tick.orphans_checked = true;
                }
                Err(e) => {
                    warn_unless_locked("cancel the jobs of dropped roles and databases", &e);
                    tick.retry = true;
                }
            }
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
        let home = pg::current_database().to_u32();
        // The slots of the runs recorded in this wake are freed after its
        // commit: they count as free already.
        let in_progress = job_slots::busy(home)
            .iter()
            .filter(|(i, s)| !tick.recorded.contains(&(*i, s.job, s.run)))
            .count();
        tick.idle = !tick.retry
            && !tick.more
            && in_progress == 0
            && matches!(pg::in_subtransaction(|| is_idle(client, t)), Ok(Ok(true)));
        Ok(tick)
    });
    match tick {
        Ok(Found::Installed(tick)) => Ok(Step::Ticked(tick)),
        Ok(Found::Missing) => Ok(Step::Leave(Leave::NoExtension(state.announced))),
        Ok(Found::OtherVersion(v)) => Ok(Step::Leave(Leave::OtherVersion(v))),
        Err(e) => Err(pg::CapturedError::new(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR as i32,
            e.to_string(),
        )),
    }
}

/// A step of a wake failed: it is tried again at the next wake. A lock
/// another session holds is expected now and then; anything else is news.
fn warn_unless_locked(what: &str, e: &pg::CapturedError) {
    if e.sqlstate() != "55P03" {
        warning!(
            "bgworker_rs job scheduler: cannot {what}: {} (SQLSTATE {}); trying again",
            e.message,
            e.sqlstate()
        );
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
                           OR (d.database IS NOT NULL \
                               AND NOT EXISTS (SELECT FROM pg_database db \
                                                WHERE db.oid = d.database AND db.datname = d.database_name))) \
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

/// Does the database have no active job: nothing scheduled and active,
/// queued, or finished but not yet counted? (Runs in progress hold a job
/// slot, which the caller looks at.)
fn is_idle(client: &mut SpiClient<'_>, t: &Tables) -> SpiResult<bool> {
    Ok(client
        .update_kept(
            &format!(
                "SELECT NOT EXISTS (SELECT FROM {defs} WHERE state = 'scheduled' AND active) \
                    AND NOT EXISTS (SELECT FROM {runs} WHERE status = 'queued') \
                    AND NOT EXISTS (SELECT FROM {runs} WHERE NOT counted)",
                defs = t.defs,
                runs = t.runs
            ),
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false))
}

/// Milliseconds until the next tick or retry of a job not in `skip`, or
/// until a queued run expires.
fn next_due_ms(client: &mut SpiClient<'_>, t: &Tables, skip: &[i64]) -> SpiResult<i64> {
    Ok(client
        .update_kept(
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
