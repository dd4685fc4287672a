//! cvad's rpc services.
//!
//! [`CvadService`] serves a session on the server's session runtimes: HELLO is
//! done there, PING, STAT on handle 0 (the server's counters) and the admin
//! messages ([`crate::admin`]) are answered there, and a DEVICE_OPEN moves the
//! session to the runtime of the device it names ([`rpc::Service::route`]), a
//! VSSD_OPEN to the runtime of the replica vSSDs. [`DeviceService`] serves it on
//! the device's runtime: DEVICE_OPEN, READ, WRITE, FLUSH, DISCARD, STAT and
//! DEVICE_CLOSE call the [`Device`] there, so a request never crosses threads. A
//! session serves one device: it holds handles of that device only.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rpc::limits::STAT_COUNTERS_MAX;
use rpc::{Counter, HandTo, Header, MsgType, Request, Response, Service, SessionInfo, Status};

use crate::device::Device;
use crate::devices::{Busy, Counters, DeviceHost, Devices, Refusal};

/// Device handles one session may hold at once; one more is BUSY.
pub const HANDLES_PER_SESSION_MAX: usize = 64;

/// The session service of the server's session runtimes.
#[derive(Clone)]
pub struct CvadService {
    devices: Arc<Devices>,
    started: std::time::Instant,
}

impl CvadService {
    pub fn new(devices: Arc<Devices>, started: std::time::Instant) -> CvadService {
        CvadService { devices, started }
    }

    fn route_open(&self, request: &Request<'_>) -> Option<HandTo> {
        let to = match request {
            Request::DeviceOpen { name, .. } => self.devices.hand_to(name).ok()?,
            Request::VssdOpen { .. } | Request::VssdCreate { .. } => self.devices.replicas(),
            _ => return None,
        };
        Counters::bump(&self.devices.counters().sessions_routed);
        Some(to)
    }

    /// What every runtime answers the same way: PING, STAT 0, the admin messages.
    /// None: the request is the device's business.
    fn common<'s>(&self, request: &Request<'_>, scratch: &'s mut Vec<u8>) -> Option<Response<'s>> {
        let t = request.msg_type();
        Some(match request {
            Request::Ping { data } => {
                scratch.clear();
                scratch.extend_from_slice(data);
                Response::Ping { data: scratch }
            }
            Request::Stat { handle: 0 } => stat(&self.server_counters(), scratch),
            Request::DeviceCreate { .. }
            | Request::DeviceList
            | Request::DeviceShow { .. }
            | Request::DeviceSet { .. }
            | Request::DeviceDelete { .. }
            | Request::DeviceTakeover { .. } => {
                let c = self.devices.counters();
                Counters::bump(&c.admin_requests);
                match crate::admin::handle(&self.devices, request) {
                    Ok(answer) => answer.response(scratch),
                    Err(r) => {
                        Counters::bump(&c.admin_refused);
                        refuse(t, &r, scratch)
                    }
                }
            }
            _ => return None,
        })
    }

    /// [`CvadService::common`] of a request [`is_common`] says it answers.
    fn answer_common<'s>(&self, request: &Request<'_>, scratch: &'s mut Vec<u8>) -> Response<'s> {
        match self.common(request, scratch) {
            Some(r) => r,
            None => unreachable!("{} is answered by every runtime", request.msg_type()),
        }
    }

    fn server_counters(&self) -> Vec<(String, u64)> {
        let c = self.devices.counters();
        let (kept, open, failed) = self.devices.census();
        vec![
            ("devices".into(), kept),
            ("devices_open".into(), open),
            ("devices_failed".into(), failed),
            (
                "sessions_routed".into(),
                c.sessions_routed.load(Ordering::Relaxed),
            ),
            (
                "admin_requests".into(),
                c.admin_requests.load(Ordering::Relaxed),
            ),
            (
                "admin_refused".into(),
                c.admin_refused.load(Ordering::Relaxed),
            ),
            ("uptime_s".into(), self.started.elapsed().as_secs()),
        ]
    }
}

impl Service for CvadService {
    fn handle<'s>(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        let t = request.msg_type();
        if let Request::DeviceOpen { name, .. } = &request {
            // Not routed: the device is not open here (the reason says why).
            let why = match self.devices.hand_to(name) {
                Err(r) => r,
                Ok(_) => Refusal::new(
                    Status::Busy,
                    format!("device {name} opened meanwhile: retry"),
                ),
            };
            return refuse(t, &why, scratch);
        }
        if is_common(&request) {
            return self.answer_common(&request, scratch);
        }
        let why = match t {
            MsgType::DeviceClose
            | MsgType::Read
            | MsgType::Write
            | MsgType::Flush
            | MsgType::Discard
            | MsgType::Stat => Refusal::new(Status::NoDevice, "no such handle: DEVICE_OPEN first"),
            _ => Refusal::new(Status::NotSupported, format!("cvad does not serve {t}")),
        };
        refuse(t, &why, scratch)
    }

    fn routes(&self, msg_type: MsgType) -> bool {
        matches!(
            msg_type,
            MsgType::DeviceOpen | MsgType::VssdOpen | MsgType::VssdCreate
        )
    }

    fn route(&self, _s: &SessionInfo, _h: &Header, request: &Request<'_>) -> Option<HandTo> {
        self.route_open(request)
    }
}

/// The session service of a device's runtime.
pub struct DeviceService {
    host: Rc<DeviceHost>,
    common: CvadService,
    /// Open handles and whether each is read-only.
    handles: RefCell<HashMap<u64, bool>>,
    next_handle: Cell<u64>,
}

impl DeviceService {
    pub fn new(host: Rc<DeviceHost>, devices: Arc<Devices>) -> DeviceService {
        DeviceService {
            host,
            common: CvadService::new(devices.clone(), devices.started()),
            handles: RefCell::new(HashMap::new()),
            next_handle: Cell::new(1),
        }
    }

    /// The device, while it serves, counted busy until the guard drops.
    fn device(&self, t: MsgType) -> Result<(&Device, Busy), Refusal> {
        let name = &self.host.name;
        if self.host.closing.get() {
            return Err(Refusal::new(
                Status::ShuttingDown,
                format!("device {name} is closing"),
            ));
        }
        self.host.device().ok_or_else(|| {
            Refusal::new(Status::NoDevice, format!("{t}: device {name} is not open"))
        })
    }

    /// Whether `handle` is open on this session, and read-only.
    fn handle_of(&self, handle: u64) -> Result<bool, Refusal> {
        self.handles
            .borrow()
            .get(&handle)
            .copied()
            .ok_or_else(|| Refusal::new(Status::NoDevice, format!("no handle {handle} here")))
    }

    /// `handle` is open on this session for writing: READ_ONLY for a read-only one
    /// (WRITE, DISCARD and FLUSH are refused on it and change nothing).
    fn writable(&self, handle: u64, t: MsgType) -> Result<(), Refusal> {
        if self.handle_of(handle)? {
            let why = format!("handle {handle} was opened read-only: no {t} on it");
            return Err(Refusal::new(Status::ReadOnly, why));
        }
        Ok(())
    }

    /// Serves a device request; READ's data goes in `scratch`.
    fn serve(&self, request: Request<'_>, scratch: &mut Vec<u8>) -> Result<Served, Refusal> {
        let t = request.msg_type();
        let failed = |e: crate::CdevError| Refusal::new(e.status(), e.to_string());
        Ok(match request {
            Request::DeviceOpen { name, read_only } => {
                if name != self.host.name {
                    let why = format!(
                        "this connection serves device {}: open {name} on another connection",
                        self.host.name
                    );
                    return Err(Refusal::new(Status::InvalidArgument, why));
                }
                let (device, _busy) = self.device(t)?;
                if self.handles.borrow().len() >= HANDLES_PER_SESSION_MAX {
                    let why = "HANDLES_PER_SESSION_MAX handles open on this connection";
                    return Err(Refusal::new(Status::Busy, why));
                }
                let handle = self.next_handle.get();
                // Never reused within a session (u64: never exhausted).
                self.next_handle.set(handle + 1);
                self.handles.borrow_mut().insert(handle, read_only);
                let mut info = device.info().wire();
                info.read_only |= read_only;
                Served::Done(Response::DeviceOpen { handle, info })
            }
            Request::DeviceClose { handle } => {
                self.handle_of(handle)?;
                self.handles.borrow_mut().remove(&handle);
                Served::Done(Response::DeviceClose)
            }
            Request::Read {
                handle,
                offset,
                length,
            } => {
                self.handle_of(handle)?;
                let (device, _busy) = self.device(t)?;
                scratch.clear();
                scratch.resize(length as usize, 0);
                device.read(offset, scratch).map_err(failed)?;
                Served::Read
            }
            Request::Write {
                handle,
                offset,
                data,
            } => {
                self.writable(handle, t)?;
                self.device(t)?.0.write(offset, data).map_err(failed)?;
                Served::Done(Response::Write)
            }
            Request::Flush { handle } => {
                self.writable(handle, t)?;
                self.device(t)?.0.flush().map_err(failed)?;
                Served::Done(Response::Flush)
            }
            Request::Discard {
                handle,
                offset,
                length,
            } => {
                self.writable(handle, t)?;
                let (device, _busy) = self.device(t)?;
                device.discard(offset, u64::from(length)).map_err(failed)?;
                Served::Done(Response::Discard)
            }
            Request::Stat { handle } => {
                self.handle_of(handle)?;
                Served::Stat(self.device(t)?.0.stat())
            }
            other => {
                let why = format!("cvad does not serve {}", other.msg_type());
                return Err(Refusal::new(Status::NotSupported, why));
            }
        })
    }
}

/// What [`DeviceService::serve`] did.
enum Served {
    /// A response that borrows nothing.
    Done(Response<'static>),
    /// READ: the data is in the scratch buffer.
    Read,
    Stat(Vec<(String, u64)>),
}

impl Service for DeviceService {
    fn handle<'s>(
        &self,
        _session: &SessionInfo,
        _header: &Header,
        request: Request<'_>,
        scratch: &'s mut Vec<u8>,
    ) -> Response<'s> {
        let t = request.msg_type();
        if is_common(&request) {
            return self.common.answer_common(&request, scratch);
        }
        match self.serve(request, scratch) {
            Ok(Served::Done(r)) => r,
            Ok(Served::Read) => Response::Read { data: scratch },
            Ok(Served::Stat(counters)) => stat(&counters, scratch),
            Err(why) => refuse(t, &why, scratch),
        }
    }

    fn routes(&self, msg_type: MsgType) -> bool {
        matches!(
            msg_type,
            MsgType::DeviceOpen | MsgType::VssdOpen | MsgType::VssdCreate
        )
    }

    /// A session with no handle open here may move to another device (or to the
    /// replicas); one holding handles stays (its DEVICE_OPEN is refused).
    fn route(&self, _s: &SessionInfo, _h: &Header, request: &Request<'_>) -> Option<HandTo> {
        if !self.handles.borrow().is_empty() {
            return None;
        }
        match request {
            Request::DeviceOpen { name, .. } if *name == self.host.name => None,
            _ => self.common.route_open(request),
        }
    }
}

/// Whether every runtime answers `request` the same way ([`CvadService::common`]).
fn is_common(request: &Request<'_>) -> bool {
    matches!(
        request,
        Request::Ping { .. }
            | Request::Stat { handle: 0 }
            | Request::DeviceCreate { .. }
            | Request::DeviceList
            | Request::DeviceShow { .. }
            | Request::DeviceSet { .. }
            | Request::DeviceDelete { .. }
            | Request::DeviceTakeover { .. }
    )
}

/// The STAT answer of `counters` (names that are not protocol names are left
/// out, at most STAT_COUNTERS_MAX): the names live in `scratch`.
pub fn stat<'s>(counters: &[(String, u64)], scratch: &'s mut Vec<u8>) -> Response<'s> {
    let kept: Vec<&(String, u64)> = counters
        .iter()
        .filter(|(n, _)| crate::datadir::check_name("STAT", "counter", n).is_ok())
        .take(STAT_COUNTERS_MAX)
        .collect();
    let names: Vec<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    let names = pack(&names, scratch);
    Response::Stat {
        counters: names
            .into_iter()
            .zip(kept)
            .map(|(name, (_, value))| Counter {
                name,
                value: *value,
            })
            .collect(),
    }
}

/// `strings` copied into `scratch`, and borrowed from there.
pub fn pack<'s>(strings: &[&str], scratch: &'s mut Vec<u8>) -> Vec<&'s str> {
    scratch.clear();
    let mut ends = Vec::with_capacity(strings.len());
    for s in strings {
        scratch.extend_from_slice(s.as_bytes());
        ends.push(scratch.len());
    }
    let bytes: &'s Vec<u8> = scratch;
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            // Copied from `&str`s whole: always UTF-8.
            let s = std::str::from_utf8(&bytes[start..end]).unwrap_or_default();
            start = end;
            s
        })
        .collect()
}

/// The error answer of `why`, its reason (truncated to REASON_LEN_MAX) in `scratch`.
pub fn refuse<'s>(t: MsgType, why: &Refusal, scratch: &'s mut Vec<u8>) -> Response<'s> {
    let reason = rpc::truncate_reason(&why.reason);
    let status = if why.status.is_ok() {
        Status::IoError
    } else {
        why.status
    };
    let reason = pack(&[reason], scratch)[0];
    if status == Status::StaleEpoch {
        return Response::StaleEpoch {
            msg_type: t,
            epoch: 0,
            reason,
        };
    }
    Response::Error {
        msg_type: t,
        status,
        reason,
    }
}
