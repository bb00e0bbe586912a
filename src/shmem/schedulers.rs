//! The table of job schedulers, one entry per database that has (or may
//! have) a scheduler, in shared memory, sized by `max_worker_processes`
//! (a scheduler is a worker). The launcher starts schedulers for the
//! entries wanted; backends ask for one when a job commits; a scheduler
//! leaves its entry when its database has no active job.
//!
//! An entry's life: `Wanted` (asked for: a job committed, or the server
//! started) → `Starting` (registered by the launcher; the scheduler has not
//! finished its first wake) → `Running` → `Leaving` (the scheduler decided
//! to exit) → free again once the launcher sees the worker gone, or
//! `Wanted` again if something was asked for meanwhile. A scheduler that
//! exits without passing through `Leaving` (terminated, or an error) is
//! `Wanted` again, after a short delay: its database's jobs still need it.
//!
//! `requested` is how a commit reaches a scheduler without losing a race
//! with its exit: the scheduler clears it before each wake and leaves only
//! if it is still clear, under the lock.

use crate::pg::{self, RawHandle, SharedArray};
use crate::settings;
use crate::shmem::registry::{self, Ticket};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    #[default]
    Free,
    Wanted,
    Starting,
    Running,
    Leaving,
}

/// Plain data only: this lives in shared memory.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Entry {
    pub state: State,
    /// Something was asked of this database's scheduler since its last wake.
    pub requested: bool,
    pub has_handle: bool,
    /// Utility statements (`DROP DATABASE`, ...) keeping the scheduler out.
    pub held: u16,
    pub database: u32,
    /// The scheduler's pid once it has attached, to wake it.
    pub pid: i32,
    pub handle: RawHandle,
    /// The scheduler's registry entry, claimed by the launcher.
    pub registry_slot: u32,
    pub registry_epoch: u64,
    /// Since when (µs since the Unix epoch) the scheduler has had runs
    /// waiting for a job slot; 0: none waiting. Fairness across databases
    /// (`job_slots::reserve`) reads it.
    pub waiting_since: i64,
    /// A `Wanted` entry whose scheduler exited without deciding to leave
    /// (terminated, or an error) starts no sooner than this (µs since the
    /// Unix epoch), so that one that fails at once never loops hot.
    pub not_before: i64,
    /// Such exits in a row, each before its first wake completed and
    /// within `HEALTHY_US` of its start: the delay doubles with each, and
    /// after `MAX_FAILURES` the entry is given up (a job committed there
    /// asks for a scheduler again).
    pub failures: u8,
    /// When the launcher last took the entry to start (µs since the Unix
    /// epoch).
    pub started_at: i64,
}

/// A scheduler that ran this long before it exited unexpectedly was
/// healthy: its restart starts a new count of failures.
const HEALTHY_US: i64 = 60_000_000;
/// Unexpected exits in a row, each soon after its start, before the
/// launcher gives the entry up.
pub const MAX_FAILURES: u8 = 5;
/// Longest delay before a restart; a `not_before` further ahead than this
/// means the wall clock stepped back, and is ignored.
const MAX_DELAY_US: i64 = 60_000_000;

/// Whether a `Wanted` entry is held back by its restart delay at `now`.
fn delayed(e: &Entry, now: i64) -> bool {
    e.not_before > now && e.not_before - now <= MAX_DELAY_US
}

impl Entry {
    fn is_live(&self) -> bool {
        self.state != State::Free
    }
}

static SCHEDULERS: SharedArray<Entry> = SharedArray::new(c"bgworker_rs job schedulers");

/// Entries: one per database wanting or having a scheduler at one time
/// (a running scheduler is a worker, so at most `max_worker_processes` of
/// those; the rest wait as `Wanted`). The launcher feeds the databases of
/// its start-up check in a few at a time, so requests always find room.
fn capacity() -> usize {
    (pg::max_worker_processes().max(1) as usize).max(1024)
}

/// How many entries the start-up check may have waiting or starting at
/// once.
const CHECKS_QUEUED: usize = 16;

/// Only with jobs on (`bgworker_rs.max_jobs` > 0); without, every
/// function here does nothing.
pub fn request() {
    if settings::MAX_JOBS.get() > 0 {
        SCHEDULERS.request(capacity());
    }
}

pub fn startup() {
    if settings::MAX_JOBS.get() > 0 {
        SCHEDULERS.attach(capacity(), |_| {});
    }
}

fn is_available() -> bool {
    SCHEDULERS.is_attached()
}

/// The entry of `database`, or a free one taken for it (`Wanted`, not
/// requested); `None` when the table is full.
fn entry_for(entries: &mut [Entry], database: u32) -> Option<&mut Entry> {
    let i = entries
        .iter()
        .position(|e| e.is_live() && e.database == database)
        .or_else(|| entries.iter().position(|e| !e.is_live()))?;
    let e = &mut entries[i];
    if !e.is_live() {
        *e = Entry {
            state: State::Wanted,
            database,
            ..Entry::default()
        };
    }
    Some(e)
}

/// What the caller should wake after changing the table.
enum Wake {
    Nobody,
    Scheduler(i32),
    Launcher,
}

fn wake(w: Wake) {
    match w {
        Wake::Nobody => {}
        Wake::Scheduler(pid) => pg::wake_backend(pid),
        Wake::Launcher => {
            if let Some(pid) = super::registry::live_pid(super::Kind::Launcher) {
                pg::wake_backend(pid);
            }
        }
    }
}

/// Asks for `database`'s scheduler: wakes it if it runs, else has the
/// launcher start it. Called when a job commits. False if the table is
/// full (the launcher logs it when it next scans the databases).
pub fn ask_for(database: u32) -> bool {
    if !is_available() {
        return false;
    }
    let (found, w) = SCHEDULERS.write(|entries| match entry_for(entries, database) {
        None => (false, Wake::Nobody),
        Some(e) => {
            e.requested = true;
            let w = match e.state {
                State::Running | State::Starting if e.pid > 0 => Wake::Scheduler(e.pid),
                State::Wanted if e.held == 0 => Wake::Launcher,
                _ => Wake::Nobody,
            };
            (true, w)
        }
    });
    wake(w);
    found
}

/// The launcher, at its start: entries a previous launcher left
/// half-started are wanted again.
pub fn recover() {
    SCHEDULERS.write(|entries| {
        for e in entries.iter_mut() {
            if e.state == State::Starting && !e.has_handle {
                e.state = State::Wanted;
            }
        }
    });
}

/// The launcher's start-up check: takes databases from the end of `pending`
/// into the table while fewer than `CHECKS_QUEUED` entries wait or start
/// (one that has an entry already needs none).
pub fn want_some(pending: &mut Vec<u32>) {
    SCHEDULERS.write(|entries| {
        while let Some(&db) = pending.last() {
            // Entries held back by a restart delay (a scheduler that keeps
            // failing) never keep the other databases' checks waiting.
            let now = pg::now_unix_micros();
            let queued = entries
                .iter()
                .filter(|e| matches!(e.state, State::Wanted | State::Starting) && !delayed(e, now))
                .count();
            if queued >= CHECKS_QUEUED || entry_for(entries, db).is_none() {
                break;
            }
            pending.pop();
        }
    });
}

/// The launcher takes up to `at_most_starting` entries to start, counting
/// those still starting: (entry index, database). They become `Starting`,
/// and their `requested` flag is cleared: a start answers every request
/// made before it.
pub fn take_to_start(at_most_starting: usize) -> Vec<(usize, u32)> {
    let now = pg::now_unix_micros();
    SCHEDULERS.write(|entries| {
        let starting = entries
            .iter()
            .filter(|e| e.state == State::Starting)
            .count();
        let room = at_most_starting.saturating_sub(starting);
        let mut taken = Vec::new();
        for (i, e) in entries.iter_mut().enumerate() {
            if taken.len() >= room {
                break;
            }
            if e.state == State::Wanted && e.held == 0 && !delayed(e, now) {
                e.state = State::Starting;
                e.requested = false;
                e.has_handle = false;
                e.pid = 0;
                e.started_at = now;
                taken.push((i, e.database));
            }
        }
        taken
    })
}

/// The launcher registered entry `i`'s worker, with this registry entry.
/// The worker may already have run its first wake, and even decided to
/// leave: the entry is still this start's (only the launcher frees an
/// entry, once it has the handle), and without the handle the launcher
/// could never see the worker exit.
pub fn set_handle(i: usize, handle: RawHandle, ticket: Ticket) {
    SCHEDULERS.write(|entries| {
        if let Some(e) = entries.get_mut(i).filter(|e| {
            !e.has_handle && matches!(e.state, State::Starting | State::Running | State::Leaving)
        }) {
            e.handle = handle;
            e.has_handle = true;
            e.registry_slot = ticket.slot;
            e.registry_epoch = ticket.epoch;
        }
    });
}

/// The launcher could not start entry `i`: wanted again (no worker slot)
/// or forgotten (the database cannot be connected to).
pub fn not_started(i: usize, again: bool) {
    SCHEDULERS.write(|entries| {
        if let Some(e) = entries.get_mut(i).filter(|e| e.state == State::Starting) {
            if again {
                e.state = State::Wanted;
            } else {
                *e = Entry::default();
            }
        }
    });
}

/// In how many milliseconds the first entry held back by `not_before`
/// may start; `None` if none is.
pub fn next_start_ms() -> Option<i64> {
    let now = pg::now_unix_micros();
    SCHEDULERS.read(|entries| {
        entries
            .iter()
            .filter(|e| e.state == State::Wanted && e.held == 0 && delayed(e, now))
            .map(|e| (e.not_before - now + 999) / 1000)
            .min()
    })
}

/// The launcher looks at every started entry's worker: one that has exited
/// frees its entry, or makes it wanted again if a request came meanwhile
/// (or a utility statement holds it), or if it exited without deciding to
/// leave (it was terminated, or failed): then after `restart_delay_us`,
/// doubled with each such exit in a row, since its jobs still need it;
/// after `MAX_FAILURES` of them it is given up unless asked for. Returns
/// the databases whose scheduler exited, those given up, and whether any
/// entry is wanted.
pub fn reap(restart_delay_us: i64) -> (Vec<u32>, Vec<u32>, bool) {
    let now = pg::now_unix_micros();
    let started: Vec<(usize, RawHandle)> = SCHEDULERS.read(|entries| {
        entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.has_handle && matches!(e.state, State::Starting | State::Running | State::Leaving)
            })
            .map(|(i, e)| (i, e.handle))
            .collect()
    });
    let gone: Vec<(usize, RawHandle)> = started
        .into_iter()
        .filter(|(_, h)| matches!(pg::worker_status(*h), pg::WorkerStatus::Stopped))
        .collect();
    let mut unstarted = Vec::new();
    let result = SCHEDULERS.write(|entries| {
        let mut exited = Vec::new();
        let mut given_up = Vec::new();
        for (i, handle) in gone {
            let Some(e) = entries
                .get_mut(i)
                .filter(|e| e.has_handle && e.handle == handle)
            else {
                continue;
            };
            exited.push(e.database);
            if e.pid == 0 {
                // Stopped before it ever ran: its registry entry is ours
                // to end.
                unstarted.push(Ticket {
                    slot: e.registry_slot,
                    epoch: e.registry_epoch,
                });
            }
            // A utility statement's hold stopped it: expected, and it starts
            // again once the hold is released.
            let unexpected = e.state != State::Leaving && e.held == 0;
            // One that ran its first wake, or ran a while, was healthy:
            // its restart starts a new count.
            let healthy = e.state == State::Running || now - e.started_at >= HEALTHY_US;
            let failures = match unexpected {
                false => 0,
                true if healthy => 1,
                true => e.failures.saturating_add(1),
            };
            let give_up = failures > MAX_FAILURES && !e.requested && e.held == 0;
            if give_up {
                given_up.push(e.database);
            }
            if !give_up && (e.requested || e.held > 0 || unexpected) {
                let delay = match failures {
                    0 => 0,
                    n => (restart_delay_us << (n - 1).min(16)).min(MAX_DELAY_US),
                };
                *e = Entry {
                    state: State::Wanted,
                    database: e.database,
                    held: e.held,
                    requested: e.requested,
                    not_before: now + delay,
                    failures,
                    ..Entry::default()
                };
            } else {
                *e = Entry::default();
            }
        }
        let wanted = entries
            .iter()
            .any(|e| e.state == State::Wanted && e.held == 0);
        (exited, given_up, wanted)
    });
    for ticket in unstarted {
        registry::forget_unstarted(ticket);
    }
    result
}

/// A scheduler takes its entry; false if it is not (or no longer) the one
/// its launcher started, when it should exit.
pub fn attach(i: usize, database: u32) -> bool {
    let pid = pg::my_pid();
    SCHEDULERS.write(|entries| {
        match entries
            .get_mut(i)
            .filter(|e| e.database == database && e.state == State::Starting)
        {
            Some(e) => {
                e.pid = pid;
                true
            }
            None => false,
        }
    })
}

/// A scheduler is about to look at its tables: requests made from now on
/// are for its next wake.
pub fn begin_wake(i: usize) {
    SCHEDULERS.write(|entries| {
        if let Some(e) = entries.get_mut(i) {
            e.requested = false;
        }
    });
}

/// A scheduler finished its first wake: it runs, and the launcher may
/// start the next check.
pub fn set_running(i: usize) {
    SCHEDULERS.write(|entries| {
        if let Some(e) = entries.get_mut(i).filter(|e| e.state == State::Starting) {
            e.state = State::Running;
        }
    });
    wake(Wake::Launcher);
}

/// Whether a scheduler has runs waiting for a job slot.
pub fn set_waiting(i: usize, waiting: bool) {
    let now = pg::now_unix_micros();
    SCHEDULERS.write(|entries| {
        if let Some(e) = entries.get_mut(i) {
            if !waiting {
                e.waiting_since = 0;
            } else if e.waiting_since == 0 {
                e.waiting_since = now.max(1);
            }
        }
    });
}

/// The databases whose schedulers have runs waiting for a slot, with
/// since when.
pub fn waiting() -> Vec<(u32, i64)> {
    if !is_available() {
        return Vec::new();
    }
    SCHEDULERS.read(|entries| {
        entries
            .iter()
            .filter(|e| e.is_live() && e.waiting_since != 0)
            .map(|e| (e.database, e.waiting_since))
            .collect()
    })
}

/// Wakes the schedulers that wait for a slot, but `except`: a slot freed.
pub fn wake_waiting(except: u32) {
    if !is_available() {
        return;
    }
    let pids: Vec<i32> = SCHEDULERS.read(|entries| {
        entries
            .iter()
            .filter(|e| e.is_live() && e.waiting_since != 0 && e.database != except)
            .map(|e| e.pid)
            .collect()
    });
    for pid in pids {
        pg::wake_backend(pid);
    }
}

/// Wakes the scheduler of `database` if it waits for a slot.
pub fn wake_waiting_in(database: u32) {
    if !is_available() {
        return;
    }
    let pid = SCHEDULERS.read(|entries| {
        entries
            .iter()
            .find(|e| e.is_live() && e.waiting_since != 0 && e.database == database)
            .map(|e| e.pid)
    });
    if let Some(pid) = pid.filter(|&pid| pid > 0) {
        pg::wake_backend(pid);
    }
}

/// A scheduler with nothing to do leaves, unless something was asked of
/// it since its last wake began (then it looks again).
pub fn try_leave(i: usize) -> bool {
    SCHEDULERS.write(|entries| match entries.get_mut(i) {
        Some(e) if !e.requested && e.held == 0 => {
            e.state = State::Leaving;
            e.waiting_since = 0;
            true
        }
        Some(_) => false,
        None => true,
    })
}

/// A scheduler must leave whatever was asked (its database or extension
/// went away). A request made since its wake began stays: the launcher
/// then starts another, which sees what changed (an upgrade just
/// committed, say).
pub fn leave(i: usize) {
    SCHEDULERS.write(|entries| {
        if let Some(e) = entries.get_mut(i) {
            e.state = State::Leaving;
            e.waiting_since = 0;
        }
    });
}

/// A utility statement (`DROP DATABASE`, ...) keeps `database`'s scheduler
/// out until [`release`]; returns the handle of the scheduler running
/// there now, to be stopped.
pub fn hold(database: u32) -> Option<RawHandle> {
    if !is_available() {
        return None;
    }
    SCHEDULERS.write(|entries| {
        let e = entry_for(entries, database)?;
        e.held = e.held.saturating_add(1);
        (e.has_handle && matches!(e.state, State::Starting | State::Running | State::Leaving))
            .then_some(e.handle)
    })
}

/// Ends a [`hold`]: the database is checked again (it may be gone, or
/// renamed, or have jobs again).
pub fn release(database: u32) {
    if !is_available() {
        return;
    }
    let w = SCHEDULERS.write(|entries| {
        let Some(e) = entries
            .iter_mut()
            .find(|e| e.is_live() && e.database == database)
        else {
            return Wake::Nobody;
        };
        e.held = e.held.saturating_sub(1);
        e.requested = true;
        if e.state == State::Wanted && e.held == 0 {
            Wake::Launcher
        } else {
            Wake::Nobody
        }
    });
    wake(w);
}
