//! bgworker_rs benchmarks, each figure measured against a baseline of
//! PostgreSQL's own in the same run, interleaved, and reported as a ratio:
//! this machine is shared and noisy, so absolute times mean little alone.
//! Run through `scripts/bench`, which builds and installs a release build.
//!
//!   cargo run --release --example bench -- [--quick] [--out FILE] [--only FIGURES]
//!
//! `--only` takes a comma-separated list of figure groups (`launch`, `loop`,
//! `memory`, `round-trip`, `scale`, `pg_cron`, `scheduler`), to measure a
//! few while working on them; the table is then incomplete.
//!
//! `BGW_PG_CONFIG` selects the PostgreSQL installation (default Debian's 15).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "bench_parts/jobs.rs"]
mod jobs;

use common::{Cluster, PORT, bindir, wait_until};
use postgres::Client;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

struct Options {
    quick: bool,
    out: Option<String>,
    svg: Option<String>,
    /// Figure groups to measure (`--only`); empty: all.
    only: Vec<String>,
}

impl Options {
    fn wants(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

const GROUPS: [&str; 7] = [
    "launch",
    "loop",
    "memory",
    "round-trip",
    "scale",
    "pg_cron",
    "scheduler",
];

struct Figure {
    name: String,
    ours: String,
    baseline: String,
    ratio: f64,
    goal: String,
    /// `None`: a figure reported without a goal.
    met: Option<bool>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

fn one<T: for<'a> postgres::types::FromSql<'a>>(c: &mut Client, sql: &str) -> T {
    c.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .get(0)
}

fn server_version_num(c: &mut Client) -> i32 {
    one::<String>(c, "SHOW server_version_num")
        .parse()
        .unwrap_or(0)
}

/// Figure 1: Launch-to-ready latency: bgw_launch until the worker is connected and
/// initialized, against the launch cost of a parallel worker (the same query
/// with and without a forced parallel worker), interleaved.
fn launch_latency(cluster: &Cluster, n: usize) -> Figure {
    let mut ours_c = cluster.connect();
    let mut par = cluster.connect();
    let mut seq = cluster.connect();
    let force = if server_version_num(&mut par) >= 160000 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    par.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS bench_small AS SELECT g FROM generate_series(1, 100) g; ANALYZE bench_small;
         SET {force} = on; SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
         SET min_parallel_table_scan_size = 0; SET max_parallel_workers_per_gather = 1;"
    ))
    .unwrap();
    seq.batch_execute("SET max_parallel_workers_per_gather = 0")
        .unwrap();
    let plan: Vec<String> = par
        .query(
            "EXPLAIN (ANALYZE, COSTS OFF) SELECT count(*) FROM bench_small",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("Workers Launched: 1")),
        "no parallel worker was launched: {plan:?}"
    );

    let q = "SELECT count(*) FROM bench_small";
    let (mut ours, mut with_worker, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let t = Instant::now();
        let pid: i32 = ours_c
            .query_one("SELECT bgw_launch($1)", &[&(100_000 + i as i32)])
            .unwrap()
            .get(0);
        ours.push(ms(t.elapsed()));
        ours_c
            .query_one("SELECT bgw_terminate($1)", &[&pid])
            .unwrap();

        let t = Instant::now();
        par.query_one(q, &[]).unwrap();
        with_worker.push(ms(t.elapsed()));
        let t = Instant::now();
        seq.query_one(q, &[]).unwrap();
        without.push(ms(t.elapsed()));
    }
    let ours = sorted(ours);
    let (with_worker, without) = (sorted(with_worker), sorted(without));
    let base_p50 = percentile(&with_worker, 0.5) - percentile(&without, 0.5);
    let base_p99 = percentile(&with_worker, 0.99) - percentile(&without, 0.99);
    let ratio = percentile(&ours, 0.5) / base_p50;
    Figure {
        name: format!("launch-to-ready latency, p50 / p99 ({n} launches)"),
        ours: format!(
            "{:.2} / {:.2} ms",
            percentile(&ours, 0.5),
            percentile(&ours, 0.99)
        ),
        baseline: format!("{base_p50:.2} / {base_p99:.2} ms (parallel worker)"),
        ratio,
        goal: "<= 1.2x at p50".into(),
        met: Some(ratio <= 1.2),
    }
}

fn set_naptime(c: &mut Client, value: &str) {
    c.batch_execute(&format!("ALTER SYSTEM SET bgworker_rs.naptime = '{value}'"))
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
}

fn iterations(c: &mut Client, pid: i32) -> i64 {
    c.query_one("SELECT iterations FROM bgw_list() WHERE pid = $1", &[&pid])
        .unwrap()
        .get(0)
}

const FOLD: &str = "WITH deleted AS (DELETE FROM schema900.counted WHERE type = 'delta' RETURNING value), \
     total AS (SELECT coalesce(sum(value), 0) as sum FROM deleted) \
     UPDATE schema900.counted SET value = counted.value + total.sum \
     FROM total WHERE type = 'total' RETURNING counted.value";

/// Figure 2: Loop cost: iterations per second of one worker at naptime 0, against
/// the same statement from one client over pgbench -M prepared. Rounds
/// alternate between the two; the median round of each counts.
fn loop_cost(cluster: &Cluster, rounds: usize, window: Duration) -> Figure {
    let mut c = cluster.connect();
    let script = cluster.socket_dir().join("fold.sql");
    std::fs::write(&script, format!("{FOLD};\n")).unwrap();
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        set_naptime(&mut c, "0");
        let pid: i32 = one(&mut c, "SELECT bgw_launch(900)");
        if round == 0 {
            c.batch_execute("INSERT INTO schema900.counted VALUES ('total', 0)")
                .unwrap();
        }
        let (i0, t0) = (iterations(&mut c, pid), Instant::now());
        std::thread::sleep(window); // the measurement window itself
        let (i1, t1) = (iterations(&mut c, pid), t0.elapsed());
        ours.push((i1 - i0) as f64 / t1.as_secs_f64());
        c.query_one("SELECT bgw_terminate($1)", &[&pid]).unwrap();
        set_naptime(&mut c, "10s");

        let out = std::process::Command::new(bindir().join("pgbench"))
            .args(["-n", "-M", "prepared", "-c", "1", "-T"])
            .arg(window.as_secs().max(1).to_string())
            .arg("-f")
            .arg(&script)
            .args([
                "-h",
                cluster.socket_dir().to_str().unwrap(),
                "-p",
                &PORT.to_string(),
                "-U",
                "postgres",
                "postgres",
            ])
            .output()
            .expect("run pgbench");
        let text = String::from_utf8_lossy(&out.stdout);
        let tps = text
            .lines()
            .find(|l| l.starts_with("tps = "))
            .and_then(|l| l.split_whitespace().nth(2))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "pgbench said: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        base.push(tps);
    }
    let (ours, base) = (sorted(ours), sorted(base));
    let (o, b) = (percentile(&ours, 0.5), percentile(&base, 0.5));
    Figure {
        name: format!(
            "loop cost, iterations/s at naptime 0 (median of {rounds} rounds of {window:?})"
        ),
        ours: format!("{o:.0} /s"),
        baseline: format!("{b:.0} /s (pgbench -M prepared, 1 client)"),
        ratio: o / b,
        goal: ">= 1.5x".into(),
        met: Some(o / b >= 1.5),
    }
}

/// PSS in kB of the mappings whose path ends in `suffix`, from /proc/PID/smaps.
fn pss_of(pid: i32, suffix: &str) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut inside = false;
    let mut total = 0.0;
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|ch| ch.is_ascii_hexdigit() || ch == '-') {
            inside = line
                .split_whitespace()
                .nth(5)
                .is_some_and(|p| p.ends_with(suffix));
        } else if inside && line.starts_with("Pss:") {
            total += line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    total
}

/// (Pss, Private_Dirty) in kB from /proc/PID/smaps_rollup.
fn memory(pid: i32) -> (f64, f64) {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).expect("read smaps_rollup");
    let field = |name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (field("Pss:"), field("Private_Dirty:"))
}

/// Figure 3: Memory of an idle worker against an idle client backend that ran the
/// same statement the same number of times, on the same server.
fn memory_use(cluster: &Cluster, runs: i64) -> Figure {
    let mut c = cluster.connect();
    set_naptime(&mut c, "0");
    // A first worker creates schema901, so that the measured one, like the
    // client, only runs the fold statement (no DDL in either).
    let first: i32 = one(&mut c, "SELECT bgw_launch(901)");
    c.query_one("SELECT bgw_terminate($1)", &[&first]).unwrap();
    c.batch_execute("INSERT INTO schema901.counted VALUES ('total', 0)")
        .unwrap();
    let pid: i32 = one(&mut c, "SELECT bgw_launch(901)");
    wait_until(
        "the worker ran its iterations",
        Duration::from_secs(120),
        || (iterations(&mut c, pid) >= runs).then_some(()),
    );
    set_naptime(&mut c, "1h");
    // The worker finishes its current iteration, rereads the setting and
    // sleeps: idle, with a count that no longer moves between two looks.
    let mut last = -1;
    wait_until("the worker is idle", Duration::from_secs(10), || {
        let idle: bool = c
            .query_one(
                "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0);
        let now = iterations(&mut c, pid);
        let settled = now == last;
        last = now;
        (idle && settled).then_some(())
    });
    let ran = iterations(&mut c, pid);

    let mut client = cluster.connect();
    let backend: i32 = one(&mut client, "SELECT pg_backend_pid()");
    let stmt = client
        .prepare(&FOLD.replace("schema900", "schema901"))
        .unwrap();
    for _ in 0..ran {
        client.query(&stmt, &[]).unwrap();
    }
    let (wp, wd) = memory(pid);
    let (bp, bd) = memory(backend);
    // Where a difference lives: the code of bgworker_rs.so, which only a
    // worker runs (its PSS is split among workers), and shared memory
    // ("/dev/zero"), whose PSS depends on what other processes touched.
    let (w_lib, w_shm) = (pss_of(pid, "bgworker_rs.so"), pss_of(pid, "zero"));
    let (b_lib, b_shm) = (pss_of(backend, "bgworker_rs.so"), pss_of(backend, "zero"));
    c.query_one("SELECT bgw_terminate($1)", &[&pid]).unwrap();
    set_naptime(&mut c, "10s");
    let ratio = wp / bp;
    Figure {
        name: format!(
            "memory of an idle worker after {ran} iterations: PSS / private dirty \
             [of the PSS: bgworker_rs.so code, shared memory, the rest]"
        ),
        ours: format!(
            "{wp:.0} / {wd:.0} kB [{w_lib:.0}, {w_shm:.0}, {:.0}]",
            wp - w_lib - w_shm
        ),
        baseline: format!(
            "{bp:.0} / {bd:.0} kB [{b_lib:.0}, {b_shm:.0}, {:.0}] (client backend, same statement {ran} times)",
            bp - b_lib - b_shm
        ),
        ratio,
        goal: "<= 1.1x (PSS)".into(),
        met: Some(ratio <= 1.1),
    }
}

/// Figure 4: Scale: time until N workers launched from 4 sessions at once are all
/// ready, and bgw_list() latency with N workers.
fn scale(cluster: &Cluster, sizes: &[i32]) -> Vec<Figure> {
    let mut c = cluster.connect();
    let mut per_worker = Vec::new();
    let mut figures = Vec::new();
    for &n in sizes {
        let started = Instant::now();
        let sessions: Vec<_> = (0..4)
            .map(|s| {
                let mut w = cluster.connect();
                std::thread::spawn(move || {
                    for i in (s..n).step_by(4) {
                        w.query_one("SELECT bgw_launch($1)", &[&(200_000 + i)])
                            .expect("launch");
                    }
                })
            })
            .collect();
        for s in sessions {
            s.join().expect("launching session");
        }
        let all_ready = started.elapsed();
        let running: i64 = one(
            &mut c,
            "SELECT count(*) FROM bgw_list() WHERE state = 'running' AND kind = 'dynamic'",
        );
        assert_eq!(running, n as i64);
        let mut lat = Vec::new();
        for _ in 0..200 {
            let t = Instant::now();
            c.query("SELECT * FROM bgw_list()", &[]).unwrap();
            lat.push(ms(t.elapsed()));
        }
        let lat = sorted(lat);
        // Server-side cost of bgw_list alone, without the round trip.
        let server_ms: f64 = one(
            &mut c,
            "SELECT (extract(epoch FROM clock_timestamp() - t) * 1000 / 200)::float8 \
             FROM (SELECT clock_timestamp() t) s, LATERAL (SELECT count(*) FROM generate_series(1, 200), LATERAL bgw_list()) x",
        );
        c.batch_execute(
            "SELECT bgw_terminate(pid) FROM bgw_list() WHERE pid IS NOT NULL AND kind = 'dynamic'",
        )
        .unwrap();
        per_worker.push((n, ms(all_ready) / n as f64));
        figures.push(Figure {
            name: format!("scale: {n} workers from 4 sessions, time to all ready; bgw_list() p50"),
            ours: format!(
                "{:.0} ms ({:.2} ms/worker); bgw_list {:.3} ms in the server, {:.3} ms round trip",
                ms(all_ready),
                ms(all_ready) / n as f64,
                server_ms,
                percentile(&lat, 0.5)
            ),
            baseline: "-".into(),
            ratio: f64::NAN,
            goal: "bgw_list < 1 ms at 100".into(),
            met: Some(n < 100 || server_ms < 1.0),
        });
    }
    if let (Some(first), Some(last)) = (per_worker.first(), per_worker.last()) {
        let ratio = last.1 / first.1;
        figures.push(Figure {
            name: format!(
                "scale: time per worker at {} vs {} workers",
                last.0, first.0
            ),
            ours: format!("{:.2} ms", last.1),
            baseline: format!("{:.2} ms", first.1),
            ratio,
            goal: "no worse than linear (<= 1.25x per worker)".into(),
            met: Some(ratio <= 1.25),
        });
    }
    figures
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut opts = Options {
        quick: false,
        out: None,
        svg: None,
        only: Vec::new(),
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => opts.quick = true,
            "--out" => opts.out = args.next(),
            "--svg" => opts.svg = args.next(),
            "--only" => {
                opts.only = args
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                if let Some(g) = opts.only.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    panic!("unknown figure group {g}; groups: {}", GROUPS.join(", "));
                }
            }
            other => panic!("unknown argument {other}"),
        }
    }
    let started = Instant::now();
    let cluster = Cluster::start(&[
        "bgworker_rs.total_workers = 0",
        "bgworker_rs.naptime = '10s'",
        "max_worker_processes = 128",
        "max_parallel_workers = 8",
        "max_connections = 50",
        "bgworker_rs.max_jobs = 8",
    ]);
    let mut c = cluster.connect();
    c.batch_execute("CREATE EXTENSION bgworker_rs").unwrap();
    let version: String = one(&mut c, "SELECT version()");

    let mut figures = Vec::new();
    let q = opts.quick;
    if opts.wants("launch") {
        figures.push(launch_latency(&cluster, if q { 50 } else { 200 }));
    }
    if opts.wants("loop") {
        figures.push(loop_cost(
            &cluster,
            if q { 1 } else { 3 },
            Duration::from_secs(if q { 3 } else { 10 }),
        ));
    }
    if opts.wants("memory") {
        figures.push(memory_use(&cluster, if q { 1000 } else { 5000 }));
    }
    if opts.wants("round-trip") {
        figures.extend(jobs::job_round_trip(
            &cluster,
            if q { 20 } else { 200 },
            opts.svg.as_deref(),
        ));
    }
    if opts.wants("scale") {
        figures.extend(scale(
            &cluster,
            if q { &[10, 50][..] } else { &[10, 50, 100][..] },
        ));
    }
    drop(c);
    drop(cluster);
    // Clusters of their own: pg_cron preloaded; more job slots.
    if opts.wants("pg_cron") {
        figures.extend(jobs::beside_pg_cron(q));
    }
    if opts.wants("scheduler") {
        figures.extend(jobs::scheduler_scale(q));
    }

    let mut md = String::new();
    let _ = writeln!(md, "| figure | ours | baseline | ratio | goal | met |");
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for f in &figures {
        let ratio = if f.ratio.is_nan() {
            "-".into()
        } else {
            format!("{:.2}x", f.ratio)
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            f.name,
            f.ours,
            f.baseline,
            ratio,
            f.goal,
            match f.met {
                Some(true) => "yes",
                Some(false) => "no",
                None => "-",
            }
        );
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.0} GiB", kb / 1048576.0))
        .unwrap_or_default();
    let mut report = String::new();
    let _ = writeln!(report, "# bgworker_rs benchmark results\n");
    let _ = writeln!(
        report,
        "- machine: {cores} cores, {mem} memory (shared and noisy: read the ratios)"
    );
    let _ = writeln!(report, "- server: {version}");
    let _ = writeln!(
        report,
        "- command: `scripts/bench{}`",
        if q { " --quick" } else { "" }
    );
    let _ = writeln!(
        report,
        "- run time: {:.0} s\n",
        started.elapsed().as_secs_f64()
    );
    report.push_str(&md);
    print!("{report}");
    if let Some(out) = opts.out {
        std::fs::write(&out, &report).unwrap_or_else(|e| panic!("write {out}: {e}"));
    }
}
