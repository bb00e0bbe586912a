//! bgworker_rs: PostgreSQL background workers in safe Rust.
//!
//! `_PG_init` reads like a table of contents: settings, then, when the
//! library is preloaded, the shared-memory registry and the static workers. Dynamic workers are started from
//! SQL by `bgw_launch()`; every worker runs the worker_spi port.

mod args;
mod errors;
mod faults;
mod gucs;
mod job_slots;
mod job_worker;
mod jobs;
mod launch;
mod manage;
mod monitor;
mod registration;
mod registry;
mod scheduler;
mod toolkit;
mod worker_spi;

::pgrx::pg_module_magic!();

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloading = toolkit::preloading();
    gucs::init(preloading);
    if preloading {
        toolkit::install_shmem_hooks(shmem_request, shmem_startup);
        registration::register_static_workers();
    }
}

/// Shared memory: the registry of workers, and the job slots.
fn shmem_request() {
    registry::request();
    job_slots::request();
}

fn shmem_startup() {
    registry::startup();
    job_slots::startup();
}

pgrx::extension_sql_file!("../sql/security.sql", name = "security", finalize);

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Hooks for `cargo pgrx test`: the test cluster preloads the library.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'bgworker_rs'",
            "bgworker_rs.naptime = '100ms'",
        ]
    }
}
