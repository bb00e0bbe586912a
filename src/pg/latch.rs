//! Waiting: the process latch, with postmaster-death exit, and waking
//! other backends.

use super::check_for_interrupts;
use pgrx::pg_sys;

/// Sleeps on the process latch for up to `timeout_ms` (0: just poll), exits
/// at once if the postmaster dies, then resets the latch. `wait_event` is
/// what `pg_stat_activity` shows meanwhile. True if the latch was set
/// (woken), false if the time ran out.
pub fn wait_latch(timeout_ms: i64, wait_event: u32) -> bool {
    let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32;
    // SAFETY: MyLatch is set for every process attached to shared memory.
    unsafe {
        let rc = pg_sys::WaitLatch(pg_sys::MyLatch, events, timeout_ms as _, wait_event);
        pg_sys::ResetLatch(pg_sys::MyLatch);
        rc & pg_sys::WL_LATCH_SET as i32 != 0
    }
}

/// Wakes another backend waiting on its latch, if it still exists.
pub fn wake_backend(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: BackendPidGetProc takes ProcArrayLock; the PGPROC it returns
    // stays valid (procs are never freed), and SetLatch is safe to call on
    // any process's latch.
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if !proc_.is_null() {
            pg_sys::SetLatch(&raw mut (*proc_).procLatch);
        }
    }
}

/// Waits on this backend's latch until `done` returns `Some`, or `timeout`
/// passes (`None`: no limit). Wakes at least every 10 ms for changes nobody
/// signals, and answers query cancel and termination meanwhile.
pub fn wait_for<R>(
    timeout: Option<std::time::Duration>,
    mut done: impl FnMut() -> Option<R>,
) -> Option<R> {
    const POLL: std::time::Duration = std::time::Duration::from_millis(10);
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = done() {
            return Some(r);
        }
        let nap = match timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(left) if !left.is_zero() => left.min(POLL),
                _ => return None,
            },
            None => POLL,
        };
        wait_latch(nap.as_millis().max(1) as i64, pg_sys::PG_WAIT_EXTENSION);
        check_for_interrupts();
    }
}
