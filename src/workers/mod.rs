//! The workers: one file per kind, each with its `main`, plus the one
//! registration template they share. A worker's loop is safe Rust over `pg`;
//! it may use `shmem`, `store`, `access` and `settings`, never `api`.

pub mod job_run;
pub mod launcher;
pub mod monitor;
pub mod registration;
pub mod scheduler;
pub mod worker_spi;

use crate::pg::{self, Connection};
use crate::settings;

/// Connects a static worker (and the monitor) to `bgworker_rs.database` as
/// `bgworker_rs.role`, read when the worker starts.
pub fn connect_as_configured() {
    let database = settings::DATABASE
        .get()
        .unwrap_or_else(|| c"postgres".to_owned());
    let role = settings::ROLE.get();
    pg::connect(
        &Connection::Names {
            database: &database,
            role: role.as_deref(),
        },
        0,
    );
}
