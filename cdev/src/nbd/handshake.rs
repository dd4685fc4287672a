//! The fixed newstyle handshake: option haggling until NBD_OPT_GO or
//! NBD_OPT_EXPORT_NAME picks an export (or the client aborts or goes away).

use taskio::IoError;
use taskio::net::TcpStream;

use super::proto::*;
use super::{
    EXPORTS_LISTED_MAX, Export, Exports, HANDSHAKE_READ_TIMEOUT, NbdError, Negotiated,
    OPTION_LEN_MAX, OPTIONS_MAX, STRING_LEN_MAX,
};
use crate::device::BLOCK_SIZE;

/// Runs the handshake on `stream`. Some: the transmission phase starts with what was
/// negotiated. None: the client aborted or closed the connection during the haggling
/// (a clean end). Reads only the handshake's bytes.
pub fn handshake(
    stream: &TcpStream,
    exports: &dyn Exports,
) -> Result<Option<Negotiated>, NbdError> {
    stream.set_read_timeout(Some(HANDSHAKE_READ_TIMEOUT));
    let result = Haggle {
        stream,
        exports,
        structured: false,
        base_allocation: false,
        no_zeroes: false,
    }
    .run();
    stream.set_read_timeout(None);
    match result {
        Err(NbdError::Io {
            source: IoError::Eof { .. },
            ..
        }) => Ok(None),
        r => r,
    }
}

struct Haggle<'a> {
    stream: &'a TcpStream,
    exports: &'a dyn Exports,
    structured: bool,
    base_allocation: bool,
    no_zeroes: bool,
}

/// An option's payload being parsed; running short is NBD_REP_ERR_INVALID.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A length-prefixed string of at most STRING_LEN_MAX bytes.
    fn string(&mut self) -> Option<&'a str> {
        let len = self.u32()?;
        if len > STRING_LEN_MAX {
            return None;
        }
        std::str::from_utf8(self.take(len as usize)?).ok()
    }
}

/// What an option handler decided.
enum Next {
    Again,
    Go(Negotiated),
    End,
}

impl Haggle<'_> {
    fn read(&self, buf: &mut [u8]) -> Result<(), NbdError> {
        self.stream.read_exact(buf).map_err(|source| NbdError::Io {
            op: "handshake read",
            source,
        })
    }

    fn write(&self, buf: &[u8]) -> Result<(), NbdError> {
        self.stream.write_all(buf).map_err(|source| NbdError::Io {
            op: "handshake write",
            source,
        })
    }

    fn reply(&self, option: u32, kind: u32, data: &[u8]) -> Result<(), NbdError> {
        let mut m = Vec::with_capacity(20 + data.len());
        m.extend_from_slice(&REPLY_MAGIC.to_be_bytes());
        m.extend_from_slice(&option.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&(data.len() as u32).to_be_bytes());
        m.extend_from_slice(data);
        self.write(&m)
    }

    fn error(&self, option: u32, kind: u32, why: &str) -> Result<Next, NbdError> {
        self.reply(option, kind, why.as_bytes())?;
        Ok(Next::Again)
    }

    fn run(mut self) -> Result<Option<Negotiated>, NbdError> {
        let mut hello = Vec::with_capacity(18);
        hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
        hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
        self.write(&hello)?;
        let mut flags = [0u8; 4];
        self.read(&mut flags)?;
        let flags = u32::from_be_bytes(flags);
        if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
            return Err(NbdError::Protocol {
                op: "handshake",
                why: format!("unknown client flags {flags:#x}"),
            });
        }
        self.no_zeroes = flags & CLIENT_NO_ZEROES != 0;
        let mut data = Vec::new();
        for _ in 0..OPTIONS_MAX {
            let mut head = [0u8; 16];
            self.read(&mut head)?;
            let magic = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
            let option = u32::from_be_bytes(head[8..12].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
            if magic != IHAVEOPT {
                return Err(NbdError::Protocol {
                    op: "handshake",
                    why: format!("option magic {magic:#x}"),
                });
            }
            if len > OPTION_LEN_MAX {
                self.skip(len)?;
                self.error(option, REP_ERR_TOO_BIG, "option too long")?;
                continue;
            }
            data.resize(len as usize, 0);
            self.read(&mut data)?;
            match self.option(option, &data)? {
                Next::Again => {}
                Next::Go(n) => return Ok(Some(n)),
                Next::End => return Ok(None),
            }
        }
        Err(NbdError::Protocol {
            op: "handshake",
            why: format!("more than {OPTIONS_MAX} options"),
        })
    }

    /// Reads and drops `len` bytes through a bounded buffer.
    fn skip(&self, len: u32) -> Result<(), NbdError> {
        let mut scratch = vec![0u8; 4096];
        let mut left = len as usize;
        while left > 0 {
            let n = left.min(scratch.len());
            self.read(&mut scratch[..n])?;
            left -= n;
        }
        Ok(())
    }

    fn option(&mut self, option: u32, data: &[u8]) -> Result<Next, NbdError> {
        match option {
            OPT_EXPORT_NAME => self.export_name(data),
            OPT_ABORT => {
                // The client may already have closed: its ACK is a courtesy.
                let _ = self.reply(option, REP_ACK, &[]);
                Ok(Next::End)
            }
            OPT_LIST => {
                if !data.is_empty() {
                    return self.error(option, REP_ERR_INVALID, "LIST takes no data");
                }
                for name in self.exports.names().iter().take(EXPORTS_LISTED_MAX) {
                    let mut d = Vec::with_capacity(4 + name.len());
                    d.extend_from_slice(&(name.len() as u32).to_be_bytes());
                    d.extend_from_slice(name.as_bytes());
                    self.reply(option, REP_SERVER, &d)?;
                }
                self.reply(option, REP_ACK, &[])?;
                Ok(Next::Again)
            }
            OPT_INFO | OPT_GO => self.info_go(option, data),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return self.error(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                }
                self.structured = true;
                self.reply(option, REP_ACK, &[])?;
                Ok(Next::Again)
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data),
            _ => self.error(option, REP_ERR_UNSUP, "unknown option"),
        }
    }

    fn negotiated(&self, export: Export) -> Negotiated {
        Negotiated {
            export,
            structured: self.structured,
            base_allocation: self.structured && self.base_allocation,
        }
    }

    /// The old way in: no reply but the export's size and flags; an unknown name
    /// can only be refused by closing.
    fn export_name(&self, data: &[u8]) -> Result<Next, NbdError> {
        let name = std::str::from_utf8(data).map_err(|_| NbdError::Protocol {
            op: "NBD_OPT_EXPORT_NAME",
            why: "the name is not UTF-8".into(),
        })?;
        let Some(export) = self.exports.find(name) else {
            return Err(NbdError::Protocol {
                op: "NBD_OPT_EXPORT_NAME",
                why: format!("no export {name:?}"),
            });
        };
        let mut m = Vec::with_capacity(8 + 2 + 124);
        m.extend_from_slice(&export.size.to_be_bytes());
        m.extend_from_slice(&export.transmission_flags().to_be_bytes());
        if !self.no_zeroes {
            m.resize(m.len() + 124, 0);
        }
        self.write(&m)?;
        Ok(Next::Go(self.negotiated(export)))
    }

    fn info_go(&self, option: u32, data: &[u8]) -> Result<Next, NbdError> {
        let mut c = Cursor(data);
        let parsed = (|| {
            let name = c.string()?;
            let n = c.u16()?;
            let asked: Vec<u16> = (0..n).map(|_| c.u16()).collect::<Option<_>>()?;
            c.0.is_empty().then_some((name, asked))
        })();
        let Some((name, _asked)) = parsed else {
            return self.error(option, REP_ERR_INVALID, "malformed INFO/GO");
        };
        let Some(export) = self.exports.find(name) else {
            return self.error(option, REP_ERR_UNKNOWN, "no such export");
        };
        let mut d = Vec::with_capacity(12);
        d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
        d.extend_from_slice(&export.size.to_be_bytes());
        d.extend_from_slice(&export.transmission_flags().to_be_bytes());
        self.reply(option, REP_INFO, &d)?;
        // Block sizes are sent whether asked or not: the server enforces them.
        let mut d = Vec::with_capacity(14);
        d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&BLOCK_SIZE.to_be_bytes());
        d.extend_from_slice(&export.line_size.to_be_bytes());
        d.extend_from_slice(&export.io_len_max.to_be_bytes());
        self.reply(option, REP_INFO, &d)?;
        self.reply(option, REP_ACK, &[])?;
        if option == OPT_GO {
            return Ok(Next::Go(self.negotiated(export)));
        }
        Ok(Next::Again)
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) -> Result<Next, NbdError> {
        if !self.structured {
            return self.error(option, REP_ERR_INVALID, "structured replies first");
        }
        let mut c = Cursor(data);
        let parsed = (|| {
            let name = c.string()?;
            let n = c.u32()?;
            let mut queries = Vec::new();
            for _ in 0..n {
                queries.push(c.string()?);
            }
            c.0.is_empty().then_some((name, queries))
        })();
        let Some((name, queries)) = parsed else {
            return self.error(option, REP_ERR_INVALID, "malformed meta context option");
        };
        if self.exports.find(name).is_none() {
            return self.error(option, REP_ERR_UNKNOWN, "no such export");
        }
        let list = option == OPT_LIST_META_CONTEXT;
        let selected = queries
            .iter()
            .any(|q| *q == BASE_ALLOCATION || (list && *q == "base:"))
            || (list && queries.is_empty());
        if option == OPT_SET_META_CONTEXT {
            self.base_allocation = selected;
        }
        if selected {
            let mut d = Vec::with_capacity(4 + BASE_ALLOCATION.len());
            let id = if list { 0 } else { BASE_ALLOCATION_ID };
            d.extend_from_slice(&id.to_be_bytes());
            d.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &d)?;
        }
        self.reply(option, REP_ACK, &[])?;
        Ok(Next::Again)
    }
}
