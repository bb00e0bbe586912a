//! The SQL surface: every `#[pg_extern]` function, its argument checks and
//! the errors users see. Launching and managing workers, and SQL jobs.
//! It may use every layer below it: `workers` (registration), `shmem`,
//! `store`, `access`, `settings` and `pg`.

pub mod args;
pub mod jobs;
pub mod launch;
pub mod manage;
pub mod schedules;
pub mod utility;
