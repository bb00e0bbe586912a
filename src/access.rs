//! Who may act as whom: the permission rules shared by `bgw_launch`, the
//! job functions and the scheduler.

use crate::pg::{self, UserError};
use pgrx::prelude::*;

/// A superuser may launch anything. Anyone else granted EXECUTE may launch a
/// worker only as a role whose privileges they have, into a database they may
/// connect to, and without ALLOWCONN.
pub fn check_permissions(database: pg_sys::Oid, role: pg_sys::Oid, flags: u32) {
    if pg::is_superuser() {
        return;
    }
    let me = pg::current_user();
    if flags & pg::BYPASS_ALLOWCONN != 0 {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to use flag \"ALLOWCONN\"",
        )
        .detail("Only superusers may launch workers that bypass datallowconn.")
        .raise();
    }
    if pg::BYPASS_ROLELOGINCHECK.is_some_and(|bit| flags & bit != 0) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "permission denied to use flag \"ROLELOGINCHECK\"",
        )
        .detail("Only superusers may launch workers that bypass the role login check.")
        .raise();
    }
    if !pg::has_privs_of_role(me, role) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied to launch a worker as role \"{}\"", pg::role_name(role)),
        )
        .detail(format!(
            "Only superusers and roles with the privileges of role \"{}\" may launch workers as it.",
            pg::role_name(role)
        ))
        .raise();
    }
    if !pg::has_connect(database, me) {
        UserError::new(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "permission denied to launch a worker in database \"{}\"",
                pg::database_name(database)
            ),
        )
        .detail("You need the CONNECT privilege on that database.")
        .raise();
    }
}
