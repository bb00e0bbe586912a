//! What the extension does around the utility statements that concern its
//! schedulers (`pg::Utility`, seen through a `ProcessUtility_hook`):
//! - `DROP DATABASE`, `ALTER DATABASE ... RENAME`, `ALTER DATABASE ... SET
//!   TABLESPACE` and `CREATE DATABASE ... TEMPLATE` need nobody connected
//!   to the database. Like autovacuum, the database's scheduler steps
//!   aside: it is stopped and kept out until the statement ends, then the
//!   database is looked at again (it may be gone, renamed, or copied). A
//!   `DROP DATABASE` also stops the runs of the database's own jobs, whose
//!   records go with it. Only for a caller who owns the database, so that
//!   trying a statement one may not run never disturbs anyone's jobs.
//! - Any other `ALTER DATABASE` (`ALLOW_CONNECTIONS`, `IS_TEMPLATE`) and
//!   `CREATE`, `ALTER` or `DROP EXTENSION bgworker_rs`: the database's
//!   scheduler looks again when the transaction commits (it may leave, or
//!   start after an upgrade).

use crate::api::jobs;
use crate::pg::{self, Utility};
use crate::shmem::{job_slots, schedulers};
use pgrx::pg_sys;
use std::time::Duration;

/// How long a statement waits for a scheduler it stopped to exit; then
/// PostgreSQL's own wait for other sessions (5 s) applies.
const STEP_ASIDE_WAIT: Duration = Duration::from_secs(10);

pub fn around(utility: &Utility, run: &mut dyn FnMut()) {
    match utility {
        Utility::DropDatabase(name) => aside(pg::database_oid(name), true, run),
        Utility::RenameDatabase(name) | Utility::AlterDatabase { name, moves: true } => {
            aside(pg::database_oid(name), false, run)
        }
        Utility::CreateDatabase { name, template } => {
            // Not in a transaction block: it commits right after this.
            let name = name.clone();
            pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
                // The copy may hold jobs of its own.
                if let Some(db) = pg::database_oid(&name) {
                    schedulers::ask_for(db.to_u32());
                }
            });
            let source = template.as_deref().and_then(pg::database_oid);
            aside(source, false, run)
        }
        Utility::AlterDatabase { name, moves: false } => {
            run();
            if let Some(db) = pg::database_oid(name) {
                jobs::wake_scheduler_at_commit_of(db);
            }
        }
        Utility::ThisExtension => {
            run();
            jobs::wake_scheduler_at_commit_of(pg::current_database());
        }
        Utility::Other => run(),
    }
}

/// Runs `run` with `database`'s scheduler stopped and kept out, if the
/// caller owns the database; with `runs`, the runs of its jobs too.
fn aside(database: Option<pg_sys::Oid>, runs: bool, run: &mut dyn FnMut()) {
    let Some(db) = database.filter(|&db| pg::owns_database(db)) else {
        return run();
    };
    let db = db.to_u32();
    if let Some(handle) = schedulers::hold(db) {
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
        job_slots::abandon(db);
    }
    pg::with_finally(run, || schedulers::release(db));
}
