//! Shared memory: arrays of plain structs behind one LWLock, a condition
//! variable, and the hooks that request and create them.

use pgrx::pg_sys;
use std::ffi::CStr;

// ---------------------------------------------------------------------------
// Shared memory: a fixed-length array of plain structs behind one LWLock,
// requested at preload time and located again in every process.

pub struct SharedArray<T: 'static> {
    name: &'static CStr,
    ptr: std::sync::atomic::AtomicPtr<T>,
    len: std::sync::atomic::AtomicUsize,
    lock: std::sync::atomic::AtomicPtr<pg_sys::LWLock>,
}

use std::sync::atomic::Ordering::Relaxed;

impl<T: Copy + Default + 'static> SharedArray<T> {
    pub const fn new(name: &'static CStr) -> Self {
        SharedArray {
            name,
            ptr: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            len: std::sync::atomic::AtomicUsize::new(0),
            lock: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    fn size(len: usize) -> usize {
        std::mem::size_of::<T>() * len
    }

    /// From the `shmem_request_hook`.
    pub fn request(&self, len: usize) {
        // SAFETY: only valid inside the shmem_request_hook, which is where
        // this is called; the tranche name is 'static.
        unsafe {
            pg_sys::RequestAddinShmemSpace(Self::size(len));
            pg_sys::RequestNamedLWLockTranche(self.name.as_ptr(), 1);
        }
    }

    /// From the `shmem_startup_hook`: find or create the array. A new array
    /// is filled with defaults, then handed to `on_create` before anyone else
    /// can see it.
    pub fn attach(&self, len: usize, on_create: impl FnOnce(&mut [T])) {
        let mut found = false;
        // SAFETY: AddinShmemInitLock serializes the creation of add-in shared
        // memory; a new array is initialised before anyone else can see it.
        unsafe {
            pg_sys::LWLockAcquire(addin_shmem_init_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE);
            let ptr = pg_sys::ShmemInitStruct(self.name.as_ptr(), Self::size(len), &mut found)
                .cast::<T>();
            if !found {
                for i in 0..len {
                    ptr.add(i).write(T::default());
                }
                on_create(std::slice::from_raw_parts_mut(ptr, len));
            }
            let lock = &raw mut (*pg_sys::GetNamedLWLockTranche(self.name.as_ptr())).lock;
            pg_sys::LWLockRelease(addin_shmem_init_lock());
            self.ptr.store(ptr, Relaxed);
            self.len.store(len, Relaxed);
            self.lock.store(lock, Relaxed);
        }
    }

    /// The array's bytes, copied without the lock: only for the postmaster
    /// after every other process has exited (crash recovery), when shared
    /// memory may hold anything, so the bytes are decoded and checked by the
    /// caller, never taken as `T`.
    pub fn copy_bytes_unlocked(&self) -> Vec<u8> {
        let (ptr, len) = (self.ptr.load(Relaxed), self.len.load(Relaxed));
        if ptr.is_null() {
            return Vec::new();
        }
        let size = Self::size(len);
        let mut bytes = vec![0u8; size];
        // SAFETY: the segment is still mapped (our exit callback runs before
        // PostgreSQL's own detach); reading bytes is valid whatever they hold.
        unsafe { std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), bytes.as_mut_ptr(), size) };
        bytes
    }

    /// False where the library was not preloaded.
    pub fn is_attached(&self) -> bool {
        !self.ptr.load(Relaxed).is_null()
    }

    fn locked<R>(&self, mode: pg_sys::LWLockMode::Type, f: impl FnOnce(*mut T, usize) -> R) -> R {
        let (ptr, len, lock) = (
            self.ptr.load(Relaxed),
            self.len.load(Relaxed),
            self.lock.load(Relaxed),
        );
        assert!(
            !ptr.is_null() && !lock.is_null(),
            "shared array {:?} is not attached",
            self.name
        );
        struct Release(*mut pg_sys::LWLock);
        impl Drop for Release {
            fn drop(&mut self) {
                // SAFETY: we hold this lock (acquired just below).
                unsafe { pg_sys::LWLockRelease(self.0) }
            }
        }
        // SAFETY: a valid LWLock in shared memory; released by the guard,
        // also if `f` panics.
        unsafe { pg_sys::LWLockAcquire(lock, mode) };
        let _release = Release(lock);
        f(ptr, len)
    }

    /// Runs `f` on a copy of the array taken under a shared lock.
    pub fn read<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        // SAFETY: the lock is held in shared mode, so nobody writes meanwhile.
        self.locked(pg_sys::LWLockMode::LW_SHARED, |ptr, len| {
            f(unsafe { std::slice::from_raw_parts(ptr, len) })
        })
    }

    /// Runs `f` on the array under the exclusive lock. Keep `f` short and free
    /// of PostgreSQL calls that could raise an ERROR.
    pub fn write<R>(&self, f: impl FnOnce(&mut [T]) -> R) -> R {
        // SAFETY: the lock is held in exclusive mode.
        self.locked(pg_sys::LWLockMode::LW_EXCLUSIVE, |ptr, len| {
            f(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
        })
    }
}

/// `AddinShmemInitLock`, a macro in lwlocknames.h that bindgen cannot see:
/// `&MainLWLockArray[21].lock` on every supported version.
///
/// # Safety
/// Only after shared memory is set up (in or after the startup hook).
unsafe fn addin_shmem_init_lock() -> *mut pg_sys::LWLock {
    const ADDIN_SHMEM_INIT_LOCK: usize = 21;
    // SAFETY: MainLWLockArray holds all individual LWLocks, index 21 included.
    unsafe { &raw mut (*pg_sys::MainLWLockArray.add(ADDIN_SHMEM_INIT_LOCK)).lock }
}

// SAFETY: all access to the array goes through its LWLock; the pointers are
// set once per process by the startup hook.
unsafe impl<T> Sync for SharedArray<T> {}

static SHMEM_REQUEST: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();
static SHMEM_STARTUP: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;

#[pgrx::pg_guard]
extern "C-unwind" fn shmem_request_trampoline() {
    // SAFETY: the previous hook was saved when ours was installed.
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            prev();
        }
    }
    if let Some(f) = SHMEM_REQUEST.get() {
        f();
    }
}

#[pgrx::pg_guard]
extern "C-unwind" fn shmem_startup_trampoline() {
    // SAFETY: the previous hook was saved when ours was installed.
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            prev();
        }
    }
    if let Some(f) = SHMEM_STARTUP.get() {
        f();
    }
}

/// Installs `request` as a `shmem_request_hook` and `startup` as a
/// `shmem_startup_hook`, chained after any earlier ones. Call from `_PG_init`
/// while preloading.
pub fn install_shmem_hooks(request: fn(), startup: fn()) {
    let _ = SHMEM_REQUEST.set(request);
    let _ = SHMEM_STARTUP.set(startup);
    // SAFETY: _PG_init runs single-threaded in the postmaster.
    unsafe {
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request_trampoline);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup_trampoline);
    }
}

// ---------------------------------------------------------------------------
// A condition variable in shared memory, for backends that wait for an event
// another process announces (a job run recorded by the scheduler).

pub struct SharedCondVar {
    name: &'static CStr,
    ptr: std::sync::atomic::AtomicPtr<pg_sys::ConditionVariable>,
}

impl SharedCondVar {
    pub const fn new(name: &'static CStr) -> Self {
        SharedCondVar {
            name,
            ptr: std::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// From the `shmem_request_hook`.
    pub fn request(&self) {
        // SAFETY: only called inside the shmem_request_hook.
        unsafe { pg_sys::RequestAddinShmemSpace(std::mem::size_of::<pg_sys::ConditionVariable>()) }
    }

    /// From the `shmem_startup_hook`.
    pub fn attach(&self) {
        let mut found = false;
        // SAFETY: AddinShmemInitLock serializes creation; a new variable is
        // initialised before the lock is released.
        unsafe {
            pg_sys::LWLockAcquire(addin_shmem_init_lock(), pg_sys::LWLockMode::LW_EXCLUSIVE);
            let size = std::mem::size_of::<pg_sys::ConditionVariable>();
            let ptr = pg_sys::ShmemInitStruct(self.name.as_ptr(), size, &mut found)
                .cast::<pg_sys::ConditionVariable>();
            if !found {
                pg_sys::ConditionVariableInit(ptr);
            }
            pg_sys::LWLockRelease(addin_shmem_init_lock());
            self.ptr.store(ptr, Relaxed);
        }
    }

    /// Wakes every process sleeping on the variable; a no-op if unattached.
    pub fn broadcast(&self) {
        let ptr = self.ptr.load(Relaxed);
        if !ptr.is_null() {
            // SAFETY: a ConditionVariable initialised in shared memory.
            unsafe { pg_sys::ConditionVariableBroadcast(ptr) }
        }
    }

    /// Waits until `done` returns `Some`, or `timeout` passes (`None`: no
    /// limit), sleeping on the variable between checks. Also checks once a
    /// second, so a broadcast that comes before the sleep is never waited for
    /// forever. Answers query cancel and termination meanwhile.
    pub fn wait_for<R>(
        &self,
        timeout: Option<std::time::Duration>,
        mut done: impl FnMut() -> Option<R>,
    ) -> Option<R> {
        const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);
        let ptr = self.ptr.load(Relaxed);
        assert!(
            !ptr.is_null(),
            "condition variable {:?} is not attached",
            self.name
        );
        struct Cancel;
        impl Drop for Cancel {
            fn drop(&mut self) {
                // SAFETY: ends the sleep prepared below (a no-op if none).
                unsafe { pg_sys::ConditionVariableCancelSleep() };
            }
        }
        let start = std::time::Instant::now();
        // SAFETY: prepares this process to sleep on an initialised variable;
        // the guard cancels it on every way out, also on ERROR (the abort
        // path cancels it as well).
        unsafe { pg_sys::ConditionVariablePrepareToSleep(ptr) };
        let _cancel = Cancel;
        loop {
            if let Some(r) = done() {
                return Some(r);
            }
            let nap = match timeout {
                Some(t) => match t.checked_sub(start.elapsed()) {
                    Some(left) if !left.is_zero() => left.min(RECHECK),
                    _ => return None,
                },
                None => RECHECK,
            };
            // SAFETY: we prepared to sleep on `ptr`; the call checks for
            // interrupts itself.
            unsafe {
                pg_sys::ConditionVariableTimedSleep(
                    ptr,
                    nap.as_millis().max(1) as _,
                    pg_sys::PG_WAIT_EXTENSION,
                );
            }
        }
    }
}

// SAFETY: the pointer is set once per process by the startup hook; the
// variable itself is made for concurrent use by many processes.
unsafe impl Sync for SharedCondVar {}
