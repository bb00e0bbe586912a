//! Jobs that do maintenance: statements at top level (VACUUM, CREATE INDEX
//! CONCURRENTLY, REINDEX CONCURRENTLY, a CALL that commits), scripts that
//! commit as they go (`atomic => false`), generated statements (`gexec`),
//! the run's per-statement outcome, cancellation in the middle of a
//! statement, and the README's recipes. Each checks the effect, not only
//! the status.

mod common;

use common::jobs::*;
use common::*;
use postgres::Client;
use serde_json::{Value, json};

const BASE: &[&str] = &[
    "bgworker_rs.total_workers = 0",
    "bgworker_rs.max_jobs = 8",
    // Only the jobs vacuum and analyze here.
    "autovacuum = off",
];

fn start() -> (Cluster, Client) {
    start_with_extension(BASE)
}

fn flag(c: &mut Client, sql: &str) -> bool {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn filenode(c: &mut Client, index: &str) -> i64 {
    scalar_i64(c, &format!("SELECT pg_relation_filenode('{index}')::int8"))
}

fn index_is_valid(c: &mut Client, index: &str) -> bool {
    flag(
        c,
        &format!("SELECT indisvalid FROM pg_index WHERE indexrelid = '{index}'::regclass"),
    )
}

/// Waits until the statistics show `column` of table `table` set.
fn wait_stat(c: &mut Client, table: &str, column: &str) {
    let sql =
        format!("SELECT {column} IS NOT NULL FROM pg_stat_user_tables WHERE relname = '{table}'");
    wait_until(&format!("{column} of {table}"), T_JOBS, || {
        flag(c, &sql).then_some(())
    });
}

/// A job still runs, and the scheduler is alive.
fn jobs_still_run(c: &mut Client) {
    let j = job(c, "SELECT bgw_run('SELECT 1 AS ok')");
    let r = outcome(c, j);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"], json!([{"ok": 1}]));
}

#[test]
fn lone_maintenance_statements_run_at_top_level() {
    let (_cluster, mut c) = start();
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g; \
         DELETE FROM t WHERE id % 2 = 0",
    )
    .unwrap();

    // VACUUM, as the whole job: it must not be in a transaction block.
    let j = job(&mut c, "SELECT bgw_run('VACUUM (ANALYZE) t')");
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["statements"], json!([{"position": 1, "tag": "VACUUM"}]));
    wait_stat(&mut c, "t", "last_vacuum");
    wait_stat(&mut c, "t", "last_analyze");

    // CREATE INDEX CONCURRENTLY: the index is built and valid. Waited for
    // by polling: a session waiting in bgw_result holds a snapshot, which a
    // concurrent build waits for, as for any client.
    let j = job(
        &mut c,
        "SELECT bgw_run('CREATE INDEX CONCURRENTLY t_v ON t (v)')",
    );
    let r = finished_run(&mut c, j, 1);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(tags(&r), ["CREATE INDEX"]);
    assert!(index_is_valid(&mut c, "t_v"));

    // REINDEX CONCURRENTLY: a new relfilenode, still valid.
    let before = filenode(&mut c, "t_v");
    let j = job(&mut c, "SELECT bgw_run('REINDEX INDEX CONCURRENTLY t_v')");
    let r = finished_run(&mut c, j, 1);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_ne!(filenode(&mut c, "t_v"), before, "REINDEX built a new file");
    assert!(index_is_valid(&mut c, "t_v"));

    // A procedure that commits as it goes: what it committed survives its
    // later failure.
    c.batch_execute(
        "CREATE TABLE p (x int); \
         CREATE PROCEDURE fill() LANGUAGE plpgsql AS $$ \
         BEGIN \
           INSERT INTO p VALUES (1); COMMIT; \
           INSERT INTO p VALUES (2); COMMIT; \
           INSERT INTO p VALUES (3); \
           PERFORM 1 / 0; \
         END $$",
    )
    .unwrap();
    let j = job(&mut c, "SELECT bgw_run('CALL fill()')");
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("22012")), "{r}");
    assert_eq!(r["error_position"], 1);
    assert_eq!(r["error_statement"], "CALL fill()");
    assert_eq!(
        scalar_i64(&mut c, "SELECT count(*) FROM p WHERE x IN (1, 2)"),
        2,
        "the procedure's committed rows"
    );
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM p WHERE x = 3"), 0);
    jobs_still_run(&mut c);
}

#[test]
fn atomic_false_commits_each_statement_and_stops_at_the_first_failure() {
    let (_cluster, mut c) = start();
    c.batch_execute("CREATE TABLE a (x int)").unwrap();
    let script = "INSERT INTO a VALUES (1); INSERT INTO a VALUES (2); \
                  INSERT INTO a SELECT 1 / 0; INSERT INTO a VALUES (4)";

    let j = job(
        &mut c,
        &format!("SELECT bgw_run('{script}', atomic => false)"),
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("22012")), "{r}");
    assert_eq!(r["error"], "division by zero");
    assert_eq!(r["error_position"], 3);
    assert_eq!(r["error_statement"], "INSERT INTO a SELECT 1 / 0");
    assert_eq!(
        r["statements"],
        json!([{"position": 1, "tag": "INSERT", "rows": 1},
               {"position": 2, "tag": "INSERT", "rows": 1}])
    );
    let kept: Vec<i32> = c
        .query("SELECT x FROM a ORDER BY x", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, [1, 2], "statements 1 and 2 stay committed");

    // The same script as one transaction: nothing is kept.
    c.batch_execute("TRUNCATE a").unwrap();
    let j = job(&mut c, &format!("SELECT bgw_run('{script}')"));
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("22012")), "{r}");
    assert_eq!(r["error_position"], 3);
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM a"), 0);

    // A maintenance script: the setting holds for the statements after it.
    c.batch_execute(
        "CREATE TABLE m (id int PRIMARY KEY); \
         INSERT INTO m SELECT generate_series(1, 1000); DELETE FROM m WHERE id < 500",
    )
    .unwrap();
    let before = filenode(&mut c, "m_pkey");
    let j = job(
        &mut c,
        "SELECT bgw_run($$SET maintenance_work_mem = '1GB'; VACUUM (ANALYZE) m; \
                          REINDEX TABLE CONCURRENTLY m; SHOW maintenance_work_mem$$, \
                        atomic => false)",
    );
    let r = finished_run(&mut c, j, 1);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(tags(&r), ["SET", "VACUUM", "REINDEX", "SHOW"]);
    assert_eq!(r["result"], json!([{"maintenance_work_mem": "1GB"}]));
    wait_stat(&mut c, "m", "last_vacuum");
    wait_stat(&mut c, "m", "last_analyze");
    assert_ne!(filenode(&mut c, "m_pkey"), before);
    jobs_still_run(&mut c);
}

#[test]
fn an_atomic_script_keeps_top_level_statements_out_with_a_hint() {
    let (_cluster, mut c) = start();
    c.batch_execute("CREATE TABLE t (x int)").unwrap();
    let j = job(&mut c, "SELECT bgw_run('SELECT 1; VACUUM t')");
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("25001")), "{r}");
    assert_eq!(r["error"], "VACUUM cannot run inside a transaction block");
    assert!(
        r["hint"]
            .as_str()
            .is_some_and(|h| h.contains("atomic => false")),
        "{r}"
    );
    assert_eq!(r["error_position"], 2);
    assert_eq!(r["error_statement"], "VACUUM t");
    assert_eq!(
        r["statements"],
        json!([{"position": 1, "tag": "SELECT", "rows": 1}])
    );
}

#[test]
fn transaction_control_is_refused_before_anything_runs() {
    let (_cluster, mut c) = start();
    c.batch_execute("CREATE TABLE a (x int)").unwrap();
    let cases = [
        (
            "INSERT INTO a VALUES (1); COMMIT; INSERT INTO a VALUES (2)",
            true,
            2,
            "COMMIT",
        ),
        ("BEGIN; INSERT INTO a VALUES (1)", true, 1, "BEGIN"),
        ("INSERT INTO a VALUES (1); ROLLBACK", false, 2, "ROLLBACK"),
        (
            "INSERT INTO a VALUES (1); SAVEPOINT s",
            false,
            2,
            "SAVEPOINT",
        ),
    ];
    for (script, atomic, position, tag) in cases {
        let j = job(
            &mut c,
            &format!("SELECT bgw_run('{script}', atomic => {atomic})"),
        );
        let r = outcome(&mut c, j);
        assert_eq!(status(&r), (Some("failed"), Some("0A000")), "{script}: {r}");
        assert_eq!(r["error"], format!("{tag} is not allowed in a job's SQL"));
        assert_eq!(r["error_position"], position, "{script}: {r}");
        let hint = r["hint"].as_str().unwrap_or_default();
        assert!(hint.contains("atomic => false"), "{script}: {hint}");
        assert_eq!(r["statements"], json!([]), "nothing ran: {r}");
    }
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM a"), 0);
    jobs_still_run(&mut c);
}

#[test]
fn scripts_that_cannot_run_are_failed_runs_not_crashes() {
    let (_cluster, mut c) = start();
    c.batch_execute("CREATE TABLE a (x int)").unwrap();
    let cases = [
        ("", "42601", "the job's SQL has no statement"),
        (
            "  -- only a comment\n",
            "42601",
            "the job's SQL has no statement",
        ),
        ("/* nothing */ ;", "42601", "the job's SQL has no statement"),
        ("SELEC 1", "42601", "syntax error at or near \"SELEC\""),
        (
            "INSERT INTO a VALUES (1); SELEC 2",
            "42601",
            "syntax error at or near \"SELEC\"",
        ),
        (
            "COPY a TO STDOUT",
            "0A000",
            "COPY from STDIN or to STDOUT is not available in a job",
        ),
        (
            "COPY a FROM STDIN",
            "0A000",
            "COPY from STDIN or to STDOUT is not available in a job",
        ),
    ];
    for (script, code, message) in cases {
        for atomic in [true, false] {
            let j: i64 = c
                .query_one("SELECT bgw_run($1, atomic => $2)", &[&script, &atomic])
                .unwrap()
                .get(0);
            let r = outcome(&mut c, j);
            assert_eq!(status(&r), (Some("failed"), Some(code)), "{script:?}: {r}");
            assert_eq!(r["error"], message, "{script:?}");
        }
    }
    // The script that does not parse ran nothing at all.
    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM a"), 0);
    jobs_still_run(&mut c);
}

#[test]
fn gexec_runs_each_generated_statement_once() {
    let (_cluster, mut c) = start();
    c.batch_execute("CREATE TABLE g (name text)").unwrap();
    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT format('INSERT INTO g VALUES (%L)', 'r' || i) \
                          FROM generate_series(1, 3) i UNION ALL SELECT NULL$$, gexec => true)",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    let names: Vec<String> = c
        .query("SELECT name FROM g ORDER BY name", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["r1", "r2", "r3"], "once per row, NULL skipped");
    let statements = r["statements"].as_array().cloned().unwrap_or_default();
    assert_eq!(statements.len(), 4, "{r}");
    assert_eq!(
        statements[0],
        json!({"position": 1, "tag": "SELECT", "rows": 4})
    );
    assert_eq!(
        statements[1],
        json!({"position": 2, "tag": "INSERT", "rows": 1, "generated": true,
               "text": "INSERT INTO g VALUES ('r1')"})
    );
    // The result is the generating statement's rows.
    assert_eq!(r["result"].as_array().map(Vec::len), Some(4));

    // A generated statement that fails stops the run; those before it
    // committed, each in its own transaction.
    c.batch_execute("TRUNCATE g").unwrap();
    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT unnest(ARRAY['INSERT INTO g VALUES (''x'')', \
                                              'SELECT 1 / 0', \
                                              'INSERT INTO g VALUES (''y'')'])$$, gexec => true)",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("22012")), "{r}");
    assert_eq!(r["error_position"], 3);
    assert_eq!(r["error_statement"], "SELECT 1 / 0");
    let names: Vec<String> = c
        .query("SELECT name FROM g", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names, ["x"]);

    // What gexec holds to run is bounded.
    let j = job(
        &mut c,
        "SELECT bgw_run('SELECT repeat(''x'', 1000000) FROM generate_series(1, 70)', gexec => true)",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("54000")), "{r}");
    assert_eq!(
        r["error"],
        "with gexec, the statements generated may take at most 64 MB"
    );

    // More than one column is a mistake, not two statements.
    let j = job(&mut c, "SELECT bgw_run('SELECT 1, 2', gexec => true)");
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("42804")), "{r}");
    assert_eq!(
        r["error"],
        "with gexec, the last statement must return one column, not 2"
    );
    jobs_still_run(&mut c);
}

#[test]
fn the_timeout_bounds_the_whole_run() {
    let (_cluster, mut c) = start();
    // Each statement takes less than the timeout; together they take more.
    let j = job(
        &mut c,
        "SELECT bgw_run('SELECT pg_sleep(0.5); SELECT pg_sleep(0.5); \
                         SELECT pg_sleep(0.5); SELECT pg_sleep(0.5)', \
                        atomic => false, timeout => '1200 ms')",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("timed out"), Some("57014")), "{r}");
    assert_eq!(r["error_position"], 3, "{r}");
    assert_eq!(tags(&r), ["SELECT", "SELECT"]);
}

/// The pid of a job's run once it runs `statement`, seen in
/// pg_stat_activity as a client's would be.
fn pid_running(c: &mut Client, j: i64, statement: &str) -> i32 {
    wait_until(&format!("job {j} to run {statement}"), T_JOBS, || {
        c.query_opt(
            "SELECT a.pid FROM bgw_jobs j JOIN pg_stat_activity a ON a.pid = j.pid \
              WHERE j.id = $1 AND a.query = $2 AND a.state = 'active'",
            &[&j, &statement],
        )
        .unwrap()
        .map(|r| r.get(0))
    })
}

const SLOW_VACUUM: &str = "VACUUM (DISABLE_PAGE_SKIPPING) big";

fn start_slow_vacuum(c: &mut Client) -> (i64, i32) {
    let j = job(
        c,
        &format!(
            "SELECT bgw_run($$SET vacuum_cost_delay = '20ms'; SET vacuum_cost_limit = 1; \
                              {SLOW_VACUUM}$$, atomic => false)"
        ),
    );
    let pid = pid_running(c, j, SLOW_VACUUM);
    // Its progress is visible, as for a client's VACUUM; wait until it is
    // inside the table.
    wait_until("pg_stat_progress_vacuum to show the run", T_JOBS, || {
        c.query_opt(
            "SELECT heap_blks_scanned FROM pg_stat_progress_vacuum \
              WHERE pid = $1 AND relid = 'big'::regclass AND heap_blks_scanned > 0",
            &[&pid],
        )
        .unwrap()
        .map(|_| ())
    });
    (j, pid)
}

#[test]
fn a_long_vacuum_stops_promptly_when_cancelled() {
    let (_cluster, mut c) = start();
    c.batch_execute(
        "CREATE TABLE big (x int, pad text); \
         INSERT INTO big SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g",
    )
    .unwrap();
    let total = scalar_i64(&mut c, "SELECT pg_relation_size('big') / 8192");

    // bgw_cancel: the worker is stopped inside the VACUUM.
    let (j, _) = start_slow_vacuum(&mut c);
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({j})")));
    let r = finished_run(&mut c, j, 1);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["error_position"], 3, "{r}");
    assert_eq!(r["error_statement"], SLOW_VACUUM);
    assert_eq!(tags(&r), ["SET", "SET"]);
    assert!(
        flag(
            &mut c,
            "SELECT last_vacuum IS NULL FROM pg_stat_user_tables WHERE relname = 'big'"
        ),
        "the VACUUM of {total} pages did not finish"
    );

    // bgw_terminate: the worker is stopped inside the VACUUM, and the run
    // counts as cancelled.
    let (j, pid) = start_slow_vacuum(&mut c);
    assert!(flag(&mut c, &format!("SELECT bgw_terminate({pid})")));
    let r = finished_run(&mut c, j, 1);
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["error_position"], 3, "{r}");
    assert!(flag(
        &mut c,
        "SELECT last_vacuum IS NULL FROM pg_stat_user_tables WHERE relname = 'big'"
    ));

    // pg_cancel_backend: the statement fails with 57014, recorded as
    // cancelled, and the job's worker leaves.
    let (j, pid) = start_slow_vacuum(&mut c);
    assert!(flag(&mut c, &format!("SELECT pg_cancel_backend({pid})")));
    let r = finished_run(&mut c, j, 1);
    assert_eq!(status(&r), (Some("cancelled"), Some("57014")), "{r}");
    assert_eq!(r["error_position"], 3, "{r}");
    assert!(flag(
        &mut c,
        "SELECT last_vacuum IS NULL FROM pg_stat_user_tables WHERE relname = 'big'"
    ));
    jobs_still_run(&mut c);
}

#[test]
fn a_concurrent_index_build_shows_its_progress() {
    let (cluster, mut c) = start();
    c.batch_execute("CREATE TABLE ci (x int); INSERT INTO ci SELECT generate_series(1, 1000)")
        .unwrap();
    // A writer in an open transaction: the build waits for it, in a phase
    // pg_stat_progress_create_index shows.
    let mut writer = cluster.connect();
    writer
        .batch_execute("BEGIN; INSERT INTO ci VALUES (0)")
        .unwrap();
    let statement = "CREATE INDEX CONCURRENTLY ci_x ON ci (x)";
    let j = job(&mut c, &format!("SELECT bgw_run('{statement}')"));
    let pid = pid_running(&mut c, j, statement);
    // The row appears in "initializing" first; the build then waits for the
    // writer, and must still be waiting while the writer's transaction is
    // open.
    wait_until("the build to wait for the writer", T_JOBS, || {
        c.query_opt(
            "SELECT phase FROM pg_stat_progress_create_index \
              WHERE pid = $1 AND relid = 'ci'::regclass \
                AND phase LIKE 'waiting for%'",
            &[&pid],
        )
        .unwrap()
        .map(|_| ())
    });
    assert!(
        flag(
            &mut c,
            &format!(
                "SELECT EXISTS (SELECT FROM pg_stat_activity \
                                 WHERE pid = {pid} AND state = 'active')"
            )
        ),
        "the build finished while a writer's transaction was open"
    );
    writer.batch_execute("COMMIT").unwrap();
    let r = finished_run(&mut c, j, 1);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert!(index_is_valid(&mut c, "ci_x"));
}

/// An error raised when the transaction commits (a deferred constraint) is
/// the commit's: no statement position, and `COMMIT`.
#[test]
fn an_error_at_commit_names_the_commit() {
    let (_cluster, mut c) = start();
    c.batch_execute(
        "CREATE TABLE parent (id int PRIMARY KEY); \
         CREATE TABLE child (parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED)",
    )
    .unwrap();
    for atomic in [true, false] {
        let j = job(
            &mut c,
            &format!(
                "SELECT bgw_run('INSERT INTO child VALUES (1); SELECT 1', atomic => {atomic})"
            ),
        );
        let r = outcome(&mut c, j);
        assert_eq!(status(&r), (Some("failed"), Some("23503")), "{r}");
        assert_eq!(r["error_position"], Value::Null, "{r}");
        assert_eq!(r["error_statement"], "COMMIT", "{r}");
    }
}

/// Text crosses between UTF-8 and the database's encoding both ways, as for
/// a client with client_encoding UTF8.
#[test]
fn a_job_in_a_latin1_database_reads_and_returns_text_in_its_encoding() {
    let (_cluster, mut c) = start();
    c.batch_execute(
        "CREATE DATABASE lat ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0",
    )
    .unwrap();
    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT length('é') AS n, chr(233) AS w$$, database => 'lat')",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"], json!([{"n": 1, "w": "é"}]));
    // A character LATIN1 has no room for, as for a client.
    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT '€' AS euro$$, database => 'lat')",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("failed"), Some("22P05")), "{r}");
}

// ------------------------------------------------------------------ recipes
// The README's "Recipes", as written there.

#[test]
fn recipe_count_relations_into_a_table_and_the_log() {
    let (cluster, mut c) = start();
    c.batch_execute("CREATE TABLE relation_counts (at timestamptz, relations int8)")
        .unwrap();
    let table = job(
        &mut c,
        "SELECT bgw_run($$INSERT INTO relation_counts SELECT now(), count(*) FROM pg_class$$,
                        every => '1 second')",
    );
    let log = job(
        &mut c,
        "SELECT bgw_run($job$DO $$ BEGIN
                              RAISE LOG 'relations: %', (SELECT count(*) FROM pg_class);
                            END $$ $job$, every => '1 second')",
    );
    wait_until("two counts in the table", T_JOBS, || {
        (scalar_i64(
            &mut c,
            "SELECT count(*) FROM relation_counts WHERE relations > 0",
        ) >= 2)
            .then_some(())
    });
    wait_until("two counts in the log", T_JOBS, || {
        (cluster.log_count("relations: ") >= 2).then_some(())
    });
    for j in [table, log] {
        assert!(flag(&mut c, &format!("SELECT bgw_cancel({j})")));
    }
}

#[test]
fn recipe_disconnect_sessions_idle_in_transaction() {
    let (cluster, mut c) = start();
    let mut idle = cluster.connect();
    idle.batch_execute("BEGIN; SELECT 1").unwrap();
    let idle_pid: i32 = idle
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let mut busy = cluster.connect();
    // The README's job, with a threshold of 1 second instead of 5 minutes.
    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                           WHERE state = 'idle in transaction'
                             AND state_change < now() - interval '1 second'$$,
                        every => '1 second')",
    );
    wait_until("the idle transaction to be ended", T_JOBS, || {
        (!pid_alive(&mut c, idle_pid)).then_some(())
    });
    assert!(idle.batch_execute("SELECT 1").is_err());
    // A session that is not idle in a transaction is left alone.
    busy.batch_execute("SELECT 1").unwrap();
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({j})")));
}

#[test]
fn recipe_reindex_invalid_indexes() {
    let (_cluster, mut c) = start();
    c.batch_execute("CREATE TABLE dup (x int); INSERT INTO dup VALUES (1), (1)")
        .unwrap();
    // A failed concurrent build leaves an invalid index behind.
    expect_error(&mut c, "CREATE UNIQUE INDEX CONCURRENTLY dup_x ON dup (x)");
    assert!(!index_is_valid(&mut c, "dup_x"));
    c.batch_execute("DELETE FROM dup WHERE ctid = (SELECT max(ctid) FROM dup)")
        .unwrap();

    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT format('REINDEX INDEX CONCURRENTLY %s', indexrelid::regclass)
                           FROM pg_index WHERE NOT indisvalid$$, every => '1 hour', gexec => true)",
    );
    let r = finished_run(&mut c, j, 1);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(tags(&r), ["SELECT", "REINDEX"]);
    assert_eq!(
        r["statements"][1]["text"],
        "REINDEX INDEX CONCURRENTLY dup_x"
    );
    assert!(index_is_valid(&mut c, "dup_x"));
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({j})")));
}

#[test]
fn recipe_vacuum_the_tables_with_the_most_dead_tuples() {
    let (_cluster, mut c) = start();
    c.batch_execute(
        "CREATE TABLE churn (x int); INSERT INTO churn SELECT generate_series(1, 5000); \
         DELETE FROM churn; \
         CREATE TABLE calm (x int); INSERT INTO calm VALUES (1)",
    )
    .unwrap();
    wait_until("the dead tuples to show in the statistics", T_JOBS, || {
        flag(
            &mut c,
            "SELECT n_dead_tup > 1000 FROM pg_stat_user_tables WHERE relname = 'churn'",
        )
        .then_some(())
    });
    let j = job(
        &mut c,
        "SELECT bgw_run($$SELECT format('VACUUM (ANALYZE) %I.%I', schemaname, relname)
                           FROM pg_stat_user_tables WHERE n_dead_tup > 1000
                          ORDER BY n_dead_tup DESC LIMIT 10$$, every => '1 hour', gexec => true)",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["statements"][1]["text"], "VACUUM (ANALYZE) public.churn");
    wait_stat(&mut c, "churn", "last_vacuum");
    wait_stat(&mut c, "churn", "last_analyze");
    assert!(flag(
        &mut c,
        "SELECT last_vacuum IS NULL FROM pg_stat_user_tables WHERE relname = 'calm'"
    ));
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({j})")));
}

#[test]
fn recipe_keep_a_table_of_custom_statistics() {
    let (_cluster, mut c) = start();
    c.batch_execute(
        "CREATE TABLE table_sizes (at timestamptz, relation regclass, bytes int8); \
         CREATE TABLE orders (id int); INSERT INTO orders SELECT generate_series(1, 1000)",
    )
    .unwrap();
    let j = job(
        &mut c,
        "SELECT bgw_run($$INSERT INTO table_sizes
                          SELECT now(), c.oid::regclass, pg_total_relation_size(c.oid)
                            FROM pg_class c
                           WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace$$,
                        every => '1 day')",
    );
    let r = outcome(&mut c, j);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    let bytes = scalar_i64(
        &mut c,
        "SELECT bytes FROM table_sizes WHERE relation = 'orders'::regclass",
    );
    assert_eq!(
        bytes,
        scalar_i64(&mut c, "SELECT pg_total_relation_size('orders')")
    );
    let _: Value = r;
    assert!(flag(&mut c, &format!("SELECT bgw_cancel({j})")));
}
