//! Shared state, in shared memory: the registry of workers (so that any
//! session can list, wait for and stop them) and the job slots (how a
//! statement and its outcome travel between the scheduler and a run's
//! worker, across databases). It may use `pg` and `settings`; it knows
//! nothing of SQL functions or worker loops.

mod entry;
pub mod job_slots;
mod kind;
pub mod registry;
mod registry_crash;
pub mod schedulers;

pub use kind::Kind;
