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
