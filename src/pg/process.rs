//! This process and the server: preloading, the GUC prefix, pids, the
//! clock, interrupts, and exit callbacks.

use pgrx::pg_sys;
use std::ffi::CStr;

/// Is the library being loaded through `shared_preload_libraries`?
pub fn preloading() -> bool {
    // SAFETY: plain read of a postmaster-set global.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Claims a GUC prefix: unknown `prefix.*` settings are then refused.
pub fn reserve_guc_prefix(prefix: &'static CStr) {
    // SAFETY: a 'static NUL-terminated string; PostgreSQL copies it.
    unsafe { pg_sys::MarkGUCPrefixReserved(prefix.as_ptr()) }
}

pub fn my_pid() -> i32 {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::MyProcPid }
}

/// "15.20", "18.6": the server's version, for messages.
pub fn server_version() -> &'static str {
    // SAFETY: PG_VERSION is a NUL-terminated constant.
    pg_sys::PG_VERSION.to_str().unwrap_or("unknown")
}

pub fn max_worker_processes() -> i32 {
    // SAFETY: plain read of a GUC variable.
    unsafe { pg_sys::max_worker_processes }
}

pub fn recovery_in_progress() -> bool {
    // SAFETY: reads shared state under its own lock.
    unsafe { pg_sys::RecoveryInProgress() }
}

pub fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Ends this process with exit code 0, so that the postmaster unregisters
/// the worker instead of restarting it.
pub fn exit_quietly() -> ! {
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(0) };
    #[allow(unreachable_code)]
    {
        unreachable!("proc_exit returned")
    }
}

pub fn check_for_interrupts() {
    pg_sys::check_for_interrupts!();
}

/// Is this the postmaster (not one of its children)?
pub fn is_postmaster() -> bool {
    // SAFETY: plain read of a process-local flag.
    unsafe { !pg_sys::IsUnderPostmaster }
}

static POSTMASTER_EXIT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

#[pgrx::pg_guard]
extern "C-unwind" fn postmaster_exit_trampoline(_code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    if let Some(f) = POSTMASTER_EXIT.get() {
        f();
    }
}

/// In the postmaster, runs `f` at its next `shmem_exit`: at shutdown, and
/// before it recreates shared memory after a crash. `shmem_exit` forgets its
/// callbacks, so call this again after every creation (from the startup hook).
pub fn on_postmaster_shmem_exit(f: fn()) {
    let _ = POSTMASTER_EXIT.set(f);
    // SAFETY: registers a guarded callback in the postmaster.
    unsafe { pg_sys::on_shmem_exit(Some(postmaster_exit_trampoline), pg_sys::Datum::from(0)) }
}

#[pgrx::pg_guard]
extern "C-unwind" fn on_exit_trampoline(code: std::os::raw::c_int, arg: pg_sys::Datum) {
    // SAFETY: `arg` is the `fn(i32)` that `on_exit` registered, as a
    // pointer-sized integer; function pointers and usize have one size.
    let f = unsafe { std::mem::transmute::<usize, fn(i32)>(arg.value()) };
    f(code);
}

/// Runs `f(exit_code)` when the process exits (`on_shmem_exit`), while its
/// PGPROC and LWLocks still work. Callbacks run in the reverse order of
/// their registration.
pub fn on_exit(f: fn(i32)) {
    // SAFETY: registers a guarded callback, with `f` as its argument;
    // PostgreSQL calls it once.
    unsafe { pg_sys::on_shmem_exit(Some(on_exit_trampoline), pg_sys::Datum::from(f as usize)) }
}

/// Microseconds since 1970 now (PostgreSQL counts from 2000).
pub fn now_unix_micros() -> i64 {
    const FROM_1970_TO_2000_US: i64 = 946_684_800_000_000;
    now() + FROM_1970_TO_2000_US
}

/// A setting's current value, as `SHOW` gives it.
pub fn setting(name: &std::ffi::CStr) -> Option<String> {
    // SAFETY: GetConfigOption returns a pointer into GUC memory, valid until
    // the setting changes; we copy it at once. missing_ok: NULL if unknown.
    unsafe {
        let value = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        (!value.is_null()).then(|| {
            std::ffi::CStr::from_ptr(value)
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// Gives the heap's free memory back to the kernel (glibc's `malloc_trim`):
/// memory PostgreSQL's contexts freed stays mapped in the process until
/// then. For a process about to sleep long; elsewhere it does nothing.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the kernel; the
    // memory in use is not touched.
    unsafe {
        libc::malloc_trim(0);
    }
}
