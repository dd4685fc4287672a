//! The log writer: group commit over the circular log of [`crate::record`].
//!
//! Many tasks [`append`](LogWriter::append) records; each record is encoded at once
//! into the *filling* buffer, a run of up to [`LOG_WRITE_BLOCKS_MAX`] consecutive log
//! blocks taken from a [`Pool`] of [`LOG_BUFFERS`] aligned buffers. One writer task
//! (of [`LOG_WRITERS`]) takes the whole filling buffer, seals its blocks, writes them at the log tail
//! with one write and one fdatasync, and wakes every waiter (`Rendez::wakeup_all`).
//! While that write is in flight the next appends fill the other buffer: they ride on
//! the next write together, which is the group commit.
//!
//! # When the writer writes
//!
//! Only when someone needs it: a task waits for durability
//! ([`wait_durable`](LogWriter::wait_durable)), an appender waits for room, the
//! buffer is full, the log closes, or the oldest unwritten record has waited
//! [`LAZY_WRITE_DELAY`]. Records nobody waits for (COMMIT, ABORT, CLEAN) ride on the
//! next write someone needs: at one writer, a write and its commit cost one log
//! write, not two.
//!
//! # Why write + fdatasync, and what recovery must check
//!
//! The fdatasync (a device cache flush) makes durable the log blocks *and* every
//! write completed before it was issued, such as the payloads whose PREPAREs the
//! blocks carry. writep1 appends its PREPARE, declares its payload write
//! ([`LogWriter::payload_write`]) and writes the payload: the log write starts at
//! once, in flight together with the payload's, and the writer issues the flush only
//! once both ended (one trip to the disk and one flush, as a plain write +
//! fdatasync). One flush per group commit is the cost. An RWF_DSYNC write would not do: a device with FUA makes that write alone
//! durable. The price: a crash may keep log blocks that were never flushed and drop
//! the payloads of their PREPAREs. Such a PREPARE's writep1 never returned (it waits
//! for the flush), so no COMMIT follows it; recovery reads each in-doubt payload
//! and marks a tran whose payload fails its CRC32C damaged ([`crate::recover`]): a
//! vSSD that is the sole copy aborts it, a DTM with a replica may repair it.
//!
//! How the rules of [`crate::record`] are kept:
//! 1. *No overrun*: a block `seq` is started only if `seq < oldest_needed + blocks`;
//!    otherwise appenders wait for [`set_oldest_needed`](LogWriter::set_oldest_needed).
//! 2. *Acknowledge in order*: [`LOG_WRITERS`] writer tasks, each one write in
//!    flight; `durable_end` moves past a write only once it and every write before
//!    it completed.
//! 3. *Never rewrite a durable block*: a taken buffer is never appended to again; the
//!    next buffer starts at the next seq.
//! 4. *Write bounds*: a buffer holds at most [`LOG_WRITE_BLOCKS_MAX`] blocks and never
//!    crosses the end of the region; no block is started [`LOG_BLOCKS_IN_FLIGHT_MAX`]
//!    or more past `durable_end`. The bound is on what is durable, not on what is in
//!    flight: while one write stalls, the writes after it complete, and without the
//!    bound they would go on making blocks durable past the stalled one, beyond what
//!    recovery scrubs if the stalled one is lost. [`LOG_WRITERS`] writes of the
//!    largest size fit in the bound (8 x 64 <= 512 blocks), so it costs nothing
//!    while no write stalls.
//! 5. *Scrub after recovery*: [`crate::recover::scrub_after_recovery`] zeroes what
//!    [`LogRing::scrub_after_recovery`] names; recovery calls it before
//!    [`LogWriter::start`].
//!
//! After an I/O error the log is failed for good: every waiter and every later
//! append gets an error, and the vSSD must stop (its durable state is unknown).

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;

use taskio::file::File;
use taskio::{AlignedBuf, Builder, IoError, Pool, PoolItem, Rendez};

use crate::background::Background;
use crate::error::VssdError;
use crate::layout::Geometry;
use crate::record::{
    BLOCK_RECORDS_LEN_MAX, LOG_BLOCK_SIZE, LOG_BLOCKS_IN_FLIGHT_MAX, LOG_WRITE_BLOCKS_MAX,
    LogBlockWriter, LogRing, Record, block_records_len,
};

/// Writer tasks: each writes one buffer at a time, so this many log writes (and their
/// flushes) are in flight at once. A device completes concurrent flushes together:
/// at many appenders, more smaller groups in flight beat one large group.
pub const LOG_WRITERS: usize = 8;
/// Log buffers: one per writer, and one filling.
pub const LOG_BUFFERS: usize = LOG_WRITERS + 1;
/// Bytes of one log buffer: the largest write.
pub const LOG_BUFFER_BYTES: usize = LOG_WRITE_BLOCKS_MAX as usize * LOG_BLOCK_SIZE;

const _: () = assert!(LOG_BUFFERS >= 2); // one fills while the other is written
// Every writer may have a write of the largest size in flight without hitting rule 4.
const _: () = assert!(LOG_WRITERS as u64 * LOG_WRITE_BLOCKS_MAX <= LOG_BLOCKS_IN_FLIGHT_MAX);

/// Where an appended record lives: block `seq`, record `index` in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordPos {
    pub seq: u64,
    pub index: u32,
}

/// Counters of one log writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records accepted by `append`.
    pub records_appended: u64,
    /// Records made durable.
    pub records_written: u64,
    /// Blocks made durable.
    pub blocks_written: u64,
    /// Write calls (each one durable write).
    pub writes: u64,
    /// Most blocks one write carried.
    pub write_blocks_max: u64,
    /// Times an appender waited for room (buffer full or log full).
    pub appends_waited: u64,
}

impl LogStats {
    /// The group-commit factor: records made durable per write.
    pub fn records_per_write(&self) -> f64 {
        if self.writes == 0 {
            0.0
        } else {
            self.records_written as f64 / self.writes as f64
        }
    }
}

/// The buffer being filled by appenders.
struct Filling {
    buf: PoolItem<AlignedBuf>,
    seq_first: u64,
    blocks: u64,
    records: u64,
    /// Payload writes in flight that PREPAREs of this buffer depend on: its blocks
    /// are written at once, but flushed only when this is zero.
    payloads: Rc<Cell<u32>>,
}

/// A payload write that a PREPARE in the log depends on (see
/// [`LogWriter::payload_write`]): while it lives, the flush of the log write holding
/// the PREPARE waits. Drop it when the payload write has ended, done or failed.
pub struct PayloadWrite {
    pending: Rc<Cell<u32>>,
    inner: Rc<Inner>,
}

impl Drop for PayloadWrite {
    fn drop(&mut self) {
        let left = self.pending.get() - 1;
        self.pending.set(left);
        if left == 0 {
            self.inner.payloads.wakeup_all();
        }
    }
}

struct Inner {
    file: Rc<File>,
    ring: LogRing,
    /// The format's CRC seed ([`crate::layout::Superblock::crc_seed`]).
    seed: u32,
    /// Records go to a block of at least this seq: [`LogWriter::cut`] raises it so
    /// that the open block takes no more records.
    fresh_from: Cell<u64>,
    log_offset: u64,
    pool: Pool<AlignedBuf>,
    filling: RefCell<Option<Filling>>,
    /// The seq the next started block gets (after the filling buffer's blocks).
    seq_next: Cell<u64>,
    /// Every block before this is durable.
    durable_end: Cell<u64>,
    oldest_needed: Cell<u64>,
    /// Why the log failed, once it has.
    failed: RefCell<Option<String>>,
    closed: Cell<bool>,
    /// Writer tasks still running; the log is done when none is.
    writers_alive: Cell<usize>,
    /// Writes completed beyond `durable_end` (another write before them still in
    /// flight): first seq -> end seq.
    completed: RefCell<std::collections::BTreeMap<u64, u64>>,
    /// The highest seq a task waits to be durable.
    wanted: Cell<u64>,
    /// When the filling buffer got its first record.
    first_pending: Cell<Option<taskio::Instant>>,
    /// The writer tasks are counted here (with the vSSD's other background tasks).
    background: Background,
    /// The writer task sleeps here until records are pending.
    work: Rendez,
    /// Waiters for durability.
    durable: Rendez,
    /// Writers waiting for the payload writes of their buffer before the flush.
    payloads: Rendez,
    /// Appenders waiting for a buffer or for room in the log.
    room: Rendez,
    stats: Cell<LogStats>,
}

/// The log writer of one vSSD, shared by the tasks of one runtime.
pub struct LogWriter {
    inner: Rc<Inner>,
}

impl LogWriter {
    /// Starts the writer task. `seq_next` is the seq of the first block this run
    /// writes (after recovery: the end of the log, scrubbed); `oldest_needed` the seq
    /// of the newest durable checkpoint.
    ///
    /// # Panics
    /// If the geometry's log is not a valid [`LogRing`], if the seqs are out of order
    /// or the log already overran, or outside a taskio runtime.
    pub fn start(
        file: Rc<File>,
        geometry: &Geometry,
        seed: u32,
        seq_next: u64,
        oldest_needed: u64,
    ) -> Rc<LogWriter> {
        let ring = LogRing::new(geometry.log_blocks())
            .unwrap_or_else(|e| panic!("log writer on {}: {e}", file.path().display()));
        ring.blocks_free(seq_next, oldest_needed); // asserts the order and no overrun
        assert!(seq_next > 0, "log seq 0 is never a block");
        let inner = Rc::new(Inner {
            file,
            ring,
            seed,
            fresh_from: Cell::new(seq_next),
            log_offset: geometry.log_offset(),
            pool: AlignedBuf::pool(LOG_BUFFERS, LOG_BUFFER_BYTES),
            filling: RefCell::new(None),
            seq_next: Cell::new(seq_next),
            durable_end: Cell::new(seq_next),
            oldest_needed: Cell::new(oldest_needed),
            failed: RefCell::new(None),
            closed: Cell::new(false),
            writers_alive: Cell::new(LOG_WRITERS),
            completed: RefCell::new(std::collections::BTreeMap::new()),
            wanted: Cell::new(0),
            first_pending: Cell::new(None),
            background: Background::default(),
            work: Rendez::new(),
            durable: Rendez::new(),
            payloads: Rendez::new(),
            room: Rendez::new(),
            stats: Cell::new(LogStats::default()),
        });
        for _ in 0..LOG_WRITERS {
            let task_inner = inner.clone();
            let guard = inner.background.enter();
            // System tasks: they never keep Runtime::run alive on their own.
            let spawned = Builder::new()
                .name("vssd-log-writer")
                .system(true)
                .spawn(move || {
                    writer_loop(&task_inner);
                    // The file closes with the last reference: before the count drops.
                    drop(task_inner);
                    drop(guard);
                });
            if let Err(e) = spawned {
                panic!("log writer task: {e}");
            }
        }
        Rc::new(LogWriter { inner })
    }

    /// Adds `record` to the log buffer and returns where it lives. Waits only while
    /// no buffer is free or the log is full. Errs once the log failed or closed.
    pub fn append(&self, record: &Record) -> Result<RecordPos, VssdError> {
        let inner = &*self.inner;
        record
            .validate()
            .unwrap_or_else(|fault| panic!("append of invalid log record {record:?}: {fault}"));
        let mut waited = false;
        loop {
            inner.check_usable("log append")?;
            match inner.try_append(record) {
                Some(pos) => {
                    inner.count(|s| s.records_appended += 1);
                    return Ok(pos);
                }
                None => {
                    if !waited {
                        waited = true;
                        inner.count(|s| s.appends_waited += 1);
                    }
                    // A full buffer is the writer's to take.
                    inner.work.wakeup();
                    inner.room.sleep();
                }
            }
        }
    }

    /// Where `record` would go if appended now: the seq of its block, or `None` if
    /// an append would wait (no buffer, the buffer full, or the log full). Changes
    /// nothing; [`append_at`](LogWriter::append_at) a record of the same length with
    /// no park in between puts it there (else [`wait_room`](LogWriter::wait_room)).
    pub fn seq_for(&self, record: &Record) -> Option<u64> {
        self.inner.place(record.encoded_len())
    }

    /// Appends `record` at the seq [`seq_for`](LogWriter::seq_for) gave for a record
    /// of its length, with no park since (so without placing it again).
    pub fn append_at(&self, record: &Record, seq: u64) -> Result<RecordPos, VssdError> {
        let inner = &*self.inner;
        record
            .validate()
            .unwrap_or_else(|fault| panic!("append of invalid log record {record:?}: {fault}"));
        inner.check_usable("log append")?;
        let pos = inner.append_at(record, seq);
        inner.count(|s| s.records_appended += 1);
        Ok(pos)
    }

    /// Declares a payload write that the record at `pos`, just appended (no park
    /// since), depends on: the log write holding `pos` starts at once, so that it and
    /// the payload write are in flight together, but its flush waits until the
    /// returned value is dropped, so the one fdatasync covers both (module doc).
    ///
    /// # Panics
    /// If `pos` is not in the buffer being filled (a park since its append).
    pub fn payload_write(&self, pos: RecordPos) -> PayloadWrite {
        let inner = &self.inner;
        let filling = inner.filling.borrow();
        let pending = match filling.as_ref() {
            Some(f) if (f.seq_first..f.seq_first + f.blocks).contains(&pos.seq) => {
                f.payloads.clone()
            }
            _ => panic!("payload write for log record {pos:?}, no longer in the filling buffer"),
        };
        pending.set(pending.get() + 1);
        if inner.wanted.get() < pos.seq {
            inner.wanted.set(pos.seq);
            inner.work.wakeup();
        }
        PayloadWrite {
            pending,
            inner: self.inner.clone(),
        }
    }

    /// Parks until an append may find room again (a buffer was taken or written,
    /// or the checkpoint advanced). Errs once the log failed or closed.
    pub fn wait_room(&self) -> Result<(), VssdError> {
        let inner = &*self.inner;
        inner.check_usable("log append")?;
        inner.count(|s| s.appends_waited += 1);
        inner.work.wakeup();
        inner.room.sleep();
        inner.check_usable("log append")
    }

    /// Ends the open block: every record appended so far is in a block before the
    /// returned seq, every later record in a block at or after it (the seq an exact
    /// checkpoint covers up to).
    pub fn cut(&self) -> u64 {
        let inner = &*self.inner;
        let seq = inner.seq_next.get();
        inner.fresh_from.set(seq);
        seq
    }

    /// The seq the next fresh block gets.
    pub fn seq_next(&self) -> u64 {
        self.inner.seq_next.get()
    }

    /// Blocks the log holds in all.
    pub fn blocks(&self) -> u64 {
        self.inner.ring.blocks()
    }

    /// Blocks started since the oldest needed one: how full the log is.
    pub fn blocks_used(&self) -> u64 {
        self.inner.seq_next.get() - self.inner.oldest_needed.get()
    }

    /// Parks until the block holding `pos` (and every block before it) is durable.
    pub fn wait_durable(&self, pos: RecordPos) -> Result<(), VssdError> {
        let inner = &*self.inner;
        if inner.durable_end.get() <= pos.seq && inner.wanted.get() < pos.seq {
            inner.wanted.set(pos.seq);
            inner.work.wakeup();
        }
        loop {
            if inner.durable_end.get() > pos.seq {
                return Ok(());
            }
            if let Some(why) = &*inner.failed.borrow() {
                return Err(inner.failure("log wait", why));
            }
            if inner.writers_alive.get() == 0 {
                return Err(inner.failure("log wait", "the log writer was closed"));
            }
            inner.durable.sleep();
        }
    }

    /// [`append`](LogWriter::append) then [`wait_durable`](LogWriter::wait_durable).
    pub fn append_durable(&self, record: &Record) -> Result<RecordPos, VssdError> {
        let pos = self.append(record)?;
        self.wait_durable(pos)?;
        Ok(pos)
    }

    /// The checkpoint advanced: blocks before `seq` are no longer needed.
    ///
    /// # Panics
    /// If `seq` moves back or past the blocks started so far.
    pub fn set_oldest_needed(&self, seq: u64) {
        let inner = &*self.inner;
        assert!(
            seq >= inner.oldest_needed.get(),
            "oldest needed log seq moves back from {} to {seq}",
            inner.oldest_needed.get()
        );
        inner.ring.blocks_free(inner.seq_next.get(), seq);
        inner.oldest_needed.set(seq);
        inner.room.wakeup_all();
    }

    /// Every block before this seq is durable.
    pub fn durable_end(&self) -> u64 {
        self.inner.durable_end.get()
    }

    /// The newest durable block's seq (`durable_end - 1`).
    pub fn durable_seq(&self) -> u64 {
        self.inner.durable_end.get() - 1
    }

    pub fn oldest_needed(&self) -> u64 {
        self.inner.oldest_needed.get()
    }

    pub fn stats(&self) -> LogStats {
        self.inner.stats.get()
    }

    /// Whether the log failed on an I/O error.
    pub fn is_failed(&self) -> bool {
        self.inner.failed.borrow().is_some()
    }

    /// The count of the writer tasks, to which the vSSD adds its own background tasks.
    pub fn background(&self) -> Background {
        self.inner.background.clone()
    }

    /// Refuses further appends; the writer writes what is pending, then ends.
    pub fn close(&self) {
        self.inner.closed.set(true);
        self.inner.work.wakeup_all();
        self.inner.room.wakeup_all();
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        self.close();
    }
}

impl Inner {
    fn count(&self, f: impl FnOnce(&mut LogStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn failure(&self, op: &'static str, why: &str) -> VssdError {
        VssdError::Io {
            op,
            path: self.file.path().to_path_buf(),
            source: IoError::Path {
                op: "log write",
                path: self.file.path().to_path_buf(),
                source: io::Error::other(format!("the log failed: {why}")),
            },
        }
    }

    fn check_usable(&self, op: &'static str) -> Result<(), VssdError> {
        if let Some(why) = &*self.failed.borrow() {
            return Err(self.failure(op, why));
        }
        if self.closed.get() {
            return Err(self.failure(op, "the log writer was closed"));
        }
        Ok(())
    }

    /// The seq a record of `len` bytes would get now, if it need not wait: the open
    /// block's if the record fits there (and no cut closed it), else a fresh block's
    /// within one write, before the wrap, without overrun, and less than
    /// [`LOG_BLOCKS_IN_FLIGHT_MAX`] past the durable end (rule 4).
    fn place(&self, len: usize) -> Option<u64> {
        let filling = self.filling.borrow();
        let (seq_first, blocks) = match filling.as_ref() {
            Some(f) => (f.seq_first, f.blocks),
            None if self.pool.may_get() => (self.seq_next.get(), 0),
            None => return None,
        };
        if let Some(f) = filling.as_ref().filter(|f| f.blocks > 0) {
            let seq_last = f.seq_first + f.blocks - 1;
            let at = (f.blocks - 1) as usize * LOG_BLOCK_SIZE;
            let used = block_records_len(&f.buf[at..at + LOG_BLOCK_SIZE]);
            if seq_last >= self.fresh_from.get() && used + len <= BLOCK_RECORDS_LEN_MAX {
                return Some(seq_last);
            }
        }
        let seq = seq_first + blocks;
        let room = blocks < LOG_WRITE_BLOCKS_MAX
            && blocks < self.ring.blocks_until_wrap(seq_first)
            && self.ring.blocks_free(seq, self.oldest_needed.get()) > 0
            && seq < self.durable_end.get() + LOG_BLOCKS_IN_FLIGHT_MAX;
        room.then_some(seq)
    }

    /// Encodes `record` into the filling buffer where [`Inner::place`] says, or says
    /// the caller must wait.
    fn try_append(&self, record: &Record) -> Option<RecordPos> {
        let seq = self.place(record.encoded_len())?;
        Some(self.append_at(record, seq))
    }

    /// Encodes `record` into block `seq`, which [`Inner::place`] gave for it with no
    /// park since.
    fn append_at(&self, record: &Record, seq: u64) -> RecordPos {
        debug_assert_eq!(self.place(record.encoded_len()), Some(seq));
        let mut slot = self.filling.borrow_mut();
        let filling = slot.get_or_insert_with(|| Filling {
            buf: self.pool.try_get().expect("place saw a buffer to take"),
            seq_first: self.seq_next.get(),
            blocks: 0,
            records: 0,
            payloads: Rc::new(Cell::new(0)),
        });
        if filling.records == 0 {
            // The first record waiting: the writer arms its lazy deadline.
            self.first_pending.set(Some(taskio::now()));
            self.work.wakeup();
        }
        let fresh = seq == filling.seq_first + filling.blocks;
        let at = (seq - filling.seq_first) as usize * LOG_BLOCK_SIZE;
        let buf = &mut filling.buf[at..at + LOG_BLOCK_SIZE];
        let mut block = if fresh {
            assert_eq!(seq, self.seq_next.get());
            filling.blocks += 1;
            self.seq_next.set(seq + 1);
            LogBlockWriter::new(buf, seq, self.seed)
        } else {
            LogBlockWriter::resume(buf, self.seed)
        };
        let index = block.record_count() as u32;
        block.append(record).expect("place found room");
        filling.records += 1;
        RecordPos { seq, index }
    }
}

/// Most time a record nobody waits for stays unwritten.
pub const LAZY_WRITE_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

/// When the writer should write the filling buffer.
enum Due {
    /// Nothing to write.
    Empty,
    /// Someone needs it.
    Now,
    /// Only records nobody waits for: at this instant at the latest.
    At(taskio::Instant),
}

impl Inner {
    fn due(&self) -> Due {
        let filling = self.filling.borrow();
        let Some(f) = filling.as_ref().filter(|f| f.blocks > 0) else {
            return Due::Empty;
        };
        if self.closed.get() || self.wanted.get() >= f.seq_first || self.room.has_sleepers() {
            return Due::Now;
        }
        match self.first_pending.get() {
            Some(first) => Due::At(first + LAZY_WRITE_DELAY),
            None => Due::Now,
        }
    }
}

/// The writer task: takes the filling buffer, writes it durably, wakes the waiters.
fn writer_loop(inner: &Inner) {
    // After a failed write nothing more is written: its blocks may be missing, so
    // no later block could ever be acknowledged (rule 2).
    while inner.failed.borrow().is_none() {
        match inner.due() {
            Due::Empty if inner.closed.get() => break,
            Due::Empty => {
                inner.work.sleep();
                continue;
            }
            Due::At(deadline) if taskio::now() < deadline => {
                inner.work.sleep_until(deadline);
                continue;
            }
            Due::At(_) | Due::Now => {}
        }
        let taken = inner.filling.borrow_mut().take_if(|f| f.blocks > 0);
        let Some(mut filling) = taken else {
            continue;
        };
        inner.first_pending.set(None);
        // Appenders that waited for this buffer to go may start the next one.
        inner.room.wakeup_all();
        let blocks = filling.blocks as usize;
        for i in 0..blocks {
            LogBlockWriter::resume(
                &mut filling.buf[i * LOG_BLOCK_SIZE..][..LOG_BLOCK_SIZE],
                inner.seed,
            )
            .seal();
        }
        filling.buf.set_len(blocks * LOG_BLOCK_SIZE);
        let offset = inner.log_offset + inner.ring.offset_bytes(filling.seq_first);
        assert!(filling.blocks <= inner.ring.blocks_until_wrap(filling.seq_first));
        assert!(filling.seq_first >= inner.durable_end.get());
        // One flush: these blocks and every payload completed before it is issued
        // (module doc), so it waits for the payload writes the PREPAREs depend on.
        let written = inner.file.pwrite(&filling.buf, offset).and_then(|()| {
            while filling.payloads.get() > 0 {
                inner.payloads.sleep();
            }
            inner.file.fdatasync()
        });
        filling.buf.set_len(LOG_BUFFER_BYTES);
        match written {
            Ok(()) => {
                // Durable in order (rule 2): past this write only once every write
                // before it completed too.
                let mut completed = inner.completed.borrow_mut();
                completed.insert(filling.seq_first, filling.seq_first + filling.blocks);
                while let Some(end) = completed.remove(&inner.durable_end.get()) {
                    inner.durable_end.set(end);
                }
                drop(completed);
                inner.count(|s| {
                    s.writes += 1;
                    s.blocks_written += filling.blocks;
                    s.records_written += filling.records;
                    s.write_blocks_max = s.write_blocks_max.max(filling.blocks);
                });
            }
            Err(e) => {
                *inner.failed.borrow_mut() = Some(format!(
                    "write of log blocks {}..{} at offset {offset}: {e}",
                    filling.seq_first,
                    filling.seq_first + filling.blocks
                ));
            }
        }
        drop(filling); // the buffer back to the pool
        inner.durable.wakeup_all();
        inner.room.wakeup_all();
    }
    inner.writers_alive.set(inner.writers_alive.get() - 1);
    inner.work.wakeup_all();
    inner.durable.wakeup_all();
    inner.room.wakeup_all();
}
