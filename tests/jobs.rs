//! SQL jobs through a real server: bgw_run, bgw_result, bgw_cancel, the
//! bgw_jobs view and the bgw_job_runs table, the scheduler's limits, and
//! what a crash leaves behind.

mod common;

use common::jobs::finished_run;
use common::*;
use postgres::Client;
use serde_json::Value;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// No static workers: the jobs have the server to themselves. (The harness
/// turns jobs off for the other suites.)
const BASE: &[&str] = &["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 8"];

fn run(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// bgw_result(job, '30s') as JSON; panics on NULL.
fn result(c: &mut Client, job: i64) -> Value {
    let text: Option<String> = c
        .query_one("SELECT bgw_result($1, '30s')::text", &[&job])
        .unwrap_or_else(|e| panic!("bgw_result({job}): {e}"))
        .get(0);
    let text = text.unwrap_or_else(|| panic!("bgw_result({job}) is NULL"));
    serde_json::from_str(&text).expect("bgw_result returns JSON")
}

/// (status, sqlstate, error) of a bgw_result outcome.
fn status_code_error(r: &Value) -> (Option<&str>, Option<&str>, Option<&str>) {
    (
        r["status"].as_str(),
        r["sqlstate"].as_str(),
        r["error"].as_str(),
    )
}

/// The pid of a job's run in progress, from the view bgw_jobs.
fn job_pid(c: &mut Client, job: i64) -> Option<i32> {
    c.query_one("SELECT pid FROM bgw_jobs WHERE id = $1", &[&job])
        .expect("bgw_jobs")
        .get(0)
}

fn job_state(c: &mut Client, job: i64) -> String {
    c.query_one("SELECT state FROM bgw_jobs WHERE id = $1", &[&job])
        .expect("bgw_jobs")
        .get(0)
}

fn finished_runs(c: &mut Client, job: i64) -> i64 {
    c.query_one(
        "SELECT count(*) FROM bgw_job_runs WHERE job = $1 AND finished_at IS NOT NULL",
        &[&job],
    )
    .expect("bgw_job_runs")
    .get(0)
}

fn wait_runs(c: &mut Client, job: i64, n: i64) {
    wait_until(&format!("{n} finished runs of job {job}"), T, || {
        (finished_runs(c, job) >= n).then_some(())
    });
}

#[test]
fn a_job_runs_once_and_hands_back_its_rows() {
    let (cluster, mut c) = start_with_extension(BASE);
    let job = run(
        &mut c,
        "SELECT bgw_run($$SELECT g AS n, g % 2 = 0 AS even, 'row ' || g AS label, \
                        NULL::int AS nothing, jsonb_build_object('g', g) AS doc, 1.5::float8 AS f \
                        FROM generate_series(1, 3) g$$)",
    );
    let r = result(&mut c, job);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["job"], job);
    assert_eq!(r["run"], 1);
    assert_eq!(r["rows"], 3);
    assert_eq!(r["sqlstate"], Value::Null);
    assert_eq!(
        r["result"][1],
        serde_json::json!({"n": 2, "even": true, "label": "row 2", "nothing": null, "doc": {"g": 2}, "f": 1.5})
    );
    assert_eq!(r["result"].as_array().map(Vec::len), Some(3));
    assert!(r["pid"].as_i64().is_some_and(|p| p > 0), "{r}");
    // bgw_result returns the outcome as the worker left it; the scheduler
    // records it and finishes the job a moment later.
    wait_until("the job to be finished", T, || {
        (job_state(&mut c, job) == "finished").then_some(())
    });
    // Once finished, bgw_result returns the last run at once.
    assert_eq!(result(&mut c, job)["run"], 1);

    // The statement ran as the caller, in the caller's database, and the
    // row count of a statement without result rows is the rows it changed.
    c.batch_execute("CREATE TABLE items (x int)").unwrap();
    let job = run(
        &mut c,
        "SELECT bgw_run('INSERT INTO items SELECT generate_series(1, 5)')",
    );
    let r = result(&mut c, job);
    assert_eq!(
        (r["status"].as_str(), r["rows"].as_i64()),
        (Some("succeeded"), Some(5))
    );
    assert_eq!(r["result"], serde_json::json!([]));
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM items"), 5);

    // The result is bounded: 100,000 rows are counted, a few kB are kept.
    let job = run(
        &mut c,
        "SELECT bgw_run('SELECT g FROM generate_series(1, 100000) g')",
    );
    let r = result(&mut c, job);
    assert_eq!(r["rows"], 100_000);
    let kept = r["result"].as_array().map_or(0, Vec::len);
    assert!(kept > 100 && kept < 100_000, "kept {kept} rows");
    assert_eq!(r["result"][0], serde_json::json!({"g": 1}));
    drop(cluster);
}

#[test]
fn failures_are_recorded_never_crash_and_stay_apart() {
    let (cluster, mut c) = start_with_extension(BASE);
    let started = scalar_i64(
        &mut c,
        "SELECT extract(epoch FROM pg_postmaster_start_time())::int8",
    );
    let bad = run(&mut c, "SELECT bgw_run('SELEC 1')");
    let div = run(&mut c, "SELECT bgw_run('SELECT 1/0')");
    let slow = run(
        &mut c,
        "SELECT bgw_run('SELECT pg_sleep(60)', timeout => '300ms')",
    );
    let good = run(&mut c, "SELECT bgw_run('SELECT 42 AS answer')");

    let r = result(&mut c, bad);
    assert_eq!(
        status_code_error(&r),
        (
            Some("failed"),
            Some("42601"),
            Some("syntax error at or near \"SELEC\"")
        )
    );
    let r = result(&mut c, div);
    assert_eq!(
        status_code_error(&r),
        (Some("failed"), Some("22012"), Some("division by zero"))
    );
    let r = result(&mut c, slow);
    assert_eq!(
        status_code_error(&r),
        (
            Some("timed out"),
            Some("57014"),
            Some("canceling statement due to statement timeout")
        )
    );
    let r = result(&mut c, good);
    assert_eq!(r["status"], "succeeded");
    assert_eq!(r["result"], serde_json::json!([{"answer": 42}]));

    // Nothing crashed: same postmaster, the scheduler still listed running.
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT extract(epoch FROM pg_postmaster_start_time())::int8"
        ),
        started
    );
    let scheduler: Vec<_> = bgw_list(&mut c)
        .into_iter()
        .filter(|r| r.0 == "scheduler" && r.2.is_some())
        .collect();
    assert_eq!(scheduler.len(), 1, "{scheduler:?}");
    assert_eq!((scheduler[0].3.as_str(), scheduler[0].4), ("running", 0));
    drop(cluster);
}

#[test]
fn recurring_jobs_keep_their_interval_and_stop_when_cancelled() {
    let (cluster, mut c) = start_with_extension(BASE);
    // Fails every time, and still keeps to its interval.
    let failing = run(&mut c, "SELECT bgw_run('SELECT 1/0', every => '400ms')");
    let clock = run(&mut c, "SELECT bgw_run('SELECT now()', every => '100ms')");
    wait_runs(&mut c, failing, 4);
    let statuses: Vec<String> = c
        .query(
            "SELECT DISTINCT status FROM bgw_job_runs WHERE job = $1 AND finished_at IS NOT NULL",
            &[&failing],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(statuses, ["failed"]);
    let min_gap_ms = scalar_i64(
        &mut c,
        &format!(
            "SELECT (min(gap) * 1000)::int8 FROM (SELECT extract(epoch FROM started_at - lag(started_at) OVER (ORDER BY run)) AS gap \
               FROM bgw_job_runs WHERE job = {failing}) g"
        ),
    );
    // A spinning job would start its runs milliseconds apart.
    assert!(min_gap_ms >= 200, "runs only {min_gap_ms} ms apart");
    assert_eq!(job_state(&mut c, failing), "scheduled");

    // bgw_result on a scheduled job waits for its next run.
    let before = finished_runs(&mut c, clock);
    let r = result(&mut c, clock);
    assert!(
        r["run"].as_i64().unwrap_or(0) > before,
        "{r} after {before} runs"
    );

    // Cancelled: no further run, while the clock job keeps running.
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&failing])
            .unwrap()
            .get::<_, bool>(0)
    );
    assert_eq!(job_state(&mut c, failing), "cancelled");
    let runs = finished_runs(&mut c, failing);
    let clock_runs = finished_runs(&mut c, clock);
    wait_runs(&mut c, clock, clock_runs + 10); // ten clock ticks: 2.5 intervals
    assert_eq!(finished_runs(&mut c, failing), runs, "a cancelled job ran");
    // No further run will come: bgw_result returns its last one at once.
    assert_eq!(result(&mut c, failing)["run"].as_i64(), Some(runs));
    // Cancelling again changes nothing.
    assert!(
        !c.query_one("SELECT bgw_cancel($1)", &[&failing])
            .unwrap()
            .get::<_, bool>(0)
    );
    drop(cluster);
}

#[test]
fn cancel_stops_a_running_job_at_once() {
    let (cluster, mut c) = start_with_extension(BASE);
    let job = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    let pid: i32 = wait_until("the job's pid in bgw_jobs", T, || job_pid(&mut c, job));
    assert_eq!(job_state(&mut c, job), "running");
    assert!(
        bgw_list(&mut c)
            .iter()
            .any(|r| r.0 == "job" && r.2 == Some(pid))
    );
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&job])
            .unwrap()
            .get::<_, bool>(0)
    );
    let r = result(&mut c, job);
    assert_eq!(
        status_code_error(&r),
        (
            Some("cancelled"),
            Some("57P01"),
            Some("cancelled by bgw_cancel()")
        ),
        "{r}"
    );

    // A run stopped from outside (bgw_terminate) counts as cancelled too,
    // and a recurring job goes on.
    let job = run(
        &mut c,
        "SELECT bgw_run('SELECT pg_sleep(600)', every => '1s')",
    );
    let pid: i32 = wait_until("the recurring job's pid", T, || job_pid(&mut c, job));
    // The scheduler does not spin while an overdue job's run goes on: over
    // another job's half-second run it wakes a handful of times, not
    // thousands.
    let woken = |c: &mut Client| {
        scalar_i64(
            c,
            "SELECT iterations FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL",
        )
    };
    let before = woken(&mut c);
    let clock = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(0.5)')");
    assert_eq!(result(&mut c, clock)["status"], "succeeded");
    let wakeups = woken(&mut c) - before;
    assert!(wakeups < 50, "the scheduler woke {wakeups} times");
    assert!(
        c.query_one("SELECT bgw_terminate($1)", &[&pid])
            .unwrap()
            .get::<_, bool>(0)
    );
    // (Not bgw_result: by the time it looks, run 2 may be in progress.)
    wait_runs(&mut c, job, 1);
    let r = c
        .query_one(
            "SELECT status, sqlstate, error FROM bgw_job_runs WHERE job = $1 AND run = 1",
            &[&job],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ),
        (
            "cancelled".to_string(),
            "57P01".to_string(),
            "the run's worker was terminated".to_string()
        )
    );
    wait_until("the recurring job's second run", T, || {
        job_pid(&mut c, job).filter(|&p| p != pid)
    });
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&job])
            .unwrap()
            .get::<_, bool>(0)
    );
    // The view says running until the scheduler has recorded the run.
    wait_until("the cancelled job's state", T, || {
        (job_state(&mut c, job) == "cancelled").then_some(())
    });
    drop(cluster);
}

/// bgw_cancel while the scheduler is starting the run, at each step of the
/// start: the queued run locked by the scheduler but no job slot taken yet,
/// and the run committed as running but no worker registered yet. (Test
/// builds pause the scheduler there, and log when.) The run is stopped
/// either way and never does its work, or (a run that ended before the
/// cancel could go on) bgw_cancel says it cancelled nothing; before, it
/// said it cancelled the job while the run escaped and ran to its end.
#[test]
fn a_cancel_while_the_run_is_being_started_stops_it() {
    for at in ["reserve", "launch"] {
        let pause = format!("bgworker_rs.debug_pause_before_{at}_ms = 3000");
        let (cluster, mut c) = start_with_extension(&[BASE, &[pause.as_str()]].concat());
        c.batch_execute("CREATE TABLE hits (x int)").unwrap();
        let job = run(&mut c, "SELECT bgw_run('INSERT INTO hits VALUES (1)')");
        cluster.wait_for_log(&format!("test pause before {at}: job {job} run 1,"), T);
        let cancelled: bool = c
            .query_one("SELECT bgw_cancel($1)", &[&job])
            .unwrap()
            .get(0);
        let r = finished_run(&mut c, job, 1);
        let hits = scalar_i64(&mut c, "SELECT count(*) FROM hits");
        if at == "launch" || r["status"] == "cancelled" {
            // The worker was stopped before it ran anything.
            assert!(cancelled, "{at}: bgw_cancel found nothing to cancel");
            assert_eq!(
                status_code_error(&r),
                (
                    Some("cancelled"),
                    Some("57P01"),
                    Some("cancelled by bgw_cancel()")
                ),
                "{at}: {r}"
            );
            assert_eq!(hits, 0, "{at}: the cancelled run did its work");
            assert_eq!(job_state(&mut c, job), "cancelled", "{at}");
        } else {
            // Before a slot is taken bgw_cancel waits for the start to
            // commit; on a loaded machine so short a run can end before the
            // stop reaches it. Then it is recorded as what it was.
            assert_eq!(status_code_error(&r).0, Some("succeeded"), "{r}");
            assert_eq!(hits, 1);
        }
        // No worker of it is shown starting for ever.
        assert_eq!(
            scalar_i64(
                &mut c,
                "SELECT count(*) FROM bgw_list() WHERE kind = 'job' AND state = 'starting'"
            ),
            0,
            "{at}: {:?}",
            bgw_list(&mut c)
        );
        // Nothing is left behind: another job runs (after its own pause).
        let other = run(&mut c, "SELECT bgw_run('SELECT 1 AS ok')");
        assert_eq!(result(&mut c, other)["status"], "succeeded", "{at}");
        drop(cluster);
    }
}

/// bgw_cancel in an open transaction, of a job whose run found no worker
/// (it is started again at every wake, so the cancel never finds it
/// queued): while that transaction is open, the run does not start, even
/// once a worker slot frees; when it commits, the run is cancelled without
/// having run. Before, the scheduler read the job as still scheduled and
/// started the run, which nobody then stopped.
#[test]
fn a_run_waiting_for_a_worker_never_starts_while_its_cancel_is_open() {
    // Our launcher, the scheduler and PostgreSQL's logical replication
    // launcher leave two worker slots; our registry (sized by
    // max_worker_processes) has room for a third run, which waits.
    let (cluster, mut c) = start_with_extension(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 3",
        "max_worker_processes = 5",
        "max_parallel_workers_per_gather = 0",
    ]);
    c.batch_execute("CREATE TABLE hits (x int)").unwrap();
    let blockers: Vec<i64> = (0..2)
        .map(|_| run(&mut c, "SELECT bgw_run('SELECT pg_sleep(120)')"))
        .collect();
    wait_until("two runs with a worker", T, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_jobs WHERE state = 'running' AND pid IS NOT NULL",
        ) == 2)
            .then_some(())
    });
    let woken = |c: &mut Client| {
        scalar_i64(
            c,
            "SELECT iterations FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL",
        )
    };
    let job = run(&mut c, "SELECT bgw_run('INSERT INTO hits VALUES (1)')");
    let w = woken(&mut c);
    wait_until("the run to be tried and wait for a worker", T, || {
        (woken(&mut c) >= w + 2).then_some(())
    });

    let mut canceller = cluster.connect();
    canceller.batch_execute("BEGIN").unwrap();
    assert!(
        canceller
            .query_one("SELECT bgw_cancel($1)", &[&job])
            .unwrap()
            .get::<_, bool>(0)
    );
    // A worker slot frees; the scheduler looks at the queue twice more.
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&blockers[0]])
            .unwrap()
            .get::<_, bool>(0)
    );
    wait_until("the first blocker recorded", T, || {
        (job_state(&mut c, blockers[0]) == "cancelled").then_some(())
    });
    let w = woken(&mut c);
    wait_until("two more wakes of the scheduler", T, || {
        (woken(&mut c) >= w + 2).then_some(())
    });
    canceller.batch_execute("COMMIT").unwrap();
    let r = finished_run(&mut c, job, 1);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM hits"),
        0,
        "the cancelled run ran"
    );

    // The same for a finished job run again (bgw_run_now), whose state is
    // not 'scheduled'.
    let done = run(&mut c, "SELECT bgw_run('INSERT INTO hits VALUES (2)')");
    wait_until("the job to finish", T, || {
        (job_state(&mut c, done) == "finished").then_some(())
    });
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(120)')");
    wait_until("two runs with a worker again", T, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_jobs WHERE state = 'running' AND pid IS NOT NULL",
        ) == 2)
            .then_some(())
    });
    c.batch_execute(&format!("SELECT bgw_run_now({done})"))
        .unwrap();
    let w = woken(&mut c);
    wait_until("the run to be tried and wait for a worker", T, || {
        (woken(&mut c) >= w + 2).then_some(())
    });
    canceller.batch_execute("BEGIN").unwrap();
    assert!(
        canceller
            .query_one("SELECT bgw_cancel($1)", &[&done])
            .unwrap()
            .get::<_, bool>(0),
        "bgw_cancel found nothing to cancel"
    );
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&blocker])
            .unwrap()
            .get::<_, bool>(0)
    );
    wait_until("the blocker recorded", T, || {
        (job_state(&mut c, blocker) == "cancelled").then_some(())
    });
    let w = woken(&mut c);
    wait_until("two more wakes of the scheduler", T, || {
        (woken(&mut c) >= w + 2).then_some(())
    });
    canceller.batch_execute("COMMIT").unwrap();
    let r = finished_run(&mut c, done, 2);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM hits WHERE x = 2"),
        1,
        "the cancelled second run ran"
    );

    // Nothing is held: with the other blocker cancelled, a job runs.
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&blockers[1]])
            .unwrap()
            .get::<_, bool>(0)
    );
    let other = run(&mut c, "SELECT bgw_run('SELECT 1 AS ok')");
    assert_eq!(result(&mut c, other)["status"], "succeeded");
}

/// bgw_cancel of a finished job with a run queued again (bgw_run_now)
/// cancels the run and the job, as when that run is already going.
#[test]
fn cancelling_a_finished_job_with_a_queued_run_cancels_both() {
    let (_cluster, mut c) =
        start_with_extension(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 1"]);
    let done = run(&mut c, "SELECT bgw_run('SELECT 1')");
    assert_eq!(result(&mut c, done)["status"], "succeeded");
    wait_until("the job to finish", T, || {
        (job_state(&mut c, done) == "finished").then_some(())
    });
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocker to run", T, || job_pid(&mut c, blocker));
    c.batch_execute(&format!("SELECT bgw_run_now({done})"))
        .unwrap();
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&done])
            .unwrap()
            .get::<_, bool>(0)
    );
    let r = finished_run(&mut c, done, 2);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(job_state(&mut c, done), "cancelled");
    let e = c
        .query_one("SELECT bgw_run_now($1)", &[&done])
        .expect_err("a run of a cancelled job");
    assert_eq!(e.code().map(|s| s.code()), Some("55000"), "{e}");
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&blocker])
            .unwrap()
            .get::<_, bool>(0)
    );
}

/// A one-shot job whose run bgw_cancel stopped is cancelled, even when the
/// scheduler records the stopped run (and would mark the job finished)
/// before bgw_cancel updates the job: test builds pause it there.
#[test]
fn a_cancelled_one_shot_job_is_cancelled_not_finished() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let job = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the run", T, || job_pid(&mut c, job));
    c.batch_execute("SET bgworker_rs.debug_cancel_pause_ms = 3000")
        .unwrap();
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&job])
            .unwrap()
            .get::<_, bool>(0)
    );
    let r = finished_run(&mut c, job, 1);
    assert_eq!(r["status"], "cancelled", "{r}");
    wait_until("the job's state", T, || {
        let state = job_state(&mut c, job);
        (state != "running").then_some(state)
    });
    assert_eq!(job_state(&mut c, job), "cancelled");
}

/// A start that fails after its job slot was taken (test builds raise an
/// error there for job 1) gives the slot back: with one job slot, the next
/// job runs. Before, the slot stayed taken until the scheduler restarted.
#[test]
fn a_start_that_fails_after_taking_a_slot_gives_it_back() {
    let (_cluster, mut c) = start_with_extension(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 1",
        "bgworker_rs.debug_error_after_reserve_job = 1",
    ]);
    let failing = run(&mut c, "SELECT bgw_run('SELECT 1')");
    assert_eq!(failing, 1);
    // The scheduler gives the job up: its queued run cancelled, and one
    // more run recorded failed with the error.
    wait_until("the failing job to be given up", T, || {
        (job_state(&mut c, failing) == "cancelled").then_some(())
    });
    let r = finished_run(&mut c, failing, 2);
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("slot was taken")),
        "{r}"
    );
    let other = run(&mut c, "SELECT bgw_run('SELECT 2 AS two')");
    let r = result(&mut c, other);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"][0]["two"], 2, "{r}");
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_list() WHERE kind = 'job' AND state = 'starting'"
        ),
        0
    );
}

/// The statements the scheduler keeps plans for (`store::Kept`), in a
/// dump of its memory contexts: `CachedPlanSource` contexts named by their
/// text. (PostgreSQL's own foreign-key check plans, `FROM ONLY`, are not
/// ours.)
fn kept_plans(cluster: &Cluster, c: &mut Client, pid: i32) -> usize {
    let me = format!("[{pid}] ");
    let dumps = |log: &str| log.matches(&format!("{me}LOG:  Grand total")).count();
    let before = dumps(&cluster.log());
    c.execute("SELECT pg_log_backend_memory_contexts($1)", &[&pid])
        .unwrap();
    wait_until("the scheduler's memory context dump", T, || {
        (dumps(&cluster.log()) > before).then_some(())
    });
    let log = cluster.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&me)).collect();
    let end = lines
        .iter()
        .rposition(|l| l.contains("LOG:  Grand total"))
        .expect("a dump");
    let start = lines[..end]
        .iter()
        .rposition(|l| l.contains("TopMemoryContext"))
        .expect("the dump's start");
    lines[start..end]
        .iter()
        .filter(|l| l.contains("CachedPlanSource") && l.contains("bgw_job_"))
        .filter(|l| !l.contains("FROM ONLY"))
        .count()
}

/// The scheduler keeps the plans of the statements it runs at every wake,
/// and PostgreSQL's plan cache keeps them right when the tables change
/// under them; a scheduler with nothing due for a while frees them, and
/// plans again when work comes.
#[test]
fn kept_plans_follow_changes_to_the_tables_and_are_freed_when_idle() {
    let (cluster, mut c) = start_with_extension(BASE);
    // Keeps the scheduler there, with nothing due for a day.
    run(
        &mut c,
        "SELECT bgw_run('SELECT 1', every => '1 day', at => now() + interval '1 day')",
    );
    let job = run(&mut c, "SELECT bgw_run('SELECT 1', every => '200ms')");
    wait_runs(&mut c, job, 3);
    let pid: i32 = wait_until("the scheduler", T, || {
        c.query_opt(
            "SELECT pid FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0))
    });
    let busy = kept_plans(&cluster, &mut c, pid);
    assert!(
        busy >= 5,
        "{busy} kept plans while a job runs 5 times a second"
    );

    // Columns added and dropped, an index, the table rewritten: each run
    // is still queued, started and recorded through those plans.
    let n = finished_runs(&mut c, job);
    for change in [
        "ALTER TABLE bgw_job_runs ADD COLUMN note text",
        "CREATE INDEX runs_started ON bgw_job_runs (started_at)",
        "VACUUM FULL bgw_job_runs",
        "ALTER TABLE bgw_job_runs DROP COLUMN note",
        "ALTER TABLE bgw_job_defs ADD COLUMN note int",
        "ALTER TABLE bgw_job_defs DROP COLUMN note",
    ] {
        c.batch_execute(change).unwrap();
    }
    wait_runs(&mut c, job, n + 3);
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE status <> 'succeeded'), count(*) \
               FROM bgw_job_runs WHERE job = $1 AND finished_at IS NOT NULL",
            &[&job],
        )
        .unwrap();
    assert_eq!(
        r.get::<_, i64>(0),
        0,
        "runs failed after the tables changed"
    );
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_job_runs WHERE pid IS NULL AND finished_at IS NOT NULL AND status = 'succeeded'"
        ),
        0,
        "outcomes recorded without their pid"
    );

    // Nothing due for a day: the plans are freed before the long sleep,
    // once no run was recorded or started for 10 s.
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&job])
            .unwrap()
            .get::<_, bool>(0)
    );
    wait_until("the cancelled job's state", T, || {
        (job_state(&mut c, job) == "cancelled").then_some(())
    });
    wait_until("the idle scheduler to free its plans", T, || {
        (kept_plans(&cluster, &mut c, pid) == 0).then_some(())
    });
    // And work comes back: planned again, by the same scheduler.
    let again = run(&mut c, "SELECT bgw_run('SELECT 2 AS two')");
    let r = result(&mut c, again);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["result"][0]["two"], 2, "{r}");
    let same: Option<i32> = c
        .query_one(
            "SELECT pid FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(same, Some(pid), "the scheduler restarted");
}

#[test]
fn a_job_can_notify_listeners() {
    let (cluster, mut c) = start_with_extension(BASE);
    let mut listener = cluster.connect();
    listener.batch_execute("LISTEN bgw_jobs_test").unwrap();
    let job = run(
        &mut c,
        "SELECT bgw_run($$SELECT pg_notify('bgw_jobs_test', 'from job ' || current_user)$$)",
    );
    assert_eq!(result(&mut c, job)["status"], "succeeded");
    let note = wait_until("a notification from the job", T, || {
        listener.batch_execute("SELECT 1").ok()?;
        use postgres::fallible_iterator::FallibleIterator;
        listener.notifications().iter().next().ok().flatten()
    });
    assert_eq!(note.channel(), "bgw_jobs_test");
    assert_eq!(note.payload(), "from job postgres");
    drop(cluster);
}

#[test]
fn jobs_run_in_other_databases_and_as_other_roles() {
    let (cluster, mut c) = start_with_extension(BASE);
    c.batch_execute("CREATE DATABASE other").unwrap();
    c.batch_execute(
        "CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN; \
         GRANT EXECUTE ON FUNCTION bgw_run(text, interval, name, name, interval, boolean, boolean, timestamptz), \
               bgw_result(int8, interval), bgw_cancel(int8) TO alice, bob; \
         GRANT SELECT ON bgw_jobs TO alice",
    )
    .unwrap();
    let job = run(
        &mut c,
        "SELECT bgw_run('SELECT current_database()::text AS db, current_user::text AS who', \
                        database => 'other', role => 'alice')",
    );
    let r = result(&mut c, job);
    assert_eq!(
        r["result"],
        serde_json::json!([{"db": "other", "who": "alice"}]),
        "{r}"
    );

    // Jobs are kept where they are created, in any database with the
    // extension; a template database keeps none (55000).
    let mut other = cluster.connect_as("postgres", "other");
    other.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let here = run(
        &mut other,
        "SELECT bgw_run('SELECT current_database()::text AS db')",
    );
    assert_eq!(
        result(&mut other, here)["result"],
        serde_json::json!([{"db": "other"}])
    );
    c.batch_execute("ALTER DATABASE other IS_TEMPLATE true")
        .unwrap();
    let (code, message, _, hint) = expect_error(&mut other, "SELECT bgw_run('SELECT 1')");
    assert_eq!(code, "55000");
    assert_eq!(
        message,
        "cannot create or change a bgworker_rs job in template database \"other\""
    );
    assert!(hint.is_some_and(|h| h.contains("database =>")));
    c.batch_execute("ALTER DATABASE other IS_TEMPLATE false")
        .unwrap();

    // Non-superusers: only as roles whose privileges they have, and only
    // their own jobs.
    let mut alice = cluster.connect_as("alice", "postgres");
    let mut bob = cluster.connect_as("bob", "postgres");
    let (code, message, _, _) =
        expect_error(&mut alice, "SELECT bgw_run('SELECT 1', role => 'postgres')");
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "42501",
            "permission denied to launch a worker as role \"postgres\""
        )
    );
    let job = run(
        &mut alice,
        "SELECT bgw_run('SELECT current_user::text AS who')",
    );
    assert_eq!(
        result(&mut alice, job)["result"],
        serde_json::json!([{"who": "alice"}])
    );
    // With SELECT granted on the view, alice reads it (the job is finished
    // once the scheduler has recorded the outcome bgw_result returned).
    wait_until("alice's job to be finished", T, || {
        let r = alice
            .query_one(
                "SELECT created_by::text, state FROM bgw_jobs WHERE id = $1",
                &[&job],
            )
            .expect("alice reads bgw_jobs");
        let (who, state): (String, String) = (r.get(0), r.get(1));
        assert_eq!(who, "alice");
        (state == "finished").then_some(())
    });
    let (code, message, _, _) = expect_error(&mut bob, &format!("SELECT bgw_result({job})"));
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "42501",
            format!("permission denied for bgworker_rs job {job}").as_str()
        )
    );
    let (code, _, _, _) = expect_error(&mut bob, &format!("SELECT bgw_cancel({job})"));
    assert_eq!(code, "42501");
    // The tables themselves are not readable without a grant.
    let (code, _, _, _) = expect_error(&mut bob, "SELECT * FROM bgw_job_runs");
    assert_eq!(code, "42501");

    // A creator who loses the rights loses the job's runs too.
    c.batch_execute("GRANT bob TO alice").unwrap();
    let job = run(
        &mut alice,
        "SELECT bgw_run('SELECT current_user::text AS who', every => '200ms', role => 'bob')",
    );
    assert_eq!(
        result(&mut alice, job)["result"],
        serde_json::json!([{"who": "bob"}])
    );
    c.batch_execute("REVOKE bob FROM alice").unwrap();
    let r = wait_until("a run refused after the revoke", T, || {
        let r = result(&mut c, job);
        (r["status"] == "failed").then_some(r)
    });
    assert_eq!(r["sqlstate"], "42501");
    assert_eq!(
        r["error"],
        "role \"alice\" may no longer run jobs as role \"bob\" in database \"postgres\""
    );
    drop(cluster);
}

/// Without a free slot a run waits in the queue; it fails with 53000 only
/// once it has waited a period (or `queue_timeout`), and a recurring job's
/// next tick finds the slot again.
#[test]
fn without_free_slots_runs_wait_then_fail_with_53000() {
    let waited = "the run waited ";
    let limits = "for a free slot and could not start: all 1 job slots (bgworker_rs.max_jobs) \
                  or all background worker slots (max_worker_processes) were in use";
    let (cluster, mut c) =
        start_with_extension(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 1"]);
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocking job to run", T, || job_pid(&mut c, blocker));
    let recurring = run(
        &mut c,
        "SELECT bgw_run('SELECT 1 AS one', every => '200ms')",
    );
    let r = result(&mut c, recurring);
    let (status, code, error) = status_code_error(&r);
    assert_eq!((status, code), (Some("failed"), Some("53000")), "{r}");
    let error = error.unwrap_or_default();
    assert!(
        error.starts_with(waited) && error.ends_with(limits),
        "{error}"
    );
    assert!(
        c.query_one("SELECT bgw_cancel($1)", &[&blocker])
            .unwrap()
            .get::<_, bool>(0)
    );
    let r = wait_until("a run that found a slot", T, || {
        let r = result(&mut c, recurring);
        (r["status"] == "succeeded").then_some(r)
    });
    assert_eq!(r["result"], serde_json::json!([{"one": 1}]));
    drop(cluster);

    // Worker slots: max_worker_processes leaves one for the job launcher,
    // one for the database's scheduler, one for the logical replication
    // launcher, and one for a run. A one-shot job waits queue_timeout.
    let conf = [
        BASE,
        &[
            "max_worker_processes = 4",
            "bgworker_rs.queue_timeout = '1s'",
        ],
    ]
    .concat();
    let (cluster, mut c) = start_with_extension(&conf);
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocking job to run", T, || job_pid(&mut c, blocker));
    let job = run(&mut c, "SELECT bgw_run('SELECT 1')");
    let r = result(&mut c, job);
    let (status, code, error) = status_code_error(&r);
    assert_eq!((status, code), (Some("failed"), Some("53000")), "{r}");
    assert!(error.unwrap_or_default().starts_with(waited), "{r}");
    wait_until("the one-shot job to finish", T, || {
        (job_state(&mut c, job) == "finished").then_some(())
    });
    drop(cluster);
}

#[test]
fn runs_survive_restarts_and_a_crash_marks_unfinished_runs_failed() {
    let (mut cluster, mut c) = start_with_extension(BASE);
    let done = run(&mut c, "SELECT bgw_run('SELECT 7 AS seven')");
    assert_eq!(result(&mut c, done)["status"], "succeeded");
    let recurring = run(&mut c, "SELECT bgw_run('SELECT 1', every => '200ms')");
    let sleeper = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the sleeping job to run", T, || job_pid(&mut c, sleeper));
    drop(c);

    // A crash: a backend killed with SIGKILL makes the postmaster reinitialize.
    let mut victim = cluster.connect();
    let victim_pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert!(signal(victim_pid, "KILL"));
    let mut c = wait_until("the server back after the crash", T, || {
        let mut c = cluster.try_connect_as("postgres", "postgres").ok()?;
        let r = c
            .query_one(
                "SELECT status, sqlstate, error FROM bgw_job_runs WHERE job = $1 AND run = 1",
                &[&sleeper],
            )
            .ok()?;
        (r.get::<_, String>(0) != "running").then_some(c)
    });
    let r = c
        .query_one(
            "SELECT status, sqlstate, error FROM bgw_job_runs WHERE job = $1 AND run = 1",
            &[&sleeper],
        )
        .unwrap();
    assert_eq!(
        (
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, String>(2)
        ),
        (
            "failed".to_string(),
            "57P02".to_string(),
            "the run was interrupted: the server crashed or restarted before it finished"
                .to_string()
        )
    );
    assert_eq!(job_state(&mut c, sleeper), "finished");
    // What finished before is still there, and the recurring job goes on.
    assert_eq!(
        result(&mut c, done)["result"],
        serde_json::json!([{"seven": 7}])
    );
    let runs = finished_runs(&mut c, recurring);
    wait_runs(&mut c, recurring, runs + 2);

    // A clean restart: the recurring job is still scheduled afterwards.
    drop(c);
    cluster.restart();
    let mut c = cluster.connect();
    let runs = finished_runs(&mut c, recurring);
    wait_runs(&mut c, recurring, runs + 2);
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_job_runs WHERE finished_at IS NULL AND started_at < now() - interval '10 seconds'"
        ),
        0,
        "a run left unfinished"
    );
    drop(cluster);
}

#[test]
fn a_rolled_back_job_never_runs() {
    let (cluster, mut c) = start_with_extension(BASE);
    let mut tx = c.transaction().unwrap();
    let job: i64 = tx
        .query_one("SELECT bgw_run('SELECT 1')", &[])
        .unwrap()
        .get(0);
    // Its creator cannot wait for it before committing.
    let err = tx
        .query_one("SELECT bgw_result($1)", &[&job])
        .expect_err("bgw_result in the creating transaction");
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "55000");
    assert_eq!(
        db.message(),
        format!("bgworker_rs job {job} has not started: this transaction created it")
    );
    tx.rollback().unwrap();
    let later = run(&mut c, "SELECT bgw_run('SELECT 2 AS two')");
    assert_eq!(result(&mut c, later)["status"], "succeeded");
    assert_eq!(
        scalar_i64(
            &mut c,
            &format!("SELECT count(*) FROM bgw_job_runs WHERE job = {job}")
        ),
        0
    );
    let (code, message, _, _) = expect_error(&mut c, &format!("SELECT bgw_result({job})"));
    assert_eq!(
        (code.as_str(), message.as_str()),
        (
            "42704",
            format!("bgworker_rs job {job} does not exist").as_str()
        )
    );
    drop(cluster);
}

#[test]
fn max_jobs_zero_disables_jobs_and_the_scheduler() {
    let (cluster, mut c) =
        start_with_extension(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 0"]);
    assert!(
        bgw_list(&mut c).iter().all(|r| r.0 != "scheduler"),
        "a scheduler runs with max_jobs = 0"
    );
    let (code, message, detail, _) = expect_error(&mut c, "SELECT bgw_run('SELECT 1')");
    assert_eq!(
        (code.as_str(), message.as_str(), detail.as_deref()),
        (
            "55000",
            "bgworker_rs jobs are disabled",
            Some("bgworker_rs.max_jobs is 0.")
        )
    );
    drop(cluster);
}

/// `bgw_run` and `bgw_result` keep their statements' plans for the session
/// (`store::Kept`): those plans still mean the extension's tables as they
/// are after the tables change, after the extension is dropped and made
/// again in another schema, and whatever planner settings the session has.
#[test]
fn a_session_keeps_its_plans_through_changes_to_the_extension() {
    let (cluster, mut c) = start_with_extension(BASE);
    let round = |c: &mut Client, schema: &str, n: i32| -> i64 {
        let job: i64 = c
            .query_one(&format!("SELECT {schema}.bgw_run('SELECT {n} AS n')"), &[])
            .unwrap_or_else(|e| panic!("bgw_run in {schema}: {e}"))
            .get(0);
        let text: Option<String> = c
            .query_one(
                &format!("SELECT {schema}.bgw_result($1, '30s')::text"),
                &[&job],
            )
            .unwrap_or_else(|e| panic!("bgw_result in {schema}: {e}"))
            .get(0);
        let r: Value = serde_json::from_str(&text.expect("an outcome")).unwrap();
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["result"][0]["n"], n, "{r}");
        job
    };
    round(&mut c, "public", 1);
    round(&mut c, "public", 2);
    c.batch_execute(
        "ALTER TABLE bgw_job_runs ADD COLUMN note text; \
         ALTER TABLE bgw_job_defs ADD COLUMN note int; \
         CREATE INDEX defs_created ON bgw_job_defs (created_at)",
    )
    .unwrap();
    round(&mut c, "public", 3);
    // The session's own planner settings change nothing but its speed.
    c.batch_execute(
        "SET enable_indexscan = off; SET enable_bitmapscan = off; \
         SET plan_cache_mode = force_custom_plan; SET jit_above_cost = 0",
    )
    .unwrap();
    round(&mut c, "public", 4);
    c.batch_execute("RESET ALL").unwrap();
    // Made again elsewhere, in the same session. (The scheduler must be
    // gone first: it would be stopped by DROP EXTENSION anyway.)
    let schedulers = "SELECT count(*) FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL";
    wait_until("the scheduler to leave", T, || {
        (scalar_i64(&mut c, schedulers) == 0).then_some(())
    });
    c.batch_execute(
        "DROP EXTENSION bgworker_rs; CREATE SCHEMA moved; \
         CREATE EXTENSION bgworker_rs SCHEMA moved",
    )
    .unwrap();
    let job = round(&mut c, "moved", 5);
    // bgw_result returns the outcome as its worker leaves it; the
    // scheduler records it in the new tables moments later.
    let recorded = format!(
        "SELECT count(*) FROM moved.bgw_job_runs WHERE job = {job} AND status = 'succeeded'"
    );
    wait_until("the run recorded in the extension's new tables", T, || {
        (scalar_i64(&mut c, &recorded) == 1).then_some(())
    });
    drop(cluster);
}

/// `DROP EXTENSION` while the scheduler is at work: the scheduler's lock
/// waits end before the statement's deadlock check would fail it (a wake
/// holding `bgw_job_runs` while waiting for `bgw_job_defs`, the statement
/// the other way round). Each round starts with a scheduler at its first
/// wake (which marks lost runs, `bgw_job_runs` first) and at work.
#[test]
fn drop_extension_never_deadlocks_with_a_busy_scheduler() {
    let (cluster, mut c) = start_with_extension(BASE);
    for round in 0..4 {
        if round > 0 {
            c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
        }
        c.batch_execute(
            "SELECT bgw_run('SELECT pg_sleep(0.01)', every => '50ms') FROM generate_series(1, 8)",
        )
        .unwrap();
        let recorded = "SELECT count(*) FROM bgw_job_runs WHERE finished_at IS NOT NULL";
        wait_until("runs recorded", T, || {
            (scalar_i64(&mut c, recorded) >= 8).then_some(())
        });
        c.batch_execute("DROP EXTENSION bgworker_rs")
            .unwrap_or_else(|e| panic!("round {round}: DROP EXTENSION: {e}"));
    }
    drop(cluster);
}
