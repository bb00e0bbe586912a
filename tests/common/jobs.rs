//! Helpers for tests of SQL jobs: create, wait for and read runs.

use super::{T_JOBS, wait_until};
use postgres::Client;
use serde_json::Value;

/// The int8 a `SELECT bgw_run(...)` returns.
pub fn job(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

/// bgw_result(job, '60s') as JSON; panics on NULL.
pub fn outcome(c: &mut Client, job: i64) -> Value {
    let text: Option<String> = c
        .query_one("SELECT bgw_result($1, '60s')::text", &[&job])
        .unwrap_or_else(|e| panic!("bgw_result({job}): {e}"))
        .get(0);
    let text = text.unwrap_or_else(|| panic!("bgw_result({job}) is NULL"));
    serde_json::from_str(&text).expect("bgw_result returns JSON")
}

/// Run `run` of `job` from bgw_job_runs once it has finished, polled with
/// short statements (no snapshot is held while waiting, so a concurrent
/// index build in the job never waits for this session).
pub fn finished_run(c: &mut Client, job: i64, run: i32) -> Value {
    wait_until(&format!("run {run} of job {job} to finish"), T_JOBS, || {
        let row = c
            .query_opt(
                "SELECT to_jsonb(r)::text FROM bgw_job_runs r \
                  WHERE job = $1 AND run = $2 AND finished_at IS NOT NULL",
                &[&job, &run],
            )
            .expect("bgw_job_runs");
        row.map(|r| serde_json::from_str(&r.get::<_, String>(0)).expect("json"))
    })
}

/// (status, sqlstate) of an outcome.
pub fn status(r: &Value) -> (Option<&str>, Option<&str>) {
    (r["status"].as_str(), r["sqlstate"].as_str())
}

/// The command tags of an outcome's `statements`, in order.
pub fn tags(r: &Value) -> Vec<String> {
    r["statements"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s["tag"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
