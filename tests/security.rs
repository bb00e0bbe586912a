//! Adversarial tests of the SQL jobs. A role `attacker`, granted the job
//! functions and the rights a cluster upgraded from PostgreSQL 14 leaves to
//! everyone (CREATE on schema public), tries to have the extension run its
//! code with raised rights, to stall or break the job scheduler, or to act
//! as roles it may not.
//!
//! The attacker's code is a trap, `public.bgw_evil(tag)`: it logs who called
//! it in `public.pwned`, and if that was a superuser it makes the attacker
//! one. Every test ends with `finish`: the attacker is still no superuser,
//! the trap never ran with raised rights, and a fresh job still succeeds.

mod common;

use common::*;
use postgres::{Client, GenericClient};
use serde_json::{Value, json};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// No static workers: the jobs have the server to themselves.
const BASE: &[&str] = &["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 8"];

const SETUP_ATTACKER: &str = "
    CREATE ROLE attacker LOGIN NOSUPERUSER;
    GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO attacker;
    GRANT SELECT ON bgw_jobs TO attacker;
    GRANT TEMP ON DATABASE postgres TO attacker;
    GRANT CREATE ON SCHEMA public TO attacker;
    GRANT CREATE ON DATABASE postgres TO attacker;
";

/// search_path values the attacker sets: its schema before the catalog, and
/// its temporary objects before everything.
const EVIL_FIRST: &str = "evil, pg_catalog, public";
const TEMP_FIRST: &str = "pg_temp, evil, pg_catalog, public";

/// The trap, and a trigger function that springs it.
const TRAP: &str = r#"
CREATE TABLE IF NOT EXISTS public.pwned (who text, tag text);
GRANT INSERT ON public.pwned TO PUBLIC;
CREATE OR REPLACE FUNCTION public.bgw_evil(tag text) RETURNS bool
LANGUAGE plpgsql AS $f$
BEGIN
    BEGIN
        INSERT INTO public.pwned VALUES (current_user, tag);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        ALTER ROLE attacker SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN true;
END
$f$;
CREATE OR REPLACE FUNCTION public.bgw_evil_trigger() RETURNS trigger
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM public.bgw_evil(pg_catalog.format('%s on %s', TG_OP, TG_TABLE_NAME));
    RETURN NULL;
END
$f$;
"#;

/// Operators, functions and aggregates the extension's SQL uses or might
/// use, planted in schema `@s@`. Each springs the trap, then does what the
/// catalog's own does. Some match the argument types more exactly than the
/// catalog's (`numeric * int4`, `regrole = regrole`, a typed
/// `jsonb_build_object`), so they win even behind pg_catalog in a path.
const ARSENAL: &str = r#"
DO $do$
DECLARE
    o record;
BEGIN
    FOR o IN
        SELECT * FROM (VALUES
            ('eq_int8', '=', 'int8', 'int8', 'bool'),
            ('eq_int4', '=', 'int4', 'int4', 'bool'),
            ('ne_int8', '<>', 'int8', 'int8', 'bool'),
            ('eq_name', '=', 'name', 'name', 'bool'),
            ('eq_text', '=', 'text', 'text', 'bool'),
            ('eq_oid', '=', 'oid', 'oid', 'bool'),
            ('eq_regrole', '=', 'regrole', 'regrole', 'bool'),
            ('concat_text', '||', 'text', 'text', 'text'),
            ('mul_numeric_int4', '*', 'numeric', 'int4', 'numeric'),
            ('sub_tstz', '-', 'timestamptz', 'timestamptz', 'interval'),
            ('add_tstz_interval', '+', 'timestamptz', 'interval', 'timestamptz'),
            ('lt_tstz', '<', 'timestamptz', 'timestamptz', 'bool'),
            ('le_tstz', '<=', 'timestamptz', 'timestamptz', 'bool'),
            ('gt_tstz', '>', 'timestamptz', 'timestamptz', 'bool'),
            ('ge_tstz', '>=', 'timestamptz', 'timestamptz', 'bool')
        ) AS v(fname, op, l, r, ret)
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION @s@.%I(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS $f$ BEGIN PERFORM public.bgw_evil(%L); RETURN a OPERATOR(pg_catalog.%s) b; END $f$',
            o.fname, o.l, o.r, o.ret, pg_catalog.format('%s(%s,%s)', o.op, o.l, o.r), o.op);
        EXECUTE pg_catalog.format(
            'CREATE OPERATOR @s@.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = @s@.%I)',
            o.op, o.l, o.r, o.fname);
    END LOOP;
END
$do$;

CREATE FUNCTION @s@.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.bgw_evil('now()'); RETURN pg_catalog.now(); END $f$;
CREATE FUNCTION @s@.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.bgw_evil('clock_timestamp()'); RETURN pg_catalog.clock_timestamp(); END $f$;
CREATE FUNCTION @s@.unnest(a anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.bgw_evil('unnest(anyarray)'); RETURN QUERY SELECT pg_catalog.unnest(a); END $f$;
CREATE FUNCTION @s@.max_step(a int4, b int4) RETURNS int4 STRICT LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.bgw_evil('max(int4)'); RETURN pg_catalog.int4larger(a, b); END $f$;
CREATE AGGREGATE @s@.max(int4) (SFUNC = @s@.max_step, STYPE = int4);
CREATE FUNCTION @s@.min_step(a timestamptz, b timestamptz) RETURNS timestamptz STRICT LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.bgw_evil('min(timestamptz)'); RETURN pg_catalog.timestamptz_smaller(a, b); END $f$;
CREATE AGGREGATE @s@.min(timestamptz) (SFUNC = @s@.min_step, STYPE = timestamptz);
CREATE FUNCTION @s@.jsonb_build_object(
    k1 text, v1 int8, k2 text, v2 int4, k3 text, v3 text, k4 text, v4 timestamptz,
    k5 text, v5 timestamptz, k6 text, v6 int4, k7 text, v7 int8, k8 text, v8 text,
    k9 text, v9 text, k10 text, v10 jsonb) RETURNS jsonb LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM public.bgw_evil('jsonb_build_object');
    RETURN pg_catalog.jsonb_build_object(k1, v1, k2, v2, k3, v3, k4, v4, k5, v5,
                                         k6, v6, k7, v7, k8, v8, k9, v9, k10, v10);
END $f$;
"#;

/// Temporary views named like the catalogs and the extension's tables, each
/// springing the trap when read (and, for the extension's tables, when
/// written: INSTEAD OF triggers). security_invoker, so that a superuser
/// reading them gets as far as the trap (pg_authid is superuser-only).
const SHADOWS: &[(&str, &str)] = &[
    ("pg_extension", "pg_catalog.pg_extension"),
    ("pg_namespace", "pg_catalog.pg_namespace"),
    ("pg_roles", "pg_catalog.pg_roles"),
    ("pg_authid", "pg_catalog.pg_authid"),
    ("pg_database", "pg_catalog.pg_database"),
    ("bgw_job_defs", "public.bgw_job_defs"),
    ("bgw_job_runs", "public.bgw_job_runs"),
];

// ------------------------------------------------------------------ setup

/// A cluster with jobs on, the extension in database postgres, and role
/// `attacker`; `extra` are more postgresql.conf lines.
fn start_cluster(extra: &[&str]) -> (Cluster, Client) {
    let conf: Vec<&str> = BASE.iter().chain(extra).copied().collect();
    let (cluster, mut c) = start_with_extension(&conf);
    c.batch_execute(SETUP_ATTACKER)
        .expect("set up role attacker");
    (cluster, c)
}

fn attacker(cluster: &Cluster) -> Client {
    cluster.connect_as("attacker", "postgres")
}

fn server_version_num(c: &mut Client) -> i32 {
    let v: String = c
        .query_one("SHOW server_version_num", &[])
        .expect("SHOW server_version_num")
        .get(0);
    v.parse().expect("server_version_num is a number")
}

/// What a superuser grants a role that is to use jobs.
fn grant_job_functions(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}; \
         GRANT SELECT ON bgw_jobs TO {role}"
    ))
    .unwrap_or_else(|e| panic!("grants to {role}: {e}"));
}

/// The trap, plus the arsenal in `schema` (created if it is not public).
/// Run it before the attacker changes its search_path.
fn plant(att: &mut Client, schema: &str) {
    att.batch_execute(TRAP).expect("create the trap");
    if schema != "public" {
        att.batch_execute(&format!(
            "CREATE SCHEMA {schema}; GRANT USAGE ON SCHEMA {schema} TO PUBLIC"
        ))
        .unwrap_or_else(|e| panic!("CREATE SCHEMA {schema}: {e}"));
    }
    att.batch_execute(&ARSENAL.replace("@s@", schema))
        .unwrap_or_else(|e| panic!("plant the arsenal in {schema}: {e}"));
}

/// The temporary views of SHADOWS, in the attacker's session.
fn shadow_with_temp_views(att: &mut Client) {
    for (name, source) in SHADOWS {
        let mut sql = format!(
            "CREATE TEMP VIEW {name} WITH (security_invoker = true) AS \
             SELECT * FROM {source} WHERE public.bgw_evil('temp view {name}');"
        );
        if name.starts_with("bgw_") {
            sql.push_str(&format!(
                "CREATE TRIGGER trap INSTEAD OF INSERT OR UPDATE OR DELETE ON pg_temp.{name} \
                 FOR EACH ROW EXECUTE FUNCTION public.bgw_evil_trigger();"
            ));
        }
        att.batch_execute(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

// ------------------------------------------------------------------- jobs

fn run(c: &mut impl GenericClient, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// bgw_result(job, timeout) as JSON; None for NULL.
fn result_within(c: &mut impl GenericClient, job: i64, timeout: &str) -> Option<Value> {
    let text: Option<String> = c
        .query_one(
            "SELECT bgw_result($1, $2::text::interval)::text",
            &[&job, &timeout],
        )
        .unwrap_or_else(|e| panic!("bgw_result({job}, '{timeout}'): {e}"))
        .get(0);
    text.map(|t| serde_json::from_str(&t).expect("bgw_result returns JSON"))
}

/// bgw_result(job, '30s') as JSON; panics on NULL.
fn result(c: &mut impl GenericClient, job: i64) -> Value {
    result_within(c, job, "30s").unwrap_or_else(|| {
        let rows: Vec<String> = c
            .query(
                "SELECT to_jsonb(j)::text FROM bgw_job_defs j WHERE id OPERATOR(pg_catalog.=) $1 \
                 UNION ALL SELECT to_jsonb(r)::text FROM bgw_job_runs r WHERE job OPERATOR(pg_catalog.=) $1",
                &[&job],
            )
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .unwrap_or_default();
        panic!("bgw_result({job}) is NULL: {rows:?}")
    })
}

/// (status, sqlstate) of an outcome.
fn status(r: &Value) -> (Option<&str>, Option<&str>) {
    (r["status"].as_str(), r["sqlstate"].as_str())
}

fn assert_failed(r: &Value, code: &str, message: &str, context: &str) {
    assert_eq!(status(r), (Some("failed"), Some(code)), "{context}: {r}");
    assert!(
        r["error"].as_str().is_some_and(|e| e.contains(message)),
        "{context}: the error should contain {message:?}: {r}"
    );
}

fn cancel(c: &mut impl GenericClient, job: i64) -> bool {
    c.query_one("SELECT bgw_cancel($1)", &[&job])
        .unwrap_or_else(|e| panic!("bgw_cancel({job}): {e}"))
        .get(0)
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map_or_else(|| format!("no SQLSTATE ({e})"), |s| s.code().to_string())
}

/// A job that keeps the scheduler busy: every 100 ms, with a timeout, so
/// that every part of the scheduler's statements is evaluated.
fn tick_job(c: &mut Client) -> i64 {
    run(
        c,
        "SELECT bgw_run('SELECT 1 AS tick', every => '100ms', timeout => '10s')",
    )
}

// The readers below run as the superuser, possibly with schema public first
// on the search_path, next to the attacker's operators there: they name the
// catalog's operators explicitly.

fn finished_runs(c: &mut Client, job: i64) -> i64 {
    c.query_one(
        "SELECT count(*) FROM bgw_job_runs \
          WHERE job OPERATOR(pg_catalog.=) $1 AND finished_at IS NOT NULL",
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

/// The highest run number of a job so far, finished or not; 0 for none.
fn last_run(c: &mut Client, job: i64) -> i32 {
    c.query_one(
        "SELECT coalesce(max(run), 0) FROM bgw_job_runs WHERE job OPERATOR(pg_catalog.=) $1",
        &[&job],
    )
    .expect("bgw_job_runs")
    .get(0)
}

/// Finished runs numbered above `after`: (run, status, result).
fn runs_after(c: &mut Client, job: i64, after: i32) -> Vec<(i32, String, Option<String>)> {
    c.query(
        "SELECT run, status, result::text FROM bgw_job_runs \
          WHERE job OPERATOR(pg_catalog.=) $1 AND run OPERATOR(pg_catalog.>) $2 \
            AND finished_at IS NOT NULL ORDER BY run",
        &[&job, &after],
    )
    .expect("bgw_job_runs")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// (state, reason) of a job, from the view bgw_jobs.
fn state_and_reason(c: &mut impl GenericClient, job: i64) -> (String, Option<String>) {
    let r = c
        .query_one(
            "SELECT state, reason FROM bgw_jobs WHERE id OPERATOR(pg_catalog.=) $1",
            &[&job],
        )
        .expect("bgw_jobs");
    (r.get(0), r.get(1))
}

/// (role, created_by) of a job, from the view bgw_jobs, as text.
fn role_and_creator(c: &mut impl GenericClient, job: i64) -> (String, String) {
    let r = c
        .query_one(
            "SELECT role::text, created_by::text FROM bgw_jobs WHERE id OPERATOR(pg_catalog.=) $1",
            &[&job],
        )
        .expect("bgw_jobs");
    (r.get(0), r.get(1))
}

fn job_pid(c: &mut Client, job: i64) -> Option<i32> {
    c.query_one(
        "SELECT pid FROM bgw_jobs WHERE id OPERATOR(pg_catalog.=) $1",
        &[&job],
    )
    .expect("bgw_jobs")
    .get(0)
}

/// This database's live scheduler (one runs while it has active jobs).
fn scheduler(c: &mut Client) -> Option<ListRow> {
    bgw_list(c)
        .into_iter()
        .find(|r| r.0 == "scheduler" && r.2.is_some())
}

/// The scheduler's pid, once bgw_list shows it running (the database must
/// have an active job).
fn wait_for_scheduler(c: &mut Client) -> i32 {
    wait_until("the job scheduler running", T, || {
        scheduler(c).filter(|r| r.3 == "running").and_then(|r| r.2)
    })
}

fn postmaster_started(c: &mut Client) -> String {
    c.query_one("SELECT pg_postmaster_start_time()::text", &[])
        .expect("pg_postmaster_start_time")
        .get(0)
}

/// Runs a client program of the installation (pg_dump, pg_restore) against
/// the cluster, as the OS user postgres; panics with its output on failure.
fn pg_tool(cluster: &Cluster, tool: &str, args: &[&str]) {
    let socket = cluster
        .socket_dir()
        .to_str()
        .expect("socket dir")
        .to_owned();
    let port = PORT.to_string();
    let mut all = vec![
        "--host",
        socket.as_str(),
        "--port",
        port.as_str(),
        "--username",
        "postgres",
    ];
    all.extend_from_slice(args);
    let out = run_as_postgres(&bindir().join(tool), &all);
    assert!(
        out.status.success(),
        "{tool} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

// ----------------------------------------------------------------- checks

/// Every call of the trap so far: (current_user, what sprang it).
fn trap_calls(c: &mut Client) -> Vec<(String, String)> {
    let planted: bool = c
        .query_one("SELECT to_regclass('public.pwned') IS NOT NULL", &[])
        .expect("to_regclass")
        .get(0);
    if !planted {
        return Vec::new();
    }
    c.query("SELECT who, tag FROM public.pwned", &[])
        .expect("read public.pwned")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn attacker_is_superuser(c: &mut Client) -> bool {
    c.query_one(
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'attacker'",
        &[],
    )
    .expect("pg_roles")
    .get(0)
}

fn assert_not_escalated(c: &mut Client) {
    let raised: Vec<_> = trap_calls(c)
        .into_iter()
        .filter(|(who, _)| who != "attacker")
        .collect();
    assert!(
        !attacker_is_superuser(c),
        "the attacker became a superuser; the trap ran as {raised:?}"
    );
    assert!(
        raised.is_empty(),
        "the attacker's code ran with raised rights: {raised:?}"
    );
}

/// Stricter, where nothing the attacker runs itself touches what it
/// planted: the extension never called any of it, with any rights.
fn assert_trap_untouched(c: &mut Client) {
    let calls = trap_calls(c);
    assert!(
        calls.is_empty(),
        "the extension's SQL called the attacker's objects: {calls:?}"
    );
}

fn assert_jobs_still_run(c: &mut Client) {
    let job = run(c, "SELECT bgw_run('SELECT 1 AS ok')");
    let r = result(c, job);
    assert_eq!(status(&r), (Some("succeeded"), None), "a fresh job: {r}");
    assert_eq!(r["result"], json!([{"ok": 1}]), "{r}");
}

/// The end of every test. The escalation check comes twice: the superuser's
/// own bgw_result in between must not spring a trap either.
fn finish(c: &mut Client) {
    assert_not_escalated(c);
    assert_jobs_still_run(c);
    assert_not_escalated(c);
}

/// Calls every job function and reads the view, as the attacker, in whatever
/// session state the test set up; each must work as usual.
fn exercise_job_functions(att: &mut Client) {
    let once = run(
        att,
        "SELECT bgw_run('SELECT 1 AS one', database => 'postgres', role => 'attacker')",
    );
    let r = result(att, once);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"], json!([{"one": 1}]), "{r}");
    assert!(!cancel(att, once), "bgw_cancel of a finished job");

    let recurring = run(
        att,
        "SELECT bgw_run('SELECT 2 AS two', every => '1 hour', timeout => '10s')",
    );
    assert!(cancel(att, recurring), "bgw_cancel of a scheduled job");
    let _ = result_within(att, recurring, "5s"); // its run, or NULL if none came

    // Whole rows, so that every column of the view is computed.
    let rows = att
        .query("SELECT j::text FROM bgw_jobs j", &[])
        .expect("the attacker reads bgw_jobs");
    assert!(rows.len() >= 2, "bgw_jobs shows {} jobs", rows.len());
    let (code, message, ..) = expect_error(att, "SELECT bgw_result(987654321)");
    assert_eq!(code, "42704", "{message}");
}

// ---------------------------------------------- the attacker's search_path

/// SET search_path = evil, pg_catalog, public, for the session and with SET
/// LOCAL: the job functions never resolve a name through it.
#[test]
fn a_hostile_search_path_in_the_session_is_never_used() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "evil");
    att.batch_execute(&format!("SET search_path = {EVIL_FIRST}"))
        .unwrap();
    exercise_job_functions(&mut att);

    att.batch_execute("RESET search_path").unwrap();
    let job = {
        let mut tx = att.transaction().expect("BEGIN");
        tx.batch_execute(&format!("SET LOCAL search_path = {EVIL_FIRST}"))
            .unwrap();
        let job = run(&mut tx, "SELECT bgw_run('SELECT 3 AS three')");
        tx.commit().expect("COMMIT");
        job
    };
    let mut tx = att.transaction().expect("BEGIN");
    tx.batch_execute(&format!("SET LOCAL search_path = {EVIL_FIRST}"))
        .unwrap();
    let r = result(&mut tx, job);
    let cancelled = cancel(&mut tx, job);
    tx.commit().expect("COMMIT");
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"], json!([{"three": 3}]), "{r}");
    assert!(!cancelled, "bgw_cancel of a finished job");

    assert_trap_untouched(&mut c);
    finish(&mut c);
}

/// Temporary views named pg_extension, pg_namespace, pg_roles, pg_authid,
/// pg_database, bgw_job_defs and bgw_job_runs: with the default search_path
/// (pg_temp is searched first for relations when the path does not name it)
/// and with pg_temp named first.
#[test]
fn temporary_views_named_like_catalogs_or_job_tables_are_never_used() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "evil");
    shadow_with_temp_views(&mut att);
    exercise_job_functions(&mut att);
    att.batch_execute(&format!("SET search_path = {TEMP_FIRST}"))
        .unwrap();
    exercise_job_functions(&mut att);
    assert_trap_untouched(&mut c);
    finish(&mut c);
}

/// ALTER ROLE attacker SET search_path, by the attacker itself: every new
/// session of the attacker (and its job runs) starts with it.
#[test]
fn a_search_path_set_on_the_role_is_never_used() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "evil");
    att.batch_execute(&format!(
        "ALTER ROLE attacker SET search_path = {TEMP_FIRST}"
    ))
    .expect("the attacker sets its own session default");
    drop(att);
    let mut att = attacker(&cluster);
    let path: String = att.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert!(path.starts_with("pg_temp, evil"), "search_path is {path}");
    shadow_with_temp_views(&mut att);
    exercise_job_functions(&mut att);
    assert_trap_untouched(&mut c);
    finish(&mut c);
}

/// The attacker's own SECURITY DEFINER functions, with SET search_path =
/// evil, pg_catalog, call the job functions: they run as the attacker, and
/// the extension still resolves nothing through that path.
#[test]
fn security_definer_functions_with_a_hostile_search_path_gain_nothing() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "evil");
    att.batch_execute(
        "CREATE FUNCTION public.sd_run(stmt text) RETURNS int8 LANGUAGE sql \
           SECURITY DEFINER SET search_path = evil, pg_catalog \
           AS $$ SELECT public.bgw_run(stmt) $$; \
         CREATE FUNCTION public.sd_result(job int8) RETURNS text LANGUAGE sql \
           SECURITY DEFINER SET search_path = evil, pg_catalog \
           AS $$ SELECT public.bgw_result(job, '30s')::text $$; \
         CREATE FUNCTION public.sd_cancel(job int8) RETURNS bool LANGUAGE sql \
           SECURITY DEFINER SET search_path = evil, pg_catalog \
           AS $$ SELECT public.bgw_cancel(job) $$;",
    )
    .expect("the attacker's SECURITY DEFINER functions");

    let job = run(
        &mut att,
        "SELECT public.sd_run('SELECT current_user::text AS who')",
    );
    let text: Option<String> = att
        .query_one("SELECT public.sd_result($1)", &[&job])
        .expect("sd_result")
        .get(0);
    let r: Value = serde_json::from_str(&text.expect("sd_result is NULL")).unwrap();
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"], json!([{"who": "attacker"}]), "{r}");
    assert_eq!(
        role_and_creator(&mut att, job),
        ("attacker".to_string(), "attacker".to_string())
    );

    let recurring = run(&mut att, "SELECT bgw_run('SELECT 2', every => '1 hour')");
    let cancelled: bool = att
        .query_one("SELECT public.sd_cancel($1)", &[&recurring])
        .expect("sd_cancel")
        .get(0);
    assert!(cancelled, "sd_cancel of a scheduled job");

    assert_trap_untouched(&mut c);
    finish(&mut c);
}

/// After SET ROLE, a job with role NULL runs as the role set, created by it;
/// and the role set cannot reach back to the session user's rights.
#[test]
fn after_set_role_jobs_run_as_the_role_set_and_no_higher() {
    let (cluster, mut c) = start_cluster(&[]);
    c.batch_execute("CREATE ROLE minion LOGIN; GRANT minion TO attacker")
        .unwrap();
    grant_job_functions(&mut c, "minion");
    let mut att = attacker(&cluster);
    att.batch_execute("SET ROLE minion").unwrap();
    let job = run(
        &mut att,
        "SELECT bgw_run('SELECT current_user::text AS who, session_user::text AS session')",
    );
    let (code, message, ..) =
        expect_error(&mut att, "SELECT bgw_run('SELECT 1', role => 'attacker')");
    assert_eq!(code, "42501", "minion ran a job as attacker: {message}");
    att.batch_execute("RESET ROLE").unwrap();

    let r = result(&mut att, job);
    assert_eq!(
        r["result"],
        json!([{"who": "minion", "session": "minion"}]),
        "{r}"
    );
    assert_eq!(
        role_and_creator(&mut att, job),
        ("minion".to_string(), "minion".to_string())
    );
    finish(&mut c);
}

// ------------------------------------------------- the scheduler's search_path

/// Operators and functions planted in schema public by a role with CREATE
/// there. With the default search_path pg_catalog comes first, but the
/// planted ones that match argument types more exactly still win, unless the
/// scheduler's path leaves public out.
#[test]
fn the_scheduler_never_calls_what_is_planted_in_public() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "public");
    let ticker = tick_job(&mut att);
    wait_runs(&mut c, ticker, 5);
    assert_not_escalated(&mut c);
    exercise_job_functions(&mut att);
    assert!(cancel(&mut att, ticker));
    finish(&mut c);
}

/// A misconfigured cluster: ALTER DATABASE postgres SET search_path =
/// public, pg_catalog. After a restart the scheduler, the run workers and
/// every session start with it; the extension must still leave public out.
#[test]
fn the_scheduler_ignores_public_even_when_the_database_puts_it_first() {
    let (mut cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "public");
    drop(att);
    c.batch_execute("ALTER DATABASE postgres SET search_path = public, pg_catalog")
        .unwrap();
    drop(c);
    cluster.restart();

    let mut c = cluster.connect();
    let path: String = c.query_one("SHOW search_path", &[]).unwrap().get(0);
    assert_eq!(path, "public, pg_catalog");
    let mut att = attacker(&cluster);
    let ticker = tick_job(&mut att);
    wait_runs(&mut c, ticker, 5);
    assert_not_escalated(&mut c);
    exercise_job_functions(&mut att);
    assert!(cancel(&mut att, ticker));
    finish(&mut c);
}

// ----------------------------------------------------------------- roles

/// Role carol, granted the job functions, and her job every 200 ms that
/// tells who runs it; returns once its first run said "carol".
fn carols_recurring_job(cluster: &Cluster, c: &mut Client) -> i64 {
    c.batch_execute("CREATE ROLE carol LOGIN").unwrap();
    grant_job_functions(c, "carol");
    let mut carol = cluster.connect_as("carol", "postgres");
    let job = run(
        &mut carol,
        "SELECT bgw_run('SELECT current_user::text AS who', every => '200ms')",
    );
    assert_eq!(result(&mut carol, job)["result"], json!([{"who": "carol"}]));
    job
}

/// A job keeps the identity of its role: renamed, it runs on as the same
/// role under its new name.
#[test]
fn a_renamed_role_keeps_running_its_jobs() {
    let (cluster, mut c) = start_cluster(&[]);
    let job = carols_recurring_job(&cluster, &mut c);
    c.batch_execute("ALTER ROLE carol RENAME TO dave").unwrap();
    // Runs 1..=n have finished; run n + 1 may have started before the
    // rename; every later one started after it.
    let n = finished_runs(&mut c, job);
    wait_runs(&mut c, job, n + 3);
    let later = runs_after(&mut c, job, n as i32 + 1);
    assert!(!later.is_empty());
    for (number, state, outcome) in &later {
        assert_eq!(
            (state.as_str(), outcome.as_deref()),
            ("succeeded", Some(r#"[{"who": "dave"}]"#)),
            "run {number} after the rename: {later:?}"
        );
    }
    assert_eq!(
        role_and_creator(&mut c, job),
        ("dave".to_string(), "dave".to_string())
    );
    assert!(cancel(&mut c, job));
    finish(&mut c);
}

/// Jobs keep the database's identity, OID and name: a job whose database
/// was renamed, dropped (and made again under the same name), or whose OID
/// now names another database (as after a restore into another cluster) is
/// taken off the schedule with a reason and never runs elsewhere.
#[test]
fn a_job_never_follows_its_database_oid_or_name_elsewhere() {
    let (_cluster, mut c) = start_cluster(&[]);
    for db in ["one", "two", "three"] {
        c.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    }
    let every = |db: &str| {
        format!(
            "SELECT bgw_run('SELECT current_database()::text AS db', every => '200ms', \
                            database => '{db}')"
        )
    };
    let renamed = run(&mut c, &every("one"));
    let dropped = run(&mut c, &every("two"));
    let moved = run(&mut c, &every("three"));
    for (job, db) in [(renamed, "one"), (dropped, "two"), (moved, "three")] {
        assert_eq!(result(&mut c, job)["result"], json!([{ "db": db }]));
    }
    // A run's worker may be connected at any moment: try until it is not.
    wait_until("ALTER DATABASE one RENAME TO uno", T, || {
        c.batch_execute("ALTER DATABASE one RENAME TO uno").ok()
    });
    c.batch_execute("DROP DATABASE two WITH (FORCE)").unwrap();
    c.batch_execute("CREATE DATABASE two").unwrap();
    // What a restore into another cluster can do: the OID is another's.
    c.execute(
        "UPDATE bgw_job_defs SET database = (SELECT oid FROM pg_database \
          WHERE datname OPERATOR(pg_catalog.=) 'postgres') WHERE id OPERATOR(pg_catalog.=) $1",
        &[&moved],
    )
    .unwrap();
    for job in [renamed, dropped, moved] {
        let last = last_run(&mut c, job);
        let reason = wait_until("the job is cancelled", T, || {
            let (state, reason) = state_and_reason(&mut c, job);
            (state == "cancelled").then_some(reason)
        });
        let reason = reason.expect("a reason");
        assert!(reason.contains("was dropped or renamed"), "{reason}");
        for (number, state, outcome) in &runs_after(&mut c, job, last) {
            assert_ne!(state, "succeeded", "job {job} run {number}: {outcome:?}");
        }
    }
    finish(&mut c);
}

/// An attacker's open transaction that cancelled its own running one-shot
/// job holds that job's row: the scheduler records the cancelled run and
/// frees its slot all the same, so with one job slot another user's job
/// still runs.
#[test]
fn a_locked_job_row_never_keeps_a_job_slot() {
    let (cluster, mut c) = start_cluster(&["bgworker_rs.max_jobs = 1"]);
    let mut att = attacker(&cluster);
    let job = run(&mut att, "SELECT bgw_run('SELECT pg_sleep(60)')");
    wait_until("the attacker's run starts", T, || job_pid(&mut c, job));
    let mut holder = attacker(&cluster);
    let mut tx = holder.transaction().unwrap();
    assert!(cancel(&mut tx, job));
    // Its run is recorded (and its slot freed) while the row stays locked.
    wait_runs(&mut c, job, 1);
    let other = run(&mut c, "SELECT bgw_run('SELECT 7 AS seven')");
    let r = result_within(&mut c, other, "20s").expect("a job while the attacker holds its row");
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    tx.rollback().unwrap();
    finish(&mut c);
}

/// The view shows each reader only the jobs it may manage; the statements
/// of other roles' jobs stay hidden, also from a leaky function in a WHERE
/// clause (security_barrier).
#[test]
fn the_view_shows_only_jobs_the_reader_may_manage() {
    let (cluster, mut c) = start_cluster(&[]);
    let mine = run(&mut c, "SELECT bgw_run('SELECT 42 AS secret_password')");
    let mut att = attacker(&cluster);
    let theirs = run(&mut att, "SELECT bgw_run('SELECT 1 AS attackers')");
    att.batch_execute(
        "CREATE TABLE public.leaked (sql text); \
         CREATE FUNCTION public.leak(t text) RETURNS bool COST 0.0000001 LANGUAGE plpgsql AS \
         $$ BEGIN INSERT INTO public.leaked VALUES (t); RETURN true; END $$",
    )
    .unwrap();
    let seen: Vec<i64> = att
        .query(
            "SELECT id FROM bgw_jobs WHERE public.leak(sql) ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(seen, vec![theirs]);
    let leaked: Vec<String> = att
        .query("SELECT sql FROM public.leaked", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !leaked.iter().any(|s| s.contains("secret_password")),
        "{leaked:?}"
    );
    let all = scalar_i64(
        &mut c,
        &format!("SELECT count(*) FROM bgw_jobs WHERE id IN ({mine}, {theirs})"),
    );
    assert_eq!(all, 2, "a superuser sees every job");
    finish(&mut c);
}

/// A guessable advisory lock held by another session cannot keep a worker
/// from starting (the worker_spi port takes none).
#[test]
fn no_session_lock_can_block_a_worker_start() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    // Keys an earlier version used, and plain ones.
    att.batch_execute(
        "SELECT pg_advisory_lock(1650947955, 6), pg_advisory_lock(6), pg_advisory_lock(0, 6)",
    )
    .unwrap();
    c.batch_execute("SET bgworker_rs.launch_timeout = '20s'; SELECT bgw_launch(6)")
        .expect("worker 6 starts while the attacker holds locks");
    finish(&mut c);
}

/// A look-alike of the extension's sequence, made in the target schema
/// before CREATE EXTENSION, makes the install fail; it is never adopted.
#[test]
fn a_planted_sequence_is_never_adopted_by_create_extension() {
    let cluster = Cluster::start(BASE);
    let mut c = cluster.connect();
    c.batch_execute("CREATE DATABASE t2").unwrap();
    let mut su = cluster.connect_as("postgres", "t2");
    su.batch_execute("CREATE ROLE attacker LOGIN; GRANT CREATE ON SCHEMA public TO attacker")
        .unwrap();
    let mut att = cluster.connect_as("attacker", "t2");
    att.batch_execute("CREATE SEQUENCE public.bgw_job_defs_id_seq")
        .unwrap();
    let e = su
        .batch_execute("CREATE EXTENSION bgworker_rs")
        .expect_err("CREATE EXTENSION over a planted sequence");
    assert_eq!(sqlstate(&e), "42P07", "{e}");
    let owner: String = su
        .query_one(
            "SELECT pg_get_userbyid(relowner)::text FROM pg_class \
              WHERE relname OPERATOR(pg_catalog.=) 'bgw_job_defs_id_seq'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "attacker");
    assert_eq!(
        scalar_i64(
            &mut su,
            "SELECT count(*) FROM pg_extension WHERE extname = 'bgworker_rs'"
        ),
        0
    );
    drop(su);
    drop(att);
    // The extension in database postgres is unaffected.
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    assert!(!attacker_is_superuser(&mut c));
    assert_jobs_still_run(&mut c);
}

/// A role dropped while it has a recurring job, and a new superuser created
/// under the same name: the job never runs as the newcomer. Either DROP
/// ROLE succeeds and the job is taken off the schedule with a reason, or it
/// refuses (2BP01) with a hint, and succeeds once the job is cancelled.
#[test]
fn a_dropped_role_never_runs_again_even_when_its_name_is_reused() {
    let (cluster, mut c) = start_cluster(&[]);
    let job = carols_recurring_job(&cluster, &mut c);
    // Her privileges would block DROP ROLE by themselves.
    c.batch_execute("DROP OWNED BY carol")
        .expect("DROP OWNED BY carol");
    let dropped_with_job = match c.batch_execute("DROP ROLE carol") {
        Ok(()) => true,
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("DROP ROLE carol: {e}"));
            assert_eq!(db.code().code(), "2BP01", "DROP ROLE carol: {e}");
            assert!(
                db.hint().is_some(),
                "DROP ROLE carol refused without a hint: {e}"
            );
            assert!(cancel(&mut c, job));
            c.batch_execute("DROP ROLE carol")
                .expect("DROP ROLE carol once her job is cancelled");
            false
        }
    };
    // Every run numbered above this one started after the drop.
    let before = last_run(&mut c, job);
    c.batch_execute("CREATE ROLE carol LOGIN SUPERUSER")
        .unwrap();

    let (_, reason) = wait_until("the dropped role's job off the schedule", T, || {
        let after = runs_after(&mut c, job, before);
        assert!(
            after.iter().all(|r| r.1 != "succeeded"),
            "job {job} ran after its role was dropped: {after:?}"
        );
        let (state, reason) = state_and_reason(&mut c, job);
        (state == "cancelled" && (reason.is_some() || !dropped_with_job)).then_some((state, reason))
    });
    if dropped_with_job {
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.to_lowercase().contains("role")),
            "the reason should say the role is gone: {reason:?}"
        );
    }
    // A few more scheduler ticks: still no run as the new carol.
    let ticker = tick_job(&mut c);
    wait_runs(&mut c, ticker, 5);
    assert!(cancel(&mut c, ticker));
    let after = runs_after(&mut c, job, before);
    assert!(
        after.iter().all(|r| r.1 != "succeeded"),
        "job {job} ran after its role was dropped: {after:?}"
    );
    finish(&mut c);
}

/// A member of a role who inherits its privileges but may not SET ROLE to
/// it (PostgreSQL 16+: WITH INHERIT TRUE, SET FALSE) may not run jobs or
/// launch workers as it; with SET TRUE it may, and losing SET again stops
/// the job's runs.
#[test]
fn inheriting_a_role_without_set_does_not_allow_acting_as_it() {
    let (cluster, mut c) = start_cluster(&[]);
    let version = server_version_num(&mut c);
    c.batch_execute("CREATE ROLE victim LOGIN; CREATE ROLE eve LOGIN")
        .unwrap();
    grant_job_functions(&mut c, "eve");
    if version >= 160000 {
        c.batch_execute("GRANT victim TO eve WITH INHERIT TRUE, SET FALSE")
            .unwrap();
        let mut eve = cluster.connect_as("eve", "postgres");
        for sql in [
            "SELECT bgw_run('SELECT 1', role => 'victim')",
            "SELECT bgw_launch(1, role => 'victim')",
        ] {
            let (code, message, ..) = expect_error(&mut eve, sql);
            assert_eq!(code, "42501", "{sql}: {message}");
        }
        c.batch_execute("REVOKE victim FROM eve; GRANT victim TO eve WITH INHERIT TRUE, SET TRUE")
            .unwrap();
    } else {
        c.batch_execute("GRANT victim TO eve").unwrap();
    }

    let mut eve = cluster.connect_as("eve", "postgres");
    let job = run(
        &mut eve,
        "SELECT bgw_run('SELECT current_user::text AS who', every => '200ms', role => 'victim')",
    );
    assert_eq!(result(&mut eve, job)["result"], json!([{"who": "victim"}]));
    if version >= 160000 {
        c.batch_execute("REVOKE victim FROM eve; GRANT victim TO eve WITH INHERIT TRUE, SET FALSE")
            .unwrap();
        let r = wait_until("a run refused once SET was revoked", T, || {
            let r = result(&mut c, job);
            (r["status"] != "succeeded").then_some(r)
        });
        assert_eq!(status(&r), (Some("failed"), Some("42501")), "{r}");
    }
    assert!(cancel(&mut c, job));
    finish(&mut c);
}

/// The job's SQL cannot take rights its role lacks: a worker's session is
/// authenticated as the job's role, not as the superuser who started it.
#[test]
fn a_job_cannot_take_rights_its_role_lacks() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    for sql in [
        "SET SESSION AUTHORIZATION postgres",
        "RESET SESSION AUTHORIZATION; ALTER ROLE attacker SUPERUSER",
        "SET ROLE postgres",
        "SELECT pg_catalog.set_config('role', 'postgres', false)",
        "ALTER ROLE attacker SUPERUSER",
    ] {
        let job = run(&mut att, &format!("SELECT bgw_run($q${sql}$q$)"));
        let r = result(&mut att, job);
        assert_eq!(status(&r), (Some("failed"), Some("42501")), "{sql}: {r}");
    }
    finish(&mut c);
}

// -------------------------------------------------- bounds and bad values

/// (argument, its name, the first server_version_num where the value parses).
const BAD_INTERVALS: &[(&str, &str, i32)] = &[
    ("every => '1000000 years'", "every", 0),
    ("every => '-1 year 361 days'", "every", 0),
    ("every => '1 mon -29 days'", "every", 0),
    ("every => '0'", "every", 0),
    ("every => '-1 s'", "every", 0),
    ("timeout => '-1 s'", "timeout", 0),
    ("timeout => '1 mon -29 days'", "timeout", 0),
    ("timeout => '-1 year 361 days'", "timeout", 0),
    ("timeout => '1000000 years'", "timeout", 0),
    ("every => 'infinity'", "every", 170000),
    ("every => '-infinity'", "every", 170000),
    ("timeout => 'infinity'", "timeout", 170000),
];

/// Intervals that are out of range, not positive, or positive only by
/// PostgreSQL's 30-day month are refused by bgw_run itself (22023, naming
/// the argument), never reach the scheduler, and leave no job behind.
#[test]
fn intervals_out_of_bounds_are_refused_by_bgw_run() {
    let (cluster, mut c) = start_cluster(&[]);
    let version = server_version_num(&mut c);
    let mut att = attacker(&cluster);
    let mut accepted = 0;
    for &(arg, name, since) in BAD_INTERVALS {
        if version < since {
            continue;
        }
        let sql = format!("SELECT bgw_run('SELECT 1', {arg})");
        let (code, message, ..) = expect_error(&mut att, &sql);
        assert_eq!(code, "22023", "{sql}: {message}");
        assert!(
            message.contains(name),
            "{sql}: the message does not name {name}: {message}"
        );
        let job = run(&mut att, "SELECT bgw_run('SELECT 1 AS ok')");
        let r = result(&mut att, job);
        assert_eq!(
            status(&r),
            (Some("succeeded"), None),
            "a job after {sql}: {r}"
        );
        accepted += 1;
    }
    let jobs: i64 = att
        .query_one("SELECT count(*) FROM bgw_jobs", &[])
        .unwrap()
        .get(0);
    assert_eq!(jobs, accepted, "a refused bgw_run left a job behind");
    finish(&mut c);
}

/// A json value that jsonb refuses (\u0000) is kept as its text; other
/// values of the same row keep their JSON form, text that jsonb accepts
/// comes back exactly, and the scheduler never stumbles over any of it.
#[test]
fn json_that_jsonb_refuses_is_kept_as_text() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    let nul = run(
        &mut att,
        r#"SELECT bgw_run($$SELECT 1 AS n, '{"a":"\u0000"}'::json AS j, '{"b":1}'::json AS ok$$)"#,
    );
    let other = run(&mut att, "SELECT bgw_run('SELECT 2 AS two')");
    let text = run(
        &mut att,
        r#"SELECT bgw_run($$SELECT chr(1) || 'é' || chr(128512) || '\u0000' AS t$$)"#,
    );
    let jsonb = run(
        &mut att,
        r#"SELECT bgw_run($$SELECT '{"a":"\u0000"}'::jsonb AS j$$)"#,
    );

    let r = result(&mut att, nul);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(
        r["result"],
        json!([{"n": 1, "j": r#"{"a":"\u0000"}"#, "ok": {"b": 1}}]),
        "{r}"
    );
    let r = result(&mut att, other);
    assert_eq!(r["result"], json!([{"two": 2}]), "{r}");
    let r = result(&mut att, text);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!(r["result"], json!([{"t": "\u{1}é\u{1F600}\\u0000"}]), "{r}");
    // jsonb refuses it in the job itself: an ordinary failure.
    let r = result(&mut att, jsonb);
    assert_eq!(status(&r), (Some("failed"), Some("22P05")), "{r}");

    let s = scheduler(&mut c).expect("the scheduler in bgw_list");
    assert_eq!((s.3.as_str(), s.4), ("running", 0), "{s:?}");
    finish(&mut c);
}

// ---------------------------------------------------------------- stalls

/// The attacker holds its own recurring job's row in an open transaction
/// (bgw_cancel, uncommitted): the scheduler still runs everyone else's
/// jobs, and that transaction cannot wait for the job (it would wait on
/// itself).
#[test]
fn an_open_transaction_holding_a_job_cannot_stall_the_scheduler() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    let held = run(&mut att, "SELECT bgw_run('SELECT 1', every => '100ms')");
    wait_runs(&mut c, held, 1);
    {
        let mut tx = att.transaction().expect("BEGIN");
        assert!(cancel(&mut tx, held), "bgw_cancel in the open transaction");
        let other = run(&mut c, "SELECT bgw_run('SELECT 2 AS two')");
        let r = result_within(&mut c, other, "10s")
            .expect("the scheduler stalled behind the attacker's open transaction");
        assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
        match tx.query_one("SELECT bgw_result($1, '1s')", &[&held]) {
            Ok(_) => panic!("bgw_result waited in the transaction that cancelled the job"),
            Err(e) => assert_eq!(sqlstate(&e), "55000", "{e}"),
        }
        tx.rollback().expect("ROLLBACK");
    }
    // Rolled back: the job runs on.
    let n = finished_runs(&mut c, held);
    wait_runs(&mut c, held, n + 2);
    assert_ne!(state_and_reason(&mut c, held).0, "cancelled");
    assert!(cancel(&mut att, held));
    finish(&mut c);
}

/// A transaction cannot wait for a job it created and has not committed,
/// and while it stays open other jobs run; nor can the attacker lock the
/// job rows through the view.
#[test]
fn an_uncommitted_job_cannot_be_awaited_or_block_others() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    {
        let mut tx = att.transaction().expect("BEGIN");
        let job = run(&mut tx, "SELECT bgw_run('SELECT 1')");
        let other = run(&mut c, "SELECT bgw_run('SELECT 2 AS two')");
        let r = result_within(&mut c, other, "10s")
            .expect("the scheduler stalled behind an uncommitted bgw_run");
        assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
        match tx.query_one("SELECT bgw_result($1, '1s')", &[&job]) {
            Ok(_) => panic!("bgw_result waited for a job its own transaction created"),
            Err(e) => assert_eq!(sqlstate(&e), "55000", "{e}"),
        }
        tx.rollback().expect("ROLLBACK");
    }
    {
        let mut tx = att.transaction().expect("BEGIN");
        if let Ok(rows) = tx.query("SELECT id FROM bgw_jobs FOR UPDATE", &[]) {
            panic!(
                "the attacker locked {} job rows through bgw_jobs",
                rows.len()
            );
        }
        tx.rollback().expect("ROLLBACK");
    }
    finish(&mut c);
}

// ------------------------------------------------------------ lost errors

/// With log_min_messages above ERROR the server reports no error to its log
/// (nor to an emit_log_hook): a failed run still records its SQLSTATE and
/// message. Also when a superuser's job turns the log off itself.
#[test]
fn errors_reach_the_outcome_even_when_the_server_logs_nothing() {
    for level in ["fatal", "panic"] {
        let setting = format!("log_min_messages = {level}");
        let (cluster, mut c) = start_cluster(&[setting.as_str()]);
        let mut att = attacker(&cluster);
        for (who, client) in [("attacker", &mut att), ("superuser", &mut c)] {
            for (sql, code, message) in [
                ("SELECT 1/0", "22012", "division by zero"),
                ("SELEC 1", "42601", "syntax error"),
            ] {
                let job = run(&mut *client, &format!("SELECT bgw_run('{sql}')"));
                let r = result(&mut *client, job);
                assert_failed(&r, code, message, &format!("{level}, {who}: {sql}"));
            }
        }
        let job = run(
            &mut c,
            "SELECT bgw_run('SET LOCAL log_min_messages = panic; SELECT 1/0')",
        );
        let r = result(&mut c, job);
        assert_failed(
            &r,
            "22012",
            "division by zero",
            &format!("{level}, SET LOCAL"),
        );
        finish(&mut c);
    }
}

// ---------------------------------------------------------- foreign pids

/// bgw_terminate(pid) as the attacker: false, or refused (42501); never true.
fn assert_terminate_refused(att: &mut Client, pid: i32, what: &str) {
    match att.query_one("SELECT bgw_terminate($1, '1s')", &[&pid]) {
        Ok(row) => assert!(
            !row.get::<_, bool>(0),
            "attacker: bgw_terminate({what}, pid {pid}) returned true"
        ),
        Err(e) => assert_eq!(
            sqlstate(&e),
            "42501",
            "attacker: bgw_terminate({what}, pid {pid}): {e}"
        ),
    }
}

/// bgw_terminate only stops workers of its own that are running now: not a
/// client backend, the postmaster, pid 0, another subsystem's worker, or the
/// pid a finished run's worker had. The attacker cannot stop the scheduler
/// or the superuser's run either.
#[test]
fn bgw_terminate_never_stops_a_process_that_is_not_its_running_worker() {
    // The worker of a finished run must be gone, not warm for the next run
    // (a warm worker is a running worker of ours, see tests/warm.rs).
    let (cluster, mut c) = start_cluster(&["bgworker_rs.job_worker_idle_time = 0"]);
    let mut att = attacker(&cluster);
    let mut bystander = cluster.connect();
    let bystander_pid: i32 = bystander
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let launcher: Option<i32> = c
        .query_opt(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'logical replication launcher'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    let finished = run(&mut c, "SELECT bgw_run('SELECT 1')");
    let old_pid = result(&mut c, finished)["pid"]
        .as_i64()
        .expect("a finished run's pid") as i32;
    let started = postmaster_started(&mut c);

    let mut targets = vec![
        ("a client backend", bystander_pid),
        ("the postmaster", cluster.postmaster_pid()),
        ("pid 0", 0),
        ("the worker of a finished run", old_pid),
    ];
    targets.extend(launcher.map(|pid| ("the logical replication launcher", pid)));
    for &(what, pid) in &targets {
        let stopped: bool = c
            .query_one("SELECT bgw_terminate($1, '1s')", &[&pid])
            .unwrap_or_else(|e| panic!("superuser: bgw_terminate({what}, pid {pid}): {e}"))
            .get(0);
        assert!(
            !stopped,
            "superuser: bgw_terminate({what}, pid {pid}) returned true"
        );
        assert_terminate_refused(&mut att, pid, what);
    }
    bystander
        .batch_execute("SELECT 1")
        .expect("the client backend still serves its client");
    assert!(pid_alive(&mut c, bystander_pid));
    if let Some(pid) = launcher {
        assert!(
            pid_alive(&mut c, pid),
            "the logical replication launcher was stopped"
        );
    }
    assert_eq!(postmaster_started(&mut c), started, "the server restarted");

    let sleeper = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    let scheduler_pid = wait_for_scheduler(&mut c);
    let sleeper_pid = wait_until("the sleeping job's pid", T, || job_pid(&mut c, sleeper));
    assert_terminate_refused(&mut att, scheduler_pid, "the job scheduler");
    assert_terminate_refused(&mut att, sleeper_pid, "the superuser's run");
    match att.query_one("SELECT bgw_cancel($1)", &[&sleeper]) {
        Ok(_) => panic!("the attacker cancelled the superuser's job"),
        Err(e) => assert_eq!(sqlstate(&e), "42501", "{e}"),
    }
    assert_eq!(
        wait_for_scheduler(&mut c),
        scheduler_pid,
        "the scheduler was restarted"
    );
    assert_eq!(
        job_pid(&mut c, sleeper),
        Some(sleeper_pid),
        "the superuser's run was stopped"
    );
    assert!(cancel(&mut c, sleeper));
    finish(&mut c);
}

// -------------------------------------------------------- dump and restore

/// pg_dump of database postgres, DROP EXTENSION, pg_restore: the jobs and
/// their runs come back, and the next job gets an id above every restored
/// one (the identity sequence is restored too).
#[test]
fn dump_and_restore_keep_the_jobs_and_never_reuse_an_id() {
    let (cluster, mut c) = start_cluster(&[]);
    let ids: Vec<i64> = (1..=3)
        .map(|n| run(&mut c, &format!("SELECT bgw_run('SELECT {n} AS n')")))
        .collect();
    for (n, &id) in (1..).zip(&ids) {
        assert_eq!(result(&mut c, id)["result"], json!([{"n": n}]));
    }

    let dump_path = cluster.socket_dir().join("postgres.dump");
    let dump = dump_path.to_str().expect("dump path");
    pg_tool(
        &cluster,
        "pg_dump",
        &["--format=custom", "--file", dump, "postgres"],
    );
    c.batch_execute("DROP EXTENSION bgworker_rs CASCADE")
        .expect("DROP EXTENSION");
    pg_tool(
        &cluster,
        "pg_restore",
        &["--exit-on-error", "--dbname", "postgres", dump],
    );

    assert_eq!(scalar_i64(&mut c, "SELECT count(*) FROM bgw_job_defs"), 3);
    assert_eq!(
        scalar_i64(
            &mut c,
            "SELECT count(*) FROM bgw_job_runs WHERE status = 'succeeded'"
        ),
        3
    );
    let newest = run(&mut c, "SELECT bgw_run('SELECT 4 AS n')");
    let highest = ids.iter().copied().max().unwrap_or(0);
    assert!(
        newest > highest,
        "job id {newest} after restoring ids up to {highest}"
    );
    assert_eq!(result(&mut c, newest)["result"], json!([{"n": 4}]));
    assert_eq!(result(&mut c, ids[0])["result"], json!([{"n": 1}]));
    finish(&mut c);
}

/// The worker_spi port writes `schemaN.counted` with its role's rights. A
/// role with CREATE on the database that makes `schema7.counted` first, with
/// a trigger, must not have the trigger run as the superuser who launches
/// worker 7: the launch fails with 42501 and the trigger never runs.
#[test]
fn a_worker_never_uses_a_schema_a_lesser_role_made_for_it() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    plant(&mut att, "public");
    att.batch_execute(
        "CREATE SCHEMA schema7; \
         CREATE TABLE schema7.counted (type text, value integer); \
         CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON schema7.counted \
           FOR EACH STATEMENT EXECUTE FUNCTION public.bgw_evil_trigger()",
    )
    .expect("the attacker prepares schema7");
    let e = c
        .batch_execute("SELECT bgw_launch(7)")
        .expect_err("launching into the attacker's schema");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert_eq!(
        message,
        "schema \"schema7\" is owned by role \"attacker\", not by the worker's role \"postgres\""
    );
    // The attacker's table in a schema of the worker's role: refused too.
    c.batch_execute(
        "DROP SCHEMA schema7 CASCADE; CREATE SCHEMA schema8; \
                     GRANT USAGE, CREATE ON SCHEMA schema8 TO attacker",
    )
    .unwrap();
    att.batch_execute(
        "CREATE TABLE schema8.counted (type text, value integer); \
         CREATE TRIGGER trap BEFORE INSERT OR UPDATE OR DELETE ON schema8.counted \
           FOR EACH STATEMENT EXECUTE FUNCTION public.bgw_evil_trigger()",
    )
    .expect("the attacker's table in schema8");
    let e = c
        .batch_execute("SELECT bgw_launch(8)")
        .expect_err("launching onto the attacker's table");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    // A worker with its own schema still runs.
    c.batch_execute("SELECT bgw_launch(9)")
        .expect("launch worker 9");
    finish(&mut c);
}

// ------------------------------------------- what the review of #13 found

/// A value of any size in a job's result is never copied out of the
/// server's memory, and what gexec keeps is bounded by what it costs, so
/// no job can make its worker abort and the server restart.
#[test]
fn huge_results_and_floods_of_generated_statements_cost_the_worker_nothing() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    let job = run(
        &mut att,
        "SELECT bgw_run($$SELECT repeat(chr(1), 200000000) AS v, 1 AS n$$)",
    );
    let r = result(&mut att, job);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_eq!((r["rows"].as_i64(), &r["result"]), (Some(1), &json!([])));
    // The worker's peak memory shows the 200 MB value was never copied (as
    // text, then as escaped JSON, it would take well over 1 GB). Read by
    // the run itself, as a superuser's job may.
    let job = run(
        &mut c,
        r"SELECT bgw_run($$SELECT repeat(chr(1), 200000000) AS v;
                          SELECT (regexp_match(pg_read_file('/proc/self/status'),
                                               'VmHWM:\s+(\d+) kB'))[1]::int8 AS peak_kb$$)",
    );
    let r = result(&mut c, job);
    let peak_kb = r["result"][0]["peak_kb"]
        .as_i64()
        .unwrap_or_else(|| panic!("{r}"));
    assert!(peak_kb < 700_000, "the worker peaked at {peak_kb} kB: {r}");

    // Empty values are skipped before they are kept.
    let job = run(
        &mut att,
        "SELECT bgw_run($$SELECT '' FROM generate_series(1, 3000000)$$, gexec => true)",
    );
    let r = result(&mut att, job);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    // Many tiny statements, or one huge one, meet the bound.
    let bound = "with gexec, the statements generated may take at most 64 MB";
    for script in [
        "SELECT ';' FROM generate_series(1, 3000000)",
        "SELECT repeat('x', 100000000)",
    ] {
        let job: i64 = att
            .query_one("SELECT bgw_run($1, gexec => true)", &[&script])
            .unwrap()
            .get(0);
        assert_failed(&result(&mut att, job), "54000", bound, script);
    }
    // Every session survived: the server never restarted.
    c.batch_execute("SELECT 1")
        .expect("the superuser's session");
    assert_eq!(
        cluster.log_count("terminated by signal"),
        0,
        "{}",
        cluster.log()
    );
    finish(&mut c);
}

/// `statement_timeout` of the role, or set by the script itself, holds in
/// a job as for a client; and the run's own timeout, once caught by the
/// script, still ends the run before its next statement.
#[test]
fn statement_timeouts_hold_in_jobs_and_the_run_timeout_cannot_be_dodged() {
    let (cluster, mut c) = start_cluster(&[]);
    c.batch_execute("ALTER ROLE attacker SET statement_timeout = '300ms'")
        .unwrap();
    let job = run(
        &mut c,
        "SELECT bgw_run('SELECT pg_sleep(5)', role => 'attacker')",
    );
    let r = result(&mut c, job);
    assert_failed(
        &r,
        "57014",
        "canceling statement due to statement timeout",
        "the role's setting",
    );
    c.batch_execute("ALTER ROLE attacker RESET statement_timeout")
        .unwrap();

    let mut att = attacker(&cluster);
    let job = run(
        &mut att,
        "SELECT bgw_run($$SET statement_timeout = '300ms'; SELECT pg_sleep(5)$$, atomic => false)",
    );
    let r = result(&mut att, job);
    assert_eq!(status(&r), (Some("failed"), Some("57014")), "{r}");
    assert_eq!(r["error_position"], 2, "{r}");

    let job = run(
        &mut att,
        "SELECT bgw_run($j$DO $d$ BEGIN PERFORM pg_sleep(3); \
                              EXCEPTION WHEN query_canceled THEN NULL; END $d$; \
                           SELECT pg_sleep(6)$j$, timeout => '1s', atomic => false)",
    );
    let r = result(&mut att, job);
    assert_eq!(status(&r), (Some("timed out"), Some("57014")), "{r}");
    assert_eq!(r["error_position"], 2, "{r}");
    assert_eq!(r["statements"][0]["tag"], "DO", "{r}");
    finish(&mut c);
}

// ------------------------------------------- what the review of #14 found

/// A due job whose row the attacker holds locked (bgw_alter in an open
/// transaction) is skipped, without the scheduler spinning over it.
#[test]
fn a_locked_due_job_never_makes_the_scheduler_spin() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    let job = run(
        &mut att,
        "SELECT bgw_run('SELECT 1', every => '1 hour', at => now() + interval '1 second')",
    );
    let mut holder = attacker(&cluster);
    let mut tx = holder.transaction().unwrap();
    tx.execute("SELECT bgw_alter($1, retries => 0)", &[&job])
        .unwrap();
    // Past its due time, the scheduler wakes about once a second for it: a
    // few transaction ids, not thousands.
    wait_until("the job to be due", T, || {
        let due: bool = c
            .query_one(
                "SELECT next_run_at < now() FROM bgw_jobs WHERE id = $1",
                &[&job],
            )
            .unwrap()
            .get(0);
        due.then_some(())
    });
    // The next transaction id, read without taking one.
    let xid = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let start = xid(&mut c);
    let spun = poll(Duration::from_secs(3), || {
        (xid(&mut c) - start > 200).then_some(())
    });
    assert!(
        spun.is_none(),
        "the scheduler burnt transaction ids while the row was locked"
    );
    tx.rollback().unwrap();
    let r = result(&mut c, job);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    finish(&mut c);
}

/// The transaction ids the server has handed out so far, read without
/// taking one: a scheduler that spins burns them by the thousand.
fn next_xid(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8",
        &[],
    )
    .unwrap()
    .get(0)
}

fn scheduler_wakes(c: &mut Client) -> i64 {
    c.query_one(
        "SELECT iterations FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL",
        &[],
    )
    .unwrap()
    .get(0)
}

/// Over 3 s, the scheduler neither burns transaction ids nor wakes more
/// than a few times a second (a loop that writes nothing burns no ids).
fn assert_no_spin(c: &mut Client, when: &str) {
    let (xid, wakes) = (next_xid(c), scheduler_wakes(c));
    let spun = poll(Duration::from_secs(3), || {
        (next_xid(c) - xid > 200 || scheduler_wakes(c) - wakes > 30).then_some(())
    });
    assert!(spun.is_none(), "the scheduler spun: {when}");
}

/// More queued runs than the scheduler takes in one batch, waiting for the
/// one job slot, never make it spin; then, held by the attacker (bgw_alter
/// in an open transaction on each of its jobs), they never keep another
/// role's run from starting once the slot is free, nor make it spin.
#[test]
fn a_full_queue_of_held_jobs_never_spins_or_starves_other_runs() {
    let (cluster, mut c) = start_cluster(&[
        "bgworker_rs.max_jobs = 1",
        "bgworker_rs.queue_timeout = '10min'",
    ]);
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocker to run", T, || job_pid(&mut c, blocker));
    let mut att = attacker(&cluster);
    let theirs: Vec<i64> = att
        .query_one(
            "SELECT array_agg(bgw_run('SELECT 1')) FROM generate_series(1, 70)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_no_spin(&mut c, "70 runs queued, every slot busy");

    let mut holder = attacker(&cluster);
    let mut tx = holder.transaction().unwrap();
    tx.execute(
        "SELECT bgw_alter(id, retries => 0) FROM unnest($1::int8[]) id",
        &[&theirs],
    )
    .unwrap();
    assert!(cancel(&mut c, blocker));
    let mine = run(&mut c, "SELECT bgw_run('SELECT 2')");
    let r = result(&mut c, mine);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    assert_no_spin(&mut c, "70 queued runs held by the attacker");
    tx.rollback().unwrap();
    // Let go, the attacker's runs all run, one at a time.
    wait_until("the attacker's 70 runs", T, || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM bgw_job_runs \
                  WHERE job OPERATOR(pg_catalog.=) ANY ($1) AND status = 'succeeded'",
                &[&theirs],
            )
            .unwrap()
            .get(0);
        (n == 70).then_some(())
    });
    finish(&mut c);
}

/// More finished runs to count than a batch, all of jobs the attacker holds
/// (bgw_alter in an open transaction; the runs expired waiting for a slot),
/// never make the scheduler spin, nor keep another role's runs from being
/// counted: a one-shot job of the victim still becomes finished.
#[test]
fn held_jobs_with_runs_to_count_never_spin_or_hold_up_others() {
    let (cluster, mut c) = start_cluster(&[
        "bgworker_rs.max_jobs = 1",
        "bgworker_rs.queue_timeout = '1s'",
    ]);
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocker to run", T, || job_pid(&mut c, blocker));
    let mut att = attacker(&cluster);
    let theirs: Vec<i64> = att
        .query_one(
            "SELECT array_agg(bgw_run('SELECT 1')) FROM generate_series(1, 260)",
            &[],
        )
        .unwrap()
        .get(0);
    let mut holder = attacker(&cluster);
    let mut tx = holder.transaction().unwrap();
    tx.execute(
        "SELECT bgw_alter(id, retries => 0) FROM unnest($1::int8[]) id",
        &[&theirs],
    )
    .unwrap();
    // Their runs expire (53000), finished but not counted: their jobs are
    // held.
    wait_until("the attacker's runs to expire", T * 3, || {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM bgw_job_runs \
                  WHERE job OPERATOR(pg_catalog.=) ANY ($1) AND sqlstate = '53000'",
                &[&theirs],
            )
            .unwrap()
            .get(0);
        (n == 260).then_some(())
    });
    assert!(cancel(&mut c, blocker));
    let mine = run(&mut c, "SELECT bgw_run('SELECT 1 AS ok')");
    let r = result(&mut c, mine);
    assert_eq!(status(&r), (Some("succeeded"), None), "{r}");
    wait_until("the victim's job to be finished", T, || {
        let state: String = c
            .query_one(
                "SELECT state FROM bgw_jobs WHERE id OPERATOR(pg_catalog.=) $1",
                &[&mine],
            )
            .unwrap()
            .get(0);
        (state == "finished").then_some(())
    });
    assert_no_spin(&mut c, "260 runs to count, their jobs held");
    tx.rollback().unwrap();
    finish(&mut c);
}

/// Runs `sql` (about job `job`, as `$1`) as the attacker while another of
/// its sessions has cancelled the job in a transaction still open: waits
/// until `sql` waits for that transaction, commits it, and returns what
/// `sql` then did. The job is cancelled after; the caller checks the rest.
fn behind_a_cancel(
    cluster: &Cluster,
    c: &mut Client,
    job: i64,
    sql: &'static str,
) -> Result<u64, postgres::Error> {
    let mut canceller = attacker(cluster);
    let mut tx = canceller.transaction().unwrap();
    assert!(cancel(&mut tx, job));
    let mut caller = attacker(cluster);
    let caller_pid: i32 = caller
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let call = std::thread::spawn(move || caller.execute(sql, &[&job]));
    wait_until(&format!("{sql} to wait for the cancel"), T, || {
        let waiting: bool = c
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND NOT granted)",
                &[&caller_pid],
            )
            .unwrap()
            .get(0);
        waiting.then_some(())
    });
    tx.commit().unwrap();
    let outcome = call.join().expect("the caller's thread");
    let state: String = c
        .query_one(
            "SELECT state FROM bgw_jobs WHERE id OPERATOR(pg_catalog.=) $1",
            &[&job],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "cancelled", "after {sql}");
    outcome
}

/// bgw_run_now that waited for a bgw_cancel of the same job fails (55000),
/// as after it; before, it queued a run of the cancelled job.
#[test]
fn a_run_now_waiting_for_a_cancel_fails() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    let job = run(
        &mut att,
        "SELECT bgw_run('SELECT 1', every => '1 hour', at => now() + interval '1 hour')",
    );
    let e = behind_a_cancel(&cluster, &mut c, job, "SELECT bgw_run_now($1)")
        .expect_err("a run of a cancelled job");
    assert_eq!(sqlstate(&e), "55000", "{e}");
    assert_eq!(last_run(&mut c, job), 0, "a run was queued");
    finish(&mut c);
}

/// A change of a job (bgw_alter) that waited for a bgw_cancel of the same
/// job to commit fails, as after it: a cancel is never undone. Before, it
/// wrote 'scheduled' back and the job ran again.
#[test]
fn a_change_waiting_for_a_cancel_never_brings_the_job_back() {
    let (cluster, mut c) = start_cluster(&[]);
    let mut att = attacker(&cluster);
    let job = run(
        &mut att,
        "SELECT bgw_run('SELECT 1', every => '1 hour', at => now() + interval '1 hour')",
    );
    let e = behind_a_cancel(
        &cluster,
        &mut c,
        job,
        "SELECT bgw_alter($1, schedule => '* * * * *')",
    )
    .expect_err("a change of a cancelled job");
    assert_eq!(sqlstate(&e), "55000", "{e}");
    finish(&mut c);
}

/// A queued run whose row the attacker holds locked (bgw_cancel in an open
/// transaction) does not keep other runs from expiring on time.
#[test]
fn a_locked_queued_run_never_holds_up_the_queue() {
    let (cluster, mut c) = start_cluster(&[
        "bgworker_rs.max_jobs = 1",
        "bgworker_rs.queue_timeout = '2s'",
    ]);
    let blocker = run(&mut c, "SELECT bgw_run('SELECT pg_sleep(600)')");
    wait_until("the blocker to run", T, || job_pid(&mut c, blocker));
    let mut att = attacker(&cluster);
    let theirs = run(&mut att, "SELECT bgw_run('SELECT 1')");
    let mine = run(&mut c, "SELECT bgw_run('SELECT 2')");
    let mut holder = attacker(&cluster);
    let mut tx = holder.transaction().unwrap();
    assert!(cancel(&mut tx, theirs));
    // While the attacker's transaction is still open, the other queued run
    // has expired and been recorded.
    let r = result(&mut c, mine);
    assert_eq!(status(&r), (Some("failed"), Some("53000")), "{r}");
    tx.rollback().unwrap();
    assert!(cancel(&mut c, blocker));
    finish(&mut c);
}
