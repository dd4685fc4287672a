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
