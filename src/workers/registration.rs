//! One `BackgroundWorker` template for every worker of this extension. Static
//! workers go through `RegisterBackgroundWorker` from `_PG_init`, dynamic ones
//! through `RegisterDynamicBackgroundWorker`; only the name, type, restart
//! policy and `bgw_extra` differ.

use crate::pg::{self, RawHandle};
use crate::settings;
use crate::shmem::Kind;
use crate::shmem::registry::Ticket;
use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const LIBRARY: &str = "bgworker_rs";
pub const MAIN_FUNCTION: &str = "bgworker_rs_main";
pub const MONITOR_FUNCTION: &str = "bgworker_rs_monitor_main";
pub const SCHEDULER_FUNCTION: &str = "bgworker_rs_scheduler_main";
pub const JOB_FUNCTION: &str = "bgworker_rs_job_main";
pub const LAUNCHER_FUNCTION: &str = "bgworker_rs_launcher_main";

/// `bgw_extra` is 128 bytes and read back as a NUL-terminated string.
const EXTRA_CAPACITY: usize = 127;

/// What a dynamic worker receives in `bgw_extra`: the database and role,
/// resolved to OIDs by the launching backend, the connection flags, and the
/// registry entry its launcher claimed for it. Static workers get an empty
/// `bgw_extra` and read the GUCs instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectArgs {
    #[serde(rename = "d")]
    pub database: u32,
    #[serde(rename = "r")]
    pub role: u32,
    #[serde(rename = "f")]
    pub flags: u32,
    #[serde(flatten)]
    pub ticket: Ticket,
}

impl ConnectArgs {
    pub fn encode(&self) -> String {
        let text = serde_json::to_string(self).expect("ConnectArgs always serializes");
        assert!(
            text.len() <= EXTRA_CAPACITY,
            "ConnectArgs does not fit in bgw_extra"
        );
        text
    }

    /// What this worker was registered with; `None` for a static worker.
    /// A malformed `bgw_extra` ends the worker (FATAL).
    pub fn of_this_worker() -> Option<ConnectArgs> {
        Self::decode(&pg::worker_extra()).unwrap_or_else(|e| {
            pgrx::ereport!(
                FATAL,
                pgrx::PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("malformed bgw_extra: {e}")
            );
        })
    }

    /// `None` for an empty `bgw_extra` (a static worker).
    pub fn decode(extra: &[u8]) -> Result<Option<ConnectArgs>, serde_json::Error> {
        if extra.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(extra).map(Some)
    }
}

fn template(index: i32, kind: Kind) -> BackgroundWorkerBuilder {
    let builder = BackgroundWorkerBuilder::new(&kind.worker_name(index))
        .set_type(kind.worker_type())
        .set_library(LIBRARY)
        .set_argument(index.into_datum())
        // SHMEM_ACCESS + BACKEND_DATABASE_CONNECTION, start at
        // BgWorkerStart_RecoveryFinished: the worker_spi port writes.
        .enable_spi_access();
    match kind {
        Kind::Static | Kind::Dynamic => builder.set_function(MAIN_FUNCTION),
        Kind::Scheduler => builder.set_function(SCHEDULER_FUNCTION),
        Kind::Job => builder.set_function(JOB_FUNCTION),
        Kind::Launcher => builder.set_function(LAUNCHER_FUNCTION),
        // Read-only: may start as soon as a standby is consistent.
        Kind::Monitor => builder
            .set_function(MONITOR_FUNCTION)
            .set_start_time(BgWorkerStartTime::ConsistentState),
    }
}

/// Registers `bgworker_rs.total_workers` static workers, and the monitor if
/// `bgworker_rs.monitor` is on. Only valid from `_PG_init` while preloading.
pub fn register_static_workers() {
    let restart = match settings::RESTART_TIME_S.get() {
        secs if secs < 0 => None, // BGW_NEVER_RESTART
        secs => Some(Duration::from_secs(secs as u64)),
    };
    for index in 1..=settings::TOTAL_WORKERS.get() {
        template(index, Kind::Static)
            .set_restart_time(restart)
            .load();
    }
    if settings::MONITOR.get() {
        template(0, Kind::Monitor).set_restart_time(restart).load();
    }
    if settings::MAX_JOBS.get() > 0 {
        template(0, Kind::Launcher).set_restart_time(restart).load();
    }
}

/// Registers one dynamic worker (`Kind::Dynamic`, `Kind::Scheduler` or
/// `Kind::Job`) that reports its start and exit to us. It is restarted `restart_after` a
/// failure, or never. `None`: no free slot.
pub fn register_dynamic_worker(
    kind: Kind,
    index: i32,
    args: ConnectArgs,
    restart_after: Option<Duration>,
) -> Option<RawHandle> {
    let builder = template(index, kind)
        .set_restart_time(restart_after)
        .set_extra(&args.encode())
        .set_notify_pid(pg::my_pid());
    pg::register_dynamic_worker((&builder).into())
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn extra_roundtrip_and_fits_for_largest_values() {
        let args = ConnectArgs {
            database: u32::MAX,
            role: u32::MAX,
            flags: u32::MAX,
            ticket: Ticket {
                slot: u32::MAX,
                epoch: u64::MAX,
            },
        };
        let text = args.encode();
        assert!(text.len() <= EXTRA_CAPACITY, "{text}");
        assert_eq!(ConnectArgs::decode(text.as_bytes()).unwrap(), Some(args));
    }

    #[test]
    fn empty_extra_means_static_worker() {
        assert_eq!(ConnectArgs::decode(b"").unwrap(), None);
    }

    #[test]
    fn garbage_extra_is_an_error() {
        assert!(ConnectArgs::decode(b"{\"d\":1}").is_err());
        assert!(ConnectArgs::decode(b"\xff\xfe").is_err());
    }

    #[test]
    fn names_follow_worker_spi() {
        assert_eq!(Kind::Static.worker_name(3), "bgworker_rs worker 3");
        assert_eq!(Kind::Dynamic.worker_name(7), "bgworker_rs dynamic worker 7");
        assert_eq!(Kind::Static.worker_type(), "bgworker_rs");
        assert_eq!(Kind::Dynamic.worker_type(), "bgworker_rs dynamic");
    }
}
