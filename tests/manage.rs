//! Managing workers from any session: the shared-memory registry behind
//! bgw_list, bgw_terminate and bgw_wait, and a launch that reports failure.

mod common;

use common::*;
use postgres::Client;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn launch(c: &mut Client, sql: &str) -> i32 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    index: i32,
    pid: Option<i32>,
    kind: String,
    database: Option<String>,
    role: Option<String>,
    state: String,
    restarts: i32,
    iterations: i64,
    last_error: Option<String>,
}

fn list(c: &mut Client) -> Vec<Row> {
    c.query(
        "SELECT index, pid, kind, database::text, role::text, state, restarts, iterations, last_error \
         FROM bgw_list() ORDER BY kind, index",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| Row {
        index: r.get(0),
        pid: r.get(1),
        kind: r.get(2),
        database: r.get(3),
        role: r.get(4),
        state: r.get(5),
        restarts: r.get(6),
        iterations: r.get(7),
        last_error: r.get(8),
    })
    .collect()
}

fn row(c: &mut Client, kind: &str, index: i32) -> Option<Row> {
    list(c)
        .into_iter()
        .find(|r| r.kind == kind && r.index == index)
}

/// Launched in session A, which then goes away; listed, waited for and
/// terminated from sessions B and C.
#[test]
fn manage_from_other_sessions() {
    let (cluster, mut a) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    let p3 = launch(&mut a, "SELECT bgw_launch(3)");
    let p4 = launch(&mut a, "SELECT bgw_launch(4)");
    // bgw_launch returns once the worker is connected and initialized.
    assert!(table_exists(&mut a, 3) && table_exists(&mut a, 4));
    drop(a);

    let mut b = cluster.connect();
    let rows = list(&mut b);
    assert_eq!(rows.len(), 2, "{rows:?}");
    for (r, pid) in rows.iter().zip([p3, p4]) {
        assert_eq!(
            (r.pid, r.kind.as_str(), r.state.as_str()),
            (Some(pid), "dynamic", "running")
        );
        assert_eq!(
            (r.database.as_deref(), r.role.as_deref()),
            (Some("postgres"), Some("postgres"))
        );
        assert_eq!(r.restarts, 0);
    }
    wait_until("iterations are counted", T, || {
        (row(&mut b, "dynamic", 3)?.iterations >= 2).then_some(())
    });

    // bgw_wait with a timeout on a running worker: false.
    let waited: bool = b
        .query_one("SELECT bgw_wait($1, '50 ms')", &[&p3])
        .unwrap()
        .get(0);
    assert!(!waited);

    // bgw_wait in B is woken when C stops the worker.
    let waiter = {
        let mut b2 = cluster.connect();
        std::thread::spawn(move || {
            b2.query_one("SELECT bgw_wait($1, '60 s')", &[&p4])
                .map(|r| r.get::<_, bool>(0))
        })
    };
    wait_until("B is waiting", T, || {
        let n: i64 = b
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT bgw_wait(%' AND state = 'active'", &[])
            .unwrap()
            .get(0);
        (n == 1).then_some(())
    });
    let mut c = cluster.connect();
    let stopped: bool = c
        .query_one("SELECT bgw_terminate($1)", &[&p4])
        .unwrap()
        .get(0);
    assert!(stopped);
    assert!(
        !pid_alive(&mut c, p4),
        "bgw_terminate returns after the worker has exited"
    );
    assert!(waiter.join().unwrap().unwrap(), "bgw_wait saw the exit");

    let r4 = row(&mut c, "dynamic", 4).unwrap();
    assert_eq!(
        (r4.pid, r4.state.as_str(), r4.last_error),
        (None, "stopped", None)
    );
    // A dynamic worker stopped by bgw_terminate is not restarted.
    let back = poll(Duration::from_secs(2), || {
        worker_pids(&mut c, "bgworker_rs dynamic")
            .into_iter()
            .find(|&p| p != p3)
    });
    assert_eq!(back, None);

    // Already gone: wait says true at once, terminate says false.
    let waited: bool = c.query_one("SELECT bgw_wait($1)", &[&p4]).unwrap().get(0);
    assert!(waited);
    let again: bool = c
        .query_one("SELECT bgw_terminate($1)", &[&p4])
        .unwrap()
        .get(0);
    assert!(!again);
    // Not one of ours.
    let ours: bool = c
        .query_one("SELECT bgw_terminate(pg_backend_pid())", &[])
        .unwrap()
        .get(0);
    assert!(!ours);
    // The other worker was untouched.
    assert_eq!(row(&mut c, "dynamic", 3).unwrap().state, "running");
}

/// bgw_terminate on a static worker sends SIGTERM; its restart policy brings
/// it back, and bgw_list counts the restart.
#[test]
fn terminate_static_worker_and_count_restart() {
    let (_cluster, mut c) = start_with_extension(&[
        "bgworker_rs.total_workers = 1",
        "bgworker_rs.restart_time = 1",
    ]);
    let first = wait_until("static worker running", T, || {
        row(&mut c, "static", 1)
            .filter(|r| r.state == "running")
            .and_then(|r| r.pid)
    });
    let ok: bool = c
        .query_one("SELECT bgw_terminate($1)", &[&first])
        .unwrap()
        .get(0);
    assert!(ok);
    let r = wait_until("static worker back", T, || {
        row(&mut c, "static", 1)
            .filter(|r| r.state == "running" && r.pid.is_some() && r.pid != Some(first))
    });
    assert_eq!(r.restarts, 1);
    assert_eq!(r.last_error, None, "a SIGTERM is a stop, not a failure");
}

/// restart_after: the worker's query fails when its table is dropped, it
/// exits with the error, and the postmaster brings it back; the new process
/// recreates the table.
#[test]
fn restart_after_brings_a_failed_worker_back() {
    let (_cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    let first = launch(&mut c, "SELECT bgw_launch(8, restart_after => '1 second')");
    c.batch_execute("DROP TABLE schema8.counted").unwrap();
    let r = wait_until("worker restarted", T, || {
        row(&mut c, "dynamic", 8).filter(|r| r.restarts >= 1 && r.state == "running")
    });
    assert_ne!(r.pid, Some(first));
    assert_eq!(
        r.last_error.as_deref(),
        Some("42P01: relation \"schema8.counted\" does not exist")
    );
    assert!(
        table_exists(&mut c, 8),
        "the restarted worker recreates its table"
    );
    c.batch_execute("INSERT INTO schema8.counted VALUES ('total', 1), ('delta', 2)")
        .unwrap();
    wait_until("it folds again", T, || {
        (total(&mut c, 8) == Some(3)).then_some(())
    });
}

/// Failures before the worker is ready come back from bgw_launch as the
/// worker's own SQLSTATE and message, and leave no worker behind.
#[test]
fn launch_reports_why_a_worker_failed() {
    let (_cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    c.batch_execute("CREATE ROLE nologin_role NOLOGIN").unwrap();
    c.batch_execute("CREATE DATABASE noconndb ALLOW_CONNECTIONS false")
        .unwrap();

    let (code, msg, detail, _) =
        expect_error(&mut c, "SELECT bgw_launch(1, role => 'nologin_role')");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        ("28000", "role \"nologin_role\" is not permitted to log in")
    );
    assert_eq!(
        detail.as_deref(),
        Some("Reported by background worker \"bgworker_rs dynamic worker 1\" while starting.")
    );

    // Also with restart_after: a worker that cannot start is not retried.
    let (code, msg, ..) = expect_error(
        &mut c,
        "SELECT bgw_launch(2, 'noconndb', restart_after => '1 second')",
    );
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "55000",
            "database \"noconndb\" is not currently accepting connections"
        )
    );

    let rows = list(&mut c);
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!((rows[0].state.as_str(), rows[0].pid), ("failed", None));
    assert_eq!(
        rows[0].last_error.as_deref(),
        Some("28000: role \"nologin_role\" is not permitted to log in")
    );
    assert_eq!(
        rows[1].last_error.as_deref(),
        Some("55000: database \"noconndb\" is not currently accepting connections")
    );
    assert!(worker_pids(&mut c, "bgworker_rs dynamic").is_empty());

    // A failed index can be launched again once the cause is gone.
    c.batch_execute(
        "ALTER ROLE nologin_role LOGIN; GRANT CREATE ON DATABASE postgres TO nologin_role",
    )
    .unwrap();
    launch(&mut c, "SELECT bgw_launch(1, role => 'nologin_role')");
    let r = row(&mut c, "dynamic", 1).unwrap();
    assert_eq!((r.state.as_str(), r.last_error), ("running", None));
}

#[test]
fn launch_times_out_with_a_clear_error() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    // An uncommitted schema5: the worker connects, finds no schema5, and
    // its CREATE SCHEMA waits for our transaction, so it cannot be ready.
    let mut holder = cluster.connect();
    holder
        .batch_execute("BEGIN; CREATE SCHEMA schema5")
        .unwrap();
    c.batch_execute("SET bgworker_rs.launch_timeout = '300ms'")
        .unwrap();
    let (code, msg, detail, hint) = expect_error(&mut c, "SELECT bgw_launch(5)");
    assert_eq!(code, "57014");
    assert_eq!(
        msg,
        "timed out after 300 ms waiting for background worker \"bgworker_rs dynamic worker 5\" to start"
    );
    assert_eq!(detail.as_deref(), Some("The worker was stopped."));
    assert!(
        hint.unwrap_or_default()
            .contains("bgworker_rs.launch_timeout")
    );
    wait_until("no worker left", T, || {
        worker_pids(&mut c, "bgworker_rs dynamic")
            .is_empty()
            .then_some(())
    });
    let r = row(&mut c, "dynamic", 5).unwrap();
    assert_eq!(r.state, "failed");
    assert!(
        r.last_error
            .unwrap_or_default()
            .starts_with("57014: timed out")
    );
}

#[test]
fn duplicate_index_names_the_running_pid() {
    let (_cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 1"]);
    let pid = launch(&mut c, "SELECT bgw_launch(10)");
    let (code, msg, detail, hint) = expect_error(&mut c, "SELECT bgw_launch(10)");
    assert_eq!(
        (code.as_str(), msg.as_str()),
        (
            "42710",
            "a bgworker_rs worker with index 10 is already running"
        )
    );
    assert_eq!(detail, Some(format!("Worker pid {pid} is running.")));
    assert_eq!(
        hint,
        Some(format!(
            "Stop it with bgw_terminate({pid}), or choose another index."
        ))
    );

    // Static worker 1 holds index 1.
    let static_pid = wait_until("static worker 1", T, || {
        row(&mut c, "static", 1).and_then(|r| r.pid)
    });
    let (code, _, detail, _) = expect_error(&mut c, "SELECT bgw_launch(1)");
    assert_eq!(code, "42710");
    assert_eq!(detail, Some(format!("Worker pid {static_pid} is running.")));
}

#[test]
fn management_permissions() {
    let (cluster, mut c) = start_with_extension(&["bgworker_rs.total_workers = 0"]);
    c.batch_execute(
        "CREATE ROLE alice LOGIN; CREATE ROLE mallory LOGIN; CREATE ROLE alice_admin LOGIN IN ROLE alice;
         GRANT CREATE ON DATABASE postgres TO alice;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO alice, mallory, alice_admin;",
    )
    .unwrap();
    let root_pid = launch(&mut c, "SELECT bgw_launch(1)");
    let mut alice = cluster.connect_as("alice", "postgres");
    let alice_pid = launch(&mut alice, "SELECT bgw_launch(2)");

    // Lists show only the workers one may manage.
    let seen = |cl: &mut Client| -> Vec<i32> { list(cl).iter().map(|r| r.index).collect() };
    assert_eq!(seen(&mut c), vec![1, 2]);
    assert_eq!(seen(&mut alice), vec![2]);
    let mut mallory = cluster.connect_as("mallory", "postgres");
    assert_eq!(seen(&mut mallory), Vec::<i32>::new());

    for (who, sql) in [
        ("alice", format!("SELECT bgw_terminate({root_pid})")),
        ("alice", format!("SELECT bgw_wait({root_pid}, '0')")),
        ("mallory", format!("SELECT bgw_terminate({alice_pid})")),
    ] {
        let client = if who == "alice" {
            &mut alice
        } else {
            &mut mallory
        };
        let (code, msg, ..) = expect_error(client, &sql);
        let pid = if sql.contains(&root_pid.to_string()) {
            root_pid
        } else {
            alice_pid
        };
        assert_eq!(
            (code.as_str(), msg),
            (
                "42501",
                format!("permission denied to manage bgworker_rs worker with pid {pid}")
            ),
            "{who}: {sql}"
        );
    }
    assert!(pid_alive(&mut c, root_pid) && pid_alive(&mut c, alice_pid));

    // A member of alice may stop alice's worker.
    let mut admin = cluster.connect_as("alice_admin", "postgres");
    let ok: bool = admin
        .query_one("SELECT bgw_terminate($1)", &[&alice_pid])
        .unwrap()
        .get(0);
    assert!(ok);
}

/// 50 launches and terminations from 5 sessions at once while a sixth lists:
/// every listing is consistent, and none is stale at the end.
#[test]
fn list_stays_consistent_under_concurrent_launches_and_terminations() {
    const SESSIONS: i32 = 5;
    const PER_SESSION: i32 = 10;
    let (cluster, mut c) = start_with_extension(&[
        "bgworker_rs.total_workers = 0",
        "max_worker_processes = 64",
        "bgworker_rs.naptime = '1s'",
    ]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let observer = {
        let mut o = cluster.connect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut listings = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = list(&mut o);
                let mut active: Vec<i32> = rows
                    .iter()
                    .filter(|r| ["starting", "running", "stopping"].contains(&r.state.as_str()))
                    .map(|r| r.index)
                    .collect();
                let n = active.len();
                active.sort();
                active.dedup();
                assert_eq!(active.len(), n, "an index listed twice as active: {rows:?}");
                for r in &rows {
                    // 'starting' may or may not have a pid yet.
                    match r.state.as_str() {
                        "running" | "stopping" => assert!(r.pid.is_some(), "{r:?}"),
                        "stopped" | "failed" => assert!(r.pid.is_none(), "{r:?}"),
                        "starting" => {}
                        other => panic!("unknown state {other}"),
                    }
                }
                listings += 1;
            }
            listings
        })
    };
    let workers: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let mut w = cluster.connect();
            std::thread::spawn(move || {
                let indexes: Vec<i32> = (1..=PER_SESSION).map(|i| 100 * (s + 1) + i).collect();
                let pids: Vec<i32> = indexes
                    .iter()
                    .map(|i| w.query_one("SELECT bgw_launch($1)", &[i]).unwrap().get(0))
                    .collect();
                for p in &pids {
                    let ok: bool = w
                        .query_one("SELECT bgw_terminate($1)", &[p])
                        .unwrap()
                        .get(0);
                    assert!(ok, "terminate {p}");
                }
                pids.len()
            })
        })
        .collect();
    let launched: usize = workers
        .into_iter()
        .map(|h| h.join().expect("session thread"))
        .sum();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let listings = observer.join().expect("observer thread");
    assert_eq!(launched, (SESSIONS * PER_SESSION) as usize);
    assert!(listings > 0);

    let rows = list(&mut c);
    assert_eq!(rows.len(), launched);
    assert!(
        rows.iter()
            .all(|r| r.state == "stopped" && r.pid.is_none() && r.last_error.is_none()),
        "{rows:?}"
    );
    assert!(worker_pids(&mut c, "bgworker_rs dynamic").is_empty());
}

/// One live worker per index: a static worker that restarts while a dynamic
/// worker holds its index exits with an error naming that worker, and comes
/// back on a later restart once the index is free.
#[test]
fn static_worker_yields_its_index_to_a_running_dynamic_one() {
    let (cluster, mut c) = start_with_extension(&[
        "bgworker_rs.total_workers = 1",
        "bgworker_rs.restart_time = 3",
    ]);
    let first = wait_until("static worker running", T, || {
        row(&mut c, "static", 1)
            .filter(|r| r.state == "running")
            .and_then(|r| r.pid)
    });
    assert!(
        c.query_one("SELECT bgw_terminate($1)", &[&first])
            .unwrap()
            .get::<_, bool>(0)
    );
    // Within its restart_time, index 1 is free for a dynamic worker.
    let dynamic = launch(&mut c, "SELECT bgw_launch(1)");
    cluster.wait_for_log(
        &format!("another bgworker_rs worker with index 1 is running (pid {dynamic})"),
        T,
    );
    assert_eq!(
        row(&mut c, "dynamic", 1).map(|r| r.state),
        Some("running".to_string())
    );

    assert!(
        c.query_one("SELECT bgw_terminate($1)", &[&dynamic])
            .unwrap()
            .get::<_, bool>(0)
    );
    wait_until("the static worker takes its index back", T, || {
        row(&mut c, "static", 1).filter(|r| r.state == "running" && r.pid != Some(first))
    });
}
