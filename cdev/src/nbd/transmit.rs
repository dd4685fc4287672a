//! The transmission phase of one connection: a reader (this task) parses requests
//! and reads WRITE payloads; up to HANDLERS_MAX handler tasks execute them on the
//! device and push each reply whole to the connection's gathering output (rpc's
//! `FrameOut`), whose writer task sends every reply pushed since its last send with
//! one write: the replies of requests read together cost one send, not one each.

use std::rc::Rc;

use std::net::Shutdown;

use rpc::FrameOut;
use taskio::net::TcpStream;
use taskio::{Builder, Channel, Deadline, IoError};

use super::proto::*;
use super::{DeviceAccess, HANDLERS_MAX, NbdError, Negotiated, QUEUE_MAX, SKIP_LEN_MAX};
use crate::device::{BLOCK_SIZE, Extent, Zeroing};
use crate::error::CdevError;

struct Request {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    /// WRITE's payload.
    data: Vec<u8>,
}

struct Conn<D> {
    stream: TcpStream,
    /// Replies, each pushed whole, written by the writer task.
    out: FrameOut,
    device: D,
    n: Negotiated,
}

/// Serves the transmission phase of `stream` (after [`super::handshake`]) on
/// `device`, on the device's runtime. Ok when the client sent DISC or closed the
/// connection between requests; every request read is answered (when the socket
/// still takes it) before it returns.
pub fn serve_transmission<D: DeviceAccess>(
    stream: TcpStream,
    device: D,
    negotiated: Negotiated,
) -> Result<(), NbdError> {
    let conn = Rc::new(Conn {
        stream,
        out: FrameOut::new(),
        device,
        n: negotiated,
    });
    let writer_conn = conn.clone();
    let writer = Builder::new()
        .name("nbd-writer")
        .system(true)
        .spawn(move || {
            if let Err(e) = writer_conn.out.run(&writer_conn.stream) {
                // The reader sees the socket shut down and ends the connection.
                tracing::info!("nbd reply: {e}");
                let _ = writer_conn.stream.shutdown(Shutdown::Both);
            }
        })
        .map_err(|e| NbdError::Protocol {
            op: "transmission",
            why: format!("no writer task: {e}"),
        })?;
    let queue = Rc::new(Channel::<Request>::new(QUEUE_MAX));
    let mut handlers = Vec::with_capacity(HANDLERS_MAX);
    for _ in 0..HANDLERS_MAX {
        let (task_conn, queue) = (conn.clone(), queue.clone());
        // System tasks: the connection's task joins them, and a runtime ending under a
        // connection (its device closed) unwinds them with it.
        let spawned = Builder::new()
            .name("nbd-handler")
            .system(true)
            .spawn(move || {
                while let Ok(r) = queue.recv() {
                    task_conn.handle(r);
                }
            });
        match spawned {
            Ok(h) => handlers.push(h),
            Err(_) if !handlers.is_empty() => break,
            Err(e) => {
                conn.out.close();
                let _ = writer.join();
                return Err(NbdError::Protocol {
                    op: "transmission",
                    why: format!("no handler task: {e}"),
                });
            }
        }
    }
    let result = conn.read_requests(&queue);
    queue.close();
    for h in handlers {
        let _ = h.join();
    }
    // Every reply pushed is written (or the socket failed) before the close.
    conn.out.close();
    let _ = writer.join();
    let _ = conn.stream.shutdown(Shutdown::Both);
    result
}

/// A request refused before it reaches the device.
fn refusal(n: &Negotiated, r: &Request) -> Option<(u32, &'static str)> {
    let size = n.export.size;
    let end = r.offset.checked_add(r.len as u64);
    let past_end = end.is_none_or(|e| e > size);
    let aligned = r.offset.is_multiple_of(BLOCK_SIZE as u64) && r.len.is_multiple_of(BLOCK_SIZE);
    match r.kind {
        CMD_READ | CMD_WRITE if r.len > n.export.io_len_max => {
            Some((EOVERFLOW, "longer than the maximum block size"))
        }
        CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES if n.export.read_only => {
            Some((EPERM, "read-only export"))
        }
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS if !aligned => {
            Some((EINVAL, "offset or length not a multiple of 512"))
        }
        CMD_WRITE | CMD_WRITE_ZEROES if past_end => Some((ENOSPC, "past the end")),
        CMD_READ | CMD_TRIM | CMD_BLOCK_STATUS if past_end => Some((EINVAL, "past the end")),
        CMD_BLOCK_STATUS if !n.base_allocation => Some((EINVAL, "no metadata context")),
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS if r.len == 0 => {
            Some((EINVAL, "zero length"))
        }
        CMD_WRITE_ZEROES
            if r.flags & CMD_FLAG_FAST_ZERO != 0 && r.flags & CMD_FLAG_NO_HOLE != 0 =>
        {
            // Zeroes that must stay allocated are written as data: never faster than
            // the client writing them.
            Some((ENOTSUP, "no fast zeroing without holes"))
        }
        CMD_READ | CMD_WRITE | CMD_FLUSH | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => None,
        _ => Some((EINVAL, "unknown command")),
    }
}

/// How WRITE_ZEROES's flags say the device may zero.
fn zeroing(flags: u16) -> Zeroing {
    if flags & CMD_FLAG_NO_HOLE != 0 {
        Zeroing::Allocate
    } else if flags & CMD_FLAG_FAST_ZERO != 0 {
        Zeroing::FastOnly
    } else {
        Zeroing::Punch
    }
}

/// What a command gave back to reply with.
enum Done {
    Ok,
    /// A READ's data.
    Data(Vec<u8>),
    Extents(Vec<Extent>),
    /// FAST_ZERO that cannot be fast: nothing was done.
    NotFast,
}

/// The NBD error for a device error.
fn errno(e: &CdevError) -> u32 {
    match e {
        CdevError::InvalidArgument { .. } | CdevError::Config { .. } => EINVAL,
        CdevError::ReadOnly { .. } => EPERM,
        CdevError::NotServing { .. } => ESHUTDOWN,
        CdevError::Backing { .. }
        | CdevError::Vssd { .. }
        | CdevError::Dtm { .. }
        | CdevError::Runtime { .. } => EIO,
    }
}

impl<D: DeviceAccess> Conn<D> {
    fn read(&self, buf: &mut [u8], op: &'static str) -> Result<(), NbdError> {
        self.stream
            .read_exact(buf)
            .map_err(|source| NbdError::Io { op, source })
    }

    /// Reads requests until DISC or the end of the stream; queues each for a handler.
    fn read_requests(&self, queue: &Channel<Request>) -> Result<(), NbdError> {
        loop {
            let mut head = [0u8; REQUEST_LEN];
            match self.stream.read_exact(&mut head) {
                Ok(()) => {}
                Err(IoError::Eof { .. }) => return Ok(()),
                Err(source) => {
                    return Err(NbdError::Io {
                        op: "read request",
                        source,
                    });
                }
            }
            let be32 = |i: usize| u32::from_be_bytes(head[i..i + 4].try_into().expect("4"));
            let be64 = |i: usize| u64::from_be_bytes(head[i..i + 8].try_into().expect("8"));
            let magic = be32(0);
            if magic != REQUEST_MAGIC {
                return Err(NbdError::Protocol {
                    op: "read request",
                    why: format!("request magic {magic:#x}"),
                });
            }
            let mut r = Request {
                flags: u16::from_be_bytes([head[4], head[5]]),
                kind: u16::from_be_bytes([head[6], head[7]]),
                cookie: be64(8),
                offset: be64(16),
                len: be32(24),
                data: Vec::new(),
            };
            match r.kind {
                CMD_DISC => return Ok(()),
                CMD_WRITE if r.len > self.n.export.io_len_max => {
                    // The payload follows whatever the answer: skip it to stay in step.
                    if r.len as u64 > SKIP_LEN_MAX {
                        return Err(NbdError::Protocol {
                            op: "read request",
                            why: format!("WRITE of {} bytes", r.len),
                        });
                    }
                    self.skip(r.len as u64)?;
                }
                CMD_WRITE => {
                    r.data = vec![0u8; r.len as usize];
                    self.read(&mut r.data, "read WRITE payload")?;
                }
                _ => {}
            }
            if queue.send(r).is_err() {
                return Ok(());
            }
        }
    }

    fn skip(&self, mut left: u64) -> Result<(), NbdError> {
        let mut scratch = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(scratch.len() as u64) as usize;
            self.read(&mut scratch[..n], "skip oversized payload")?;
            left -= n as u64;
        }
        Ok(())
    }

    fn handle(&self, r: Request) {
        if let Some((err, why)) = refusal(&self.n, &r) {
            return self.send_error(&r, err, why);
        }
        // The device is held for the call only, not while the reply is sent.
        let done = self.device.with_device(|device| {
            let (offset, len) = (r.offset, u64::from(r.len));
            match r.kind {
                CMD_READ => {
                    let mut data = vec![0u8; r.len as usize];
                    device.read(offset, &mut data).map(|()| Done::Data(data))
                }
                // FUA (CMD_FLAG_FUA) asks nothing more: Device::write returns once the
                // write is durable, in write-back on the vSSD log (data and PREPARE,
                // made durable by writep1) of every replica of the device's epoch (on
                // the backing store, fdatasynced, while a WriteThrough device is short
                // of replicas), in the other modes on the backing store, fdatasynced.
                CMD_WRITE => device.write(offset, &r.data).map(|()| Done::Ok),
                CMD_FLUSH => device.flush().map(|()| Done::Ok),
                CMD_TRIM => device.discard(offset, len).map(|()| Done::Ok),
                // Durable on return too (Device::write_zeroes), FUA or not.
                CMD_WRITE_ZEROES => device
                    .write_zeroes(offset, len, zeroing(r.flags))
                    .map(|zeroed| if zeroed { Done::Ok } else { Done::NotFast }),
                CMD_BLOCK_STATUS => device
                    .block_status(offset, len, r.flags & CMD_FLAG_REQ_ONE != 0)
                    .map(Done::Extents),
                _ => unreachable!("refusal() lets known commands through only"),
            }
        });
        match done {
            None => self.send_error(&r, ESHUTDOWN, "the device is closing"),
            Some(Ok(Done::Data(reply))) => self.send_read(&r, reply),
            Some(Ok(Done::Extents(extents))) => self.send_block_status(&r, &extents),
            Some(Ok(Done::NotFast)) => self.send_error(&r, ENOTSUP, "cannot zero this range fast"),
            Some(Ok(Done::Ok)) => self.send_done(&r),
            Some(Err(e)) => {
                tracing::info!("nbd command {} failed: {e}", r.kind);
                self.send_error(&r, errno(&e), "device error")
            }
        }
    }

    /// Pushes one whole reply to the gathering output (its writer sends it with the
    /// others waiting); waits for room while the replies waiting fill the output's
    /// bound. A failed socket ends the connection (the writer shut it down, the
    /// reader sees it too): the reply is dropped.
    fn send(&self, parts: &[&[u8]]) {
        let pushed = self.out.push_with(&Deadline::after(None), |out| {
            for p in parts {
                out.extend_from_slice(p);
            }
            Ok(())
        });
        if let Err(e) = pushed {
            tracing::debug!("nbd reply dropped: {e}");
        }
    }

    fn simple(&self, r: &Request, error: u32) -> [u8; 16] {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
        h[4..8].copy_from_slice(&error.to_be_bytes());
        h[8..16].copy_from_slice(&r.cookie.to_be_bytes());
        h
    }

    fn chunk(&self, r: &Request, flags: u16, kind: u16, len: u32) -> [u8; 20] {
        let mut h = [0u8; 20];
        h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
        h[4..6].copy_from_slice(&flags.to_be_bytes());
        h[6..8].copy_from_slice(&kind.to_be_bytes());
        h[8..16].copy_from_slice(&r.cookie.to_be_bytes());
        h[16..20].copy_from_slice(&len.to_be_bytes());
        h
    }

    fn send_done(&self, r: &Request) {
        if self.n.structured {
            self.send(&[&self.chunk(r, REPLY_FLAG_DONE, REPLY_TYPE_NONE, 0)]);
        } else {
            self.send(&[&self.simple(r, 0)]);
        }
    }

    fn send_error(&self, r: &Request, error: u32, why: &str) {
        if self.n.structured {
            let mut body = Vec::with_capacity(6 + why.len());
            body.extend_from_slice(&error.to_be_bytes());
            body.extend_from_slice(&(why.len() as u16).to_be_bytes());
            body.extend_from_slice(why.as_bytes());
            let head = self.chunk(r, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, body.len() as u32);
            self.send(&[&head, &body]);
        } else {
            self.send(&[&self.simple(r, error)]);
        }
    }

    /// A READ's reply: its head (the simple reply's, or the OFFSET_DATA chunk's with
    /// the offset), then `data`, gathered into the output by `send`.
    fn send_read(&self, r: &Request, data: Vec<u8>) {
        if self.n.structured {
            let chunk = self.chunk(
                r,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                8 + data.len() as u32,
            );
            self.send(&[&chunk, &r.offset.to_be_bytes(), &data]);
        } else {
            self.send(&[&self.simple(r, 0), &data]);
        }
    }

    /// base:allocation: one descriptor (length, flags) per extent, a hole being
    /// HOLE|ZERO (Device::block_status).
    fn send_block_status(&self, r: &Request, extents: &[Extent]) {
        let mut body = Vec::with_capacity(4 + 8 * extents.len());
        body.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
        for e in extents {
            let len = u32::try_from(e.len).expect("an extent inside a request's u32 length");
            let flags = if e.hole { STATE_HOLE | STATE_ZERO } else { 0 };
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(&flags.to_be_bytes());
        }
        let head = self.chunk(
            r,
            REPLY_FLAG_DONE,
            REPLY_TYPE_BLOCK_STATUS,
            body.len() as u32,
        );
        self.send(&[&head, &body]);
    }
}
