//! A job's script, run statement by statement at top level as a client's
//! simple query runs: in one transaction (`atomic`; a lone statement such
//! as `VACUUM` is then outside any block), or each statement in its own,
//! and then, with `gexec`, each value of the last statement's rows as a
//! statement of its own.

use super::rows::Rows;
use crate::pg::{self, Completion, Script, StatementKind, UserError};
use crate::shmem::job_slots::{self, STATEMENT_TEXT_MAX, STATEMENTS_MAX};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::time::Instant;

/// The run's own time limit.
pub struct Limits {
    pub deadline: Option<Instant>,
    pub timeout_ms: i32,
}

/// What a run has done so far. The error handler reads it when a
/// statement fails; the job slot gets a copy before each statement, for a
/// run stopped by a signal.
#[derive(Default)]
pub struct Progress {
    /// `{...},{...}`: the statements finished, as the inside of a JSON array.
    entries: String,
    omitted: u32,
    /// The statement running now (1-based), and the start of its text.
    pub position: i32,
    pub text: String,
    /// Running several statements of the job's script in one implicit
    /// block (`atomic`).
    pub in_block: bool,
    /// What the statement timer was armed with, and when the statement
    /// started: how a 57014 is told apart.
    pub armed: pg::Armed,
    pub statement_started: Option<Instant>,
    /// The last statement's row count, and the first rows of the last
    /// statement that returned a result set.
    pub rows: i64,
    pub result: Option<String>,
    /// The statements are done; the worker cleans its session to stay.
    pub cleaning: bool,
}

/// Room kept for `{"omitted":4294967295}` and the brackets.
const OMITTED_ROOM: usize = 32;

impl Progress {
    /// The statements finished, as a JSON array; those beyond the bound are
    /// counted in a last element `{"omitted": n}`.
    pub fn statements(&self) -> String {
        let omitted = match (self.omitted, self.entries.is_empty()) {
            (0, _) => String::new(),
            (n, true) => format!(r#"{{"omitted":{n}}}"#),
            (n, false) => format!(r#",{{"omitted":{n}}}"#),
        };
        format!("[{}{omitted}]", self.entries)
    }

    fn push(&mut self, position: i32, done: &Completion, generated: Option<&str>) {
        let mut entry = serde_json::json!({"position": position, "tag": done.tag});
        if let Some(rows) = done.rows {
            entry["rows"] = rows.into();
        }
        if let Some(text) = generated {
            entry["generated"] = true.into();
            entry["text"] = cut(text, 100).into();
        }
        let entry = entry.to_string();
        if self.omitted == 0
            && self.entries.len() + entry.len() + 1 + OMITTED_ROOM <= STATEMENTS_MAX
        {
            if !self.entries.is_empty() {
                self.entries.push(',');
            }
            self.entries.push_str(&entry);
        } else {
            self.omitted += 1;
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Runs the job's script and, with `gexec`, the statements it generated.
pub fn run(
    slot: (usize, job_slots::RunId),
    sql: &str,
    atomic: bool,
    gexec: bool,
    limits: &Limits,
    progress: &RefCell<Progress>,
) {
    let mut run = Run {
        slot,
        limits,
        progress,
        position: 0,
    };
    let generated = run.script(sql, atomic, gexec, None);
    for text in generated {
        run.script(&text, true, false, Some(&text));
    }
}

struct Run<'a> {
    /// The job slot, and whose run it holds.
    slot: (usize, job_slots::RunId),
    limits: &'a Limits,
    progress: &'a RefCell<Progress>,
    /// The last statement's position.
    position: i32,
}

impl Run<'_> {
    /// Runs one script; returns the values of its last statement's rows
    /// when `collect`. `generated`: the script is a value `gexec` collected;
    /// one without any statement is then skipped, as psql's `\gexec` does.
    fn script(
        &mut self,
        sql: &str,
        atomic: bool,
        collect: bool,
        generated: Option<&str>,
    ) -> Vec<String> {
        // A script that does not parse fails as its first statement.
        self.note(self.position + 1, sql);
        self.arm_timeout();
        pg::start_transaction();
        let script = Script::parse(sql);
        let count = script.statements.len();
        if count == 0 {
            if generated.is_some() {
                pg::commit_transaction();
                script.release();
                return Vec::new();
            }
            UserError::new(
                PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                "the job's SQL has no statement",
            )
            .detail("It is empty, or holds only comments.")
            .raise();
        }
        // Checked before anything runs: such a script has no effect at all.
        for (i, statement) in script.statements.iter().enumerate() {
            if statement.kind != StatementKind::Ordinary {
                self.note(self.position + 1 + i as i32, &statement.text);
                refuse(statement.kind, &statement.tag, atomic, generated.is_some());
            }
        }

        let implicit_block = atomic && count > 1;
        self.progress.borrow_mut().in_block = implicit_block && generated.is_none();
        let mut rows_of_last = Vec::new();
        let mut in_transaction = true;
        for (i, statement) in script.statements.iter().enumerate() {
            self.position += 1;
            self.note(self.position, &statement.text);
            self.arm_timeout();
            if !in_transaction {
                pg::start_transaction();
                in_transaction = true;
            }
            let last = i + 1 == count;
            let mut rows = Rows::new(collect && last);
            let done = script.run(i, implicit_block, &mut rows);
            {
                let mut p = self.progress.borrow_mut();
                p.push(
                    self.position,
                    &done,
                    generated.map(|_| statement.text.as_str()),
                );
                p.rows = done.rows.map_or(0, |n| n as i64);
                if let Some(result) = rows.result() {
                    p.result = Some(result);
                }
            }
            if last {
                if implicit_block {
                    pg::end_implicit_block();
                }
                self.commit();
                in_transaction = false;
                rows_of_last = rows.collected();
            } else if atomic {
                pg::command_counter_increment();
            } else {
                self.commit();
                in_transaction = false;
            }
        }
        self.progress.borrow_mut().in_block = false;
        script.release();
        rows_of_last
    }

    /// Statement `position` starts: noted for the error handler and in the
    /// job slot.
    fn note(&self, position: i32, text: &str) {
        let mut p = self.progress.borrow_mut();
        p.position = position;
        p.text = cut(text.trim(), STATEMENT_TEXT_MAX).to_string();
        job_slots::report_progress(self.slot.0, self.slot.1, &p.statements(), position, &p.text);
    }

    /// Commits; an error raised then (a deferred constraint) is the
    /// commit's, not the last statement's: no position, and "COMMIT".
    fn commit(&self) {
        self.note(0, "COMMIT");
        pg::commit_transaction();
    }

    /// Arms the statement timer for what comes next, within the run's
    /// deadline; past it, the run ends here, timed out.
    fn arm_timeout(&self) {
        let remaining = self
            .limits
            .deadline
            // Rounded up: the timer never fires before the deadline.
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000) as i64
            });
        if remaining == Some(0) {
            UserError::new(
                PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
                format!(
                    "canceling the job's run: its timeout of {} ms has passed",
                    self.limits.timeout_ms
                ),
            )
            .raise();
        }
        let armed = pg::arm_statement_timeout(remaining);
        let mut p = self.progress.borrow_mut();
        p.armed = armed;
        p.statement_started = Some(Instant::now());
    }
}

fn refuse(kind: StatementKind, tag: &str, atomic: bool, generated: bool) -> ! {
    match kind {
        StatementKind::TransactionControl => UserError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{tag} is not allowed in a job's SQL"),
        )
        .detail("A job's statements run in transactions the job controls.")
        .hint(if generated {
            "Each generated statement already runs in a transaction of its own; generate none that control transactions."
        } else if atomic {
            "To commit as the script goes, run the job with atomic => false: each statement then runs in a transaction of its own."
        } else {
            "With atomic => false each statement already runs in a transaction of its own; leave out the transaction control."
        })
        .raise(),
        _ => UserError::new(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "COPY from STDIN or to STDOUT is not available in a job",
        )
        .detail("A job has no client to read from or write to.")
        .hint("COPY to or from a file on the server, or use INSERT ... SELECT.")
        .raise(),
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn statements_stay_valid_json_within_the_bound() {
        let mut p = Progress::default();
        let done = Completion {
            tag: "REINDEX".into(),
            rows: None,
        };
        for i in 1..=500 {
            p.push(i, &done, Some("REINDEX INDEX CONCURRENTLY some_index_name"));
        }
        let json = p.statements();
        assert!(json.len() <= STATEMENTS_MAX, "{}", json.len());
        let parsed: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
        let last = parsed.last().unwrap();
        let kept = parsed.len() as u64 - 1;
        assert_eq!(last["omitted"].as_u64().unwrap() + kept, 500);
        assert_eq!(parsed[0]["generated"], true);
        assert_eq!(Progress::default().statements(), "[]");
    }

    #[test]
    fn rows_only_where_the_tag_counts_them() {
        let mut p = Progress::default();
        let vacuum = Completion {
            tag: "VACUUM".into(),
            rows: None,
        };
        let insert = Completion {
            tag: "INSERT".into(),
            rows: Some(3),
        };
        p.push(1, &vacuum, None);
        p.push(2, &insert, None);
        assert_eq!(
            p.statements(),
            r#"[{"position":1,"tag":"VACUUM"},{"position":2,"rows":3,"tag":"INSERT"}]"#
        );
    }
}
