//! A `ProcessUtility_hook`, chained to any earlier one, that shows the
//! rest of the crate the few utility statements it cares about, as safe
//! values, and lets it act around them.

use pgrx::pg_sys;
use pgrx::pg_sys::PgTryBuilder;
use std::ffi::{CStr, CString};
use std::sync::OnceLock;

/// The utility statements the extension acts around.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Utility {
    DropDatabase(CString),
    /// `ALTER DATABASE old RENAME TO new`: the old name.
    RenameDatabase(CString),
    /// `CREATE DATABASE new TEMPLATE source`: both names; the source is
    /// `None` for the default template.
    CreateDatabase {
        name: CString,
        template: Option<CString>,
    },
    /// `ALTER DATABASE name WITH ...`: whether it moves the tablespace
    /// (which, like a drop, needs nobody connected).
    AlterDatabase {
        name: CString,
        moves: bool,
    },
    /// `CREATE`, `ALTER` or `DROP EXTENSION` of this extension (a `DROP`
    /// naming several extensions included).
    ThisExtension,
    Other,
}

/// Where a utility statement runs: what PostgreSQL checks first for the
/// statements that may not run in a transaction block.
#[derive(Clone, Copy, Debug)]
pub struct UtilityContext {
    /// Top level (not from a function), outside a transaction block.
    pub alone: bool,
}

/// What the extension does around a utility statement: `run` runs it.
pub type Around = fn(&Utility, UtilityContext, &mut dyn FnMut());

static AROUND: OnceLock<Around> = OnceLock::new();
static PREVIOUS: OnceLock<pg_sys::ProcessUtility_hook_type> = OnceLock::new();

/// Installs the hook; from `_PG_init`, while preloading.
pub fn install_utility_hook(around: Around, extension: &'static CStr) {
    let _ = AROUND.set(around);
    let _ = EXTENSION.set(extension);
    // SAFETY: _PG_init runs once per process before any statement, so no
    // one reads the hook while we chain it.
    unsafe {
        let _ = PREVIOUS.set(pg_sys::ProcessUtility_hook);
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

static EXTENSION: OnceLock<&'static CStr> = OnceLock::new();

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn owned(p: *const std::os::raw::c_char) -> Option<CString> {
    // SAFETY: per the contract.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_owned())
}

/// The `DefElem`s of an options list, as (name, string value).
///
/// # Safety
/// `list` is NULL or a List of DefElem nodes.
unsafe fn options(list: *mut pg_sys::List) -> Vec<(CString, Option<CString>)> {
    // SAFETY: per the contract; DefElem args of database options are String
    // nodes (or NULL for DEFAULT), and defGetString would raise on others,
    // so only String nodes are read.
    unsafe {
        pgrx::PgList::<pg_sys::DefElem>::from_pg(list)
            .iter_ptr()
            .filter_map(|d| {
                let name = owned((*d).defname)?;
                let arg = (*d).arg;
                let value = if !arg.is_null() && (*arg).type_ == pg_sys::NodeTag::T_String {
                    owned(str_val(arg))
                } else {
                    None
                };
                Some((name, value))
            })
            .collect()
    }
}

/// `strVal()`: the text of a String node.
///
/// # Safety
/// `node` is a String node.
unsafe fn str_val(node: *mut pg_sys::Node) -> *const std::os::raw::c_char {
    // SAFETY: per the contract (struct String { NodeTag; char *sval; }).
    unsafe { (*node.cast::<pg_sys::String>()).sval }
}

/// # Safety
/// `node` is a valid parse node (or NULL).
unsafe fn classify(node: *mut pg_sys::Node) -> Utility {
    let ours = EXTENSION.get().copied().unwrap_or(c"");
    // SAFETY: per the contract, the tag says which struct `node` is.
    unsafe {
        if node.is_null() {
            return Utility::Other;
        }
        match (*node).type_ {
            pg_sys::NodeTag::T_DropdbStmt => {
                let s = node.cast::<pg_sys::DropdbStmt>();
                owned((*s).dbname).map_or(Utility::Other, Utility::DropDatabase)
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let s = node.cast::<pg_sys::RenameStmt>();
                if (*s).renameType == pg_sys::ObjectType::OBJECT_DATABASE {
                    owned((*s).subname).map_or(Utility::Other, Utility::RenameDatabase)
                } else {
                    Utility::Other
                }
            }
            pg_sys::NodeTag::T_CreatedbStmt => {
                let s = node.cast::<pg_sys::CreatedbStmt>();
                let template = options((*s).options)
                    .into_iter()
                    .find(|(n, _)| n.as_bytes() == b"template")
                    .and_then(|(_, v)| v);
                owned((*s).dbname).map_or(Utility::Other, |name| Utility::CreateDatabase {
                    name,
                    template,
                })
            }
            pg_sys::NodeTag::T_AlterDatabaseStmt => {
                let s = node.cast::<pg_sys::AlterDatabaseStmt>();
                let moves = options((*s).options)
                    .iter()
                    .any(|(n, _)| n.as_bytes() == b"tablespace");
                owned((*s).dbname).map_or(Utility::Other, |name| Utility::AlterDatabase {
                    name,
                    moves,
                })
            }
            pg_sys::NodeTag::T_CreateExtensionStmt => {
                let s = node.cast::<pg_sys::CreateExtensionStmt>();
                if owned((*s).extname).is_some_and(|n| n.as_c_str() == ours) {
                    Utility::ThisExtension
                } else {
                    Utility::Other
                }
            }
            pg_sys::NodeTag::T_AlterExtensionStmt => {
                let s = node.cast::<pg_sys::AlterExtensionStmt>();
                if owned((*s).extname).is_some_and(|n| n.as_c_str() == ours) {
                    Utility::ThisExtension
                } else {
                    Utility::Other
                }
            }
            pg_sys::NodeTag::T_DropStmt => {
                let s = node.cast::<pg_sys::DropStmt>();
                if (*s).removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
                    return Utility::Other;
                }
                // Each object of DROP EXTENSION is a String node.
                let named = pgrx::PgList::<pg_sys::Node>::from_pg((*s).objects)
                    .iter_ptr()
                    .any(|o| {
                        !o.is_null()
                            && (*o).type_ == pg_sys::NodeTag::T_String
                            && owned(str_val(o)).is_some_and(|n| n.as_c_str() == ours)
                    });
                if named {
                    Utility::ThisExtension
                } else {
                    Utility::Other
                }
            }
            _ => Utility::Other,
        }
    }
}

#[pgrx::pg_guard]
#[allow(clippy::too_many_arguments)] // PostgreSQL's signature
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::os::raw::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let previous = PREVIOUS.get().copied().flatten();
    let mut run = || {
        // SAFETY: the arguments PostgreSQL gave us, passed on unchanged to
        // the next hook or to the standard implementation.
        unsafe {
            match previous {
                Some(hook) => hook(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
                None => pg_sys::standard_ProcessUtility(
                    pstmt,
                    query_string,
                    read_only_tree,
                    context,
                    params,
                    query_env,
                    dest,
                    qc,
                ),
            }
        }
    };
    // SAFETY: pstmt is the statement being run; utilityStmt is its parse
    // node.
    let utility = unsafe { classify((*pstmt).utilityStmt) };
    match (utility, AROUND.get()) {
        (Utility::Other, _) | (_, None) => run(),
        (utility, Some(around)) => {
            // SAFETY: reads transaction state; we are inside a transaction.
            let in_block = unsafe { pg_sys::IsTransactionBlock() };
            let alone =
                context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL && !in_block;
            around(&utility, UtilityContext { alone }, &mut run)
        }
    }
}

/// Runs `body`, then `after` whether `body` returned or raised an ERROR
/// (which then goes on up).
pub fn with_finally(body: &mut dyn FnMut(), mut after: impl FnMut()) {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(body))
        .finally(&mut after)
        .execute()
}
