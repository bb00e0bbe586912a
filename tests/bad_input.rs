//! Bad input, table-driven: every SQL function and setting, each input with
//! the SQLSTATE and message it must raise. Afterwards the server is still up
//! and has not restarted (same pg_postmaster_start_time()).

mod common;

use common::*;

/// (statement, SQLSTATE, message). A 64-byte name is cut to 63 by `name`.
const CASES: &[(&str, &str, &str)] = &[
    // bgw_launch: NULL in each argument
    ("SELECT bgw_launch(NULL)", "22004", "index must not be NULL"),
    (
        "SELECT bgw_launch(1, flags => NULL)",
        "22004",
        "flags must not be NULL",
    ),
    // (NULL database, role and restart_after are defaults, not errors)
    // index
    ("SELECT bgw_launch(0)", "22023", "invalid worker index 0"),
    ("SELECT bgw_launch(-1)", "22023", "invalid worker index -1"),
    (
        "SELECT bgw_launch(-2147483648)",
        "22023",
        "invalid worker index -2147483648",
    ),
    (
        "SELECT bgw_launch(2147483648::int8::int4)",
        "22003",
        "integer out of range",
    ),
    // database names
    (
        "SELECT bgw_launch(1, '')",
        "3D000",
        "database \"\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, repeat('d', 64))",
        "3D000",
        "database \"ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, 'it''s')",
        "3D000",
        "database \"it's\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, 'a \"quoted\" db')",
        "3D000",
        "database \"a \"quoted\" db\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, 'with space')",
        "3D000",
        "database \"with space\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, 'données')",
        "3D000",
        "database \"données\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, '数据库')",
        "3D000",
        "database \"数据库\" does not exist",
    ),
    // role names
    (
        "SELECT bgw_launch(1, NULL, '')",
        "42704",
        "role \"\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, NULL, repeat('r', 64))",
        "42704",
        "role \"rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, NULL, 'o''brien')",
        "42704",
        "role \"o'brien\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, NULL, 'rôle')",
        "42704",
        "role \"rôle\" does not exist",
    ),
    (
        "SELECT bgw_launch(1, NULL, 'two words')",
        "42704",
        "role \"two words\" does not exist",
    ),
    // flags
    (
        "SELECT bgw_launch(1, flags => '{ALLOWCONN,ALLOWCONN}')",
        "22023",
        "flag \"ALLOWCONN\" specified more than once",
    ),
    (
        "SELECT bgw_launch(1, flags => '{allowconn}')",
        "22023",
        "unrecognized flag \"allowconn\"",
    ),
    (
        "SELECT bgw_launch(1, flags => '{\"\"}')",
        "22023",
        "unrecognized flag \"\"",
    ),
    (
        "SELECT bgw_launch(1, flags => '{ALLOWCONN,NULL}')",
        "22004",
        "flags array must not contain NULLs",
    ),
    (
        "SELECT bgw_launch(1, flags => ARRAY[NULL]::text[])",
        "22004",
        "flags array must not contain NULLs",
    ),
    (
        "SELECT bgw_launch(1, flags => '{{ALLOWCONN},{ALLOWCONN}}')",
        "22023",
        "flags array must be one-dimensional",
    ),
    // restart_after
    (
        "SELECT bgw_launch(1, restart_after => '-1 s')",
        "22023",
        "restart_after must not be negative",
    ),
    (
        "SELECT bgw_launch(1, restart_after => '25 days')",
        "22023",
        "restart_after must be at most 2147483 seconds",
    ),
    // bgw_terminate / bgw_wait
    (
        "SELECT bgw_terminate(NULL)",
        "22004",
        "pid must not be NULL",
    ),
    ("SELECT bgw_wait(NULL)", "22004", "pid must not be NULL"),
    (
        "SELECT bgw_terminate(1, '-1 ms')",
        "22023",
        "timeout must not be negative",
    ),
    (
        "SELECT bgw_wait(1, '-1 ms')",
        "22023",
        "timeout must not be negative",
    ),
    (
        "SELECT bgw_wait(1, '200000000 years')",
        "22008",
        "interval out of range",
    ),
    // settings
    (
        "ALTER SYSTEM SET bgworker_rs.naptime = -1",
        "22023",
        "-1 ms is outside the valid range for parameter \"bgworker_rs.naptime\"",
    ),
    (
        "ALTER SYSTEM SET bgworker_rs.naptime = 'soon'",
        "22023",
        "invalid value for parameter \"bgworker_rs.naptime\": \"soon\"",
    ),
    (
        "ALTER SYSTEM SET bgworker_rs.total_workers = 101",
        "22023",
        "101 is outside the valid range for parameter \"bgworker_rs.total_workers\"",
    ),
    (
        "ALTER SYSTEM SET bgworker_rs.total_workers = -1",
        "22023",
        "-1 is outside the valid range for parameter \"bgworker_rs.total_workers\"",
    ),
    (
        "ALTER SYSTEM SET bgworker_rs.restart_time = -2",
        "22023",
        "-2 s is outside the valid range for parameter \"bgworker_rs.restart_time\"",
    ),
    (
        "ALTER SYSTEM SET bgworker_rs.restart_time = 2147484",
        "22023",
        "2147484 s is outside the valid range for parameter \"bgworker_rs.restart_time\"",
    ),
    (
        "SET bgworker_rs.launch_timeout = 0",
        "22023",
        "0 ms is outside the valid range for parameter \"bgworker_rs.launch_timeout\"",
    ),
    (
        "SET bgworker_rs.naptime = '1s'",
        "55P02",
        "parameter \"bgworker_rs.naptime\" cannot be changed now",
    ),
    (
        "SET bgworker_rs.total_workers = 3",
        "55P02",
        "parameter \"bgworker_rs.total_workers\" cannot be changed without restarting the server",
    ),
    (
        "SET bgworker_rs.monitor = on",
        "55P02",
        "parameter \"bgworker_rs.monitor\" cannot be changed without restarting the server",
    ),
    (
        "SET bgworker_rs.max_jobs = 2",
        "55P02",
        "parameter \"bgworker_rs.max_jobs\" cannot be changed without restarting the server",
    ),
    (
        "ALTER SYSTEM SET bgworker_rs.max_jobs = 1025",
        "22023",
        "1025 is outside the valid range for parameter \"bgworker_rs.max_jobs\"",
    ),
    // bgw_run
    ("SELECT bgw_run(NULL)", "22004", "sql must not be NULL"),
    (
        "SELECT bgw_run(repeat('x', 8193))",
        "54000",
        "sql is too long",
    ),
    (
        "SELECT bgw_run('SELECT 1', every => '0')",
        "22023",
        "every must be greater than zero",
    ),
    (
        "SELECT bgw_run('SELECT 1', every => '-1 second')",
        "22023",
        "every must not be negative",
    ),
    (
        "SELECT bgw_run('SELECT 1', timeout => '0')",
        "22023",
        "timeout must be greater than zero",
    ),
    (
        "SELECT bgw_run('SELECT 1', timeout => '-1 ms')",
        "22023",
        "timeout must not be negative",
    ),
    (
        "SELECT bgw_run('SELECT 1', timeout => '1 microsecond')",
        "22023",
        "timeout must be between 1 millisecond and 2147483647 milliseconds",
    ),
    (
        "SELECT bgw_run('SELECT 1', timeout => '25 days')",
        "22023",
        "timeout must be between 1 millisecond and 2147483647 milliseconds",
    ),
    (
        "SELECT bgw_run('SELECT 1', database => 'nowhere')",
        "3D000",
        "database \"nowhere\" does not exist",
    ),
    (
        "SELECT bgw_run('SELECT 1', role => 'nobody')",
        "42704",
        "role \"nobody\" does not exist",
    ),
    // bgw_result and bgw_cancel
    ("SELECT bgw_result(NULL)", "22004", "job must not be NULL"),
    (
        "SELECT bgw_result(1, '-1s')",
        "22023",
        "timeout must not be negative",
    ),
    (
        "SELECT bgw_result(424242)",
        "42704",
        "bgworker_rs job 424242 does not exist",
    ),
    (
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT bgw_result(1)",
        "0A000",
        "bgw_result cannot wait in a REPEATABLE READ or SERIALIZABLE transaction",
    ),
    (
        "ROLLBACK; SELECT bgw_cancel(NULL)",
        "22004",
        "job must not be NULL",
    ),
    (
        "SELECT bgw_cancel(-1)",
        "42704",
        "bgworker_rs job -1 does not exist",
    ),
    (
        "SET bgworker_rs.no_such_setting = 1",
        "42602",
        "invalid configuration parameter name \"bgworker_rs.no_such_setting\"",
    ),
];

#[test]
fn bad_inputs_raise_specific_errors_and_leave_the_server_up() {
    let cluster = Cluster::start(&["bgworker_rs.total_workers = 0", "bgworker_rs.max_jobs = 2"]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let started: String = c
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);

    let mut failures = Vec::new();
    for (sql, code, message) in CASES {
        let (got_code, got_message, ..) = expect_error(&mut c, sql);
        // PostgreSQL 18 prints units in the range: compare up to it.
        let got_message = got_message
            .split(" (")
            .next()
            .unwrap_or_default()
            .to_string();
        if (got_code.as_str(), got_message.as_str()) != (*code, *message) {
            failures.push(format!(
                "{sql}\n   want {code} {message}\n   got  {got_code} {got_message}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} inputs:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    println!(
        "{} bad inputs raised the expected SQLSTATE and message",
        CASES.len()
    );

    // The largest index is fine, and nothing above left a worker behind.
    assert!(worker_pids(&mut c, "bgworker_rs dynamic").is_empty());
    let pid: i32 = c
        .query_one("SELECT bgw_launch(2147483647)", &[])
        .unwrap()
        .get(0);
    assert!(
        c.query_one(
            "SELECT to_regclass('schema2147483647.counted') IS NOT NULL",
            &[]
        )
        .unwrap()
        .get::<_, bool>(0)
    );
    assert!(
        c.query_one("SELECT bgw_terminate($1)", &[&pid])
            .unwrap()
            .get::<_, bool>(0)
    );

    let now: String = c
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(started, now, "the server restarted");
    assert!(!cluster.log().contains("reinitializing"));
}
