//! The job launcher: a static worker (when `bgworker_rs.max_jobs` > 0)
//! connected to no database, like autovacuum's launcher. It starts a job
//! scheduler (`scheduler`) for each database that asks for one, and holds
//! no database itself, so it never stands in the way of `DROP DATABASE`.
//!
//! - At its start (server start, or after a crash) every database that
//!   accepts connections is looked at once: a scheduler starts there,
//!   marks runs a crash left unfinished, and stays only if the database
//!   has active jobs (else it leaves at once). At most `CHECKS_AT_ONCE`
//!   start at a time, so that 50 databases never take 50 worker slots at
//!   once, and the databases enter the table of schedulers a few at a
//!   time, so that it never fills.
//! - A job committed where no scheduler runs asks for one (the table of
//!   schedulers in shared memory, `shmem::schedulers`) and sets the
//!   launcher's latch; the scheduler starts at once.
//! - A scheduler that exits is noticed through `bgw_notify_pid`; if a job
//!   committed meanwhile it starts again, as it does (after `RETRY_MS`,
//!   doubled for each such exit in a row) when it exited without deciding
//!   to leave: terminated, or failed; one that keeps failing soon after
//!   its start is given up, with a LOG line, until a job commits there. The runs of a database that was
//!   dropped are stopped and their slots freed.

use crate::pg::{self, Connection};
use crate::settings;
use crate::shmem::{Kind, job_slots, registry, schedulers};
use crate::workers::registration::{self, ConnectArgs};
use pgrx::prelude::*;

/// Schedulers starting (not through their first wake) at one time.
const CHECKS_AT_ONCE: usize = 2;
/// Look again this soon when a start found no free worker slot.
const RETRY_MS: i64 = 1_000;
/// Longest sleep, in case a notification was lost (the launcher restarted
/// and its schedulers notify the old pid).
const MAX_SLEEP_MS: i64 = 10_000;

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_launcher_main(_main_arg: pg_sys::Datum) {
    pg::capture_errors();
    registry::enter(Kind::Launcher, 0, 0, 0, None);
    pg::install_signal_handlers();
    pg::connect(&Connection::NoDatabase, 0);
    registry::report_running();
    log!(
        "bgworker_rs job launcher started with {} job slots",
        settings::MAX_JOBS.get()
    );

    let all = pg::in_transaction(c"bgworker_rs job launcher", pg::databases);
    // Checked once each, a few at a time; the last first.
    let mut pending: Vec<u32> = all
        .iter()
        .filter(|d| d.connectable)
        .map(|d| d.oid.to_u32())
        .rev()
        .collect();
    schedulers::recover();

    loop {
        if !pending.is_empty() {
            schedulers::want_some(&mut pending);
        }
        let mut sleep_ms = launch_wanted();
        if !pending.is_empty() {
            sleep_ms = sleep_ms.min(RETRY_MS);
        }
        pg::wait_latch(sleep_ms, pg::worker_wait_event());
        pg_sys::check_for_interrupts!();
        pg::reload_config_if_requested();
        registry::report_iteration();
    }
}

/// Frees the entries of schedulers that exited and starts those wanted;
/// returns how long to sleep.
fn launch_wanted() -> i64 {
    let (exited, given_up, _) = schedulers::reap(RETRY_MS * 1000);
    for db in given_up {
        log!(
            "bgworker_rs job launcher: the job scheduler of database with OID {db} exited unexpectedly {} times in a row soon after starting; it starts again when a job is committed there",
            schedulers::MAX_FAILURES + 1
        );
    }
    let to_start = schedulers::take_to_start(CHECKS_AT_ONCE);
    // Schedulers that exited unexpectedly start again after a delay.
    let delayed = schedulers::next_start_ms().map_or(MAX_SLEEP_MS, |ms| ms.clamp(1, MAX_SLEEP_MS));
    if exited.is_empty() && to_start.is_empty() {
        return delayed;
    }
    let databases = pg::in_transaction(c"bgworker_rs job launcher", pg::databases);
    // None: gone, or going (DROP DATABASE marks it invalid first).
    let connectable = |db: u32| {
        databases
            .iter()
            .find(|d| d.oid.to_u32() == db && !d.invalid)
            .map(|d| d.connectable)
    };
    for db in exited {
        if connectable(db).is_none() {
            // Dropped: nobody can record its runs any more.
            let stopped = job_slots::abandon(db);
            if stopped > 0 {
                log!(
                    "bgworker_rs job launcher: database with OID {db} was dropped; {stopped} run(s) of its jobs stopped"
                );
            }
        }
    }
    let mut sleep_ms = delayed;
    for (i, db) in to_start {
        match connectable(db) {
            Some(true) => {}
            Some(false) => {
                log!(
                    "bgworker_rs job launcher: database with OID {db} does not accept connections or is a template; its jobs wait until it does"
                );
                schedulers::not_started(i, false);
                continue;
            }
            None => {
                // Dropped: its runs elsewhere cannot be recorded any more.
                schedulers::not_started(i, false);
                job_slots::abandon(db);
                continue;
            }
        }
        if !start(i, db) {
            schedulers::not_started(i, true);
            sleep_ms = sleep_ms.min(RETRY_MS);
        }
    }
    sleep_ms
}

/// Registers the scheduler of entry `i`, for database `db`; false if no
/// worker slot or registry entry is free.
fn start(i: usize, db: u32) -> bool {
    let index = i as i32 + 1;
    let Ok(ticket) = registry::claim_for_launch(Kind::Scheduler, index, db, 0) else {
        return false;
    };
    let args = ConnectArgs {
        database: db,
        role: 0,
        flags: 0,
        ticket,
    };
    match registration::register_dynamic_worker(Kind::Scheduler, index, args, None) {
        Some(handle) => {
            crate::faults::launcher_registered();
            registry::set_handle(ticket, handle);
            schedulers::set_handle(i, handle, ticket);
            true
        }
        None => {
            registry::release(ticket);
            // An idle warm job worker gives its worker slot way.
            job_slots::dismiss_one_warm();
            false
        }
    }
}
