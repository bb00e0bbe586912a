//! Catalog and ACL look-ups: roles, databases, privileges.

use pgrx::pg_sys;
use std::ffi::CStr;

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

/// Is `role` a superuser?
pub fn is_role_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-up inside a transaction.
    unsafe { pg_sys::superuser_arg(role) }
}

pub fn is_superuser() -> bool {
    // SAFETY: catalog look-up of the current user, inside a transaction.
    unsafe { pg_sys::superuser() }
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

/// Does a role with this OID exist?
pub fn role_exists(role: pg_sys::Oid) -> bool {
    // SAFETY: noerr = true returns NULL for an unknown OID instead of raising.
    !unsafe { pg_sys::GetUserNameFromId(role, true) }.is_null()
}

/// Does a database with this OID exist?
pub fn database_exists(database: pg_sys::Oid) -> bool {
    // SAFETY: returns NULL for an unknown OID.
    !unsafe { pg_sys::get_database_name(database) }.is_null()
}

/// A database as `pg_database` describes it.
#[derive(Clone, Copy, Debug)]
pub struct Database {
    pub oid: pg_sys::Oid,
    /// Accepts connections, is not a template, and is not left invalid by
    /// an interrupted `DROP DATABASE`.
    pub connectable: bool,
    /// Being dropped (or left half-dropped): `datconnlimit` says invalid.
    pub invalid: bool,
}

/// `datconnlimit` of a database an interrupted `DROP DATABASE` left
/// invalid (`DATCONNLIMIT_INVALID_DB`, PostgreSQL 15.4 and later).
const DATCONNLIMIT_INVALID_DB: i32 = -2;

/// Every database, from a scan of the shared catalog `pg_database`, for a
/// process connected to no database (which cannot plan a query), as
/// autovacuum's launcher does. Inside a transaction.
pub fn databases() -> Vec<Database> {
    let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    let mut found = Vec::new();
    // SAFETY: inside a transaction; pg_database is a shared catalog any
    // backend may open. Each tuple heap_getnext returns is valid until the
    // next call, and its fixed-width fields start at t_hoff, where
    // FormData_pg_database describes them (GETSTRUCT).
    unsafe {
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, lock);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tuple = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tuple.is_null() {
                break;
            }
            let header = (*tuple).t_data;
            let form = header
                .cast::<u8>()
                .add((*header).t_hoff as usize)
                .cast::<pg_sys::FormData_pg_database>();
            found.push(Database {
                oid: (*form).oid,
                connectable: (*form).datallowconn
                    && !(*form).datistemplate
                    && (*form).datconnlimit != DATCONNLIMIT_INVALID_DB,
                invalid: (*form).datconnlimit == DATCONNLIMIT_INVALID_DB,
            });
        }
        pg_sys::heap_endscan(scan);
        pg_sys::table_close(rel, lock);
    }
    found
}

/// `datdba` and `datistemplate` of a database; `None` for an unknown OID.
fn database_form(database: pg_sys::Oid) -> Option<(pg_sys::Oid, bool)> {
    // SAFETY: a syscache look-up inside a transaction; the tuple, if any, is
    // released before we return, and its fixed-width fields start at t_hoff
    // (GETSTRUCT).
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::DATABASEOID as std::os::raw::c_int,
            pg_sys::Datum::from(database),
        );
        if tuple.is_null() {
            return None;
        }
        let header = (*tuple).t_data;
        let form = header
            .cast::<u8>()
            .add((*header).t_hoff as usize)
            .cast::<pg_sys::FormData_pg_database>();
        let found = ((*form).datdba, (*form).datistemplate);
        pg_sys::ReleaseSysCache(tuple);
        Some(found)
    }
}

/// Is `database` a template (`datistemplate`)? False for an unknown OID.
pub fn is_template_database(database: pg_sys::Oid) -> bool {
    database_form(database).is_some_and(|(_, template)| template)
}

/// May the current user act as `database`'s owner (PostgreSQL's ownership
/// check: a superuser, or a role with the owner's privileges)?
pub fn owns_database(database: pg_sys::Oid) -> bool {
    database_form(database)
        .is_some_and(|(owner, _)| is_superuser() || has_privs_of_role(current_user(), owner))
}

/// May the current user create databases (`have_createdb_privilege()`:
/// a superuser, or `CREATEDB`)?
pub fn can_create_databases() -> bool {
    if is_superuser() {
        return true;
    }
    // SAFETY: a syscache look-up inside a transaction; the tuple, if any, is
    // released before we return, and its fixed-width fields start at t_hoff
    // (GETSTRUCT).
    unsafe {
        let tuple = pg_sys::SearchSysCache1(
            pg_sys::SysCacheIdentifier::AUTHOID as std::os::raw::c_int,
            pg_sys::Datum::from(current_user()),
        );
        if tuple.is_null() {
            return false;
        }
        let header = (*tuple).t_data;
        let form = header
            .cast::<u8>()
            .add((*header).t_hoff as usize)
            .cast::<pg_sys::FormData_pg_authid>();
        let createdb = (*form).rolcreatedb;
        pg_sys::ReleaseSysCache(tuple);
        createdb
    }
}

static ROLES_OR_DATABASES_CHANGED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(true);

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn note_role_or_database_change(
    _arg: pg_sys::Datum,
    _cache: std::ffi::c_int,
    _hash: u32,
) {
    ROLES_OR_DATABASES_CHANGED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// From now on this process notes every change of a role or a database
/// (`pg_authid`, `pg_database`, a cache reset included), as the
/// invalidation messages arrive, for [`roles_or_databases_changed`]. Once
/// per process.
pub fn watch_roles_and_databases() {
    for cache in [
        pg_sys::SysCacheIdentifier::AUTHOID,
        pg_sys::SysCacheIdentifier::DATABASEOID,
    ] {
        // SAFETY: registers a callback that only sets an atomic flag;
        // PostgreSQL keeps it for the life of the process.
        unsafe {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as std::ffi::c_int,
                Some(note_role_or_database_change),
                pg_sys::Datum::from(0),
            )
        };
    }
}

/// Whether a role or a database may have changed since the last call
/// (true the first time): the invalidations seen so far, which a
/// transaction takes in when it starts.
pub fn roles_or_databases_changed() -> bool {
    ROLES_OR_DATABASES_CHANGED.swap(false, std::sync::atomic::Ordering::Relaxed)
}

/// Which versions of `role`'s `pg_authid` row and `database`'s
/// `pg_database` row are current: any `ALTER ROLE` or `ALTER DATABASE`
/// (a password, `SUPERUSER`, `LOGIN`, a rename, `ALLOW_CONNECTIONS`, a
/// grant of `CONNECT`...) writes a new version, with a new position and
/// transaction id, and never gives an old one back. 0 if either is gone.
/// Inside a transaction.
pub fn connect_stamp(role: pg_sys::Oid, database: pg_sys::Oid) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    for (cache, oid) in [
        (pg_sys::SysCacheIdentifier::AUTHOID, role),
        (pg_sys::SysCacheIdentifier::DATABASEOID, database),
    ] {
        // SAFETY: a syscache look-up inside a transaction; the tuple, if
        // any, is released before we go on, and only its header and
        // position are read.
        let version = unsafe {
            let tuple =
                pg_sys::SearchSysCache1(cache as std::os::raw::c_int, pg_sys::Datum::from(oid));
            if tuple.is_null() {
                return 0;
            }
            let self_ = (*tuple).t_self;
            let xmin = (*(*tuple).t_data).t_choice.t_heap.t_xmin.into_inner();
            pg_sys::ReleaseSysCache(tuple);
            (
                xmin,
                self_.ip_blkid.bi_hi,
                self_.ip_blkid.bi_lo,
                self_.ip_posid,
            )
        };
        version.hash(&mut hasher);
    }
    hasher.finish().max(1)
}
