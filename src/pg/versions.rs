//! Differences between PostgreSQL major versions, behind `cfg(feature)`:
//! connection flags, the custom wait event, `pqsignal`, ACL checks.

use pgrx::pg_sys;

/// `BGWORKER_BYPASS_ALLOWCONN`: connect even where `datallowconn` is false.
pub const BYPASS_ALLOWCONN: u32 = pg_sys::BGWORKER_BYPASS_ALLOWCONN;

/// `BGWORKER_BYPASS_ROLELOGINCHECK` (PostgreSQL 17+): connect as a role that
/// may not log in. `None` where the server does not have it.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub const BYPASS_ROLELOGINCHECK: Option<u32> = Some(pg_sys::BGWORKER_BYPASS_ROLELOGINCHECK);
#[cfg(not(any(feature = "pg17", feature = "pg18")))]
pub const BYPASS_ROLELOGINCHECK: Option<u32> = None;

/// The wait event a worker shows while it sleeps on its latch: on 17+ the
/// custom event "WorkerSpiMain" (as worker_spi), listed in `pg_wait_events`;
/// before 17 the generic "Extension".
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn worker_wait_event() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static EVENT: AtomicU32 = AtomicU32::new(0);
    let mut event = EVENT.load(Ordering::Relaxed);
    if event == 0 {
        // SAFETY: called in a worker attached to shared memory; PostgreSQL
        // returns the same id for the same name in every process.
        event = unsafe { pg_sys::WaitEventExtensionNew(c"WorkerSpiMain".as_ptr()) };
        EVENT.store(event, Ordering::Relaxed);
    }
    event
}

#[cfg(not(any(feature = "pg17", feature = "pg18")))]
pub fn worker_wait_event() -> u32 {
    pg_sys::PG_WAIT_EXTENSION
}

/// # Safety
/// `handler` must be async-signal-safe; call before unblocking signals.
#[cfg(not(feature = "pg18"))]
pub(super) unsafe fn pqsignal(signo: i32, handler: pg_sys::pqsigfunc) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { pg_sys::pqsignal(signo, handler) };
}

/// # Safety
/// `handler` must be async-signal-safe; call before unblocking signals.
#[cfg(feature = "pg18")]
pub(super) unsafe fn pqsignal(signo: i32, handler: pg_sys::pqsigfunc) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { pg_sys::pqsignal_be(signo, handler) };
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

/// May `member` `SET ROLE` to `role`? On 16+ that is the membership's SET
/// option (`member_can_set_role`), which may be off even where privileges
/// are inherited; before 16, any membership. Superusers may.
pub fn can_set_role(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-up inside a transaction.
    #[cfg(feature = "pg15")]
    let result = unsafe { pg_sys::is_member_of_role(member, role) };
    // SAFETY: catalog look-up inside a transaction.
    #[cfg(not(feature = "pg15"))]
    let result = unsafe { pg_sys::member_can_set_role(member, role) };
    result
}

/// `PortalRun` to completion at top level; PostgreSQL 18 dropped its
/// `run_once` argument.
///
/// # Safety
/// `portal` is started, and `dest` outlives the call.
pub(super) unsafe fn portal_run(
    portal: pg_sys::Portal,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    // FETCH_ALL is LONG_MAX.
    let all = std::os::raw::c_long::MAX;
    // SAFETY: forwarded from the caller's contract.
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::PortalRun(portal, all, true, true, dest, dest, qc);
    }
    // SAFETY: forwarded from the caller's contract.
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::PortalRun(portal, all, true, dest, dest, qc);
    }
}
