//! The monitor: an optional static worker (`bgworker_rs.monitor`) that starts
//! at `BgWorkerStart_ConsistentState`, so it also runs on a hot standby, and
//! only reads. Each naptime it asks whether the server is in recovery, and
//! logs when that changes (a standby promoted). It shows in `bgw_list()` as
//! kind 'monitor', index 0.

use crate::pg;
use crate::settings;
use crate::shmem::{Kind, registry};
use pgrx::prelude::*;

const QUERY: &std::ffi::CStr = c"SELECT pg_is_in_recovery()";

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_monitor_main(_main_arg: pg_sys::Datum) {
    pg::capture_errors();
    registry::enter(Kind::Monitor, 0, 0, 0, None);
    pg::install_signal_handlers();
    super::connect_as_configured();
    pg::pin_search_path_for_process();

    let mut in_recovery = server_in_recovery();
    log!("bgworker_rs monitor started; server in recovery: {in_recovery}");
    registry::report_running();
    loop {
        pg::wait_latch(settings::NAPTIME_MS.get().into(), pg::worker_wait_event());
        pg_sys::check_for_interrupts!();
        pg::reload_config_if_requested();
        let now = server_in_recovery();
        if now != in_recovery {
            log!("bgworker_rs monitor: server in recovery: {now}");
            in_recovery = now;
        }
        registry::report_iteration();
    }
}

/// One read-only transaction, valid on a standby. `Spi::get_one` would run
/// the query read-write, which a standby refuses ("cannot assign
/// TransactionIds during recovery"); `select` on a fresh connection is
/// read-only.
fn server_in_recovery() -> bool {
    pg::in_transaction(QUERY, || {
        Spi::connect(|client| {
            client
                .select(QUERY.to_str().unwrap_or_default(), Some(1), &[])?
                .first()
                .get_one::<bool>()
        })
    })
    .unwrap_or_else(|e| error!("bgworker_rs monitor: {e}"))
    .unwrap_or(false)
}
