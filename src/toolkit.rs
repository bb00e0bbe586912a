//! A thin layer over `pg_sys` for what pgrx 0.18.1 does not wrap: prompt
//! SIGTERM (`die`), config reload, connection flags, `WaitLatch` with
//! postmaster-death exit, `pg_stat_activity` reporting, and the catalog and
//! ACL look-ups that launching needs.
//!
//! Every `unsafe` block of the extension lives in this file. Differences
//! between PostgreSQL major versions live here too, behind `cfg(feature)`.

use pgrx::pg_sys;
use std::ffi::CStr;

/// `BGWORKER_BYPASS_ALLOWCONN`: connect even where `datallowconn` is false.
pub const BYPASS_ALLOWCONN: u32 = pg_sys::BGWORKER_BYPASS_ALLOWCONN;

/// `BGWORKER_BYPASS_ROLELOGINCHECK` (PostgreSQL 17+): connect as a role that
/// may not log in. `None` where the server does not have it.
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub const BYPASS_ROLELOGINCHECK: Option<u32> = Some(pg_sys::BGWORKER_BYPASS_ROLELOGINCHECK);
#[cfg(not(any(feature = "pg17", feature = "pg18")))]
pub const BYPASS_ROLELOGINCHECK: Option<u32> = None;

/// The wait event a worker shows while it sleeps on its latch: on 17+ the
/// custom event "WorkerSpiMain" (as worker_spi), listed in `pg_wait_events`;
/// before 17 the generic "Extension".
#[cfg(any(feature = "pg17", feature = "pg18"))]
pub fn worker_wait_event() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static EVENT: AtomicU32 = AtomicU32::new(0);
    let mut event = EVENT.load(Ordering::Relaxed);
    if event == 0 {
        // SAFETY: called in a worker attached to shared memory; PostgreSQL
        // returns the same id for the same name in every process.
        event = unsafe { pg_sys::WaitEventExtensionNew(c"WorkerSpiMain".as_ptr()) };
        EVENT.store(event, Ordering::Relaxed);
    }
    event
}

#[cfg(not(any(feature = "pg17", feature = "pg18")))]
pub fn worker_wait_event() -> u32 {
    pg_sys::PG_WAIT_EXTENSION
}

/// Is the library being loaded through `shared_preload_libraries`?
pub fn preloading() -> bool {
    // SAFETY: plain read of a postmaster-set global.
    unsafe { pg_sys::process_shared_preload_libraries_in_progress }
}

/// Claims a GUC prefix: unknown `prefix.*` settings are then refused.
pub fn reserve_guc_prefix(prefix: &'static CStr) {
    // SAFETY: a 'static NUL-terminated string; PostgreSQL copies it.
    unsafe { pg_sys::MarkGUCPrefixReserved(prefix.as_ptr()) }
}

/// Installs PostgreSQL's own handlers, as worker_spi does, then unblocks
/// signals: SIGHUP only sets `ConfigReloadPending`; SIGTERM is `die`, so the
/// next `CHECK_FOR_INTERRUPTS()`, including one inside a running statement,
/// ends the worker with FATAL and its transaction is rolled back.
pub fn install_signal_handlers() {
    // SAFETY: called once at worker start while signals are still blocked;
    // both handlers are PostgreSQL's own, async-signal-safe functions.
    unsafe {
        pqsignal(pg_sys::SIGHUP as i32, Some(SignalHandlerForConfigReload));
        pqsignal(pg_sys::SIGTERM as i32, Some(die));
        pg_sys::BackgroundWorkerUnblockSignals();
    }
}

// The C handlers themselves: pgrx's `pg_sys::die` is a guarded Rust wrapper,
// which must never run inside a signal handler.
// SAFETY: both are `void f(SIGNAL_ARGS)` in postgres.c and interrupt.c, on
// every supported version.
unsafe extern "C-unwind" {
    fn die(postgres_signal_arg: std::os::raw::c_int);
    fn SignalHandlerForConfigReload(postgres_signal_arg: std::os::raw::c_int);
}

/// # Safety
/// `handler` must be async-signal-safe; call before unblocking signals.
#[cfg(not(feature = "pg18"))]
unsafe fn pqsignal(signo: i32, handler: pg_sys::pqsigfunc) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { pg_sys::pqsignal(signo, handler) };
}

/// # Safety
/// `handler` must be async-signal-safe; call before unblocking signals.
#[cfg(feature = "pg18")]
unsafe fn pqsignal(signo: i32, handler: pg_sys::pqsigfunc) {
    // SAFETY: forwarded from the caller's contract.
    unsafe { pg_sys::pqsignal_be(signo, handler) };
}

/// Where a worker connects.
pub enum Connection<'a> {
    /// By name, as the static workers do from the GUCs; `None` role means the
    /// bootstrap superuser.
    Names {
        database: &'a CStr,
        role: Option<&'a CStr>,
    },
    /// By OID, as resolved by `bgw_launch` in the launching backend.
    Oids {
        database: pg_sys::Oid,
        role: pg_sys::Oid,
    },
}

/// `BackgroundWorkerInitializeConnection[ByOid]` with connection flags.
/// Failures (unknown database, role that may not log in, ...) are FATAL
/// inside PostgreSQL and end the worker.
pub fn connect(target: &Connection<'_>, flags: u32) {
    match target {
        Connection::Names { database, role } => {
            let role = role.map_or(std::ptr::null(), |r| r.as_ptr());
            // SAFETY: both pointers are NUL-terminated strings (or NULL for
            // the role) that outlive the call; we are a registered worker
            // with BGWORKER_BACKEND_DATABASE_CONNECTION.
            unsafe { pg_sys::BackgroundWorkerInitializeConnection(database.as_ptr(), role, flags) }
        }
        // SAFETY: as above; invalid OIDs are reported by PostgreSQL itself.
        Connection::Oids { database, role } => unsafe {
            pg_sys::BackgroundWorkerInitializeConnectionByOid(*database, *role, flags)
        },
    }
}

/// Sleeps on the process latch for up to `timeout_ms` (0: just poll), exits
/// at once if the postmaster dies, then resets the latch. `wait_event` is
/// what `pg_stat_activity` shows meanwhile.
pub fn wait_latch(timeout_ms: i64, wait_event: u32) {
    let events = (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32;
    // SAFETY: MyLatch is set for every process attached to shared memory.
    unsafe {
        pg_sys::WaitLatch(pg_sys::MyLatch, events, timeout_ms as _, wait_event);
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Rereads the configuration files if SIGHUP arrived since the last call.
/// pgrx's handlers only set a flag; this is the `ProcessConfigFile` step.
pub fn reload_config_if_requested() -> bool {
    // SAFETY: ConfigReloadPending is a sig_atomic_t written by the signal
    // handler; reading and clearing it from the main loop is the documented
    // protocol (see worker_spi.c).
    unsafe {
        let pending = std::ptr::addr_of_mut!(pg_sys::ConfigReloadPending);
        if pending.read_volatile() == 0 {
            return false;
        }
        pending.write_volatile(0);
        pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
    }
    true
}

/// Runs `body` in one transaction, the way every worker_spi iteration does:
/// statement timestamp, transaction, active snapshot, `pg_stat_activity`
/// showing `query` while it runs, then commit, stats flush and idle.
///
/// An ERROR raised by `body` does not come back here: in a background worker
/// it ends the process, and PostgreSQL aborts the transaction on exit.
pub fn in_transaction<R>(query: &'static CStr, body: impl FnOnce() -> R) -> R {
    // SAFETY: we are a worker connected to a database and outside any
    // transaction; `query` is 'static, so debug_query_string never dangles.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
        pg_sys::debug_query_string = query.as_ptr();
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_RUNNING, query.as_ptr());
    }
    let result = body();
    // SAFETY: pairs with the calls above; `body` (pgrx SPI) has finished its
    // SPI connection, so the snapshot we pushed is again on top.
    unsafe {
        pg_sys::PopActiveSnapshot();
        pg_sys::CommitTransactionCommand();
        pg_sys::debug_query_string = std::ptr::null();
        pg_sys::pgstat_report_stat(true);
        pg_sys::pgstat_report_activity(pg_sys::BackendState::STATE_IDLE, std::ptr::null());
    }
    result
}

/// Name and argument of the running worker, from `MyBgworkerEntry`.
pub fn worker_name() -> String {
    // SAFETY: only called from a worker's main, where MyBgworkerEntry points
    // at the registration copy; bgw_name is NUL-terminated by PostgreSQL.
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        assert!(
            !entry.is_null(),
            "worker_name() called outside a background worker"
        );
        CStr::from_ptr((*entry).bgw_name.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// The raw `bgw_extra` bytes up to the first NUL.
pub fn worker_extra() -> Vec<u8> {
    // SAFETY: as in worker_name(); bgw_extra is a fixed array we only read
    // within its bounds.
    unsafe {
        let entry = pg_sys::MyBgworkerEntry;
        assert!(
            !entry.is_null(),
            "worker_extra() called outside a background worker"
        );
        let extra = &(*entry).bgw_extra;
        let bytes = std::slice::from_raw_parts(extra.as_ptr().cast::<u8>(), extra.len());
        bytes.iter().take_while(|&&b| b != 0).copied().collect()
    }
}

/// The effective user of this backend (`GetUserId()`).
pub fn current_user() -> pg_sys::Oid {
    // SAFETY: plain read of backend-local state.
    unsafe { pg_sys::GetUserId() }
}

/// The database this backend is connected to.
pub fn current_database() -> pg_sys::Oid {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::MyDatabaseId }
}

pub fn my_pid() -> i32 {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::MyProcPid }
}

/// "15.20", "18.6": the server's version, for messages.
pub fn server_version() -> &'static str {
    // SAFETY: PG_VERSION is a NUL-terminated constant.
    pg_sys::PG_VERSION.to_str().unwrap_or("unknown")
}

pub fn max_worker_processes() -> i32 {
    // SAFETY: plain read of a GUC variable.
    unsafe { pg_sys::max_worker_processes }
}

/// Is `role` a superuser?
pub fn is_role_superuser(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-up inside a transaction.
    unsafe { pg_sys::superuser_arg(role) }
}

pub fn is_superuser() -> bool {
    // SAFETY: catalog look-up of the current user, inside a transaction.
    unsafe { pg_sys::superuser() }
}

pub fn recovery_in_progress() -> bool {
    // SAFETY: reads shared state under its own lock.
    unsafe { pg_sys::RecoveryInProgress() }
}

/// OID of a role, `None` if there is no such role.
pub fn role_oid(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: NUL-terminated name; missing_ok = true returns InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// OID of a database, `None` if there is no such database.
pub fn database_oid(name: &CStr) -> Option<pg_sys::Oid> {
    // SAFETY: NUL-terminated name; missing_ok = true returns InvalidOid.
    let oid = unsafe { pg_sys::get_database_oid(name.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: noerr = true returns NULL for an unknown OID instead of raising.
    unsafe { cstr_or_oid(pg_sys::GetUserNameFromId(role, true), role) }
}

pub fn database_name(database: pg_sys::Oid) -> String {
    // SAFETY: returns NULL for an unknown OID.
    unsafe { cstr_or_oid(pg_sys::get_database_name(database), database) }
}

/// # Safety
/// `ptr` is NULL or a NUL-terminated string.
unsafe fn cstr_or_oid(ptr: *const std::os::raw::c_char, oid: pg_sys::Oid) -> String {
    if ptr.is_null() {
        format!("OID {}", oid.to_u32())
    } else {
        // SAFETY: per this function's contract.
        unsafe { CStr::from_ptr(ptr) }
            .to_string_lossy()
            .into_owned()
    }
}

/// Does `member` have the privileges of `role` (directly or by inheritance)?
pub fn has_privs_of_role(member: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-up inside a transaction.
    unsafe { pg_sys::has_privs_of_role(member, role) }
}

/// Does `role` have CONNECT on `database`?
pub fn has_connect(database: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    let mode = pg_sys::ACL_CONNECT as pg_sys::AclMode;
    // SAFETY: catalog look-up inside a transaction.
    #[cfg(feature = "pg15")]
    let result = unsafe { pg_sys::pg_database_aclcheck(database, role, mode) };
    // SAFETY: catalog look-up inside a transaction.
    #[cfg(not(feature = "pg15"))]
    let result =
        unsafe { pg_sys::object_aclcheck(pg_sys::DatabaseRelationId, database, role, mode) };
    result == pg_sys::AclResult::ACLCHECK_OK
}

/// Number of dimensions of an array argument; pgrx's `Array` flattens them.
pub fn array_ndim(array: *const pg_sys::ArrayType) -> i32 {
    assert!(!array.is_null(), "array_ndim() on a NULL array");
    // SAFETY: a detoasted, non-NULL ArrayType handed over by pgrx.
    unsafe { (*array).ndim }
}

// ---------------------------------------------------------------------------
// Dynamic worker handles, usable from any backend.

/// The contents of a `BackgroundWorkerHandle`. PostgreSQL keeps the struct
/// private to bgworker.c (`{ int slot; uint64 generation; }`, unchanged since
/// 9.4); mirroring it lets any backend, not only the launching one, ask for
/// the worker's pid or terminate it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawHandle {
    slot: i32,
    generation: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerStatus {
    NotYetStarted,
    Started(i32),
    Stopped,
    PostmasterDied,
}

/// `RegisterDynamicBackgroundWorker`; `None` when no slot is free.
pub fn register_dynamic_worker(mut worker: pg_sys::BackgroundWorker) -> Option<RawHandle> {
    let mut handle: *mut pg_sys::BackgroundWorkerHandle = std::ptr::null_mut();
    // SAFETY: `worker` is a complete registration; on success PostgreSQL sets
    // `handle` to a palloc'd struct whose layout RawHandle mirrors.
    unsafe {
        if !pg_sys::RegisterDynamicBackgroundWorker(&mut worker, &mut handle) || handle.is_null() {
            return None;
        }
        let raw = *(handle as *const RawHandle);
        pg_sys::pfree(handle.cast());
        Some(raw)
    }
}

fn handle_ptr(handle: &mut RawHandle) -> *mut pg_sys::BackgroundWorkerHandle {
    (handle as *mut RawHandle).cast()
}

/// `GetBackgroundWorkerPid`.
pub fn worker_status(mut handle: RawHandle) -> WorkerStatus {
    let mut pid: pg_sys::pid_t = 0;
    // SAFETY: PostgreSQL only reads slot and generation, and checks both
    // against the shared slot array before trusting them.
    let status = unsafe { pg_sys::GetBackgroundWorkerPid(handle_ptr(&mut handle), &mut pid) };
    match status {
        pg_sys::BgwHandleStatus::BGWH_STARTED => WorkerStatus::Started(pid),
        pg_sys::BgwHandleStatus::BGWH_NOT_YET_STARTED => WorkerStatus::NotYetStarted,
        pg_sys::BgwHandleStatus::BGWH_STOPPED => WorkerStatus::Stopped,
        _ => WorkerStatus::PostmasterDied,
    }
}

/// `TerminateBackgroundWorker`: SIGTERM if running, and never restart it.
pub fn terminate_worker(mut handle: RawHandle) {
    // SAFETY: as in worker_status(); a stale generation makes this a no-op.
    unsafe { pg_sys::TerminateBackgroundWorker(handle_ptr(&mut handle)) }
}

/// Sends SIGTERM to a process; false if it does not exist.
pub fn send_sigterm(pid: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe { libc::kill(pid, libc::SIGTERM) == 0 }
}

/// Is there a process with this pid?
pub fn process_exists(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 only checks for existence.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    alive || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Wakes another backend waiting on its latch, if it still exists.
pub fn wake_backend(pid: i32) {
    if pid <= 0 {
        return;
    }
    // SAFETY: BackendPidGetProc takes ProcArrayLock; the PGPROC it returns
    // stays valid (procs are never freed), and SetLatch is safe to call on
    // any process's latch.
    unsafe {
        let proc_ = pg_sys::BackendPidGetProc(pid);
        if !proc_.is_null() {
            pg_sys::SetLatch(&raw mut (*proc_).procLatch);
        }
    }
}

pub fn now() -> pg_sys::TimestampTz {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

/// Ends this process with exit code 0, so that the postmaster unregisters
/// the worker instead of restarting it.
pub fn exit_quietly() -> ! {
    // SAFETY: proc_exit runs the exit callbacks and never returns.
    unsafe { pg_sys::proc_exit(0) };
    #[allow(unreachable_code)]
    {
        unreachable!("proc_exit returned")
    }
}

pub fn check_for_interrupts() {
    pg_sys::check_for_interrupts!();
}

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
// A worker's own errors, kept for its exit callback, and the callback itself.

/// SQLSTATE and message of an error a worker raised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapturedError {
    pub sqlerrcode: i32,
    pub message: String,
}

impl CapturedError {
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
                *last = Some(CapturedError {
                    sqlerrcode: (*edata).sqlerrcode,
                    message,
                });
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

/// Is this the postmaster (not one of its children)?
pub fn is_postmaster() -> bool {
    // SAFETY: plain read of a process-local flag.
    unsafe { !pg_sys::IsUnderPostmaster }
}

static POSTMASTER_EXIT: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

#[pgrx::pg_guard]
extern "C-unwind" fn postmaster_exit_trampoline(_code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    if let Some(f) = POSTMASTER_EXIT.get() {
        f();
    }
}

/// In the postmaster, runs `f` at its next `shmem_exit`: at shutdown, and
/// before it recreates shared memory after a crash. `shmem_exit` forgets its
/// callbacks, so call this again after every creation (from the startup hook).
pub fn on_postmaster_shmem_exit(f: fn()) {
    let _ = POSTMASTER_EXIT.set(f);
    // SAFETY: registers a guarded callback in the postmaster.
    unsafe { pg_sys::on_shmem_exit(Some(postmaster_exit_trampoline), pg_sys::Datum::from(0)) }
}

static ON_EXIT: std::sync::OnceLock<fn(i32)> = std::sync::OnceLock::new();

#[pgrx::pg_guard]
extern "C-unwind" fn on_exit_trampoline(code: std::os::raw::c_int, _arg: pg_sys::Datum) {
    if let Some(f) = ON_EXIT.get() {
        f(code);
    }
}

/// Runs `f(exit_code)` when the process exits (`on_shmem_exit`), while its
/// PGPROC and LWLocks still work. One callback per process.
pub fn on_exit(f: fn(i32)) {
    if ON_EXIT.set(f).is_ok() {
        // SAFETY: registers a guarded callback; PostgreSQL calls it once.
        unsafe { pg_sys::on_shmem_exit(Some(on_exit_trampoline), pg_sys::Datum::from(0)) }
    }
}

// ---------------------------------------------------------------------------
// SQL `name` values for result columns.

/// A value of SQL type `name` (at most NAMEDATALEN - 1 bytes; longer input is
/// cut at a character boundary, as PostgreSQL does).
pub struct SqlName(pub String);

pgrx::impl_sql_translatable!(SqlName, "name");

impl pgrx::IntoDatum for SqlName {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        let max = pg_sys::NAMEDATALEN as usize - 1;
        let mut end = self.0.len().min(max);
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        // SAFETY: palloc0 of a full NameData, so the value is NUL-padded to
        // NAMEDATALEN as every reader of `name` expects.
        unsafe {
            let name = pg_sys::palloc0(std::mem::size_of::<pg_sys::NameData>()).cast::<u8>();
            std::ptr::copy_nonoverlapping(self.0.as_ptr(), name, end);
            Some(pg_sys::Datum::from(name))
        }
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::NAMEOID
    }
}

/// Waits on this backend's latch until `done` returns `Some`, or `timeout`
/// passes (`None`: no limit). Wakes at least every 10 ms for changes nobody
/// signals, and answers query cancel and termination meanwhile.
pub fn wait_for<R>(
    timeout: Option<std::time::Duration>,
    mut done: impl FnMut() -> Option<R>,
) -> Option<R> {
    const POLL: std::time::Duration = std::time::Duration::from_millis(10);
    let start = std::time::Instant::now();
    loop {
        if let Some(r) = done() {
            return Some(r);
        }
        let nap = match timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(left) if !left.is_zero() => left.min(POLL),
                _ => return None,
            },
            None => POLL,
        };
        wait_latch(nap.as_millis().max(1) as i64, pg_sys::PG_WAIT_EXTENSION);
        check_for_interrupts();
    }
}

// SAFETY: returns the datum built by into_datum(), a palloc'd NameData.
unsafe impl pgrx::callconv::BoxRet for SqlName {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        use pgrx::IntoDatum;
        match self.into_datum() {
            // SAFETY: a valid `name` datum for the function's result.
            Some(datum) => unsafe { fcinfo.return_raw_datum(datum) },
            None => fcinfo.return_null(),
        }
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

// ---------------------------------------------------------------------------
// What a job run needs beyond plain SPI.

// timeout.h is not in pgrx's bindings. `TimeoutId` is a C enum (an int);
// STATEMENT_TIMEOUT is its fourth member on every supported version (15-18).
const STATEMENT_TIMEOUT: std::os::raw::c_int = 3;
// SAFETY: `void enable_timeout_after(TimeoutId id, int delay_ms)` in
// timeout.c, the same signature on every supported version.
unsafe extern "C-unwind" {
    fn enable_timeout_after(id: std::os::raw::c_int, delay_ms: std::os::raw::c_int);
}

/// Arms `statement_timeout` for `ms` from now and sets the setting, so that
/// `SHOW statement_timeout` inside the job agrees. A client backend arms it
/// per statement in postgres.c; a background worker running SPI must do so
/// itself. When it fires, the running statement fails with SQLSTATE 57014.
pub fn arm_statement_timeout(ms: i32) {
    let value = std::ffi::CString::new(format!("{ms}ms")).unwrap_or_default();
    // SAFETY: a registered timeout (InitPostgres registers STATEMENT_TIMEOUT
    // in every backend, workers included); SetConfigOption copies its text.
    unsafe {
        pg_sys::SetConfigOption(
            c"statement_timeout".as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
        enable_timeout_after(STATEMENT_TIMEOUT, ms);
    }
}

/// The text form of a datum, by its type's output function.
pub fn output_text(datum: pg_sys::Datum, type_oid: pg_sys::Oid) -> String {
    let mut func = pg_sys::InvalidOid;
    let mut is_varlena = false;
    // SAFETY: `datum` is a non-NULL value of `type_oid` from the current SPI
    // result; the output function returns a palloc'd C string.
    unsafe {
        pg_sys::getTypeOutputInfo(type_oid, &mut func, &mut is_varlena);
        let text = pg_sys::OidOutputFunctionCall(func, datum);
        let owned = CStr::from_ptr(text).to_string_lossy().into_owned();
        pg_sys::pfree(text.cast());
        owned
    }
}

/// REPEATABLE READ or SERIALIZABLE: one snapshot for the whole transaction.
pub fn isolation_uses_xact_snapshot() -> bool {
    // SAFETY: plain read of a backend-local global.
    unsafe { pg_sys::XactIsoLevel >= pg_sys::XACT_REPEATABLE_READ as i32 }
}

/// Was this transaction id assigned to the current (sub)transaction?
pub fn is_current_transaction(xid: u32) -> bool {
    // SAFETY: a pure look-up in backend-local transaction state.
    unsafe { pg_sys::TransactionIdIsCurrentTransactionId(xid.into()) }
}

/// Runs `body` as the bootstrap superuser, the owner of the extension's
/// tables, then switches back. Functions that check the caller's rights
/// themselves use it to read and write those tables. On ERROR the
/// transaction abort restores the user.
pub fn as_table_owner<R>(body: impl FnOnce() -> R) -> R {
    let mut user = pg_sys::InvalidOid;
    let mut context = 0;
    // SAFETY: backend-local state; SECURITY_LOCAL_USERID_CHANGE keeps SET
    // ROLE and friends from changing it back meanwhile.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::BOOTSTRAP_SUPERUSERID.into(),
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let result = body();
    // SAFETY: restores what we saved above.
    unsafe { pg_sys::SetUserIdAndSecContext(user, context) };
    result
}
