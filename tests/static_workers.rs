//! Static workers: registered by `_PG_init` from shared_preload_libraries.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

#[test]
fn static_workers_start_named_and_fold_deltas() {
    let cluster = Cluster::start(&[]);
    let mut c = cluster.connect();

    let pids = wait_until("two static workers run", T, || {
        let p = worker_pids(&mut c, "bgworker_rs");
        (p.len() == 2).then_some(p)
    });
    cluster.wait_for_log("bgworker_rs worker 1 initialized with schema1.counted", T);
    cluster.wait_for_log("bgworker_rs worker 2 initialized with schema2.counted", T);

    // Connected to bgworker_rs.database as the bootstrap superuser.
    let rows = c
        .query(
            "SELECT datname::text, usename::text FROM pg_stat_activity WHERE backend_type = 'bgworker_rs'",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r.get::<_, String>(0), "postgres");
        assert_eq!(r.get::<_, String>(1), "postgres");
    }

    // worker_spi's table: CHECK constraint and unique partial index on 'total'.
    wait_until("schema1.counted exists", T, || {
        table_exists(&mut c, 1).then_some(())
    });
    let (code, ..) = expect_error(&mut c, "INSERT INTO schema1.counted VALUES ('bogus', 1)");
    assert_eq!(code, "23514");
    c.batch_execute("INSERT INTO schema1.counted VALUES ('total', 10)")
        .unwrap();
    let (code, ..) = expect_error(&mut c, "INSERT INTO schema1.counted VALUES ('total', 1)");
    assert_eq!(code, "23505");

    c.batch_execute(
        "INSERT INTO schema1.counted VALUES ('delta', 5), ('delta', -2), ('delta', 30)",
    )
    .unwrap();
    wait_until("deltas folded into the total", T, || {
        (total(&mut c, 1) == Some(43)).then_some(())
    });
    assert_eq!(delta_count(&mut c, 1), 0);
    cluster.wait_for_log(
        "bgworker_rs worker 1: count in schema1.counted is now 43",
        T,
    );
    assert!(
        pids.iter().all(|&p| pid_alive(&mut c, p)),
        "workers must keep running"
    );
}

#[test]
fn total_workers_and_zero_workers() {
    let cluster = Cluster::start(&["bgworker_rs.total_workers = 3"]);
    let mut c = cluster.connect();
    wait_until("three static workers", T, || {
        (worker_pids(&mut c, "bgworker_rs").len() == 3).then_some(())
    });
    cluster.wait_for_log("bgworker_rs worker 3 initialized with schema3.counted", T);
    drop(c);
    drop(cluster);

    let cluster = Cluster::start(&["bgworker_rs.total_workers = 0"]);
    let mut c = cluster.connect();
    let show: String = c
        .query_one("SHOW bgworker_rs.total_workers", &[])
        .unwrap()
        .get(0);
    assert_eq!(show, "0");
    // Static workers would be registered before the server accepts
    // connections, so by now they would have been started.
    let dynamic_pid: i32 = {
        c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
        c.query_one("SELECT bgw_launch(9)", &[]).unwrap().get(0)
    };
    cluster.wait_for_log("bgworker_rs dynamic worker 9 initialized", T);
    wait_until("dynamic worker attached", T, || {
        pid_alive(&mut c, dynamic_pid).then_some(())
    });
    assert!(worker_pids(&mut c, "bgworker_rs").is_empty());
}

/// Terminated or crashed, a static worker comes back after restart_time, and
/// a crash of another backend (crash recovery) does not lose them.
#[test]
fn static_workers_come_back_after_terminate_and_crash() {
    let cluster = Cluster::start(&["bgworker_rs.restart_time = 1"]);
    let mut c = cluster.connect();
    let before = wait_until("two workers", T, || {
        let p = worker_pids(&mut c, "bgworker_rs");
        (p.len() == 2).then_some(p)
    });

    // SIGTERM: exits (FATAL, code 1) and is restarted.
    let victim = before[0];
    let ok: bool = c
        .query_one("SELECT pg_terminate_backend($1)", &[&victim])
        .unwrap()
        .get(0);
    assert!(ok);
    cluster.wait_for_log(
        "terminating background worker \"bgworker_rs\" due to administrator command",
        T,
    );
    let after_term = wait_until("worker replaced after terminate", T, || {
        let p = worker_pids(&mut c, "bgworker_rs");
        (p.len() == 2 && !p.contains(&victim)).then_some(p)
    });

    // SIGKILL: the postmaster reinitializes; static workers come back.
    let status = std::process::Command::new("kill")
        .args(["-9", &after_term[0].to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    cluster.wait_for_log("all server processes terminated; reinitializing", T);
    let mut c = wait_until("server accepts connections again", T, || {
        cluster.try_connect_as("postgres", "postgres").ok()
    });
    let after_crash = wait_until(
        "both workers back after crash recovery",
        Duration::from_secs(30),
        || {
            let p = worker_pids(&mut c, "bgworker_rs");
            (p.len() == 2 && p.iter().all(|x| !after_term.contains(x))).then_some(p)
        },
    );
    assert_eq!(after_crash.len(), 2);
}

#[test]
fn restart_time_minus_one_means_never() {
    let cluster = Cluster::start(&[
        "bgworker_rs.restart_time = -1",
        "bgworker_rs.total_workers = 1",
    ]);
    let mut c = cluster.connect();
    let pid = wait_until("one worker", T, || {
        worker_pids(&mut c, "bgworker_rs").first().copied()
    });
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    cluster.wait_for_log("exited with exit code 1", T);
    // A restart would need at least the postmaster's next loop; give a
    // restartable worker (restart_time 0) ample time to show the difference.
    let back = poll(Duration::from_secs(3), || {
        worker_pids(&mut c, "bgworker_rs").first().copied()
    });
    assert_eq!(back, None, "a never-restart worker came back");
}

/// bgworker_rs.database and bgworker_rs.role choose where static workers
/// connect; until the database exists they fail and are retried.
#[test]
fn database_and_role_gucs() {
    let cluster = Cluster::start(&[
        "bgworker_rs.database = 'workdb'",
        "bgworker_rs.role = 'workrole'",
        "bgworker_rs.restart_time = 1",
        "bgworker_rs.total_workers = 1",
    ]);
    cluster.wait_for_log("role \"workrole\" does not exist", T);
    let mut c = cluster.connect();
    c.batch_execute("CREATE ROLE workrole LOGIN").unwrap();
    c.batch_execute("CREATE DATABASE workdb OWNER workrole")
        .unwrap();
    let (db, user) = wait_until("worker connected to workdb as workrole", T, || {
        c.query_opt(
            "SELECT datname::text, usename::text FROM pg_stat_activity WHERE backend_type = 'bgworker_rs' AND datname IS NOT NULL",
            &[],
        )
        .unwrap()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
    });
    assert_eq!((db.as_str(), user.as_str()), ("workdb", "workrole"));
    let mut w = cluster.connect_as("postgres", "workdb");
    wait_until("schema1 created in workdb", T, || {
        table_exists(&mut w, 1).then_some(())
    });
    let owner: String = w
        .query_one(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'schema1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "workrole");
}

/// SIGHUP: the worker rereads the configuration; a new naptime applies.
#[test]
fn sighup_reloads_naptime() {
    let cluster = Cluster::start(&[
        "bgworker_rs.naptime = '1h'",
        "bgworker_rs.total_workers = 1",
    ]);
    let mut c = cluster.connect();
    cluster.wait_for_log("bgworker_rs worker 1 initialized", T);
    wait_until("schema1.counted exists", T, || {
        table_exists(&mut c, 1).then_some(())
    });
    c.batch_execute("INSERT INTO schema1.counted VALUES ('total', 0), ('delta', 1)")
        .unwrap();

    c.batch_execute("ALTER SYSTEM SET bgworker_rs.naptime = '50ms'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("reload wakes the worker and it folds", T, || {
        (total(&mut c, 1) == Some(1)).then_some(())
    });
    // With naptime still at 1h the next fold would be an hour away.
    c.batch_execute("INSERT INTO schema1.counted VALUES ('delta', 2)")
        .unwrap();
    wait_until(
        "next fold within the new naptime",
        Duration::from_secs(5),
        || (total(&mut c, 1) == Some(3)).then_some(()),
    );
}

#[test]
fn gucs_are_validated_and_prefix_is_reserved() {
    let cluster = Cluster::start(&[]);
    let mut c = cluster.connect();
    let show = |c: &mut postgres::Client, g: &str| -> String {
        c.query_one(&format!("SHOW {g}"), &[]).unwrap().get(0)
    };
    assert_eq!(show(&mut c, "bgworker_rs.total_workers"), "2");
    assert_eq!(show(&mut c, "bgworker_rs.restart_time"), "5s");
    assert_eq!(show(&mut c, "bgworker_rs.database"), "postgres");
    assert_eq!(show(&mut c, "bgworker_rs.role"), "");

    let (code, msg, ..) = expect_error(&mut c, "ALTER SYSTEM SET bgworker_rs.naptime = -1");
    assert_eq!(code, "22023");
    assert!(msg.contains("-1 ms is outside the valid range"), "{msg}");
    let (code, msg, ..) = expect_error(&mut c, "SET bgworker_rs.naptime = 5");
    assert_eq!(code, "55P02", "{msg}"); // SIGHUP: cannot be changed now
    let (code, msg, ..) = expect_error(&mut c, "ALTER SYSTEM SET bgworker_rs.total_workers = 101");
    assert_eq!(code, "22023");
    assert!(msg.contains("101 is outside the valid range"), "{msg}");
    let (code, msg, ..) = expect_error(
        &mut c,
        "ALTER SYSTEM SET bgworker_rs.restart_time = 2147484",
    );
    assert_eq!(code, "22023");
    assert!(msg.contains("outside the valid range"), "{msg}");
    let (code, msg, ..) = expect_error(&mut c, "SET bgworker_rs.no_such_setting = 1");
    assert_eq!(code, "42602", "{msg}");
    assert!(
        msg.contains("invalid configuration parameter name"),
        "{msg}"
    );
}

/// Values out of range in postgresql.conf: PostgreSQL applies the values of
/// a library's settings when the library defines them, and for a bad one it
/// logs a WARNING naming the value and the range and keeps the default. The
/// server starts; unknown names under the reserved prefix are dropped.
#[test]
fn out_of_range_settings_in_config_warn_and_keep_defaults() {
    let cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 500",
        "bgworker_rs.naptime = -5",
        "bgworker_rs.restart_time = 99999999",
        "bgworker_rs.max_jobs = 5000", // overrides the harness's 0, then is refused
        "bgworker_rs.bogus = 1",
    ]);
    let log = cluster.log();
    for w in [
        "WARNING:  500 is outside the valid range for parameter \"bgworker_rs.total_workers\" (0 .. 100)",
        "WARNING:  -5 ms is outside the valid range for parameter \"bgworker_rs.naptime\"", // PostgreSQL 18 adds units to the range
        "WARNING:  99999999 s is outside the valid range for parameter \"bgworker_rs.restart_time\"",
        "WARNING:  5000 is outside the valid range for parameter \"bgworker_rs.max_jobs\" (0 .. 1024)",
        "WARNING:  invalid configuration parameter name \"bgworker_rs.bogus\", removing it",
    ] {
        assert!(log.contains(w), "missing {w:?} in log:\n{log}");
    }
    let mut c = cluster.connect();
    let settings: Vec<(String, String)> = c
        .query(
            "SELECT name, setting FROM pg_settings WHERE name LIKE 'bgworker_rs.%' \
             AND name NOT LIKE 'bgworker\\_rs.debug\\_%' ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expect = [
        ("database", "postgres"),
        ("history_max_age", "2592000"),
        ("history_max_runs", "1000"),
        ("job_worker_idle_time", "10000"),
        ("launch_timeout", "30000"),
        ("max_jobs", "8"),
        ("monitor", "off"),
        ("naptime", "10000"),
        ("queue_timeout", "60000"),
        ("restart_time", "5"),
        ("role", ""),
        ("total_workers", "2"),
    ]
    .map(|(n, v)| (format!("bgworker_rs.{n}"), v.to_string()));
    assert_eq!(settings, expect);
    wait_until("the default two workers run", T, || {
        (worker_pids(&mut c, "bgworker_rs").len() == 2).then_some(())
    });
}
