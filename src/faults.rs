//! Fault injection for the reliability tests. Compiled in only with the
//! `fault_injection` feature (scripts/test installs such a build for the
//! cluster tests); without it `init` and `at_iteration` do nothing.

#[cfg(feature = "fault_injection")]
static PANIC_AT_ITERATION: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static LAUNCHER_PAUSE_MS: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static BEFORE_RESERVE_MS: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static BEFORE_LAUNCH_MS: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static BEFORE_MARK_LOST_MS: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static CANCEL_PAUSE_MS: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static ERROR_AFTER_RESERVE_JOB: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);

/// Defines `bgworker_rs.debug_panic_at_iteration` (superuser, 0 = never),
/// the pauses `bgworker_rs.debug_launcher_pause_ms`,
/// `debug_pause_before_reserve_ms` and `debug_pause_before_launch_ms`, and
/// `debug_error_after_reserve_job` (superuser, 0 = none).
pub fn init() {
    #[cfg(feature = "fault_injection")]
    {
        for (name, description, setting) in [
            (
                c"bgworker_rs.debug_launcher_pause_ms",
                c"Test builds only: the job launcher pauses this long after registering a scheduler, before it records the handle.",
                &LAUNCHER_PAUSE_MS,
            ),
            (
                c"bgworker_rs.debug_pause_before_reserve_ms",
                c"Test builds only: a scheduler pauses this long before it takes a job slot for a queued run it has locked.",
                &BEFORE_RESERVE_MS,
            ),
            (
                c"bgworker_rs.debug_pause_before_launch_ms",
                c"Test builds only: a scheduler pauses this long after committing the runs it starts, before it registers their workers.",
                &BEFORE_LAUNCH_MS,
            ),
            (
                c"bgworker_rs.debug_pause_before_mark_lost_ms",
                c"Test builds only: a scheduler's first wake pauses this long after reading the job slots in use, before it marks the runs left unfinished as lost.",
                &BEFORE_MARK_LOST_MS,
            ),
            (
                c"bgworker_rs.debug_cancel_pause_ms",
                c"Test builds only: bgw_cancel pauses this long after stopping a run, before it updates the job.",
                &CANCEL_PAUSE_MS,
            ),
            (
                c"bgworker_rs.debug_error_after_reserve_job",
                c"Test builds only: starting a run of the job with this id fails with an error once its job slot is taken.",
                &ERROR_AFTER_RESERVE_JOB,
            ),
        ] {
            pgrx::guc::GucRegistry::define_int_guc(
                name,
                description,
                c"0 means no pause.",
                setting,
                0,
                10_000,
                pgrx::guc::GucContext::Suset,
                pgrx::guc::GucFlags::default(),
            );
        }
        pgrx::guc::GucRegistry::define_int_guc(
            c"bgworker_rs.debug_panic_at_iteration",
            c"Test builds only: workers panic in this iteration of their loop.",
            c"0 means never.",
            &PANIC_AT_ITERATION,
            0,
            i32::MAX,
            pgrx::guc::GucContext::Suset,
            pgrx::guc::GucFlags::default(),
        );
    }
}

/// The launcher between registering a scheduler and recording its handle:
/// a slow launcher, whose scheduler may run (and leave) meanwhile.
pub fn launcher_registered() {
    #[cfg(feature = "fault_injection")]
    pause(LAUNCHER_PAUSE_MS.get());
}

/// A scheduler has locked job `job`'s queued run `run` and is about to take
/// its job slot: a slow start, which `bgw_cancel` may meet. The pause is
/// logged first, so that a test knows when to act.
pub fn before_reserve(_job: i64, _run: i32) {
    #[cfg(feature = "fault_injection")]
    logged_pause("before reserve", _job, _run, BEFORE_RESERVE_MS.get());
}

/// A scheduler's first wake has read the job slots in use and is about to
/// mark the runs left unfinished as lost.
pub fn before_mark_lost() {
    #[cfg(feature = "fault_injection")]
    logged_pause("before mark_lost", 0, 0, BEFORE_MARK_LOST_MS.get());
}

/// A scheduler has committed job `job`'s run `run` as running and is about
/// to register its worker.
pub fn before_launch(_job: i64, _run: i32) {
    #[cfg(feature = "fault_injection")]
    logged_pause("before launch", _job, _run, BEFORE_LAUNCH_MS.get());
}

/// `bgw_cancel` has stopped a run and is about to update its job: a slow
/// cancel, during which the scheduler may record that run.
pub fn cancel_stopped_a_run() {
    #[cfg(feature = "fault_injection")]
    pause(CANCEL_PAUSE_MS.get());
}

/// A scheduler (or `bgw_run`, from a warm worker) has taken a job slot for
/// a run of job `job`: a start that fails there (an error in its
/// subtransaction).
pub fn after_reserve(_job: i64) {
    #[cfg(feature = "fault_injection")]
    {
        let fail = ERROR_AFTER_RESERVE_JOB.get();
        if fail != 0 && i64::from(fail) == _job {
            pgrx::error!("bgworker_rs test fault: an error after job {_job}'s slot was taken");
        }
    }
}

#[cfg(feature = "fault_injection")]
fn logged_pause(at: &str, job: i64, run: i32, ms: i32) {
    if ms > 0 {
        pgrx::log!("bgworker_rs test pause {at}: job {job} run {run}, {ms} ms");
        pause(ms);
    }
}

#[cfg(feature = "fault_injection")]
fn pause(ms: i32) {
    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms.max(0) as u64);
    // A signal (a worker's start, a wake) ends a sleep early: sleep again
    // until the time is up.
    while std::time::Instant::now() < until {
        // SAFETY: a plain sleep of this process; test builds only.
        unsafe { pgrx::pg_sys::pg_usleep(10_000) };
    }
}

/// Panics in the configured iteration (counted from 1 in each process).
pub fn at_iteration(_iteration: u64) {
    #[cfg(feature = "fault_injection")]
    {
        let at = PANIC_AT_ITERATION.get();
        if at > 0 && _iteration == at as u64 {
            panic!("bgworker_rs: injected panic at iteration {_iteration}");
        }
    }
}
