//! Jobs in every database: a scheduler per database with active jobs,
//! started by the launcher, isolation between databases, fairness of the
//! shared job slots, what DROP/RENAME DATABASE, ALLOW_CONNECTIONS and DROP
//! EXTENSION do to a running scheduler, a restart, and the upgrade from
//! 0.1.0.

mod common;

use common::jobs::*;
use common::*;
use postgres::Client;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);
const BASE: &[&str] = &["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 8"];

/// A cluster, and a connection to database postgres with the extension
/// (for bgw_list()), which has no job.
fn start(conf: &[&str]) -> (Cluster, Client) {
    let cluster = Cluster::start(conf);
    let mut admin = cluster.connect();
    admin
        .batch_execute("CREATE EXTENSION bgworker_rs")
        .expect("CREATE EXTENSION");
    (cluster, admin)
}

/// Creates database `name` with the extension, and connects to it.
fn database(cluster: &Cluster, admin: &mut Client, name: &str) -> Client {
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
    let mut c = cluster.connect_as("postgres", name);
    c.batch_execute("CREATE EXTENSION bgworker_rs")
        .unwrap_or_else(|e| panic!("CREATE EXTENSION in {name}: {e}"));
    c
}

/// The databases whose scheduler runs now, from bgw_list().
fn schedulers(c: &mut Client) -> BTreeSet<String> {
    c.query(
        "SELECT database::text FROM bgw_list() \
          WHERE kind = 'scheduler' AND pid IS NOT NULL AND state IN ('starting', 'running')",
        &[],
    )
    .expect("bgw_list")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Waits until exactly the schedulers of `expected` run.
fn wait_for_schedulers(c: &mut Client, expected: &[&str]) {
    let want = names(expected);
    let mut last = BTreeSet::new();
    let found = poll(T, || {
        last = schedulers(c);
        (last == want).then_some(())
    });
    if found.is_none() {
        let rows: Vec<String> = c
            .query(
                "SELECT format('%s %s %s %s %s', database, pid, state, iterations, started_at) \
                   FROM bgw_list() WHERE kind = 'scheduler'",
                &[],
            )
            .expect("bgw_list")
            .iter()
            .map(|r| r.get(0))
            .collect();
        panic!("schedulers never became {want:?}; last seen {last:?}; bgw_list: {rows:#?}");
    }
}

fn succeeded_runs(c: &mut Client, job: i64) -> i64 {
    c.query_one(
        "SELECT count(*) FROM bgw_job_runs WHERE job = $1 AND status = 'succeeded'",
        &[&job],
    )
    .expect("bgw_job_runs")
    .get(0)
}

/// Waits until job `job` has more than `n` successful runs.
fn wait_for_runs_beyond(c: &mut Client, job: i64, n: i64) -> i64 {
    wait_until(
        &format!("job {job} to run more than {n} times"),
        T_JOBS,
        || {
            let now = succeeded_runs(c, job);
            (now > n).then_some(now)
        },
    )
}

/// The checkpointer's pid: a crash of the server would start a new one.
fn postmaster_pid(c: &mut Client) -> i32 {
    c.query_one(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'",
        &[],
    )
    .expect("checkpointer")
    .get(0)
}

/// The job slots are all usable: `n` runs in `c`'s database run at once.
fn all_slots_free(c: &mut Client, n: usize) {
    let ids: Vec<i64> = (0..n)
        .map(|_| job(c, "SELECT bgw_run('SELECT pg_sleep(1)')"))
        .collect();
    wait_until(&format!("{n} runs at once"), T_JOBS, || {
        let running: i64 = c
            .query_one(
                "SELECT count(*) FROM bgw_jobs WHERE id = ANY($1) AND state = 'running'",
                &[&ids],
            )
            .expect("bgw_jobs")
            .get(0);
        (running == n as i64).then_some(())
    });
    for id in ids {
        assert_eq!(status(&outcome(c, id)).0, Some("succeeded"));
    }
}

#[test]
fn jobs_are_created_listed_waited_for_and_cancelled_in_each_database() {
    let (cluster, mut admin) = start(BASE);
    let mut clients: Vec<(String, Client)> = ["app1", "app2", "app3"]
        .iter()
        .map(|n| (n.to_string(), database(&cluster, &mut admin, n)))
        .collect();
    // No database has a job yet: no scheduler stays.
    wait_for_schedulers(&mut admin, &[]);

    for (name, c) in clients.iter_mut() {
        let id = job(c, "SELECT bgw_run('SELECT current_database()::text AS db')");
        assert_eq!(id, 1, "job ids are per database");
        let r = outcome(c, id);
        assert_eq!(status(&r).0, Some("succeeded"), "{name}: {r}");
        assert_eq!(
            r["result"][0]["db"],
            name.as_str(),
            "ran where it was created"
        );
        let listed: Vec<(i64, String)> = c
            .query("SELECT id, database::text FROM bgw_jobs", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(
            listed,
            vec![(1, name.clone())],
            "{name} lists its own job only"
        );
    }
    // Recurring jobs in each, then cancelled in each.
    let mut recurring = Vec::new();
    for (_, c) in clients.iter_mut() {
        let id = job(c, "SELECT bgw_run('SELECT 1', every => '200ms')");
        wait_for_runs_beyond(c, id, 1);
        recurring.push(id);
    }
    wait_for_schedulers(&mut admin, &["app1", "app2", "app3"]);
    for ((name, c), id) in clients.iter_mut().zip(&recurring) {
        let cancelled: bool = c.query_one("SELECT bgw_cancel($1)", &[id]).unwrap().get(0);
        assert!(cancelled, "{name}");
        let state: String = c
            .query_one("SELECT state FROM bgw_jobs WHERE id = $1", &[id])
            .unwrap()
            .get(0);
        assert_eq!(state, "cancelled", "{name}");
    }
    // Nothing active is left anywhere: every scheduler leaves.
    wait_for_schedulers(&mut admin, &[]);
}

#[test]
fn no_database_sees_or_touches_another_databases_jobs() {
    let (cluster, mut admin) = start(BASE);
    let mut a = database(&cluster, &mut admin, "a");
    let mut b = database(&cluster, &mut admin, "b");
    // Job 1 in each: a's a one-shot, b's a recurring one.
    let in_a = job(&mut a, "SELECT bgw_run('SELECT pg_sleep(30)')");
    let in_b = job(&mut b, "SELECT bgw_run('SELECT 1', every => '200ms')");
    assert_eq!((in_a, in_b), (1, 1));
    wait_until("a's job running", T, || {
        let state: String = a
            .query_one("SELECT state FROM bgw_jobs WHERE id = 1", &[])
            .unwrap()
            .get(0);
        (state == "running").then_some(())
    });
    let before = wait_for_runs_beyond(&mut b, in_b, 1);
    // b's view shows b's job 1 as b's: not running a's sleep.
    let (b_sql, b_pid): (String, Option<i32>) = b
        .query_one("SELECT sql, pid FROM bgw_jobs WHERE id = 1", &[])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(b_sql, "SELECT 1");
    let a_pid: Option<i32> = a
        .query_one("SELECT pid FROM bgw_jobs WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert!(a_pid.is_some());
    assert_ne!(b_pid, a_pid, "b's view never shows a's run");
    // Cancelling job 1 in a stops a's run only.
    let cancelled: bool = a.query_one("SELECT bgw_cancel(1)", &[]).unwrap().get(0);
    assert!(cancelled);
    let r = outcome(&mut a, 1);
    assert_eq!(status(&r).0, Some("cancelled"));
    wait_for_runs_beyond(&mut b, in_b, before + 2);
    let b_state: String = b
        .query_one("SELECT state FROM bgw_jobs WHERE id = 1", &[])
        .unwrap()
        .get(0);
    assert_ne!(b_state, "cancelled", "b's job 1 is not a's");
    // A job id that exists only in b is unknown in a.
    job(&mut b, "SELECT bgw_run('SELECT 2')");
    let (code, message, _, _) = expect_error(&mut a, "SELECT bgw_result(2, '1s')");
    assert_eq!(code, "42704", "{message}");
    let (code, _, _, _) = expect_error(&mut a, "SELECT bgw_cancel(2)");
    assert_eq!(code, "42704");
    // The tables of one database are not the other's.
    let a_runs: i64 = scalar_i64(&mut a, "SELECT count(*) FROM bgw_job_runs");
    assert_eq!(a_runs, 1, "a has the one run of its one job");
}

#[test]
fn at_steady_state_only_databases_with_active_jobs_have_a_scheduler() {
    let (cluster, mut admin) = start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 8",
        "max_worker_processes = 24",
    ]);
    let all: Vec<String> = (1..=12).map(|i| format!("db{i}")).collect();
    let mut clients: Vec<Client> = all
        .iter()
        .map(|n| database(&cluster, &mut admin, n))
        .collect();
    // Recurring jobs in three; a paused one and a finished one elsewhere.
    for i in [0usize, 4, 9] {
        job(
            &mut clients[i],
            "SELECT bgw_run('SELECT 1', every => '300ms')",
        );
    }
    let paused = job(&mut clients[1], "SELECT bgw_run('SELECT 1', every => '1h')");
    clients[1]
        .execute("SELECT bgw_alter($1, active => false)", &[&paused])
        .unwrap();
    let once = job(&mut clients[2], "SELECT bgw_run('SELECT 1')");
    assert_eq!(status(&outcome(&mut clients[2], once)).0, Some("succeeded"));
    if poll(T, || {
        (schedulers(&mut admin) == names(&["db1", "db5", "db10"])).then_some(())
    })
    .is_none()
    {
        let runs: Vec<String> = clients[1]
            .query("SELECT to_jsonb(r)::text FROM bgw_job_runs r", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let defs: Vec<String> = clients[1]
            .query("SELECT to_jsonb(r)::text FROM bgw_job_defs r", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let log = cluster.log();
        let tail: Vec<&str> = log.lines().filter(|l| !l.contains("DEBUG")).collect();
        panic!(
            "DEBUG runs {runs:#?} defs {defs:#?} log {:#?}",
            &tail[tail.len().saturating_sub(40)..]
        );
    }
    let processes: i64 = scalar_i64(
        &mut admin,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bgworker_rs job scheduler'",
    );
    assert_eq!(
        processes, 3,
        "one scheduler process per database with active jobs"
    );
}

#[test]
fn a_restart_resumes_the_jobs_of_three_databases_without_anyone_connecting() {
    // More databases with the extension than max_worker_processes, the
    // ones with jobs made last: every one is still looked at after the
    // restart, and the looks that find nothing leave at once.
    let (mut cluster, mut admin) = start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 3",
        "max_worker_processes = 10",
    ]);
    let idle: Vec<String> = (1..=12).map(|i| format!("idle{i}")).collect();
    let mut ids = Vec::new();
    for n in idle.iter().map(String::as_str).chain(["r1", "r2", "r3"]) {
        let mut c = database(&cluster, &mut admin, n);
        if n.starts_with('r') {
            c.batch_execute("CREATE TABLE ticks (at timestamptz)")
                .unwrap();
            let id = job(
                &mut c,
                "SELECT bgw_run('INSERT INTO ticks VALUES (now())', every => '200ms')",
            );
            wait_for_runs_beyond(&mut c, id, 0);
            ids.push((n, id));
        }
    }
    drop(admin);
    cluster.restart();
    // Nobody connects to r1..r3 until their jobs have run again.
    let mut admin = cluster.connect();
    let started: String = admin
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    wait_for_schedulers(&mut admin, &["r1", "r2", "r3"]);
    for (n, _) in &ids {
        let mut c = cluster.connect_as("postgres", n);
        wait_until(&format!("a tick in {n} after the restart"), T_JOBS, || {
            let after: bool = c
                .query_one(
                    "SELECT EXISTS (SELECT FROM ticks WHERE at > $1::text::timestamptz)",
                    &[&started],
                )
                .unwrap()
                .get(0);
            after.then_some(())
        });
    }
}

#[test]
fn drop_database_with_a_recurring_job() {
    let (cluster, mut admin) =
        start(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 2"]);
    let before = postmaster_pid(&mut admin);
    let mut doomed = database(&cluster, &mut admin, "doomed");
    // Its job runs in it, and keeps a slot busy for a while each time.
    let id = job(
        &mut doomed,
        "SELECT bgw_run('SELECT pg_sleep(0.5)', every => '100ms')",
    );
    wait_for_runs_beyond(&mut doomed, id, 1);
    // A role that does not own the database cannot stop its scheduler by
    // trying to drop it.
    admin
        .batch_execute("CREATE ROLE mallory LOGIN CREATEDB")
        .unwrap();
    let mut mallory = cluster.connect_as("mallory", "postgres");
    let (code, _, _, _) = expect_error(&mut mallory, "DROP DATABASE doomed");
    assert_eq!(code, "42501");
    let (code, _, _, _) = expect_error(&mut mallory, "ALTER DATABASE doomed RENAME TO gone");
    assert_eq!(code, "42501");
    let mallory_super: bool = mallory
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!mallory_super);
    let n = succeeded_runs(&mut doomed, id);
    wait_for_runs_beyond(&mut doomed, id, n + 1);
    drop(doomed);
    // A plain DROP DATABASE: the scheduler steps aside, the run stops.
    let t0 = Instant::now();
    admin
        .batch_execute("DROP DATABASE doomed")
        .expect("DROP DATABASE with a recurring job");
    assert!(t0.elapsed() < Duration::from_secs(20));
    wait_for_schedulers(&mut admin, &[]);
    assert_eq!(
        postmaster_pid(&mut admin),
        before,
        "the server did not restart"
    );
    // Both job slots are free again.
    all_slots_free(&mut admin, 2);
}

#[test]
fn the_extension_dropped_from_one_database() {
    let (cluster, mut admin) =
        start(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 2"]);
    let mut a = database(&cluster, &mut admin, "a");
    let mut b = database(&cluster, &mut admin, "b");
    let in_a = job(
        &mut a,
        "SELECT bgw_run('SELECT pg_sleep(0.3)', every => '100ms')",
    );
    let in_b = job(&mut b, "SELECT bgw_run('SELECT 1', every => '200ms')");
    wait_for_runs_beyond(&mut a, in_a, 0);
    wait_for_runs_beyond(&mut b, in_b, 0);
    a.batch_execute("DROP EXTENSION bgworker_rs").unwrap();
    cluster.wait_for_log("extension \"bgworker_rs\" was dropped from database", T);
    wait_for_schedulers(&mut admin, &["b"]);
    let n = succeeded_runs(&mut b, in_b);
    wait_for_runs_beyond(&mut b, in_b, n + 2);
    // Both slots usable: a's run did not keep one.
    b.batch_execute(&format!("SELECT bgw_cancel({in_b})"))
        .unwrap();
    all_slots_free(&mut b, 2);
    // And the extension comes back cleanly.
    a.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let id = job(&mut a, "SELECT bgw_run('SELECT 1')");
    assert_eq!(status(&outcome(&mut a, id)).0, Some("succeeded"));
}

#[test]
fn a_renamed_database_keeps_its_jobs_and_allow_connections_false_sends_the_scheduler_away() {
    let (cluster, mut admin) = start(BASE);
    let mut c = database(&cluster, &mut admin, "before");
    let id = job(&mut c, "SELECT bgw_run('SELECT 1', every => '200ms')");
    wait_for_runs_beyond(&mut c, id, 1);
    drop(c);
    admin
        .batch_execute("ALTER DATABASE before RENAME TO after")
        .expect("RENAME with a scheduler running");
    let mut c = cluster.connect_as("postgres", "after");
    let n = succeeded_runs(&mut c, id);
    wait_for_runs_beyond(&mut c, id, n + 2);
    let (state, database): (String, String) = c
        .query_one(
            "SELECT state, database::text FROM bgw_jobs WHERE id = $1",
            &[&id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((state.as_str(), database.as_str()), ("scheduled", "after"));
    wait_for_schedulers(&mut admin, &["after"]);

    admin
        .batch_execute("ALTER DATABASE after ALLOW_CONNECTIONS false")
        .unwrap();
    cluster.wait_for_log(
        "database \"after\" no longer accepts connections; leaving",
        T,
    );
    wait_for_schedulers(&mut admin, &[]);
    admin
        .batch_execute("ALTER DATABASE after ALLOW_CONNECTIONS true")
        .unwrap();
    wait_for_schedulers(&mut admin, &["after"]);
    let n = succeeded_runs(&mut c, id);
    wait_for_runs_beyond(&mut c, id, n + 1);
}

#[test]
fn a_flooded_queue_in_one_database_never_holds_every_slot() {
    // Worker slots to spare, so that what is measured is the sharing of
    // job slots, not the postmaster's first-come first-served worker slots.
    let (cluster, mut admin) = start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 2",
        "max_worker_processes = 16",
    ]);
    let mut flood = database(&cluster, &mut admin, "flood");
    let mut small = database(&cluster, &mut admin, "small");
    // 20 runs of 300 ms: 3 s of queue for 2 slots.
    flood
        .batch_execute("SELECT bgw_run('SELECT pg_sleep(0.3)') FROM generate_series(1, 20)")
        .unwrap();
    wait_until("the flood queued and running", T, || {
        let row = flood
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'running'), \
                        count(*) FILTER (WHERE state IN ('queued', 'scheduled')) FROM bgw_jobs",
                &[],
            )
            .unwrap();
        let (running, waiting): (i64, i64) = (row.get(0), row.get(1));
        (running == 2 && waiting >= 10).then_some(())
    });
    let id = job(&mut small, "SELECT bgw_run('SELECT 1')");
    // From when its run waits in the queue (its scheduler may first have
    // to start, which on a loaded machine takes a while).
    let created: String = wait_until("the small job's run queued", T, || {
        small
            .query_opt(
                "SELECT clock_timestamp()::text FROM bgw_jobs WHERE id = $1 AND state <> 'scheduled'",
                &[&id],
            )
            .unwrap()
            .map(|r| r.get(0))
    });
    let r = outcome(&mut small, id);
    assert_eq!(status(&r).0, Some("succeeded"));
    let started: String = r["started_at"].as_str().expect("started_at").to_string();
    // How many of the flood's runs started between the small job's commit
    // and its start: a fair share gives it the next slot that frees.
    let overtaken: i64 = flood
        .query_one(
            "SELECT count(*) FROM bgw_job_runs \
              WHERE started_at > $1::text::timestamptz AND started_at < $2::text::timestamptz",
            &[&created, &started],
        )
        .unwrap()
        .get(0);
    let left: i64 = scalar_i64(
        &mut flood,
        "SELECT count(*) FROM bgw_jobs WHERE state IN ('queued', 'scheduled')",
    );
    assert!(
        overtaken <= 2,
        "{overtaken} flood runs started before the other database's one run ({left} still waiting)"
    );
    assert!(
        left > 0,
        "the flood was over before the small job: the test proves nothing"
    );
}

/// A scheduler's wakes so far, from bgw_list().
fn scheduler_wakes(c: &mut Client, database: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(iterations), 0)::int8 FROM bgw_list() \
          WHERE kind = 'scheduler' AND database = $1::text::name",
        &[&database],
    )
    .unwrap()
    .get(0)
}

#[test]
fn without_worker_slots_two_waiting_databases_never_wake_each_other_in_a_loop() {
    // Room for the launcher, two schedulers, two runs and PostgreSQL's
    // logical replication launcher: no more workers. That one is not ours,
    // so our registry (sized by max_worker_processes) still has room and
    // a run takes a job slot before its worker cannot be registered.
    let (cluster, mut admin) = start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 3",
        "max_worker_processes = 6",
        "max_parallel_workers_per_gather = 0",
    ]);
    let mut flood = database(&cluster, &mut admin, "flood");
    let mut small = database(&cluster, &mut admin, "small");
    // A job that keeps the small database's scheduler up.
    small
        .batch_execute("SELECT bgw_schedule('keep', '0 0 1 1 *', 'SELECT 1')")
        .unwrap();
    wait_until("the small database's scheduler", T, || {
        scheduler_pid(&mut admin, "small")
    });
    // Two runs take the last worker slots; a third has a job slot but no
    // worker, and waits.
    flood
        .batch_execute("SELECT bgw_run('SELECT pg_sleep(120)') FROM generate_series(1, 3)")
        .unwrap();
    wait_until("two flood runs running", T, || {
        (scalar_i64(
            &mut flood,
            "SELECT count(*) FROM bgw_jobs WHERE state = 'running'",
        ) == 2)
            .then_some(())
    });
    // The small database's run has the better claim to the free job slot
    // (it holds none), but cannot start a worker either.
    let id = job(&mut small, "SELECT bgw_run('SELECT 1')");
    // Both now wait; each refusal of the flood wakes the small database's
    // scheduler, whose failed start must not wake the flood again.
    let (wakes, at) = (scheduler_wakes(&mut admin, "small"), Instant::now());
    let flood_wakes = scheduler_wakes(&mut admin, "flood");
    // Three looks of the flood's scheduler, which retries once a second.
    wait_until("three flood wakes", T, || {
        (scheduler_wakes(&mut admin, "flood") >= flood_wakes + 3).then_some(())
    });
    let (woke, took) = (scheduler_wakes(&mut admin, "small") - wakes, at.elapsed());
    let per_second = woke as f64 / took.as_secs_f64().max(0.001);
    assert!(
        per_second < 50.0,
        "the small database's scheduler woke {woke} times in {took:?}: a busy loop"
    );
    // Once worker slots free, the waiting run starts, and so do others.
    // (The flood's queued run may start as it is cancelled: it is stopped
    // all the same.)
    flood
        .batch_execute("SELECT bgw_cancel(id) FROM bgw_jobs")
        .unwrap();
    wait_until("the flood cancelled", T, || {
        (scalar_i64(
            &mut flood,
            "SELECT count(*) FROM bgw_jobs WHERE state IN ('running', 'queued')",
        ) == 0)
            .then_some(())
    });
    let r = outcome(&mut small, id);
    assert_eq!(status(&r).0, Some("succeeded"), "{r}");
    let id = job(&mut admin, "SELECT bgw_run('SELECT 1 AS one')");
    let r = outcome(&mut admin, id);
    assert_eq!(status(&r).0, Some("succeeded"), "{r}");
}

#[test]
fn the_upgrade_from_0_1_0_keeps_existing_jobs_running() {
    // The 0.1.0 install script, as it was released, next to this version's.
    let share = pg_config_value_pub("--sharedir").join("extension");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bgworker_rs--0.1.0.sql"
        ),
        share.join("bgworker_rs--0.1.0.sql"),
    )
    .expect("install the 0.1.0 script");
    let cluster = Cluster::start(BASE);
    let mut admin = cluster.connect();
    admin.batch_execute("CREATE DATABASE other").unwrap();
    admin
        .batch_execute("CREATE EXTENSION bgworker_rs VERSION '0.1.0'")
        .unwrap();
    admin
        .batch_execute(
            "CREATE TABLE ticks (at timestamptz);
             -- Jobs as bgw_run() 0.1.0 stored them: one here, one in another database.
             INSERT INTO bgw_job_defs (sql, database, database_name, role, every, created_by, next_run_at)
             SELECT 'INSERT INTO ticks VALUES (now())', oid, datname, 'postgres', '200ms', 'postgres', now()
               FROM pg_database WHERE datname = 'postgres';
             INSERT INTO bgw_job_defs (sql, database, database_name, role, every, created_by, next_run_at)
             SELECT 'SELECT current_database()::text AS db', oid, datname, 'postgres', '200ms', 'postgres', now()
               FROM pg_database WHERE datname = 'other';",
        )
        .unwrap();
    // The library is 0.2.0: the job functions ask for the update.
    let (code, message, _, hint) = expect_error(&mut admin, "SELECT bgw_run('SELECT 1')");
    assert_eq!(code, "55000", "{message}");
    assert!(message.contains("version 0.1.0"), "{message}");
    assert_eq!(
        hint.as_deref(),
        Some("Run ALTER EXTENSION bgworker_rs UPDATE.")
    );

    admin
        .batch_execute("ALTER EXTENSION bgworker_rs UPDATE")
        .expect("the upgrade script");
    let version: String = admin
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'bgworker_rs'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, "0.2.0");
    // Both jobs run, without a restart.
    wait_for_runs_beyond(&mut admin, 1, 1);
    let r = finished_run(&mut admin, 2, 1);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"][0]["db"], "other");
    let stored: Vec<(Option<u32>, Option<String>, String)> = admin
        .query(
            "SELECT d.database, d.database_name::text, j.database::text \
               FROM bgw_job_defs d JOIN bgw_jobs j USING (id) ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(stored[0].0, None, "a job for its own database follows it");
    assert_eq!(stored[0].2, "postgres");
    assert!(stored[1].0.is_some());
    assert_eq!(stored[1].1.as_deref(), Some("other"));
    assert_eq!(stored[1].2, "other");
    let new = job(&mut admin, "SELECT bgw_run('SELECT 1')");
    assert_eq!(status(&outcome(&mut admin, new)).0, Some("succeeded"));

    // The upgraded schema is the fresh one.
    let mut fresh = database(&cluster, &mut admin, "fresh");
    assert_eq!(describe(&mut admin), describe(&mut fresh));
}

fn pg_config_value_pub(flag: &str) -> std::path::PathBuf {
    let out = std::process::Command::new(pg_config())
        .arg(flag)
        .output()
        .expect("pg_config");
    std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Everything that defines the extension's objects, as text.
fn describe(c: &mut Client) -> Vec<String> {
    c.query(
        "WITH members AS (
           SELECT classid, objid FROM pg_depend
            WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
              AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bgworker_rs'))
         SELECT 'function ' || p.oid::regprocedure || ': ' || pg_get_functiondef(p.oid)
                || ' acl ' || coalesce(p.proacl::text, '') || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
           FROM members m JOIN pg_proc p ON p.oid = m.objid WHERE m.classid = 'pg_proc'::regclass
         UNION ALL
         SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' acl ' || coalesce(c.relacl::text, '')
                || ' options ' || coalesce(c.reloptions::text, '')
                || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '')
                || ' view ' || coalesce(CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END, '')
           FROM members m JOIN pg_class c ON c.oid = m.objid WHERE m.classid = 'pg_class'::regclass
         UNION ALL
         SELECT 'column ' || a.attrelid::regclass || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                || ' ' || a.attnotnull || ' ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || a.attidentity::text
           FROM members m JOIN pg_attribute a ON a.attrelid = m.objid AND a.attnum > 0 AND NOT a.attisdropped
           LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          WHERE m.classid = 'pg_class'::regclass
         UNION ALL
         SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(co.oid)
           FROM members m JOIN pg_constraint co ON co.conrelid = m.objid WHERE m.classid = 'pg_class'::regclass
         UNION ALL
         SELECT 'index ' || pg_get_indexdef(i.indexrelid)
           FROM members m JOIN pg_index i ON i.indrelid = m.objid WHERE m.classid = 'pg_class'::regclass
         UNION ALL
         SELECT 'dumped ' || unnest(extconfig)::regclass || ' ' || coalesce(array_to_string(extcondition, ','), '')
           FROM pg_extension WHERE extname = 'bgworker_rs'
         ORDER BY 1",
        &[],
    )
    .expect("describe the extension")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

// ------------------------------------------- a hostile database owner
//
// A role that owns its database (CREATEDB), with EXECUTE on the job
// functions there, tries to disturb other databases' jobs or to keep a
// scheduler busy for ever. Each test ends by checking that it is still not
// a superuser and that a job in another database still runs.

/// Database `adb`, owned by `alice` (LOGIN CREATEDB, not a superuser),
/// with the extension and EXECUTE on its functions, and a connection as
/// alice to it.
fn owned_by_alice(cluster: &Cluster, admin: &mut Client) -> Client {
    admin
        .batch_execute("CREATE ROLE alice LOGIN CREATEDB")
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE adb OWNER alice")
        .unwrap();
    let mut su = cluster.connect_as("postgres", "adb");
    su.batch_execute(
        "CREATE EXTENSION bgworker_rs; \
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO alice; \
         GRANT SELECT ON bgw_jobs, bgw_job_runs TO alice",
    )
    .unwrap();
    cluster.connect_as("alice", "adb")
}

/// The end of every hostile test: alice is no superuser, and a job in
/// database postgres still runs.
fn still_contained(admin: &mut Client) {
    let sup: bool = admin
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'alice'", &[])
        .unwrap()
        .get(0);
    assert!(!sup, "alice became a superuser");
    let id = job(admin, "SELECT bgw_run('SELECT 1 AS one')");
    let r = outcome(admin, id);
    assert_eq!(status(&r).0, Some("succeeded"), "{r}");
}

fn scheduler_pid(c: &mut Client, database: &str) -> Option<i32> {
    c.query_opt(
        "SELECT pid FROM bgw_list() WHERE kind = 'scheduler' AND database = $1::text::name \
            AND pid IS NOT NULL AND state = 'running'",
        &[&database],
    )
    .unwrap()
    .map(|r| r.get(0))
}

#[test]
fn statements_that_will_fail_never_stop_a_scheduler_or_its_runs() {
    let (cluster, mut admin) = start(BASE);
    let mut alice = owned_by_alice(&cluster, &mut admin);
    let id = job(&mut alice, "SELECT bgw_run('SELECT pg_sleep(60)')");
    let run_pid = wait_until("alice's run", T, || {
        alice
            .query_one("SELECT pid FROM bgw_jobs WHERE id = $1", &[&id])
            .unwrap()
            .get::<_, Option<i32>>(0)
    });
    let sched = wait_until("adb's scheduler", T, || scheduler_pid(&mut admin, "adb"));
    let mut elsewhere = cluster.connect_as("alice", "postgres");
    // In a transaction block, DROP DATABASE fails before doing anything:
    // so must we.
    for sql in [
        "BEGIN; DROP DATABASE adb",
        "BEGIN; CREATE DATABASE copy TEMPLATE adb",
        "BEGIN; ALTER DATABASE adb SET TABLESPACE pg_default",
    ] {
        let (code, message, _, _) = expect_error(&mut elsewhere, sql);
        assert_eq!(code, "25001", "{sql}: {message}");
        elsewhere.batch_execute("ROLLBACK").unwrap();
    }
    // Its own current database cannot be dropped or renamed.
    let (code, _, _, _) = expect_error(&mut alice, "DROP DATABASE adb");
    assert_eq!(code, "55006");
    assert_eq!(
        scheduler_pid(&mut admin, "adb"),
        Some(sched),
        "the scheduler was stopped"
    );
    let still: Option<i32> = alice
        .query_one("SELECT pid FROM bgw_jobs WHERE id = $1", &[&id])
        .unwrap()
        .get(0);
    assert_eq!(still, Some(run_pid), "the run was stopped");
    alice
        .batch_execute(&format!("SELECT bgw_cancel({id})"))
        .unwrap();
    still_contained(&mut admin);
}

#[test]
fn failing_statements_repeated_leave_no_stuck_scheduler() {
    let (cluster, mut admin) = start(BASE);
    let mut alice = owned_by_alice(&cluster, &mut admin);
    job(&mut alice, "SELECT bgw_run('SELECT 1', every => '1s')");
    wait_until("adb's scheduler", T, || scheduler_pid(&mut admin, "adb"));
    drop(alice);
    // Each fails late (no such tablespace), after its scheduler was
    // stopped; many in a row stop schedulers before they ever start.
    let mut elsewhere = cluster.connect_as("alice", "postgres");
    for _ in 0..30 {
        let (code, _, _, _) =
            expect_error(&mut elsewhere, "ALTER DATABASE adb SET TABLESPACE nosuch");
        assert_eq!(code, "42704");
    }
    // Every worker entry that never started is marked so, the scheduler
    // comes back, and jobs everywhere still run.
    wait_until("no scheduler stuck starting", T, || {
        let stuck: i64 = admin
            .query_one(
                "SELECT count(*) FROM bgw_list() WHERE kind = 'scheduler' \
                    AND state = 'starting' AND pid IS NULL",
                &[],
            )
            .unwrap()
            .get(0);
        (stuck == 0).then_some(())
    });
    wait_until("adb's scheduler back", T, || {
        scheduler_pid(&mut admin, "adb")
    });
    let mut alice = cluster.connect_as("alice", "adb");
    let n = succeeded_runs(&mut alice, 1);
    wait_for_runs_beyond(&mut alice, 1, n + 1);
    still_contained(&mut admin);
}

#[test]
fn a_terminated_scheduler_comes_back_and_keeps_no_job_slot() {
    // One job slot: a slot that a scheduler reserved and never launched,
    // if it stayed taken, would stop every run for good.
    let (cluster, mut admin) =
        start(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 1"]);
    let mut alice = owned_by_alice(&cluster, &mut admin);
    let id = job(&mut alice, "SELECT bgw_run('SELECT 1', every => '100ms')");
    wait_for_runs_beyond(&mut alice, id, 0);
    // Terminated as soon as it appears, so in the middle of its wakes
    // (reserving the slot of the next run, often); nothing else asks for
    // it: it must come back by itself each time.
    // Five times: more in a row, soon after each start, and the launcher
    // gives up until a job commits (`schedulers::MAX_FAILURES`).
    let mut killed = 0;
    let mut last = 0;
    while killed < 5 {
        let pid = wait_until("adb's scheduler back after pg_terminate_backend", T, || {
            admin
                .query_opt(
                    "SELECT pid FROM pg_stat_activity \
                      WHERE backend_type = 'bgworker_rs job scheduler' AND datname = 'adb' \
                        AND pid <> $1",
                    &[&last],
                )
                .unwrap()
                .map(|r| r.get::<_, i32>(0))
        });
        admin
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap();
        last = pid;
        killed += 1;
    }
    let n = succeeded_runs(&mut alice, id);
    wait_for_runs_beyond(&mut alice, id, n + 3);
    drop(alice);
    still_contained(&mut admin);
}

#[test]
fn a_scheduler_that_leaves_before_the_launcher_records_it_is_still_seen_to_exit() {
    // A slow launcher (test builds): each scheduler it starts looks, finds
    // nothing to do and leaves before the launcher records its handle.
    let (cluster, mut admin) = start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 8",
        "bgworker_rs.debug_launcher_pause_ms = 1000",
        "log_min_messages = debug1",
    ]);
    // CREATE EXTENSION asked for a scheduler here; with no job it leaves.
    cluster.wait_for_log("database \"postgres\": no active job; leaving", T);
    // The launcher must still see that exit, and start one for each job.
    for n in 1..=2 {
        let id = job(&mut admin, "SELECT bgw_run('SELECT 1')");
        let r = outcome(&mut admin, id);
        assert_eq!(status(&r).0, Some("succeeded"), "{r}");
        wait_until("the job's scheduler to leave", T, || {
            (cluster.log_count("database \"postgres\": no active job; leaving") > n).then_some(())
        });
    }
}

#[test]
fn a_database_owner_cannot_make_an_error_end_the_scheduler() {
    let (cluster, mut admin) = start(BASE);
    let mut alice = owned_by_alice(&cluster, &mut admin);
    // Would turn every ERROR the scheduler handles into a FATAL exit.
    alice
        .batch_execute("ALTER DATABASE adb SET exit_on_error = on")
        .unwrap();
    drop(alice);
    let mut alice = cluster.connect_as("alice", "adb");
    let id = job(&mut alice, "SELECT bgw_run('SELECT 1', every => '200ms')");
    wait_for_runs_beyond(&mut alice, id, 0);
    let pid = wait_until("adb's scheduler", T, || scheduler_pid(&mut admin, "adb"));
    // A lock the scheduler waits on until its lock_timeout: an ERROR in a
    // wake, which it handles.
    let mut locker = cluster.connect_as("postgres", "adb");
    locker
        .batch_execute("BEGIN; LOCK TABLE bgw_job_runs IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let waiting = |admin: &mut Client| -> i64 {
        admin
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted",
                &[&pid],
            )
            .unwrap()
            .get(0)
    };
    wait_until("the scheduler waiting for the lock", T, || {
        (waiting(&mut admin) > 0).then_some(())
    });
    wait_until("the scheduler's lock_timeout", T, || {
        (waiting(&mut admin) == 0).then_some(())
    });
    locker.batch_execute("COMMIT").unwrap();
    // (The job that met the lock is left alone for a while; a new one runs.)
    let other = job(&mut alice, "SELECT bgw_run('SELECT 2')");
    let r = outcome(&mut alice, other);
    assert_eq!(status(&r).0, Some("succeeded"), "{r}");
    assert_ne!(id, other);
    assert_eq!(
        scheduler_pid(&mut admin, "adb"),
        Some(pid),
        "the scheduler exited:\n{}",
        cluster.log()
    );
    drop(alice);
    still_contained(&mut admin);
}

#[test]
fn a_cancelled_rename_releases_the_scheduler() {
    let (cluster, mut admin) = start(BASE);
    let mut alice = owned_by_alice(&cluster, &mut admin);
    let id = job(&mut alice, "SELECT bgw_run('SELECT 1', every => '300ms')");
    wait_for_runs_beyond(&mut alice, id, 0);
    drop(alice);
    let mut elsewhere = cluster.connect_as("alice", "postgres");
    // Cancelled while it waits for the scheduler to exit.
    let _ = elsewhere
        .batch_execute("SET statement_timeout = '1ms'; ALTER DATABASE adb RENAME TO other");
    elsewhere.batch_execute("RESET statement_timeout").unwrap();
    let mut alice = cluster.connect_as("alice", "adb");
    let n = succeeded_runs(&mut alice, id);
    wait_for_runs_beyond(&mut alice, id, n + 2);
    still_contained(&mut admin);
}

#[test]
fn database_settings_cannot_wedge_a_scheduler() {
    let (cluster, mut admin) = start(BASE);
    let mut alice = owned_by_alice(&cluster, &mut admin);
    alice
        .batch_execute(
            "ALTER DATABASE adb SET default_transaction_read_only = on; \
             ALTER DATABASE adb SET statement_timeout = '1ms'; \
             ALTER DATABASE adb SET default_transaction_isolation = 'serializable'; \
             ALTER DATABASE adb SET idle_in_transaction_session_timeout = '1ms'",
        )
        .unwrap();
    drop(alice);
    // A session of alice's (the database is read-only by default now, with
    // a 1 ms statement timeout: set aside from the start, as a statement to
    // set them aside could itself time out) creates a job: the scheduler,
    // which must write, runs it anyway, and leaves when idle.
    let mut alice = cluster.connect_with_options(
        "alice",
        "adb",
        "-c default_transaction_read_only=off -c statement_timeout=0",
    );
    let id = job(&mut alice, "SELECT bgw_run('SELECT 1 AS one')");
    let r = finished_run(&mut alice, id, 1);
    assert!(r["status"].is_string(), "{r}");
    wait_for_schedulers(&mut admin, &[]);
    assert!(
        !cluster
            .log()
            .contains("cannot execute UPDATE in a read-only transaction"),
        "the scheduler ran read-only"
    );
    still_contained(&mut admin);
}
