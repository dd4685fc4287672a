//! The stall detector: a task that runs longer than a threshold (default 25 ms)
//! without yielding starves every other task of its thread. A watchdog thread per
//! running runtime samples the runtime's switch counter; when it has not moved for
//! the threshold while a task is running, the task is reported, once per stall, by
//! name.
//!
//! The runtime's cost is two relaxed stores per switch (the counter and the running
//! task's id) and, for named tasks only, a map entry while they live.
//!
//! A parked runtime runs no task, so there is nothing to watch: after
//! [`IDLE_SAMPLES`] samples that found it parked, the watchdog sleeps until the
//! runtime wakes (`unparked` wakes it then), instead of waking four times a threshold
//! for nothing (an idle cvad has a runtime per device, per session thread and more:
//! their watchdogs were 3% of a CPU). Each blocking park costs the runtime two
//! sequentially consistent stores and a load, and the first wake-up after an idle
//! spell a futex wake.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Samples in a row that find the runtime parked before its watchdog sleeps until it
/// wakes.
const IDLE_SAMPLES: u32 = 4;

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
    /// The runtime is blocked in its driver's park.
    parked: AtomicBool,
    /// The watchdog sleeps until the runtime wakes (or stops).
    asleep: AtomicBool,
    /// Samples the watchdog took (for tests).
    samples: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

impl StallState {
    #[inline(always)]
    pub(crate) fn switched_to(&self, switches: u64, task_id: u64) {
        self.switches.store(switches, Ordering::Relaxed);
        self.current.store(task_id, Ordering::Relaxed);
    }

    /// The runtime is about to block in its driver's park.
    pub(crate) fn parking(&self) {
        self.parked.store(true, Ordering::SeqCst);
    }

    /// The runtime is back from its driver's park: a sleeping watchdog wakes. (The
    /// watchdog stores `asleep` before it loads `parked`, this stores `parked` before
    /// it loads `asleep`, all sequentially consistent: one of the two sees the
    /// other's store, so the watchdog never sleeps through a running runtime.)
    #[inline]
    pub(crate) fn unparked(&self) {
        self.parked.store(false, Ordering::SeqCst);
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            // Under the lock: the watchdog holds it from its check to its wait.
            let _stop = self.stop.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
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
    let mut idle = 0;
    let mut stop = state.stop.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if idle >= IDLE_SAMPLES {
            idle = 0;
            state.asleep.store(true, Ordering::SeqCst);
            if state.parked.load(Ordering::SeqCst) {
                stop = state
                    .wake
                    .wait_while(stop, |stop| !*stop && state.asleep.load(Ordering::SeqCst))
                    .unwrap_or_else(|p| p.into_inner());
            }
            state.asleep.store(false, Ordering::SeqCst);
            if *stop {
                return;
            }
            // Whatever runs now started after the wake-up.
            last = state.switches.load(Ordering::Relaxed);
            since = Instant::now();
            reported = false;
        }
        let (guard, _) = state
            .wake
            .wait_timeout(stop, period)
            .unwrap_or_else(|p| p.into_inner());
        stop = guard;
        if *stop {
            return;
        }
        state.samples.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let switches = state.switches.load(Ordering::Relaxed);
        if state.parked.load(Ordering::SeqCst) && switches == last {
            idle += 1;
        } else {
            idle = 0;
        }
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

#[cfg(test)]
mod tests {
    use super::{StallSink, StallState, Watchdog};
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    /// Waits, bounded, until `cond` holds.
    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "{what}: not after 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_watchdog_sleeps_while_its_runtime_is_parked_and_wakes_with_it() {
        let state = Arc::new(StallState::default());
        state.parking();
        let sink: StallSink = Arc::new(|_| {});
        let threshold = Duration::from_millis(4);
        let watchdog = Watchdog::start(state.clone(), threshold, Some(sink));
        assert!(watchdog.is_some(), "the watchdog thread started");
        wait_until("the watchdog sleeps", || {
            state.asleep.load(Ordering::SeqCst)
        });
        let samples = state.samples.load(Ordering::Relaxed);
        // Five sample periods: an awake watchdog would have sampled.
        std::thread::sleep(threshold * 5 / 4);
        assert_eq!(state.samples.load(Ordering::Relaxed), samples);
        state.unparked();
        wait_until("the watchdog samples again", || {
            state.samples.load(Ordering::Relaxed) > samples
        });
        assert!(!state.asleep.load(Ordering::SeqCst));
        drop(watchdog);
    }
}
