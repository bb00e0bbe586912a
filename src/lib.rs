//! bgworker_rs: PostgreSQL background workers in safe Rust.
//!
//! `_PG_init` reads like a table of contents: settings, then, when the
//! library is preloaded, shared memory and the static workers.
//!
//! The layers, each allowed to use only those below it:
//! - `api`: the SQL functions;
//! - `workers`: one file per kind of worker, and their registration;
//! - `store` (the extension's tables) and `access` (who may act as whom);
//! - `shmem`: the worker registry and the job slots;
//! - `settings`: the GUCs;
//! - `pg`: the thin unsafe layer over `pg_sys`.

mod access;
mod api;
mod faults;
mod pg;
mod schedule;
mod settings;
mod shmem;
mod store;
mod workers;

::pgrx::pg_module_magic!();

#[pgrx::pg_guard]
pub extern "C-unwind" fn _PG_init() {
    let preloading = pg::preloading();
    settings::init(preloading);
    if preloading {
        pg::install_shmem_hooks(shmem_request, shmem_startup);
        pg::install_utility_hook(api::utility::around, c"bgworker_rs");
        workers::registration::register_static_workers();
    }
}

/// Shared memory: the registry of workers, and the job slots.
fn shmem_request() {
    shmem::registry::request();
    shmem::job_slots::request();
    shmem::schedulers::request();
}

fn shmem_startup() {
    shmem::registry::startup();
    shmem::job_slots::startup();
    shmem::schedulers::startup();
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
