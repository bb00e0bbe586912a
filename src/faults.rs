//! Fault injection for the reliability tests. Compiled in only with the
//! `fault_injection` feature (scripts/test installs such a build for the
//! cluster tests); without it `init` and `at_iteration` do nothing.

#[cfg(feature = "fault_injection")]
static PANIC_AT_ITERATION: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);
#[cfg(feature = "fault_injection")]
static LAUNCHER_PAUSE_MS: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);

/// Defines `bgworker_rs.debug_panic_at_iteration` (superuser, 0 = never)
/// and `bgworker_rs.debug_launcher_pause_ms` (superuser, 0 = none).
pub fn init() {
    #[cfg(feature = "fault_injection")]
    {
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
        pgrx::guc::GucRegistry::define_int_guc(
            c"bgworker_rs.debug_launcher_pause_ms",
            c"Test builds only: the job launcher pauses this long after registering a scheduler, before it records the handle.",
            c"0 means no pause.",
            &LAUNCHER_PAUSE_MS,
            0,
            10_000,
            pgrx::guc::GucContext::Suset,
            pgrx::guc::GucFlags::default(),
        );
    }
}

/// The launcher between registering a scheduler and recording its handle:
/// a slow launcher, whose scheduler may run (and leave) meanwhile.
pub fn launcher_registered() {
    #[cfg(feature = "fault_injection")]
    {
        let ms = LAUNCHER_PAUSE_MS.get();
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ms as u64);
        // A signal (a worker's start, reported to the launcher) ends a
        // sleep early: sleep again until the time is up.
        while std::time::Instant::now() < until {
            // SAFETY: a plain sleep of this process; test builds only.
            unsafe { pgrx::pg_sys::pg_usleep(10_000) };
        }
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
