//! The registry across a crash: the postmaster copies it at `shmem_exit`,
//! decodes the bytes field by field (shared memory may be corrupt after a
//! crash), and refills the new registry from that copy.

use super::Kind;
use super::entry::{ERROR_LEN, Entry, State};
use crate::pg::{CapturedError, RawHandle};

/// What the postmaster kept of the registry across a crash (postmaster-local).
static SAVED: std::sync::Mutex<Option<Vec<Entry>>> = std::sync::Mutex::new(None);

/// Runs in the postmaster at `shmem_exit`, when every other process has
/// exited. Shared memory may be corrupt after a crash: entries are decoded
/// from bytes and checked, and a bad one is dropped. Workers that were
/// running are marked failed; those that come back (static ones, dynamic ones
/// with `restart_after`) take their entries again, counting a restart.
pub(super) fn save(bytes: &[u8]) {
    let lost = CapturedError::new(
        pgrx::PgSqlErrorCode::ERRCODE_CRASH_SHUTDOWN as i32,
        "lost when the server reinitialized after a crash",
    );
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
        5 => Kind::Launcher,
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

/// What `save` kept, taken once by the next startup hook.
pub(super) fn take_saved() -> Vec<Entry> {
    SAVED
        .lock()
        .ok()
        .and_then(|mut s| s.take())
        .unwrap_or_default()
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
        bad[offset_of!(Entry, kind)] = 6;
        assert!(decode(&bad).is_none(), "kind out of range");
        let mut launcher = zero.clone();
        launcher[offset_of!(Entry, kind)] = 5;
        assert_eq!(decode(&launcher).map(|e| e.kind), Some(Kind::Launcher));
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
