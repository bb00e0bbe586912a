//! Where a statement's rows go: the first ones, as JSON, for the run's
//! `result`; with `gexec`, every value of the last statement, to be run.

use crate::pg::{CapturedError, Cell, RowSink};
use crate::shmem::job_slots::RESULT_MAX;
use pgrx::prelude::*;
use serde_json::{Map, Value};

pub struct Rows {
    names: Vec<String>,
    types: Vec<pg_sys::Oid>,
    /// The JSON array being built, without its closing bracket; `None`
    /// until a result set begins.
    text: Option<String>,
    full: bool,
    /// `gexec`: the values of the single column, NULLs left out.
    collect: Option<Vec<String>>,
    collected_bytes: usize,
}

/// The statements `gexec` keeps to run: they are held in the worker's
/// memory until the generating statement has finished. Each counts its
/// length and what keeping it costs besides.
const GEXEC_MAX_BYTES: usize = 64 << 20;
const PER_STATEMENT_COST: usize = 64;

impl Rows {
    pub fn new(collect: bool) -> Rows {
        Rows {
            names: Vec::new(),
            types: Vec::new(),
            text: None,
            full: false,
            collect: collect.then(Vec::new),
            collected_bytes: 0,
        }
    }

    /// The first rows as a JSON array of objects, as many as fit in
    /// `RESULT_MAX` bytes; `None` for a statement without a result set.
    pub fn result(&self) -> Option<String> {
        self.text.as_ref().map(|t| format!("{t}]"))
    }

    /// The statements to run next (`gexec`).
    pub fn collected(self) -> Vec<String> {
        self.collect.unwrap_or_default()
    }
}

impl RowSink for Rows {
    fn begin(&mut self, columns: &[(String, pg_sys::Oid)]) -> Result<(), CapturedError> {
        if self.collect.is_some() && columns.len() != 1 {
            return Err(CapturedError {
                detail: Some("Each row's value is a statement to run.".into()),
                hint: Some("Build each statement in one column, e.g. with format().".into()),
                ..CapturedError::new(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH as i32,
                    format!(
                        "with gexec, the last statement must return one column, not {}",
                        columns.len()
                    ),
                )
            });
        }
        self.names = columns.iter().map(|c| c.0.clone()).collect();
        self.types = columns.iter().map(|c| c.1).collect();
        self.text = Some("[".into());
        self.full = false;
        Ok(())
    }

    fn value_limit(&self) -> usize {
        if self.collect.is_some() {
            // At least 1, so that a value over the bound is seen, and refused.
            GEXEC_MAX_BYTES.saturating_sub(self.collected_bytes).max(1)
        } else if self.full {
            0
        } else {
            RESULT_MAX
        }
    }

    fn row(&mut self, values: Vec<Cell>) -> Result<(), CapturedError> {
        if let Some(collect) = &mut self.collect {
            match values.first() {
                Some(Cell::Text(value)) if !value.trim().is_empty() => {
                    self.collected_bytes += value.len() + PER_STATEMENT_COST;
                    if self.collected_bytes > GEXEC_MAX_BYTES {
                        return Err(too_much(collect.len()));
                    }
                    collect.push(value.clone());
                }
                Some(Cell::TooLong) => return Err(too_much(collect.len())),
                _ => {} // NULL, or only white space: nothing to run
            }
        }
        if self.full {
            return Ok(());
        }
        let Some(text) = self.text.as_mut() else {
            return Ok(());
        };
        let mut row = Map::new();
        for ((name, &type_oid), value) in self.names.iter().zip(&self.types).zip(values) {
            let value = match value {
                Cell::Null => Value::Null,
                Cell::Text(v) => json_value(v, type_oid),
                Cell::TooLong => {
                    // Cannot fit: the result ends before this row.
                    self.full = true;
                    return Ok(());
                }
            };
            row.insert(name.clone(), value);
        }
        let row = Value::Object(row).to_string();
        // Room for the separator and the closing bracket.
        if text.len() + row.len() + 2 > RESULT_MAX {
            self.full = true;
            return Ok(());
        }
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(&row);
        Ok(())
    }
}

fn too_much(generated: usize) -> CapturedError {
    CapturedError {
        detail: Some(format!("{generated} statements were generated before.")),
        hint: Some(
            "Generate fewer statements a run, e.g. with LIMIT; the next run does the rest.".into(),
        ),
        ..CapturedError::new(
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED as i32,
            format!(
                "with gexec, the statements generated may take at most {} MB",
                GEXEC_MAX_BYTES >> 20
            ),
        )
    }
}

/// Numbers, booleans, json and jsonb keep their JSON form; other values are
/// their text output.
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
    fn first_rows_stop_at_the_bound_and_gexec_keeps_every_value() {
        let mut rows = Rows::new(true);
        rows.begin(&[("s".into(), pg_sys::TEXTOID)]).unwrap();
        let long = "x".repeat(1000);
        for _ in 0..20 {
            rows.row(vec![Cell::Text(long.clone())]).unwrap();
        }
        rows.row(vec![Cell::Null]).unwrap();
        rows.row(vec![Cell::Text(" \n".into())]).unwrap();
        let result = rows.result().unwrap();
        assert!(result.len() <= RESULT_MAX, "{}", result.len());
        let parsed: Vec<Value> = serde_json::from_str(&result).unwrap();
        assert_eq!(parsed.len(), 8);
        assert_eq!(rows.collected().len(), 20);

        let mut none = Rows::new(false);
        assert_eq!(none.result(), None);
        none.begin(&[("n".into(), pg_sys::INT4OID)]).unwrap();
        none.row(vec![Cell::Text("7".into())]).unwrap();
        none.row(vec![Cell::TooLong]).unwrap();
        assert_eq!(none.value_limit(), 0, "full after a value too long");
        let two = [("a".into(), pg_sys::INT4OID), ("b".into(), pg_sys::INT4OID)];
        let e = Rows::new(true).begin(&two).unwrap_err();
        assert_eq!(e.sqlstate(), "42804");
        assert_eq!(none.result().as_deref(), Some(r#"[{"n":7}]"#));
    }
}
