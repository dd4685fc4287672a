//! The errors of taskio: what a caller can handle (spawn failures, a deadlocked run,
//! a panicked task). Programmer errors (calling a task function outside a runtime)
//! are assertions instead.

use std::any::Any;
use std::fmt;

use crate::task::{TaskId, WaitReason};

/// `spawn` could not create a task; nothing was started and the closure was dropped.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The runtime already runs its configured maximum of live tasks.
    #[error("spawn {name:?}: runtime already has {limit} live tasks (Config::max_tasks)")]
    TooManyTasks { name: String, limit: usize },
    /// mmap of a new stack failed (out of memory or out of mappings).
    #[error("spawn {name:?}: cannot map a stack of {size} bytes: {source}")]
    Stack {
        name: String,
        size: usize,
        #[source]
        source: std::io::Error,
    },
}

/// A task that is blocked when the runtime can no longer wake anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadlockTask {
    pub id: TaskId,
    pub name: String,
    pub waiting_on: WaitReason,
    pub system: bool,
}

impl fmt::Display for DeadlockTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "task {} {:?} waits on {}",
            self.id, self.name, self.waiting_on
        )?;
        if self.system {
            write!(f, " (system)")?;
        }
        Ok(())
    }
}

/// Why [`Runtime::run`](crate::Runtime::run) did not return the main task's value.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Tasks wait but no ready task, timer or I/O can ever wake them.
    #[error("deadlock: {} task(s) wait and nothing can wake them: {}", tasks.len(), list(tasks))]
    Deadlock { tasks: Vec<DeadlockTask> },
    /// The main task panicked (its siblings ran to their end first).
    #[error(transparent)]
    MainPanicked(JoinError),
    /// The main task could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The driver failed while parking (an epoll or clock error).
    #[error("driver park failed: {0}")]
    Driver(#[source] std::io::Error),
}

fn list(tasks: &[DeadlockTask]) -> String {
    tasks
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// A joined task panicked. Holds the panic payload, so a caller may resume it.
#[derive(thiserror::Error)]
#[error("task {id} {name:?} panicked: {message}")]
pub struct JoinError {
    pub id: TaskId,
    pub name: String,
    pub message: String,
    payload: Box<dyn Any + Send + 'static>,
}

impl JoinError {
    pub(crate) fn new(id: TaskId, name: String, payload: Box<dyn Any + Send + 'static>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(non-string panic payload)".to_string()
        };
        JoinError {
            id,
            name,
            message,
            payload,
        }
    }

    /// The panic payload, for `std::panic::resume_unwind`.
    pub fn into_panic(self) -> Box<dyn Any + Send + 'static> {
        self.payload
    }
}

impl fmt::Debug for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinError")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("message", &self.message)
            .finish()
    }
}
