//! Transactions in a worker, and what a job run needs beyond plain SPI.

use pgrx::pg_sys;
use std::ffi::CStr;

/// Runs `body` in one transaction, the way every worker_spi iteration does:
/// statement timestamp, transaction, active snapshot, `pg_stat_activity`
/// showing `query` while it runs, then commit, stats flush and idle.
///
/// An ERROR raised by `body` does not come back here: in a background worker
/// it ends the process, and PostgreSQL aborts the transaction on exit.
pub fn in_transaction<R>(query: &'static CStr, body: impl FnOnce() -> R) -> R {
    // SAFETY: we are a worker connected to a database and outside any
    // transaction; `query` is 'static, so debug_query_string never dangles.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::debug_query_string = query.as_ptr();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, query.as_ptr());
    }
    let result = body();
    // SAFETY: pairs with the calls above; `body` (pgrx SPI) has finished its
    // SPI connection, so the snapshot we pushed is again on top.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::debug_query_string = std::ptr::null();
        pg_sys::pgstat_report_stat(true);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
    result
}

// ---------------------------------------------------------------------------
// What a job run needs beyond plain SPI.

// timeout.h is not in pgrx's bindings. `TimeoutId` is a C enum (an int);
// STATEMENT_TIMEOUT is its fourth member on every supported version (15-18).
const STATEMENT_TIMEOUT: std::os::raw::c_int = 3;
// SAFETY: `void enable_timeout_after(TimeoutId id, int delay_ms)` in
// timeout.c, the same signature on every supported version.
unsafe extern "C-unwind" {
    fn enable_timeout_after(id: std::os::raw::c_int, delay_ms: std::os::raw::c_int);
}

/// Arms `statement_timeout` for `ms` from now and sets the setting, so that
/// `SHOW statement_timeout` inside the job agrees. A client backend arms it
/// per statement in postgres.c; a background worker running SPI must do so
/// itself. When it fires, the running statement fails with SQLSTATE 57014.
pub fn arm_statement_timeout(ms: i32) {
    let value = std::ffi::CString::new(format!("{ms}ms")).unwrap_or_default();
    // SAFETY: a registered timeout (InitPostgres registers STATEMENT_TIMEOUT
    // in every backend, workers included); SetConfigOption copies its text.
    unsafe {
        pg_sys::SetConfigOption(
            c"statement_timeout".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        enable_timeout_after(STATEMENT_TIMEOUT, ms);
    }
}

/// REPEATABLE READ or SERIALIZABLE: one snapshot for the whole transaction.
pub fn isolation_uses_xact_snapshot() -> bool {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// Was this transaction id assigned to the current (sub)transaction?
pub fn is_current_transaction(xid: u32) -> bool {
    // SAFETY: a pure look-up in backend-local transaction state.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xid.into()) }
}
