//! What the extension does around the utility statements that concern its
//! schedulers (`pg::Utility`, seen through a `ProcessUtility_hook`):
//! - `DROP DATABASE`, `ALTER DATABASE ... RENAME`, `ALTER DATABASE ... SET
//!   TABLESPACE` and `CREATE DATABASE ... TEMPLATE` need nobody connected
//!   to the database. Like autovacuum, the database's scheduler steps
//!   aside: it is stopped and kept out until the statement ends, then the
//!   database is looked at again (it may be gone, renamed, or copied). A
//!   `DROP DATABASE` also stops the runs of the database's own jobs that
//!   are connected to it (they would block the drop), and idle warm job
//!   workers connected to it leave.
//! - Only when PostgreSQL's own cheap checks would let the statement go on:
//!   the caller owns the database (and may create databases, for a rename
//!   or a copy), it is not the caller's current database, and a statement
//!   that may not run in a transaction block is not in one. So trying a
//!   statement one may not run never disturbs anyone's jobs.
//! - Any other `ALTER DATABASE` (`ALLOW_CONNECTIONS`, `IS_TEMPLATE`) and
//!   `CREATE`, `ALTER` or `DROP EXTENSION bgworker_rs`: the database's
//!   scheduler looks again when the transaction commits (it may leave, or
//!   start after an upgrade).

use crate::api::jobs;
use crate::pg::{self, Utility, UtilityContext};
use crate::shmem::{job_slots, schedulers};
use pgrx::pg_sys;
use std::time::Duration;

/// How long a statement waits for a scheduler it stopped to exit; then
/// PostgreSQL's own wait for other sessions (5 s) applies.
const STEP_ASIDE_WAIT: Duration = Duration::from_secs(10);

pub fn around(utility: &Utility, context: UtilityContext, run: &mut dyn FnMut()) {
    let mine = |name: &std::ffi::CStr, creates: bool| {
        pg::database_oid(name).filter(|&db| {
            db != pg::current_database()
                && pg::owns_database(db)
                && (!creates || pg::can_create_databases())
        })
    };
    match utility {
        Utility::DropDatabase(name) if context.alone => {
            aside(mine(name, false), true, run);
        }
        Utility::RenameDatabase(name) => aside(mine(name, true), false, run),
        Utility::AlterDatabase { name, moves: true } if context.alone => {
            aside(mine(name, false), false, run)
        }
        Utility::CreateDatabase { name, template } if context.alone => {
            let source = template.as_deref().and_then(|t| mine(t, true));
            aside(source, false, run);
            // The copy may hold jobs of its own: its scheduler looks when
            // this commits (right after: not in a transaction block).
            if let Some(copy) = pg::database_oid(name) {
                jobs::wake_scheduler_at_commit_of(copy);
            }
        }
        Utility::AlterDatabase { name, .. } => {
            run();
            if let Some(db) = pg::database_oid(name) {
                jobs::wake_scheduler_at_commit_of(db);
            }
        }
        Utility::ThisExtension => {
            run();
            jobs::wake_scheduler_at_commit_of(pg::current_database());
        }
        _ => run(),
    }
}

/// Runs `run` with `database`'s scheduler stopped and kept out; with
/// `runs`, also the runs of its jobs connected to it. The hold is released
/// whatever happens, an interrupt while waiting included.
fn aside(database: Option<pg_sys::Oid>, runs: bool, run: &mut dyn FnMut()) {
    let Some(db) = database.map(|db| db.to_u32()) else {
        return run();
    };
    let scheduler = schedulers::hold(db);
    let mut body = || {
        if let Some(handle) = scheduler {
            pg::terminate_worker(handle);
            let _ = pg::wait_for(Some(STEP_ASIDE_WAIT), || {
                matches!(
                    pg::worker_status(handle),
                    pg::WorkerStatus::Stopped | pg::WorkerStatus::PostmasterDied
                )
                .then_some(())
            });
        }
        if runs {
            job_slots::stop_runs_in(db, db);
        }
        // Idle job workers connected to it would block the statement.
        job_slots::dismiss_warm(db);
        run();
    };
    pg::with_finally(&mut body, || schedulers::release(db));
}
