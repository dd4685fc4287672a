//! `Channel<T>`: a bounded, typed FIFO between tasks (libtask's Channel, typed).
//! `send` sleeps while the channel is full, `recv` while it is empty; `close` ends
//! it: sends fail at once, receives drain what is left and then fail.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use crate::sync::WaitQueue;
use crate::sync::select::Selectable;
use crate::task::{TaskRef, WaitReason};

/// The channel was closed; the value comes back.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("send on a closed channel")]
pub struct SendError<T>(pub T);

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrySendError<T> {
    #[error("channel full")]
    Full(T),
    #[error("send on a closed channel")]
    Closed(T),
}

/// The channel is closed and empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("receive on a closed and empty channel")]
pub struct RecvError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TryRecvError {
    #[error("channel empty")]
    Empty,
    #[error("receive on a closed and empty channel")]
    Closed,
}

pub struct Channel<T> {
    buf: RefCell<VecDeque<T>>,
    capacity: usize,
    closed: Cell<bool>,
    senders: WaitQueue,
    receivers: WaitQueue,
}

impl<T> Channel<T> {
    /// A channel holding at most `capacity` values (at least 1).
    pub fn new(capacity: usize) -> Channel<T> {
        assert!(capacity > 0, "channel capacity must be at least 1");
        Channel {
            buf: RefCell::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity,
            closed: Cell::new(false),
            senders: WaitQueue::new(),
            receivers: WaitQueue::new(),
        }
    }

    pub fn send(&self, value: T) -> Result<(), SendError<T>> {
        let mut value = value;
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(v)) => return Err(SendError(v)),
                Err(TrySendError::Full(v)) => {
                    value = v;
                    self.senders.wait(WaitReason::ChannelSend);
                }
            }
        }
    }

    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        if self.closed.get() {
            return Err(TrySendError::Closed(value));
        }
        let mut buf = self.buf.borrow_mut();
        if buf.len() >= self.capacity {
            return Err(TrySendError::Full(value));
        }
        buf.push_back(value);
        drop(buf);
        self.receivers.wake_one();
        Ok(())
    }

    pub fn recv(&self) -> Result<T, RecvError> {
        loop {
            match self.try_recv() {
                Ok(v) => return Ok(v),
                Err(TryRecvError::Closed) => return Err(RecvError),
                Err(TryRecvError::Empty) => self.receivers.wait(WaitReason::ChannelRecv),
            }
        }
    }

    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let v = self.buf.borrow_mut().pop_front();
        match v {
            Some(v) => {
                self.senders.wake_one();
                Ok(v)
            }
            None if self.closed.get() => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }

    /// Closes the channel and wakes every waiting sender and receiver.
    pub fn close(&self) {
        self.closed.set(true);
        self.senders.wake_all();
        self.receivers.wake_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    pub fn len(&self) -> usize {
        self.buf.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.borrow().is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// A `select` arm that is ready when `recv` would not sleep.
    pub fn recv_ready(&self) -> RecvReady<'_, T> {
        RecvReady(self)
    }

    /// A `select` arm that is ready when `send` would not sleep.
    pub fn send_ready(&self) -> SendReady<'_, T> {
        SendReady(self)
    }
}

pub struct RecvReady<'a, T>(&'a Channel<T>);
pub struct SendReady<'a, T>(&'a Channel<T>);

impl<T> Selectable for RecvReady<'_, T> {
    fn is_ready(&self) -> bool {
        !self.0.is_empty() || self.0.is_closed()
    }
    fn register(&self, task: TaskRef) {
        self.0.receivers.push(task);
    }
    fn pass_on(&self) {
        self.0.receivers.wake_one();
    }
}

impl<T> Selectable for SendReady<'_, T> {
    fn is_ready(&self) -> bool {
        self.0.len() < self.0.capacity || self.0.is_closed()
    }
    fn register(&self, task: TaskRef) {
        self.0.senders.push(task);
    }
    fn pass_on(&self) {
        self.0.senders.wake_one();
    }
}
