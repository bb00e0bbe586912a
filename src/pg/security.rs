//! Security contexts for the SQL the extension runs on its own behalf: a
//! pinned `search_path`, and another user's rights with
//! `SECURITY_RESTRICTED_OPERATION`, each undone on the way out. On ERROR the
//! (sub)transaction abort undoes both as well.

use pgrx::pg_sys;
use std::ffi::CStr;

/// The `search_path` of the extension's own SQL: the catalogs first, the
/// caller's temporary schema last (so a temporary relation never shadows a
/// catalog), and nothing the caller or the database controls.
pub const PINNED_SEARCH_PATH: &CStr = c"pg_catalog, pg_temp";

/// What the extension's own SQL runs with, whatever the caller set: the
/// pinned `search_path`; and plans made once, with no sequential scan where
/// an index serves. Each of those statements looks for a few rows of a
/// table that only grows (the runs kept for `history_max_age`, the one-shot
/// jobs of every `bgw_run`) through an index made for it, most of them
/// partial (the queued runs, the runs not counted yet, the scheduled jobs).
/// - Without `enable_seqscan = off`, the planner would scan the whole table
///   instead, at every call, when its statistics are older than the
///   table's growth (a young table autovacuum has not analyzed yet), or
///   when its plan was made while the table was small. A statement that no
///   index serves still scans.
/// - Without `plan_cache_mode = force_generic_plan`, a statement kept with
///   its plan (`store::Kept`) would be planned again at each call, its
///   values in: that was most of a scheduler's work in a wake.
/// - `jit = off`: a sequential scan kept where no index serves is costed
///   10^10 (before PostgreSQL 18), far over `jit_above_cost`, and would be
///   compiled (about 100 ms) for a statement that takes microseconds.
const PINNED: [(&CStr, &CStr); 4] = [
    (c"search_path", PINNED_SEARCH_PATH),
    (c"enable_seqscan", c"off"),
    (c"plan_cache_mode", c"force_generic_plan"),
    (c"jit", c"off"),
];

/// Runs `body` with the settings of the extension's own SQL ([`PINNED`]),
/// in a GUC nest level of its own, as a function with `SET` clauses does.
pub fn with_pinned_settings<R>(body: impl FnOnce() -> R) -> R {
    // SAFETY: inside a transaction (the callers run SQL); set_config_option
    // copies the value, and the nest level is popped below or by the abort
    // of the enclosing (sub)transaction.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        for (name, value) in PINNED {
            pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                pg_sys::GucSource::PGC_S_SESSION,
                pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
        level
    };
    let result = body();
    // SAFETY: pops the nest level pushed above; `true` keeps nothing of it.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// Pins `search_path` for the rest of this process, over any setting of the
/// database or role: for workers that run only the extension's own SQL.
pub fn pin_search_path_for_process() {
    set_option_for_process(c"search_path", PINNED_SEARCH_PATH);
}

/// Sets a setting for the rest of this process, over any setting of the
/// database or role.
pub fn set_option_for_process(name: &CStr, value: &CStr) {
    // SAFETY: a connected backend; SetConfigOption copies both strings.
    unsafe {
        pg_sys::SetConfigOption(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Runs `body` as `user` in a security-restricted operation (no `SET ROLE`,
/// no temporary objects, no `LISTEN`, ... meanwhile), then switches back.
pub fn as_user_restricted<R>(user: pg_sys::Oid, body: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    // SAFETY: backend-local state; SECURITY_LOCAL_USERID_CHANGE keeps SET
    // ROLE and friends from changing it back meanwhile.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(
            user,
            saved_context
                | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
                | pg_sys::SECURITY_RESTRICTED_OPERATION as i32,
        );
    }
    let result = body();
    // SAFETY: restores what we saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}
