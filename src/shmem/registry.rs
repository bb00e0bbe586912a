//! The registry: one entry in shared memory for every worker this extension
//! starts, static or dynamic, so that any session can list, wait for and
//! stop them. Sized from `max_worker_processes`, requested at preload time.
//!
//! Entries are keyed by worker index (two live workers never share an index,
//! since they would share `schemaN`). An entry outlives its worker as
//! 'stopped' or 'failed', for inspection, until its slot is needed again.
//! Crash recovery reinitializes shared memory, and with it the registry.

use super::Kind;
pub use super::entry::{Entry, State};
use super::registry_crash as crash;
use crate::pg::{self, CapturedError, RawHandle, SharedArray};

static REGISTRY: SharedArray<Entry> = SharedArray::new(c"bgworker_rs registry");

fn capacity() -> usize {
    pg::max_worker_processes().max(1) as usize
}

/// From the shmem_request_hook.
pub fn request() {
    REGISTRY.request(capacity());
}

/// From the shmem_startup_hook, in the postmaster: create the registry,
/// refilled with what was saved before a crash reinitialized shared memory,
/// and save it again at the next `shmem_exit`.
pub fn startup() {
    REGISTRY.attach(capacity(), |entries| {
        for (slot, entry) in entries.iter_mut().zip(crash::take_saved()) {
            *slot = entry;
        }
    });
    if pg::is_postmaster() {
        pg::on_postmaster_shmem_exit(|| crash::save(&REGISTRY.copy_bytes_unlocked()));
    }
}

pub fn is_available() -> bool {
    REGISTRY.is_attached()
}

/// Where an entry lives and which claim of it we hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ticket {
    #[serde(rename = "s")]
    pub slot: u32,
    #[serde(rename = "e")]
    pub epoch: u64,
}

pub enum ClaimError {
    /// Another live worker has this index.
    IndexInUse {
        pid: i32,
        state: State,
    },
    Full,
}

fn is_stale_start(e: &Entry) -> bool {
    e.state == State::Starting
        && e.pid == 0
        && match e.handle() {
            // A launch whose backend died before the worker was registered.
            None => !pg::process_exists(e.launcher_pid),
            // A worker stopped before it ever started (terminated while the
            // postmaster had not forked it yet): it never leaves its entry.
            Some(handle) => matches!(pg::worker_status(handle), pg::WorkerStatus::Stopped),
        }
}

/// A worker that was stopped before it ever started leaves no trace of its
/// own: its entry is marked stopped, so that it is neither shown as
/// starting nor kept from reuse.
pub fn forget_unstarted(ticket: Ticket) {
    with_ticket(ticket, |e| {
        if e.state == State::Starting && e.pid == 0 {
            e.state = State::Stopped;
        }
    });
}

/// Picks a slot for `index` in the family of `kind`: the entry it already
/// has, else a free one, else the longest-stopped one.
fn pick_slot(entries: &[Entry], kind: Kind, index: i32) -> Result<usize, ClaimError> {
    if let Some((i, e)) = entries.iter().enumerate().find(|(_, e)| {
        kind.unique_index() && e.in_use && e.index == index && e.kind.family() == kind.family()
    }) {
        if e.state.is_active() && !is_stale_start(e) {
            return Err(ClaimError::IndexInUse {
                pid: e.shown_pid(),
                state: e.state,
            });
        }
        return Ok(i);
    }
    if let Some(i) = entries.iter().position(|e| !e.in_use) {
        return Ok(i);
    }
    entries
        .iter()
        .enumerate()
        .filter(|(_, e)| !e.state.is_active() || is_stale_start(e))
        .min_by_key(|(_, e)| e.started_at)
        .map(|(i, _)| i)
        .ok_or(ClaimError::Full)
}

/// A launching backend claims an entry for a new dynamic worker.
pub fn claim_for_launch(
    kind: Kind,
    index: i32,
    database: u32,
    role: u32,
) -> Result<Ticket, ClaimError> {
    let launcher = pg::my_pid();
    REGISTRY.write(|entries| {
        let slot = pick_slot(entries, kind, index)?;
        let epoch = entries[slot].epoch.wrapping_add(1);
        entries[slot] = Entry {
            in_use: true,
            kind,
            state: State::Starting,
            index,
            epoch,
            database,
            role,
            launcher_pid: launcher,
            ..Entry::default()
        };
        Ok(Ticket {
            slot: slot as u32,
            epoch,
        })
    })
}

fn with_ticket<R>(ticket: Ticket, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
    REGISTRY.write(|entries| {
        let e = entries.get_mut(ticket.slot as usize)?;
        (e.in_use && e.epoch == ticket.epoch).then(|| f(e))
    })
}

pub fn set_handle(ticket: Ticket, handle: RawHandle) {
    with_ticket(ticket, |e| {
        e.handle = handle;
        e.has_handle = true;
    });
}

/// Frees an entry whose worker was never registered.
pub fn release(ticket: Ticket) {
    with_ticket(ticket, |e| {
        *e = Entry {
            epoch: e.epoch,
            ..Entry::default()
        }
    });
}

/// Records a launch that failed and will not be retried.
pub fn mark_failed(ticket: Ticket, error: &CapturedError) {
    with_ticket(ticket, |e| {
        e.state = State::Failed;
        e.abandoned = true;
        e.set_error(error);
        if e.pid != 0 {
            e.last_pid = e.pid;
            e.pid = 0;
        }
    });
}

pub fn get(ticket: Ticket) -> Option<Entry> {
    REGISTRY.read(|entries| {
        entries
            .get(ticket.slot as usize)
            .filter(|e| e.in_use && e.epoch == ticket.epoch)
            .copied()
    })
}

pub enum Attach {
    Attached(Ticket),
    /// Its launcher gave up on it: the worker should just go away.
    Abandoned,
    /// Another live worker has this index.
    IndexInUse(i32),
}

/// A worker process takes its entry: the one its launcher claimed, or for a
/// static worker (or after crash recovery wiped the registry) one by index.
pub fn attach(kind: Kind, index: i32, database: u32, role: u32, ticket: Option<Ticket>) -> Attach {
    let pid = pg::my_pid();
    let now = pg::now();
    REGISTRY.write(|entries| {
        let claimed = ticket.filter(|t| {
            entries
                .get(t.slot as usize)
                .is_some_and(|e| e.in_use && e.epoch == t.epoch && e.index == index)
        });
        if claimed.is_some_and(|t| entries[t.slot as usize].abandoned) {
            return Attach::Abandoned;
        }
        let (slot, fresh) = match claimed {
            Some(t) => (t.slot as usize, false),
            None => {
                let slot = match pick_slot(entries, kind, index) {
                    Ok(slot) => slot,
                    // A live worker owns this index; keep out of its entry.
                    Err(ClaimError::IndexInUse { pid, .. }) => return Attach::IndexInUse(pid),
                    Err(ClaimError::Full) => return Attach::IndexInUse(0),
                };
                let e = &entries[slot];
                let same = e.in_use && e.index == index && e.kind == kind;
                (slot, !same)
            }
        };
        let e = &mut entries[slot];
        if fresh {
            *e = Entry {
                epoch: e.epoch.wrapping_add(1),
                ..Entry::default()
            };
        }
        e.in_use = true;
        e.kind = kind;
        e.index = index;
        e.state = State::Starting;
        e.pid = pid;
        e.database = database;
        e.role = role;
        e.started_at = now;
        e.starts += 1;
        Attach::Attached(Ticket {
            slot: slot as u32,
            epoch: e.epoch,
        })
    })
}

/// The worker has connected and initialized its table.
fn set_running(ticket: Ticket, database: u32, role: u32) {
    let launcher = with_ticket(ticket, |e| {
        e.state = State::Running;
        e.database = database;
        e.role = role;
        std::mem::take(&mut e.launcher_pid)
    });
    if let Some(pid) = launcher {
        pg::wake_backend(pid);
    }
}

fn count_iteration(ticket: Ticket) {
    with_ticket(ticket, |e| e.iterations += 1);
}

pub fn set_stopping(ticket: Ticket) {
    with_ticket(ticket, |e| {
        if e.state.is_active() {
            e.state = State::Stopping
        }
    });
}

/// From the worker's exit callback: 'stopped' after a clean exit or SIGTERM,
/// 'failed' (with the error) otherwise.
/// Sends SIGTERM to `pid` only while it is the live worker of this entry.
/// The registry lock is held meanwhile, and a worker leaves its entry (under
/// that lock) before it exits, so the pid cannot have been reused by another
/// process. False if it is no longer that worker.
pub fn sigterm_if_current(ticket: Ticket, pid: i32) -> bool {
    REGISTRY.read(|entries| {
        entries
            .get(ticket.slot as usize)
            .is_some_and(|e| e.in_use && e.epoch == ticket.epoch && e.pid == pid && pid > 0)
            && pg::send_sigterm(pid)
    })
}

pub fn detach(ticket: Ticket, error: Option<CapturedError>) {
    const ADMIN_SHUTDOWN: &str = "57P01";
    let launcher = with_ticket(ticket, |e| {
        if e.abandoned {
            // The launcher's account of the failure stands.
            e.last_pid = e.pid;
            e.pid = 0;
            return 0;
        }
        let failed = error
            .as_ref()
            .is_some_and(|err| err.sqlstate() != ADMIN_SHUTDOWN);
        e.state = if failed {
            State::Failed
        } else {
            State::Stopped
        };
        if let Some(err) = error.as_ref().filter(|_| failed) {
            e.set_error(err);
        }
        e.last_pid = e.pid;
        e.pid = 0;
        std::mem::take(&mut e.launcher_pid)
    });
    if let Some(pid) = launcher {
        pg::wake_backend(pid);
    }
}

/// The entry of a live or last-seen worker pid.
pub fn find_by_pid(pid: i32) -> Option<(Ticket, Entry)> {
    if pid <= 0 {
        return None;
    }
    REGISTRY.read(|entries| {
        let by = |f: &dyn Fn(&Entry) -> bool| {
            entries
                .iter()
                .enumerate()
                .find(|(_, e)| e.in_use && f(e))
                .map(|(i, e)| {
                    (
                        Ticket {
                            slot: i as u32,
                            epoch: e.epoch,
                        },
                        *e,
                    )
                })
        };
        by(&|e| e.pid == pid).or_else(|| by(&|e| e.pid == 0 && e.last_pid == pid))
    })
}

/// The pid of the live worker of this kind with the lowest index.
pub fn live_pid(kind: Kind) -> Option<i32> {
    REGISTRY.read(|entries| {
        entries
            .iter()
            .filter(|e| e.in_use && e.kind == kind && e.pid != 0)
            .min_by_key(|e| e.index)
            .map(|e| e.pid)
    })
}

pub fn snapshot() -> Vec<Entry> {
    REGISTRY.read(|entries| entries.iter().filter(|e| e.in_use).copied().collect())
}

/// Backend pid `pid` of this ticket's worker, if it is still that worker.
pub fn is_running_as(ticket: Ticket, pid: i32) -> bool {
    get(ticket).is_some_and(|e| e.pid == pid)
}

/// This process's own entry, once it has entered the registry.
static MY_TICKET: std::sync::OnceLock<Ticket> = std::sync::OnceLock::new();

/// A worker process takes its entry and arranges to leave it on exit. A
/// worker whose launcher gave up on it exits quietly; one whose index is held
/// by another live worker exits with an error.
pub fn enter(kind: Kind, index: i32, database: u32, role: u32, ticket: Option<Ticket>) {
    if !is_available() {
        return; // not preloaded: bgw_launch refuses, so only by hand
    }
    match attach(kind, index, database, role, ticket) {
        Attach::Attached(ticket) => {
            let _ = MY_TICKET.set(ticket);
            pg::on_exit(|_code| {
                if let Some(&ticket) = MY_TICKET.get() {
                    detach(ticket, pg::last_error());
                }
            });
        }
        Attach::Abandoned => {
            // Exit code 0: the postmaster forgets the worker for good.
            pgrx::log!("{}: its launcher gave up on it; exiting", pg::worker_name());
            pg::exit_quietly();
        }
        Attach::IndexInUse(pid) => {
            pgrx::ereport!(
                FATAL,
                pgrx::PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!("another bgworker_rs worker with index {index} is running (pid {pid})")
            );
        }
    }
}

/// This worker is connected and ready; wakes a launcher waiting for that.
pub fn report_running() {
    if let Some(&ticket) = MY_TICKET.get() {
        set_running(
            ticket,
            pg::current_database().to_u32(),
            pg::current_user().to_u32(),
        );
    }
}

/// A job worker that stays warm took a run of another job: `bgw_list`
/// shows that job's index.
pub fn set_my_index(index: i32) {
    if let Some(&ticket) = MY_TICKET.get() {
        with_ticket(ticket, |e| e.index = index);
    }
}

/// This worker completed one more iteration of its loop.
pub fn report_iteration() {
    if let Some(&ticket) = MY_TICKET.get() {
        count_iteration(ticket);
    }
}
