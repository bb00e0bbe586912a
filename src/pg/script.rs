//! Running SQL the way a client backend runs a simple query
//! (`exec_simple_query` in postgres.c): PostgreSQL's parser splits the
//! script, and each statement is analyzed, planned and run through an
//! unnamed portal at top level. So `VACUUM`, `CREATE INDEX CONCURRENTLY` and a
//! `CALL` that commits behave as they do for a client, and the progress views
//! and `pg_stat_activity` show them. Rows are handed to a `RowSink` one at a
//! time; a result set is never held in memory.
//!
//! Transaction boundaries are the caller's: `start_transaction`,
//! `commit_transaction`, `command_counter_increment` and the implicit block.

use pgrx::pg_sys;
use std::ffi::{CStr, CString, c_char};

/// One value of a row, as a sink gets it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cell {
    Null,
    /// Its type's text form, in UTF-8.
    Text(String),
    /// Larger than the sink's `value_limit`: not converted at all.
    TooLong,
}

/// What a statement's rows are handed to. An `Err` stops the statement
/// with that error.
pub trait RowSink {
    /// A result set begins, with these columns (name, type).
    fn begin(&mut self, columns: &[(String, pg_sys::Oid)]) -> Result<(), super::CapturedError>;
    /// The largest value (stored size, in bytes) the sink wants converted
    /// to text; 0: it wants no more rows, which are then only counted (by
    /// the command tag). Nothing larger is ever copied out of the server's
    /// memory, so a row of any size costs the worker nothing.
    fn value_limit(&self) -> usize;
    /// One row.
    fn row(&mut self, values: Vec<Cell>) -> Result<(), super::CapturedError>;
}

/// What kind of statement, for the checks a job makes before running it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatementKind {
    Ordinary,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION and the like;
    /// not COMMIT PREPARED or ROLLBACK PREPARED, which run at top level.
    TransactionControl,
    /// COPY from STDIN or to STDOUT: a worker has no client.
    CopyWithClient,
}

pub struct Statement {
    raw: *mut pg_sys::RawStmt,
    /// Its own text, NUL-terminated, in the script's memory context: what
    /// `pg_stat_activity` and the server log show while it runs.
    text_c: *const c_char,
    pub text: String,
    /// The command tag it will have (`VACUUM`, `SELECT`, ...).
    pub tag: String,
    pub kind: StatementKind,
}

/// A parsed script: its text and parse trees live in a memory context of
/// their own, which outlives the transactions the statements commit.
pub struct Script {
    context: pg_sys::MemoryContext,
    source: *const c_char,
    pub statements: Vec<Statement>,
}

/// How a statement ended: its command tag, and the rows it returned or
/// affected where the tag reports a count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub tag: String,
    pub rows: Option<u64>,
}

impl Script {
    /// Parses `sql` with PostgreSQL's parser. A syntax error is raised where
    /// it is found (ERROR 42601, with its position). Call inside a
    /// transaction, as postgres.c does.
    pub fn parse(sql: &str) -> Script {
        // A NUL cannot be sent by a client either; the text stops there.
        let utf8 = sql.split('\0').next().unwrap_or_default();
        // SAFETY: a new context under TopMemoryContext, as long-lived as the
        // script; pg_parse_query allocates its trees in the current context,
        // which we restore on the way out (an ERROR ends the worker, and the
        // context goes with the process).
        unsafe {
            let context = pg_sys::AllocSetContextCreateExtended(
                pg_sys::TopMemoryContext,
                c"bgworker_rs job script".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let old = pg_sys::MemoryContextSwitchTo(context);
            // In the database's encoding, as a client's text arrives.
            let source = super::utf8_to_server(utf8);
            let list = pg_sys::pg_parse_query(source);
            let bytes = CStr::from_ptr(source).to_bytes();
            let mut statements = Vec::new();
            let list = pgrx::PgList::<pg_sys::RawStmt>::from_pg(list);
            for raw in list.iter_ptr() {
                let start = ((*raw).stmt_location.max(0) as usize).min(bytes.len());
                let end = match (*raw).stmt_len {
                    len if len > 0 => (start + len as usize).min(bytes.len()),
                    _ => bytes.len(), // 0: the rest of the string
                };
                let text_c = CString::new(bytes[start..end].trim_ascii()).unwrap_or_default();
                let text = super::server_to_utf8(text_c.as_bytes());
                let tag = pg_sys::CreateCommandTag((*raw).stmt);
                statements.push(Statement {
                    raw,
                    text_c: pg_sys::pstrdup(text_c.as_ptr()),
                    text,
                    tag: CStr::from_ptr(pg_sys::GetCommandTagName(tag))
                        .to_string_lossy()
                        .into_owned(),
                    kind: kind_of((*raw).stmt),
                });
            }
            pg_sys::MemoryContextSwitchTo(old);
            Script {
                context,
                source,
                statements,
            }
        }
    }

    /// Frees the parse trees once every statement has run. Not called on an
    /// ERROR: the portal may still point into them until the worker exits.
    pub fn release(self) {
        // SAFETY: no statement of this script is running, and
        // debug_query_string no longer points into the context.
        unsafe {
            pg_sys::debug_query_string = std::ptr::null();
            pg_sys::MemoryContextDelete(self.context);
        }
    }

    /// Runs statement `i` as `exec_simple_query` runs one statement of a
    /// query string, in the transaction the caller has started (and, with
    /// `implicit_block`, in an implicit transaction block, as for a query
    /// string of several statements). The caller commits.
    pub fn run(&self, i: usize, implicit_block: bool, sink: &mut dyn RowSink) -> Completion {
        let statement = &self.statements[i];
        let mut receiver = Receiver {
            base: pg_sys::DestReceiver {
                receiveSlot: Some(receive_slot),
                rStartup: Some(startup),
                rShutdown: Some(shutdown),
                rDestroy: Some(shutdown),
                mydest: pg_sys::CommandDest::DestNone,
            },
            sink,
            types: Vec::new(),
        };
        // SAFETY: the sequence of exec_simple_query, inside the caller's
        // transaction: parse trees and source text live in our context,
        // plans in a per-statement child of it, the portal in the portal
        // manager; the receiver outlives the PortalRun that uses it.
        unsafe {
            pg_sys::debug_query_string = statement.text_c;
            pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, statement.text_c);
            if implicit_block {
                pg_sys::BeginImplicitTransactionBlock();
            }
            pgrx::check_for_interrupts!();
            let snapshot_set = pg_sys::analyze_requires_snapshot(statement.raw);
            if snapshot_set {
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
            let plan_context = pg_sys::AllocSetContextCreateExtended(
                self.context,
                c"bgworker_rs job statement".as_ptr(),
                pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
            );
            let old = pg_sys::MemoryContextSwitchTo(plan_context);
            let queries = pg_sys::pg_analyze_and_rewrite_fixedparams(
                statement.raw,
                self.source,
                std::ptr::null(),
                0,
                std::ptr::null_mut(),
            );
            let plans = pg_sys::pg_plan_queries(
                queries,
                self.source,
                pg_sys::CURSOR_OPT_PARALLEL_OK as i32,
                std::ptr::null_mut(),
            );
            if snapshot_set {
                pg_sys::PopActiveSnapshot();
            }
            pgrx::check_for_interrupts!();

            let portal = pg_sys::CreatePortal(c"".as_ptr(), true, true);
            (*portal).visible = false;
            pg_sys::PortalDefineQuery(
                portal,
                std::ptr::null(),
                self.source,
                pg_sys::CreateCommandTag((*statement.raw).stmt),
                plans,
                std::ptr::null_mut(),
            );
            pg_sys::PortalStart(portal, std::ptr::null_mut(), 0, std::ptr::null_mut());
            let mut text_format: i16 = 0;
            pg_sys::PortalSetResultFormat(portal, 1, &mut text_format);
            pg_sys::MemoryContextSwitchTo(old);

            let mut qc = pg_sys::QueryCompletion::default();
            pg_sys::InitializeQueryCompletion(&mut qc);
            let dest = (&raw mut receiver).cast::<pg_sys::DestReceiver>();
            super::versions::portal_run(portal, dest, &mut qc);
            pg_sys::PortalDrop(portal, false);
            pg_sys::MemoryContextDelete(plan_context);

            Completion {
                tag: CStr::from_ptr(pg_sys::GetCommandTagName(qc.commandTag))
                    .to_string_lossy()
                    .into_owned(),
                rows: pg_sys::command_tag_display_rowcount(qc.commandTag).then_some(qc.nprocessed),
            }
        }
    }
}

/// Classifies a raw parse tree.
///
/// # Safety
/// `node` is a valid raw parse tree.
unsafe fn kind_of(node: *mut pg_sys::Node) -> StatementKind {
    use pg_sys::TransactionStmtKind::*;
    // SAFETY: checked node tags before each cast.
    unsafe {
        if pgrx::is_a(node, pg_sys::NodeTag::T_TransactionStmt) {
            let stmt = node.cast::<pg_sys::TransactionStmt>();
            return match (*stmt).kind {
                TRANS_STMT_COMMIT_PREPARED | TRANS_STMT_ROLLBACK_PREPARED => {
                    StatementKind::Ordinary
                }
                _ => StatementKind::TransactionControl,
            };
        }
        if pgrx::is_a(node, pg_sys::NodeTag::T_CopyStmt) {
            let stmt = node.cast::<pg_sys::CopyStmt>();
            if (*stmt).filename.is_null() && !(*stmt).is_program {
                return StatementKind::CopyWithClient;
            }
        }
    }
    StatementKind::Ordinary
}

// ---------------------------------------------------------------------------
// The receiver: PostgreSQL's DestReceiver, with the sink behind it.

#[repr(C)]
struct Receiver<'a> {
    /// First, so that PostgreSQL's `DestReceiver *` is a pointer to this.
    base: pg_sys::DestReceiver,
    sink: &'a mut dyn RowSink,
    /// Type and `attlen` of each column.
    types: Vec<(pg_sys::Oid, i16)>,
}

/// # Safety
/// `this` is the `base` of a live `Receiver`, as `Script::run` hands it out.
unsafe fn receiver<'r>(this: *mut pg_sys::DestReceiver) -> &'r mut Receiver<'r> {
    // SAFETY: forwarded from the caller's contract; `base` is the first
    // field of a #[repr(C)] struct.
    unsafe { &mut *this.cast::<Receiver<'r>>() }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn startup(
    this: *mut pg_sys::DestReceiver,
    _operation: std::os::raw::c_int,
    typeinfo: pg_sys::TupleDesc,
) {
    // SAFETY: PostgreSQL passes our receiver and the result's descriptor,
    // valid for the call; PgTupleDesc::from_pg_unchecked does not free it.
    unsafe {
        let r = receiver(this);
        let desc = pgrx::PgTupleDesc::from_pg_unchecked(typeinfo);
        let columns: Vec<(String, pg_sys::Oid)> = desc
            .iter()
            .map(|a| (a.name().to_string(), a.atttypid))
            .collect();
        r.types = desc.iter().map(|a| (a.atttypid, a.attlen)).collect();
        if let Err(e) = r.sink.begin(&columns) {
            e.raise();
        }
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn receive_slot(
    slot: *mut pg_sys::TupleTableSlot,
    this: *mut pg_sys::DestReceiver,
) -> bool {
    // SAFETY: PostgreSQL passes our receiver and a valid slot of the
    // descriptor given to `startup`; slot_getallattrs fills its arrays.
    unsafe {
        let r = receiver(this);
        let limit = r.sink.value_limit();
        if limit == 0 {
            return true;
        }
        pg_sys::slot_getallattrs(slot);
        let values = r
            .types
            .iter()
            .enumerate()
            .map(|(i, &(type_oid, attlen))| {
                if *(*slot).tts_isnull.add(i) {
                    return Cell::Null;
                }
                let datum = *(*slot).tts_values.add(i);
                let size = match attlen {
                    // A varlena, maybe compressed or toasted: its full size.
                    -1 => pg_sys::toast_raw_datum_size(datum),
                    -2 => CStr::from_ptr(datum.cast_mut_ptr::<c_char>()).count_bytes(),
                    n => n.max(0) as usize,
                };
                if size > limit {
                    Cell::TooLong
                } else {
                    Cell::Text(super::output_text(datum, type_oid))
                }
            })
            .collect();
        if let Err(e) = r.sink.row(values) {
            e.raise();
        }
    }
    true
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn shutdown(_this: *mut pg_sys::DestReceiver) {}

// ---------------------------------------------------------------------------
// Transaction boundaries, as postgres.c draws them around statements.

/// `StartTransactionCommand`, with the statement start time set.
pub fn start_transaction() {
    // SAFETY: called outside any transaction command, in a connected worker.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
    }
}

/// Commits, flushes statistics (at most once a second, as an idle client
/// does) and shows the worker idle.
pub fn commit_transaction() {
    // SAFETY: ends the transaction command begun by start_transaction (or
    // by a procedure's COMMIT, which starts the next one itself).
    unsafe {
        pg_sys::CommitTransactionCommand();
        pg_sys::pgstat_report_stat(false);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
}

/// Shows this backend idle in `pg_stat_activity`, with `what` as its query.
pub fn report_idle(what: &'static std::ffi::CStr) {
    // SAFETY: `what` is 'static; pgstat copies it into shared memory.
    unsafe { pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, what.as_ptr()) }
}

/// Ends the implicit block of a script of several statements (before its
/// commit).
pub fn end_implicit_block() {
    // SAFETY: inside the transaction the block was begun in.
    unsafe { pg_sys::EndImplicitTransactionBlock() };
}

/// Makes a statement's effects visible to the next one in the same
/// transaction.
pub fn command_counter_increment() {
    // SAFETY: inside a transaction.
    unsafe { pg_sys::CommandCounterIncrement() };
}
