//! Fault injection for the reliability tests. Compiled in only with the
//! `fault_injection` feature (scripts/test installs such a build for the
//! cluster tests); without it `init` and `at_iteration` do nothing.

#[cfg(feature = "fault_injection")]
static PANIC_AT_ITERATION: pgrx::guc::GucSetting<i32> = pgrx::guc::GucSetting::<i32>::new(0);

/// Defines `bgworker_rs.debug_panic_at_iteration` (superuser, 0 = never).
pub fn init() {
    #[cfg(feature = "fault_injection")]
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
