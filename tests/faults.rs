//! Faults: a worker killed with SIGKILL, a Rust panic inside a worker, the
//! postmaster killed with SIGKILL, SIGTERM in a long statement, and fast and
//! immediate shutdown under 20 workers.

mod common;

use common::*;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

/// SIGKILL of a worker: the postmaster runs crash recovery. Static workers
/// are back within restart_time + 5 s, dynamic ones launched with
/// restart_after come back, the others are gone and bgw_list lists them as
/// failed, lost in the crash; the tables hold exactly what was committed.
#[test]
fn sigkill_of_a_worker_means_crash_recovery_and_no_lost_commits() {
    let restart_time = 1;
    let cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 2",
        &format!("bgworker_rs.restart_time = {restart_time}"),
    ]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let keeper: i32 = c
        .query_one("SELECT bgw_launch(10, restart_after => '1s')", &[])
        .unwrap()
        .get(0);
    let goner: i32 = c.query_one("SELECT bgw_launch(11)", &[]).unwrap().get(0);

    // Committed: 500 deltas of 1 into schema10, folded or not; and a plain table.
    c.batch_execute(
        "INSERT INTO schema10.counted VALUES ('total', 0);
         INSERT INTO schema10.counted SELECT 'delta', 1 FROM generate_series(1, 500);
         CREATE TABLE committed AS SELECT g FROM generate_series(1, 1000) g;",
    )
    .unwrap();
    // Not committed when the crash comes.
    let mut open_tx = cluster.connect();
    open_tx
        .batch_execute("BEGIN; INSERT INTO committed SELECT g FROM generate_series(1, 500) g")
        .unwrap();

    let statics = worker_pids(&mut c, "bgworker_rs");
    assert_eq!(statics.len(), 2);
    assert!(signal(statics[0], "KILL"));
    cluster.wait_for_log("all server processes terminated; reinitializing", T);
    let crash = Instant::now();

    let mut c = wait_until("server back", T, || {
        cluster.try_connect_as("postgres", "postgres").ok()
    });
    let deadline = Duration::from_secs(restart_time + 5);
    let back = wait_until(
        "both static workers back within restart_time + 5 s",
        deadline,
        || {
            let p = worker_pids(&mut c, "bgworker_rs");
            (p.len() == 2).then_some(p)
        },
    );
    assert!(back.iter().all(|p| !statics.contains(p)));
    println!(
        "static workers back {:?} after crash recovery began",
        crash.elapsed()
    );

    // restart_after brings index 10 back; index 11 stays gone.
    let rows = wait_until("dynamic worker 10 back", T, || {
        let rows = bgw_list(&mut c);
        rows.iter()
            .any(|r| r.0 == "dynamic" && r.1 == 10 && r.3 == "running")
            .then_some(rows)
    });
    assert!(
        !rows.iter().any(|r| r.1 == 10 && r.2 == Some(keeper)),
        "a new process: {rows:?}"
    );
    // The registry survives crash recovery: the never-restart worker is
    // listed as failed, with the reason; the others count a restart.
    let lost = "57P02: lost when the server reinitialized after a crash";
    let r11 = rows.iter().find(|r| r.0 == "dynamic" && r.1 == 11).cloned();
    assert_eq!(
        r11.map(|r| (r.2, r.3, r.5)),
        Some((None, "failed".to_string(), Some(lost.to_string()))),
        "{rows:?}"
    );
    let r10 = rows
        .iter()
        .find(|r| r.0 == "dynamic" && r.1 == 10)
        .cloned()
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert!(r10.4 >= 1 && r10.5.as_deref() == Some(lost), "{r10:?}");
    let statics = wait_until("static workers listed as running again", T, || {
        let rows: Vec<_> = bgw_list(&mut c)
            .into_iter()
            .filter(|r| r.0 == "static")
            .collect();
        (rows.len() == 2 && rows.iter().all(|r| r.3 == "running")).then_some(rows)
    });
    assert!(
        statics.iter().all(|r| r.4 >= 1),
        "restarts counted: {statics:?}"
    );
    assert!(!pid_alive(&mut c, goner));
    assert_eq!(worker_pids(&mut c, "bgworker_rs dynamic").len(), 1);

    // Exactly what was committed: 1000 rows, and every delta either still a
    // delta or in the total.
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM committed"), 1000);
    let folded = scalar_i64(
        &mut c,
        "SELECT coalesce(sum(value), 0) FROM schema10.counted WHERE type = 'total'",
    );
    let pending = scalar_i64(
        &mut c,
        "SELECT count(*) FROM schema10.counted WHERE type = 'delta'",
    );
    assert_eq!(folded + pending, 500);
    wait_until("the restarted worker folds the rest", T, || {
        (scalar_i64(
            &mut c,
            "SELECT value::int8 FROM schema10.counted WHERE type = 'total'",
        ) == 500)
            .then_some(())
    });
}

/// A Rust panic inside a worker's transaction (a test-only hook): PostgreSQL
/// reports it with the panic message (FATAL: a worker has no handler to
/// return to), the transaction is rolled back, the worker exits with code 1
/// and its restart policy applies. The server does not crash.
#[test]
fn a_panic_in_a_worker_is_an_error_not_a_crash() {
    let cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 1",
        "bgworker_rs.restart_time = 1",
        "bgworker_rs.debug_panic_at_iteration = 3",
    ]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let started: String = c
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    cluster.wait_for_log("bgworker_rs: injected panic at iteration 3", T);
    cluster.wait_for_log("background worker \"bgworker_rs\" (PID", T);
    let log = cluster.log();
    let line = log
        .lines()
        .find(|l| l.contains("injected panic at iteration 3"))
        .unwrap();
    assert!(line.contains("FATAL:") || line.contains("ERROR:"), "{line}");
    assert!(log.contains("exited with exit code 1"), "{log}");
    assert!(
        !log.contains("terminated by signal"),
        "no process died of a signal:\n{log}"
    );
    assert!(!log.contains("reinitializing"), "no crash recovery:\n{log}");

    // Restart policy: back after restart_time, with the panic on record.
    let row = wait_until("worker restarted", T, || {
        bgw_list(&mut c)
            .into_iter()
            .find(|r| r.0 == "static" && r.4 >= 1 && r.3 == "running")
    });
    let error = row.5.unwrap_or_default();
    assert!(
        error.starts_with("XX000: ") && error.contains("injected panic at iteration 3"),
        "{error}"
    );
    let now: String = c
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(started, now, "the postmaster did not restart");

    // The panicking iteration's fold was rolled back: no delta is lost. The
    // worker panics in every process's 3rd iteration, so folds that commit
    // and folds that roll back alternate with restarts.
    c.batch_execute("INSERT INTO schema1.counted VALUES ('total', 0)")
        .unwrap();
    c.batch_execute("INSERT INTO schema1.counted SELECT 'delta', 1 FROM generate_series(1, 100)")
        .unwrap();
    wait_until("deltas folded by a later iteration", T, || {
        (scalar_i64(
            &mut c,
            "SELECT value::int8 FROM schema1.counted WHERE type = 'total'",
        ) == 100)
            .then_some(())
    });
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM schema1.counted WHERE type = 'delta'"
        ),
        0
    );
}

/// The postmaster killed with SIGKILL: every worker notices (its latch wait
/// has WL_EXIT_ON_PM_DEATH) and exits within 5 s; the next start is clean.
#[test]
fn postmaster_death_ends_every_worker() {
    let mut cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 2",
        "bgworker_rs.naptime = '10s'",
    ]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    c.query_one("SELECT bgw_launch(5)", &[]).unwrap();
    c.query_one("SELECT bgw_launch(6)", &[]).unwrap();
    let ours: Vec<i32> = c
        .query(
            "SELECT pid FROM pg_stat_activity WHERE backend_type LIKE 'bgworker_rs%'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ours.len(), 4);
    drop(c);

    let postmaster = cluster.postmaster_pid();
    assert!(signal(postmaster, "KILL"));
    cluster.mark_stopped();
    let started = Instant::now();
    wait_until(
        "every worker exited within 5 s",
        Duration::from_secs(5),
        || ours.iter().all(|&p| !process_exists(p)).then_some(()),
    );
    println!(
        "workers gone {:?} after the postmaster died",
        started.elapsed()
    );

    // Other children of the dead postmaster go too; then a clean start.
    wait_until("old server processes gone", T, || {
        let out = std::process::Command::new("pgrep")
            .args(["-f", &cluster.data_dir().display().to_string()])
            .output()
            .ok()?;
        out.stdout.is_empty().then_some(())
    });
    cluster.pg_ctl_start();
    let mut c = cluster.connect();
    wait_until("static workers run again", T, || {
        (worker_pids(&mut c, "bgworker_rs").len() == 2).then_some(())
    });
    assert!(
        bgw_list(&mut c).iter().all(|r| r.0 == "static"),
        "a fresh registry"
    );
}

/// Fast and immediate shutdown with 20 workers running: the server stops
/// within 10 s (pg_ctl's own wait, -t 10).
#[test]
fn shutdown_with_twenty_workers() {
    for mode in ["fast", "immediate"] {
        let mut cluster = Cluster::start(&[
            "bgworker_rs.total_workers = 2",
            "max_worker_processes = 32",
            "bgworker_rs.naptime = '10ms'",
        ]);
        let mut c = cluster.connect();
        c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
        for i in 101..=118 {
            c.query_one("SELECT bgw_launch($1)", &[&i]).unwrap();
        }
        let running = scalar_i64(
            &mut c,
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'bgworker_rs%'",
        );
        assert_eq!(running, 20);
        drop(c);
        let started = Instant::now();
        let out = cluster.stop_within(mode, 10);
        assert!(
            out.status.success(),
            "{mode} shutdown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "{mode} shutdown with 20 workers took {:?}",
            started.elapsed()
        );
    }
}
