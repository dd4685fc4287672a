//! The event queue of a simulation (what happens at which virtual instant) and the
//! scheduler's side of the driver: `park` moves time to the next event.

use super::*;
use crate::driver::{Driver, Io};

pub(super) enum EvKind {
    /// Wake whoever waits on (fd, interest).
    Ready(RawFd, Interest),
    /// A connection reaches its listener (or is refused).
    Arrive(u64),
    FileDone {
        op: Rc<FileOp>,
        node: u32,
        epoch: u64,
        path: PathBuf,
        dsync: bool,
        /// The next write id when it was submitted: a flush covers the writes
        /// below it (those completed before it was issued).
        barrier: u64,
    },
}

pub(super) struct Ev {
    pub(super) at: u64,
    pub(super) seq: u64,
    pub(super) kind: EvKind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

impl SimState {
    pub(super) fn at(&mut self, at: u64, kind: EvKind) {
        self.seq += 1;
        self.events.push(Reverse(Ev {
            at,
            seq: self.seq,
            kind,
        }));
    }

    /// Processes the events due at or before `now`; returns how many tasks woke.
    pub(super) fn process_due(&mut self) -> usize {
        let mut woken = 0;
        while let Some(Reverse(ev)) = self.events.peek() {
            if ev.at > self.now {
                break;
            }
            let Some(Reverse(ev)) = self.events.pop() else {
                break;
            };
            woken += self.process(ev);
        }
        woken
    }

    pub(super) fn process(&mut self, ev: Ev) -> usize {
        match ev.kind {
            EvKind::Ready(fd, interest) => {
                mix(
                    &mut self.trace,
                    &[1, ev.at, fd as u64, interest_key(interest) as u64],
                );
                usize::from(self.wake(fd, interest))
            }
            EvKind::Arrive(id) => {
                mix(&mut self.trace, &[2, ev.at, id]);
                self.arrive(id)
            }
            EvKind::FileDone {
                op,
                node,
                epoch,
                path,
                dsync,
                barrier,
            } => {
                mix(&mut self.trace, &[3, ev.at, node as u64]);
                self.file_ops -= 1;
                self.stats.aio_completed += 1;
                let res = if self.nodes[node as usize].epoch != epoch {
                    // The node crashed with this operation in flight: it never
                    // reached the disk.
                    -(libc::EIO as i64)
                } else {
                    self.execute(&op, node, &path, dsync, barrier)
                };
                mix(&mut self.trace, &[res as u64]);
                op.complete(res);
                let mut woken = 1;
                while let Some(w) = self.slot_waiters.pop_front() {
                    if w.wake() {
                        woken += 1;
                        break;
                    }
                }
                woken
            }
        }
    }
}

impl Driver for SimDriver {
    fn now(&self) -> Instant {
        self.state.borrow().now()
    }

    fn park(&mut self, deadline: Option<Instant>) -> io::Result<()> {
        let mut guard = self.state.borrow_mut();
        let s = &mut *guard;
        s.stats.polls += 1;
        loop {
            let next = s.events.peek().map(|Reverse(e)| e.at);
            let due_by_deadline = |t: u64| deadline.is_none_or(|d| t <= d.as_nanos());
            match next {
                Some(t) if due_by_deadline(t) || t <= s.now => {
                    s.now = s.now.max(t);
                    if s.process_due() > 0 {
                        return Ok(());
                    }
                    // Nothing woke (stale events): look further.
                }
                _ => {
                    if let Some(d) = deadline {
                        s.now = s.now.max(d.as_nanos());
                    }
                    s.stats.polls_empty += 1;
                    return Ok(());
                }
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.state.borrow().events.len()
    }

    fn io(&mut self) -> Option<&mut dyn Io> {
        Some(self)
    }
}
