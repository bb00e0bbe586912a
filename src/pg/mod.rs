//! The thin layer over `pg_sys`: everything pgrx 0.18.1 does not wrap, one
//! file per area. This is the only place with `unsafe` code; each block has a
//! `// SAFETY:` line. Differences between PostgreSQL versions live in
//! `versions`. It may use pgrx and the standard library, nothing of this
//! crate; everything above it is safe Rust.
//!
//! The items are re-exported flat (`pg::connect`, `pg::wait_latch`), so a
//! caller need not know which file holds them.

mod catalog;
mod connect;
mod errors;
mod handles;
mod latch;
mod process;
mod script;
mod security;
mod shmem;
mod signals;
mod utility;
mod values;
mod versions;
mod xact;

pub use catalog::*;
pub use connect::*;
pub use errors::*;
pub use handles::*;
pub use latch::*;
pub use process::*;
pub use script::*;
pub use security::*;
pub use shmem::*;
pub use signals::*;
pub use utility::*;
pub use values::*;
pub use versions::*;
pub use xact::*;
