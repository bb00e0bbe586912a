//! One registry entry: a worker as kept in shared memory.

use super::Kind;
use crate::pg::{CapturedError, RawHandle};

pub(super) const ERROR_LEN: usize = 256;

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
        (self.error_len > 0 || self.error_code != 0).then(|| {
            CapturedError::new(
                self.error_code,
                String::from_utf8_lossy(&self.error[..self.error_len as usize]),
            )
        })
    }

    pub(super) fn set_error(&mut self, e: &CapturedError) {
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
