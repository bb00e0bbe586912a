//! Who may act as whom: the permission rules shared by `bgw_launch`, the
//! job functions and the scheduler. A superuser may do anything. Anyone else
//! granted EXECUTE may act only as a role they could `SET ROLE` to (on 16+
//! that is the membership's SET option, not inherited privileges), in a
//! database they may connect to, and without the flags that bypass checks.

use crate::pg::{self, UserError};
use pgrx::prelude::*;

/// Why `actor` may not act as asked.
#[derive(Debug, PartialEq, Eq)]
pub enum Denial {
    Flag(&'static str),
    Role,
    Database,
}

/// May `actor` start a worker as `role` in `database` with `flags`?
pub fn check(
    actor: pg_sys::Oid,
    database: pg_sys::Oid,
    role: pg_sys::Oid,
    flags: u32,
) -> Result<(), Denial> {
    if pg::is_role_superuser(actor) {
        return Ok(());
    }
    if flags & pg::BYPASS_ALLOWCONN != 0 {
        return Err(Denial::Flag("ALLOWCONN"));
    }
    if pg::BYPASS_ROLELOGINCHECK.is_some_and(|bit| flags & bit != 0) {
        return Err(Denial::Flag("ROLELOGINCHECK"));
    }
    if !pg::can_set_role(actor, role) {
        return Err(Denial::Role);
    }
    if !pg::has_connect(database, actor) {
        return Err(Denial::Database);
    }
    Ok(())
}

/// [`check`] for the current user; a denial is an ERROR (42501).
pub fn check_permissions(database: pg_sys::Oid, role: pg_sys::Oid, flags: u32) {
    let Err(denial) = check(pg::current_user(), database, role, flags) else {
        return;
    };
    let error =
        |message: String| UserError::new(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE, message);
    match denial {
        Denial::Flag(flag) => error(format!("permission denied to use flag \"{flag}\""))
            .detail(match flag {
                "ALLOWCONN" => "Only superusers may launch workers that bypass datallowconn.",
                _ => "Only superusers may launch workers that bypass the role login check.",
            })
            .raise(),
        Denial::Role => {
            let name = pg::role_name(role);
            error(format!(
                "permission denied to launch a worker as role \"{name}\""
            ))
            .detail(format!(
                "Only superusers and roles that may SET ROLE to \"{name}\" may launch workers as it."
            ))
            .raise()
        }
        Denial::Database => error(format!(
            "permission denied to launch a worker in database \"{}\"",
            pg::database_name(database)
        ))
        .detail("You need the CONNECT privilege on that database.")
        .raise(),
    }
}
