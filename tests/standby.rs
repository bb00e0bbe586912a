//! Hot standby: a primary and a streaming standby (pg_basebackup -R) over the
//! primary's unix socket, both preloading bgworker_rs. On the standby the
//! monitor (BgWorkerStart_ConsistentState) runs read-only queries, the
//! worker_spi workers (BgWorkerStart_RecoveryFinished) wait for promotion,
//! and bgw_launch says why it cannot launch.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

#[test]
fn standby_runs_read_only_workers_and_the_rest_after_promotion() {
    let conf = [
        "bgworker_rs.monitor = on",
        "bgworker_rs.total_workers = 1",
        "bgworker_rs.naptime = '50ms'",
    ];
    let primary = Cluster::start(&conf);
    let mut p = primary.connect();
    p.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    wait_until("worker 1 ready on the primary", T, || {
        table_exists(&mut p, 1).then_some(())
    });

    let standby = Cluster::standby_of(&primary, &conf);
    let mut s = standby.connect();
    assert!(
        s.query_one("SELECT pg_is_in_recovery()", &[])
            .unwrap()
            .get::<_, bool>(0)
    );

    // The monitor runs on the standby and keeps iterating: read-only queries.
    standby.wait_for_log("bgworker_rs monitor started; server in recovery: true", T);
    wait_until("monitor iterates on the standby", T, || {
        let r = s
            .query_opt(
                "SELECT iterations FROM bgw_list() WHERE kind = 'monitor' AND state = 'running'",
                &[],
            )
            .ok()??;
        (r.get::<_, i64>(0) >= 3).then_some(())
    });
    // The worker_spi port needs read-write: not started during recovery.
    assert!(worker_pids(&mut s, "bgworker_rs").is_empty());
    assert_eq!(worker_pids(&mut s, "bgworker_rs monitor").len(), 1);

    // bgw_launch refuses clearly instead of registering a worker that would
    // wait for the end of recovery.
    let (code, msg, _, hint) = expect_error(&mut s, "SELECT bgw_launch(5)");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "55000",
            "cannot launch a bgworker_rs worker while the server is in recovery"
        )
    );
    assert_eq!(
        hint.as_deref(),
        Some("The worker writes; launch it on the primary.")
    );

    // Replication works: a row folded on the primary shows on the standby.
    p.batch_execute("INSERT INTO schema1.counted VALUES ('total', 0), ('delta', 7)")
        .unwrap();
    wait_until("fold replicated", T, || {
        (total(&mut s, 1) == Some(7)).then_some(())
    });

    // Promotion: now the read-write workers start, and the monitor notices.
    assert!(
        s.query_one("SELECT pg_promote()", &[])
            .unwrap()
            .get::<_, bool>(0)
    );
    standby.wait_for_log("bgworker_rs monitor: server in recovery: false", T);
    wait_until("worker_spi worker starts after promotion", T, || {
        (worker_pids(&mut s, "bgworker_rs").len() == 1).then_some(())
    });
    let pid: i32 = s.query_one("SELECT bgw_launch(5)", &[]).unwrap().get(0);
    assert!(pid_alive(&mut s, pid));
}
