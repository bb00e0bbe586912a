//! Errors: a worker's own errors, captured for its exit callback, and the
//! user-facing errors the SQL functions raise.

use pgrx::pg_sys;
use std::ffi::CStr;

// ---------------------------------------------------------------------------
// A worker's own errors, kept for its exit callback, and the callback itself.

/// SQLSTATE and message of an error a worker raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedError {
    pub sqlerrcode: i32,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl CapturedError {
    pub fn new(sqlerrcode: i32, message: impl Into<String>) -> Self {
        CapturedError {
            sqlerrcode,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Raises this error at level ERROR, with its detail and hint.
    pub fn raise(&self) -> ! {
        let code = PgSqlErrorCode::from(self.sqlerrcode);
        let mut e = UserError::new(code, self.message.clone());
        if let Some(detail) = &self.detail {
            e = e.detail(detail.clone());
        }
        if let Some(hint) = &self.hint {
            e = e.hint(hint.clone());
        }
        e.raise()
    }

    /// The SQLSTATE as five characters, e.g. "57P01".
    pub fn sqlstate(&self) -> String {
        (0..5)
            .map(|i| char::from((((self.sqlerrcode >> (6 * i)) & 0x3f) as u8) + b'0'))
            .collect()
    }
}

static LAST_ERROR: std::sync::Mutex<Option<CapturedError>> = std::sync::Mutex::new(None);
static mut PREV_EMIT_LOG: pg_sys::emit_log_hook_type = None;

#[pgrx::pg_guard]
extern "C-unwind" fn emit_log_trampoline(edata: *mut pg_sys::ErrorData) {
    // SAFETY: PostgreSQL passes a valid ErrorData; we only read it and copy
    // the message into Rust-owned memory. No lock is taken here, so an error
    // raised while we hold the registry lock cannot deadlock.
    unsafe {
        if !edata.is_null() && (*edata).elevel >= pg_sys::PGERROR as i32 {
            let message = if (*edata).message.is_null() {
                String::new()
            } else {
                CStr::from_ptr((*edata).message)
                    .to_string_lossy()
                    .into_owned()
            };
            if let Ok(mut last) = LAST_ERROR.lock() {
                *last = Some(CapturedError::new((*edata).sqlerrcode, message));
            }
        }
        if let Some(prev) = PREV_EMIT_LOG {
            prev(edata);
        }
    }
}

/// Keeps the last ERROR or FATAL this process reports (see `last_error`).
pub fn capture_errors() {
    // SAFETY: called once at worker start, single-threaded.
    unsafe {
        PREV_EMIT_LOG = pg_sys::emit_log_hook;
        pg_sys::emit_log_hook = Some(emit_log_trampoline);
    }
}

pub fn last_error() -> Option<CapturedError> {
    LAST_ERROR.lock().ok().and_then(|e| e.clone())
}

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

#[must_use = "an error does nothing until raise() is called"]
pub struct UserError {
    report: ErrorReport,
}

impl UserError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        UserError {
            report: ErrorReport::new(code, message.into(), "bgworker_rs"),
        }
    }

    pub fn detail(self, detail: impl Into<String>) -> Self {
        UserError {
            report: self.report.set_detail(detail.into()),
        }
    }

    pub fn hint(self, hint: impl Into<String>) -> Self {
        UserError {
            report: self.report.set_hint(hint.into()),
        }
    }

    /// Raises the error at level ERROR; control does not come back.
    pub fn raise(self) -> ! {
        self.report.report(PgLogLevel::ERROR);
        unreachable!("ereport(ERROR) returned")
    }
}

impl From<&pgrx::pg_sys::panic::CaughtError> for CapturedError {
    fn from(caught: &pgrx::pg_sys::panic::CaughtError) -> Self {
        use pgrx::pg_sys::panic::CaughtError::*;
        let (PostgresError(report)
        | ErrorReport(report)
        | RustPanic {
            ereport: report, ..
        }) = caught;
        CapturedError {
            sqlerrcode: report.sql_error_code() as i32,
            message: report.message().to_string(),
            detail: report.detail().map(str::to_string),
            hint: report.hint().map(str::to_string),
        }
    }
}

/// Runs `body`; if it raises an ERROR (or panics), shows the error to
/// `on_error` where it was raised, then raises it again unchanged. Unlike
/// `emit_log_hook`, this sees the error whatever the logging settings.
pub fn inspect_error<R>(body: impl FnOnce() -> R, on_error: impl FnOnce(&CapturedError)) -> R {
    // The error is raised again: nothing observes a half-done state.
    let body = std::panic::AssertUnwindSafe(body);
    let mut on_error = std::panic::AssertUnwindSafe(Some(on_error));
    pgrx::PgTryBuilder::new(move || {
        let body = body;
        (body.0)()
    })
    .catch_others(move |caught| {
        let on_error = &mut on_error; // the whole wrapper, not its field
        if let Some(f) = on_error.0.take() {
            f(&CapturedError::from(&caught));
        }
        caught.rethrow()
    })
    .execute()
}
