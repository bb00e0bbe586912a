//! Job slots: one per job run in progress, in shared memory, sized by
//! `bgworker_rs.max_jobs`, shared by the schedulers of every database. A
//! scheduler fills a slot with the statement,
//! the run's worker (connected to another database, maybe) reads it there and
//! leaves its outcome, and the scheduler records that outcome in
//! `bgw_job_runs`. Tables cannot be shared across databases; this can.
//!
//! A slot belongs to the database that keeps the job (`home`): job ids are
//! per database. Free slots go to the databases fairly (see [`reserve`]).
//!
//! Waiters in `bgw_result()` sleep on one condition variable, broadcast each
//! time a run leaves its outcome and each time a scheduler has committed
//! outcomes.
//!
//! Warm workers: after a run that succeeded, its worker may stay, idle and
//! connected, for `bgworker_rs.job_worker_idle_time`, in a free slot that it
//! takes (`Warm`). A later run of the same database's jobs, for the same
//! target database and role, is handed to it by the scheduler ([`reserve`]),
//! or by `bgw_run` at its commit ([`claim_warm`]), without a new process, as long as neither the role nor the database has
//! changed since the worker connected (`stamp`). A warm worker holds a job
//! slot and a worker slot, and gives both way to a run that needs them.

use crate::pg::{self, CapturedError, RawHandle, SharedArray, SharedCondVar};
use crate::settings;
use crate::shmem::registry::Ticket;
use crate::shmem::schedulers;

/// Longest statement a job may have, in bytes.
pub const SQL_MAX: usize = 8192;
/// Bound of the first rows of a run's result, as JSON text, in bytes.
pub const RESULT_MAX: usize = 8192;
const ERROR_MAX: usize = 1024;
const DETAIL_MAX: usize = 1024;
const HINT_MAX: usize = 512;
/// Bound of the per-statement summary of a run, as JSON text, in bytes.
pub const STATEMENTS_MAX: usize = 8192;
/// How much of the running (or failing) statement's text is kept.
pub const STATEMENT_TEXT_MAX: usize = 256;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    #[default]
    Free,
    /// Claimed by the scheduler; its worker is not registered yet.
    Reserved,
    /// Its worker is registered (and maybe running).
    Launched,
    /// The worker left its outcome (or the launch failed).
    Done,
    /// An idle worker, connected to `database` as `role`, waiting for a run
    /// of `home`'s jobs; `pid`, `handle` and the registry entry are its own.
    Warm,
    /// Handed to a warm worker by a transaction that created a job
    /// (`bgw_run`): the run starts when that transaction commits.
    Pending,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    #[default]
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::TimedOut => "timed out",
        }
    }
}

/// Plain data only: this lives in shared memory.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Slot {
    pub state: SlotState,
    /// `bgw_cancel()` stopped this run.
    pub cancel_requested: bool,
    pub has_handle: bool,
    /// Handed to a warm worker: no worker is registered for it.
    pub warm: bool,
    /// That warm worker exited while the run was being handed to it.
    pub gone: bool,
    /// Its worker (run succeeded) waits in it to be warm once the outcome
    /// is recorded: the slot then turns `Warm` instead of free.
    pub stay: bool,
    pub status: Status,
    /// The database that keeps the job, whose scheduler owns this slot.
    pub home: u32,
    pub job: i64,
    pub run: i32,
    pub pid: i32,
    /// The scheduler process that reserved it.
    pub reserved_by: i32,
    pub database: u32,
    pub role: u32,
    /// The role that created the job: its rights to run the job are
    /// checked again before a warm worker runs it.
    pub created_by: u32,
    /// When the run was handed out (`pg::now()`, PostgreSQL's epoch).
    pub handed_at: i64,
    /// The role's and the database's catalog rows as the worker saw them
    /// when it connected (`pg::connect_stamp`): a warm worker is handed a
    /// run only while they are unchanged.
    pub stamp: u64,
    /// 0: no timeout.
    pub timeout_ms: i32,
    /// Run the script as one transaction (else one per statement).
    pub atomic: bool,
    /// Run the last statement's result rows as statements.
    pub gexec: bool,
    /// The statement running now (1-based; 0: none yet): if the run fails,
    /// the one that failed.
    pub position: i32,
    /// The run's registry entry, how its worker finds this slot.
    pub registry_slot: u32,
    pub registry_epoch: u64,
    pub handle: RawHandle,
    pub rows: i64,
    /// When the worker left the outcome, in microseconds since 1970 (0:
    /// unknown; the scheduler records its own time then).
    pub finished_at: i64,
    pub sqlerrcode: i32,
    pub error_len: u16,
    pub result_len: u32,
    pub sql_len: u32,
    pub statements_len: u32,
    pub statement_len: u16,
    pub detail_len: u16,
    pub hint_len: u16,
    pub error: [u8; ERROR_MAX],
    pub detail: [u8; DETAIL_MAX],
    pub hint: [u8; HINT_MAX],
    /// The statements finished so far, as JSON (see `Outcome::statements`).
    pub statements: [u8; STATEMENTS_MAX],
    /// The start of the text of statement `position`.
    pub statement: [u8; STATEMENT_TEXT_MAX],
    pub result: [u8; RESULT_MAX],
    pub sql: [u8; SQL_MAX],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            state: SlotState::Free,
            cancel_requested: false,
            has_handle: false,
            warm: false,
            gone: false,
            stay: false,
            status: Status::Succeeded,
            home: 0,
            job: 0,
            run: 0,
            pid: 0,
            reserved_by: 0,
            database: 0,
            role: 0,
            created_by: 0,
            handed_at: 0,
            stamp: 0,
            timeout_ms: 0,
            atomic: true,
            gexec: false,
            position: 0,
            registry_slot: 0,
            registry_epoch: 0,
            handle: RawHandle::default(),
            rows: 0,
            finished_at: 0,
            sqlerrcode: 0,
            error_len: 0,
            result_len: 0,
            sql_len: 0,
            statements_len: 0,
            statement_len: 0,
            detail_len: 0,
            hint_len: 0,
            error: [0; ERROR_MAX],
            detail: [0; DETAIL_MAX],
            hint: [0; HINT_MAX],
            statements: [0; STATEMENTS_MAX],
            statement: [0; STATEMENT_TEXT_MAX],
            result: [0; RESULT_MAX],
            sql: [0; SQL_MAX],
        }
    }
}

impl Slot {
    pub fn sql(&self) -> String {
        String::from_utf8_lossy(&self.sql[..self.sql_len as usize]).into_owned()
    }

    pub fn result(&self) -> Option<String> {
        (self.result_len > 0)
            .then(|| String::from_utf8_lossy(&self.result[..self.result_len as usize]).into_owned())
    }

    pub fn error(&self) -> Option<CapturedError> {
        let text = |bytes: &[u8], len: u16| {
            (len > 0).then(|| String::from_utf8_lossy(&bytes[..len as usize]).into_owned())
        };
        (self.sqlerrcode != 0).then(|| CapturedError {
            sqlerrcode: self.sqlerrcode,
            message: text(&self.error, self.error_len).unwrap_or_default(),
            detail: text(&self.detail, self.detail_len),
            hint: text(&self.hint, self.hint_len),
        })
    }

    /// The statements finished so far, as JSON.
    pub fn statements(&self) -> Option<String> {
        (self.statements_len > 0).then(|| {
            String::from_utf8_lossy(&self.statements[..self.statements_len as usize]).into_owned()
        })
    }

    /// The statement running now, or the one that failed: its position and
    /// the start of its text.
    pub fn statement(&self) -> Option<(i32, String)> {
        (self.position > 0 || self.statement_len > 0).then(|| {
            let text = &self.statement[..self.statement_len as usize];
            (self.position, String::from_utf8_lossy(text).into_owned())
        })
    }

    /// The outcome its worker left, once `Done`.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            status: self.status,
            rows: self.rows,
            error: self.error(),
            result: self.result(),
            statements: self.statements(),
            statement: self
                .statement()
                .filter(|_| self.status != Status::Succeeded),
        }
    }

    /// An idle worker that may take `run`: same database's jobs, same
    /// target database, role and creator, neither the role nor the database
    /// changed since it connected.
    fn is_warm_for(&self, run: &Run<'_>) -> bool {
        self.state == SlotState::Warm
            && self.home == run.home
            && self.database == run.database
            && self.role == run.role
            && self.created_by == run.created_by
            && self.stamp != 0
            && self.stamp == run.stamp
    }

    /// Fills a slot for `run`, reserved by this scheduler process, with
    /// `registry` as the run's entry.
    fn fill(&mut self, run: &Run<'_>, registry: Ticket) {
        *self = Slot::default();
        self.state = SlotState::Reserved;
        self.home = run.home;
        self.job = run.job;
        self.run = run.run;
        self.reserved_by = pg::my_pid();
        self.database = run.database;
        self.role = run.role;
        self.created_by = run.created_by;
        self.handed_at = pg::now();
        self.stamp = run.stamp;
        self.timeout_ms = run.timeout_ms;
        self.atomic = run.atomic;
        self.gexec = run.gexec;
        self.registry_slot = registry.slot;
        self.registry_epoch = registry.epoch;
        self.sql_len = copy_cut(run.sql, &mut self.sql) as u32;
    }

    /// Fills a warm worker's slot for `run`: the worker, its handle and
    /// its registry entry stay.
    fn hand_to_warm(&mut self, run: &Run<'_>) {
        let (pid, handle, ticket) = (self.pid, self.handle, self.registry_ticket());
        self.fill(run, ticket);
        self.pid = pid;
        self.handle = handle;
        self.has_handle = true;
        self.warm = true;
    }

    /// Empties a slot but for its worker, idle: the slot of `worker`
    /// (a run it finished, or one handed to it and taken back).
    fn make_warm(&mut self, worker: &Slot) {
        *self = Slot::default();
        self.state = SlotState::Warm;
        (self.home, self.database, self.role, self.stamp) =
            (worker.home, worker.database, worker.role, worker.stamp);
        self.created_by = worker.created_by;
        (self.pid, self.handle, self.has_handle) = (worker.pid, worker.handle, true);
        (self.registry_slot, self.registry_epoch) = (worker.registry_slot, worker.registry_epoch);
    }

    fn registry_ticket(&self) -> Ticket {
        Ticket {
            slot: self.registry_slot,
            epoch: self.registry_epoch,
        }
    }
}

/// Copies as much of `text` as fits, cut at a character boundary.
fn copy_cut(text: &str, into: &mut [u8]) -> usize {
    let mut end = text.len().min(into.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    into[..end].copy_from_slice(&text.as_bytes()[..end]);
    end
}

/// What the scheduler hands to a run.
pub struct Run<'a> {
    pub home: u32,
    pub job: i64,
    pub run: i32,
    pub database: u32,
    pub role: u32,
    pub created_by: u32,
    /// `pg::connect_stamp` of `role` and `database`, read as it starts.
    pub stamp: u64,
    pub timeout_ms: i32,
    pub atomic: bool,
    pub gexec: bool,
    pub sql: &'a str,
}

/// How a run ended, as its worker (or the scheduler) reports it.
#[derive(Default)]
pub struct Outcome {
    pub status: Status,
    pub rows: i64,
    pub error: Option<CapturedError>,
    pub result: Option<String>,
    /// The statements that finished, in order, as a JSON array:
    /// `{"position": 1, "tag": "VACUUM"}`, with `"rows"` where the command
    /// tag reports a count.
    pub statements: Option<String>,
    /// The statement that failed (or was running when the run was stopped):
    /// its position and the start of its text.
    pub statement: Option<(i32, String)>,
}

static SLOTS: SharedArray<Slot> = SharedArray::new(c"bgworker_rs job slots");
static RECORDED: SharedCondVar = SharedCondVar::new(c"bgworker_rs job runs recorded");

fn capacity() -> usize {
    settings::MAX_JOBS.get().max(0) as usize
}

pub fn request() {
    if capacity() > 0 {
        SLOTS.request(capacity());
        RECORDED.request();
    }
}

pub fn startup() {
    if capacity() > 0 {
        SLOTS.attach(capacity(), |_| {});
        RECORDED.attach();
    }
}

pub fn is_available() -> bool {
    SLOTS.is_attached()
}

/// May `home` take a free slot while the databases in `waiting` (with
/// since when) wait for one? Not while one of them has fewer slots in use,
/// nor the same number and waited longer: the slots are shared out evenly
/// between the databases that want them, and no database can hold them all
/// while another's runs wait.
fn fair(slots: &[Slot], home: u32, waiting: &[(u32, i64)]) -> bool {
    let used = |db: u32| used_by(slots, db);
    let mine = used(home);
    let my_since = waiting
        .iter()
        .find(|(db, _)| *db == home)
        .map_or(0, |(_, since)| *since);
    waiting
        .iter()
        .filter(|(db, since)| *db != home && *since != 0)
        .all(|(db, since)| {
            let theirs = used(*db);
            theirs > mine || (theirs == mine && my_since != 0 && my_since <= *since)
        })
}

/// The waiting database (not `home`) whose turn it is: the fewest slots in
/// use, then the longest wait.
fn next_turn(slots: &[Slot], home: u32, waiting: &[(u32, i64)]) -> Option<u32> {
    waiting
        .iter()
        .filter(|(db, since)| *db != home && *since != 0)
        .min_by_key(|(db, since)| (used_by(slots, *db), *since))
        .map(|(db, _)| *db)
}

/// Slots with a run of `home`'s jobs (an idle warm worker holds none).
fn used_by(slots: &[Slot], home: u32) -> usize {
    slots
        .iter()
        .filter(|s| s.is_busy() && s.home == home)
        .count()
}

impl Slot {
    /// Holds a run (reserved, going, or its outcome not yet recorded).
    fn is_busy(&self) -> bool {
        !matches!(self.state, SlotState::Free | SlotState::Warm)
    }
}

/// A scheduler takes a slot for a run: an idle warm worker's for the run's
/// database and role (`true`: that worker runs it), else a free one, else,
/// if `evict`, one an idle worker of another database or role gives way
/// (it is terminated). `None` when all are busy, or when the slot is another
/// waiting database's turn. Then that database's scheduler (that one only)
/// is woken: it may have looked (and been refused, the turn being ours)
/// before we took our share, and nothing else would wake it while the
/// slot stays free.
pub fn reserve(run: &Run<'_>, registry: Ticket, evict: bool) -> Option<(usize, bool)> {
    if run.sql.len() > SQL_MAX {
        return None; // bgw_run refuses longer statements
    }
    // Read first, so that the two locks are never held together.
    let waiting = schedulers::waiting();
    let (taken, evicted) = SLOTS.write(|slots| {
        let warm = slots.iter().position(|s| s.is_warm_for(run));
        let free = || slots.iter().position(|s| s.state == SlotState::Free);
        let idle = || {
            slots
                .iter()
                .position(|s| evict && s.state == SlotState::Warm)
        };
        let Some(i) = warm.or_else(free).or_else(idle) else {
            return (None, None);
        };
        if !fair(slots, run.home, &waiting) {
            return (Some(Err(next_turn(slots, run.home, &waiting))), None);
        }
        if warm.is_some() {
            slots[i].hand_to_warm(run);
            return (Some(Ok((i, true))), None);
        }
        let evicted = (slots[i].state == SlotState::Warm).then_some(slots[i].handle);
        slots[i].fill(run, registry);
        (Some(Ok((i, false))), evicted)
    });
    if let Some(handle) = evicted {
        pg::terminate_worker(handle);
    }
    match taken {
        Some(Ok(taken)) => Some(taken),
        Some(Err(turn)) => {
            if let Some(database) = turn {
                schedulers::wake_waiting_in(database);
            }
            None
        }
        None => None,
    }
}

/// Starts run `id`, handed to the warm worker in slot `i` and committed:
/// wakes the worker.
pub fn launch_warm(i: usize, id: RunId) {
    let pid = SLOTS.write(|slots| {
        let s = slots
            .get_mut(i)
            .filter(|s| s.run_id() == id && s.warm && s.state == SlotState::Reserved)?;
        s.state = SlotState::Launched;
        Some(s.pid)
    });
    if let Some(pid) = pid {
        pg::wake_backend(pid);
    }
}

/// `bgw_run`'s fast path: takes an idle warm worker for `run`, to start
/// when the creating transaction commits ([`launch_claimed`]) or to give
/// back if it does not ([`unclaim`]). Never while a database waits for a
/// slot: its runs go first.
pub fn claim_warm(run: &Run<'_>) -> Option<usize> {
    if !is_available() || run.sql.len() > SQL_MAX {
        return None;
    }
    if someone_waits() {
        return None;
    }
    SLOTS.write(|slots| {
        let i = slots.iter().position(|s| s.is_warm_for(run))?;
        slots[i].hand_to_warm(run);
        slots[i].state = SlotState::Pending;
        Some(i)
    })
}

/// The transaction that took a warm worker for run `id` committed it:
/// the worker starts it. If the worker exited meanwhile, the run is over
/// without an outcome: its scheduler is asked to record it so.
pub fn launch_claimed(i: usize, id: RunId) {
    let pid = SLOTS.write(|slots| {
        let s = slots
            .get_mut(i)
            .filter(|s| s.run_id() == id && s.state == SlotState::Pending)?;
        s.state = SlotState::Launched;
        (!s.gone).then_some(s.pid)
    });
    match pid {
        Some(pid) => pg::wake_backend(pid),
        None => {
            schedulers::ask_for(id.home);
        }
    }
}

/// The transaction (or savepoint) that took a warm worker for run `id`
/// rolled back: the worker is idle again, or the slot free if it exited.
pub fn unclaim(i: usize, id: RunId) {
    let freed = SLOTS.write(|slots| {
        let s = slots
            .get_mut(i)
            .filter(|s| s.run_id() == id && s.state == SlotState::Pending)?;
        let home = s.home;
        if s.gone {
            *s = Slot::default();
            return Some(home);
        }
        let worker = *s;
        s.make_warm(&worker);
        pg::wake_backend(worker.pid);
        None
    });
    if let Some(home) = freed {
        schedulers::wake_waiting(home);
    }
}

/// A warm worker exits: the slot it idles in is free again; one it was
/// being handed a run in notes that it is gone. Returns whether it freed
/// a slot.
pub fn exit_warm(i: usize) -> bool {
    let me = pg::my_pid();
    let home = SLOTS.write(|slots| {
        let s = slots.get_mut(i).filter(|s| s.pid == me)?;
        match s.state {
            SlotState::Warm => {
                let home = s.home;
                *s = Slot::default();
                Some(home)
            }
            SlotState::Pending | SlotState::Reserved if s.warm => {
                s.gone = true;
                None
            }
            SlotState::Done => {
                s.stay = false; // freed, not made warm, once recorded
                None
            }
            _ => None,
        }
    });
    if let Some(home) = home {
        schedulers::wake_waiting(home);
    }
    home.is_some()
}

/// What `set_launched` found in the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launched {
    Recorded,
    /// `bgw_cancel` came while the slot was only reserved: the worker must
    /// be terminated by whoever launched it.
    CancelRequested,
}

/// Records the worker of reserved slot `i` (run `id`). Under the same lock
/// as `request_cancel`: either that sees the handle and terminates the
/// worker, or this reports the request and the caller does. The handle is
/// kept even if the run is already over (a fast worker), for the worker to
/// stay warm.
pub fn set_launched(i: usize, id: RunId, handle: RawHandle) -> Launched {
    SLOTS.write(|slots| {
        let Some(s) = slots.get_mut(i).filter(|s| s.run_id() == id) else {
            return Launched::Recorded;
        };
        match s.state {
            SlotState::Reserved => {
                s.state = SlotState::Launched;
                s.handle = handle;
                s.has_handle = true;
                if s.cancel_requested {
                    Launched::CancelRequested
                } else {
                    Launched::Recorded
                }
            }
            SlotState::Done => {
                s.handle = handle;
                s.has_handle = true;
                Launched::Recorded
            }
            _ => Launched::Recorded,
        }
    })
}

/// A worker whose run finished before its scheduler noted its handle
/// waits for it a little (up to `wait`), to be able to stay warm: others
/// make a warm worker give way with its handle.
pub fn wait_for_handle(i: usize, id: RunId, wait: std::time::Duration) -> bool {
    pg::wait_for(Some(wait), || {
        SLOTS
            .read(|slots| {
                slots
                    .get(i)
                    .is_some_and(|s| s.run_id() == id && s.has_handle)
            })
            .then_some(())
    })
    .is_some()
}

fn someone_waits() -> bool {
    schedulers::waiting().iter().any(|(_, since)| *since != 0)
}

/// Another database than `home` waits for a slot: an idle worker of
/// `home`'s would keep it from one. (`home`'s own waiting runs take the
/// worker, or make it give way, at its scheduler's next wake.)
fn another_waits(home: u32) -> bool {
    schedulers::waiting()
        .iter()
        .any(|(db, since)| *since != 0 && *db != home)
}

/// What a warm worker in slot `i` finds there.
pub enum WarmNext {
    /// Still idle; or handed a run whose start is not committed yet.
    Wait { handed: bool },
    /// A run to run now (boxed: a slot is about 28 kB).
    Run(Box<Slot>),
    /// Its slot was given to another run: the worker exits.
    Gone,
}

pub fn warm_next(i: usize) -> WarmNext {
    let me = pg::my_pid();
    SLOTS.read(|slots| match slots.get(i) {
        Some(s) if s.pid != me => WarmNext::Gone,
        Some(s) if s.state == SlotState::Warm => WarmNext::Wait { handed: false },
        // Its outcome is not recorded yet: never time out meanwhile.
        Some(s) if s.state == SlotState::Done && s.stay => WarmNext::Wait { handed: true },
        Some(s) if s.warm && matches!(s.state, SlotState::Reserved | SlotState::Pending) => {
            WarmNext::Wait { handed: true }
        }
        Some(s) if s.warm && s.state == SlotState::Launched => WarmNext::Run(Box::new(*s)),
        _ => WarmNext::Gone,
    })
}

/// A warm worker's idle time is over, or it exits: it frees its slot,
/// unless a run took it meanwhile (false).
pub fn leave_warm(i: usize) -> bool {
    let me = pg::my_pid();
    let home = SLOTS.write(|slots| {
        let s = slots
            .get_mut(i)
            .filter(|s| s.state == SlotState::Warm && s.pid == me)?;
        let home = s.home;
        *s = Slot::default();
        Some(home)
    });
    if let Some(home) = home {
        schedulers::wake_waiting(home);
    }
    home.is_some()
}

/// Idle workers connected to `database` leave (terminated): a statement
/// needs nobody connected to it.
pub fn dismiss_warm(database: u32) -> usize {
    dismiss_warm_where(|s| s.database == database, usize::MAX)
}

/// One idle worker leaves (terminated): a run or a scheduler found no free
/// worker slot (`max_worker_processes`). False if there was none.
pub fn dismiss_one_warm() -> bool {
    dismiss_warm_where(|_| true, 1) > 0
}

fn dismiss_warm_where(which: impl Fn(&Slot) -> bool, at_most: usize) -> usize {
    if !is_available() {
        return 0;
    }
    let taken: Vec<Slot> = SLOTS.write(|slots| {
        slots
            .iter_mut()
            .filter(|s| s.state == SlotState::Warm && which(s))
            .take(at_most)
            .map(std::mem::take)
            .collect()
    });
    for s in &taken {
        pg::terminate_worker(s.handle);
        schedulers::wake_waiting(s.home);
    }
    taken.len()
}

/// Whose run a worker reports on: a slot taken from it (its scheduler
/// left) and given to another run is never written to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId {
    pub home: u32,
    pub job: i64,
    pub run: i32,
}

impl Slot {
    pub fn run_id(&self) -> RunId {
        RunId {
            home: self.home,
            job: self.job,
            run: self.run,
        }
    }
}

/// Leaves the outcome of slot `i`, unless one is there already.
pub fn finish(i: usize, id: RunId, outcome: &Outcome) {
    leave_outcome(i, id, outcome, false);
}

/// [`finish`], for a worker that stays warm after its run (its session
/// cleaned): under the same lock it takes a slot to idle in ([`go_warm`]),
/// so that whoever sees the outcome finds the worker ready. Returns that
/// slot; `None` if it must exit.
pub fn finish_and_stay(i: usize, id: RunId, outcome: &Outcome) -> Option<usize> {
    leave_outcome(i, id, outcome, true)
}

fn leave_outcome(i: usize, id: RunId, outcome: &Outcome, stay: bool) -> Option<usize> {
    // Read first, so that the two locks are never held together.
    let waits = stay && another_waits(id.home);
    let me = pg::my_pid();
    let idle = SLOTS.write(|slots| {
        let s = slots.get_mut(i).filter(|s| s.run_id() == id)?;
        if matches!(s.state, SlotState::Free | SlotState::Done) {
            return None;
        }
        s.state = SlotState::Done;
        s.finished_at = pg::now_unix_micros();
        s.status = outcome.status;
        s.rows = outcome.rows;
        if let Some(e) = &outcome.error {
            s.sqlerrcode = e.sqlerrcode;
            s.error_len = copy_cut(&e.message, &mut s.error) as u16;
            s.detail_len = copy_cut(e.detail.as_deref().unwrap_or(""), &mut s.detail) as u16;
            s.hint_len = copy_cut(e.hint.as_deref().unwrap_or(""), &mut s.hint) as u16;
        }
        if let Some(r) = &outcome.result {
            s.result_len = copy_cut(r, &mut s.result) as u32;
        }
        if let Some(statements) = &outcome.statements {
            s.statements_len = copy_cut(statements, &mut s.statements) as u32;
        }
        if let Some((position, text)) = &outcome.statement {
            s.position = *position;
            s.statement_len = copy_cut(text, &mut s.statement) as u16;
        }
        // Another database waiting for a slot needs it more than we do.
        if !stay || waits || !s.has_handle || s.pid != me || s.cancel_requested {
            return None;
        }
        let done = *s;
        if let Some(j) = slots.iter().position(|s| s.state == SlotState::Free) {
            slots[j].make_warm(&done);
            return Some(j);
        }
        // None free: it waits in this one, warm once recorded ([`free`]).
        slots[i].stay = true;
        Some(i)
    });
    // bgw_result() returns it before the scheduler records it.
    RECORDED.broadcast();
    idle
}

/// A run worker notes its progress: the statements finished so far (JSON)
/// and the one it starts now, so that a run stopped by a signal, which
/// leaves no outcome, is still recorded with them.
pub fn report_progress(i: usize, id: RunId, statements: &str, position: i32, text: &str) {
    SLOTS.write(|slots| {
        let Some(s) = slots.get_mut(i).filter(|s| s.run_id() == id) else {
            return;
        };
        if s.state != SlotState::Launched && s.state != SlotState::Reserved {
            return;
        }
        s.statements_len = copy_cut(statements, &mut s.statements) as u32;
        s.position = position;
        s.statement_len = copy_cut(text, &mut s.statement) as u16;
    });
}

/// Frees slot `i` if it still holds run `id`, and wakes the schedulers
/// waiting for one.
///
/// A slot whose worker waits in it to stay turns `Warm` instead, unless
/// another database waits for a slot (the worker then exits).
pub fn free(i: usize, id: RunId) {
    let waits = another_waits(id.home);
    let warm = SLOTS.write(|slots| {
        let s = slots.get_mut(i).filter(|s| s.run_id() == id)?;
        if s.stay && s.state == SlotState::Done && !waits {
            let worker = *s;
            s.make_warm(&worker);
            return Some(worker.pid);
        }
        *s = Slot::default();
        None
    });
    match warm {
        Some(pid) => pg::wake_backend(pid),
        None => schedulers::wake_waiting(id.home),
    }
}

/// Frees slot `i`, whose worker could not be registered (no background
/// worker slot), without waking anyone: the others could not start a
/// worker either, and a scheduler refused the slot would wake this one
/// again ([`reserve`]), each wake a failed registration, in a busy loop.
/// The waiting schedulers look again within their retry delay.
pub fn free_quietly(i: usize, id: RunId) {
    SLOTS.write(|slots| {
        if let Some(s) = slots.get_mut(i).filter(|s| s.run_id() == id) {
            *s = Slot::default();
        }
    });
}

/// Frees the slots this scheduler (of `home`) reserved but did not launch:
/// a start whose subtransaction, or a wake whose transaction, failed after
/// the slot was taken (its run is still queued, rolled back). Called once
/// its wake's launches are done, when none of the slots it reserved is
/// legitimately waiting; their registry entries are released too. (Slots
/// an earlier life of the scheduler reserved are not its own: its first
/// wake records them as failed.) Returns how many.
pub fn free_unlaunched(home: u32) -> usize {
    if !is_available() {
        return 0;
    }
    let me = pg::my_pid();
    let tickets: Vec<Ticket> = SLOTS.write(|slots| {
        slots
            .iter_mut()
            .filter(|s| s.state == SlotState::Reserved && s.home == home && s.reserved_by == me)
            .filter_map(|s| {
                if s.warm && !s.gone {
                    // Its worker idles again; its registry entry is its own.
                    let worker = *s;
                    s.make_warm(&worker);
                    return None;
                }
                if s.warm {
                    *s = Slot::default(); // its worker exited
                    return None;
                }
                let ticket = s.registry_ticket();
                *s = Slot::default();
                Some(ticket)
            })
            .collect()
    });
    for &ticket in &tickets {
        super::registry::release(ticket);
    }
    if !tickets.is_empty() {
        schedulers::wake_waiting(home);
    }
    tickets.len()
}

/// Stops the runs of `home`'s jobs connected to `database` (which is about
/// to be dropped); their slots stay, for whoever records them.
pub fn stop_runs_in(home: u32, database: u32) {
    if !is_available() {
        return;
    }
    let handles: Vec<RawHandle> = SLOTS.read(|slots| {
        slots
            .iter()
            .filter(|s| {
                s.state != SlotState::Free
                    && s.home == home
                    && s.database == database
                    && s.has_handle
            })
            .map(|s| s.handle)
            .collect()
    });
    for handle in handles {
        pg::terminate_worker(handle);
    }
}

/// The scheduler of `home` is gone for good (its database or extension
/// went away): its runs are stopped and their slots freed, since nobody
/// could record them. Returns how many.
pub fn abandon(home: u32) -> usize {
    if !is_available() {
        return 0;
    }
    let taken: Vec<Slot> = SLOTS.write(|slots| {
        slots
            .iter_mut()
            .filter(|s| s.state != SlotState::Free && s.home == home)
            .map(std::mem::take)
            .collect()
    });
    for s in taken.iter() {
        if s.has_handle {
            pg::terminate_worker(s.handle);
        }
        if s.pid == 0 {
            super::registry::forget_unstarted(s.registry_ticket());
        }
    }
    if !taken.is_empty() {
        schedulers::wake_waiting(home);
    }
    taken.len()
}

/// A copy of slot `i` if it is in use.
pub fn get(i: usize) -> Option<Slot> {
    SLOTS.read(|slots| slots.get(i).filter(|s| s.is_busy()).copied())
}

/// `slot` as it is now, if its worker has left an outcome in it.
pub fn get_done(slot: &Slot) -> Option<Slot> {
    SLOTS.read(|slots| {
        slots
            .iter()
            .find(|s| s.run_id() == slot.run_id() && s.state == SlotState::Done)
            .copied()
    })
}

/// Run `run` of job `job` (kept in `home`) as its slot holds it, until
/// the scheduler has recorded it.
pub fn find(home: u32, job: i64, run: i32) -> Option<Slot> {
    if !is_available() {
        return None;
    }
    let id = RunId { home, job, run };
    SLOTS.read(|slots| {
        slots
            .iter()
            .find(|s| s.is_busy() && s.run_id() == id)
            .copied()
    })
}

/// Waits, up to `timeout`, until no run of job `job` (kept in `home`) has
/// an outcome left in its slot that the scheduler has not recorded yet.
pub fn await_recorded(home: u32, job: i64, timeout: std::time::Duration) {
    if !is_available() {
        return;
    }
    let unrecorded = || {
        SLOTS.read(|slots| {
            slots
                .iter()
                .any(|s| s.home == home && s.job == job && s.state == SlotState::Done)
        })
    };
    if unrecorded() {
        let _ = wait_recorded(Some(timeout), || (!unrecorded()).then_some(()));
    }
}

/// The slots in use by `home`'s runs, with their positions.
pub fn busy(home: u32) -> Vec<(usize, Slot)> {
    SLOTS.read(|slots| {
        slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_busy() && s.home == home)
            .map(|(i, s)| (i, *s))
            .collect()
    })
}

/// A run worker finds its slot by its registry entry and notes its pid.
pub fn take_for_worker(registry: Ticket) -> Option<(usize, Slot)> {
    let pid = pg::my_pid();
    SLOTS.write(|slots| {
        let (i, s) = slots.iter_mut().enumerate().find(|(_, s)| {
            matches!(s.state, SlotState::Reserved | SlotState::Launched)
                && s.registry_ticket() == registry
        })?;
        s.pid = pid;
        Some((i, *s))
    })
}

/// The pid of job `job`'s (kept in `home`) run in progress.
pub fn running_pid(home: u32, job: i64) -> Option<i32> {
    if !is_available() {
        return None;
    }
    SLOTS.read(|slots| {
        slots
            .iter()
            .find(|s| {
                s.home == home && s.job == job && s.state == SlotState::Launched && s.pid != 0
            })
            .map(|s| s.pid)
    })
}

/// `bgw_cancel()`: marks job `job`'s run in progress as cancelled and
/// returns its worker handle, to be terminated; `Some(None)` when the slot
/// is only reserved (its scheduler terminates the worker it registers).
pub fn request_cancel(home: u32, job: i64) -> Option<Option<RawHandle>> {
    if !is_available() {
        return None;
    }
    SLOTS.write(|slots| {
        let s = slots.iter_mut().find(|s| {
            s.home == home
                && s.job == job
                && matches!(
                    s.state,
                    SlotState::Reserved | SlotState::Pending | SlotState::Launched
                )
        })?;
        s.cancel_requested = true;
        Some(s.has_handle.then_some(s.handle))
    })
}

/// The scheduler has committed outcomes: wake `bgw_result()` waiters.
pub fn announce_recorded() {
    RECORDED.broadcast();
}

/// Waits, as `SharedCondVar::wait_for`, for recorded outcomes.
pub fn wait_recorded<R>(
    timeout: Option<std::time::Duration>,
    done: impl FnMut() -> Option<R>,
) -> Option<R> {
    RECORDED.wait_for(timeout, done)
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn copy_cut_keeps_whole_characters() {
        let mut buf = [0u8; 4];
        assert_eq!(copy_cut("abcdef", &mut buf), 4);
        assert_eq!(&buf, b"abcd");
        let mut buf = [0u8; 4];
        // "é" is two bytes: "aé" + "é" would end inside the second one.
        assert_eq!(copy_cut("aéé", &mut buf), 3);
        assert_eq!(std::str::from_utf8(&buf[..3]).unwrap(), "aé");
    }

    /// Slots in use by these databases, in this order.
    fn used(homes: &[u32]) -> Vec<Slot> {
        let mut slots: Vec<Slot> = homes
            .iter()
            .map(|&home| Slot {
                state: SlotState::Launched,
                home,
                ..Slot::default()
            })
            .collect();
        slots.push(Slot::default()); // one free
        slots
    }

    #[test]
    fn a_database_waiting_with_fewer_slots_goes_first() {
        // Database 1 holds one slot; 2 waits with none: 1 must let it.
        let slots = used(&[1]);
        assert!(!fair(&slots, 1, &[(1, 10), (2, 20)]));
        assert!(fair(&slots, 2, &[(1, 10), (2, 20)]));
        // Nobody else waits: 1 takes it.
        assert!(fair(&slots, 1, &[(1, 10)]));
        assert!(fair(&slots, 1, &[]));
    }

    #[test]
    fn equal_shares_go_to_who_waited_longest() {
        let slots = used(&[1, 2]);
        assert!(fair(&slots, 1, &[(1, 10), (2, 20)]));
        assert!(!fair(&slots, 2, &[(1, 10), (2, 20)]));
        // One that holds fewer goes first, waiting or not.
        assert!(fair(&slots, 3, &[(1, 10), (2, 20)]));
        // One that does not wait yet defers to one with as many that does.
        let empty = used(&[]);
        assert!(!fair(&empty, 3, &[(1, 10)]));
        assert!(fair(&empty, 1, &[(1, 10)]));
    }

    #[test]
    fn a_refused_scheduler_wakes_only_the_database_whose_turn_it_is() {
        // 1 holds two; 2 and 3 hold one each, and 2 has waited longer.
        let slots = used(&[1, 1, 2, 3]);
        let waiting = [(1, 5), (2, 10), (3, 20), (4, 0)];
        assert!(!fair(&slots, 1, &waiting));
        assert_eq!(next_turn(&slots, 1, &waiting), Some(2));
        // Never itself, never one that does not wait.
        assert_eq!(next_turn(&slots, 2, &waiting), Some(3));
        assert_eq!(next_turn(&slots, 1, &[(1, 5), (4, 0)]), None);
    }

    #[test]
    fn a_flood_never_holds_every_slot_while_another_waits() {
        // Database 1 has both slots' worth in use; 2 waits: every free slot
        // that 1 asks for is refused until 2 has as many.
        let slots = used(&[1, 1]);
        assert!(!fair(&slots, 1, &[(1, 1), (2, 99)]));
        let slots = used(&[1, 2]);
        assert!(fair(&slots, 1, &[(1, 1), (2, 99)]));
    }

    #[test]
    fn status_names_match_the_table_check() {
        let names: Vec<_> = [
            Status::Succeeded,
            Status::Failed,
            Status::Cancelled,
            Status::TimedOut,
        ]
        .iter()
        .map(|s| s.as_str())
        .collect();
        assert_eq!(names, ["succeeded", "failed", "cancelled", "timed out"]);
    }
}
