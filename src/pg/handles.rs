//! Dynamic worker handles, usable from any backend, and plain signals.

use pgrx::pg_sys;

// ---------------------------------------------------------------------------
// Dynamic worker handles, usable from any backend.

/// The contents of a `BackgroundWorkerHandle`. PostgreSQL keeps the struct
/// private to bgworker.c (`{ int slot; uint64 generation; }`, unchanged since
/// 9.4); mirroring it lets any backend, not only the launching one, ask for
/// the worker's pid or terminate it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawHandle {
    slot: i32,
    generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerStatus {
    NotYetStarted,
    Started(i32),
    Stopped,
    PostmasterDied,
}

/// `RegisterDynamicBackgroundWorker`; `None` when no slot is free.
pub fn register_dynamic_worker(mut worker: pg_sys::BackgroundWorker) -> Option<RawHandle> {
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: `worker` is a complete registration; on success PostgreSQL sets
    // `handle` to a palloc'd struct whose layout RawHandle mirrors.
    unsafe {
        if !pg_sys::RegisterDynamicBackgroundWorker(&mut worker, &mut handle) || handle.is_null() {
            return None;
        }
        let raw = *(handle as *const RawHandle);
        pg_sys::pfree(handle.cast());
        Some(raw)
    }
}

fn handle_ptr(handle: &mut RawHandle) -> *mut pg_sys::BackgroundWorkerHandle {
    (handle as *mut RawHandle).cast()
}

/// `GetBackgroundWorkerPid`.
pub fn worker_status(mut handle: RawHandle) -> WorkerStatus {
    let mut pid: pg_sys::pid_t = 0;
    // SAFETY: PostgreSQL only reads slot and generation, and checks both
    // against the shared slot array before trusting them.
    let status = unsafe { pg_sys::GetBackgroundWorkerPid(handle_ptr(&mut handle), &mut pid) };
    match status {
        pg_sys::BgwHandleStatus::BGWH_STARTED => WorkerStatus::Started(pid),
        pg_sys::BgwHandleStatus::BGWH_NOT_YET_STARTED => WorkerStatus::NotYetStarted,
        pg_sys::BgwHandleStatus::BGWH_STOPPED => WorkerStatus::Stopped,
        _ => WorkerStatus::PostmasterDied,
    }
}

/// `TerminateBackgroundWorker`: SIGTERM if running, and never restart it.
pub fn terminate_worker(mut handle: RawHandle) {
    // SAFETY: as in worker_status(); a stale generation makes this a no-op.
    unsafe { pg_sys::TerminateBackgroundWorker(handle_ptr(&mut handle)) }
}

/// Sends SIGTERM to a process; false if it does not exist.
pub fn send_sigterm(pid: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}

/// Is there a process with this pid?
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
