//! A run of a SQL job: a dynamic worker started by the scheduler. It
//! connects to the job's database as the job's role, reads the script from
//! its job slot, runs it statement by statement (`script`) and leaves the
//! outcome in the slot. An error ends the process, as in any background
//! worker, after its outcome is left in the slot.
//!
//! After a run that succeeded, the worker may stay warm (`warm`) and run
//! the next runs handed to it for the same database and role, each in a
//! clean session.

mod rows;
mod script;
mod warm;

use crate::pg::{self, CapturedError, Connection};
use crate::shmem::job_slots::{self, Outcome, Slot, Status};
use crate::shmem::{Kind, registry, schedulers};
use crate::workers::registration::ConnectArgs;
use pgrx::prelude::*;
use script::Progress;
use std::cell::RefCell;
use std::time::{Duration, Instant};

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_job_main(main_arg: pg_sys::Datum) {
    // The scheduler passes the registry index (derived from the job id).
    let index = main_arg.value() as i32;
    let Some(args) = ConnectArgs::of_this_worker() else {
        ereport!(
            FATAL,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "a bgworker_rs job worker needs its bgw_extra"
        );
    };

    pg::capture_errors();
    registry::enter(
        Kind::Job,
        index,
        args.database,
        args.role,
        Some(args.ticket),
    );
    let Some((slot, job)) = job_slots::take_for_worker(args.ticket) else {
        log!("{}: its job slot is gone; exiting", pg::worker_name());
        pg::exit_quietly();
    };
    if job.cancel_requested {
        // bgw_cancel came while it was being started: nothing runs (its
        // scheduler records the run as cancelled).
        debug1!(
            "{}: cancelled before it started; exiting",
            pg::worker_name()
        );
        pg::exit_quietly();
    }

    pg::install_signal_handlers();
    pg::connect(
        &Connection::Oids {
            database: args.database.into(),
            role: args.role.into(),
        },
        args.flags,
    );
    registry::report_running();
    warm::connected(args.role, args.database);

    let (mut slot, mut job) = (slot, job);
    loop {
        let stays = run(slot, &job);
        registry::report_iteration();
        match stays.and_then(|idle| warm::wait(idle, job.home)) {
            Some(next) => (slot, job) = next,
            // Exit code 0: the postmaster forgets the worker; it notifies
            // the scheduler that registered it (bgw_notify_pid), which
            // records the outcome.
            None => pg::exit_quietly(),
        }
    }
}

/// Runs the run in `slot` and leaves its outcome there. An error ends the
/// process, with the outcome left first. After a run that succeeded, the
/// worker may stay warm: its session is cleaned first, then it takes a
/// slot to idle in (returned).
fn run(slot: usize, job: &Slot) -> Option<usize> {
    let id = job.run_id();
    if job.cancel_requested {
        // A run handed to it was cancelled before it started: the cancel
        // terminates this worker; nothing runs meanwhile.
        pg::exit_quietly();
    }
    if job.warm
        && let Some(e) = warm::refused(job)
    {
        job_slots::finish(
            slot,
            id,
            &Outcome {
                status: Status::Failed,
                error: Some(e),
                ..Outcome::default()
            },
        );
        pg::exit_quietly();
    }
    let progress = RefCell::new(Progress::default());
    // Before any timer is armed: when the run's fires, at least the timeout
    // has passed since `started`, so a timeout is never taken for a cancel.
    // The timeout bounds the whole run, not each statement.
    let started = Instant::now();
    let limits = script::Limits {
        deadline: (job.timeout_ms > 0)
            .then(|| started + Duration::from_millis(job.timeout_ms as u64)),
        timeout_ms: job.timeout_ms,
    };
    let mut stays = false;
    pg::inspect_error(
        || {
            script::run(
                (slot, id),
                &job.sql(),
                job.atomic,
                job.gexec,
                &limits,
                &progress,
            );
            pg::disarm_statement_timeout();
            if warm::may_stay(slot, job) {
                progress.borrow_mut().cleaning = true;
                warm::discard_session();
                stays = true;
            }
        },
        // The outcome, taken where the error is raised; the error then
        // ends the worker as in any background worker. One raised while
        // cleaning the session after the run does not change its outcome.
        |e| {
            let ran = started.elapsed();
            let outcome = match progress.try_borrow() {
                Ok(p) if p.cleaning => succeeded(&p),
                Ok(p) => failure(e, ran, job.timeout_ms, &p),
                Err(_) => failure(e, ran, job.timeout_ms, &Progress::default()),
            };
            job_slots::finish(slot, id, &outcome);
        },
    );

    let progress = progress.into_inner();
    if !stays {
        job_slots::finish(slot, id, &succeeded(&progress));
        return None;
    }
    let idle = job_slots::finish_and_stay(slot, id, &succeeded(&progress));
    // The scheduler records the outcome (and frees its slot, which this
    // worker may wait in): a worker that stays does not exit, so nothing
    // else would wake it.
    schedulers::ask_for(job.home);
    if idle.is_none() {
        debug1!(
            "{}: another database waits for a job slot; not staying",
            pg::worker_name()
        );
    }
    idle
}

fn succeeded(progress: &Progress) -> Outcome {
    Outcome {
        status: Status::Succeeded,
        rows: progress.rows,
        error: None,
        result: Some(progress.result.clone().unwrap_or_else(|| "[]".into())),
        statements: Some(progress.statements()),
        statement: None,
    }
}

/// How a run that raised `e` ended. 57014 is a timeout once the run's
/// `timeout` has passed; a failure when the `statement_timeout` setting the
/// statement was armed with has passed, as a client's statement would fail;
/// and otherwise a cancel (`pg_cancel_backend`). The outcome names the
/// statement that failed.
fn failure(e: &CapturedError, ran: Duration, timeout_ms: i32, progress: &Progress) -> Outcome {
    let timed_out = timeout_ms > 0 && ran >= Duration::from_millis(timeout_ms as u64);
    let setting_passed = match (progress.armed, progress.statement_started) {
        (pg::Armed::Setting(ms), Some(at)) => at.elapsed() >= Duration::from_millis(ms as u64),
        _ => false,
    };
    let status = match e.sqlstate().as_str() {
        "57014" if timed_out => Status::TimedOut,
        "57014" if setting_passed => Status::Failed,
        "57014" => Status::Cancelled,
        _ => Status::Failed,
    };
    let mut error = e.clone();
    // "VACUUM cannot run inside a transaction block", and the like.
    if e.sqlstate() == "25001" && progress.in_block && e.hint.is_none() {
        error.hint = Some(
            "The job's statements run in one transaction (atomic => true). Run it with atomic => false, \
             or make this statement the job's only one, to run it at top level."
                .into(),
        );
    }
    Outcome {
        status,
        rows: 0,
        error: Some(error),
        result: None,
        statements: Some(progress.statements()),
        statement: (progress.position > 0 || !progress.text.is_empty())
            .then(|| (progress.position, progress.text.clone())),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn timeouts_and_cancels_are_told_apart() {
        let e = |code: &str| {
            let code = code
                .bytes()
                .enumerate()
                .map(|(i, b)| ((b - b'0') as i32 & 0x3f) << (6 * i))
                .sum();
            CapturedError::new(code, "")
        };
        let p = Progress::default();
        let ms = Duration::from_millis;
        assert_eq!(
            failure(&e("57014"), ms(300), 300, &p).status,
            Status::TimedOut
        );
        assert_eq!(
            failure(&e("57014"), ms(10), 300, &p).status,
            Status::Cancelled
        );
        assert_eq!(
            failure(&e("57014"), ms(10), 0, &p).status,
            Status::Cancelled
        );
        assert_eq!(failure(&e("22012"), ms(10), 300, &p).status, Status::Failed);
        // The statement_timeout setting: a failed statement, as for a client.
        let mut armed = Progress::default();
        armed.armed = pg::Armed::Setting(1);
        armed.statement_started = Some(Instant::now() - ms(5));
        assert_eq!(
            failure(&e("57014"), ms(10), 300, &armed).status,
            Status::Failed
        );
        let mut fresh = Progress::default();
        fresh.armed = pg::Armed::Setting(60_000);
        fresh.statement_started = Some(Instant::now());
        assert_eq!(
            failure(&e("57014"), ms(10), 0, &fresh).status,
            Status::Cancelled
        );
    }
}
