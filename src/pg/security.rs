//! Security contexts: running the extension's own SQL with other rights.

use pgrx::pg_sys;

/// Runs `body` as the bootstrap superuser, the owner of the extension's
/// tables, then switches back. Functions that check the caller's rights
/// themselves use it to read and write those tables. On ERROR the
/// transaction abort restores the user.
pub fn as_table_owner<R>(body: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: backend-local state; SECURITY_LOCAL_USERID_CHANGE keeps SET
    // ROLE and friends from changing it back meanwhile.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::BOOTSTRAP_SUPERUSERID.into(),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = body();
    // SAFETY: restores what we saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    result
}
