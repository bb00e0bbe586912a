//! Staying warm: after a run that succeeded, the worker cleans its session
//! as `DISCARD ALL` does, then waits, idle and connected, for
//! `bgworker_rs.job_worker_idle_time`. A run of the same database's jobs
//! for the same target database and role may be handed to it meanwhile
//! (`job_slots::reserve`), without a new process or connection, as long as
//! neither the role nor the database changed since it connected. It leaves
//! when the idle time is over, when its slot or its worker slot is needed
//! by another run, or when its session could not be cleaned.

use super::rows::Rows;
use crate::access;
use crate::pg::{self, CapturedError, Script};
use crate::settings;
use crate::shmem::job_slots::{self, Slot, WarmNext};
use crate::shmem::{registry, schedulers};
use crate::store;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The slot this worker idles in (`usize::MAX`: none), and the database
/// whose jobs it runs: for the exit callback.
static WARM_SLOT: AtomicUsize = AtomicUsize::new(usize::MAX);
static HOME: AtomicU32 = AtomicU32::new(0);
/// `pg::connect_stamp` of its role and database as it connected, and when.
static CONNECTED: AtomicU64 = AtomicU64::new(0);
static CONNECTED_AT: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// Notes what its role and database were as this worker connected, and
/// arranges that at exit, however it comes, the slot it idled in is free
/// again and the scheduler of the database whose runs it served looks at
/// once (a worker that served a run handed to it is not the one the
/// postmaster notifies that scheduler of).
pub fn connected(role: u32, database: u32) {
    pg::start_transaction();
    let stamp = pg::connect_stamp(role.into(), database.into());
    pg::commit_transaction();
    CONNECTED.store(stamp, Ordering::Relaxed);
    let _ = CONNECTED_AT.set(Instant::now());
    pg::on_exit(|_code| {
        let slot = WARM_SLOT.load(Ordering::Relaxed);
        if slot != usize::MAX {
            job_slots::exit_warm(slot);
        }
        let home = HOME.load(Ordering::Relaxed);
        if home != 0 {
            schedulers::ask_for(home);
        }
    });
}

/// What `pg_stat_activity.query` shows for an idle warm worker.
const WARM_ACTIVITY: &std::ffi::CStr = c"bgworker_rs: warm, waiting for a run";

fn idle_time() -> Duration {
    Duration::from_millis(settings::JOB_WORKER_IDLE_MS.get().max(0) as u64)
}

/// How long a worker that finished before its scheduler noted its handle
/// waits for it, to stay warm (others make it give way with the handle).
const HANDLE_WAIT: Duration = Duration::from_secs(5);

/// May the worker of run `job` (in slot `slot`) stay after it? Not when
/// warm workers are off, or the run was cancelled; nor when its role or
/// database changed between the run's start and its connection (the
/// session may hold what the role had before: superuser, login); nor once
/// it has been connected for the idle time.
pub fn may_stay(slot: usize, job: &Slot) -> bool {
    HOME.store(job.home, Ordering::Relaxed);
    let id = job.run_id();
    let stamp = CONNECTED.load(Ordering::Relaxed);
    if idle_time().is_zero() {
        return false;
    }
    // Role and database settings (ALTER ROLE ... SET, kept apart from the
    // role's row) are read as a session connects, and DISCARD ALL goes
    // back to them: a worker kept busy must still take them in, so it
    // serves runs for one idle time after it connected, then ends.
    if CONNECTED_AT
        .get()
        .is_none_or(|at| at.elapsed() >= idle_time())
    {
        pgrx::debug1!(
            "{}: connected for the idle time; not staying",
            pg::worker_name()
        );
        return false;
    }
    if stamp == 0 || stamp != job.stamp {
        pgrx::debug1!(
            "{}: its role or database changed as it connected; not staying",
            pg::worker_name()
        );
        return false;
    }
    if !job_slots::get(slot).is_some_and(|s| s.run_id() == id && !s.cancel_requested) {
        pgrx::debug1!("{}: its run was cancelled; not staying", pg::worker_name());
        return false;
    }
    let known = job_slots::wait_for_handle(slot, id, HANDLE_WAIT);
    if !known {
        pgrx::debug1!(
            "{}: its handle is not known; not staying",
            pg::worker_name()
        );
    }
    known
}

/// Before a run handed to this warm worker: may it still run it here?
/// Not if its role or database changed since the worker connected (its
/// session may hold rights the role has lost), nor if the job's creator
/// may no longer run jobs as that role there, as the scheduler checks for
/// a new worker. The run was handed over (by the scheduler, or by
/// `bgw_run` in a transaction that may have stayed open a long time)
/// before now.
pub fn refused(job: &Slot) -> Option<CapturedError> {
    pg::start_transaction();
    let (role, database) = (job.role.into(), job.database.into());
    let changed = pg::connect_stamp(role, database) != CONNECTED.load(Ordering::Relaxed);
    let denied = access::check(job.created_by.into(), database, role, 0).is_err();
    let refusal = (changed || denied).then(|| {
        let mut e = CapturedError::new(
            pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32,
            format!(
                "role \"{}\" may no longer run this job as role \"{}\" in database \"{}\", \
                 or the role or the database changed as the run was handed to its worker",
                pg::role_name(job.created_by.into()),
                pg::role_name(role),
                pg::database_name(database)
            ),
        );
        e.hint = Some(
            "Run the job again: a new worker connects with the role's rights as they are now."
                .into(),
        );
        e
    });
    pg::commit_transaction();
    refusal
}

/// Waits, warm in slot `slot`, for a run of `home`'s jobs, up to the idle
/// time since it became idle (or since a start that was handed it gave it
/// back). Returns the run, with its slot; `None` to exit.
pub fn wait(slot: usize, home: u32) -> Option<(usize, Slot)> {
    WARM_SLOT.store(slot, Ordering::Relaxed);
    HOME.store(home, Ordering::Relaxed);
    let next = wait_in(slot);
    WARM_SLOT.store(usize::MAX, Ordering::Relaxed);
    let job = next?;
    registry::set_my_index(store::registry_index(job.job));
    Some((slot, job))
}

fn wait_in(slot: usize) -> Option<Slot> {
    let mut since = Instant::now();
    let mut shown = false;
    loop {
        match job_slots::warm_next(slot) {
            WarmNext::Run(job) => return Some(*job),
            WarmNext::Gone => return None,
            // Its start (or its last outcome) is not committed yet: never
            // time out meanwhile.
            WarmNext::Wait { handed: true } => since = Instant::now(),
            WarmNext::Wait { handed: false } if !shown => {
                // pg_stat_activity shows it idle, with this as its query.
                pg::report_idle(WARM_ACTIVITY);
                shown = true;
            }
            WarmNext::Wait { handed: false } => {}
        }
        let left = idle_time().saturating_sub(since.elapsed());
        if left.is_zero() {
            if job_slots::leave_warm(slot) {
                return None;
            }
            continue; // a run took it meanwhile
        }
        pg::wait_latch(left.as_millis() as i64 + 1, pg::worker_wait_event());
        pg::check_for_interrupts();
        pg::reload_config_if_requested();
    }
}

/// What `DISCARD ALL` does, in a transaction of its own, as a client's
/// statement: settings (the role, the session authorization and the
/// search path included) back to the session's defaults, temporary tables
/// dropped, prepared statements deallocated, cursors closed, `LISTEN`
/// ended, advisory locks released, cached plans and sequence values
/// forgotten. It fails (and the worker exits) inside a transaction block
/// the run left open.
pub fn discard_session() {
    pg::start_transaction();
    let script = Script::parse("DISCARD ALL");
    let mut sink = Rows::new(false);
    script.run(0, false, &mut sink);
    pg::commit_transaction();
    script.release();
}
