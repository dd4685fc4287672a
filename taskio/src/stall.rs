//! The stall detector: a task that runs longer than a threshold (default 25 ms)
//! without yielding starves every other task of its thread. A watchdog thread per
//! running runtime samples the runtime's switch counter; when it has not moved for
//! the threshold while a task is running, the task is reported, once per stall, by
//! name.
//!
//! The runtime's cost is two relaxed stores per switch (the counter and the running
//! task's id) and, for named tasks only, a map entry while they live.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default threshold of the stall detector.
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_millis(25);

/// One stall: a task that has run for `running_for` without yielding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StallReport {
    pub task_id: u64,
    pub task_name: String,
    /// At least this long (the watchdog samples at a quarter of the threshold).
    pub running_for: Duration,
    pub threshold: Duration,
}

impl std::fmt::Display for StallReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "taskio: task {} (#{}) has run {} ms without yielding (stall threshold {} ms)",
            self.task_name,
            self.task_id,
            self.running_for.as_millis(),
            self.threshold.as_millis()
        )
    }
}

/// Where stall reports go; the default writes them to stderr.
pub type StallSink = Arc<dyn Fn(&StallReport) + Send + Sync>;

/// What the runtime publishes for its watchdog.
#[derive(Default)]
pub(crate) struct StallState {
    pub(crate) switches: AtomicU64,
    /// Id of the running task; 0 in the scheduler.
    pub(crate) current: AtomicU64,
    names: Mutex<HashMap<u64, String>>,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl StallState {
    #[inline(always)]
    pub(crate) fn switched_to(&self, switches: u64, task_id: u64) {
        self.switches.store(switches, Ordering::Relaxed);
        self.current.store(task_id, Ordering::Relaxed);
    }

    pub(crate) fn name_task(&self, id: u64, name: &str) {
        self.lock_names().insert(id, name.to_string());
    }

    pub(crate) fn forget_task(&self, id: u64) {
        self.lock_names().remove(&id);
    }

    pub(crate) fn forget_all(&self) {
        self.lock_names().clear();
    }

    fn lock_names(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.names.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running watchdog; stops (and joins its thread) on drop.
pub(crate) struct Watchdog {
    state: Arc<StallState>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub(crate) fn start(
        state: Arc<StallState>,
        threshold: Duration,
        sink: Option<StallSink>,
    ) -> Option<Watchdog> {
        *state.stop.lock().unwrap_or_else(|p| p.into_inner()) = false;
        let s = state.clone();
        let thread = std::thread::Builder::new()
            .name("taskio-stall".into())
            .spawn(move || watch(&s, threshold, sink))
            .ok()?; // Without a thread there is no detector; the runtime still runs.
        Some(Watchdog {
            state,
            thread: Some(thread),
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        *self.state.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.state.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(state: &StallState, threshold: Duration, sink: Option<StallSink>) {
    let period = (threshold / 4).max(Duration::from_millis(1));
    let mut last = state.switches.load(Ordering::Relaxed);
    let mut since = Instant::now();
    let mut reported = false;
    let mut stop = state.stop.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let (guard, _) = state
            .wake
            .wait_timeout(stop, period)
            .unwrap_or_else(|p| p.into_inner());
        stop = guard;
        if *stop {
            return;
        }
        let now = Instant::now();
        let switches = state.switches.load(Ordering::Relaxed);
        if switches != last {
            last = switches;
            since = now;
            reported = false;
            continue;
        }
        let task_id = state.current.load(Ordering::Relaxed);
        let running_for = now.duration_since(since);
        if task_id != 0 && !reported && running_for >= threshold {
            reported = true;
            let task_name = state
                .lock_names()
                .get(&task_id)
                .cloned()
                .unwrap_or_else(|| format!("task-{task_id}"));
            let report = StallReport {
                task_id,
                task_name,
                running_for,
                threshold,
            };
            match &sink {
                Some(f) => f(&report),
                None => eprintln!("{report}"),
            }
        }
    }
}
