//! Status codes: the `status` field of a header. Zero in every request; in a
//! response, `Ok` or why the request failed.

use std::fmt;

macro_rules! statuses {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $wire:literal;)*) => {
        /// The `status` field of a header (u16). PROTOCOL.md, "Status codes".
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Status {
            $($(#[$doc])* $name = $code,)*
        }

        impl Status {
            /// Every status, in code order.
            pub const ALL: &[Status] = &[$(Status::$name,)*];

            /// The status with this wire code, if there is one.
            pub const fn from_u16(code: u16) -> Option<Status> {
                match code {
                    $($code => Some(Status::$name),)*
                    _ => None,
                }
            }

            /// The name PROTOCOL.md gives this status.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Status::$name => $wire,)*
                }
            }
        }
    };
}

statuses! {
    /// The request succeeded.
    Ok = 0, "OK";
    /// The frame did not start with MAGIC (the connection is closed).
    BadMagic = 1, "BAD_MAGIC";
    /// The header version is not one this server speaks, or HELLO offered no
    /// version in common.
    BadVersion = 2, "BAD_VERSION";
    /// Unknown message type, or a type sent in the wrong direction.
    BadType = 3, "BAD_TYPE";
    /// A reserved flag bit was set.
    BadFlags = 4, "BAD_FLAGS";
    /// The payload length does not fit the message's layout.
    BadLength = 5, "BAD_LENGTH";
    /// The header CRC did not match (the connection is closed).
    BadHeaderCrc = 6, "BAD_HEADER_CRC";
    /// The payload CRC did not match; nothing was done.
    BadPayloadCrc = 7, "BAD_PAYLOAD_CRC";
    /// A length or a count is over its limit.
    TooLarge = 8, "TOO_LARGE";
    /// The server wants a HELLO proof (the reply carries its nonce), or a request
    /// came before a successful HELLO.
    AuthRequired = 9, "AUTH_REQUIRED";
    /// The HELLO proof was wrong (the connection is closed).
    AuthFailed = 10, "AUTH_FAILED";
    /// No device or vSSD of that name, or the handle is not open in this session.
    NoDevice = 11, "NO_DEVICE";
    /// The device or the backing store failed the I/O.
    IoError = 12, "IO_ERROR";
    /// The session already has queue_depth requests in flight, or the server is
    /// at its session limit; nothing was done, try again later.
    Busy = 13, "BUSY";
    /// A known message type this server does not serve (yet).
    NotSupported = 14, "NOT_SUPPORTED";
    /// A field has a value the message does not allow.
    InvalidArgument = 15, "INVALID_ARGUMENT";
    /// The operation did not finish in time.
    Timeout = 16, "TIMEOUT";
    /// The line or the transaction is not there (VSSD_READ, VSSD_COMMIT, ...).
    NotFound = 17, "NOT_FOUND";
    /// A write to a device opened read-only.
    ReadOnly = 18, "READ_ONLY";
    /// The vSSD has no free slot for the write.
    NoSpace = 19, "NO_SPACE";
    /// The opener's epoch is older than the replica's (VSSD_OPEN).
    StaleEpoch = 20, "STALE_EPOCH";
    /// The request is not allowed in the session's state (a second HELLO, an
    /// operation on a handle being closed).
    BadSequence = 21, "BAD_SEQUENCE";
    /// The server is shutting down.
    ShuttingDown = 22, "SHUTTING_DOWN";
}

impl Status {
    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// True for `Ok`.
    pub const fn is_ok(self) -> bool {
        matches!(self, Status::Ok)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_dense() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(usize::from(s.code()), i, "{s} is out of order");
            assert_eq!(Status::from_u16(s.code()), Some(*s));
        }
        let next = u16::try_from(Status::ALL.len()).unwrap();
        assert_eq!(Status::from_u16(next), None);
        assert_eq!(Status::from_u16(u16::MAX), None);
    }
}
