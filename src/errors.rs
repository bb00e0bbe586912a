//! User-facing errors: a SQLSTATE, a message, and optionally a detail and a hint.

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
