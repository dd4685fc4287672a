//! The scheduler: one [`Runtime`] per OS thread, a FIFO ready queue, the timer heap,
//! and the [`Driver`] it parks through when no task is ready.
//!
//! The runtime a task belongs to is found through one thread-local pointer, set only
//! while [`Runtime::run`] is on the thread's stack (nested runs are refused). That
//! pointer is the only thread-local state; nothing is shared between runtimes.
//!
//! Switching is symmetric: a task that yields, blocks or ends picks the head of the
//! ready queue itself and switches straight to it (`Core::switch_from`). Only when
//! nothing is ready does it switch to the scheduler context (the stack `run` was
//! called on), which fires timers, parks in the driver until the next deadline or
//! event, or, with no timer and no I/O in flight, reports a deadlock. Once per round
//! (as many switches as the queue held at the round's start) due timers are fired and
//! in-flight I/O is polled without blocking, so busy tasks cannot starve either.
//!
//! A task that ends cannot free the stack it runs on: it leaves itself in `dead` and
//! the next context to run (`after_switch`) recycles its stack and drops it.
//!
//! A cancelled task (its simulated node crashed or stopped; every task at teardown)
//! is ended by unwinding it with a `Cancelled` panic when it next runs, so that its
//! destructors run. The rules, because std counts panics in progress per thread and
//! this thread runs many stacks (see `task::Unwind`):
//! - The unwind is started only in a task known not to be unwinding already: one that
//!   switched away while no unwind was in progress on the thread, or any task when
//!   none is in progress now. A task that may be unwinding from its own panic is left
//!   to run on (a crashed node's I/O is refused) and is cancelled once no unwind is in
//!   progress: a panic escaping a destructor that runs during an unwind aborts.
//! - A destructor that waits during a `Cancelled` unwind waits like any other code and
//!   is woken by what it waits on, never forced: the unwind then reaches the task's
//!   `catch_unwind`, which lowers the thread's count again.
//! - Teardown abandons a task parked mid-unwind (or perhaps) that nothing can wake
//!   any more (the run deadlocked, or only system tasks are left), and one that parks
//!   while teardown unwinds it (one that yields is resumed again); apart from the
//!   next rule, nothing else abandons a task. Its remaining frames never run and
//!   what they own leaks, but the locks it holds are released
//!   (`sync::release_abandoned`). The cost of abandoning a task mid-unwind is that
//!   std's count stays raised: `std::thread::panicking()` is true on this thread for
//!   good, and std mutex guards taken before and dropped after poison their mutexes.
//! - A run that starts with the count raised (after such an abandonment, or from a
//!   destructor during a panic) cannot tell a task that may be unwinding from one
//!   that is not: a cancelled task that switched away while the count was raised is
//!   then abandoned when it next runs (and made ready for that), so that a crashed
//!   node's tasks still end.
//! - While a task is parked mid-unwind, `std::thread::panicking()` is true in every
//!   task of the thread: a std mutex guard taken before and dropped then poisons.

use std::cell::{Cell, RefCell};
use std::panic::resume_unwind;
use std::ptr::{self, NonNull};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::context;
use crate::driver::{Driver, Io, IoConfig, IoStats, Reactor, SleepDriver};
use crate::error::{DeadlockTask, IoError, RunError};
use crate::overflow;
use crate::rand::Rng;
use crate::runq::RunQueue;
use crate::stack::StackPool;
use crate::stall::{DEFAULT_STALL_THRESHOLD, StallSink, StallState, Watchdog};
use crate::task::{Builder, Cancelled, State, Task, Unwind, spawn_on};
use crate::timer::{Instant, TimerHeap};

/// A round (between two ticks of timers and I/O polling) is as many switches as
/// tasks were ready at its start, but at least this many: ticking costs a clock read
/// and a driver call, too much to pay on every switch of two ping-ponging tasks.
/// 64 switches are about a microsecond.
const MIN_ROUND_SWITCHES: usize = 64;

/// How many times teardown resumes a task that yields (during its unwind) before
/// abandoning it: a yield waits for nothing, so resuming it is safe, but a destructor
/// that yields in a loop must not hold teardown for ever.
const TEARDOWN_RESUMES_MAX: u32 = 1024;

thread_local! {
    static CORE: Cell<*const Core> = const { Cell::new(ptr::null()) };
}

/// The running task, if the caller is a task of a runtime on this thread (`None`
/// in the scheduler context and outside any runtime).
#[inline(always)]
pub(crate) fn current_task_rc() -> Option<Rc<Task>> {
    let p = CORE.with(Cell::get);
    if p.is_null() {
        return None;
    }
    // SAFETY: as in `core`: a non-null CORE points to the running runtime's Core.
    let core = unsafe { &*p };
    let t = core.current.get();
    if t.is_null() {
        return None;
    }
    Some(core.current_rc())
}

/// The runtime of the calling task. Panics when called outside [`Runtime::run`].
#[inline(always)]
pub(crate) fn core<'a>() -> &'a Core {
    let p = CORE.with(Cell::get);
    assert!(
        !p.is_null(),
        "taskio: called outside a task (no runtime runs on this thread)"
    );
    // SAFETY: CORE is non-null only while `Runtime::run` (or the runtime's teardown)
    // is on this thread's stack, and the `Core` it points to is boxed inside that
    // runtime, so it is alive. Every caller is a task of that runtime or the scheduler
    // itself, and none of them outlives the run. `Core` is only used through `&`.
    unsafe { &*p }
}

/// Whether a runtime is running on this thread (inside `Runtime::run`).
pub(crate) fn is_running() -> bool {
    !CORE.with(Cell::get).is_null()
}

/// The running task's stack guard address and name, for the SIGSEGV handler.
/// Reads only plain cells; no allocation, no locks.
pub(crate) fn current_guard() -> Option<(usize, Option<&'static [u8]>, u64)> {
    let p = CORE.try_with(Cell::get).ok()?;
    if p.is_null() {
        return None;
    }
    // SAFETY: as in `core`: non-null means the runtime is alive on this thread.
    let core = unsafe { &*p };
    let t = core.current.get();
    if t.is_null() {
        return None;
    }
    // SAFETY: `current` points to the running task, which the task table keeps
    // alive while it runs. The 'static on the name is only
    // for the handler, which aborts the process before the task could be freed.
    let task: &'static Task = unsafe { &*t };
    Some((task.guard_addr, task.name_bytes(), task.id().0))
}

/// Settings of a runtime.
#[derive(Clone)]
pub struct Config {
    /// Stack size of tasks spawned without one ([`crate::DEFAULT_STACK_SIZE`]).
    pub stack_size: usize,
    /// Live tasks allowed at once; `spawn` beyond it returns an error.
    pub max_tasks: usize,
    /// Stacks of finished tasks kept for reuse.
    pub stack_pool_max: usize,
    /// Report a task that runs this long without yielding; None: no detector.
    pub stall_threshold: Option<Duration>,
    /// Where stall reports go (default: stderr).
    pub stall_sink: Option<StallSink>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("stack_size", &self.stack_size)
            .field("max_tasks", &self.max_tasks)
            .field("stack_pool_max", &self.stack_pool_max)
            .field("stall_threshold", &self.stall_threshold)
            .field("stall_sink", &self.stall_sink.is_some())
            .finish()
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            stack_size: crate::DEFAULT_STACK_SIZE,
            max_tasks: crate::DEFAULT_MAX_TASKS,
            stack_pool_max: crate::DEFAULT_STACK_POOL_MAX,
            stall_threshold: Some(DEFAULT_STALL_THRESHOLD),
            stall_sink: None,
        }
    }
}

/// Counters of one runtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeStats {
    pub tasks_spawned: u64,
    pub tasks_live: usize,
    pub switches: u64,
    pub parks: u64,
    pub stacks_pooled: usize,
    pub timers_armed: usize,
    /// The I/O driver's counters (zero without one).
    pub io: IoStats,
}

/// Live tasks by slot; a free list reuses slots.
#[derive(Default)]
pub(crate) struct TaskTable {
    slots: Vec<Option<Rc<Task>>>,
    free: Vec<usize>,
}

impl TaskTable {
    pub(crate) fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    fn insert(&mut self, task: Rc<Task>) {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        task.slot.set(i);
        self.slots[i] = Some(task);
    }

    /// Removes `task`; None if it is not in the table (drained by a teardown).
    fn remove(&mut self, task: &Task) -> Option<Rc<Task>> {
        let i = task.slot.get();
        let slot = self.slots.get_mut(i)?;
        if !slot.as_ref().is_some_and(|t| ptr::eq(Rc::as_ptr(t), task)) {
            return None;
        }
        let t = slot.take();
        self.free.push(i);
        t
    }

    fn drain(&mut self) -> Vec<Rc<Task>> {
        self.free.clear();
        self.slots.drain(..).flatten().collect()
    }

    fn iter(&self) -> impl Iterator<Item = &Rc<Task>> {
        self.slots.iter().flatten()
    }
}

pub(crate) struct Core {
    /// Ready tasks. Every task here is in `tasks`, which keeps it alive.
    pub(crate) ready: RunQueue,
    /// The running task, null in the scheduler context.
    pub(crate) current: Cell<*const Task>,
    /// Saved stack pointer of the scheduler context while a task runs.
    sched_ctx: Cell<usize>,
    /// A task that ended and whose stack the next context recycles.
    dead: Cell<*const Task>,
    round_left: Cell<usize>,
    pub(crate) timers: RefCell<TimerHeap>,
    pub(crate) stacks: RefCell<StackPool>,
    /// Blocks of ended tasks, each still owning a stack of the default size.
    free_tasks: RefCell<Vec<Rc<Task>>>,
    pub(crate) tasks: RefCell<TaskTable>,
    driver: RefCell<Box<dyn Driver>>,
    pub(crate) config: Config,
    pub(crate) switches: Cell<u64>,
    pub(crate) parks: Cell<u64>,
    pub(crate) next_id: Cell<u64>,
    live_user: Cell<usize>,
    pub(crate) tearing_down: Cell<bool>,
    /// Tasks marked `cancelled` that have not ended yet.
    cancelling: Cell<usize>,
    /// A cancelled task was left to run on because it may be unwinding from its own
    /// panic: retry (`retry_deferred_cancels`) once no unwind is in progress.
    cancels_deferred: Cell<bool>,
    /// std's panic count was raised when this run started: `panicking()` says
    /// nothing about this run's tasks (see the module's notes).
    unwinding_outside: Cell<bool>,
    pub(crate) stall: Arc<StallState>,
    /// Under simulation: the seeded generator that picks which ready task runs
    /// next (None: FIFO), and a hash of the picks for determinism checks.
    sched_rng: RefCell<Option<Rng>>,
    sched_trace: Cell<u64>,
}

impl Core {
    #[inline(always)]
    pub(crate) fn current_task(&self) -> &Task {
        let t = self.current.get();
        assert!(
            !t.is_null(),
            "taskio: called from the scheduler, not a task"
        );
        // SAFETY: `current` points to the running task, which the task table keeps
        // alive until it has ended and switched away.
        unsafe { &*t }
    }

    #[inline(always)]
    pub(crate) fn current_rc(&self) -> Rc<Task> {
        let t = self.current.get();
        assert!(
            !t.is_null(),
            "taskio: called from the scheduler, not a task"
        );
        // SAFETY: `t` came from `Rc::as_ptr` of the `Rc<Task>` the task table holds,
        // so the count is at least one while we add another.
        unsafe {
            Rc::increment_strong_count(t);
            Rc::from_raw(t)
        }
    }

    pub(crate) fn now(&self) -> Instant {
        self.driver.borrow().now()
    }

    /// Runs `f` on the driver's I/O primitives. `f` must not block or switch.
    pub(crate) fn with_io<R>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut dyn Io) -> R,
    ) -> Result<R, IoError> {
        let mut driver = self.driver.borrow_mut();
        match driver.io() {
            Some(io) => Ok(f(io)),
            None => Err(IoError::NoDriver { op }),
        }
    }

    pub(crate) fn admit(&self, task: Rc<Task>) {
        if !task.system() {
            self.live_user.set(self.live_user.get() + 1);
        }
        let p = NonNull::from(&*task);
        self.tasks.borrow_mut().insert(task);
        self.ready.push_back(p);
    }

    /// Pops the next task to run and makes it current; runs the per-round tick.
    #[inline(always)]
    fn pick_next(&self) -> Option<NonNull<Task>> {
        // With no user task left, only system tasks could run: hand back to the
        // scheduler context, which returns from `run` and unwinds them.
        if self.tearing_down.get() || self.live_user.get() == 0 {
            return None;
        }
        let left = self.round_left.get();
        if left == 0 {
            self.new_round();
        } else {
            self.round_left.set(left - 1);
        }
        let seeded = self.sched_rng.borrow().is_some();
        let next = if seeded {
            self.pop_random()?
        } else {
            self.ready.pop_front()?
        };
        // SAFETY: tasks in the ready queue are alive (held by the task table).
        let t = unsafe { next.as_ref() };
        debug_assert_eq!(t.state.get(), State::Ready);
        t.state.set(State::Running);
        self.current.set(t);
        let switches = self.switches.get() + 1;
        self.switches.set(switches);
        self.stall.switched_to(switches, t.id().0);
        Some(next)
    }

    /// Pops a ready task chosen by the seeded generator (simulation only).
    #[cold]
    #[inline(never)]
    fn pop_random(&self) -> Option<NonNull<Task>> {
        let len = self.ready.len();
        if len == 0 {
            return None;
        }
        let i = self.sched_rng.borrow_mut().as_mut()?.index(len);
        self.ready.swap_front(i);
        let next = self.ready.pop_front()?;
        // SAFETY: alive while in the ready queue.
        let id = unsafe { next.as_ref() }.id().0;
        let h = self.sched_trace.get();
        self.sched_trace
            .set((h ^ id).wrapping_mul(0x0000_0100_0000_01b3));
        Some(next)
    }

    /// Seeds the scheduler's choice of the next ready task (simulation).
    pub(crate) fn set_sched_rng(&self, rng: Rng) {
        *self.sched_rng.borrow_mut() = Some(rng);
        self.sched_trace.set(0xcbf2_9ce4_8422_2325);
    }

    pub(crate) fn sched_trace(&self) -> u64 {
        self.sched_trace.get()
    }

    /// The simulated node of the running task (0 in the scheduler context).
    pub(crate) fn current_node(&self) -> u32 {
        let t = self.current.get();
        if t.is_null() {
            0
        } else {
            // SAFETY: as in `current_task`.
            unsafe { &*t }.node.get()
        }
    }

    /// Whether the running task is being cancelled (its node crashed or stopped; it
    /// unwinds, or is about to). False in the scheduler context.
    pub(crate) fn current_cancelled(&self) -> bool {
        let t = self.current.get();
        // SAFETY: as in `current_task`.
        !t.is_null() && unsafe { &*t }.cancelled.get()
    }

    /// Ends every task of `node` (a simulated crash): a task that never ran is
    /// dropped; one that is suspended is marked `cancelled` and, unless it may be
    /// unwinding already (its cancel is then deferred), made ready to unwind when it
    /// next runs. The running task must not belong to `node`.
    pub(crate) fn cancel_node(&self, node: u32) {
        assert_ne!(
            self.current_node(),
            node,
            "a task cannot crash its own node"
        );
        let victims: Vec<Rc<Task>> = self
            .tasks
            .borrow()
            .iter()
            .filter(|t| t.node.get() == node && t.state.get() != State::Done)
            .cloned()
            .collect();
        for t in victims {
            if let Some(body) = t.body.take() {
                // Never ran: forget it entirely.
                let p = Rc::as_ptr(&t);
                self.ready.retain(|q| !ptr::eq(q.as_ptr(), p));
                t.state.set(State::Done);
                if !t.system() {
                    self.live_user.set(self.live_user.get() - 1);
                }
                if let Some(rc) = self.tasks.borrow_mut().remove(&t) {
                    drop(rc);
                }
                drop(body);
                if let Some(stack) = t.stack.take() {
                    let kept = self.free_tasks.borrow().len();
                    self.stacks.borrow_mut().give(stack, kept);
                }
                continue;
            }
            if t.cancelled.replace(true) {
                continue;
            }
            self.cancelling.set(self.cancelling.get() + 1);
            if t.unwind_now() == Unwind::No || self.unwinding_outside.get() {
                if t.force_ready() {
                    self.ready.push_back(NonNull::from(&*t));
                }
            } else {
                // It may be parked in a destructor of its own unwind: forcing it out
                // of that wait would return from a wait whose event did not happen.
                self.cancels_deferred.set(true);
            }
        }
    }

    /// Once no unwind is in progress on the thread, no suspended task is unwinding:
    /// every cancelled task whose cancel was deferred is settled to `Unwind::No` and
    /// made ready, to unwind when it next runs. Returns whether one was made ready.
    #[cold]
    #[inline(never)]
    fn retry_deferred_cancels(&self) -> bool {
        if std::thread::panicking() {
            return false;
        }
        self.cancels_deferred.set(false);
        let mut readied = false;
        for t in self.tasks.borrow().iter() {
            if !t.cancelled.get() || t.state.get() == State::Done {
                continue;
            }
            if t.unwind_now() == Unwind::No && t.force_ready() {
                self.ready.push_back(NonNull::from(&**t));
                readied = true;
            }
        }
        readied
    }

    #[cold]
    #[inline(never)]
    fn new_round(&self) {
        // A tick error (the driver failing) surfaces when the scheduler parks.
        let _ = self.tick();
        if self.cancels_deferred.get() {
            self.retry_deferred_cancels();
        }
        self.round_left
            .set(self.ready.len().max(MIN_ROUND_SWITCHES));
    }

    /// Called by the running task `me`, which has just put itself in the ready queue
    /// (a yield) or registered a wait (a block): runs the next ready task, or the
    /// scheduler, and returns when `me` is resumed.
    #[inline(always)]
    pub(crate) fn switch_from(&self, me: &Task) {
        me.note_switch_away();
        let resume = match self.pick_next() {
            Some(next) if ptr::eq(next.as_ptr(), me) => return,
            // SAFETY: alive while in the ready queue, as in `pick_next`.
            Some(next) => unsafe { next.as_ref() }.ctx.get(),
            None => {
                self.current.set(ptr::null());
                self.stall.switched_to(self.switches.get(), 0);
                self.sched_ctx.get()
            }
        };
        // SAFETY: `me` is running on its own stack and saves its context in its own
        // `ctx`, where whoever resumes it will read it; `resume` is the saved context
        // of a suspended task (it was in the ready queue, so it is not running) or of
        // the scheduler, which is suspended while any task runs.
        unsafe { context::switch(me.ctx.as_ptr(), resume) };
        self.after_switch();
    }

    /// Runs first in a context that has just been resumed.
    #[inline(always)]
    pub(crate) fn after_switch(&self) {
        self.reap_dead();
        if self.tearing_down.get() || self.cancelling.get() > 0 {
            self.cancel_current();
        }
    }

    #[cold]
    #[inline(never)]
    fn cancel_current(&self) {
        let t = self.current.get();
        if t.is_null() {
            return;
        }
        // SAFETY: as in `current_task`.
        let task = unsafe { &*t };
        if !(self.tearing_down.get() || task.cancelled.get()) {
            return;
        }
        match task.unwind_now() {
            Unwind::No => {
                task.unwind.set(Unwind::Cancelled);
                resume_unwind(Box::new(Cancelled));
            }
            // A destructor waited during the unwind and its wait has ended: the
            // unwind goes on.
            Unwind::Cancelled => {}
            // Doubtful, and nothing in this run can settle it (the count was raised
            // before the run began): abandoned, as teardown would, so that it ends.
            Unwind::Maybe if self.unwinding_outside.get() => {
                crate::sync::release_abandoned(task);
                self.exit_current(task);
            }
            // Perhaps in a destructor of its own panic's unwind, where a second unwind
            // would abort the process: it runs on, and is cancelled when it next
            // resumes with no unwind in progress (its unwind, if it is one, ends the
            // task first).
            Unwind::Maybe => self.cancels_deferred.set(true),
        }
    }

    /// Ends the running task: it leaves itself in `dead` for the next context.
    pub(crate) fn exit_current(&self, me: &Task) -> ! {
        me.state.set(State::Done);
        if me.cancelled.get() {
            self.cancelling.set(self.cancelling.get() - 1);
        }
        // Its unwind, if it unwound, has just ended: perhaps the last in progress.
        if self.cancels_deferred.get() {
            self.retry_deferred_cancels();
        }
        if me.is_named() {
            self.stall.forget_task(me.id().0);
        }
        assert!(self.dead.get().is_null(), "two dead tasks at once");
        self.dead.set(me);
        // Counted here, not when reaped, so that `pick_next` below sees it.
        if !me.system() {
            self.live_user.set(self.live_user.get() - 1);
        }
        let resume = match self.pick_next() {
            // SAFETY: alive while in the ready queue, as in `pick_next`.
            Some(next) => unsafe { next.as_ref() }.ctx.get(),
            None => {
                self.current.set(ptr::null());
                self.stall.switched_to(self.switches.get(), 0);
                self.sched_ctx.get()
            }
        };
        let mut discard = 0usize;
        // SAFETY: as in `switch_from`; nothing will ever resume this context, so the
        // saved stack pointer goes to a local that dies with the stack.
        unsafe { context::switch(&mut discard, resume) };
        unreachable!("a dead task was resumed");
    }

    /// Recycles the stack of the task that ended just before this context resumed.
    #[inline(always)]
    fn reap_dead(&self) {
        if !self.dead.get().is_null() {
            self.reap_dead_slow();
        }
    }

    #[cold]
    #[inline(never)]
    fn reap_dead_slow(&self) {
        let d = self.dead.replace(ptr::null());
        // SAFETY: the dead task is still in the task table (or in the teardown's
        // drained list), so it is alive; it no longer runs on its stack.
        let task = unsafe { &*d };
        let removed = self.tasks.borrow_mut().remove(task);
        if let Some(rc) = removed {
            self.recycle(rc);
        } else if let Some(stack) = task.stack.take() {
            // Drained by a teardown, which still holds the block.
            let kept = self.free_tasks.borrow().len();
            self.stacks.borrow_mut().give(stack, kept);
        }
    }

    /// Keeps an ended task's block with its stack for the next spawn when nothing
    /// else refers to it; otherwise returns its stack to the pool and lets it go.
    ///
    /// Kept blocks and pooled stacks together stay within `Config::stack_pool_max`.
    fn recycle(&self, task: Rc<Task>) {
        let mut free = self.free_tasks.borrow_mut();
        let mut stacks = self.stacks.borrow_mut();
        let kept = free.len() + stacks.pooled();
        if kept < self.config.stack_pool_max && task.reusable(self.config.stack_size) {
            free.push(task);
        } else if let Some(stack) = task.stack.take() {
            stacks.give(stack, free.len());
        }
    }

    /// A recycled block (with its stack) for a task of `stack_size`, if any.
    #[inline]
    pub(crate) fn reuse_task(&self, stack_size: usize) -> Option<Rc<Task>> {
        if stack_size != self.config.stack_size {
            return None;
        }
        self.free_tasks.borrow_mut().pop()
    }

    /// Fires due timers and polls in-flight I/O without blocking.
    fn tick(&self) -> Result<(), RunError> {
        if !self.timers.borrow().is_empty() {
            let now = self.now();
            self.timers.borrow_mut().fire(now);
        }
        let mut driver = self.driver.borrow_mut();
        if driver.in_flight() > 0 {
            driver
                .park(Some(Instant::from_nanos(0)))
                .map_err(RunError::Driver)?;
        }
        Ok(())
    }

    /// The scheduler context's loop: runs until every user task has ended.
    fn schedule(&self) -> Result<(), RunError> {
        loop {
            self.reap_dead();
            if self.live_user.get() == 0 {
                return Ok(());
            }
            if let Some(next) = self.pick_next() {
                // SAFETY: the scheduler runs on the thread's own stack and saves its
                // context in `sched_ctx`, where tasks look for it; `next` is a
                // suspended task taken from the ready queue.
                unsafe { context::switch(self.sched_ctx.as_ptr(), next.as_ref().ctx.get()) };
                continue;
            }
            // Nothing ready.
            if self.cancels_deferred.get() && self.retry_deferred_cancels() {
                continue;
            }
            // The clock is read only when a timer is armed.
            if !self.timers.borrow().is_empty() {
                let now = self.now();
                if self.timers.borrow_mut().fire(now) > 0 {
                    continue;
                }
            }
            let deadline = self.timers.borrow_mut().next_deadline();
            let mut driver = self.driver.borrow_mut();
            if deadline.is_none() && driver.in_flight() == 0 {
                drop(driver);
                return Err(RunError::Deadlock {
                    tasks: self.blocked_tasks(),
                });
            }
            self.stall.parking();
            let parked = driver.park(deadline);
            self.stall.unparked();
            parked.map_err(RunError::Driver)?;
            drop(driver);
            if deadline.is_some() {
                let now = self.now();
                self.timers.borrow_mut().fire(now);
            }
        }
    }

    fn blocked_tasks(&self) -> Vec<DeadlockTask> {
        let tasks = self.tasks.borrow();
        let mut out: Vec<DeadlockTask> = tasks
            .iter()
            .filter(|t| t.state.get() == State::Blocked)
            .map(|t| DeadlockTask {
                id: t.id(),
                name: t.name(),
                waiting_on: t.waiting_on.get(),
                system: t.system(),
            })
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    /// Resumes `task` (suspended, not parked mid-unwind) from the scheduler context
    /// until it ends; a task that yields is resumed again (up to
    /// `TEARDOWN_RESUMES_MAX` times), one that parks is abandoned.
    fn unwind_at_teardown(&self, task: &Rc<Task>) {
        for resumes in 1..=TEARDOWN_RESUMES_MAX {
            task.state.set(State::Running);
            self.current.set(Rc::as_ptr(task));
            // Counted like `pick_next`'s: a resumed `yield_now` counts on it.
            self.switches.set(self.switches.get() + 1);
            // SAFETY: the task is suspended (not running: we are the scheduler) and
            // its stack is mapped; it runs until it ends, yields or parks, and each
            // switches back to `sched_ctx` (`pick_next` hands nothing out now).
            unsafe { context::switch(self.sched_ctx.as_ptr(), task.ctx.get()) };
            self.reap_dead();
            match task.state.get() {
                State::Done => return,
                State::Ready if resumes < TEARDOWN_RESUMES_MAX => {
                    // It yielded (it waits for nothing): mid-unwind, the unwind goes
                    // on; otherwise (it ran on as perhaps unwinding, see
                    // `cancel_current`) it is cancelled if it now can be.
                    let p = Rc::as_ptr(task);
                    self.ready.retain(|q| !ptr::eq(q.as_ptr(), p));
                }
                _ => break,
            }
        }
        // A destructor blocked: the task is abandoned here, and the guards in its
        // remaining frames will never drop.
        crate::sync::release_abandoned(task);
    }

    /// Ends every task still alive (system tasks, or all of them after a deadlock):
    /// a task that never ran has its closure dropped; a suspended one is resumed with
    /// a `Cancelled` unwind, running the destructors on its stack. A task parked while
    /// it may be unwinding, or that parks during this unwind (a yield is no park), is
    /// abandoned (see the module's notes for what that costs).
    fn teardown(&self) {
        self.tearing_down.set(true);
        self.driver.borrow_mut().flush();
        self.ready.clear();
        loop {
            let tasks = self.tasks.borrow_mut().drain();
            if tasks.is_empty() {
                break;
            }
            for task in tasks {
                if task.state.get() == State::Done {
                    continue;
                }
                if let Some(body) = task.body.take() {
                    // Never ran: drop its closure here, in the scheduler context (with
                    // no current task, so a destructor that tries to block panics
                    // instead of switching from the wrong stack).
                    drop(body);
                } else if task.state.get() == State::Blocked && task.unwind_now() != Unwind::No {
                    // Parked mid-unwind, or perhaps: resuming it would return from a
                    // wait whose event did not happen (and nothing is left to make it
                    // happen), and a `Cancelled` unwind could abort. Abandoned.
                    crate::sync::release_abandoned(&task);
                } else {
                    self.unwind_at_teardown(&task);
                }
                task.state.set(State::Done);
                // An abandoned task still holds its stack: unmap it here.
                drop(task.stack.take());
            }
            self.ready.clear();
        }
        self.timers.borrow_mut().clear();
        self.stall.forget_all();
        self.live_user.set(0);
        // Every task has ended or been abandoned (an abandoned one never decrements).
        self.cancelling.set(0);
        self.cancels_deferred.set(false);
        self.round_left.set(0);
        self.tearing_down.set(false);
    }
}

/// Sets the thread's runtime pointer for the duration of a run.
struct Enter;

impl Enter {
    fn new(core: &Core) -> Enter {
        CORE.with(|c| {
            assert!(
                c.get().is_null(),
                "taskio: a runtime is already running on this thread (nested run)"
            );
            c.set(core);
        });
        Enter
    }
}

impl Drop for Enter {
    fn drop(&mut self) {
        CORE.with(|c| c.set(ptr::null()));
    }
}

/// One thread's task runtime. Not `Send`: it and its tasks stay on this thread.
pub struct Runtime {
    core: Box<Core>,
    _altstack: overflow::AltStack,
}

impl Runtime {
    /// A runtime with the default settings and the timer-only [`SleepDriver`].
    pub fn new() -> Runtime {
        Runtime::with_driver(Config::default(), Box::new(SleepDriver))
    }

    /// A runtime with the real I/O driver ([`Reactor`]: epoll, eventfd, kernel AIO),
    /// for `net`, `file` and `remote`.
    pub fn with_io(config: Config, io: IoConfig) -> Result<Runtime, IoError> {
        let reactor = Reactor::new(&io).map_err(|source| IoError::Setup {
            op: "epoll_create1/eventfd/io_setup",
            source,
        })?;
        Ok(Runtime::with_driver(config, Box::new(reactor)))
    }

    pub fn with_config(config: Config) -> Runtime {
        Runtime::with_driver(config, Box::new(SleepDriver))
    }

    pub fn with_driver(config: Config, driver: Box<dyn Driver>) -> Runtime {
        assert!(config.max_tasks > 0, "Config::max_tasks must be at least 1");
        overflow::install_handler();
        let core = Box::new(Core {
            ready: RunQueue::with_capacity(64),
            current: Cell::new(ptr::null()),
            sched_ctx: Cell::new(0),
            dead: Cell::new(ptr::null()),
            round_left: Cell::new(0),
            timers: RefCell::new(TimerHeap::default()),
            stacks: RefCell::new(StackPool::new(config.stack_size, config.stack_pool_max)),
            free_tasks: RefCell::new(Vec::new()),
            tasks: RefCell::new(TaskTable::default()),
            driver: RefCell::new(driver),
            config,
            switches: Cell::new(0),
            parks: Cell::new(0),
            next_id: Cell::new(1),
            live_user: Cell::new(0),
            tearing_down: Cell::new(false),
            cancelling: Cell::new(0),
            cancels_deferred: Cell::new(false),
            unwinding_outside: Cell::new(false),
            stall: Arc::new(StallState::default()),
            sched_rng: RefCell::new(None),
            sched_trace: Cell::new(0),
        });
        Runtime {
            core,
            _altstack: overflow::AltStack::ensure(),
        }
    }

    /// Runs `main` as the task named "main" and every task it spawns, until every
    /// non-system task has ended; then unwinds the system tasks and returns `main`'s
    /// value. A deadlock (tasks waiting, nothing able to wake them) returns
    /// [`RunError::Deadlock`] naming each stuck task, after unwinding them all.
    pub fn run<F, T>(&mut self, main: F) -> Result<T, RunError>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        let core: &Core = &self.core;
        let _enter = Enter::new(core);
        core.unwinding_outside.set(std::thread::panicking());
        let _watchdog = core.config.stall_threshold.and_then(|threshold| {
            Watchdog::start(
                core.stall.clone(),
                threshold,
                core.config.stall_sink.clone(),
            )
        });
        let handle = spawn_on(core, Builder::new().name("main"), main)?;
        let outcome = core.schedule();
        core.teardown();
        outcome?;
        match handle.try_take() {
            Some(Ok(v)) => Ok(v),
            Some(Err(e)) => Err(RunError::MainPanicked(e)),
            None => unreachable!("run ended with the main task alive"),
        }
    }

    pub(crate) fn set_sched_rng(&self, rng: Rng) {
        self.core.set_sched_rng(rng);
    }

    pub(crate) fn sched_trace(&self) -> u64 {
        self.core.sched_trace()
    }

    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            tasks_spawned: self.core.next_id.get() - 1,
            tasks_live: self.core.tasks.borrow().live(),
            switches: self.core.switches.get(),
            parks: self.core.parks.get(),
            stacks_pooled: self.core.stacks.borrow().pooled() + self.core.free_tasks.borrow().len(),
            timers_armed: self.core.timers.borrow().len(),
            io: self
                .core
                .driver
                .borrow_mut()
                .io()
                .map(|io| io.stats())
                .unwrap_or_default(),
        }
    }
}

impl Drop for Runtime {
    /// Unwinds any task left by a `run` that was itself unwound by a panic.
    fn drop(&mut self) {
        if self.core.tasks.borrow().live() > 0 && CORE.with(Cell::get).is_null() {
            let _enter = Enter::new(&self.core);
            self.core.teardown();
        }
    }
}

impl Default for Runtime {
    fn default() -> Runtime {
        Runtime::new()
    }
}
