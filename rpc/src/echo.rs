//! [`Echo`]: the smallest useful [`Service`], for tests, benchmarks and simulations
//! of the session machinery (never for a product path: it stores nothing).
//!
//! PING is answered with its data; WRITE with success, its data dropped; READ with
//! `length` bytes of [`ECHO_READ_FILL`]; anything else with NOT_SUPPORTED.

use crate::header::Header;
use crate::msg::{Request, Response};
use crate::session::{Service, SessionInfo};
use crate::status::Status;

/// The byte every READ answered by [`Echo`] is made of.
pub const ECHO_READ_FILL: u8 = 7;

/// A service that echoes PING, accepts WRITE and serves READ from a constant.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl Service for Echo {
    fn handle<'s>(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        match request {
            Request::Ping { data } => {
                scratch.clear();
                scratch.extend_from_slice(data);
                Response::Ping { data: scratch }
            }
            Request::Write { .. } => Response::Write,
            Request::Read { length, .. } => {
                scratch.clear();
                scratch.resize(length as usize, ECHO_READ_FILL);
                Response::Read { data: scratch }
            }
            other => Response::Error {
                msg_type: other.msg_type(),
                status: Status::NotSupported,
                reason: "echo serves PING, WRITE and READ",
            },
        }
    }
}
