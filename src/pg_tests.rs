//! In-backend tests (`cargo pgrx test`), run with the library preloaded.
//! Each body runs in a transaction that is rolled back; what needs several
//! sessions, restarts or the server log lives in `tests/`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;
    use std::time::{Duration, Instant};

    fn show(guc: &str) -> String {
        Spi::get_one::<String>(&format!("SHOW {guc}"))
            .unwrap()
            .unwrap_or_default()
    }

    #[pg_test]
    fn settings_have_documented_defaults() {
        assert_eq!(show("bgworker_rs.naptime"), "100ms"); // set by postgresql_conf_options
        assert_eq!(show("bgworker_rs.total_workers"), "2");
        assert_eq!(show("bgworker_rs.restart_time"), "5s");
        assert_eq!(show("bgworker_rs.database"), "postgres");
        assert_eq!(show("bgworker_rs.role"), "");
        assert_eq!(show("bgworker_rs.launch_timeout"), "30s");
        assert_eq!(show("bgworker_rs.max_jobs"), "8");
        assert_eq!(show("bgworker_rs.queue_timeout"), "1min");
        assert_eq!(show("bgworker_rs.history_max_age"), "30d");
        assert_eq!(show("bgworker_rs.history_max_runs"), "1000");
        assert_eq!(show("bgworker_rs.job_worker_idle_time"), "10s");
        let context = Spi::get_one::<String>(
            "SELECT string_agg(name || '=' || context, ',' ORDER BY name) FROM pg_settings WHERE name LIKE 'bgworker_rs.%'",
        )
        .unwrap()
        .unwrap_or_default();
        assert_eq!(
            context,
            "bgworker_rs.database=sighup,bgworker_rs.history_max_age=sighup,bgworker_rs.history_max_runs=sighup,bgworker_rs.job_worker_idle_time=sighup,bgworker_rs.launch_timeout=user,bgworker_rs.max_jobs=postmaster,bgworker_rs.monitor=postmaster,\
             bgworker_rs.naptime=sighup,bgworker_rs.queue_timeout=sighup,bgworker_rs.restart_time=postmaster,bgworker_rs.role=sighup,bgworker_rs.total_workers=postmaster"
        );
    }

    #[pg_test]
    fn static_workers_run_in_the_test_cluster() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
            let n = Spi::get_one::<i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bgworker_rs'",
            )
            .unwrap()
            .unwrap_or(0);
            if n == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "expected 2 static workers, saw {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[pg_test]
    fn launch_returns_the_pid_of_a_dynamic_worker() {
        let pid = Spi::get_one::<i32>("SELECT bgw_launch(21)")
            .unwrap()
            .expect("a pid, never NULL");
        // Started by the postmaster; attached (visible) a moment later.
        let deadline = Instant::now() + Duration::from_secs(20);
        let backend_type = loop {
            Spi::run("SELECT pg_stat_clear_snapshot()").unwrap();
            let t = Spi::get_one_with_args::<String>(
                "SELECT backend_type FROM pg_stat_activity WHERE pid = $1",
                &[pid.into()],
            );
            if let Ok(Some(t)) = t {
                break t;
            }
            assert!(
                Instant::now() < deadline,
                "worker {pid} never appeared in pg_stat_activity"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(backend_type, "bgworker_rs dynamic");
        assert_eq!(
            Spi::get_one_with_args::<bool>("SELECT pg_terminate_backend($1)", &[pid.into()])
                .unwrap(),
            Some(true)
        );
    }

    #[pg_test]
    fn only_the_view_helpers_are_executable_by_public() {
        // The extension's own functions; the pg_test build adds schema "tests".
        let ours = "SELECT p.oid FROM pg_proc p \
             JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass \
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'bgworker_rs' \
             WHERE p.pronamespace <> 'tests'::regnamespace";
        let total = Spi::get_one::<i64>(&format!("SELECT count(*) FROM ({ours}) f")).unwrap();
        assert!(
            total.unwrap_or(0) >= 1,
            "the check below must look at our functions"
        );
        // The view bgw_jobs calls these as its reader: one tells a pid, the
        // other whether the reader may manage a job.
        let public = Spi::get_one::<String>(&format!(
            "SELECT string_agg(f.oid::regproc::text, ',' ORDER BY f.oid::regproc::text) FROM ({ours}) f \
             WHERE has_function_privilege('public', f.oid, 'EXECUTE')"
        ))
        .unwrap();
        assert_eq!(public.as_deref(), Some("bgw_job_pid,bgw_job_visible"));
    }

    #[pg_test]
    fn list_shows_the_static_workers() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let running = Spi::get_one::<String>(
                "SELECT string_agg(format('%s/%s/%s/%s', index, kind, type, state), ',' ORDER BY index) \
                 FROM bgw_list() WHERE kind = 'static'",
            )
            .unwrap()
            .unwrap_or_default();
            if running == "1/static/bgworker_rs/running,2/static/bgworker_rs/running" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "static workers not listed as running: {running}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[pg_test(error = "invalid worker index 0")]
    fn index_zero_is_refused() {
        Spi::run("SELECT bgw_launch(0)").unwrap();
    }

    #[pg_test(error = "index must not be NULL")]
    fn null_index_is_refused() {
        Spi::run("SELECT bgw_launch(NULL)").unwrap();
    }

    #[pg_test(error = "flag \"ALLOWCONN\" specified more than once")]
    fn duplicate_flag_is_refused() {
        Spi::run("SELECT bgw_launch(1, flags => '{ALLOWCONN,ALLOWCONN}')").unwrap();
    }

    #[pg_test(error = "database \"no such db\" does not exist")]
    fn unknown_database_is_refused_at_launch() {
        Spi::run("SELECT bgw_launch(1, 'no such db')").unwrap();
    }

    #[pg_test(error = "role \"no such role\" does not exist")]
    fn unknown_role_is_refused_at_launch() {
        Spi::run("SELECT bgw_launch(1, NULL, 'no such role')").unwrap();
    }
}
