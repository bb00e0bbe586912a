//! Warm job workers (`bgworker_rs.job_worker_idle_time`): the next run for
//! the same database and role takes the idle worker of the last one, with
//! nothing of the last run left in its session; a role or database changed
//! meanwhile (demoted from superuser, made NOLOGIN, its CONNECT revoked)
//! never gets its old worker; a warm worker gives its job slot and worker
//! slot way to a run that needs them; a transaction that rolls back never
//! starts a run; a database with a warm worker can still be dropped,
//! renamed or copied.

mod common;

use common::jobs::{job, outcome, status};
use common::*;
use postgres::Client;
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

const BASE: &[&str] = &[
    "bgworker_rs.total_workers = 0",
    "bgworker_rs.max_jobs = 8",
    "max_parallel_workers_per_gather = 0",
    "log_min_messages = debug1",
];

fn cluster(extra: &[&str]) -> (Cluster, Client) {
    let conf: Vec<&str> = BASE.iter().chain(extra).copied().collect();
    start_with_extension(&conf)
}

/// The pid that ran `job`, from its outcome.
fn pid_of(r: &Value) -> i64 {
    r["pid"].as_i64().unwrap_or_else(|| panic!("no pid in {r}"))
}

/// Runs `sql` as a one-shot job and returns its outcome, which must be a
/// success.
fn succeeded(c: &mut Client, sql: &str) -> Value {
    let id = job(c, &format!("SELECT bgw_run($${sql}$$)"));
    let r = outcome(c, id);
    assert_eq!(status(&r), (Some("succeeded"), None), "{sql}: {r}");
    r
}

/// `n` job workers that are idle and warm (as `pg_stat_activity` shows).
fn wait_for_warm_workers(c: &mut Client, n: usize) {
    let found = poll(T, || {
        let workers = c
            .query(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'bgworker_rs job' \
                    AND state = 'idle' AND query = 'bgworker_rs: warm, waiting for a run'",
                &[],
            )
            .expect("pg_stat_activity")
            .len();
        (workers == n).then_some(())
    });
    if found.is_none() {
        let seen: Vec<String> = c
            .query(
                "SELECT format('%s %s %s %s', pid, backend_type, state, query) \
                   FROM pg_stat_activity WHERE backend_type LIKE 'bgworker_rs%'",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        panic!("expected {n} warm job worker(s); workers: {seen:?}");
    }
}

fn job_workers(c: &mut Client) -> Vec<i32> {
    worker_pids(c, "bgworker_rs job")
}

/// The attacker is still not a superuser, and a superuser's job still runs.
fn still_contained(c: &mut Client, attacker: &str) {
    let su: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
            &[&attacker],
        )
        .expect("pg_roles")
        .get(0);
    assert!(!su, "{attacker} became a superuser");
    let r = succeeded(c, "SELECT 42 AS answer");
    assert_eq!(r["result"][0]["answer"], 42, "{r}");
}

#[test]
fn the_next_run_takes_the_warm_worker_and_its_outcome_is_the_recorded_one() {
    let (_cluster, mut c) = cluster(&[]);
    let first = succeeded(&mut c, "SELECT pg_backend_pid() AS pid");
    let pid = pid_of(&first);
    let started: String = c
        .query_one(
            "SELECT backend_start::text FROM pg_stat_activity WHERE pid = $1",
            &[&(pid as i32)],
        )
        .expect("the worker is still there")
        .get(0);
    for _ in 0..5 {
        let id = job(&mut c, "SELECT bgw_run('SELECT pg_backend_pid() AS pid')");
        let r = outcome(&mut c, id);
        assert_eq!(pid_of(&r), pid, "a new process ran it: {r}");
        assert_eq!(r["result"][0]["pid"], pid, "{r}");
        // What bgw_result returned, maybe before the scheduler recorded
        // it, is what it recorded, to the microsecond.
        let recorded = common::jobs::finished_run(&mut c, id, 1);
        for key in [
            "status",
            "started_at",
            "finished_at",
            "pid",
            "rows",
            "result",
            "statements",
        ] {
            let (a, b) = (&r[key], &recorded[key]);
            let same = match (a.as_str(), b.as_str()) {
                // bgw_result's JSON and to_jsonb(row) spell times alike.
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            };
            assert!(same, "{key}: bgw_result {a}, recorded {b}");
        }
    }
    let again: String = c
        .query_one(
            "SELECT backend_start::text FROM pg_stat_activity WHERE pid = $1",
            &[&(pid as i32)],
        )
        .expect("the worker is still there")
        .get(0);
    assert_eq!(again, started, "the worker was restarted");
    // bgw_list counts the runs it served.
    let served: i64 = c
        .query_one(
            "SELECT iterations FROM bgw_list() WHERE kind = 'job' AND pid = $1",
            &[&(pid as i32)],
        )
        .expect("bgw_list shows the warm worker")
        .get(0);
    assert_eq!(served, 6);
}

#[test]
fn nothing_of_a_run_is_left_for_the_next() {
    let (_cluster, mut c) = cluster(&[]);
    c.batch_execute("CREATE ROLE other NOLOGIN; CREATE SCHEMA elsewhere")
        .unwrap();
    // Each statement on its own, as a client would leave them behind.
    let id = job(
        &mut c,
        "SELECT bgw_run($$
            SET work_mem = '77MB';
            SET search_path = elsewhere, public;
            SELECT set_config('myapp.flag', 'left over', false);
            CREATE TEMP TABLE left_over (x int);
            PREPARE left_over AS SELECT 1;
            DECLARE left_over CURSOR WITH HOLD FOR SELECT 1;
            SELECT pg_advisory_lock(4242);
            SET statement_timeout = '50ms';
            SET ROLE other;
            SELECT pg_backend_pid() AS pid$$, atomic => false)",
    );
    let first = outcome(&mut c, id);
    assert_eq!(status(&first), (Some("succeeded"), None), "{first}");
    let pid = pid_of(&first);
    let r = succeeded(
        &mut c,
        "SELECT pg_backend_pid() AS pid,
                current_setting('work_mem') AS work_mem,
                current_setting('search_path') AS search_path,
                coalesce(current_setting('myapp.flag', true), '') AS flag,
                to_regclass('pg_temp.left_over') IS NULL AS no_temp_table,
                (SELECT count(*) FROM pg_prepared_statements) AS prepared,
                (SELECT count(*) FROM pg_cursors) AS cursors,
                (SELECT count(*) FROM pg_listening_channels()) AS listening,
                (SELECT count(*) FROM pg_locks
                  WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
                current_setting('statement_timeout') AS statement_timeout,
                current_user::text AS current_user,
                session_user::text AS session_user,
                pg_sleep(0.2)::text AS slept",
    );
    let row = &r["result"][0];
    assert_eq!(pid_of(&r), pid, "not the warm worker: {r}");
    let expect = [
        ("work_mem", Value::from("4MB")),
        ("search_path", Value::from("\"$user\", public")),
        ("flag", Value::from("")),
        ("no_temp_table", Value::from(true)),
        ("prepared", Value::from(0)),
        ("cursors", Value::from(0)),
        ("listening", Value::from(0)),
        ("advisory_locks", Value::from(0)),
        ("statement_timeout", Value::from("0")),
        ("current_user", Value::from("postgres")),
        ("session_user", Value::from("postgres")),
    ];
    for (key, value) in expect {
        assert_eq!(row[key], value, "{key} was left over: {row}");
    }
    // The advisory lock is free for anyone.
    let got: bool = c
        .query_one("SELECT pg_try_advisory_lock(4242)", &[])
        .unwrap()
        .get(0);
    assert!(got, "the run's advisory lock was kept");
    // LISTEN cannot be left over: PostgreSQL refuses it in a background
    // worker (and a run that fails ends its worker).
    let id = job(&mut c, "SELECT bgw_run('LISTEN left_over')");
    let r = outcome(&mut c, id);
    assert_eq!(status(&r), (Some("failed"), Some("0A000")), "{r}");
}

#[test]
fn a_run_timeout_or_a_cancel_never_reaches_the_idle_worker() {
    let (_cluster, mut c) = cluster(&[]);
    // The run's own timer (300 ms) and the statement_timeout setting the
    // job set (100 ms) would both fire while the worker waits.
    let id = job(
        &mut c,
        "SELECT bgw_run('SET statement_timeout = ''100ms''; SELECT pg_backend_pid() AS pid', \
                        timeout => '300ms')",
    );
    let first = outcome(&mut c, id);
    assert_eq!(status(&first), (Some("succeeded"), None), "{first}");
    let pid = pid_of(&first) as i32;
    // Past both timers, the worker is still there and warm.
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        assert!(
            pid_alive(&mut c, pid),
            "the idle worker was ended by a timer"
        );
        poll(Duration::from_millis(50), || None::<()>);
    }
    let r = succeeded(&mut c, "SELECT pg_sleep(0.3)::text AS slept");
    assert_eq!(pid_of(&r) as i32, pid, "{r}");
}

#[test]
fn warm_workers_are_per_role_and_an_attacker_cannot_reach_the_next_role() {
    let (_cluster, mut c) = cluster(&[]);
    c.batch_execute(
        "CREATE ROLE attacker LOGIN NOSUPERUSER;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO attacker;
         GRANT SELECT ON bgw_jobs TO attacker;
         GRANT CREATE ON SCHEMA public TO attacker;
         GRANT TEMP ON DATABASE postgres TO attacker;
         GRANT CREATE ON DATABASE postgres TO attacker;",
    )
    .unwrap();
    let mut a = _cluster.connect_as("attacker", "postgres");
    // The attacker's run leaves all it can in its session: a search path
    // with its own schema and temporary objects first, a temporary
    // function named like a catalog one.
    let id = job(
        &mut a,
        "SELECT bgw_run($$
            CREATE SCHEMA IF NOT EXISTS evil;
            CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT ''2000-01-01''::timestamptz';
            CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS 'SELECT ''pwned''';
            SET search_path = pg_temp, evil, pg_catalog, public;
            SELECT pg_backend_pid() AS pid$$, atomic => false)",
    );
    let r = outcome(&mut a, id);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    let attackers = pid_of(&r);
    // A superuser's next run never takes the attacker's worker.
    let mine = succeeded(
        &mut c,
        "SELECT pg_backend_pid() AS pid, current_user::text AS who",
    );
    assert_ne!(
        pid_of(&mine),
        attackers,
        "the attacker's worker ran a superuser's job"
    );
    assert_eq!(mine["result"][0]["who"], "postgres");
    // The attacker's own next run: its traps are gone.
    let id = job(
        &mut a,
        "SELECT bgw_run('SELECT pg_backend_pid() AS pid, lower(''X'') AS l, \
                        now() > ''2001-01-01'' AS real_now, current_setting(''search_path'') AS sp')",
    );
    let r = outcome(&mut a, id);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(
        pid_of(&r),
        attackers,
        "the attacker's warm worker was not reused: {r}"
    );
    assert_eq!(r["result"][0]["l"], "x", "{r}");
    assert_eq!(r["result"][0]["real_now"], true, "{r}");
    assert_eq!(r["result"][0]["sp"], "\"$user\", public", "{r}");
    still_contained(&mut c, "attacker");
}

#[test]
fn a_warm_worker_gives_its_job_slot_way() {
    // Two job slots, both held by warm workers of other roles, which would
    // idle far longer than carol's run may wait for a slot.
    let (_cluster, mut c) = cluster(&[
        "bgworker_rs.max_jobs = 2",
        "bgworker_rs.job_worker_idle_time = '10min'",
        "bgworker_rs.queue_timeout = '20s'",
    ]);
    c.batch_execute("CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; CREATE ROLE carol LOGIN")
        .unwrap();
    for role in ["alice", "bob"] {
        let id = job(
            &mut c,
            &format!("SELECT bgw_run('SELECT 1', role => '{role}')"),
        );
        assert_eq!(status(&outcome(&mut c, id)), (Some("succeeded"), None));
    }
    wait_for_warm_workers(&mut c, 2);
    let warm = job_workers(&mut c);
    // Carol's run takes the slot of one of them (else it fails, 53000).
    let id = job(
        &mut c,
        "SELECT bgw_run('SELECT current_user::text AS who', role => 'carol')",
    );
    let r = outcome(&mut c, id);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"][0]["who"], "carol");
    assert!(!warm.contains(&(pid_of(&r) as i32)));
    wait_for_warm_workers(&mut c, 2);
}

#[test]
fn a_warm_worker_gives_its_worker_slot_way() {
    // max_worker_processes: the launcher, PostgreSQL's logical replication
    // launcher and the scheduler leave two worker slots for runs; job slots
    // are to spare. Each role's run needs a new worker, and the warm
    // workers of the roles before would idle far longer than a run may
    // wait (it would fail, 53000).
    let (_cluster, mut c) = cluster(&[
        "max_worker_processes = 5",
        "bgworker_rs.max_jobs = 6",
        "bgworker_rs.job_worker_idle_time = '10min'",
        "bgworker_rs.queue_timeout = '20s'",
    ]);
    let roles = ["alice", "bob", "carol", "dave"];
    for role in roles {
        c.batch_execute(&format!("CREATE ROLE {role} LOGIN"))
            .unwrap();
    }
    for role in roles {
        let id = job(
            &mut c,
            &format!("SELECT bgw_run('SELECT current_user::text AS who', role => '{role}')"),
        );
        let r = outcome(&mut c, id);
        assert_eq!(status(&r), (Some("succeeded"), None), "{role}: {r}");
        assert_eq!(r["result"][0]["who"], role);
    }
    assert!(job_workers(&mut c).len() <= 2);
}

#[test]
fn idle_workers_leave_after_the_idle_time_and_zero_turns_them_off() {
    let (cluster, mut c) = cluster(&["bgworker_rs.job_worker_idle_time = '300ms'"]);
    let pid = pid_of(&succeeded(&mut c, "SELECT 1")) as i32;
    wait_until("the idle worker to leave", T, || {
        (!pid_alive(&mut c, pid)).then_some(())
    });
    wait_until("bgw_list to show no job worker", T, || {
        let n = scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_list() WHERE kind = 'job' AND pid IS NOT NULL",
        );
        (n == 0).then_some(())
    });
    cluster.append_conf("bgworker_rs.job_worker_idle_time = 0");
    cluster.reload();
    wait_until("the reload", T, || {
        let v: String = c
            .query_one("SHOW bgworker_rs.job_worker_idle_time", &[])
            .unwrap()
            .get(0);
        (v == "0").then_some(())
    });
    let a = pid_of(&succeeded(&mut c, "SELECT 1"));
    let b = pid_of(&succeeded(&mut c, "SELECT 1"));
    assert_ne!(a, b, "a worker stayed with job_worker_idle_time = 0");
}

#[test]
fn a_rolled_back_bgw_run_never_runs() {
    let (_cluster, mut c) = cluster(&[]);
    c.batch_execute("CREATE TABLE marks (n int)").unwrap();
    let warm = pid_of(&succeeded(&mut c, "SELECT 1"));
    wait_for_warm_workers(&mut c, 1);
    // Rolled back, whole or to a savepoint; then one that commits.
    c.batch_execute(
        "BEGIN; SELECT bgw_run('INSERT INTO marks VALUES (1)'); ROLLBACK;
         BEGIN; SAVEPOINT s; SELECT bgw_run('INSERT INTO marks VALUES (2)'); ROLLBACK TO s; COMMIT;",
    )
    .unwrap();
    let id = job(&mut c, "SELECT bgw_run('INSERT INTO marks VALUES (3)')");
    let r = outcome(&mut c, id);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(
        pid_of(&r),
        warm,
        "the warm worker was lost to a rollback: {r}"
    );
    let marks: Vec<i32> = c
        .query("SELECT n FROM marks ORDER BY n", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(marks, [3], "a rolled-back job ran");
    let runs = scalar_i64(&mut c, "SELECT count(*) FROM bgw_job_runs");
    assert_eq!(runs, 2, "runs of rolled-back jobs were recorded");
}

#[test]
fn a_run_on_a_warm_worker_can_be_cancelled() {
    let (_cluster, mut c) = cluster(&[]);
    let warm = pid_of(&succeeded(&mut c, "SELECT 1"));
    wait_for_warm_workers(&mut c, 1);
    let id = job(&mut c, "SELECT bgw_run('SELECT pg_sleep(60)')");
    wait_until("the run to be on the warm worker", T, || {
        let pid: Option<i32> = c
            .query_one("SELECT pid FROM bgw_jobs WHERE id = $1", &[&id])
            .unwrap()
            .get(0);
        pid.filter(|&p| p as i64 == warm)
    });
    let cancelled: bool = c.query_one("SELECT bgw_cancel($1)", &[&id]).unwrap().get(0);
    assert!(cancelled);
    let r = outcome(&mut c, id);
    assert_eq!(r["status"], "cancelled", "{r}");
    // The next run still gets a worker.
    succeeded(&mut c, "SELECT 1");
}

#[test]
fn a_database_with_a_warm_worker_can_be_dropped_renamed_and_copied() {
    let (cluster, mut c) = cluster(&[]);
    c.batch_execute("CREATE DATABASE w").unwrap();
    let mut w = cluster.connect_as("postgres", "w");
    w.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let warm_in_w = |w: &mut Client| {
        let id = job(w, "SELECT bgw_run('SELECT 1')");
        let r = outcome(w, id);
        assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
        pid_of(&r) as i32
    };
    let pid = warm_in_w(&mut w);
    drop(w);
    // Each would fail after PostgreSQL's 5 s wait if the warm worker stayed.
    c.batch_execute("CREATE DATABASE w_copy TEMPLATE w")
        .unwrap();
    c.batch_execute("ALTER DATABASE w RENAME TO w2").unwrap();
    assert!(!pid_alive(&mut c, pid), "the warm worker stayed");
    let mut w = cluster.connect_as("postgres", "w2");
    warm_in_w(&mut w);
    drop(w);
    c.batch_execute("DROP DATABASE w2").unwrap();
    succeeded(&mut c, "SELECT 1");
}

/// A run of role `boss` (a superuser if `superuser`) leaves a warm
/// worker; then `change` alters the role or the database. The role's next run must be refused or run by a
/// new worker that has the role's new rights: `expect` is what it finds
/// (the outcome's status and SQLSTATE).
fn after_change(superuser: bool, change: &str, next: &str, expect: (Option<&str>, Option<&str>)) {
    let (_cluster, mut c) = cluster(&["bgworker_rs.job_worker_idle_time = '10min'"]);
    let rights = if superuser {
        "SUPERUSER"
    } else {
        "NOSUPERUSER"
    };
    c.batch_execute(&format!(
        "CREATE ROLE boss LOGIN {rights};
         CREATE TABLE marks (who text);
         GRANT ALL ON marks TO PUBLIC;"
    ))
    .unwrap();
    let id = job(
        &mut c,
        "SELECT bgw_run('SELECT pg_backend_pid() AS pid', role => 'boss')",
    );
    let r = outcome(&mut c, id);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    let warm = pid_of(&r);
    wait_for_warm_workers(&mut c, 1);
    c.batch_execute(change).unwrap();
    let id = job(
        &mut c,
        &format!("SELECT bgw_run($${next}$$, role => 'boss', atomic => false)"),
    );
    let r = outcome(&mut c, id);
    assert_eq!(status(&r), expect, "after {change}: {r}");
    if let Some(pid) = r["pid"].as_i64() {
        assert_ne!(pid, warm, "after {change}, the old warm worker ran: {r}");
    }
    still_contained(&mut c, "boss");
    // The job did nothing that needs a superuser.
    let marks = scalar_i64(&mut c, "SELECT count(*) FROM marks WHERE who = 'root'");
    assert_eq!(marks, 0, "after {change}, the run acted as a superuser");
}

#[test]
fn a_role_demoted_from_superuser_never_gets_its_warm_worker() {
    // PostgreSQL 15 keeps, for the whole session, that the session user
    // logged in as a superuser: SET SESSION AUTHORIZATION would still be
    // allowed on the old worker.
    after_change(
        true,
        "ALTER ROLE boss NOSUPERUSER",
        "SET SESSION AUTHORIZATION postgres; INSERT INTO marks VALUES ('root')",
        (Some("failed"), Some("42501")),
    );
}

#[test]
fn a_role_made_nologin_never_gets_its_warm_worker() {
    after_change(
        false,
        "ALTER ROLE boss NOLOGIN",
        "INSERT INTO marks VALUES ('boss')",
        (Some("failed"), Some("28000")),
    );
}

#[test]
fn a_database_whose_connect_is_revoked_never_gets_its_warm_worker() {
    after_change(
        false,
        "REVOKE CONNECT ON DATABASE postgres FROM PUBLIC",
        "INSERT INTO marks VALUES ('boss')",
        (Some("failed"), Some("42501")),
    );
}

#[test]
fn with_one_job_slot_the_worker_stays_in_the_slot_its_run_leaves() {
    // The worker's outcome holds the only slot until the scheduler records
    // it: the worker must wake the scheduler, not wait for a free slot
    // that only its recording frees.
    let (_cluster, mut c) = cluster(&["bgworker_rs.max_jobs = 1"]);
    let pid = pid_of(&succeeded(&mut c, "SELECT 1"));
    for _ in 0..3 {
        let r = succeeded(&mut c, "SELECT 1");
        assert_eq!(pid_of(&r), pid, "a new worker ran it: {r}");
    }
}

#[test]
fn a_bgw_run_that_fails_under_an_exception_block_gives_its_worker_back() {
    let (_cluster, mut c) = cluster(&["bgworker_rs.max_jobs = 1"]);
    c.batch_execute("CREATE TABLE marks (n int)").unwrap();
    let first = job(&mut c, "SELECT bgw_run('SELECT pg_backend_pid() AS pid')");
    let warm = pid_of(&outcome(&mut c, first));
    wait_for_warm_workers(&mut c, 1);
    // The next job's bgw_run fails right after it took the warm worker
    // (a test fault), inside a block that catches the error: the
    // savepoint rolls back, the transaction commits.
    c.batch_execute(&format!(
        "SET bgworker_rs.debug_error_after_reserve_job = {};
         DO $$ BEGIN
           PERFORM bgw_run('INSERT INTO marks VALUES (1)');
         EXCEPTION WHEN OTHERS THEN NULL;
         END $$;
         RESET bgworker_rs.debug_error_after_reserve_job;",
        first + 1
    ))
    .unwrap();
    // The only job slot is the warm worker's: given back, it runs the next
    // run; kept, that run would wait and fail (53000).
    let r = succeeded(&mut c, "SELECT pg_backend_pid() AS pid");
    assert_eq!(pid_of(&r), warm, "the warm worker was lost: {r}");
    let marks = scalar_i64(&mut c, "SELECT count(*) FROM marks");
    assert_eq!(marks, 0, "the rolled-back job ran");
}

#[test]
fn a_warm_worker_terminated_while_a_run_is_handed_to_it_is_never_used_again() {
    let (_cluster, mut c) = cluster(&["bgworker_rs.max_jobs = 1"]);
    let mut other = _cluster.connect();
    for commit in [false, true] {
        let warm = pid_of(&succeeded(&mut c, "SELECT pg_backend_pid() AS pid"));
        wait_for_warm_workers(&mut c, 1);
        // This transaction's bgw_run takes the warm worker; the worker is
        // terminated before the transaction ends.
        let mut tx = c.transaction().unwrap();
        let id: i64 = tx
            .query_one("SELECT bgw_run('SELECT 1')", &[])
            .unwrap()
            .get(0);
        other
            .execute("SELECT pg_terminate_backend($1)", &[&(warm as i32)])
            .unwrap();
        wait_until("the warm worker to exit", T, || {
            (!pid_alive(&mut other, warm as i32)).then_some(())
        });
        if commit {
            tx.commit().unwrap();
            // Its run is over, without an outcome: recorded, not stuck.
            let r = outcome(&mut c, id);
            assert_ne!(r["status"], "succeeded", "{r}");
            assert_ne!(r["status"], "running", "{r}");
        } else {
            tx.rollback().unwrap();
        }
        // The only job slot is free again, not kept for the dead worker.
        let r = succeeded(&mut c, "SELECT pg_backend_pid() AS pid");
        assert_ne!(pid_of(&r), warm, "{r}");
    }
}

/// `bgw_run` hands its run to a warm worker in a transaction that stays
/// open; the creator loses the right to the role (or the role is demoted
/// from superuser) before it commits. The warm worker checks again before
/// it runs: the run fails with 42501 and does nothing.
#[test]
fn rights_lost_while_a_handed_run_waits_for_its_commit_are_checked_again() {
    let (cluster, mut c) = cluster(&["bgworker_rs.job_worker_idle_time = '10min'"]);
    c.batch_execute(
        "CREATE ROLE attacker LOGIN NOSUPERUSER;
         CREATE ROLE r LOGIN NOSUPERUSER;
         GRANT r TO attacker;
         CREATE ROLE boss LOGIN SUPERUSER;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO attacker, boss;
         CREATE TABLE marks (who text);
         GRANT ALL ON marks TO PUBLIC;",
    )
    .unwrap();
    // (creator, role, what the superuser does while the run waits, payload)
    let cases = [
        (
            "attacker",
            "r",
            "REVOKE r FROM attacker",
            "INSERT INTO marks VALUES ('revoked')",
        ),
        (
            "boss",
            "boss",
            "ALTER ROLE boss NOSUPERUSER",
            "SET SESSION AUTHORIZATION postgres; INSERT INTO marks VALUES ('root')",
        ),
    ];
    for (creator, role, change, payload) in cases {
        let mut a = cluster.connect_as(creator, "postgres");
        let id = job(
            &mut a,
            &format!("SELECT bgw_run('SELECT pg_backend_pid() AS pid', role => '{role}')"),
        );
        let r = outcome(&mut a, id);
        assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
        wait_for_warm_workers(&mut c, 1);
        let mut tx = a.transaction().unwrap();
        let id: i64 = tx
            .query_one(
                &format!("SELECT bgw_run($${payload}$$, role => '{role}', atomic => false)"),
                &[],
            )
            .unwrap()
            .get(0);
        c.batch_execute(change).unwrap();
        tx.commit().unwrap();
        let r = outcome(&mut a, id);
        assert_eq!(
            status(&r),
            (Some("failed"), Some("42501")),
            "after {change}: {r}"
        );
        let expected = format!(
            "role \"{creator}\" may no longer run this job as role \"{role}\" in database \"postgres\", \
             or the role or the database changed as the run was handed to its worker"
        );
        assert_eq!(r["error"], expected.as_str(), "{r}");
        assert_eq!(
            r["hint"],
            "Run the job again: a new worker connects with the role's rights as they are now.",
            "{r}"
        );
        let marks = scalar_i64(&mut c, "SELECT count(*) FROM marks");
        assert_eq!(marks, 0, "after {change}, the handed run ran");
        // Its worker is gone; the next run gets a new one.
        c.batch_execute("SELECT pg_sleep(0)").unwrap();
    }
    still_contained(&mut c, "attacker");
    still_contained(&mut c, "boss");
}

/// Role settings (`ALTER ROLE ... SET`) are not in the role's row: a warm
/// worker kept busy by frequent runs still takes them in within the idle
/// time, as it serves runs only that long after it connected.
#[test]
fn role_settings_reach_a_busy_warm_worker_within_the_idle_time() {
    let (_cluster, mut c) = cluster(&["bgworker_rs.job_worker_idle_time = '2s'"]);
    let first = succeeded(&mut c, "SELECT pg_backend_pid() AS pid");
    let warm = pid_of(&first);
    c.batch_execute("ALTER ROLE postgres SET work_mem = '7MB'")
        .unwrap();
    let mut pids = std::collections::HashSet::new();
    let seen = poll(T, || {
        let r = succeeded(
            &mut c,
            "SELECT pg_backend_pid() AS pid, current_setting('work_mem') AS work_mem",
        );
        pids.insert(pid_of(&r));
        (r["result"][0]["work_mem"] == "7MB").then_some(())
    });
    assert!(
        seen.is_some(),
        "the role's new setting never reached a run; workers {pids:?}"
    );
    assert!(pids.contains(&warm), "the warm worker was never reused");
}

/// A restarted scheduler's first wake marks the runs no job slot holds as
/// lost. A `bgw_run` that hands its run to a warm worker after that wake
/// read the slots, and commits before it marks them, is not lost: its run
/// is recorded as it ended.
#[test]
fn a_run_handed_over_while_a_new_scheduler_looks_for_lost_runs_is_not_lost() {
    let (cluster, mut c) = cluster(&["bgworker_rs.job_worker_idle_time = '10min'"]);
    c.batch_execute("CREATE ROLE other LOGIN").unwrap();
    let warm = pid_of(&succeeded(&mut c, "SELECT pg_backend_pid() AS pid"));
    wait_for_warm_workers(&mut c, 1);
    // The scheduler leaves once idle a while; the warm worker stays.
    wait_until("the scheduler to leave", T, || {
        worker_pids(&mut c, "bgworker_rs job scheduler")
            .is_empty()
            .then_some(())
    });
    c.batch_execute("ALTER SYSTEM SET bgworker_rs.debug_pause_before_mark_lost_ms = 3000")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // Another role's job starts a new scheduler, whose first wake pauses
    // after reading the slots in use.
    job(&mut c, "SELECT bgw_run('SELECT 1', role => 'other')");
    cluster.wait_for_log("bgworker_rs test pause before mark_lost", T);
    // Meanwhile a job of the warm worker's role is handed to it, and runs.
    let id = job(&mut c, "SELECT bgw_run('SELECT pg_backend_pid() AS pid')");
    let r = outcome(&mut c, id);
    assert_eq!(pid_of(&r), warm, "not handed to the warm worker: {r}");
    let recorded = common::jobs::finished_run(&mut c, id, 1);
    assert_eq!(recorded["status"], "succeeded", "marked lost: {recorded}");
    c.batch_execute("ALTER SYSTEM RESET bgworker_rs.debug_pause_before_mark_lost_ms")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
}

/// What `DISCARD ALL` leaves (the `setseed()` state, procedural language
/// globals, `dblink` connections) stays with runs of one creator: another
/// role's job, even as the same role, never gets the worker.
#[test]
fn a_warm_worker_serves_only_jobs_of_its_creator() {
    let (cluster, mut c) = cluster(&["bgworker_rs.job_worker_idle_time = '10min'"]);
    c.batch_execute(
        "CREATE ROLE r LOGIN;
         CREATE ROLE a LOGIN IN ROLE r;
         CREATE ROLE b LOGIN IN ROLE r;
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO a, b;",
    )
    .unwrap();
    let mut a = cluster.connect_as("a", "postgres");
    let mut b = cluster.connect_as("b", "postgres");
    let run = |client: &mut Client, sql: &str| {
        let id = job(
            client,
            &format!("SELECT bgw_run($${sql}$$, role => 'r', atomic => false)"),
        );
        let r = outcome(client, id);
        assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
        r
    };
    let seeded = pid_of(&run(
        &mut a,
        "SELECT setseed(0); SELECT pg_backend_pid() AS pid",
    ));
    wait_for_warm_workers(&mut c, 1);
    let other = pid_of(&run(&mut b, "SELECT pg_backend_pid() AS pid"));
    assert_ne!(other, seeded, "b's job ran on a's warm worker");
    let again = pid_of(&run(&mut a, "SELECT pg_backend_pid() AS pid"));
    assert_eq!(again, seeded, "a's warm worker was not reused");
    still_contained(&mut c, "a");
}
