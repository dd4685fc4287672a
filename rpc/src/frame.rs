//! Frames on a taskio stream: reading one (header first, checked, then exactly the
//! payload it announces, with timeouts) and writing one.

use std::time::Duration;

use taskio::net::TcpStream;

use crate::error::RpcError;
use crate::header::{Header, RawHeader};
use crate::limits::HEADER_LEN;
use crate::msg::Message;

fn io(op: &'static str) -> impl FnOnce(taskio::IoError) -> RpcError {
    move |source| match source {
        taskio::IoError::Eof { done: 0, .. } => RpcError::ConnectionLost {
            peer: String::new(),
            why: "closed by the peer".into(),
        },
        source => RpcError::Io { op, source },
    }
}

/// Reads whole frames; holds the buffer of the last one read with [`FrameReader::read`].
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Reads one frame into `into` (header, then payload): the first byte may take
    /// `idle` to come, the rest of the frame `frame_timeout`. Checks the framing
    /// (magic, header CRC, version, payload length) before reading the payload, so
    /// nothing is read or allocated past a limit. Field checks are the caller's
    /// (`RawHeader::validate`), so it can answer them under the request's tag.
    pub fn read_raw(
        &mut self,
        stream: &TcpStream,
        idle: Duration,
        frame_timeout: Duration,
        into: &mut Vec<u8>,
    ) -> Result<RawHeader, RpcError> {
        let first = self.read_first_byte(stream, idle)?;
        self.read_rest(stream, first, frame_timeout, into)
    }

    /// Waits up to `idle` for the first byte of the next frame. A wait that times out
    /// is `RpcError::Io` whose source has kind `TimedOut` (see
    /// `is_idle_timeout`); the stream may be read again.
    pub fn read_first_byte(&mut self, stream: &TcpStream, idle: Duration) -> Result<u8, RpcError> {
        let mut first = [0u8; 1];
        stream.set_read_timeout(Some(idle));
        stream.read_exact(&mut first).map_err(io("read header"))?;
        Ok(first[0])
    }

    /// Reads the rest of the frame whose first byte was `first` into `into` (see
    /// [`FrameReader::read_raw`]), within `frame_timeout`.
    pub fn read_rest(
        &mut self,
        stream: &TcpStream,
        first: u8,
        frame_timeout: Duration,
        into: &mut Vec<u8>,
    ) -> Result<RawHeader, RpcError> {
        into.clear();
        into.resize(HEADER_LEN, 0);
        into[0] = first;
        stream.set_read_timeout(Some(frame_timeout));
        stream
            .read_exact(&mut into[1..HEADER_LEN])
            .map_err(|e| match e {
                taskio::IoError::Eof { done, want, .. } => RpcError::Truncated {
                    part: crate::Part::Header,
                    got: 1 + done,
                    want: 1 + want,
                },
                e => RpcError::Io {
                    op: "read header",
                    source: e,
                },
            })?;
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&into[..HEADER_LEN]);
        let raw = RawHeader::decode(&h)?;
        let len = raw.payload_len as usize;
        into.resize(HEADER_LEN + len, 0);
        stream
            .read_exact(&mut into[HEADER_LEN..])
            .map_err(|e| match e {
                taskio::IoError::Eof { done, .. } => RpcError::Truncated {
                    part: crate::Part::Payload,
                    got: done,
                    want: len,
                },
                e => RpcError::Io {
                    op: "read payload",
                    source: e,
                },
            })?;
        Ok(raw)
    }

    /// Reads and fully decodes one frame into the reader's own buffer.
    pub fn read(
        &mut self,
        stream: &TcpStream,
        timeout: Duration,
    ) -> Result<(Header, Message<'_>), RpcError> {
        let mut buf = std::mem::take(&mut self.buf);
        let r = self.read_raw(stream, timeout, timeout, &mut buf);
        self.buf = buf;
        let header = r?.validate()?;
        let msg = crate::decode_payload(&header, &self.buf[HEADER_LEN..])?;
        Ok((header, msg))
    }
}

/// Whether `e` is a wait for the first byte of a frame that timed out (nothing of
/// the frame was read).
pub(crate) fn is_idle_timeout(e: &RpcError) -> bool {
    matches!(
        e,
        RpcError::Io {
            op: "read header",
            source: taskio::IoError::TimedOut { done: 0, .. },
        }
    )
}

/// Encodes `msg` into `out` (reused) and writes it.
pub fn send_message(
    stream: &TcpStream,
    version: u16,
    msg: &Message<'_>,
    out: &mut Vec<u8>,
) -> Result<(), RpcError> {
    out.clear();
    crate::encode_frame(version, msg, out)?;
    stream.write_all(out).map_err(io("write frame"))
}

/// Bytes of encoded frames a [`FrameOut`] lets wait for its writer; a sender finding
/// more waits for room (a frame larger than this alone still goes, when nothing else
/// waits). So a connection holds at most this plus one frame waiting, plus the batch
/// being written.
pub const WRITE_GATHER_BYTES_MAX: usize = 256 * 1024;
const _: () = assert!(WRITE_GATHER_BYTES_MAX >= crate::limits::HEADER_LEN);

/// The writing side of a connection, gathering: senders encode their frames after
/// the ones already waiting and return (they never write); one writer task (running
/// [`FrameOut::run`]) takes every frame waiting at once and writes them with one
/// `write_all`, so the frames of tasks made ready together (handlers woken by one
/// read, callers woken by one read of responses) cost one send instead of one each.
/// The writer runs after the tasks ready before it was woken, which is what gathers.
/// Frames go out in the order they were pushed; a partial write is finished by
/// `write_all` before the next batch.
#[derive(Default)]
pub struct FrameOut {
    /// Encoded frames not yet taken by the writer.
    pending: std::cell::RefCell<Vec<u8>>,
    /// Encoded frames held for the next push ([`FrameOut::push_held`]): they go
    /// out after its frame.
    held: std::cell::RefCell<Vec<u8>>,
    /// The buffer of the last batch written, kept for its capacity (taken by the
    /// writer while it writes).
    spare: std::cell::RefCell<Vec<u8>>,
    /// The writer sleeps here while nothing is pending.
    work: taskio::Rendez,
    /// Senders wait here for room.
    room: taskio::Rendez,
    /// No more frames: the writer writes what is pending and ends.
    closing: std::cell::Cell<bool>,
    /// Why a write failed: every later push fails with it.
    failed: std::cell::RefCell<Option<String>>,
    /// Batches written (each one `write_all`).
    batches: std::cell::Cell<u64>,
}

/// `msg` encoded as one frame after the bytes of `out`, for [`FrameOut::push_and`].
fn encoded<'m>(
    version: u16,
    msg: &'m Message<'_>,
) -> impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError> + 'm {
    move |out| crate::encode_frame(version, msg, out).map(|_| ())
}

impl FrameOut {
    pub fn new() -> FrameOut {
        FrameOut::default()
    }

    /// Encodes `msg` after the frames waiting and wakes the writer. Waits for room
    /// (see WRITE_GATHER_BYTES_MAX) until `deadline` (unbounded: as long as the
    /// writer takes, itself bounded by the stream's write timeout); Ok(false) when
    /// the deadline passed first, nothing pushed. Fails when the writer failed or the
    /// output is closing, or the message cannot be encoded (nothing pushed).
    pub(crate) fn push(
        &self,
        version: u16,
        msg: &Message<'_>,
        deadline: &taskio::Deadline,
    ) -> Result<bool, RpcError> {
        self.push_and(deadline, true, encoded(version, msg))
    }

    /// [`FrameOut::push`] of whatever `encode` appends to the bytes waiting (another
    /// protocol's frame on the same gathering output: NBD's replies). `encode` must
    /// append one whole frame or nothing (its error is returned).
    pub fn push_with(
        &self,
        deadline: &taskio::Deadline,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    ) -> Result<bool, RpcError> {
        self.push_and(deadline, true, encode)
    }

    /// [`FrameOut::push_with`], waking the writer (and releasing the held frames
    /// after this one) or holding the frame.
    fn push_and(
        &self,
        deadline: &taskio::Deadline,
        wake: bool,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), RpcError>,
    ) -> Result<bool, RpcError> {
        loop {
            if let Some(why) = self.failed.borrow().as_ref() {
                return Err(RpcError::ConnectionLost {
                    peer: String::new(),
                    why: why.clone(),
                });
            }
            if self.closing.get() {
                return Err(RpcError::ConnectionLost {
                    peer: String::new(),
                    why: "the connection is closing".into(),
                });
            }
            // Below the bound any frame goes, one larger than it too.
            if self.pending.borrow().len() + self.held.borrow().len() < WRITE_GATHER_BYTES_MAX {
                break;
            }
            match deadline.at() {
                Some(d) => {
                    if !self.room.sleep_until(d) {
                        return Ok(false);
                    }
                }
                None => self.room.sleep(),
            }
        }
        if !wake {
            encode(&mut self.held.borrow_mut())?;
            return Ok(true);
        }
        encode(&mut self.pending.borrow_mut())?;
        self.release_held();
        self.work.wakeup();
        Ok(true)
    }

    /// As [`FrameOut::push`], but the frame is held: it goes out right after the
    /// frame of the next push, in its batch, or at [`FrameOut::wake`]. After, not
    /// before: the client handles the responses of one read in order, and the one
    /// it waits on first (a writep1's, behind a held COMMIT's) lets it go on to its
    /// next request sooner. The caller makes sure a push or a wake follows (see
    /// `Session::answer`: a lazy response is held only while an eager request of
    /// its session is in flight, whose response will be pushed).
    pub(crate) fn push_held(
        &self,
        version: u16,
        msg: &Message<'_>,
        deadline: &taskio::Deadline,
    ) -> Result<bool, RpcError> {
        self.push_and(deadline, false, encoded(version, msg))
    }

    /// Sends the held frames ([`FrameOut::push_held`]), if any.
    pub(crate) fn wake(&self) {
        if self.release_held() {
            self.work.wakeup();
        }
    }

    /// Moves the held frames after the pending ones; whether there were any.
    fn release_held(&self) -> bool {
        let mut held = self.held.borrow_mut();
        if held.is_empty() {
            return false;
        }
        self.pending.borrow_mut().extend_from_slice(&held);
        held.clear();
        true
    }

    /// The writer task's body: writes the frames pushed, all those waiting as one
    /// batch, until [`FrameOut::close`] (after writing what was pushed before it) or
    /// a write fails (the error; every push fails from then on).
    pub fn run(&self, stream: &TcpStream) -> Result<(), RpcError> {
        loop {
            while self.pending.borrow().is_empty() {
                if self.closing.get() && !self.release_held() {
                    return Ok(());
                }
                if !self.pending.borrow().is_empty() {
                    break;
                }
                self.work.sleep();
            }
            // Taken only now: while the writer sleeps, `shrink` may empty it.
            let mut batch = std::mem::take(&mut *self.spare.borrow_mut());
            batch.clear();
            std::mem::swap(&mut batch, &mut *self.pending.borrow_mut());
            self.room.wakeup_all();
            let r = stream.write_all(&batch).map_err(io("write frame"));
            self.batches.set(self.batches.get() + 1);
            batch.clear();
            *self.spare.borrow_mut() = batch;
            if let Err(e) = r {
                *self.failed.borrow_mut() = Some(e.to_string());
                self.room.wakeup_all();
                return Err(e);
            }
        }
    }

    /// No more frames: the writer ends once it has written those pushed before.
    pub fn close(&self) {
        self.closing.set(true);
        self.work.wakeup_all();
        self.room.wakeup_all();
    }

    /// Batches written so far (each one `write_all` of one or more frames).
    #[cfg(test)]
    pub(crate) fn batches(&self) -> u64 {
        self.batches.get()
    }

    /// Gives back the buffers' memory down to `keep` bytes for the pending one (when
    /// nothing is pending) and none for the spare (unless the writer holds it).
    pub(crate) fn shrink(&self, keep: usize) {
        if let Ok(mut p) = self.pending.try_borrow_mut()
            && p.is_empty()
        {
            p.shrink_to(keep);
        }
        if let Ok(mut h) = self.held.try_borrow_mut()
            && h.is_empty()
        {
            h.shrink_to(0);
        }
        if let Ok(mut s) = self.spare.try_borrow_mut() {
            s.clear();
            s.shrink_to(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::Read;
    use std::net::{Ipv4Addr, TcpListener};
    use std::os::fd::AsRawFd;
    use std::rc::Rc;
    use std::time::Duration;

    use taskio::{Builder, Config, IoConfig, Runtime, net, spawn, yield_now};

    use super::*;
    use crate::limits::VERSION_MIN;
    use crate::msg::{Body, Request};

    const TASKS: u64 = 16;
    const ROUNDS: u64 = 8;
    const DATA: usize = 16 * 1024;
    /// Socket buffers this small (the kernel doubles them: 128 KiB both ends) make a
    /// batch of more than 8 frames a partial write.
    const SOCKET_BUF: i32 = 32 * 1024;

    fn small_buffer(fd: i32, opt: i32) {
        let v: i32 = SOCKET_BUF;
        // SAFETY: `v` is a live c_int and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&v as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "setsockopt");
    }

    /// Frames pushed by tasks made ready together go out gathered (fewer writes than
    /// frames), each whole and in the order pushed, though the socket's buffers are
    /// far smaller than a batch (every batch of several frames is a partial write
    /// that `write_all` finishes).
    #[test]
    fn gathered_frames_go_out_whole_in_push_order_through_partial_writes() {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            small_buffer(s.as_raw_fd(), libc::SO_RCVBUF);
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut tags = Vec::new();
            let mut h = [0u8; HEADER_LEN];
            // Bounded: one frame per push, then the end of stream.
            for _ in 0..=TASKS * ROUNDS {
                match s.read_exact(&mut h) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => panic!("peer read: {e}"),
                }
                let raw = RawHeader::decode(&h).expect("a whole header");
                let mut payload = vec![0u8; raw.payload_len as usize];
                s.read_exact(&mut payload).unwrap();
                let header = raw.validate().expect("a valid header");
                let Ok(Message {
                    body: Body::Request(Request::Write { data, offset, .. }),
                    ..
                }) = crate::decode_payload(&header, &payload)
                else {
                    panic!("frame {} is not the WRITE pushed", raw.tag);
                };
                assert_eq!(offset, raw.tag, "offset and tag of one push");
                assert!(
                    data.iter().all(|&b| b == raw.tag as u8),
                    "data of {}",
                    raw.tag
                );
                tags.push(raw.tag);
            }
            tags
        });
        let mut rt = Runtime::with_io(Config::default(), IoConfig::default()).unwrap();
        let (pushed, batches) = rt
            .run(move || {
                let stream = Rc::new(net::connect(addr, Some(Duration::from_secs(5))).unwrap());
                small_buffer(stream.fd(), libc::SO_SNDBUF);
                stream.set_write_timeout(Some(Duration::from_secs(10)));
                let out = Rc::new(FrameOut::new());
                let (o, s) = (out.clone(), stream.clone());
                let writer = Builder::new()
                    .name("writer")
                    .spawn(move || o.run(&s))
                    .unwrap();
                let pushed = Rc::new(RefCell::new(Vec::new()));
                let tasks: Vec<_> = (0..TASKS)
                    .map(|t| {
                        let (out, pushed) = (out.clone(), pushed.clone());
                        spawn(move || {
                            for r in 0..ROUNDS {
                                let tag = 2 + r * TASKS + t;
                                let data = vec![tag as u8; DATA];
                                let m = Message {
                                    tag,
                                    body: Body::Request(Request::Write {
                                        handle: 1,
                                        offset: tag,
                                        data: &data,
                                    }),
                                };
                                assert!(
                                    out.push(VERSION_MIN, &m, &taskio::Deadline::after(None))
                                        .unwrap()
                                );
                                pushed.borrow_mut().push(tag);
                                yield_now();
                            }
                        })
                        .unwrap()
                    })
                    .collect();
                for t in tasks {
                    t.join().unwrap();
                }
                out.close();
                writer.join().unwrap().unwrap();
                let pushed = pushed.borrow().clone();
                (pushed, out.batches())
            })
            .unwrap();
        let received = peer.join().unwrap();
        assert_eq!(pushed.len() as u64, TASKS * ROUNDS);
        assert_eq!(received, pushed, "frames out of push order");
        assert!(
            batches < pushed.len() as u64 / 2,
            "{batches} writes for {} frames: not gathered",
            pushed.len()
        );
    }
}
