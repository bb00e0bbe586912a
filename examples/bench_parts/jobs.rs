//! The job figures of `scripts/bench`: the round trip of a statement through
//! a job (with its plot, `bench/latency.svg`), the scheduler beside pg_cron,
//! and the scheduler at 1,000 jobs. Included by `bench.rs`.

use super::common::{Cluster, pg_config};
use super::{Figure, ms, one, percentile, sorted};
use postgres::Client;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Linux's USER_HZ: /proc counts CPU time in 1/100 s.
const TICK_MS: f64 = 10.0;

/// Fields of /proc/PID/stat after the command name: index 0 is field 3
/// (state), 1 the ppid, 11..=14 utime, stime, cutime, cstime.
fn stat_fields(pid: i32) -> Vec<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = text.rsplit_once(')').map_or("", |(_, rest)| rest);
    after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect()
}

/// CPU time of a process in ms: its own (user + system), and that of the
/// children it has reaped.
fn cpu_ms(pid: i32) -> (f64, f64) {
    let f = stat_fields(pid);
    let g = |i: usize| f.get(i).copied().unwrap_or(0.0) * TICK_MS;
    (g(11) + g(12), g(13) + g(14))
}

/// The postmaster of the server `c` is connected to.
fn postmaster_pid(c: &mut Client) -> i32 {
    let backend: i32 = one(c, "SELECT pg_backend_pid()");
    stat_fields(backend).get(1).copied().unwrap_or(0.0) as i32
}

/// CPU time in ms of the whole server: the postmaster, every process it has
/// now, and every child it has reaped (run workers that came and went).
fn server_cpu_ms(postmaster: i32) -> f64 {
    let (own, reaped) = cpu_ms(postmaster);
    let mut total = own + reaped;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid != postmaster && stat_fields(pid).get(1).copied() == Some(postmaster as f64) {
            total += cpu_ms(pid).0;
        }
    }
    total
}

fn pss_kb(pid: i32) -> f64 {
    super::memory(pid).0
}

/// Round trip of a one-row statement through `bgw_run` + `bgw_result`,
/// interleaved with the same statement over the client connection; with
/// the server's `fsync` as it is set now. Returns the sorted samples.
fn round_trips(c: &mut Client, n: usize) -> (Vec<f64>, Vec<f64>) {
    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS bench_small AS SELECT g FROM generate_series(1, 100) g",
    )
    .unwrap();
    let q = "SELECT count(*) FROM bench_small";
    let (mut ours, mut client) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let job: i64 = c.query_one("SELECT bgw_run($1)", &[&q]).unwrap().get(0);
        let status: String = c
            .query_one("SELECT bgw_result($1, '60s')->>'status'", &[&job])
            .unwrap()
            .get(0);
        ours.push(ms(t.elapsed()));
        assert_eq!(status, "succeeded", "job {job}");

        let t = Instant::now();
        c.query_one(q, &[]).unwrap();
        client.push(ms(t.elapsed()));
    }
    (sorted(ours), sorted(client))
}

fn set_fsync(c: &mut Client, on: bool) {
    c.batch_execute(&format!(
        "ALTER SYSTEM SET fsync = {}",
        if on { "on" } else { "off" }
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    // The setting reaches every process at its next look at its signals;
    // this session's is the one that commits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while one::<String>(c, "SHOW fsync") != if on { "on" } else { "off" } {
        assert!(Instant::now() < deadline, "fsync never changed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Figure: the statement round trip through a job, with `fsync` off (the
/// bench cluster's setting) and on (the server's default), and the plot of
/// the first, by percentile.
pub fn job_round_trip(cluster: &Cluster, n: usize, svg: Option<&str>) -> Vec<Figure> {
    let mut c = cluster.connect();
    let mut figures = Vec::new();
    for fsync in [false, true] {
        set_fsync(&mut c, fsync);
        let (ours, client) = round_trips(&mut c, n);
        if let (false, Some(path)) = (fsync, svg) {
            let plot = latency_svg(&ours, &client, n);
            std::fs::write(path, plot).unwrap_or_else(|e| panic!("write {path}: {e}"));
        }
        let ratio = percentile(&ours, 0.5) / percentile(&client, 0.5);
        figures.push(round_trip_figure(
            format!(
                "statement round trip via bgw_run + bgw_result, p50 / p99 ({n} jobs, fsync {})",
                if fsync { "on" } else { "off" }
            ),
            &ours,
            &client,
            "p50 <= 1 ms and <= 10x",
            Some(percentile(&ours, 0.5) <= 1.0 && ratio <= 10.0),
        ));
    }
    set_fsync(&mut c, false);
    // Without warm workers: each run forks and connects a new worker.
    set_idle_time(&mut c, "0");
    let (ours, client) = round_trips(&mut c, n);
    set_idle_time(&mut c, "10s");
    figures.push(round_trip_figure(
        format!(
            "the same without warm workers (job_worker_idle_time = 0), p50 / p99 ({n} jobs, fsync off)"
        ),
        &ours,
        &client,
        "reported",
        None,
    ));
    figures
}

/// A round-trip figure: p50 / p99 of ours and of the client, the ratio of
/// the p50s.
fn round_trip_figure(
    name: String,
    ours: &[f64],
    client: &[f64],
    goal: &str,
    met: Option<bool>,
) -> Figure {
    let p50_p99 = |v: &[f64]| format!("{:.2} / {:.2} ms", percentile(v, 0.5), percentile(v, 0.99));
    Figure {
        name,
        ours: p50_p99(ours),
        baseline: format!("{} (same statement, client connection)", p50_p99(client)),
        ratio: percentile(ours, 0.5) / percentile(client, 0.5),
        goal: goal.into(),
        met,
    }
}

fn set_idle_time(c: &mut Client, value: &str) {
    // Apart: ALTER SYSTEM cannot run in a transaction block.
    c.batch_execute(&format!(
        "ALTER SYSTEM SET bgworker_rs.job_worker_idle_time = '{value}'"
    ))
    .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while one::<String>(c, "SHOW bgworker_rs.job_worker_idle_time") != value {
        assert!(
            Instant::now() < deadline,
            "job_worker_idle_time never changed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Round-trip latency by percentile, ours and the client's, on a log scale.
fn latency_svg(ours: &[f64], client: &[f64], n: usize) -> String {
    let (w, h) = (640.0, 400.0);
    let (left, right, top, bottom) = (70.0, 20.0, 40.0, 50.0);
    let (lo, hi) = (0.01_f64, 100.0_f64); // ms, log scale
    let x = |p: f64| left + p * (w - left - right);
    let y = |v: f64| {
        let v = v.clamp(lo, hi);
        top + (hi.log10() - v.log10()) / (hi.log10() - lo.log10()) * (h - top - bottom)
    };
    let line = |data: &[f64]| {
        (0..=100)
            .map(|p| {
                let q = p as f64 / 100.0;
                format!("{:.1},{:.1}", x(q), y(percentile(data, q)))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">Round trip of a one-row SELECT, by percentile ({n} each, fsync off)</text>"#,
        w / 2.0
    );
    for v in [0.01, 0.1, 1.0, 10.0, 100.0] {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" x2="{}" y1="{yv:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v} ms</text>"##,
            w - right,
            left - 6.0,
            y(v) + 4.0,
            yv = y(v)
        );
    }
    for p in [0, 25, 50, 75, 90, 99, 100] {
        let xv = x(p as f64 / 100.0);
        let _ = writeln!(
            s,
            r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="{top}" y2="{}" stroke="#eee"/><text x="{xv:.1}" y="{}" text-anchor="middle">p{p}</text>"##,
            h - bottom,
            h - bottom + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#,
        (left + w - right) / 2.0,
        h - 10.0
    );
    for (data, colour, label, row) in [
        (ours, "#c0392b", "bgw_run + bgw_result", 0.0),
        (client, "#2471a3", "same statement, client connection", 1.0),
    ] {
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            line(data)
        );
        let ly = top + 14.0 + row * 18.0;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{label}</text>"#,
            left + 10.0,
            left + 34.0,
            left + 40.0,
            ly + 4.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Whether Debian's pg_cron is installed for this PostgreSQL.
fn pg_cron_installed() -> bool {
    let out = std::process::Command::new(pg_config())
        .arg("--pkglibdir")
        .output()
        .expect("pg_config");
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::path::Path::new(&dir).join("pg_cron.so").exists()
}

/// How long until the next minute starts on the server's clock.
fn to_next_minute(c: &mut Client) -> Duration {
    let left_ms: f64 = one(
        c,
        "SELECT (extract(epoch FROM date_trunc('minute', clock_timestamp()) \
                 + interval '1 minute' - clock_timestamp()) * 1000)::float8",
    );
    Duration::from_millis(left_ms.max(0.0) as u64)
}

/// Waits until the next minute starts, less `early`: a wait for a
/// wall-clock boundary, not a guess at how long some work takes.
fn until_next_minute(c: &mut Client, early: Duration) {
    std::thread::sleep(to_next_minute(c).saturating_sub(early));
}

fn wait_count(c: &mut Client, sql: &str, want: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let n: i64 = one(c, sql);
        if n >= want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {n} of {want} after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lateness (ms) of the rows `sys` wrote into bench_late from `due` on:
/// when the statement ran, after the minute it was due at.
fn fan_out_lateness(c: &mut Client, sys: &str, due: &str) -> Vec<f64> {
    sorted(
        c.query(
            "SELECT (extract(epoch FROM at - $2::text::timestamptz) * 1000)::float8 \
               FROM bench_late WHERE sys = $1 AND at >= $2::text::timestamptz",
            &[&sys, &due],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect(),
    )
}

/// Goal 3: the scheduler beside pg_cron 1.4.2 (Debian's
/// `postgresql-15-cron`), in a cluster of its own that preloads both, with
/// 8 runs at a time each (`max_jobs`, `cron.max_running_jobs`) and pg_cron in
/// its worker mode (a background worker per run, as ours).
pub fn beside_pg_cron(quick: bool) -> Vec<Figure> {
    if !pg_cron_installed() {
        return vec![Figure {
            name: "beside pg_cron".into(),
            ours: "-".into(),
            baseline: "pg_cron is not installed for this PostgreSQL (Debian packages it for 15)"
                .into(),
            ratio: f64::NAN,
            goal: "-".into(),
            met: None,
        }];
    }
    let cluster = Cluster::start(&[
        "shared_preload_libraries = 'bgworker_rs,pg_cron'",
        "cron.database_name = 'postgres'",
        "cron.use_background_workers = on",
        "cron.max_running_jobs = 8",
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 8",
        "max_worker_processes = 64",
        // Nothing else comes and goes: the server's CPU is the jobs'.
        "autovacuum = off",
    ]);
    let mut c = cluster.connect();
    c.batch_execute(
        "CREATE EXTENSION bgworker_rs; CREATE EXTENSION pg_cron;
         CREATE TABLE bench_late (sys text, at timestamptz);
         -- keeps our scheduler, as pg_cron's launcher, always there
         SELECT bgw_run('SELECT 1', every => '1 day', at => now() + interval '1 day');",
    )
    .unwrap();
    let postmaster = postmaster_pid(&mut c);
    let mut figures = Vec::new();

    // A 1-second recurring job, 60 runs: ours only, pg_cron 1.4.2 has no
    // schedule finer than a minute (seconds came in 1.5).
    let runs = if quick { 10 } else { 60 };
    let id: i64 = one(&mut c, "SELECT bgw_run('SELECT 1', every => '1s')");
    let cpu0 = server_cpu_ms(postmaster);
    wait_count(
        &mut c,
        &format!("SELECT count(*) FROM bgw_job_runs WHERE job = {id} AND finished_at IS NOT NULL"),
        runs,
        Duration::from_secs(runs as u64 * 2 + 30),
    );
    let cpu_1s = (server_cpu_ms(postmaster) - cpu0) / runs as f64;
    c.query_one("SELECT bgw_cancel($1)", &[&id]).unwrap();
    let late: Vec<f64> = sorted(
        c.query(
            "SELECT (extract(epoch FROM started_at - due_at) * 1000)::float8 FROM bgw_job_runs \
              WHERE job = $1 AND started_at IS NOT NULL ORDER BY run LIMIT $2",
            &[&id, &runs],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect(),
    );
    figures.push(Figure {
        name: format!(
            "beside pg_cron: a 1-second job, lateness p50 / p99 ({runs} runs); server CPU per run"
        ),
        ours: format!(
            "{:.1} / {:.1} ms; {cpu_1s:.1} ms CPU",
            percentile(&late, 0.5),
            percentile(&late, 0.99)
        ),
        baseline: "pg_cron 1.4.2: no second schedules (added in 1.5)".into(),
        ratio: f64::NAN,
        goal: "reported".into(),
        met: None,
    });

    if !quick {
        // 60 jobs due at the same minute, each inserting when it ran: ours at
        // one minute, pg_cron's at the next, the other idle meanwhile.
        let n = 60;
        let mut cpu = Vec::new();
        let mut dues = Vec::new();
        for sys in ["ours", "pg_cron"] {
            let insert = format!("INSERT INTO bench_late VALUES ('{sys}', clock_timestamp())");
            // All due at the same minute, the next: made neither in a
            // minute's last 10 s nor in its first 5 (pg_cron 1.4.2 runs a
            // job made just after a minute began in that minute, late).
            let left = to_next_minute(&mut c);
            if left < Duration::from_secs(10) {
                std::thread::sleep(left + Duration::from_secs(5));
            } else if left > Duration::from_secs(55) {
                std::thread::sleep(left - Duration::from_secs(55));
            }
            for i in 0..n {
                let sql = match sys {
                    "ours" => format!("SELECT bgw_schedule('fan{i}', '* * * * *', $1)"),
                    _ => format!("SELECT cron.schedule('fan{i}', '* * * * *', $1)"),
                };
                c.query_one(sql.as_str(), &[&insert]).unwrap();
            }
            let due: String = one(
                &mut c,
                "SELECT (date_trunc('minute', clock_timestamp()) + interval '1 minute')::text",
            );
            until_next_minute(&mut c, Duration::from_millis(500));
            let cpu0 = server_cpu_ms(postmaster);
            wait_count(
                &mut c,
                &format!(
                    "SELECT count(*) FROM bench_late WHERE sys = '{sys}' AND at >= '{due}'::timestamptz"
                ),
                n,
                Duration::from_secs(60),
            );
            dues.push(due);
            // Recorded too: ours in bgw_job_runs, pg_cron's in job_run_details.
            let recorded = match sys {
                "ours" => {
                    "SELECT count(*) FROM bgw_job_runs r JOIN bgw_jobs j ON j.id = r.job \
                            WHERE j.name LIKE 'fan%' AND r.finished_at IS NOT NULL"
                }
                _ => "SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'",
            };
            wait_count(&mut c, recorded, n, Duration::from_secs(60));
            cpu.push((server_cpu_ms(postmaster) - cpu0) / n as f64);
            match sys {
                "ours" => c
                    .batch_execute("SELECT bgw_cancel(id) FROM bgw_jobs WHERE name LIKE 'fan%'")
                    .unwrap(),
                _ => c
                    .batch_execute("SELECT cron.unschedule(jobid) FROM cron.job")
                    .unwrap(),
            }
        }
        let ours = fan_out_lateness(&mut c, "ours", &dues[0]);
        let theirs = fan_out_lateness(&mut c, "pg_cron", &dues[1]);
        let p = |v: &[f64], q| percentile(v, q);
        let ratio = p(&ours, 0.5) / p(&theirs, 0.5);
        figures.push(Figure {
            name: format!(
                "beside pg_cron: {n} jobs due at one minute, lateness of the statement p50 / p99"
            ),
            ours: format!("{:.1} / {:.1} ms", p(&ours, 0.5), p(&ours, 0.99)),
            baseline: format!(
                "{:.1} / {:.1} ms (pg_cron 1.4.2)",
                p(&theirs, 0.5),
                p(&theirs, 0.99)
            ),
            ratio,
            goal: "ahead at p50 and p99".into(),
            met: Some(p(&ours, 0.5) <= p(&theirs, 0.5) && p(&ours, 0.99) <= p(&theirs, 0.99)),
        });
        figures.push(Figure {
            name: format!("beside pg_cron: server CPU per run ({n} jobs due at one minute)"),
            ours: format!("{:.1} ms", cpu[0]),
            baseline: format!("{:.1} ms (pg_cron 1.4.2)", cpu[1]),
            ratio: cpu[0] / cpu[1],
            goal: "ahead".into(),
            met: Some(cpu[0] <= cpu[1]),
        });
    }

    // Idle memory: our scheduler against pg_cron's launcher, both having run
    // the jobs above.
    let sched: i32 = one(
        &mut c,
        "SELECT pid FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL LIMIT 1",
    );
    let launcher: i32 = one(
        &mut c,
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_cron launcher'",
    );
    let (ours, theirs) = (pss_kb(sched), pss_kb(launcher));
    let parts = |pid: i32, lib: &str, total: f64| {
        let (code, shm) = (super::pss_of(pid, lib), super::pss_of(pid, "zero"));
        format!("[{code:.0}, {shm:.0}, {:.0}]", total - code - shm)
    };
    figures.push(Figure {
        name: "beside pg_cron: PSS of the idle scheduler [of it: its library's code, shared memory, the rest]".into(),
        ours: format!("{ours:.0} kB {}", parts(sched, "bgworker_rs.so", ours)),
        baseline: format!(
            "{theirs:.0} kB {} (pg_cron launcher)",
            parts(launcher, "pg_cron.so", theirs)
        ),
        ratio: ours / theirs,
        goal: "ahead".into(),
        met: Some(ours <= theirs),
    });
    figures
}

/// Goal 4: the scheduler at 50 and 100 runs due a second, then at 100 due
/// among 1,000 jobs: its CPU per second of wall time, and the lateness of
/// the runs, over a window of `window`.
pub fn scheduler_scale(quick: bool) -> Vec<Figure> {
    let cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.max_jobs = 16",
        "max_worker_processes = 64",
        "autovacuum = off",
    ]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let window = Duration::from_secs(if quick { 4 } else { 10 });
    let mut rows = Vec::new();
    let add = |c: &mut Client, n: usize, every: &str, at_later: bool| {
        let at = if at_later {
            "now() + interval '1 day'"
        } else {
            "NULL"
        };
        c.batch_execute(&format!(
            "SELECT bgw_run('SELECT 1', every => '{every}', at => {at}) FROM generate_series(1, {n})"
        ))
        .unwrap();
    };
    let mut measure = |c: &mut Client, label: &str, due: usize, jobs: usize| {
        // Each phase starts from vacuumed tables, as autovacuum keeps them
        // (it is off here, for quiet): otherwise a later phase would also
        // pay for the dead index entries of the earlier phases' runs, and
        // the figures would compare history, not due runs or idle jobs.
        c.batch_execute("VACUUM bgw_job_runs, bgw_job_defs")
            .unwrap();
        // Settle: the first runs of new jobs all come at once.
        std::thread::sleep(Duration::from_secs(2));
        let sched: i32 = one(
            c,
            "SELECT pid FROM bgw_list() WHERE kind = 'scheduler' AND pid IS NOT NULL LIMIT 1",
        );
        let from: String = one(c, "SELECT clock_timestamp()::text");
        let cpu0 = cpu_ms(sched).0;
        let t = Instant::now();
        std::thread::sleep(window);
        let cpu = (cpu_ms(sched).0 - cpu0) / t.elapsed().as_secs_f64();
        let late: Vec<f64> = sorted(
            c.query(
                "SELECT (extract(epoch FROM started_at - due_at) * 1000)::float8 \
                   FROM bgw_job_runs WHERE due_at >= $1::text::timestamptz \
                    AND due_at < clock_timestamp() - interval '1s' AND started_at IS NOT NULL",
                &[&from],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
        );
        rows.push((label.to_string(), due, jobs, cpu, late));
    };
    add(&mut c, 50, "1s", false);
    measure(&mut c, "50 due a second", 50, 50);
    add(&mut c, 50, "1s", false);
    measure(&mut c, "100 due a second", 100, 100);
    add(&mut c, 900, "1 day", true);
    measure(&mut c, "100 due a second among 1,000 jobs", 100, 1000);
    c.batch_execute("SELECT bgw_cancel(id) FROM bgw_jobs")
        .unwrap();

    let mut figures = Vec::new();
    for (label, due, jobs, cpu, late) in &rows {
        figures.push(Figure {
            name: format!("scheduler scale: {label} ({jobs} jobs): scheduler CPU per second; lateness p50 / p99 ({} runs)", late.len()),
            ours: format!(
                "{cpu:.0} ms/s ({:.2} ms per run); {:.1} / {:.1} ms",
                cpu / *due as f64,
                percentile(late, 0.5),
                percentile(late, 0.99)
            ),
            baseline: "-".into(),
            ratio: f64::NAN,
            goal: "reported".into(),
            met: None,
        });
    }
    let per_run = |i: usize| rows[i].3 / rows[i].1 as f64;
    let linear = per_run(1) / per_run(0);
    figures.push(Figure {
        name: "scheduler scale: CPU per due run, 100 vs 50 due a second".into(),
        ours: format!("{:.2} ms", per_run(1)),
        baseline: format!("{:.2} ms", per_run(0)),
        ratio: linear,
        goal: "no worse than linear (<= 1.25x)".into(),
        met: Some(linear <= 1.25),
    });
    let idle = rows[2].3 / rows[1].3;
    figures.push(Figure {
        name: "scheduler scale: CPU at 1,000 jobs vs 100 (100 due a second in both)".into(),
        ours: format!("{:.0} ms/s", rows[2].3),
        baseline: format!("{:.0} ms/s", rows[1].3),
        ratio: idle,
        goal: "idle jobs cost nothing (<= 1.25x)".into(),
        met: Some(idle <= 1.25),
    });
    figures
}
