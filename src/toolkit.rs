//! A thin layer over `pg_sys` for what pgrx 0.18.1 does not wrap: prompt
//! SIGTERM (`die`), config reload, connection flags, `WaitLatch` with
//! postmaster-death exit, `pg_stat_activity` reporting, and the catalog and
//! ACL look-ups that launching needs.
//!
//! Every `unsafe` block of the extension lives in this file. Differences
//! between PostgreSQL major versions live here too, behind `cfg(feature)`.

use pgrx::pg_sys;
use std::ffi::CStr;

/// `BGWORKER_BYPASS_ALLOWCONN`: connect even where `datallowconn` is false.
pub const BYPASS_ALLOWCONN: u32 = pg_sys::BGWORKER_BYPASS_ALLOWCONN;

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
unsafe extern "C-unwind" {
    fn die(postgres_signal_arg: std::os::raw::c_int);
    fn SignalHandlerForConfigReload(postgres_signal_arg: std::os::raw::c_int);
}

#[cfg(not(feature = "pg18"))]
unsafe fn pqsignal(signo: i32, handler: pg_sys::pqsigfunc) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { pg_sys::pqsignal(signo, handler) };
}

#[cfg(feature = "pg18")]
unsafe fn pqsignal(signo: i32, handler: pg_sys::pqsigfunc) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { pg_sys::pqsignal_be(signo, handler) };
}

/// Where a worker connects.
pub enum Connection<'a> {
    /// By name, as the static workers do from the GUCs; `None` role means the
    /// bootstrap superuser.
    Names {
        database: &'a CStr,
        role: Option<&'a CStr>,
    },
    /// By OID, as resolved by `bgw_launch` in the launching backend.
    Oids {
        database: pg_sys::Oid,
        role: pg_sys::Oid,
    },
}

/// `BackgroundWorkerInitializeConnection[ByOid]` with connection flags.
/// Failures (unknown database, role that may not log in, ...) are FATAL
/// inside PostgreSQL and end the worker.
pub fn connect(target: &Connection<'_>, flags: u32) {
    match target {
        Connection::Names { database, role } => {
            let role = role.map_or(std::ptr::null(), |r| r.as_ptr());
            // SAFETY: both pointers are NUL-terminated strings (or NULL for
            // the role) that outlive the call; we are a registered worker
            // with BGWORKER_BACKEND_DATABASE_CONNECTION.
            unsafe { pg_sys::BackgroundWorkerInitializeConnection(database.as_ptr(), role, flags) }
        }
        // SAFETY: as above; invalid OIDs are reported by PostgreSQL itself.
        Connection::Oids { database, role } => unsafe {
            pg_sys::BackgroundWorkerInitializeConnectionByOid(*database, *role, flags)
        },
    }
}

/// Sleeps on the process latch for up to `timeout_ms` (0: just poll), exits
/// at once if the postmaster dies, then resets the latch.
pub fn wait_latch(timeout_ms: i64) {
    let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32;
    // SAFETY: MyLatch is set for every process attached to shared memory.
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            events,
            timeout_ms as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
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

/// Name and argument of the running worker, from `MyBgworkerEntry`.
pub fn worker_name() -> String {
    // SAFETY: only called from a worker's main, where MyBgworkerEntry points
    // at the registration copy; bgw_name is NUL-terminated by PostgreSQL.
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        assert!(
            !entry.is_null(),
            "worker_name() called outside a background worker"
        );
        CStr::from_ptr((*entry).bgw_name.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The raw `bgw_extra` bytes up to the first NUL.
pub fn worker_extra() -> Vec<u8> {
    // SAFETY: as in worker_name(); bgw_extra is a fixed array we only read
    // within its bounds.
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        assert!(
            !entry.is_null(),
            "worker_extra() called outside a background worker"
        );
        let extra = &(*entry).bgw_extra;
        let bytes = std::slice::from_raw_parts(extra.as_ptr().cast::<u8>(), extra.len());
        bytes.iter().take_while(|&&b| b != 0).copied().collect()
    }
}

/// The effective user of this backend (`GetUserId()`).
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: plain read of backend-local state.
    unsafe { pg_sys::GetUserId() }
}

/// The database this backend is connected to.
pub fn current_database() -> pg_sys::Oid {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::MyDatabaseId }
}

pub fn my_pid() -> i32 {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::MyProcPid }
}

pub fn max_worker_processes() -> i32 {
    // SAFETY: plain read of a GUC variable.
    unsafe { pg_sys::max_worker_processes }
}

pub fn is_superuser() -> bool {
    // SAFETY: catalog look-up of the current user, inside a transaction.
    unsafe { pg_sys::superuser() }
}

pub fn recovery_in_progress() -> bool {
    // SAFETY: reads shared state under its own lock.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// OID of a role, `None` if there is no such role.
pub fn role_oid(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: NUL-terminated name; missing_ok = true returns InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// OID of a database, `None` if there is no such database.
pub fn database_oid(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: NUL-terminated name; missing_ok = true returns InvalidOid.
    let oid = unsafe { pg_sys::get_database_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: noerr = true returns NULL for an unknown OID instead of raising.
    unsafe { cstr_or_oid(pg_sys::GetUserNameFromId(role, true), role) }
}

pub fn database_name(database: pg_sys::Oid) -> String {
    // SAFETY: returns NULL for an unknown OID.
    unsafe { cstr_or_oid(pg_sys::get_database_name(database), database) }
}

/// # Safety
/// `ptr` is NULL or a NUL-terminated string.
unsafe fn cstr_or_oid(ptr: *const std::os::raw::c_char, oid: pg_sys::Oid) -> String {
    if ptr.is_null() {
        format!("OID {}", oid.to_u32())
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Does `member` have the privileges of `role` (directly or by inheritance)?
pub fn has_privs_of_role(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-up inside a transaction.
    unsafe { pg_sys::has_privs_of_role(member, role) }
}

/// Does `role` have CONNECT on `database`?
pub fn has_connect(database: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    let mode = pg_sys::ACL_CONNECT as pg_sys::AclMode;
    // SAFETY: catalog look-up inside a transaction.
    #[cfg(feature = "pg15")]
    let result = unsafe { pg_sys::pg_database_aclcheck(database, role, mode) };
    // SAFETY: catalog look-up inside a transaction.
    #[cfg(not(feature = "pg15"))]
    let result =
        unsafe { pg_sys::object_aclcheck(pg_sys::DatabaseRelationId, database, role, mode) };
    result == pg_sys::AclResult::ACLCHECK_OK
}

/// Number of dimensions of an array argument; pgrx's `Array` flattens them.
pub fn array_ndim(array: *const pg_sys::ArrayType) -> i32 {
    assert!(!array.is_null(), "array_ndim() on a NULL array");
    // SAFETY: a detoasted, non-NULL ArrayType handed over by pgrx.
    unsafe { (*array).ndim }
}
