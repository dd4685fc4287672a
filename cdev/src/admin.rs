//! The admin messages (PROTOCOL.md, "The admin messages"): devices created, listed,
//! shown, changed and deleted. Every configuration is checked before it is kept
//! ([`crate::datadir`]: a refusal names the key); the data dir's TOML is written
//! before a device starts and removed after it closed. A device holding dirty
//! lines is deleted only when the request names how many it holds. A device whose
//! replica vSSD this cvad holds is taken over from the configuration its primary
//! sent with VSSD_CREATE.

use std::sync::Arc;

use rpc::{Request, Response, Status};
use serde::Serialize;

use crate::config::{DeviceConfig, DeviceSettings};
use crate::datadir::{DEVICES_MAX, DataDirError, check_device, parse_toml};
use crate::device::Recovered;
use crate::devices::{
    DeviceState, Devices, Refusal, SESSION_DRAIN_MAX, not_its_runtime, off_runtime,
};
use crate::replicas::Held;

/// What an admin request answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Created,
    List(Vec<String>),
    Show(String),
    Set,
    Deleted,
    TakenOver(Recovered),
}

impl Answer {
    pub fn response<'s>(&self, scratch: &'s mut Vec<u8>) -> Response<'s> {
        match self {
            Answer::Created => Response::DeviceCreate,
            Answer::Set => Response::DeviceSet,
            Answer::Deleted => Response::DeviceDelete,
            Answer::TakenOver(r) => Response::DeviceTakeover {
                epoch: r.epoch,
                committed: r.committed,
                aborted: r.aborted,
                repaired: r.repaired,
            },
            Answer::List(names) => {
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                Response::DeviceList {
                    names: crate::service::pack(&names, scratch),
                }
            }
            Answer::Show(text) => {
                let text = truncate_text(text);
                Response::DeviceShow {
                    text: crate::service::pack(&[text], scratch)[0],
                }
            }
        }
    }
}

/// A show text cut to CONFIG_TEXT_LEN_MAX at a character boundary.
fn truncate_text(text: &str) -> &str {
    let mut end = text.len().min(rpc::limits::CONFIG_TEXT_LEN_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A configuration refusal on the wire: INVALID_ARGUMENT, what and where.
fn config_refusal(e: DataDirError) -> Refusal {
    let status = match e {
        DataDirError::BadConfig { .. } => Status::InvalidArgument,
        DataDirError::Io { .. } => Status::IoError,
    };
    Refusal::new(status, e.to_string())
}

/// Serves one admin request.
pub fn handle(devices: &Arc<Devices>, request: &Request<'_>) -> Result<Answer, Refusal> {
    match *request {
        Request::DeviceCreate { config } => create(devices, config),
        Request::DeviceList => Ok(Answer::List(devices.names())),
        Request::DeviceShow { name } => show(devices, name),
        Request::DeviceSet { name, settings } => set(devices, name, settings),
        Request::DeviceDelete { name, dirty_lines } => delete(devices, name, dirty_lines),
        Request::DeviceTakeover { name } => takeover(devices, name),
        ref other => unreachable!("{} is not an admin request", other.msg_type()),
    }
}

fn create(devices: &Arc<Devices>, text: &str) -> Result<Answer, Refusal> {
    let config: DeviceConfig = parse_toml("DEVICE_CREATE", text).map_err(config_refusal)?;
    check_device("DEVICE_CREATE", &config).map_err(config_refusal)?;
    let name = config.name.clone();
    devices.reserve(&name, DEVICES_MAX)?;
    if let Err(why) = create_replicas(devices, &config) {
        devices.unreserve(&name);
        return Err(why);
    }
    if let Err(e) = devices.dir().save_device(&config) {
        devices.unreserve(&name);
        return Err(config_refusal(e));
    }
    let d = devices.clone();
    match off_runtime("create", move || d.start(config)).and_then(|r| r) {
        Ok(DeviceState::Open(_)) => Ok(Answer::Created),
        Ok(DeviceState::Failed(why)) => {
            // Created or nothing: a device that cannot open is not kept.
            let (d, n) = (devices.clone(), name.clone());
            let _ = off_runtime("create", move || d.take_and_close(&n));
            devices.forget(&name);
            let _ = devices.dir().remove_device(&name);
            Err(Refusal::new(
                why.status,
                format!("device {name} not created: {}", why.reason),
            ))
        }
        Err(why) => {
            devices.unreserve(&name);
            let _ = devices.dir().remove_device(&name);
            Err(why)
        }
    }
}

/// Asks each peer of `config` to create (or confirm) its replica vSSD, of the
/// primary's geometry (VSSD_CREATE; a peer asked again answers OK).
fn create_replicas(devices: &Devices, config: &DeviceConfig) -> Result<(), Refusal> {
    if config.replicas.is_empty() {
        return Ok(());
    }
    let params = crate::device::vssd_format_params(config)
        .map_err(|e| Refusal::new(e.status(), e.to_string()))?;
    // Each peer keeps it: a takeover there starts from it.
    let text = toml::to_string_pretty(config).map_err(|e| {
        Refusal::new(
            Status::IoError,
            format!("device {}: config: {e}", config.name),
        )
    })?;
    for r in &config.replicas {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            let why = format!(
                "device {}: replica vSSD {} on {}: {what}: {e}",
                config.name, r.vssd, r.peer
            );
            Refusal::new(Status::IoError, why)
        };
        let client =
            rpc::Client::connect(r.peer, devices.peers()).map_err(|e| failed("connect", &e))?;
        let reply = client
            .call(Request::VssdCreate {
                name: &r.vssd,
                device: &config.name,
                line_size: params.line_size,
                lines: params.lines,
                log_bytes: params.log_bytes,
                config: &text,
            })
            .map_err(|e| failed("VSSD_CREATE", &e))?;
        match reply.response().map_err(|e| failed("VSSD_CREATE", &e))? {
            Response::VssdCreate => {}
            Response::Error { status, reason, .. } => {
                let why = format!(
                    "device {}: replica vSSD {} on {}: {reason}",
                    config.name, r.vssd, r.peer
                );
                return Err(Refusal::new(status, why));
            }
            other => return Err(failed("VSSD_CREATE answered", &format!("{other:?}"))),
        }
    }
    Ok(())
}

/// The `[state]` table of DEVICE_SHOW.
#[derive(Serialize)]
struct ShownState {
    state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dirty_lines: Option<u64>,
}

#[derive(Serialize)]
struct Shown<'a> {
    #[serde(flatten)]
    config: &'a DeviceConfig,
    status: ShownState,
}

fn show(devices: &Arc<Devices>, name: &str) -> Result<Answer, Refusal> {
    let (config, state) = devices.get(name)?;
    let status = match state {
        DeviceState::Open(info) => ShownState {
            state: "open",
            reason: None,
            size_bytes: Some(info.size_bytes),
            dirty_lines: devices
                .on_device(name, |host| host.device.as_ref().map(|d| d.dirty_lines()))
                .ok()
                .flatten(),
        },
        DeviceState::Failed(why) => ShownState {
            state: "failed",
            reason: Some(why.reason),
            size_bytes: None,
            dirty_lines: None,
        },
    };
    let text = toml::to_string_pretty(&Shown {
        config: &config,
        status,
    })
    .map_err(|e| Refusal::new(Status::IoError, format!("DEVICE_SHOW {name}: {e}")))?;
    Ok(Answer::Show(text))
}

/// DEVICE_SET: the settings are checked together (a refusal names the key and
/// changes nothing), applied to the open device on its runtime ([`Device::set`]:
/// at once), then kept in the data dir's TOML. A key of the configuration that a
/// running device cannot change is refused by name.
///
/// [`Device::set`]: crate::Device::set
fn set(devices: &Arc<Devices>, name: &str, text: &str) -> Result<Answer, Refusal> {
    const WHERE: &str = "DEVICE_SET";
    let (config, state) = devices.get(name)?;
    refuse_fixed_keys(text).map_err(config_refusal)?;
    let settings: DeviceSettings = parse_toml(WHERE, text).map_err(config_refusal)?;
    let changed = settings.applied_to(&config);
    check_device(WHERE, &changed).map_err(config_refusal)?;
    if let DeviceState::Open(_) = state {
        devices
            .on_device(name, move |host| match &host.device {
                Some(d) => d
                    .set(&settings)
                    .map_err(|e| Refusal::new(e.status(), e.to_string())),
                None => Err(crate::devices::no_device("(failed)")),
            })
            .and_then(|r| r)?;
    }
    devices
        .dir()
        .save_device(&changed)
        .map_err(config_refusal)?;
    devices.set_config(changed);
    Ok(Answer::Set)
}

/// A DEVICE_SET naming a key of the configuration that is not a setting (the line
/// size, the vSSD's path and size, the backing store...) is refused by that key:
/// those are fixed when the device is created.
fn refuse_fixed_keys(text: &str) -> Result<(), DataDirError> {
    const WHERE: &str = "DEVICE_SET";
    // A text that is no TOML table is left to `parse_toml`, which says where.
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let configured = toml::Table::try_from(DeviceConfig::new("k", "b".into(), "v".into(), 0))
        .expect("a DeviceConfig is a TOML table");
    let fixed = table
        .keys()
        .find(|k| configured.contains_key(*k) && !DeviceSettings::KEYS.contains(&k.as_str()));
    if let Some(key) = fixed {
        let why = format!(
            "cannot change on a running device (fixed when it is created); DEVICE_SET changes {}",
            DeviceSettings::KEYS.join(", ")
        );
        return Err(crate::datadir::bad(WHERE, key, why));
    }
    Ok(())
}

fn delete(devices: &Arc<Devices>, name: &str, named: Option<u64>) -> Result<Answer, Refusal> {
    not_its_runtime(name)?;
    let (config, state) = devices.get(name)?;
    if let DeviceState::Open(_) = state {
        // Checked on its runtime once its requests have drained and new ones are
        // refused, so that no write dirties a line between the count and the close.
        devices
            .on_device(name, move |host| {
                let Some(d) = &host.device else {
                    return Ok(());
                };
                if !host.quiesce(SESSION_DRAIN_MAX) {
                    let why = "requests still running on it: try again";
                    return Err(Refusal::new(Status::Busy, why));
                }
                let dirty = d.dirty_lines();
                let wrong = match named {
                    None => dirty > 0,
                    Some(n) => n != dirty,
                };
                if wrong {
                    host.closing.set(false);
                    let how = match named {
                        None => "none named".to_string(),
                        Some(n) => format!("{n} named"),
                    };
                    return Err(Refusal::new(
                        Status::InvalidArgument,
                        format!(
                            "device holds {dirty} dirty lines ({how}): destage them, or name \
                             exactly {dirty} dirty lines to drop them"
                        ),
                    ));
                }
                Ok(())
            })
            .and_then(|r| r)?;
    }
    let (d, n) = (devices.clone(), name.to_string());
    off_runtime("delete", move || d.take_and_close(&n)).and_then(|r| r)?;
    let removed = devices.dir().remove_device(name);
    // The vSSD goes too, unless its dirty count was never known (the device did not
    // open): then it is set aside, never reused by a device created on that path.
    let vssd = match state {
        DeviceState::Open(_) => std::fs::remove_file(&config.vssd),
        DeviceState::Failed(_) => {
            let aside = config.vssd.with_extension("deleted");
            std::fs::rename(&config.vssd, aside)
        }
    };
    devices.forget(name);
    removed.map_err(config_refusal)?;
    if let Err(e) = vssd
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(device = %name, "vSSD {}: {e}", config.vssd.display());
    }
    tracing::info!(device = %name, "device deleted");
    Ok(Answer::Deleted)
}

/// DEVICE_TAKEOVER: this cvad serves device `name` from the replica vSSD it holds
/// for it, with the configuration its primary sent (the backing store must be
/// reachable from here). The vSSD is fenced and released by the replica runtime,
/// moved into the data dir as the device's vSSD, and the device opens on its own
/// runtime as member `local_member`: its recovery moves every member it reaches to
/// a new epoch. A takeover that fails serves the replica vSSD again.
fn takeover(devices: &Arc<Devices>, name: &str) -> Result<Answer, Refusal> {
    devices
        .reserve(name, DEVICES_MAX)
        .map_err(|r| match r.status {
            Status::InvalidArgument => Refusal::new(
                r.status,
                format!("device {name} is served here already: nothing to take over"),
            ),
            _ => r,
        })?;
    let taken = take_over_reserved(devices, name);
    if taken.is_err() {
        devices.unreserve(name);
    }
    taken
}

fn take_over_reserved(devices: &Arc<Devices>, name: &str) -> Result<Answer, Refusal> {
    let control = devices.replica_control();
    let held = control.held(name)?;
    let config = takeover_config(devices, name, &held)?;
    if let Err(e) = std::fs::metadata(&config.backing) {
        let why = format!(
            "device {name}: backing store {}: {e}: a takeover needs it reachable from here",
            config.backing.display()
        );
        return Err(Refusal::new(Status::IoError, why));
    }
    control.release(&held.vssd)?;
    let undo = |why: Refusal| {
        if let Err(e) = std::fs::rename(&config.vssd, &held.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(device = %name, "moving {} back: {e}", config.vssd.display());
        }
        let _ = devices.dir().remove_device(name);
        if let Err(e) = control.restore(&held.vssd) {
            tracing::error!(device = %name, "{e}");
        }
        why
    };
    std::fs::rename(&held.path, &config.vssd).map_err(|e| {
        undo(Refusal::new(
            Status::IoError,
            format!(
                "device {name}: move {} into place: {e}",
                held.path.display()
            ),
        ))
    })?;
    devices
        .dir()
        .save_device(&config)
        .map_err(|e| undo(config_refusal(e)))?;
    let d = devices.clone();
    let c = config.clone();
    match off_runtime("takeover", move || d.start(c)).and_then(|r| r) {
        Ok(DeviceState::Open(_)) => {}
        Ok(DeviceState::Failed(why)) => {
            let (d, n) = (devices.clone(), name.to_string());
            let _ = off_runtime("takeover", move || d.take_and_close(&n));
            let refused = Refusal::new(
                why.status,
                format!("device {name} not taken over: {}", why.reason),
            );
            // Forgotten once the vSSD is back where the replica runtime serves it.
            let refused = undo(refused);
            devices.forget(name);
            return Err(refused);
        }
        Err(why) => return Err(undo(why)),
    }
    let recovered = devices
        .on_device(name, |host| host.device.as_ref().map(|d| d.recovered()))?
        .unwrap_or_default();
    if let Err(e) = std::fs::remove_file(held.path.with_extension("toml")) {
        tracing::warn!(device = %name, "the primary's configuration kept beside the replica: {e}");
    }
    tracing::info!(device = %name, epoch = recovered.epoch, committed = recovered.committed,
        aborted = recovered.aborted, repaired = recovered.repaired, "device taken over");
    Ok(Answer::TakenOver(recovered))
}

/// The device as this cvad runs it after a takeover: the primary's configuration,
/// this cvad's replica vSSD (moved into the data dir) as the local member, the
/// other replicas as they were; the old primary is not among them (its vSSD is
/// served by no peer), so `min_replicas` is at most the members left.
fn takeover_config(devices: &Devices, name: &str, held: &Held) -> Result<DeviceConfig, Refusal> {
    let Some(text) = &held.config else {
        let why = format!(
            "replica vSSD {} of device {name} was created without the device's configuration \
             (by an older primary): create it again, or open the device here by hand",
            held.vssd
        );
        return Err(Refusal::new(Status::InvalidArgument, why));
    };
    let primary: DeviceConfig = parse_toml("DEVICE_TAKEOVER", text).map_err(config_refusal)?;
    let Some(me) = primary.replicas.iter().find(|r| r.vssd == held.vssd) else {
        let why = format!(
            "device {name}: its configuration names no replica vSSD {}",
            held.vssd
        );
        return Err(Refusal::new(Status::InvalidArgument, why));
    };
    let vssd = devices.dir().root().join(format!("{}.vssd", held.vssd));
    if vssd.exists() {
        let why = format!("device {name}: {} exists: not overwritten", vssd.display());
        return Err(Refusal::new(Status::InvalidArgument, why));
    }
    let vssd_bytes = std::fs::metadata(&held.path)
        .map_err(|e| {
            Refusal::new(
                Status::IoError,
                format!("replica vSSD {}: {e}", held.path.display()),
            )
        })?
        .len();
    let replicas: Vec<_> = primary
        .replicas
        .iter()
        .filter(|r| r.member != me.member)
        .cloned()
        .collect();
    let config = DeviceConfig {
        vssd,
        vssd_bytes,
        local_member: me.member,
        min_replicas: primary.min_replicas.min(1 + replicas.len()),
        replicas,
        ..primary.clone()
    };
    check_device("DEVICE_TAKEOVER", &config).map_err(config_refusal)?;
    Ok(config)
}
