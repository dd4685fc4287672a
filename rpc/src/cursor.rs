//! Bounded little-endian reading of a payload and the field checks every body
//! shares. Every read is checked against the bytes that remain; nothing here can
//! index out of bounds or allocate.

use crate::error::RpcError;
use crate::limits::NAME_LEN_MAX;
use crate::msg_type::MsgType;

/// Reads a payload front to back for one message type.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    msg_type: MsgType,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(msg_type: MsgType, bytes: &'a [u8]) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            msg_type,
        }
    }

    pub(crate) fn msg_type(&self) -> MsgType {
        self.msg_type
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// The next `n` bytes, or BadLength naming `field`.
    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], RpcError> {
        let rest = self.bytes.get(self.pos..).unwrap_or_default();
        match rest.get(..n) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(RpcError::BadLength {
                msg_type: self.msg_type,
                field,
                got: rest.len() as u64,
                min: n as u64,
                max: n as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], RpcError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, RpcError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, RpcError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, RpcError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, RpcError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn bytes32(&mut self, field: &'static str) -> Result<[u8; 32], RpcError> {
        self.array(field)
    }

    /// `n` reserved bytes, all of which must be zero.
    pub(crate) fn reserved(&mut self, n: usize) -> Result<(), RpcError> {
        let s = self.take(n, "reserved")?;
        match s.iter().find(|b| **b != 0) {
            Some(b) => Err(self.invalid("reserved", u64::from(*b), "reserved, must be 0")),
            None => Ok(()),
        }
    }

    /// A 0/1 byte.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, RpcError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(field, u64::from(other), "must be 0 or 1")),
        }
    }

    /// A name of `len` bytes (its length came earlier in the layout).
    pub(crate) fn name(&mut self, len: u8, field: &'static str) -> Result<&'a str, RpcError> {
        let s = self.take(usize::from(len), field)?;
        check_name(self.msg_type, field, s)
    }

    /// Everything that is left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = self.bytes.get(self.pos..).unwrap_or_default();
        self.pos = self.bytes.len();
        s
    }

    /// Ends the read: trailing bytes are an error.
    pub(crate) fn finish(self) -> Result<(), RpcError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(RpcError::BadLength {
                msg_type: self.msg_type,
                field: "payload (trailing bytes)",
                got: self.bytes.len() as u64,
                min: self.pos as u64,
                max: self.pos as u64,
            })
        }
    }

    pub(crate) fn invalid(&self, field: &'static str, got: u64, why: &'static str) -> RpcError {
        RpcError::InvalidArgument {
            msg_type: self.msg_type,
            field,
            got,
            why,
        }
    }
}

/// A name of `len` bytes, outside 1..=NAME_LEN_MAX: a bad name, so a value the message
/// does not allow (INVALID_ARGUMENT), not a payload that fails its layout.
const _: () = assert!(NAME_LEN_MAX == 64, "name_len_error's text says 64");

pub(crate) fn name_len_error(msg_type: MsgType, field: &'static str, len: usize) -> RpcError {
    RpcError::InvalidArgument {
        msg_type,
        field,
        got: len as u64,
        why: "a name is 1..=64 bytes",
    }
}

/// A name: 1..=NAME_LEN_MAX bytes of printable ASCII (0x21..=0x7E).
pub(crate) fn check_name<'a>(
    msg_type: MsgType,
    field: &'static str,
    s: &'a [u8],
) -> Result<&'a str, RpcError> {
    if s.is_empty() || s.len() > NAME_LEN_MAX {
        return Err(name_len_error(msg_type, field, s.len()));
    }
    if let Some(b) = s.iter().find(|b| !b.is_ascii_graphic()) {
        return Err(RpcError::InvalidArgument {
            msg_type,
            field,
            got: u64::from(*b),
            why: "names are printable ASCII (0x21..=0x7E)",
        });
    }
    // Printable ASCII is UTF-8.
    std::str::from_utf8(s).map_err(|_| RpcError::InvalidArgument {
        msg_type,
        field,
        got: 0,
        why: "not UTF-8",
    })
}

/// Little-endian appends to a payload being built.
pub(crate) trait Put {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_u64(&mut self, v: u64);
    fn put_zeros(&mut self, n: usize);
}

impl Put for Vec<u8> {
    fn put_u8(&mut self, v: u8) {
        self.push(v);
    }
    fn put_u16(&mut self, v: u16) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u32(&mut self, v: u32) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_u64(&mut self, v: u64) {
        self.extend_from_slice(&v.to_le_bytes());
    }
    fn put_zeros(&mut self, n: usize) {
        self.resize(self.len() + n, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_bounded() {
        let mut r = Reader::new(MsgType::Ping, &[1, 2, 3]);
        assert!(r.u32("x").is_err());
        assert_eq!(r.u16("x").unwrap(), 0x0201);
        assert!(r.u16("x").is_err());
        assert_eq!(r.u8("x").unwrap(), 3);
        assert!(r.u8("x").is_err());
        assert!(r.finish().is_ok());
    }

    #[test]
    fn names_are_printable_ascii() {
        assert!(check_name(MsgType::DeviceOpen, "name", b"dev-0").is_ok());
        assert!(check_name(MsgType::DeviceOpen, "name", b"").is_err());
        assert!(check_name(MsgType::DeviceOpen, "name", b"a b").is_err());
        assert!(check_name(MsgType::DeviceOpen, "name", &[0xC3, 0xA9]).is_err());
        assert!(check_name(MsgType::DeviceOpen, "name", &[b'a'; 65]).is_err());
        assert!(check_name(MsgType::DeviceOpen, "name", &[b'a'; 64]).is_ok());
    }
}
