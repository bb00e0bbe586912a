//! The registry: one entry in shared memory for every worker this extension
//! starts, static or dynamic, so that any session can list, wait for and
//! stop them. Sized from `max_worker_processes`, requested at preload time.
//!
//! Entries are keyed by worker index (two live workers never share an index,
//! since they would share `schemaN`). An entry outlives its worker as
//! 'stopped' or 'failed', for inspection, until its slot is needed again.
//! Crash recovery reinitializes shared memory, and with it the registry.

use crate::toolkit::{self, CapturedError, RawHandle, SharedArray};

const ERROR_LEN: usize = 256;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    #[default]
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Stopped => "stopped",
            State::Failed => "failed",
        }
    }

    pub fn is_active(self) -> bool {
        matches!(self, State::Starting | State::Running | State::Stopping)
    }
}

pub use crate::registration::Kind;

/// One worker, as kept in shared memory: plain data only.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Entry {
    pub in_use: bool,
    pub kind: Kind,
    pub state: State,
    pub index: i32,
    /// Bumped at every claim, so that a worker or launcher holding an old
    /// copy never writes into an entry that has been reused.
    pub epoch: u64,
    pub pid: i32,
    pub last_pid: i32,
    pub database: u32,
    pub role: u32,
    pub started_at: i64,
    /// Process starts since the entry was claimed; restarts = starts - 1.
    pub starts: i32,
    pub iterations: u64,
    /// Backend waiting in bgw_launch for this worker to come up, woken by it.
    pub launcher_pid: i32,
    /// Set once registered; `has_handle` says whether `handle` is valid.
    /// (Plain fields, not an `Option`: this struct must have a known layout.)
    pub has_handle: bool,
    pub handle: RawHandle,
    /// The launcher gave up on this worker (failed or timed out start): a
    /// late worker must not take the entry, nor overwrite the failure.
    pub abandoned: bool,
    pub error_code: i32,
    pub error_len: u16,
    pub error: [u8; ERROR_LEN],
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            in_use: false,
            kind: Kind::Static,
            state: State::Stopped,
            index: 0,
            epoch: 0,
            pid: 0,
            last_pid: 0,
            database: 0,
            role: 0,
            started_at: 0,
            starts: 0,
            iterations: 0,
            launcher_pid: 0,
            has_handle: false,
            handle: RawHandle::default(),
            abandoned: false,
            error_code: 0,
            error_len: 0,
            error: [0; ERROR_LEN],
        }
    }
}

impl Entry {
    pub fn last_error(&self) -> Option<CapturedError> {
        (self.error_len > 0 || self.error_code != 0).then(|| CapturedError {
            sqlerrcode: self.error_code,
            message: String::from_utf8_lossy(&self.error[..self.error_len as usize]).into_owned(),
        })
    }

    fn set_error(&mut self, e: &CapturedError) {
        let mut end = e.message.len().min(ERROR_LEN);
        while !e.message.is_char_boundary(end) {
            end -= 1;
        }
        self.error[..end].copy_from_slice(&e.message.as_bytes()[..end]);
        self.error_len = end as u16;
        self.error_code = e.sqlerrcode;
    }

    pub fn handle(&self) -> Option<RawHandle> {
        self.has_handle.then_some(self.handle)
    }

    pub fn restarts(&self) -> i32 {
        (self.starts - 1).max(0)
    }

    /// The pid to show: the live one, else the last one.
    pub fn shown_pid(&self) -> i32 {
        if self.pid != 0 {
            self.pid
        } else {
            self.last_pid
        }
    }
}

static REGISTRY: SharedArray<Entry> = SharedArray::new(c"bgworker_rs registry");

fn capacity() -> usize {
    toolkit::max_worker_processes().max(1) as usize
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
        let saved = SAVED
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_default();
        for (slot, entry) in entries.iter_mut().zip(saved) {
            *slot = entry;
        }
    });
    if toolkit::is_postmaster() {
        toolkit::on_postmaster_shmem_exit(save);
    }
}

/// What the postmaster kept of the registry across a crash (postmaster-local).
static SAVED: std::sync::Mutex<Option<Vec<Entry>>> = std::sync::Mutex::new(None);

/// Runs in the postmaster at `shmem_exit`, when every other process has
/// exited. Shared memory may be corrupt after a crash: entries are decoded
/// from bytes and checked, and a bad one is dropped. Workers that were
/// running are marked failed; those that come back (static ones, dynamic ones
/// with `restart_after`) take their entries again, counting a restart.
fn save() {
    let bytes = REGISTRY.copy_bytes_unlocked();
    let lost = CapturedError {
        sqlerrcode: pgrx::PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN as i32,
        message: "lost when the server reinitialized after a crash".into(),
    };
    let saved = bytes
        .chunks_exact(std::mem::size_of::<Entry>())
        .map(|chunk| match decode(chunk) {
            Some(mut e) if e.in_use => {
                e.has_handle = false; // the postmaster renumbers worker slots
                e.launcher_pid = 0;
                if e.state.is_active() {
                    if e.pid != 0 {
                        e.last_pid = e.pid;
                    }
                    e.pid = 0;
                    e.state = State::Failed;
                    e.set_error(&lost);
                }
                e
            }
            _ => Entry::default(),
        })
        .collect();
    if let Ok(mut s) = SAVED.lock() {
        *s = Some(saved);
    }
}

/// An entry from raw bytes, or `None` if a field holds an impossible value.
fn decode(b: &[u8]) -> Option<Entry> {
    use std::mem::offset_of;
    let u8_at = |o: usize| b.get(o).copied();
    let arr = |o: usize, n: usize| b.get(o..o + n);
    let i32_at = |o: usize| arr(o, 4).map(|s| i32::from_ne_bytes(s.try_into().unwrap_or([0; 4])));
    let u32_at = |o: usize| arr(o, 4).map(|s| u32::from_ne_bytes(s.try_into().unwrap_or([0; 4])));
    let u64_at = |o: usize| arr(o, 8).map(|s| u64::from_ne_bytes(s.try_into().unwrap_or([0; 8])));
    let i64_at = |o: usize| arr(o, 8).map(|s| i64::from_ne_bytes(s.try_into().unwrap_or([0; 8])));
    let bool_at = |o: usize| match u8_at(o)? {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    };
    let kind = match u8_at(offset_of!(Entry, kind))? {
        0 => Kind::Static,
        1 => Kind::Dynamic,
        2 => Kind::Monitor,
        3 => Kind::Scheduler,
        4 => Kind::Job,
        _ => return None,
    };
    let state = match u8_at(offset_of!(Entry, state))? {
        0 => State::Starting,
        1 => State::Running,
        2 => State::Stopping,
        3 => State::Stopped,
        4 => State::Failed,
        _ => return None,
    };
    let error_len =
        arr(offset_of!(Entry, error_len), 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))?;
    if error_len as usize > ERROR_LEN {
        return None;
    }
    let mut error = [0u8; ERROR_LEN];
    error.copy_from_slice(arr(offset_of!(Entry, error), ERROR_LEN)?);
    Some(Entry {
        in_use: bool_at(offset_of!(Entry, in_use))?,
        kind,
        state,
        index: i32_at(offset_of!(Entry, index))?,
        epoch: u64_at(offset_of!(Entry, epoch))?,
        pid: i32_at(offset_of!(Entry, pid))?,
        last_pid: i32_at(offset_of!(Entry, last_pid))?,
        database: u32_at(offset_of!(Entry, database))?,
        role: u32_at(offset_of!(Entry, role))?,
        started_at: i64_at(offset_of!(Entry, started_at))?,
        starts: i32_at(offset_of!(Entry, starts))?,
        iterations: u64_at(offset_of!(Entry, iterations))?,
        launcher_pid: 0,
        has_handle: false,
        handle: RawHandle::default(),
        abandoned: bool_at(offset_of!(Entry, abandoned))?,
        error_code: i32_at(offset_of!(Entry, error_code))?,
        error_len,
        error,
    })
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
    // A launch whose backend died before the worker was registered.
    e.state == State::Starting
        && !e.has_handle
        && e.pid == 0
        && !toolkit::process_exists(e.launcher_pid)
}

/// Picks a slot for `index` in the family of `kind`: the entry it already
/// has, else a free one, else the longest-stopped one.
fn pick_slot(entries: &[Entry], kind: Kind, index: i32) -> Result<usize, ClaimError> {
    if let Some((i, e)) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| e.in_use && e.index == index && e.kind.family() == kind.family())
    {
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
    let launcher = toolkit::my_pid();
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
    let pid = toolkit::my_pid();
    let now = toolkit::now();
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
        toolkit::wake_backend(pid);
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
        toolkit::wake_backend(pid);
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
            toolkit::on_exit(|_code| {
                if let Some(&ticket) = MY_TICKET.get() {
                    detach(ticket, toolkit::last_error());
                }
            });
        }
        Attach::Abandoned => {
            // Exit code 0: the postmaster forgets the worker for good.
            pgrx::log!(
                "{}: its launcher gave up on it; exiting",
                toolkit::worker_name()
            );
            toolkit::exit_quietly();
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
            toolkit::current_database().to_u32(),
            toolkit::current_user().to_u32(),
        );
    }
}

/// This worker completed one more iteration of its loop.
pub fn report_iteration() {
    if let Some(&ticket) = MY_TICKET.get() {
        count_iteration(ticket);
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn decode_accepts_zeroes_and_rejects_impossible_values() {
        let zero = vec![0u8; size_of::<Entry>()];
        let entry = decode(&zero).expect("zeroes are a valid, unused entry");
        assert!(!entry.in_use && entry.state == State::Starting);

        let mut bad = zero.clone();
        bad[offset_of!(Entry, state)] = 9;
        assert!(decode(&bad).is_none(), "state out of range");
        let mut bad = zero.clone();
        bad[offset_of!(Entry, kind)] = 5;
        assert!(decode(&bad).is_none(), "kind out of range");
        let mut bad = zero.clone();
        bad[offset_of!(Entry, in_use)] = 2;
        assert!(decode(&bad).is_none(), "not a bool");
        let mut bad = zero.clone();
        let at = offset_of!(Entry, error_len);
        bad[at..at + 2].copy_from_slice(&(ERROR_LEN as u16 + 1).to_ne_bytes());
        assert!(decode(&bad).is_none(), "error longer than its buffer");
        let cut = offset_of!(Entry, error) + 10; // inside the error buffer
        assert!(decode(&zero[..cut]).is_none(), "short input");
    }

    #[test]
    fn decode_reads_fields_back() {
        let mut bytes = vec![0u8; size_of::<Entry>()];
        bytes[offset_of!(Entry, in_use)] = 1;
        bytes[offset_of!(Entry, kind)] = 1;
        bytes[offset_of!(Entry, state)] = 4;
        let at = offset_of!(Entry, index);
        bytes[at..at + 4].copy_from_slice(&42i32.to_ne_bytes());
        let at = offset_of!(Entry, epoch);
        bytes[at..at + 8].copy_from_slice(&7u64.to_ne_bytes());
        let e = decode(&bytes).expect("valid entry");
        assert_eq!(
            (e.in_use, e.kind, e.state, e.index, e.epoch),
            (true, Kind::Dynamic, State::Failed, 42, 7)
        );
        assert!(!e.has_handle, "handles never survive a crash");
    }
}
