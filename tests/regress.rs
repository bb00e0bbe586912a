//! Tier 2: SQL regression tests with pg_regress, in cargo-pgrx's layout
//! (`tests/pg_regress/{sql,expected}`, `setup` first). cargo-pgrx 0.18.1's
//! own `regress` command cannot start its instance as root, so this runs the
//! same files against a throwaway cluster.
//!
//! `BGW_REGRESS_ACCEPT=1` copies the actual output over the expected files;
//! `BGW_REGRESS_ACCEPT=_1` writes pg_regress's alternative `name_1.out`
//! instead, for output that differs by version (flags of PostgreSQL 17+).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn pg_regress_suite() {
    let cluster = Cluster::start(&["bgworker_rs.total_workers = 0"]);
    let suite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg_regress");
    let mut tests = vec!["setup".to_string()];
    let mut names: Vec<String> = std::fs::read_dir(suite.join("sql"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.path()
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
        })
        .filter(|n| n != "setup")
        .collect();
    names.sort();
    tests.extend(names);

    let pg_regress = pkglibdir().join("pgxs/src/test/regress/pg_regress");
    let out = Command::new(&pg_regress)
        .current_dir(&suite)
        .env("PGUSER", "postgres")
        .env_remove("PGDATABASE")
        .arg(format!("--host={}", cluster.socket_dir().display()))
        .arg(format!("--port={PORT}"))
        .arg(format!("--bindir={}", bindir().display()))
        .arg(format!("--inputdir={}", suite.display()))
        .arg(format!("--outputdir={}", suite.display()))
        .arg("--dbname=bgworker_rs_regress")
        .args(&tests)
        .output()
        .expect("run pg_regress");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));

    if std::env::var_os("BGW_REGRESS_ACCEPT").is_some() {
        for t in &tests {
            std::fs::copy(
                suite.join(format!("results/{t}.out")),
                suite.join(format!("expected/{t}.out")),
            )
            .unwrap();
        }
        return;
    }
    let diffs = std::fs::read_to_string(suite.join("regression.diffs")).unwrap_or_default();
    assert!(
        out.status.success(),
        "pg_regress failed:\n{diffs}\nserver log:\n{}",
        cluster.log()
    );
}
