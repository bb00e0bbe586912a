//! Load: no lost deltas under concurrent writers, slot churn, exhaustion.
//! Every loop is bounded in count and time; all traffic goes over the
//! cluster's unix socket.

mod common;

use common::*;
use postgres::Client;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

/// 4 writer sessions insert 5,000 deltas of 1 each while 2 workers with
/// naptime 0 fold them: the totals end at exactly 20,000, no delta left.
#[test]
fn no_lost_deltas_under_concurrent_writers() {
    const WRITERS: i64 = 4;
    const ROWS: i64 = 5_000;
    const BATCH: i64 = 50;
    let cluster = Cluster::start(&["bgworker_rs.total_workers = 2", "bgworker_rs.naptime = 0"]);
    let mut c = cluster.connect();
    for i in 1..=2 {
        wait_until("table exists", T, || table_exists(&mut c, i).then_some(()));
        c.batch_execute(&format!(
            "INSERT INTO schema{i}.counted VALUES ('total', 0)"
        ))
        .unwrap();
    }
    let started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut s = cluster.connect();
            let schema = format!("schema{}", w % 2 + 1);
            std::thread::spawn(move || {
                let sql = format!("INSERT INTO {schema}.counted SELECT 'delta', 1 FROM generate_series(1, {BATCH})");
                for _ in 0..ROWS / BATCH {
                    s.batch_execute(&sql).expect("insert deltas");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let inserted = WRITERS * ROWS;
    wait_until("every delta folded", T, || {
        let total = scalar_i64(
            &mut c,
            "SELECT (SELECT value::int8 FROM schema1.counted WHERE type = 'total') + \
                                          (SELECT value FROM schema2.counted WHERE type = 'total')",
        );
        (total == inserted).then_some(())
    });
    for i in 1..=2 {
        assert_eq!(delta_count(&mut c, i), 0);
    }
    println!(
        "{inserted} deltas inserted and folded in {:?}",
        started.elapsed()
    );
}

/// Launches until the first 53000; returns how many succeeded.
fn fill_slots(c: &mut Client, first_index: i32) -> i32 {
    let mut n = 0;
    loop {
        match c.query_one("SELECT bgw_launch($1)", &[&(first_index + n)]) {
            Ok(_) => n += 1,
            Err(e) => {
                let db = e.as_db_error().expect("server error");
                assert_eq!(db.code().code(), "53000", "{db:?}");
                assert_eq!(
                    db.hint(),
                    Some("You may need to increase max_worker_processes.")
                );
                return n;
            }
        }
        assert!(n <= 64, "more workers than max_worker_processes");
    }
}

fn terminate_all(c: &mut Client) {
    c.batch_execute(
        "SELECT bgw_terminate(pid) FROM bgw_list() WHERE pid IS NOT NULL AND kind = 'dynamic'",
    )
    .unwrap();
}

/// Exhaustion: every launch past the last slot fails with 53000 and a hint;
/// free one slot and a launch works again. Then 1,000 launch/terminate
/// cycles from 4 sessions, after which the same number of slots is free,
/// bgw_list holds no stale entry, and the log has no unexpected ERROR.
#[test]
fn exhaustion_and_slot_churn() {
    const SESSIONS: i32 = 4;
    const CYCLES: i32 = 250; // per session: 1,000 in all
    let cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 0",
        "max_worker_processes = 16",
        "max_logical_replication_workers = 0",
        "bgworker_rs.naptime = '1s'",
    ]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs; SET max_parallel_workers_per_gather = 0")
        .unwrap();

    let free_before = fill_slots(&mut c, 1000);
    assert_eq!(free_before, 16);
    for _ in 0..3 {
        let (code, ..) = expect_error(&mut c, "SELECT bgw_launch(999)");
        assert_eq!(code, "53000");
    }
    let one: i32 = c
        .query_one("SELECT pid FROM bgw_list() WHERE index = 1000", &[])
        .unwrap()
        .get(0);
    assert!(
        c.query_one("SELECT bgw_terminate($1)", &[&one])
            .unwrap()
            .get::<_, bool>(0)
    );
    c.query_one("SELECT bgw_launch(999)", &[])
        .expect("a freed slot can be used again");
    terminate_all(&mut c);

    let started = Instant::now();
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let mut w = cluster.connect();
            std::thread::spawn(move || {
                let index = 2000 + s;
                for _ in 0..CYCLES {
                    let pid: i32 = w
                        .query_one("SELECT bgw_launch($1)", &[&index])
                        .expect("launch")
                        .get(0);
                    let ok: bool = w
                        .query_one("SELECT bgw_terminate($1)", &[&pid])
                        .expect("terminate")
                        .get(0);
                    assert!(ok, "terminate {pid}");
                }
            })
        })
        .collect();
    for s in sessions {
        s.join().expect("session");
    }
    let cycles = SESSIONS * CYCLES;
    println!(
        "{cycles} launch/terminate cycles in {:?}",
        started.elapsed()
    );

    let active = scalar_i64(
        &mut c,
        "SELECT count(*) FROM bgw_list() WHERE state IN ('starting', 'running', 'stopping') OR pid IS NOT NULL",
    );
    assert_eq!(active, 0, "stale entries: {:?}", bgw_list(&mut c));
    assert!(worker_pids(&mut c, "bgworker_rs dynamic").is_empty());
    let free_after = fill_slots(&mut c, 3000);
    assert_eq!(free_after, free_before, "slots leaked");
    terminate_all(&mut c);

    // The only ERRORs are the 53000s this test provoked.
    let log = cluster.log();
    let unexpected: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR:") && !l.contains("could not register background worker"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "unexpected errors:\n{}",
        unexpected.join("\n")
    );
}
