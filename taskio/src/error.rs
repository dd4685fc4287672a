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

/// An I/O call of `net`, `file` or `remote` failed. Each variant names the operation
/// and the object (fd, address, path, offset) so that the message alone says what
/// happened.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The runtime was built without an I/O driver.
    #[error("{op}: this runtime has no I/O driver (build it with Runtime::with_io)")]
    NoDriver { op: &'static str },
    /// The I/O driver could not be set up.
    #[error("I/O driver setup: {op}: {source}")]
    Setup {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {addr}: {source}")]
    Addr {
        op: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} fd {fd}: {source}")]
    Fd {
        op: &'static str,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection before the transfer was complete.
    #[error("{op} fd {fd}: connection closed by the peer after {done} of {want} bytes")]
    Eof {
        op: &'static str,
        fd: i32,
        done: usize,
        want: usize,
    },
    /// A read or write did not finish in time; `done` of `want` bytes had moved, so
    /// a framed stream is out of step and should be closed.
    #[error("{op} fd {fd}: timed out after {timeout:?} ({done} of {want} bytes moved)")]
    TimedOut {
        op: &'static str,
        fd: i32,
        timeout: std::time::Duration,
        done: usize,
        want: usize,
    },
    #[error("connect {addr}: timed out after {timeout:?}")]
    ConnectTimedOut {
        addr: std::net::SocketAddr,
        timeout: std::time::Duration,
    },
    /// A second task tried to read (or write) a stream another task is reading (or
    /// writing): one reader and one writer at a time.
    #[error("{op} fd {fd}: another task is already {busy} this stream")]
    Busy {
        op: &'static str,
        fd: i32,
        busy: &'static str,
    },
    #[error("{op} {path}: {source}")]
    Path {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// open with O_DIRECT was refused by the file system (tmpfs, for one).
    #[error(
        "open {path}: the file system refuses O_DIRECT ({source}); open it without direct I/O or put it on another file system"
    )]
    DirectUnsupported {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{op} {path} (fd {fd}) at offset {offset}, {len} bytes: {source}")]
    At {
        op: &'static str,
        path: std::path::PathBuf,
        fd: i32,
        offset: u64,
        len: usize,
        #[source]
        source: std::io::Error,
    },
    /// An O_DIRECT transfer whose offset or length is not a multiple of 4096.
    #[error(
        "{op} {path} at offset {offset}, {len} bytes: O_DIRECT needs offset and length in multiples of {align}"
    )]
    Unaligned {
        op: &'static str,
        path: std::path::PathBuf,
        offset: u64,
        len: usize,
        align: usize,
    },
    #[error("{op} {path} at offset {offset}: moved {done} of {want} bytes")]
    Short {
        op: &'static str,
        path: std::path::PathBuf,
        offset: u64,
        done: usize,
        want: usize,
    },
}

impl IoError {
    /// The closest `std::io::ErrorKind`, for callers that branch on it.
    pub fn kind(&self) -> std::io::ErrorKind {
        use std::io::ErrorKind as K;
        match self {
            IoError::NoDriver { .. } => K::Unsupported,
            IoError::Setup { source, .. }
            | IoError::Addr { source, .. }
            | IoError::Fd { source, .. }
            | IoError::Path { source, .. }
            | IoError::At { source, .. } => source.kind(),
            IoError::Eof { .. } => K::UnexpectedEof,
            IoError::TimedOut { .. } | IoError::ConnectTimedOut { .. } => K::TimedOut,
            IoError::Busy { .. } => K::ResourceBusy,
            IoError::DirectUnsupported { .. } => K::Unsupported,
            IoError::Unaligned { .. } => K::InvalidInput,
            IoError::Short { .. } => K::WriteZero,
        }
    }
}
