//! `sources: - modbus: {…}` — lines, devices, register maps and profiles.
//!
//! ```yaml
//! - modbus:
//!     name: plant
//!     poll_ms: 1000            # default poll interval of every point
//!     max_gap: 8               # registers read and discarded to merge two requests
//!     profiles:
//!       energy-meter: { file: examples/profiles/energy-meter.yaml }  # relative to gateway.yaml
//!     rtu:
//!       - port: /dev/ttyUSB0
//!         baud: 9600
//!         devices:
//!           - { id: plant/meter1, unit: 1, profile: energy-meter }
//!     tcp:
//!       - host: 192.0.2.10
//!         devices:
//!           - id: plant/pump
//!             points:
//!               - { name: speed, table: holding, address: 0, type: u16, writable: true }
//! ```
//!
//! Parsing is in two steps: serde (unknown keys are errors, with the YAML path) and
//! [`ModbusConfig::resolve`], which loads profile files, merges profile and device points, checks
//! every value and plans the requests. Every problem comes back with the path of the key at fault,
//! relative to the source's section.
//!
//! Every problem is reported, not only the first: each device and each point is parsed on its own
//! ([`Item`]), so two bad points give two errors, and a bad point does not hide the checks of the
//! others. A profile file that cannot be used is reported once (with its file and line) and its
//! devices get no follow-on errors (no false "no profile" or "no points"); points of a profile
//! file are reported at `profiles.<name>.file` with `file:line: points[k].key` in the message.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::codec::{Codec, DataType, Order};
use crate::pdu::{Table, MAX_READ_REGISTERS};
use crate::plan::{plan, Block, Span};

/// The raw `modbus:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    /// Default poll interval of every point (ms).
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    /// Largest hole (registers or bits) read and discarded to merge two points into one request.
    #[serde(default = "default_max_gap")]
    pub max_gap: u16,
    /// Registers per read request at most (1–125).
    #[serde(default = "default_max_registers")]
    pub max_registers: u16,
    /// A slave that does not answer is retried after this, doubling (with jitter) ...
    #[serde(default = "default_backoff_min_ms")]
    pub backoff_min_ms: u64,
    /// ... up to this.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// A port or connection that fails is reopened after this, doubling (with jitter) ...
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// ... up to this.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Register maps written once and referenced by devices (`profile: <name>`).
    #[serde(default)]
    pub profiles: BTreeMap<String, ProfileRef>,
    #[serde(default)]
    pub rtu: Vec<RtuLine>,
    #[serde(default)]
    pub tcp: Vec<TcpLine>,
}

fn default_poll_ms() -> u64 {
    1000
}
fn default_max_gap() -> u16 {
    8
}
fn default_max_registers() -> u16 {
    MAX_READ_REGISTERS
}
fn default_backoff_min_ms() -> u64 {
    1000
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_response_timeout_ms() -> u64 {
    500
}
fn default_connect_timeout_ms() -> u64 {
    3000
}
fn default_baud() -> u32 {
    9600
}
fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}
fn default_tcp_port() -> u16 {
    502
}

/// A list item parsed on its own: an item that does not parse is kept as its error, so every bad
/// item of a list is reported (serde alone stops at the first error of the whole section).
#[derive(Debug, Clone)]
pub enum Item<T> {
    Ok(T),
    /// `path` is relative to the item (`type`, or empty for the item itself).
    Bad {
        path: String,
        message: String,
    },
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Item<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        Ok(match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(t) => Item::Ok(t),
            Err(e) => {
                let path = e.path().to_string();
                Item::Bad {
                    path: if path == "." { String::new() } else { path },
                    message: e.into_inner().to_string(),
                }
            }
        })
    }
}

impl<T> From<T> for Item<T> {
    fn from(t: T) -> Self {
        Item::Ok(t)
    }
}

/// `a.b`, or `a` when `b` is empty.
fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (_, true) => a.to_string(),
        (true, false) => b.to_string(),
        _ => format!("{a}.{b}"),
    }
}

/// A profile: a file, or the points inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileRef {
    /// A YAML file with `points:` (and optionally `poll_ms:`), relative to gateway.yaml.
    pub file: Option<PathBuf>,
    pub poll_ms: Option<u64>,
    #[serde(default)]
    pub points: Vec<Item<PointConfig>>,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// Points polled together at their own interval (`poll_ms` of a point inside still wins).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub poll_ms: u64,
    pub points: Vec<Item<PointConfig>>,
}

/// Points and groups flattened, each group's interval becoming its points' default: the good
/// points with their paths (`points[k]`, `groups[g].points[k]`), and the bad ones as (path,
/// message).
#[allow(clippy::type_complexity)]
fn flatten(
    points: &[Item<PointConfig>],
    groups: &[GroupConfig],
) -> (Vec<(PointConfig, String)>, Vec<(String, String)>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    let mut take = |item: &Item<PointConfig>, at: String, group_poll: Option<u64>| match item {
        Item::Ok(p) => good.push((
            PointConfig {
                poll_ms: p.poll_ms.or(group_poll),
                ..p.clone()
            },
            at,
        )),
        Item::Bad { path, message } => bad.push((join(&at, path), message.clone())),
    };
    for (k, p) in points.iter().enumerate() {
        take(p, format!("points[{k}]"), None);
    }
    for (g, gc) in groups.iter().enumerate() {
        for (k, p) in gc.points.iter().enumerate() {
            take(p, format!("groups[{g}].points[{k}]"), Some(gc.poll_ms));
        }
    }
    (good, bad)
}

/// A usable profile: its interval and its good points, each with where it was written.
#[derive(Debug)]
struct Profile {
    poll_ms: Option<u64>,
    /// The device model it maps: the file's `description`, else the profile's name.
    model: Arc<str>,
    points: Vec<(PointConfig, String)>,
}

/// The contents of a profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    /// A human description of the device model.
    pub description: Option<String>,
    pub poll_ms: Option<u64>,
    #[serde(default)]
    pub points: Vec<Item<PointConfig>>,
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

/// Serial parity (shared with every serial adapter).
pub use weir_serial::Parity;

/// `rtu:` — one RS485/RS232 port with the slaves on it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtuLine {
    pub port: PathBuf,
    #[serde(default = "default_baud")]
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    /// Silence before each request; default 3.5 character times (1.75 ms above 19200 baud).
    pub inter_frame_delay_ms: Option<f64>,
    /// How long a slave may take to answer.
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    pub devices: Vec<Item<DeviceConfig>>,
}

impl RtuLine {
    /// The port and its line settings.
    pub fn serial(&self) -> weir_serial::SerialSettings {
        weir_serial::SerialSettings {
            port: self.port.clone(),
            baud: self.baud,
            parity: self.parity,
            data_bits: self.data_bits,
            stop_bits: self.stop_bits,
            flow_control: weir_serial::FlowControl::None,
        }
    }
    /// Bits per character on the wire: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        self.serial().bits_per_char()
    }
    pub fn inter_frame(&self) -> Duration {
        match self.inter_frame_delay_ms {
            Some(ms) => Duration::from_secs_f64(ms.max(0.0) / 1000.0),
            None => crate::transport::inter_frame_delay(self.baud, self.bits_per_char()),
        }
    }
}

/// Framing on a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Framing {
    /// Modbus TCP (MBAP header).
    #[default]
    Mbap,
    /// RTU frames over TCP (serial-to-Ethernet gateways in transparent mode).
    Rtu,
}

/// `tcp:` — one TCP connection (a device, or a gateway with several unit ids behind it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpLine {
    pub host: String,
    #[serde(default = "default_tcp_port")]
    pub port: u16,
    #[serde(default)]
    pub framing: Framing,
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    pub devices: Vec<Item<DeviceConfig>>,
}

/// One slave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The device id in readings and topics, e.g. `plant/meter1`.
    pub id: String,
    /// Unit id (slave address): 1–247 on RTU, 0–255 on TCP.
    #[serde(default = "one")]
    pub unit: u8,
    /// A profile name from `profiles:`; its points come first, then `points:` (same name replaces).
    pub profile: Option<String>,
    /// Default poll interval of this device's points.
    pub poll_ms: Option<u64>,
    #[serde(default)]
    pub points: Vec<Item<PointConfig>>,
    /// Points polled together at their own interval.
    #[serde(default)]
    pub groups: Vec<GroupConfig>,
}

fn one() -> u8 {
    1
}

/// One point of a register map.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointConfig {
    pub name: String,
    pub table: Table,
    pub address: u16,
    /// Default `bool` for coils and discrete inputs, `u16` for registers.
    #[serde(rename = "type")]
    pub ty: Option<DataType>,
    #[serde(default)]
    pub order: Order,
    /// `bool` in a register: bit 0 (least significant) to 15.
    pub bit: Option<u8>,
    /// `string`: registers.
    pub length: Option<u16>,
    #[serde(default = "one_f")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    pub unit: Option<String>,
    pub poll_ms: Option<u64>,
    /// Report only when the value changes (by more than `deadband`) or its quality does.
    #[serde(default)]
    pub on_change: bool,
    /// With `on_change`: the change (in engineering units) that counts.
    #[serde(default)]
    pub deadband: f64,
    /// Accept commands (coils and holding registers only).
    #[serde(default)]
    pub writable: bool,
}

fn one_f() -> f64 {
    1.0
}

/// A point ready to poll.
#[derive(Debug, Clone)]
pub struct Point {
    pub name: Arc<str>,
    pub table: Table,
    pub address: u16,
    pub codec: Codec,
    pub unit: Option<Arc<str>>,
    pub interval: Duration,
    pub on_change: bool,
    pub deadband: f64,
    pub writable: bool,
}

impl Point {
    /// Registers (or bits) the point occupies.
    pub fn count(&self) -> u16 {
        if self.table.is_bits() {
            1
        } else {
            self.codec.registers()
        }
    }
}

/// A device ready to poll.
#[derive(Debug, Clone)]
pub struct Device {
    pub id: Arc<str>,
    pub unit: u8,
    pub points: Vec<Point>,
    pub blocks: Vec<Block>,
    /// The model its profile maps (the profile file's `description`, else the profile's name);
    /// `None` without a profile. Shown in the device registry.
    pub model: Option<Arc<str>>,
}

/// How a line is reached.
#[derive(Debug, Clone)]
pub enum LineKind {
    Rtu {
        serial: weir_serial::SerialSettings,
        inter_frame: Duration,
    },
    Tcp {
        host: String,
        port: u16,
        framing: Framing,
        connect_timeout: Duration,
    },
}

/// A line ready to run: one task each.
#[derive(Debug, Clone)]
pub struct Line {
    /// `rtu:/dev/ttyUSB0` or `tcp:host:port`, the `line` label of metrics.
    pub label: String,
    pub kind: LineKind,
    pub response_timeout: Duration,
    pub devices: Vec<Device>,
}

/// The whole source, validated.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub lines: Vec<Line>,
    pub backoff: (Duration, Duration),
    pub reconnect: (Duration, Duration),
}

/// Problems, each at a path relative to the source section.
pub type Problems = Vec<(String, String)>;

impl ModbusConfig {
    /// Load profiles (files relative to `base_dir`), merge, check and plan.
    pub fn resolve(&self, base_dir: &Path) -> Result<Resolved, Problems> {
        let mut p: Problems = Vec::new();
        let mut err = |path: String, msg: String| p.push((path, msg));
        if self.poll_ms == 0 {
            err("poll_ms".into(), "must be at least 1".into());
        }
        if self.max_registers == 0 || self.max_registers > MAX_READ_REGISTERS {
            err(
                "max_registers".into(),
                format!("must be 1–{MAX_READ_REGISTERS}"),
            );
        }
        for (k, lo, hi) in [
            ("backoff_min_ms", self.backoff_min_ms, self.backoff_max_ms),
            (
                "reconnect_min_ms",
                self.reconnect_min_ms,
                self.reconnect_max_ms,
            ),
        ] {
            if lo == 0 || lo > hi {
                err(
                    k.into(),
                    "must be at least 1 and not above its _max_ms".into(),
                );
            }
        }
        if self.rtu.is_empty() && self.tcp.is_empty() {
            err(
                String::new(),
                "needs at least one `rtu:` line or `tcp:` connection".into(),
            );
        }
        // Profiles: `None` for one that cannot be used (its problems are reported here, once).
        let mut profiles: BTreeMap<&str, Option<Profile>> = BTreeMap::new();
        for (name, r) in &self.profiles {
            let at = format!("profiles.{name}");
            let profile = match (&r.file, r.points.is_empty() && r.groups.is_empty()) {
                (Some(f), true) => {
                    let path = if f.is_absolute() {
                        f.clone()
                    } else {
                        base_dir.join(f)
                    };
                    match load_profile(&path) {
                        Ok((pf, index)) => {
                            let shown = path.display().to_string();
                            let place = |p: &str| match index.line_of(p) {
                                Some(l) => format!("{shown}:{l}: {p}"),
                                None => format!("{shown}: {p}"),
                            };
                            let (good, bad) = flatten(&pf.points, &pf.groups);
                            for (p, m) in bad {
                                err(format!("{at}.file"), format!("{}: {m}", place(&p)));
                            }
                            Some(Profile {
                                poll_ms: r.poll_ms.or(pf.poll_ms),
                                model: Arc::from(pf.description.as_deref().unwrap_or(name)),
                                points: good.into_iter().map(|(pc, p)| (pc, place(&p))).collect(),
                            })
                        }
                        Err(e) => {
                            err(format!("{at}.file"), e);
                            None
                        }
                    }
                }
                (None, false) => {
                    let (good, bad) = flatten(&r.points, &r.groups);
                    for (p, m) in bad {
                        err(format!("{at}.{p}"), m);
                    }
                    Some(Profile {
                        poll_ms: r.poll_ms,
                        model: Arc::from(name.as_str()),
                        points: good
                            .into_iter()
                            .map(|(pc, p)| (pc, format!("{at}: {p}")))
                            .collect(),
                    })
                }
                _ => {
                    err(at, "give either `file:` or `points:`/`groups:`".into());
                    None
                }
            };
            profiles.insert(name, profile);
        }
        let mut ids: HashSet<String> = HashSet::new();
        let mut lines = Vec::new();
        let mut labels: HashSet<String> = HashSet::new();
        for (i, l) in self.rtu.iter().enumerate() {
            let at = format!("rtu[{i}]");
            for (key, msg) in l.serial().validate() {
                err(format!("{at}.{key}"), msg);
            }
            if l.response_timeout_ms == 0 {
                err(
                    format!("{at}.response_timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            if let Some(d) = l.inter_frame_delay_ms {
                if !(0.0..=1000.0).contains(&d) {
                    err(
                        format!("{at}.inter_frame_delay_ms"),
                        "must be 0–1000".into(),
                    );
                }
            }
            let label = format!("rtu:{}", l.port.display());
            if !labels.insert(label.clone()) {
                err(
                    format!("{at}.port"),
                    "this port is already a line of this source: put its devices together".into(),
                );
            }
            let devices = self.devices(&l.devices, &at, true, &profiles, &mut ids, &mut err);
            lines.push(Line {
                label,
                kind: LineKind::Rtu {
                    serial: l.serial(),
                    inter_frame: l.inter_frame(),
                },
                response_timeout: Duration::from_millis(l.response_timeout_ms),
                devices,
            });
        }
        for (i, l) in self.tcp.iter().enumerate() {
            let at = format!("tcp[{i}]");
            if l.host.trim().is_empty() {
                err(format!("{at}.host"), "must not be empty".into());
            }
            if l.response_timeout_ms == 0 {
                err(
                    format!("{at}.response_timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            if l.connect_timeout_ms == 0 {
                err(
                    format!("{at}.connect_timeout_ms"),
                    "must be at least 1".into(),
                );
            }
            let label = format!("tcp:{}:{}", l.host, l.port);
            if !labels.insert(label.clone()) {
                err(format!("{at}.host"), "this host and port is already a connection of this source: put its devices together".into());
            }
            let devices = self.devices(&l.devices, &at, false, &profiles, &mut ids, &mut err);
            lines.push(Line {
                label,
                kind: LineKind::Tcp {
                    host: l.host.clone(),
                    port: l.port,
                    framing: l.framing,
                    connect_timeout: Duration::from_millis(l.connect_timeout_ms),
                },
                response_timeout: Duration::from_millis(l.response_timeout_ms),
                devices,
            });
        }
        if p.is_empty() {
            Ok(Resolved {
                lines,
                backoff: (
                    Duration::from_millis(self.backoff_min_ms),
                    Duration::from_millis(self.backoff_max_ms),
                ),
                reconnect: (
                    Duration::from_millis(self.reconnect_min_ms),
                    Duration::from_millis(self.reconnect_max_ms),
                ),
            })
        } else {
            Err(p)
        }
    }

    #[allow(clippy::type_complexity)]
    fn devices(
        &self,
        devs: &[Item<DeviceConfig>],
        at: &str,
        rtu: bool,
        profiles: &BTreeMap<&str, Option<Profile>>,
        ids: &mut HashSet<String>,
        err: &mut impl FnMut(String, String),
    ) -> Vec<Device> {
        let mut out = Vec::new();
        if devs.is_empty() {
            err(format!("{at}.devices"), "needs at least one device".into());
        }
        let mut units = HashSet::new();
        for (j, d) in devs.iter().enumerate() {
            let dat = format!("{at}.devices[{j}]");
            let d = match d {
                Item::Ok(d) => d,
                Item::Bad { path, message } => {
                    err(join(&dat, path), message.clone());
                    continue;
                }
            };
            if d.id.is_empty()
                || d.id.contains(['+', '#'])
                || d.id.starts_with('/')
                || d.id.ends_with('/')
            {
                err(
                    format!("{dat}.id"),
                    format!(
                        "`{}` must be non-empty, without `+`, `#` or a leading/trailing `/`",
                        d.id
                    ),
                );
            }
            if !ids.insert(d.id.clone()) {
                err(
                    format!("{dat}.id"),
                    format!("duplicate device id `{}`", d.id),
                );
            }
            if rtu && !(1..=247).contains(&d.unit) {
                // Serial Line V1.02 §2.2: 0 is broadcast (no answer), 248–255 reserved.
                err(format!("{dat}.unit"), "must be 1–247 on an RTU line".into());
            }
            if !units.insert(d.unit) {
                err(
                    format!("{dat}.unit"),
                    format!("unit {} is already used on this line", d.unit),
                );
            }
            // Profile points first; device points replace same-named ones.
            let mut merged: Vec<(PointConfig, String)> = Vec::new();
            let mut default_poll = d.poll_ms.unwrap_or(self.poll_ms);
            // Problems already reported make the device's own "no points" check moot.
            let mut reported = false;
            let mut model = None;
            if let Some(name) = &d.profile {
                match profiles.get(name.as_str()) {
                    Some(Some(profile)) => {
                        model = Some(profile.model.clone());
                        if d.poll_ms.is_none() {
                            default_poll = profile.poll_ms.unwrap_or(self.poll_ms);
                        }
                        for (pc, origin) in &profile.points {
                            merged.push((pc.clone(), format!("{dat}.profile({origin})")));
                        }
                    }
                    Some(None) => reported = true,
                    None => {
                        reported = true;
                        err(
                            format!("{dat}.profile"),
                            format!("no profile `{name}` in `profiles:`"),
                        )
                    }
                }
            }
            let (good, bad) = flatten(&d.points, &d.groups);
            for (p, m) in bad {
                reported = true;
                err(format!("{dat}.{p}"), m);
            }
            let device_points: Vec<(PointConfig, String)> = good
                .into_iter()
                .map(|(pc, p)| (pc, format!("{dat}.{p}")))
                .collect();
            let mut from_device: HashSet<&str> = HashSet::new();
            for (pc, path) in &device_points {
                let path = path.clone();
                if !from_device.insert(pc.name.as_str()) {
                    err(
                        format!("{path}.name"),
                        format!("duplicate point `{}`", pc.name),
                    );
                    continue;
                }
                match merged.iter().position(|(m, _)| m.name == pc.name) {
                    Some(i) => merged[i] = (pc.clone(), path),
                    None => merged.push((pc.clone(), path)),
                }
            }
            let mut names = HashSet::new();
            let mut points = Vec::new();
            for (pc, path) in &merged {
                if !names.insert(pc.name.clone()) {
                    err(
                        format!("{path}.name"),
                        format!("duplicate point `{}`", pc.name),
                    );
                    continue;
                }
                if let Some(pt) = point(pc, path, default_poll, err) {
                    points.push(pt);
                }
            }
            if points.is_empty() && !reported && merged.is_empty() {
                err(
                    format!("{dat}.points"),
                    "the device has no points (give `points:` or a `profile:`)".into(),
                );
            }
            let spans: Vec<Span> = points
                .iter()
                .enumerate()
                .map(|(i, p)| Span {
                    point: i,
                    table: p.table,
                    address: p.address,
                    count: p.count(),
                    interval: p.interval,
                })
                .collect();
            let blocks = plan(
                &spans,
                self.max_registers.clamp(1, MAX_READ_REGISTERS),
                self.max_gap,
            );
            out.push(Device {
                id: Arc::from(d.id.as_str()),
                unit: d.unit,
                points,
                blocks,
                model,
            });
        }
        out
    }
}

/// A profile file and where each of its paths is (its points are checked one by one later).
fn load_profile(path: &Path) -> Result<(ProfileFile, weir_config::PathIndex), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let de = serde_yaml::Deserializer::from_str(&text);
    let pf = serde_path_to_error::deserialize::<_, ProfileFile>(de).map_err(|e| {
        let line = e
            .inner()
            .location()
            .map(|l| format!(":{}", l.line()))
            .unwrap_or_default();
        format!("{}{line}: {}: {}", path.display(), e.path(), e.inner())
    })?;
    Ok((pf, weir_config::PathIndex::build(&text)))
}

fn point(
    pc: &PointConfig,
    path: &str,
    default_poll: u64,
    err: &mut impl FnMut(String, String),
) -> Option<Point> {
    let before = std::cell::Cell::new(0usize);
    let mut bad = |k: &str, m: String| {
        before.set(before.get() + 1);
        err(format!("{path}.{k}"), m)
    };
    if pc.name.is_empty() || pc.name.contains(['/', '+', '#']) {
        bad(
            "name",
            format!("`{}` must be non-empty, without `/`, `+`, `#`", pc.name),
        );
    }
    let ty = pc.ty.unwrap_or(if pc.table.is_bits() {
        DataType::Bool
    } else {
        DataType::U16
    });
    if pc.table.is_bits() {
        if ty != DataType::Bool {
            bad("type", format!("a {} holds a bool, not {ty}", pc.table));
        }
        if pc.bit.is_some() {
            bad(
                "bit",
                format!("`bit` is for bools in registers, not a {}", pc.table),
            );
        }
    }
    if let Some(b) = pc.bit {
        if b > 15 {
            bad("bit", "must be 0–15".into());
        }
        if ty != DataType::Bool {
            bad("bit", format!("`bit` needs type bool, not {ty}"));
        }
    }
    let length = match (ty, pc.length) {
        (DataType::String, Some(n)) if (1..=MAX_READ_REGISTERS).contains(&n) => n,
        (DataType::String, _) => {
            bad(
                "length",
                format!("a string needs `length:` 1–{MAX_READ_REGISTERS} (registers)"),
            );
            1
        }
        (_, Some(_)) => {
            bad("length", "`length` is for strings only".into());
            1
        }
        (_, None) => 1,
    };
    if !(pc.scale.is_finite() && pc.scale != 0.0) {
        bad("scale", "must be a non-zero number".into());
    }
    if !pc.offset.is_finite() {
        bad("offset", "must be a number".into());
    }
    if (pc.scale != 1.0 || pc.offset != 0.0) && matches!(ty, DataType::Bool | DataType::String) {
        bad("scale", format!("scale/offset do not apply to {ty}"));
    }
    if !(pc.deadband >= 0.0 && pc.deadband.is_finite()) {
        bad("deadband", "must be 0 or more".into());
    }
    if pc.deadband > 0.0 && !pc.on_change {
        bad("deadband", "only applies with `on_change: true`".into());
    }
    if pc.writable && !pc.table.writable() {
        bad(
            "writable",
            format!(
                "a {} cannot be written (only coils and holding registers)",
                pc.table
            ),
        );
    }
    let poll = pc.poll_ms.unwrap_or(default_poll);
    if poll == 0 {
        bad("poll_ms", "must be at least 1".into());
    }
    let mut codec = Codec::new(ty, pc.order);
    codec.bit = pc.bit;
    codec.length = length;
    codec.scale = pc.scale;
    codec.offset = pc.offset;
    let count = if pc.table.is_bits() {
        1
    } else {
        codec.registers()
    };
    if pc.address as u32 + count as u32 > 0x1_0000 {
        bad("address", "the point runs past address 65535".into());
    }
    if before.get() > 0 {
        return None;
    }
    Some(Point {
        name: Arc::from(pc.name.as_str()),
        table: pc.table,
        address: pc.address,
        codec,
        unit: pc.unit.as_deref().map(Arc::from),
        interval: Duration::from_millis(poll),
        on_change: pc.on_change,
        deadband: pc.deadband,
        writable: pc.writable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(y: &str) -> ModbusConfig {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn profile_inline_and_device_override_and_planning() {
        let c = parse(
            r#"
profiles:
  meter:
    poll_ms: 500
    points:
      - { name: v, table: input, address: 0, type: f32, unit: V }
      - { name: i, table: input, address: 2, type: f32, unit: A }
      - { name: e, table: input, address: 100, type: u64 }
tcp:
  - host: 127.0.0.1
    devices:
      - { id: a/m1, unit: 1, profile: meter }
      - id: a/m2
        unit: 2
        profile: meter
        points:
          - { name: i, table: input, address: 4, type: i32, scale: 0.01 }
          - { name: relay, table: coil, address: 3, writable: true }
"#,
        );
        let r = c.resolve(Path::new(".")).unwrap();
        let d = &r.lines[0].devices;
        assert_eq!(d[0].points.len(), 3);
        assert_eq!(d[0].points[0].interval, Duration::from_millis(500));
        // v,i adjacent; e at 100 is beyond the gap
        assert_eq!(d[0].blocks.len(), 2);
        assert_eq!(d[1].points.len(), 4);
        assert_eq!(d[1].points[1].codec.ty, DataType::I32);
        assert_eq!(d[1].blocks.len(), 3, "input 0-5, input 100-103, coil 3");
    }

    #[test]
    fn groups_give_their_points_an_interval() {
        let c = parse(
            r#"
poll_ms: 1000
profiles:
  m:
    points: [ { name: a, table: input, address: 0 } ]
    groups:
      - poll_ms: 100
        points:
          - { name: b, table: input, address: 1 }
          - { name: c, table: input, address: 2, poll_ms: 50 }
tcp:
  - host: h
    devices:
      - id: d
        profile: m
        groups:
          - poll_ms: 5000
            points: [ { name: e, table: holding, address: 9 }, { name: e, table: holding, address: 10 } ]
"#,
        );
        let p = c.resolve(Path::new(".")).unwrap_err();
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "tcp[0].devices[0].groups[0].points[1].name");
        let c = parse(&c_yaml_without_duplicate());
        let r = c.resolve(Path::new(".")).unwrap();
        let d = &r.lines[0].devices[0];
        let ms = |n: &str| {
            d.points
                .iter()
                .find(|p| &*p.name == n)
                .unwrap()
                .interval
                .as_millis()
        };
        assert_eq!((ms("a"), ms("b"), ms("c"), ms("e")), (1000, 100, 50, 5000));
        assert_eq!(
            d.blocks.len(),
            4,
            "one request per interval: 1000, 100, 50, 5000"
        );
    }

    fn c_yaml_without_duplicate() -> String {
        r#"
poll_ms: 1000
profiles:
  m:
    points: [ { name: a, table: input, address: 0 } ]
    groups:
      - poll_ms: 100
        points:
          - { name: b, table: input, address: 1 }
          - { name: c, table: input, address: 2, poll_ms: 50 }
tcp:
  - host: h
    devices:
      - id: d
        profile: m
        groups:
          - poll_ms: 5000
            points: [ { name: e, table: holding, address: 9 } ]
"#
        .to_string()
    }

    #[test]
    fn problems_name_their_keys() {
        let c = parse(
            r#"
rtu:
  - port: /dev/null
    stop_bits: 3
    devices:
      - id: x
        unit: 0
        profile: nope
        points:
          - { name: a, table: input, address: 0, type: f32, bit: 2 }
          - { name: b, table: coil, address: 0, type: u16 }
          - { name: c, table: input, address: 0, writable: true }
          - { name: s, table: holding, address: 0, type: string }
          - { name: d, table: holding, address: 65535, type: u32 }
"#,
        );
        let p = c.resolve(Path::new(".")).unwrap_err();
        let paths: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        for want in [
            "rtu[0].stop_bits",
            "rtu[0].devices[0].unit",
            "rtu[0].devices[0].profile",
            "rtu[0].devices[0].points[0].bit",
            "rtu[0].devices[0].points[1].type",
            "rtu[0].devices[0].points[2].writable",
            "rtu[0].devices[0].points[3].length",
            "rtu[0].devices[0].points[4].address",
        ] {
            assert!(paths.contains(&want), "{want} not in {paths:?}");
        }
    }

    #[test]
    fn profile_files_load_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("m.yaml"),
            "points:\n  - { name: v, table: holding, address: 0, type: f33 }\n",
        )
        .unwrap();
        let c = parse(
            "profiles: { m: { file: m.yaml } }\ntcp: [ { host: h, devices: [ { id: d, profile: m } ] } ]",
        );
        let p = c.resolve(dir.path()).unwrap_err();
        assert_eq!(p[0].0, "profiles.m.file");
        assert!(
            p[0].1.contains("m.yaml:2") && p[0].1.contains("points[0].type"),
            "{}",
            p[0].1
        );
    }

    #[test]
    fn every_bad_point_and_device_is_reported() {
        // Two points serde refuses in one device, one the checks refuse, a device with a typo'd
        // key, and a device after them that is fine: four problems, each at its own path.
        let c = parse(
            r#"
tcp:
  - host: h
    devices:
      - id: a
        points:
          - { name: v, table: input, address: 0, type: f33 }
          - { name: w, table: input, adress: 2 }
          - { name: x, table: input, address: 4, type: bool, bit: 99 }
          - { name: ok, table: input, address: 6 }
      - { id: b, unti: 2, points: [ { name: v, table: input, address: 0 } ] }
      - id: c
        unit: 3
        groups:
          - poll_ms: 100
            points: [ { name: g, table: holding, address: 0, scale: zero } ]
      - { id: d, unit: 4, points: [ { name: v, table: input, address: 0 } ] }
"#,
        );
        let p = c.resolve(Path::new(".")).unwrap_err();
        let paths: Vec<&str> = p.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tcp[0].devices[0].points[0].type",
                "tcp[0].devices[0].points[1].adress",
                "tcp[0].devices[0].points[2].bit",
                "tcp[0].devices[1].unti",
                "tcp[0].devices[2].groups[0].points[0].scale",
            ],
            "{p:#?}"
        );
        assert!(p[0].1.contains("unknown variant `f33`"), "{}", p[0].1);
        assert!(p[1].1.contains("unknown field `adress`"), "{}", p[1].1);
        // Device `c` lost its only point to an error: no extra "has no points" for it.
        assert!(!p.iter().any(|(_, m)| m.contains("no points")), "{p:#?}");
    }

    #[test]
    fn a_broken_profile_file_is_one_error_and_hides_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Not YAML a profile can be: one error, with its line.
        std::fs::write(
            dir.path().join("meter.yaml"),
            "points:
  - { name: v
",
        )
        .unwrap();
        // Two bad points in a file: two errors, each with its line.
        std::fs::write(
            dir.path().join("pump.yaml"),
            "points:
  - { name: a, table: holding, address: 0 }
  - { name: b, table: holdin, address: 1 }
  - { name: c, table: holding, address: 2, type: u16, bit: 3 }
  - { name: d, table: holding, adress: 3 }
",
        )
        .unwrap();
        let c = parse(
            r#"
profiles:
  meter: { file: meter.yaml }
  pump: { file: pump.yaml }
tcp:
  - host: h
    devices:
      - { id: m1, unit: 1, profile: meter }
      - { id: p1, unit: 2, profile: pump }
      - { id: m2, unit: 3, profile: meter, points: [ { name: x, table: coil, address: 0, type: u16 } ] }
"#,
        );
        let p = c.resolve(dir.path()).unwrap_err();
        for (k, m) in &p {
            eprintln!("{k}: {m}");
        }
        let at = |path: &str| p.iter().filter(|(k, _)| k == path).count();
        assert_eq!(at("profiles.meter.file"), 1);
        assert_eq!(at("profiles.pump.file"), 2);
        let pump: Vec<&str> = p
            .iter()
            .filter(|(k, _)| k == "profiles.pump.file")
            .map(|(_, m)| m.as_str())
            .collect();
        assert!(
            pump[0].contains("pump.yaml:3: points[1].table"),
            "{}",
            pump[0]
        );
        assert!(
            pump[1].contains("pump.yaml:5: points[3].adress"),
            "{}",
            pump[1]
        );
        let meter = &p
            .iter()
            .find(|(k, _)| k == "profiles.meter.file")
            .unwrap()
            .1;
        assert!(meter.contains("meter.yaml:"), "{meter}");
        // The checks still run on what did parse: point c of the pump profile, used by p1...
        assert!(
            p.iter()
                .any(|(k, m)| k.starts_with("tcp[0].devices[1].profile(")
                    && k.contains("pump.yaml:4: points[2]")
                    && k.ends_with(".bit")
                    && m.contains("needs type bool")),
            "{p:#?}"
        );
        // ... and the device after the broken profile is still checked.
        assert_eq!(at("tcp[0].devices[2].points[0].type"), 1, "{p:#?}");
        // No false "no profile `meter`" and no "has no points" for the devices using it.
        assert!(
            !p.iter()
                .any(|(_, m)| m.contains("no profile") || m.contains("no points")),
            "{p:#?}"
        );
        assert_eq!(p.len(), 5, "{p:#?}");
    }

    #[test]
    fn inter_frame_delay_follows_the_baud_rate() {
        let l: RtuLine =
            serde_yaml::from_str("{port: /dev/x, baud: 9600, parity: even, devices: []}").unwrap();
        // 11 bits per char, 3.5 chars at 9600 baud = 4.01 ms
        assert_eq!(l.bits_per_char(), 11);
        assert!((l.inter_frame().as_secs_f64() - 3.5 * 11.0 / 9600.0).abs() < 1e-9);
        let l: RtuLine = serde_yaml::from_str("{port: /dev/x, baud: 115200, devices: []}").unwrap();
        assert_eq!(l.inter_frame(), Duration::from_micros(1750));
    }
}
