//! Scheduling through a real server: named cron jobs (`bgw_schedule`) in
//! time zones, 6-field schedules with seconds, `at`, retries with backoff,
//! pause and resume, extra runs, the queue when every slot is busy, ticks
//! skipped while a run goes, history pruning, and the errors of bad input.

mod common;

use common::jobs::*;
use common::*;
use postgres::Client;
use serde_json::Value;
use std::time::Duration;

const BASE: &[&str] = &["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 8"];

fn flag(c: &mut Client, sql: &str) -> bool {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// Finished runs of a job, oldest first, as JSON rows of bgw_job_runs.
fn runs(c: &mut Client, j: i64) -> Vec<Value> {
    c.query(
        "SELECT to_jsonb(r)::text FROM bgw_job_runs r \
          WHERE job = $1 AND finished_at IS NOT NULL ORDER BY run",
        &[&j],
    )
    .unwrap()
    .iter()
    .map(|r| serde_json::from_str(&r.get::<_, String>(0)).unwrap())
    .collect()
}

fn wait_finished(c: &mut Client, j: i64, n: usize) -> Vec<Value> {
    wait_until(&format!("{n} finished runs of job {j}"), T_JOBS, || {
        let r = runs(c, j);
        (r.len() >= n).then_some(r)
    })
}

/// A job's next_run_at equals what PostgreSQL computes with its own time
/// zone data, for each schedule form and zone: the crate and the server
/// agree.
#[test]
fn next_run_at_follows_each_schedule_form_and_zone() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let cases = [
        // (schedule, zone, the next time as PostgreSQL computes it)
        (
            "0 9 * * *",
            "America/New_York",
            "date_trunc('day', now() AT TIME ZONE 'America/New_York') \
             + CASE WHEN (now() AT TIME ZONE 'America/New_York')::time < '09:00' \
                    THEN interval '9 hours' ELSE interval '33 hours' END",
        ),
        (
            "@daily",
            "Asia/Kolkata",
            "date_trunc('day', now() AT TIME ZONE 'Asia/Kolkata') + interval '1 day'",
        ),
        (
            "@hourly",
            "Australia/Adelaide",
            "date_trunc('hour', now() AT TIME ZONE 'Australia/Adelaide') + interval '1 hour'",
        ),
        (
            "@monthly",
            "Europe/Paris",
            "date_trunc('month', now() AT TIME ZONE 'Europe/Paris') + interval '1 month'",
        ),
        (
            "@yearly",
            "UTC",
            "date_trunc('year', now() AT TIME ZONE 'UTC') + interval '1 year'",
        ),
        (
            "0 0 L * *",
            "UTC",
            "CASE WHEN (now() AT TIME ZONE 'UTC')::date \
                       = (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month - 1 day')::date \
                  THEN date_trunc('month', now() AT TIME ZONE 'UTC') + interval '2 months - 1 day' \
                  ELSE date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month - 1 day' END",
        ),
    ];
    for (i, (schedule, zone, expected_local)) in cases.iter().enumerate() {
        let name = format!("form{i}");
        let j: i64 = c
            .query_one(
                "SELECT bgw_schedule($1, $2, 'SELECT 1', timezone => $3)",
                &[&name, schedule, zone],
            )
            .unwrap()
            .get(0);
        let same = flag(
            &mut c,
            &format!(
                "SELECT next_run_at = ({expected_local}) AT TIME ZONE '{zone}' \
                   FROM bgw_jobs WHERE id = {j}"
            ),
        );
        let shown: String = c
            .query_one(
                "SELECT next_run_at::text || ' ' || timezone || ' ' || schedule FROM bgw_jobs WHERE id = $1",
                &[&j],
            )
            .unwrap()
            .get(0);
        assert!(same, "{schedule} in {zone}: {shown}");
    }
    // NULL: the caller's TimeZone, stored with the job.
    c.batch_execute("SET TimeZone = 'Pacific/Chatham'").unwrap();
    let j = job(&mut c, "SELECT bgw_schedule('here', '@daily', 'SELECT 1')");
    let zone: String = c
        .query_one("SELECT timezone FROM bgw_jobs WHERE id = $1", &[&j])
        .unwrap()
        .get(0);
    assert_eq!(zone, "Pacific/Chatham");
}

/// A 6-field schedule runs within the second it names.
#[test]
fn a_schedule_with_seconds_runs_within_its_second() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_schedule('tick', '*/2 * * * * *', 'SELECT 1')",
    );
    let done = wait_finished(&mut c, j, 3);
    for r in &done {
        let late = flag(
            &mut c,
            &format!(
                "SELECT '{}'::timestamptz - '{}'::timestamptz < interval '1 second' \
                    AND extract(second FROM '{}'::timestamptz)::numeric % 2 = 0",
                r["started_at"].as_str().unwrap(),
                r["due_at"].as_str().unwrap(),
                r["due_at"].as_str().unwrap()
            ),
        );
        assert!(late, "{r}");
        assert_eq!(r["status"], "succeeded", "{r}");
    }
    assert!(flag(&mut c, "SELECT bgw_unschedule('tick')"));
    assert!(!flag(&mut c, "SELECT bgw_unschedule('tick')"));
}

/// A failed run is retried after retry_delay, doubled each time, each
/// attempt its own row; then the job waits for its schedule.
#[test]
fn failed_runs_are_retried_with_backoff() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_schedule('flaky', '0 0 1 1 *', 'SELECT 1 / 0', \
                             retries => 2, retry_delay => '1s')",
    );
    let run: i32 = c.query_one("SELECT bgw_run_now($1)", &[&j]).unwrap().get(0);
    assert_eq!(run, 1);
    let done = wait_finished(&mut c, j, 3);
    let attempts: Vec<i64> = done
        .iter()
        .map(|r| r["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(attempts, [1, 2, 3]);
    for r in &done {
        assert_eq!(
            (r["status"].as_str(), r["sqlstate"].as_str()),
            (Some("failed"), Some("22012"))
        );
    }
    // Each retry was due retry_delay * 2^(attempt - 2) after the last
    // attempt finished, with at most 10% more.
    for (k, pair) in done.windows(2).enumerate() {
        let base = 1000.0 * f64::powi(2.0, k as i32);
        let gap_ms: f64 = c
            .query_one(
                "SELECT extract(epoch FROM $1::text::timestamptz - $2::text::timestamptz)::float8 * 1000",
                &[
                    &pair[1]["due_at"].as_str().unwrap(),
                    &pair[0]["finished_at"].as_str().unwrap(),
                ],
            )
            .unwrap()
            .get(0);
        assert!(
            gap_ms >= base - 1.0 && gap_ms <= base * 1.1 + 1.0,
            "retry {} came {gap_ms} ms after the attempt before",
            k + 2
        );
    }
    let (failures, retry_pending): (i32, bool) = c
        .query_one(
            "SELECT j.consecutive_failures, d.retry_at IS NOT NULL FROM bgw_jobs j \
               JOIN bgw_job_defs d USING (id) WHERE id = $1",
            &[&j],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((failures, retry_pending), (3, false));
    let last: String = c
        .query_one("SELECT last_status FROM bgw_jobs WHERE id = $1", &[&j])
        .unwrap()
        .get(0);
    assert_eq!(last, "failed");
}

/// Paused, a job starts no run; resumed, it goes on from its schedule.
#[test]
fn a_paused_job_waits_and_resumes_from_its_schedule() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_schedule('pulse', '1 seconds', 'SELECT 1')",
    );
    wait_finished(&mut c, j, 2);
    c.batch_execute(&format!("SELECT bgw_alter({j}, active => false)"))
        .unwrap();
    // A run that was starting may still finish; then nothing for 3 s.
    let settled = wait_until("the paused job to settle", T_JOBS, || {
        flag(
            &mut c,
            &format!("SELECT NOT EXISTS (SELECT FROM bgw_job_runs WHERE job = {j} AND finished_at IS NULL)"),
        )
        .then(|| runs(&mut c, j).len())
    });
    let more = poll(Duration::from_secs(3), || {
        (runs(&mut c, j).len() > settled).then_some(())
    });
    assert!(more.is_none(), "a paused job ran");
    let (active, state): (bool, String) = c
        .query_one("SELECT active, state FROM bgw_jobs WHERE id = $1", &[&j])
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((active, state.as_str()), (false, "scheduled"));
    c.batch_execute(&format!("SELECT bgw_alter({j}, active => true)"))
        .unwrap();
    assert!(flag(
        &mut c,
        &format!("SELECT next_run_at > now() - interval '1 second' FROM bgw_jobs WHERE id = {j}")
    ));
    wait_finished(&mut c, j, settled + 2);
}

/// With one job slot, five due jobs wait in the queue and all run, in
/// the order they were due; none fails.
#[test]
fn with_one_slot_due_jobs_queue_and_all_run_in_order() {
    let conf = ["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 1"];
    let (_cluster, mut c) = start_with_extension(&conf);
    let mut tx = c.transaction().unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let j: i64 = tx
            .query_one(
                "SELECT bgw_run('SELECT pg_sleep(0.3)', \
                                at => now() + $1 * interval '1 millisecond')",
                &[&(i as f64)],
            )
            .unwrap()
            .get(0);
        ids.push(j);
    }
    tx.commit().unwrap();
    wait_until("a run to wait in the queue", T_JOBS, || {
        flag(
            &mut c,
            "SELECT EXISTS (SELECT FROM bgw_jobs WHERE state = 'queued')",
        )
        .then_some(())
    });
    let mut started = Vec::new();
    for &j in &ids {
        let r = finished_run(&mut c, j, 1);
        assert_eq!(r["status"], "succeeded", "{r}");
        started.push(r["started_at"].as_str().unwrap().to_string());
    }
    let mut sorted = started.clone();
    sorted.sort();
    assert_eq!(started, sorted, "runs started in due order");
}

/// A tick that falls while the last run still goes is skipped and
/// counted; the job never overlaps itself.
#[test]
fn ticks_during_a_run_are_skipped_and_counted() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_schedule('slow', '1 seconds', 'SELECT pg_sleep(2.5)')",
    );
    wait_finished(&mut c, j, 1);
    let skipped = scalar_i64(
        &mut c,
        &format!("SELECT skipped FROM bgw_jobs WHERE id = {j}"),
    );
    assert!(skipped >= 1, "skipped {skipped}");
    let overlaps = scalar_i64(
        &mut c,
        &format!(
            "SELECT count(*) FROM bgw_job_runs a JOIN bgw_job_runs b \
               ON a.job = b.job AND a.run < b.run \
              WHERE a.job = {j} AND b.started_at < a.finished_at"
        ),
    );
    assert_eq!(overlaps, 0);
}

/// `at` delays the first run; with `every`, runs go on from it.
#[test]
fn at_sets_the_first_run() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_run('SELECT 1', every => '1 hour', at => now() + interval '1 second')",
    );
    let r = finished_run(&mut c, j, 1);
    assert!(flag(
        &mut c,
        &format!(
            "SELECT '{}'::timestamptz >= created_at + interval '1 second' \
                AND next_run_at = created_at + interval '1 second 1 hour' \
               FROM bgw_jobs WHERE id = {j}",
            r["started_at"].as_str().unwrap()
        )
    ));
    let (code, message, ..) = expect_error(&mut c, "SELECT bgw_run('SELECT 1', at => 'infinity')");
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("22023", "at must be a finite time")
    );
}

/// A one-shot job for later, run once now with `bgw_run_now`, is not
/// finished by that extra run: its run at `at` still comes, and only then
/// is it finished. (The sweep that finishes one-shot jobs used to ignore
/// `next_run_at`, and the `at` run never came.)
#[test]
fn an_extra_run_of_a_one_shot_job_for_later_leaves_its_run_at_at() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_run('SELECT 1', at => now() + interval '3 seconds')",
    );
    let extra: i32 = c.query_one("SELECT bgw_run_now($1)", &[&j]).unwrap().get(0);
    assert_eq!(extra, 1);
    wait_finished(&mut c, j, 1);
    // Recorded, and swept at least once since (the sweep runs at each wake
    // that records a run): still waiting for its time.
    let state = format!("SELECT state FROM bgw_jobs WHERE id = {j}");
    let first: String = c.query_one(state.as_str(), &[]).unwrap().get(0);
    assert_eq!(first, "scheduled", "finished by the extra run");
    let r = wait_finished(&mut c, j, 2);
    assert!(
        flag(
            &mut c,
            &format!(
                "SELECT '{}'::timestamptz >= created_at + interval '3 seconds' FROM bgw_jobs WHERE id = {j}",
                r[1]["started_at"].as_str().unwrap_or_default()
            )
        ),
        "the second run came at its time: {r:?}"
    );
    wait_until("the job finished", T_JOBS, || {
        let s: String = c.query_one(state.as_str(), &[]).unwrap().get(0);
        (s == "finished").then_some(())
    });
}

/// History bounds, applied when the configuration is reloaded.
#[test]
fn the_history_is_pruned() {
    let (_cluster, mut c) = start_with_extension(BASE);
    let j = job(
        &mut c,
        "SELECT bgw_schedule('often', '1 seconds', 'SELECT 1')",
    );
    wait_finished(&mut c, j, 5);
    for sql in [
        "ALTER SYSTEM SET bgworker_rs.history_max_runs = 2",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).unwrap();
    }
    wait_until("the history to keep 2 runs", T_JOBS, || {
        (runs(&mut c, j).len() <= 2).then_some(())
    });
    for sql in [
        "ALTER SYSTEM SET bgworker_rs.history_max_runs = -1",
        "ALTER SYSTEM SET bgworker_rs.history_max_age = '1s'",
        "SELECT pg_reload_conf()",
    ] {
        c.batch_execute(sql).unwrap();
    }
    wait_until("runs older than a second to go", T_JOBS, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_job_runs WHERE finished_at < now() - interval '3 seconds'",
        ) == 0)
            .then_some(())
    });
    assert!(flag(&mut c, "SELECT bgw_unschedule('often')"));
}

/// Every bad input is an ERROR with its SQLSTATE, naming the field, and
/// for schedules a HINT with the accepted forms.
#[test]
fn bad_schedules_and_arguments_are_refused() {
    let (cluster, mut c) = start_with_extension(BASE);
    let forms = "A schedule is a cron expression of 5 fields";
    let cases: &[(&str, &str, &str, bool)] = &[
        (
            "SELECT bgw_schedule('x', '61 * * * *', 'SELECT 1')",
            "22023",
            "schedule is not valid",
            true,
        ),
        (
            "SELECT bgw_schedule('x', '* * * *', 'SELECT 1')",
            "22023",
            "schedule is not valid: \"* * * *\" has 4 fields, not 5 or 6",
            true,
        ),
        (
            "SELECT bgw_schedule('x', '90 seconds', 'SELECT 1')",
            "22023",
            "schedule is not valid: \"90 seconds\": the number of seconds must be from 1 to 59",
            true,
        ),
        (
            "SELECT bgw_schedule('x', '0 0 30 2 *', 'SELECT 1')",
            "22023",
            "schedule \"0 0 30 2 *\" never comes: it has no next time",
            true,
        ),
        (
            "SELECT bgw_schedule('x', '@daily', 'SELECT 1', timezone => 'Mars/Olympus')",
            "22023",
            "timezone is not valid: \"Mars/Olympus\" is not a known IANA time zone",
            false,
        ),
        (
            "SELECT bgw_schedule('x', '@daily', 'SELECT 1', retries => -1)",
            "22023",
            "retries must be between 0 and 1000, not -1",
            false,
        ),
        (
            "SELECT bgw_schedule('x', '@daily', 'SELECT 1', retry_delay => '-1s')",
            "22023",
            "retry_delay",
            false,
        ),
        (
            "SELECT bgw_schedule('', '@daily', 'SELECT 1')",
            "22023",
            "name must have 1 to 200 bytes and not only white space",
            false,
        ),
        (
            "SELECT bgw_schedule('x', '* * * * ' || repeat('1,', 1000) || '1', 'SELECT 1')",
            "22023",
            "schedule is too long (2009 bytes; at most 1000)",
            true,
        ),
        (
            "SELECT bgw_schedule(NULL, '@daily', 'SELECT 1')",
            "22004",
            "name",
            false,
        ),
    ];
    for (sql, code, message, hint) in cases {
        let (got, text, _, h) = expect_error(&mut c, sql);
        assert_eq!(got, *code, "{sql}: {text}");
        assert!(text.contains(message), "{sql}: {text}");
        if *hint {
            assert!(
                h.as_deref().is_some_and(|h| h.starts_with(forms)),
                "{sql}: {h:?}"
            );
        }
    }
    // Names are the creator's: another role's name claims nothing.
    c.batch_execute(
        "CREATE ROLE alice LOGIN; \
         GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO alice",
    )
    .unwrap();
    let mut alice = cluster.connect_as("alice", "postgres");
    let theirs = job(
        &mut alice,
        "SELECT bgw_schedule('nightly', '@daily', 'SELECT 1')",
    );
    let ours = job(
        &mut c,
        "SELECT bgw_schedule('nightly', '@daily', 'SELECT 2')",
    );
    assert_ne!(theirs, ours);
    // Replacing one's own job may not change the role it runs as.
    let a = job(
        &mut c,
        "SELECT bgw_schedule('as-alice', '@daily', 'SELECT 1', role => 'alice')",
    );
    let (code, message, ..) = expect_error(
        &mut c,
        "SELECT bgw_schedule('as-alice', '@daily', 'SELECT 1')",
    );
    assert_eq!(code, "42710", "{message}");
    assert_eq!(
        message,
        "you already have a job named \"as-alice\", which runs as another role"
    );
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({a})")));
    // The caller's own name: replaced, not duplicated, and running again
    // even if it was paused.
    let a = job(&mut c, "SELECT bgw_schedule('mine', '@daily', 'SELECT 1')");
    c.batch_execute(&format!("SELECT bgw_alter({a}, active => false)"))
        .unwrap();
    let b = job(&mut c, "SELECT bgw_schedule('mine', '@hourly', 'SELECT 2')");
    assert_eq!(a, b);
    let (schedule, sql, active): (String, String, bool) = c
        .query_one(
            "SELECT schedule, sql, active FROM bgw_jobs WHERE id = $1",
            &[&a],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (schedule.as_str(), sql.as_str(), active),
        ("@hourly", "SELECT 2", true)
    );
    // bgw_alter and bgw_run_now on a cancelled job.
    assert!(flag(&mut c, "SELECT bgw_unschedule('mine')"));
    let (code, message, ..) = expect_error(&mut c, &format!("SELECT bgw_run_now({a})"));
    assert_eq!(
        (code.as_str(), message),
        ("55000", format!("bgworker_rs job {a} is cancelled"))
    );
    let (code, ..) = expect_error(&mut c, &format!("SELECT bgw_alter({a}, retries => 1)"));
    assert_eq!(code, "55000");
}

/// Two sessions scheduling one name, or queueing an extra run of one job,
/// at the same time: one job, one queued run.
#[test]
fn concurrent_calls_make_one_job_and_one_queued_run() {
    let conf = ["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 1"];
    let (cluster, mut c) = start_with_extension(&conf);
    let mut first = cluster.connect();
    let mut tx = first.transaction().unwrap();
    let a: i64 = tx
        .query_one("SELECT bgw_schedule('race', '@yearly', 'SELECT 1')", &[])
        .unwrap()
        .get(0);
    let second = {
        let mut other = cluster.connect();
        std::thread::spawn(move || -> i64 {
            other
                .query_one("SELECT bgw_schedule('race', '@yearly', 'SELECT 2')", &[])
                .unwrap()
                .get(0)
        })
    };
    wait_until("the second call to wait for the first", T_JOBS, || {
        flag(
            &mut c,
            "SELECT EXISTS (SELECT FROM pg_stat_activity \
                             WHERE query LIKE '%bgw_schedule(''race''%SELECT 2%' \
                               AND wait_event_type = 'Lock')",
        )
        .then_some(())
    });
    tx.commit().unwrap();
    assert_eq!(second.join().unwrap(), a);
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM bgw_jobs WHERE name = 'race'"),
        1
    );

    // The slot is busy, so extra runs wait in the queue.
    let blocker = job(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocker to run", T_JOBS, || {
        flag(
            &mut c,
            &format!("SELECT state = 'running' FROM bgw_jobs WHERE id = {blocker}"),
        )
        .then_some(())
    });
    let mut tx = first.transaction().unwrap();
    let run: i32 = tx
        .query_one("SELECT bgw_run_now($1)", &[&a])
        .unwrap()
        .get(0);
    let second = {
        let mut other = cluster.connect();
        std::thread::spawn(move || -> i32 {
            other
                .query_one("SELECT bgw_run_now($1)", &[&a])
                .unwrap()
                .get(0)
        })
    };
    wait_until("the second bgw_run_now to wait", T_JOBS, || {
        flag(
            &mut c,
            "SELECT EXISTS (SELECT FROM pg_stat_activity \
                             WHERE query LIKE 'SELECT bgw_run_now%' AND wait_event_type = 'Lock')",
        )
        .then_some(())
    });
    tx.commit().unwrap();
    assert_eq!(second.join().unwrap(), run);
    assert_eq!(
        scalar_i64(
            &mut c,
            &format!("SELECT count(*) FROM bgw_job_runs WHERE job = {a} AND status = 'queued'")
        ),
        1
    );
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({blocker})")));
    let r = finished_run(&mut c, a, run);
    assert_eq!(r["status"], "succeeded", "{r}");
}
