//! One run of a SQL job: a dynamic worker started by the scheduler. It
//! connects to the job's database as the job's role, reads the statement from
//! its job slot, runs it in one transaction and leaves the outcome in the
//! slot. An error ends the process, as in any background worker; the
//! scheduler then takes the error from the registry.

use crate::pg::{self, CapturedError, Connection};
use crate::shmem::job_slots::{self, Outcome, RESULT_MAX, Status};
use crate::shmem::{Kind, registry};
use crate::workers::registration::ConnectArgs;
use pgrx::prelude::*;
use pgrx::spi::SpiTupleTable;
use serde_json::{Map, Value};
use std::ffi::CString;
use std::time::{Duration, Instant};

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn bgworker_rs_job_main(main_arg: pg_sys::Datum) {
    // The scheduler passes the registry index (derived from the job id).
    let index = main_arg.value() as i32;
    let Some(args) = ConnectArgs::of_this_worker() else {
        ereport!(
            FATAL,
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "a bgworker_rs job worker needs its bgw_extra"
        );
    };

    pg::capture_errors();
    registry::enter(
        Kind::Job,
        index,
        args.database,
        args.role,
        Some(args.ticket),
    );
    let Some((slot, job)) = job_slots::take_for_worker(args.ticket) else {
        log!("{}: its job slot is gone; exiting", pg::worker_name());
        pg::exit_quietly();
    };

    pg::install_signal_handlers();
    pg::connect(
        &Connection::Oids {
            database: args.database.into(),
            role: args.role.into(),
        },
        args.flags,
    );
    registry::report_running();

    // Shown in pg_stat_activity while it runs; one statement per process.
    let sql = job.sql();
    let shown: &'static std::ffi::CStr = Box::leak(
        CString::new(sql.clone())
            .unwrap_or_default()
            .into_boxed_c_str(),
    );
    // Before the timer is armed: when it fires, at least the timeout has
    // passed since `started`, so a timeout is never taken for a cancel.
    let started = Instant::now();
    if job.timeout_ms > 0 {
        pg::arm_statement_timeout(job.timeout_ms);
    }
    let (rows, result) = pg::in_transaction(shown, || {
        pg::inspect_error(
            || {
                Spi::connect_mut(|client| {
                    let table = client.update(sql.as_str(), None, &[])?;
                    let rows = table.len() as i64;
                    Ok::<_, pgrx::spi::Error>((rows, first_rows(table)))
                })
            },
            // The outcome, taken where the error is raised; the error then
            // ends the worker as in any background worker.
            |e| job_slots::finish(slot, &failure(e, started.elapsed(), job.timeout_ms)),
        )
    })
    .unwrap_or_else(|e| error!("{e}"));

    job_slots::finish(
        slot,
        &Outcome {
            status: Status::Succeeded,
            rows,
            error: None,
            result: Some(result),
        },
    );
    // Exit code 0: the postmaster forgets the worker; it notifies the
    // scheduler (bgw_notify_pid), which records the outcome.
    pg::exit_quietly();
}

/// How a run that raised `e` ended: 57014 is a timeout once the run's
/// `timeout` has passed, and otherwise a cancel (`pg_cancel_backend`).
fn failure(e: &CapturedError, ran: Duration, timeout_ms: i32) -> Outcome {
    let timed_out = timeout_ms > 0 && ran >= Duration::from_millis(timeout_ms as u64);
    let status = match e.sqlstate().as_str() {
        "57014" if timed_out => Status::TimedOut,
        "57014" => Status::Cancelled,
        _ => Status::Failed,
    };
    Outcome {
        status,
        rows: 0,
        error: Some(e.clone()),
        result: None,
    }
}

/// The first rows of the result as a JSON array of objects, as many as fit
/// in `RESULT_MAX` bytes. Numbers, booleans, json and jsonb keep their JSON
/// form; other values are their text output. `[]` for a statement without
/// rows.
fn first_rows(mut table: SpiTupleTable<'_>) -> String {
    let Ok(columns) = table.columns() else {
        return "[]".into(); // no result set (INSERT without RETURNING, ...)
    };
    let names: Vec<String> = (1..=columns)
        .map(|i| {
            table
                .column_name(i)
                .unwrap_or_else(|_| format!("?column{i}?"))
        })
        .collect();
    let types: Vec<pg_sys::Oid> = (1..=columns)
        .map(|i| {
            table
                .column_type_oid(i)
                .map(|t| t.value())
                .unwrap_or(pg_sys::InvalidOid)
        })
        .collect();
    let mut text = String::from("[");
    while table.next().is_some() {
        let mut row = Map::new();
        for (i, (name, &type_oid)) in names.iter().zip(&types).enumerate() {
            let value = match table.get_datum_by_ordinal(i + 1) {
                Ok(Some(datum)) => json_value(pg::output_text(datum, type_oid), type_oid),
                _ => Value::Null,
            };
            row.insert(name.clone(), value);
        }
        let row = Value::Object(row).to_string();
        // Room for the separator and the closing bracket.
        if text.len() + row.len() + 2 > RESULT_MAX {
            break;
        }
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&row);
    }
    text.push(']');
    text
}

fn json_value(text: String, type_oid: pg_sys::Oid) -> Value {
    use pg_sys::BuiltinOid::*;
    let numeric = [
        INT2OID, INT4OID, INT8OID, FLOAT4OID, FLOAT8OID, NUMERICOID, OIDOID,
    ];
    let json = [JSONOID, JSONBOID];
    match pg_sys::BuiltinOid::from_u32(type_oid.to_u32()) {
        Ok(BOOLOID) => Value::Bool(text == "t"),
        // A number only if JSON keeps it exactly; NaN, Infinity and numerics
        // beyond a double's precision stay strings.
        Ok(t) if numeric.contains(&t) => match text.parse::<serde_json::Number>() {
            Ok(n) if n.to_string() == text => Value::Number(n),
            _ => Value::String(text),
        },
        // jsonb has no NUL character: a json value with "\u0000" stays text.
        Ok(t) if json.contains(&t) => match serde_json::from_str::<Value>(&text) {
            Ok(v) if !has_nul(&v) => v,
            _ => Value::String(text),
        },
        _ => Value::String(text),
    }
}

fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn json_with_nul_stays_text_for_jsonb() {
        let text = r#"{"a": "x\u0000y"}"#.to_string();
        assert_eq!(
            json_value(text.clone(), pg_sys::JSONOID),
            Value::String(text)
        );
        let ok = r#"{"a": [1, "b"]}"#.to_string();
        assert_eq!(
            json_value(ok, pg_sys::JSONOID),
            serde_json::json!({"a": [1, "b"]})
        );
    }

    #[test]
    fn timeouts_and_cancels_are_told_apart() {
        let e = |code: &str| CapturedError {
            sqlerrcode: code
                .bytes()
                .enumerate()
                .map(|(i, b)| ((b - b'0') as i32 & 0x3f) << (6 * i))
                .sum(),
            message: String::new(),
        };
        let ms = Duration::from_millis;
        assert_eq!(failure(&e("57014"), ms(300), 300).status, Status::TimedOut);
        assert_eq!(failure(&e("57014"), ms(10), 300).status, Status::Cancelled);
        assert_eq!(failure(&e("57014"), ms(10), 0).status, Status::Cancelled);
        assert_eq!(failure(&e("22012"), ms(10), 300).status, Status::Failed);
    }
}
