//! Transactions in a worker, and what a job run needs beyond plain SPI.

use super::CapturedError;
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
// SAFETY: `void enable_timeout_after(TimeoutId id, int delay_ms)` and
// `void disable_timeout(TimeoutId id, bool keep_indicator)` in timeout.c,
// the same signatures on every supported version.
unsafe extern "C-unwind" {
    fn enable_timeout_after(id: std::os::raw::c_int, delay_ms: std::os::raw::c_int);
    fn disable_timeout(id: std::os::raw::c_int, keep_indicator: bool);
}

/// Which limit the statement timer was armed with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Armed {
    #[default]
    None,
    /// The `statement_timeout` setting (of the role, the database, or a
    /// `SET` in the script), in milliseconds.
    Setting(i32),
    /// What is left of the run's own timeout.
    Run,
}

/// Arms the statement timeout for the statement about to run, as
/// `start_xact_command` does for a client: the `statement_timeout` setting,
/// but never past the run's deadline (`remaining_ms`; `None`: no deadline).
/// When it fires, the statement fails with SQLSTATE 57014.
pub fn arm_statement_timeout(remaining_ms: Option<i64>) -> Armed {
    // SAFETY: plain read of the GUC's backend-local variable.
    let setting = unsafe { pg_sys::StatementTimeout };
    let armed = match (remaining_ms, setting) {
        (Some(left), s) if s <= 0 || left <= i64::from(s) => Armed::Run,
        (_, s) if s > 0 => Armed::Setting(s),
        _ => Armed::None,
    };
    // SAFETY: STATEMENT_TIMEOUT is registered in every backend, workers
    // included (InitPostgres).
    unsafe {
        match armed {
            Armed::Run => enable_timeout_after(
                STATEMENT_TIMEOUT,
                remaining_ms.unwrap_or(1).clamp(1, i32::MAX.into()) as i32,
            ),
            Armed::Setting(ms) => enable_timeout_after(STATEMENT_TIMEOUT, ms),
            Armed::None => disable_timeout(STATEMENT_TIMEOUT, false),
        }
    }
    armed
}

/// After a run's last statement, as `finish_xact_command` does for a
/// client: the statement timer is stopped, and a cancel it (or anyone)
/// asked for meanwhile is forgotten, so that neither reaches the worker
/// while it waits for its next run.
pub fn disarm_statement_timeout() {
    // SAFETY: STATEMENT_TIMEOUT is registered in every backend; clearing
    // the flag is what ProcessInterrupts does with a cancel it ignores.
    unsafe {
        disable_timeout(STATEMENT_TIMEOUT, false);
        std::ptr::write_volatile(&raw mut pg_sys::QueryCancelPending, 0);
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

/// The current (sub)transaction's id, assigned now if it has none.
pub fn current_xid() -> u32 {
    // SAFETY: inside a transaction (a function call); assigning an id is
    // what any write does.
    unsafe { pg_sys::GetCurrentTransactionId().into_inner() }
}

/// Did transaction `xid` commit? For a subtransaction's id, after its top
/// transaction committed: false if the subtransaction was rolled back.
pub fn did_commit(xid: u32) -> bool {
    // SAFETY: a commit-log look-up of a recent id, valid outside any
    // transaction.
    unsafe { pg_sys::TransactionIdDidCommit(xid.into()) }
}

/// Runs `body` in a subtransaction, as a PL/pgSQL block with an EXCEPTION
/// clause does: on ERROR the subtransaction is rolled back and the error
/// comes back as a value; the enclosing transaction (and an SPI connection
/// opened outside) goes on. Results made inside must not refer to memory of
/// the subtransaction.
pub fn in_subtransaction<R>(body: impl FnOnce() -> R) -> Result<R, CapturedError> {
    // SAFETY: inside a transaction; we save the caller's memory context and
    // resource owner and restore them on both ways out, as plpgsql's
    // exec_stmt_block does.
    let (context, owner) = unsafe {
        let saved = (pg_sys::CurrentMemoryContext, pg_sys::CurrentResourceOwner);
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(saved.0);
        saved
    };
    let restore = move || {
        // SAFETY: the context and owner saved above outlive the subtransaction.
        unsafe {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        }
    };
    // The caller's state is discarded with the subtransaction on ERROR.
    let body = std::panic::AssertUnwindSafe(body);
    pgrx::PgTryBuilder::new(move || {
        let body = body;
        let result = (body.0)();
        // SAFETY: commits the subtransaction begun above.
        unsafe { pg_sys::ReleaseCurrentSubTransaction() };
        restore();
        Ok(result)
    })
    .catch_others(|caught| {
        restore();
        // SAFETY: pgrx has copied and flushed the error state; this rolls
        // back everything the body did, SPI state included.
        unsafe { pg_sys::RollbackAndReleaseCurrentSubTransaction() };
        restore();
        Err(CapturedError::from(&caught))
    })
    .execute()
}
