//! Dynamic workers started with bgw_launch(), over real client connections.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

/// Runs a launching query and waits until the worker is attached: bgw_launch
/// returns once the postmaster has started it, a moment before that.
fn launch(c: &mut postgres::Client, sql: &str) -> i32 {
    let pid = c
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0);
    wait_until("the launched worker is attached", T, || {
        pid_alive(c, pid).then_some(())
    });
    pid
}

#[test]
fn launch_returns_pid_of_a_running_worker_that_folds() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    let pid = launch(&mut c, "SELECT bgw_launch(7)");
    assert!(pid > 0);
    let (btype, db, user): (String, String, String) = {
        let r = c
            .query_one(
                "SELECT backend_type, datname::text, usename::text FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(btype, "bgworker_rs dynamic");
    assert_eq!(
        (db.as_str(), user.as_str()),
        ("postgres", "postgres"),
        "defaults: caller's database and user"
    );

    cluster.wait_for_log(
        "bgworker_rs dynamic worker 7 initialized with schema7.counted",
        T,
    );
    wait_until("schema7.counted exists", T, || {
        table_exists(&mut c, 7).then_some(())
    });
    c.batch_execute(
        "INSERT INTO schema7.counted VALUES ('total', 100), ('delta', 1), ('delta', 2)",
    )
    .unwrap();
    wait_until("folded", T, || {
        (total(&mut c, 7) == Some(103)).then_some(())
    });
    cluster.wait_for_log(
        "bgworker_rs dynamic worker 7: count in schema7.counted is now 103",
        T,
    );
}

#[test]
fn launch_connects_to_named_database_as_named_role() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    c.batch_execute("CREATE ROLE r2 LOGIN").unwrap();
    c.batch_execute("CREATE DATABASE d2 OWNER r2").unwrap();
    let pid = launch(&mut c, "SELECT bgw_launch(3, 'd2', 'r2')");
    let r = c
        .query_one(
            "SELECT datname::text, usename::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, String>(0), r.get::<_, String>(1)),
        ("d2".into(), "r2".into())
    );
    let mut d2 = cluster.connect_as("postgres", "d2");
    wait_until("schema3 in d2", T, || {
        table_exists(&mut d2, 3).then_some(())
    });
    assert!(
        !table_exists(&mut c, 3),
        "the table belongs in d2, not in postgres"
    );
}

#[test]
fn dynamic_workers_are_never_restarted() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    let pid = launch(&mut c, "SELECT bgw_launch(4)");
    cluster.wait_for_log("bgworker_rs dynamic worker 4 initialized", T);
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    cluster.wait_for_log(
        "terminating background worker \"bgworker_rs dynamic\" due to administrator command",
        T,
    );
    wait_until("worker gone", T, || (!pid_alive(&mut c, pid)).then_some(()));
    let back = poll(Duration::from_secs(3), || {
        worker_pids(&mut c, "bgworker_rs dynamic").first().copied()
    });
    assert_eq!(back, None, "a dynamic worker was restarted");
    // The slot is free again: the same index launches anew.
    let again = launch(&mut c, "SELECT bgw_launch(4)");
    assert_ne!(again, pid);
}

/// SIGTERM while the fold statement runs: the worker exits promptly and its
/// transaction is rolled back, so no delta is lost.
#[test]
fn sigterm_interrupts_a_running_statement_and_rolls_back() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    let pid = launch(&mut c, "SELECT bgw_launch(5)");
    wait_until("schema5.counted exists", T, || {
        table_exists(&mut c, 5).then_some(())
    });
    // Every deleted delta sleeps in a trigger: the fold is slow mid-statement.
    c.batch_execute(
        "CREATE FUNCTION slow_delete() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_sleep(60); RETURN OLD; END $$;
         CREATE TRIGGER slow BEFORE DELETE ON schema5.counted FOR EACH ROW EXECUTE FUNCTION slow_delete();
         INSERT INTO schema5.counted VALUES ('total', 0), ('delta', 1), ('delta', 2);",
    )
    .unwrap();
    wait_until("worker is inside the fold statement", T, || {
        let r = c
            .query_one(
                "SELECT state, coalesce(query, '') FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap();
        let (state, query): (String, String) = (r.get(0), r.get(1));
        (state == "active" && query.starts_with("WITH deleted AS (DELETE FROM schema5.counted"))
            .then_some(())
    });
    let started = std::time::Instant::now();
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    wait_until("worker exits", T, || {
        (!pid_alive(&mut c, pid)).then_some(())
    });
    // The statement would sleep 60 s; the bound for the exit is 2 s.
    let took = started.elapsed();
    println!("worker exited {took:?} after SIGTERM, mid-statement");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert_eq!(
        delta_count(&mut c, 5),
        2,
        "the aborted fold must not have deleted deltas"
    );
    assert_eq!(total(&mut c, 5), Some(0));
    cluster.wait_for_log("terminating background worker \"bgworker_rs dynamic\"", T);
}

#[test]
fn allowconn_flag_reaches_a_database_that_refuses_connections() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    c.batch_execute("CREATE DATABASE noconndb").unwrap();
    c.batch_execute("ALTER DATABASE noconndb ALLOW_CONNECTIONS false")
        .unwrap();

    // Without the flag PostgreSQL refuses the worker's connection, and
    // bgw_launch reports the worker's own error.
    let (code, msg, detail, _) = expect_error(&mut c, "SELECT bgw_launch(1, 'noconndb')");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "55000",
            "database \"noconndb\" is not currently accepting connections"
        )
    );
    assert_eq!(
        detail.as_deref(),
        Some("Reported by background worker \"bgworker_rs dynamic worker 1\" while starting.")
    );
    cluster.wait_for_log(
        "database \"noconndb\" is not currently accepting connections",
        T,
    );

    let pid = launch(
        &mut c,
        "SELECT bgw_launch(2, 'noconndb', flags => '{ALLOWCONN}')",
    );
    cluster.wait_for_log(
        "bgworker_rs dynamic worker 2 initialized with schema2.counted",
        T,
    );
    let db: String = c
        .query_one(
            "SELECT datname::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(db, "noconndb");
}

#[test]
fn out_of_slots_is_53000_with_hint() {
    // No logical replication launcher: every slot is ours to fill.
    let (_cluster, mut c) = start_with_extension(&[
        "bgworker_rs.total_workers = 0",
        "max_worker_processes = 3",
        "max_logical_replication_workers = 0",
    ]);
    // Parallel query may take slots too; this session runs none.
    c.batch_execute("SET max_parallel_workers_per_gather = 0")
        .unwrap();
    let mut launched = 0;
    loop {
        match c.query_one("SELECT bgw_launch($1)", &[&(launched + 1)]) {
            Ok(_) => launched += 1,
            Err(e) => {
                let db = e.as_db_error().expect("server error");
                assert_eq!(db.code().code(), "53000", "{db:?}");
                assert_eq!(
                    db.message(),
                    format!(
                        "could not register background worker \"bgworker_rs dynamic worker {}\"",
                        launched + 1
                    )
                );
                assert_eq!(
                    db.hint(),
                    Some("You may need to increase max_worker_processes.")
                );
                assert!(
                    db.detail()
                        .unwrap_or("")
                        .contains("max_worker_processes = 3"),
                    "{db:?}"
                );
                break;
            }
        }
        assert!(
            launched <= 3,
            "launched more workers than max_worker_processes"
        );
    }
    assert_eq!(launched, 3);
}

#[test]
fn permissions() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    c.batch_execute(
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN;
         GRANT CREATE ON DATABASE postgres TO alice, bob;
         GRANT bob TO carol;",
    )
    .unwrap();
    c.batch_execute("CREATE DATABASE closeddb").unwrap();
    c.batch_execute("REVOKE CONNECT ON DATABASE closeddb FROM PUBLIC")
        .unwrap();

    // Not executable by PUBLIC.
    let mut alice = cluster.connect_as("alice", "postgres");
    let (code, msg, ..) = expect_error(&mut alice, "SELECT bgw_launch(1)");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("42501", "permission denied for function bgw_launch")
    );

    c.batch_execute(
        "GRANT EXECUTE ON FUNCTION bgw_launch(int4, name, name, text[], interval) TO alice, carol",
    )
    .unwrap();

    // Another role's identity: refused.
    let (code, msg, detail, _) = expect_error(&mut alice, "SELECT bgw_launch(1, NULL, 'postgres')");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "42501",
            "permission denied to launch a worker as role \"postgres\""
        )
    );
    assert!(
        detail
            .unwrap_or_default()
            .contains("may SET ROLE to \"postgres\"")
    );
    let (code, msg, ..) = expect_error(&mut alice, "SELECT bgw_launch(1, NULL, 'bob')");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "42501",
            "permission denied to launch a worker as role \"bob\""
        )
    );

    // A database without CONNECT: refused.
    let (code, msg, ..) = expect_error(&mut alice, "SELECT bgw_launch(1, 'closeddb')");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "42501",
            "permission denied to launch a worker in database \"closeddb\""
        )
    );

    // ALLOWCONN: superusers only.
    let (code, msg, ..) = expect_error(&mut alice, "SELECT bgw_launch(1, flags => '{ALLOWCONN}')");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("42501", "permission denied to use flag \"ALLOWCONN\"")
    );
    assert!(
        worker_pids(&mut c, "bgworker_rs dynamic").is_empty(),
        "no refused launch may start a worker"
    );

    // As herself, in a database she may connect to: allowed.
    let pid = launch(&mut alice, "SELECT bgw_launch(11)");
    let user: String = c
        .query_one(
            "SELECT usename::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(user, "alice");
    cluster.wait_for_log("bgworker_rs dynamic worker 11 initialized", T);

    // Membership with inherited privileges is enough: carol may run as bob.
    let mut carol = cluster.connect_as("carol", "postgres");
    let pid = launch(&mut carol, "SELECT bgw_launch(12, NULL, 'bob')");
    let user: String = c
        .query_one(
            "SELECT usename::text FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    assert_eq!(user, "bob");
}

/// The registry lives in shared memory, so it needs preloading.
#[test]
fn launch_requires_preloading() {
    let cluster = Cluster::start_without_preload(&[]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    for sql in [
        "SELECT bgw_launch(1)",
        "SELECT * FROM bgw_list()",
        "SELECT bgw_terminate(1)",
        "SELECT bgw_wait(1)",
    ] {
        let (code, msg, _, hint) = expect_error(&mut c, sql);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            (
                "55000",
                "bgworker_rs must be loaded via shared_preload_libraries"
            ),
            "{sql}"
        );
        assert_eq!(
            hint.as_deref(),
            Some("Add bgworker_rs to shared_preload_libraries and restart the server.")
        );
    }
    assert!(worker_pids(&mut c, "bgworker_rs dynamic").is_empty());
}
