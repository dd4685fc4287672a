//! Message types: the `type` field of a header, and each type's payload limit.

use std::fmt;

use crate::limits::{
    COMMIT_REQ_LEN_MAX, CONFIG_TEXT_LEN_MAX, DATA_LEN_MAX, DELETE_REQ_FIXED_LEN, DEVICE_INFO_LEN,
    DEVICE_OPEN_REQ_FIXED_LEN, DIRTY_REPLY_LEN_MAX, EPOCH_REQ_LEN_MAX, HELLO_REPLY_LEN_MAX,
    HELLO_REQ_LEN_MAX, LIST_REPLY_LEN_MAX, NAME_LEN_MAX, NAMED_REQ_FIXED_LEN, PAYLOAD_LEN_MAX,
    PING_LEN_MAX, REASON_LEN_MAX, RECOVER_REPLY_LEN_MAX, REPAIR_PREFIX_LEN, SET_REQ_LEN_MAX,
    STAT_REPLY_LEN_MAX, TAKEOVER_REPLY_LEN, VSSD_CREATE_REQ_LEN_MAX, VSSD_INFO_LEN_MAX,
    VSSD_OPEN_REQ_FIXED_LEN, VSSD_READ_PREFIX_LEN, WRITEP1_PREFIX_LEN,
};

macro_rules! msg_types {
    ($($(#[$doc:meta])* $name:ident = $code:literal, $wire:literal;)*) => {
        /// The `type` field of a header (u16). PROTOCOL.md, "Messages".
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum MsgType {
            $($(#[$doc])* $name = $code,)*
        }

        impl MsgType {
            /// Every type, in code order.
            pub const ALL: &[MsgType] = &[$(MsgType::$name,)*];

            /// The type with this wire code, if there is one.
            pub const fn from_u16(code: u16) -> Option<MsgType> {
                match code {
                    $($code => Some(MsgType::$name),)*
                    _ => None,
                }
            }

            /// The name PROTOCOL.md gives this type.
            pub const fn name(self) -> &'static str {
                match self {
                    $(MsgType::$name => $wire,)*
                }
            }
        }
    };
}

msg_types! {
    /// Version negotiation and authentication; the first request of a session.
    Hello = 0x0001, "HELLO";
    /// Liveness and round-trip probe; echoes its payload.
    Ping = 0x0002, "PING";
    /// Response-only: a failure not tied to a known request type (an unknown type,
    /// or, with tag TAG_NONE, the reason the server closes the connection).
    Error = 0x0003, "ERROR";
    /// Open a cache device by name; the reply carries its handle and geometry.
    DeviceOpen = 0x0010, "DEVICE_OPEN";
    /// Close a device handle (drain, checkpoint).
    DeviceClose = 0x0011, "DEVICE_CLOSE";
    /// Read `length` bytes at `offset`.
    Read = 0x0012, "READ";
    /// Write the payload at `offset`.
    Write = 0x0013, "WRITE";
    /// Make every acknowledged write durable, down to the backing store where
    /// the mode wrote to it.
    Flush = 0x0014, "FLUSH";
    /// Discard (TRIM) `length` bytes at `offset`.
    Discard = 0x0015, "DISCARD";
    /// Counters of a device (or of the server, handle 0).
    Stat = 0x0016, "STAT";
    /// Open a vSSD on a replica CVA, for a device's DTM.
    VssdOpen = 0x0020, "VSSD_OPEN";
    /// Close a vSSD handle.
    VssdClose = 0x0021, "VSSD_CLOSE";
    /// Phase 1 of a transaction: data to a free slot, PREPARE record durable.
    VssdWritep1 = 0x0022, "VSSD_WRITEP1";
    /// Commit a batch of prepared transactions.
    VssdCommit = 0x0023, "VSSD_COMMIT";
    /// Abort a prepared transaction.
    VssdAbort = 0x0024, "VSSD_ABORT";
    /// Read one cached line and its version from a vSSD (resync, degraded reads).
    VssdRead = 0x0025, "VSSD_READ";
    /// Mark a destaged line version clean.
    VssdClean = 0x0026, "VSSD_CLEAN";
    /// List the vSSD's in-doubt transactions (PREPARE without COMMIT or ABORT).
    VssdRecover = 0x0027, "VSSD_RECOVER";
    /// Move the vSSD to a new membership epoch.
    VssdEpoch = 0x0028, "VSSD_EPOCH";
    /// Drop a range of lines (DISCARD).
    VssdInvalidate = 0x0029, "VSSD_INVALIDATE";
    /// What the vSSD knows of a transaction.
    VssdOutcome = 0x002A, "VSSD_OUTCOME";
    /// List dirty lines and their versions (resync).
    VssdDirty = 0x002B, "VSSD_DIRTY";
    /// The payload of an in-doubt transaction (to repair another replica).
    VssdReadPrepared = 0x002C, "VSSD_READ_PREPARED";
    /// Commit an in-doubt transaction with its payload from another replica.
    VssdRepair = 0x002D, "VSSD_REPAIR";
    /// Write a copy of committed lines from another replica, committed at once.
    VssdCopyIn = 0x002E, "VSSD_COPY_IN";
    /// Create (format) a replica vSSD of a given geometry on a peer CVA.
    VssdCreate = 0x002F, "VSSD_CREATE";
    /// Admin: create a cache device from a configuration text.
    DeviceCreate = 0x0030, "DEVICE_CREATE";
    /// Admin: the names of the devices the server keeps.
    DeviceList = 0x0031, "DEVICE_LIST";
    /// Admin: a device's configuration and state, as text.
    DeviceShow = 0x0032, "DEVICE_SHOW";
    /// Admin: change settings of a device (a configuration text of those).
    DeviceSet = 0x0033, "DEVICE_SET";
    /// Admin: delete a device (refused while it holds dirty lines not named).
    DeviceDelete = 0x0034, "DEVICE_DELETE";
    /// Admin: take a device over on the cvad holding one of its replica vSSDs.
    DeviceTakeover = 0x0035, "DEVICE_TAKEOVER";
}

impl MsgType {
    /// The wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// True for the types a client may send as requests (all but ERROR).
    pub const fn is_request_type(self) -> bool {
        !matches!(self, MsgType::Error)
    }

    /// Largest payload of this type in the given direction, in bytes. A response's
    /// limit includes room for an error reason.
    pub const fn payload_len_max(self, response: bool) -> u32 {
        let len = if response {
            let ok = match self {
                MsgType::Hello => HELLO_REPLY_LEN_MAX,
                MsgType::Ping => PING_LEN_MAX,
                MsgType::Error => 0,
                MsgType::DeviceOpen => DEVICE_INFO_LEN,
                MsgType::Read | MsgType::VssdReadPrepared => DATA_LEN_MAX as usize,
                MsgType::VssdRead => VSSD_READ_PREFIX_LEN + DATA_LEN_MAX as usize,
                MsgType::Stat => STAT_REPLY_LEN_MAX,
                MsgType::VssdOpen => VSSD_INFO_LEN_MAX,
                MsgType::VssdRecover => RECOVER_REPLY_LEN_MAX,
                MsgType::VssdDirty => DIRTY_REPLY_LEN_MAX,
                MsgType::DeviceList => LIST_REPLY_LEN_MAX,
                MsgType::DeviceShow => CONFIG_TEXT_LEN_MAX,
                MsgType::DeviceCreate | MsgType::DeviceSet | MsgType::DeviceDelete => 0,
                MsgType::DeviceTakeover => TAKEOVER_REPLY_LEN,
                MsgType::VssdClean | MsgType::VssdInvalidate | MsgType::VssdOutcome => 8,
                MsgType::DeviceClose
                | MsgType::Write
                | MsgType::Flush
                | MsgType::Discard
                | MsgType::VssdClose
                | MsgType::VssdWritep1
                | MsgType::VssdCommit
                | MsgType::VssdAbort
                | MsgType::VssdEpoch
                | MsgType::VssdRepair
                | MsgType::VssdCopyIn
                | MsgType::VssdCreate => 0,
            };
            if ok > REASON_LEN_MAX {
                ok
            } else {
                REASON_LEN_MAX
            }
        } else {
            match self {
                MsgType::Hello => HELLO_REQ_LEN_MAX,
                MsgType::Ping => PING_LEN_MAX,
                MsgType::Error => 0,
                MsgType::DeviceOpen => DEVICE_OPEN_REQ_FIXED_LEN + NAME_LEN_MAX,
                MsgType::Write => DATA_LEN_MAX as usize,
                MsgType::VssdOpen => VSSD_OPEN_REQ_FIXED_LEN + NAME_LEN_MAX,
                MsgType::VssdWritep1 | MsgType::VssdCopyIn => {
                    WRITEP1_PREFIX_LEN + DATA_LEN_MAX as usize
                }
                MsgType::VssdRepair => REPAIR_PREFIX_LEN + DATA_LEN_MAX as usize,
                MsgType::VssdCommit => COMMIT_REQ_LEN_MAX,
                MsgType::VssdEpoch => EPOCH_REQ_LEN_MAX,
                MsgType::VssdCreate => VSSD_CREATE_REQ_LEN_MAX,
                MsgType::DeviceCreate => CONFIG_TEXT_LEN_MAX,
                MsgType::DeviceShow | MsgType::DeviceTakeover => NAMED_REQ_FIXED_LEN + NAME_LEN_MAX,
                MsgType::DeviceSet => SET_REQ_LEN_MAX,
                MsgType::DeviceDelete => DELETE_REQ_FIXED_LEN + NAME_LEN_MAX,
                MsgType::DeviceList => 0,
                MsgType::VssdAbort
                | MsgType::VssdRead
                | MsgType::VssdOutcome
                | MsgType::VssdReadPrepared => 8,
                MsgType::VssdClean
                | MsgType::VssdRecover
                | MsgType::VssdInvalidate
                | MsgType::VssdDirty => 16,
                MsgType::DeviceClose
                | MsgType::Read
                | MsgType::Flush
                | MsgType::Discard
                | MsgType::Stat
                | MsgType::VssdClose => 0,
            }
        };
        assert!(len <= PAYLOAD_LEN_MAX as usize);
        len as u32
    }
}

// Every type's limit is within the global one (evaluated at compile time).
const _: () = {
    let mut i = 0;
    while i < MsgType::ALL.len() {
        assert!(MsgType::ALL[i].payload_len_max(false) <= PAYLOAD_LEN_MAX);
        assert!(MsgType::ALL[i].payload_len_max(true) <= PAYLOAD_LEN_MAX);
        i += 1;
    }
};

impl fmt::Display for MsgType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for t in MsgType::ALL {
            assert_eq!(MsgType::from_u16(t.code()), Some(*t));
        }
        assert_eq!(MsgType::from_u16(0), None);
        assert_eq!(MsgType::from_u16(0x0004), None);
        assert_eq!(MsgType::from_u16(u16::MAX), None);
    }

    #[test]
    fn data_types_fit_a_full_data_length() {
        assert_eq!(MsgType::Write.payload_len_max(false), DATA_LEN_MAX);
        assert_eq!(MsgType::Read.payload_len_max(true), DATA_LEN_MAX);
        assert_eq!(
            MsgType::VssdWritep1.payload_len_max(false),
            DATA_LEN_MAX + 16
        );
        assert_eq!(MsgType::Read.payload_len_max(false), 0);
    }
}
