//! What differs between PostgreSQL versions: the custom wait event and the
//! ROLELOGINCHECK flag, both PostgreSQL 17+.

mod common;

use common::*;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn server_version_num(c: &mut postgres::Client) -> i32 {
    let v: String = c.query_one("SHOW server_version_num", &[]).unwrap().get(0);
    v.parse().unwrap()
}

#[test]
fn worker_waits_on_its_own_wait_event_from_17() {
    let cluster = Cluster::start(&[
        "bgworker_rs.naptime = '1h'",
        "bgworker_rs.total_workers = 1",
    ]);
    let mut c = cluster.connect();
    let version = server_version_num(&mut c);
    let expected = if version >= 170000 {
        "WorkerSpiMain"
    } else {
        "Extension"
    };
    let (kind, event) = wait_until("the static worker sleeps on its latch", T, || {
        let r = c
            .query_opt(
                "SELECT wait_event_type, wait_event FROM pg_stat_activity \
                 WHERE backend_type = 'bgworker_rs' AND state = 'idle' AND wait_event IS NOT NULL",
                &[],
            )
            .unwrap()?;
        Some((r.get::<_, String>(0), r.get::<_, String>(1)))
    });
    assert_eq!(
        (kind.as_str(), event.as_str()),
        ("Extension", expected),
        "server {version}"
    );
    if version >= 170000 {
        let listed: i64 = c
            .query_one("SELECT count(*) FROM pg_wait_events WHERE type = 'Extension' AND name = 'WorkerSpiMain'", &[])
            .unwrap()
            .get(0);
        assert_eq!(listed, 1);
    }
}

#[test]
fn rolelogincheck_flag_from_17() {
    let cluster = Cluster::start(&["bgworker_rs.total_workers = 0"]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION bgworker_rs; CREATE ROLE quiet NOLOGIN; CREATE ROLE alice LOGIN;
         GRANT CREATE ON DATABASE postgres TO quiet;
         GRANT quiet TO alice; GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO alice;",
    )
    .unwrap();
    let version = server_version_num(&mut c);
    let launch = "SELECT bgw_launch(1, role => 'quiet', flags => '{ROLELOGINCHECK}')";
    if version >= 170000 {
        // Without the flag the role may not log in; with it, it runs.
        let (code, ..) = expect_error(&mut c, "SELECT bgw_launch(1, role => 'quiet')");
        assert_eq!(code, "28000");
        let pid: i32 = c.query_one(launch, &[]).unwrap().get(0);
        let user: String = c
            .query_one(
                "SELECT usename::text FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        assert_eq!(user, "quiet");
        // Superusers only.
        let mut alice = cluster.connect_as("alice", "postgres");
        let (code, msg, ..) = expect_error(
            &mut alice,
            "SELECT bgw_launch(2, role => 'quiet', flags => '{ROLELOGINCHECK}')",
        );
        assert_eq!(
            (code.as_str(), msg.as_str()),
            ("42501", "permission denied to use flag \"ROLELOGINCHECK\"")
        );
    } else {
        let (code, msg, detail, _) = expect_error(&mut c, launch);
        assert_eq!(
            (code.as_str(), msg.as_str()),
            (
                "0A000",
                "flag \"ROLELOGINCHECK\" requires PostgreSQL 17 or later"
            )
        );
        assert!(
            detail
                .unwrap_or_default()
                .starts_with("This server is PostgreSQL 1")
        );
        let (_, _, _, hint) =
            expect_error(&mut c, "SELECT bgw_launch(1, flags => '{rolelogincheck}')");
        assert_eq!(
            hint.as_deref(),
            Some("Valid flags are: ALLOWCONN. Flags are case-sensitive.")
        );
    }
    assert!(worker_pids(&mut c, "bgworker_rs dynamic").len() <= 1);
}
