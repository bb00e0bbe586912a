//! How a worker connects to a database, and what it was registered with.

use pgrx::pg_sys;
use std::ffi::CStr;

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
    /// To no database, as the bootstrap superuser: only shared catalogs can
    /// be read (the job launcher, like autovacuum's).
    NoDatabase,
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
        // SAFETY: NULL database and role are documented to connect to no
        // database as the bootstrap superuser.
        Connection::NoDatabase => unsafe {
            pg_sys::BackgroundWorkerInitializeConnection(std::ptr::null(), std::ptr::null(), flags)
        },
    }
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
