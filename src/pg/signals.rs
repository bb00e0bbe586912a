//! Signal handling for workers: PostgreSQL's own `die` and config-reload
//! handlers, and the reload step of the main loop.

use super::versions::pqsignal;
use pgrx::pg_sys;

/// Installs PostgreSQL's own handlers, as worker_spi does, then unblocks
/// signals: SIGHUP only sets `ConfigReloadPending`; SIGTERM is `die`, so the
/// next `CHECK_FOR_INTERRUPTS()`, including one inside a running statement,
/// ends the worker with FATAL and its transaction is rolled back.
pub fn install_signal_handlers() {
    // SAFETY: called once at worker start while signals are still blocked;
    // both handlers are PostgreSQL's own, async-signal-safe functions.
    unsafe {
        pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

// The C handlers themselves: pgrx's `pg_sys::die` is a guarded Rust wrapper,
// which must never run inside a signal handler.
// SAFETY: both are `void f(SIGNAL_ARGS)` in postgres.c and interrupt.c, on
// every supported version.
unsafe extern "C-unwind" {
    fn die(postgres_signal_arg: std::os::raw::c_int);
    fn SignalHandlerForConfigReload(postgres_signal_arg: std::os::raw::c_int);
}

/// Rereads the configuration files if SIGHUP arrived since the last call.
/// pgrx's handlers only set a flag; this is the `ProcessConfigFile` step.
pub fn reload_config_if_requested() -> bool {
    // SAFETY: ConfigReloadPending is a sig_atomic_t written by the signal
    // handler; reading and clearing it from the main loop is the documented
    // protocol (see worker_spi.c).
    unsafe {
        let pending = std::ptr::addr_of_mut!(pg_sys::ConfigReloadPending);
        if pending.read_volatile() == 0 {
            return false;
        }
        pending.write_volatile(0);
        pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
    }
    true
}
