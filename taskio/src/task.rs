//! Tasks: creation, identity, waiting and waking, and the calls a task makes on
//! itself (`yield_now`, `sleep`, task-local storage).
//!
//! A task is a stack (pooled, guard-paged) and a saved context. It runs until it
//! yields, blocks or ends, and then switches straight to the next ready task
//! (libtask's taskswitch), or to the scheduler when none is ready. Waiting is generation-based: a task that blocks hands out
//! [`TaskRef`]s stamped with its current wait generation; the first one to wake it
//! advances the generation, so every other copy (a timer, a second channel in a
//! `select`) becomes stale and waking it does nothing. That is what makes timeouts
//! and `select` free of lost or double wakeups without cancelling anything.

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell, UnsafeCell};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;
use std::rc::Rc;
use std::time::Duration;

use crate::context;
use crate::error::{JoinError, SpawnError};
use crate::sched::{Core, core};
use crate::stack::Stack;
use crate::timer::Instant;

/// The panic payload the runtime unwinds a task with when it tears it down.
pub(crate) struct Cancelled;

/// Whether `payload` (caught by `catch_unwind`) is the runtime ending the task (a
/// teardown or cancellation) rather than a panic: code that catches panics must
/// resume such an unwind at once, doing nothing that waits.
pub fn is_cancellation(payload: &(dyn std::any::Any + Send)) -> bool {
    payload.is::<Cancelled>()
}

/// A task's number, unique within its runtime for the runtime's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What a blocked task waits on; named in deadlock reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    None,
    Sleep,
    Rendez,
    QLock,
    RwLockRead,
    RwLockWrite,
    ChannelSend,
    ChannelRecv,
    Select,
    Barrier,
    Pool,
    Join(TaskId),
    /// I/O of a driver; the string names the operation ("accept", "aio read", ...).
    Io(&'static str),
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::None => write!(f, "nothing"),
            WaitReason::Sleep => write!(f, "sleep"),
            WaitReason::Rendez => write!(f, "Rendez::sleep"),
            WaitReason::QLock => write!(f, "QLock::lock"),
            WaitReason::RwLockRead => write!(f, "RwLock::read"),
            WaitReason::RwLockWrite => write!(f, "RwLock::write"),
            WaitReason::ChannelSend => write!(f, "Channel::send"),
            WaitReason::ChannelRecv => write!(f, "Channel::recv"),
            WaitReason::Select => write!(f, "select"),
            WaitReason::Barrier => write!(f, "Barrier::wait"),
            WaitReason::Pool => write!(f, "Pool::get"),
            WaitReason::Join(id) => write!(f, "join of task {id}"),
            WaitReason::Io(op) => write!(f, "I/O {op}"),
        }
    }
}

/// What the runtime knows of a task's unwinding, as of its last switch away.
///
/// std counts panics in progress per thread, and this thread runs many stacks: while
/// any task is parked mid-unwind, `std::thread::panicking()` is true in every task.
/// So a task's own state is recorded when it switches away (only it ran since its
/// last resume, and a suspended task cannot start an unwind); it decides whether the
/// runtime may start a `Cancelled` unwind in it, which is safe only in a task that is
/// not unwinding already (a panic escaping a destructor run by an unwind aborts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unwind {
    /// Not unwinding: it switched away while no unwind was in progress on the thread,
    /// or it has not run yet.
    No,
    /// Perhaps unwinding from its own panic: it switched away while some unwind was in
    /// progress on the thread (its own, or another task's: the count cannot tell).
    Maybe,
    /// Unwinding with `Cancelled`: the runtime started it (`Core::cancel_current`).
    Cancelled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// In the ready queue (or just yielded and about to be put back there).
    Ready,
    Running,
    /// Parked until a `TaskRef` of the current generation wakes it.
    Blocked,
    Done,
}

/// A task's control block. Blocks of ended tasks are recycled with their stack (see
/// `Core::recycle`), so the identity fields are cells, set anew at each spawn.
pub(crate) struct Task {
    id: Cell<TaskId>,
    /// Written only by `spawn_on` while the block is not in use by any task.
    name: UnsafeCell<Option<Box<str>>>,
    system: Cell<bool>,
    pub(crate) state: Cell<State>,
    wait_gen: Cell<u64>,
    pub(crate) waiting_on: Cell<WaitReason>,
    timed_out: Cell<bool>,
    /// Saved stack pointer while the task is not running (see `context`).
    pub(crate) ctx: Cell<usize>,
    pub(crate) stack: Cell<Option<Stack>>,
    /// The closure and its result slot, until the task first runs.
    pub(crate) body: Cell<Option<Rc<dyn Run>>>,
    locals: RefCell<Vec<(TypeId, Box<dyn Any>)>>,
    /// Lowest address of the stack mapping: the guard page starts here.
    pub(crate) guard_addr: usize,
    /// Index in the runtime's task table.
    pub(crate) slot: Cell<usize>,
    /// The simulated node the task belongs to (0 outside a simulation).
    pub(crate) node: Cell<u32>,
    /// Set when the task must end (its node crashed or stopped): it unwinds the next
    /// time it runs and is not unwinding already (see `Core::cancel_current`).
    pub(crate) cancelled: Cell<bool>,
    pub(crate) unwind: Cell<Unwind>,
    /// The locks this task holds (see `sync::held`), released if it is abandoned.
    pub(crate) held: RefCell<Vec<crate::sync::HeldLock>>,
}

impl Task {
    pub(crate) fn id(&self) -> TaskId {
        self.id.get()
    }

    pub(crate) fn system(&self) -> bool {
        self.system.get()
    }

    fn name_ref(&self) -> Option<&str> {
        // SAFETY: `name` is written only by `spawn_on` before the block is admitted
        // (no reference to it exists then); afterwards it is only read.
        unsafe { (*self.name.get()).as_deref() }
    }

    pub(crate) fn is_named(&self) -> bool {
        self.name_ref().is_some()
    }

    pub(crate) fn name(&self) -> String {
        match self.name_ref() {
            Some(n) => n.to_string(),
            None => format!("task-{}", self.id().0),
        }
    }

    pub(crate) fn name_bytes(&self) -> Option<&[u8]> {
        self.name_ref().map(str::as_bytes)
    }

    /// Whether the block can be reused by another spawn: it owns a stack of the
    /// pooled size and nothing but the task table refers to it.
    pub(crate) fn reusable(self: &Rc<Self>, pooled_size: usize) -> bool {
        Rc::strong_count(self) == 1 && self.stack_size() == Some(pooled_size)
    }

    fn stack_size(&self) -> Option<usize> {
        let stack = self.stack.take();
        let size = stack.as_ref().map(Stack::size);
        self.stack.set(stack);
        size
    }

    /// Makes a task that is not running ready to run now, whatever it waits on: its
    /// wait generation advances, so every `TaskRef` of the wait goes stale.
    pub(crate) fn force_ready(&self) -> bool {
        match self.state.get() {
            State::Blocked => {
                self.wait_gen.set(self.wait_gen.get() + 1);
                self.state.set(State::Ready);
                true
            }
            _ => false,
        }
    }

    /// Records, as the task switches away, whether it may be unwinding (see `Unwind`).
    #[inline(always)]
    pub(crate) fn note_switch_away(&self) {
        if self.unwind.get() != Unwind::Cancelled {
            let maybe = std::thread::panicking();
            self.unwind
                .set(if maybe { Unwind::Maybe } else { Unwind::No });
        }
    }

    /// What is known of the suspended (or just resumed) task's unwinding now. With no
    /// unwind in progress on the thread, it is not unwinding either: a `Maybe` is
    /// settled to `No`, so that an unwind another task starts before this one resumes
    /// does not make it doubtful again.
    pub(crate) fn unwind_now(&self) -> Unwind {
        if self.unwind.get() == Unwind::Maybe && !std::thread::panicking() {
            self.unwind.set(Unwind::No);
        }
        self.unwind.get()
    }

    pub(crate) fn drop_locals(&self) {
        if !self.locals.borrow().is_empty() {
            drop(std::mem::take(&mut *self.locals.borrow_mut()));
        }
    }
}

/// A handle that can wake one task out of one particular wait.
///
/// Obtained with [`TaskRef::current`] just before [`park`]; stale once the task has
/// been woken by any handle of the same wait (waking it is then a no-op).
#[derive(Clone)]
pub struct TaskRef {
    task: Rc<Task>,
    wait: u64,
}

impl TaskRef {
    /// A handle on the running task's next wait.
    #[inline(always)]
    pub fn current() -> TaskRef {
        let task = core().current_rc();
        let wait = task.wait_gen.get();
        TaskRef { task, wait }
    }

    pub fn id(&self) -> TaskId {
        self.task.id()
    }

    /// True while the task is parked in the wait this handle belongs to.
    pub fn is_current_wait(&self) -> bool {
        self.task.state.get() == State::Blocked && self.task.wait_gen.get() == self.wait
    }

    /// Makes the task ready if it still waits in this handle's wait. Returns whether
    /// it did. Must be called on the task's own runtime thread.
    #[inline]
    pub fn wake(self) -> bool {
        self.make_ready(false)
    }

    /// `wake` without giving up the handle (no reference-count traffic).
    #[inline]
    pub(crate) fn wake_ref(&self) -> bool {
        self.make_ready(false)
    }

    pub(crate) fn wake_by_timer(&self) -> bool {
        self.make_ready(true)
    }

    #[inline]
    fn make_ready(&self, timed_out: bool) -> bool {
        if !self.is_current_wait() {
            return false;
        }
        self.task.wait_gen.set(self.wait + 1);
        self.task.state.set(State::Ready);
        self.task.timed_out.set(timed_out);
        core().ready.push_back(NonNull::from(&*self.task));
        true
    }
}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskRef({}, wait {})", self.task.id(), self.wait)
    }
}

/// Parks the running task until a [`TaskRef`] taken for this wait wakes it.
///
/// The caller must have stored a `TaskRef::current()` where a waker will find it,
/// or the task sleeps until the runtime reports a deadlock. Spurious returns do not
/// happen, but callers of the sync primitives re-check their condition anyway.
#[inline(always)]
pub fn park(reason: WaitReason) {
    let core = core();
    let task = core.current_task();
    task.waiting_on.set(reason);
    task.state.set(State::Blocked);
    core.parks.set(core.parks.get() + 1);
    core.switch_from(task);
    task.waiting_on.set(WaitReason::None);
}

/// Parks like [`park`], but also wakes at `deadline`. Returns `true` when woken by a
/// `TaskRef`, `false` when the deadline passed first.
pub fn park_until(reason: WaitReason, deadline: Instant) -> bool {
    let core = core();
    let me = TaskRef::current();
    core.timers.borrow_mut().arm(deadline, me);
    park(reason);
    !core.current_task().timed_out.get()
}

/// Lets every other ready task run once, then returns how many ran (libtask's
/// taskyield). Returns 0 when no other task was ready.
#[inline(always)]
pub fn yield_now() -> usize {
    let core = core();
    let before = core.switches.get();
    let task = core.current_task();
    task.state.set(State::Ready);
    core.ready.push_back(NonNull::from(task));
    core.switch_from(task);
    (core.switches.get() - before - 1) as usize
}

/// Suspends the running task for at least `d` on the runtime's clock (libtask's
/// taskdelay). `sleep(Duration::ZERO)` yields.
pub fn sleep(d: Duration) {
    if d.is_zero() {
        yield_now();
        return;
    }
    let deadline = core().now() + d;
    sleep_until(deadline);
}

/// The runtime's clock: CLOCK_MONOTONIC, or virtual time under simulation. Programs
/// that must run unchanged in the simulator take deadlines from here.
pub fn now() -> Instant {
    core().now()
}

/// Suspends the running task until `deadline` on the runtime's clock.
pub fn sleep_until(deadline: Instant) {
    let core = core();
    if deadline <= core.now() {
        yield_now();
        return;
    }
    let woken = park_until(WaitReason::Sleep, deadline);
    // Only the timer holds a TaskRef of this wait, so only the timer can end it.
    assert!(
        !woken,
        "sleeping task woken by something other than its timer"
    );
}

/// The running task's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    pub id: TaskId,
    pub name: String,
    pub system: bool,
    /// The simulated node the task belongs to (0 outside a simulation).
    pub node: u32,
}

/// Identity of the running task. Panics outside a task.
pub fn current() -> Current {
    let task = core().current_task();
    Current {
        id: task.id(),
        name: task.name(),
        system: task.system(),
        node: task.node.get(),
    }
}

/// Sets the running task's local value of type `T`; returns the previous one.
pub fn local_set<T: 'static>(value: T) -> Option<T> {
    let old = local_take::<T>();
    core()
        .current_task()
        .locals
        .borrow_mut()
        .push((TypeId::of::<T>(), Box::new(value)));
    old
}

/// Removes and returns the running task's local value of type `T`.
pub fn local_take<T: 'static>() -> Option<T> {
    let task = core().current_task();
    let mut locals = task.locals.borrow_mut();
    let i = locals.iter().position(|(t, _)| *t == TypeId::of::<T>())?;
    let (_, boxed) = locals.swap_remove(i);
    boxed.downcast::<T>().ok().map(|b| *b)
}

/// Calls `f` with the running task's local value of type `T`, if set. `f` may itself
/// use task-local storage: the value is taken out for the call and put back after.
pub fn local_with<T: 'static, R>(f: impl FnOnce(Option<&mut T>) -> R) -> R {
    let mut value = local_take::<T>();
    let r = f(value.as_mut());
    if let Some(v) = value {
        local_set(v);
    }
    r
}

/// Creates tasks with a name, a stack size or as system tasks.
#[derive(Debug, Default, Clone)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
    system: bool,
    node: Option<u32>,
}

impl Builder {
    pub fn new() -> Builder {
        Builder::default()
    }

    /// The task's name, in logs, panics and deadlock reports.
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Stack size in bytes (rounded up to pages, plus a guard page). Stacks of the
    /// runtime's default size are pooled; others are mapped and unmapped per task.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// A system task (libtask's tasksystem) does not keep [`Runtime::run`] alive: when
    /// every other task has ended, system tasks are unwound and `run` returns.
    ///
    /// [`Runtime::run`]: crate::Runtime::run
    pub fn system(mut self, system: bool) -> Builder {
        self.system = system;
        self
    }

    /// The simulated node the task belongs to (default: the spawner's).
    pub(crate) fn node(mut self, node: u32) -> Builder {
        self.node = Some(node);
        self
    }

    /// Starts the task on the current runtime. It runs when the caller next suspends.
    pub fn spawn<F, T>(self, f: F) -> Result<JoinHandle<T>, SpawnError>
    where
        F: FnOnce() -> T + 'static,
        T: 'static,
    {
        spawn_on(core(), self, f)
    }
}

/// Starts a task running `f` on the current runtime. Panics outside a runtime.
pub fn spawn<F, T>(f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    spawn_on(core(), Builder::default(), f)
}

/// What a task runs, type-erased for its control block.
pub(crate) trait Run {
    /// Runs the closure (once) and stores its result or its panic.
    fn run(&self);
}

/// What a `JoinHandle` reads, type-erased over the closure type.
trait Slot<T> {
    fn take_result(&self) -> Option<Result<T, Box<JoinError>>>;
    fn has_result(&self) -> bool;
    fn set_waiter(&self, waiter: TaskRef);
}

/// A task's closure and its result slot, in one allocation shared by the task (as
/// `dyn Run`) and its `JoinHandle` (as `dyn Slot<T>`).
struct Job<F, T> {
    f: Cell<Option<F>>,
    /// The error is boxed: a panic is rare, and a small slot keeps moves cheap.
    result: RefCell<Option<Result<T, Box<JoinError>>>>,
    waiter: RefCell<Option<TaskRef>>,
}

impl<F: FnOnce() -> T, T> Run for Job<F, T> {
    fn run(&self) {
        let Some(f) = self.f.take() else {
            unreachable!("task body run twice")
        };
        let result = catch_unwind(AssertUnwindSafe(f));
        let task = core().current_task();
        // Locals may hold task-aware objects whose drop wakes others: drop them here,
        // on the task's stack, while it is still the running task.
        task.drop_locals();
        let result = match result {
            Ok(v) => Ok(v),
            // The runtime is tearing this task down: nobody will join it.
            Err(payload) if payload.is::<Cancelled>() => return,
            Err(payload) => Err(Box::new(JoinError::new(task.id(), task.name(), payload))),
        };
        *self.result.borrow_mut() = Some(result);
        let waiter = self.waiter.borrow_mut().take();
        if let Some(w) = waiter {
            w.wake();
        }
    }
}

impl<F, T> Slot<T> for Job<F, T> {
    fn take_result(&self) -> Option<Result<T, Box<JoinError>>> {
        self.result.borrow_mut().take()
    }
    fn has_result(&self) -> bool {
        self.result.borrow().is_some()
    }
    fn set_waiter(&self, waiter: TaskRef) {
        *self.waiter.borrow_mut() = Some(waiter);
    }
}

/// Owns the right to a task's result. Dropping it detaches the task.
pub struct JoinHandle<T> {
    id: TaskId,
    slot: Rc<dyn Slot<T>>,
}

impl<T> JoinHandle<T> {
    pub fn id(&self) -> TaskId {
        self.id
    }

    pub fn is_finished(&self) -> bool {
        self.slot.has_result()
    }

    /// Waits for the task to end; returns its value, or its panic as an error.
    #[inline]
    pub fn join(self) -> Result<T, JoinError> {
        loop {
            if let Some(r) = self.slot.take_result() {
                return r.map_err(|e| *e);
            }
            self.slot.set_waiter(TaskRef::current());
            park(WaitReason::Join(self.id));
        }
    }

    /// The result if the task has ended, without waiting.
    pub(crate) fn try_take(&self) -> Option<Result<T, JoinError>> {
        self.slot.take_result().map(|r| r.map_err(|e| *e))
    }
}

pub(crate) fn spawn_on<F, T>(core: &Core, b: Builder, f: F) -> Result<JoinHandle<T>, SpawnError>
where
    F: FnOnce() -> T + 'static,
    T: 'static,
{
    let limit = core.config.max_tasks;
    if core.tasks.borrow().live() >= limit {
        return Err(SpawnError::TooManyTasks {
            name: b.name.unwrap_or_default(),
            limit,
        });
    }
    let stack_size = b.stack_size.unwrap_or(core.config.stack_size);
    let task = match core.reuse_task(stack_size) {
        Some(t) => t,
        None => {
            let stack = match core.stacks.borrow_mut().take(stack_size) {
                Ok(s) => s,
                Err(source) => {
                    return Err(SpawnError::Stack {
                        name: b.name.unwrap_or_default(),
                        size: stack_size,
                        source,
                    });
                }
            };
            Rc::new(Task {
                id: Cell::new(TaskId(0)),
                name: UnsafeCell::new(None),
                system: Cell::new(false),
                state: Cell::new(State::Done),
                wait_gen: Cell::new(0),
                waiting_on: Cell::new(WaitReason::None),
                timed_out: Cell::new(false),
                ctx: Cell::new(0),
                guard_addr: stack.guard(),
                stack: Cell::new(Some(stack)),
                body: Cell::new(None),
                locals: RefCell::new(Vec::new()),
                slot: Cell::new(usize::MAX),
                node: Cell::new(0),
                cancelled: Cell::new(false),
                unwind: Cell::new(Unwind::No),
                held: RefCell::new(Vec::new()),
            })
        }
    };
    debug_assert_eq!(Rc::strong_count(&task), 1);
    let id = TaskId(core.next_id.get());
    core.next_id.set(id.0 + 1);
    let job = Rc::new(Job {
        f: Cell::new(Some(f)),
        result: RefCell::new(None),
        waiter: RefCell::new(None),
    });
    task.id.set(id);
    // SAFETY: the block is not admitted yet and nothing else refers to it (its only
    // `Rc` is ours), so no reference to `name` exists.
    unsafe { *task.name.get() = b.name.map(String::into_boxed_str) };
    task.system.set(b.system);
    task.cancelled.set(false);
    task.unwind.set(Unwind::No);
    // A guard that outlived its task keeps the block (its `Rc`) from reuse until it
    // is dropped, and that drop removes its entry: a reused block holds nothing.
    debug_assert!(task.held.borrow().is_empty());
    task.node.set(b.node.unwrap_or_else(|| core.current_node()));
    if let Some(name) = task.name_ref() {
        core.stall.name_task(id.0, name);
    }
    task.state.set(State::Ready);
    task.waiting_on.set(WaitReason::None);
    task.body.set(Some(job.clone()));
    let top = {
        let stack = task.stack.take();
        let top = stack.as_ref().map(Stack::top);
        task.stack.set(stack);
        top.expect("task block without a stack")
    };
    // SAFETY: `top` is the aligned end of the stack this block owns, which no task
    // runs on (the block is fresh or its previous task has ended and left it); the
    // task pointer stays valid while the task lives, because the runtime's table
    // holds an `Rc` until the task has ended and left its stack.
    let ctx = unsafe { context::init_stack(top, task_entry, Rc::as_ptr(&task) as usize) };
    task.ctx.set(ctx);
    core.admit(task);
    Ok(JoinHandle { id, slot: job })
}

/// Where every task starts, on its own stack (called by the trampoline).
unsafe extern "C" fn task_entry(task: usize) -> ! {
    let core = core();
    core.after_switch();
    // SAFETY: `task` is the pointer `spawn_on` passed to `init_stack`; the table's
    // `Rc` keeps the task alive until `exit_current` has switched away for good.
    let task = unsafe { &*(task as *const Task) };
    let body = task.body.take();
    let Some(body) = body else {
        unreachable!("task {} started twice", task.id())
    };
    body.run();
    drop(body);
    core.exit_current(task)
}
