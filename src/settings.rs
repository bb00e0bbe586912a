//! Settings, all under the reserved prefix `bgworker_rs`.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// The postmaster multiplies `bgw_restart_time` by 1000 in an `int`, so a
/// larger value would overflow there.
pub const MAX_RESTART_TIME_S: i32 = i32::MAX / 1000;

pub static NAPTIME_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static TOTAL_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static DATABASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));
pub static ROLE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static RESTART_TIME_S: GucSetting<i32> = GucSetting::<i32>::new(5);
pub static MONITOR: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static LAUNCH_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static MAX_JOBS: GucSetting<i32> = GucSetting::<i32>::new(8);
pub static QUEUE_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(60_000);
pub static JOB_WORKER_IDLE_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static HISTORY_MAX_AGE_S: GucSetting<i32> = GucSetting::<i32>::new(30 * 86_400);
pub static HISTORY_MAX_RUNS: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// Upper bound of `bgworker_rs.max_jobs`; each job slot holds the statement
/// its outcome and its statements' summary in shared memory (about 28 kB).
pub const MAX_JOBS_LIMIT: i32 = 1024;

/// Defines the settings. As in worker_spi, the postmaster-level ones exist
/// only when the library is preloaded: defined later, a value for them in
/// postgresql.conf could not take effect and would only draw a warning.
pub fn init(preloading: bool) {
    GucRegistry::define_int_guc(
        c"bgworker_rs.naptime",
        c"Pause between two iterations of a worker's loop.",
        c"0 means no pause.",
        &NAPTIME_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"bgworker_rs.database",
        c"Database the static workers and the monitor connect to.",
        c"",
        &DATABASE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"bgworker_rs.role",
        c"Role the static workers connect as.",
        c"Unset means the bootstrap superuser.",
        &ROLE,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"bgworker_rs.launch_timeout",
        c"How long bgw_launch waits for a worker to connect and initialize.",
        c"After that the worker is stopped and bgw_launch raises an error.",
        &LAUNCH_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );

    if preloading {
        GucRegistry::define_int_guc(
            c"bgworker_rs.total_workers",
            c"Number of static workers started with the server.",
            c"",
            &TOTAL_WORKERS,
            0,
            100,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_bool_guc(
            c"bgworker_rs.monitor",
            c"Start the monitor, a read-only static worker that also runs on a hot standby.",
            c"",
            &MONITOR,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"bgworker_rs.max_jobs",
            c"Maximum number of SQL job runs (bgw_run) at the same time.",
            c"In all databases together. 0 disables jobs, the launcher and the schedulers.",
            &MAX_JOBS,
            0,
            MAX_JOBS_LIMIT,
            GucContext::Postmaster,
            GucFlags::default(),
        );
        GucRegistry::define_int_guc(
            c"bgworker_rs.restart_time",
            c"Delay before the postmaster restarts a static worker that exited.",
            c"-1 means never restart.",
            &RESTART_TIME_S,
            -1,
            MAX_RESTART_TIME_S,
            GucContext::Postmaster,
            GucFlags::UNIT_S,
        );
    }

    // Read by the scheduler at each wake; a reload applies them.
    GucRegistry::define_int_guc(
        c"bgworker_rs.queue_timeout",
        c"How long a one-shot job's run waits for a free slot before it fails.",
        c"A recurring job's run waits up to its period instead.",
        &QUEUE_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"bgworker_rs.job_worker_idle_time",
        c"How long a job's worker stays, idle and connected, after a run that succeeded.",
        c"The next run for the same database, target database, role and creator then takes it, without a new process; a worker serves runs for this long after it connected at most. 0 ends each worker after its run.",
        &JOB_WORKER_IDLE_MS,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"bgworker_rs.history_max_age",
        c"Runs in bgw_job_runs that finished longer ago than this are deleted.",
        c"-1 keeps them.",
        &HISTORY_MAX_AGE_S,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"bgworker_rs.history_max_runs",
        c"Finished runs kept per job in bgw_job_runs; older ones are deleted.",
        c"-1 keeps them.",
        &HISTORY_MAX_RUNS,
        -1,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::default(),
    );

    // Test builds only; must be defined before the prefix is reserved, which
    // drops every placeholder not defined by then.
    crate::faults::init();
    crate::pg::reserve_guc_prefix(c"bgworker_rs");
}
