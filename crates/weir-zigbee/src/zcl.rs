//! The few parts of the Zigbee Cluster Library this adapter speaks, with no I/O: the ZCL frame
//! header, attribute records in reports and read responses, the default response, and the
//! decoding of known attributes into readings with their scaling and units.
//!
//! Reference: Zigbee Cluster Library Specification (ZCL rev. 8, 07-5123): §2.4 (frame format),
//! §2.5.2/§2.5.11 (read attributes response, report attributes), §2.5.12 (default response),
//! §2.6.2 (data types), §3.2 (Basic), §3.8 (On/Off), §4.2–4.8 (measurement clusters).
//!
//! Invariants: a malformed or truncated payload yields the records before the fault and never
//! panics; an attribute of a data type whose length is unknown ends the record list (its length
//! cannot be skipped) and is counted by the caller as undecoded.

/// ZCL data types (§2.6.2, table 2-10) with a fixed or prefixed length this module can skip.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

impl AttrValue {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Uint(u) => i64::try_from(*u).ok(),
            AttrValue::Int(i) => Some(*i),
            AttrValue::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
}

pub const FC_CLUSTER_SPECIFIC: u8 = 0x01;
pub const FC_MANUFACTURER_SPECIFIC: u8 = 0x04;
pub const FC_SERVER_TO_CLIENT: u8 = 0x08;
pub const FC_DISABLE_DEFAULT_RESPONSE: u8 = 0x10;

/// General (profile-wide) commands (§2.5, table 2-3).
pub const READ_ATTRIBUTES: u8 = 0x00;
pub const READ_ATTRIBUTES_RSP: u8 = 0x01;
pub const REPORT_ATTRIBUTES: u8 = 0x0A;
pub const WRITE_ATTRIBUTES: u8 = 0x02;
pub const WRITE_ATTRIBUTES_RSP: u8 = 0x04;
pub const CONFIGURE_REPORTING: u8 = 0x06;
pub const CONFIGURE_REPORTING_RSP: u8 = 0x07;
pub const DEFAULT_RESPONSE: u8 = 0x0B;

pub const CLUSTER_BASIC: u16 = 0x0000;
pub const CLUSTER_POWER_CONFIG: u16 = 0x0001;
pub const CLUSTER_ON_OFF: u16 = 0x0006;
pub const CLUSTER_LEVEL: u16 = 0x0008;
pub const CLUSTER_ILLUMINANCE: u16 = 0x0400;
pub const CLUSTER_TEMPERATURE: u16 = 0x0402;
pub const CLUSTER_PRESSURE: u16 = 0x0403;
pub const CLUSTER_HUMIDITY: u16 = 0x0405;
pub const CLUSTER_OCCUPANCY: u16 = 0x0406;
pub const CLUSTER_SOIL_MOISTURE: u16 = 0x0408;
pub const CLUSTER_IAS_ZONE: u16 = 0x0500;
pub const CLUSTER_METERING: u16 = 0x0702;
pub const CLUSTER_ELECTRICAL: u16 = 0x0B04;

/// The multiplier/divisor attributes a device's readings are scaled by (ZCL §4.9.2.2.5 for
/// Electrical Measurement, §10.4.2.2.4 for Metering): `(cluster, multiplier, divisor)` per
/// quantity.
pub const SCALE_ATTRS: [(&str, u16, u16, u16); 4] = [
    ("voltage", CLUSTER_ELECTRICAL, 0x0600, 0x0601),
    ("current", CLUSTER_ELECTRICAL, 0x0602, 0x0603),
    ("power", CLUSTER_ELECTRICAL, 0x0604, 0x0605),
    ("energy", CLUSTER_METERING, 0x0301, 0x0302),
];

/// A quantity's multiplier and divisor (1 and 1 when the device did not say).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scale {
    pub multiplier: u32,
    pub divisor: u32,
}

impl Default for Scale {
    fn default() -> Self {
        Scale {
            multiplier: 1,
            divisor: 1,
        }
    }
}

impl Scale {
    pub fn apply(&self, v: f64) -> f64 {
        v * self.multiplier as f64 / self.divisor.max(1) as f64
    }
}

/// Scales by quantity name (`voltage`, `current`, `power`, `energy`).
pub type Scales = std::collections::BTreeMap<String, Scale>;

/// IAS Zone (ZCL §8.2): attributes, and commands by direction.
pub const ATTR_IAS_ZONE_TYPE: u16 = 0x0001;
pub const ATTR_IAS_CIE_ADDRESS: u16 = 0x0010;
/// Server to client: Zone Status Change Notification, Zone Enroll Request.
pub const IAS_ZONE_STATUS_CHANGE: u8 = 0x00;
pub const IAS_ZONE_ENROLL_REQUEST: u8 = 0x01;
/// Client to server: Zone Enroll Response.
pub const IAS_ZONE_ENROLL_RESPONSE: u8 = 0x00;

/// Basic cluster attributes (§3.2.2.2).
pub const ATTR_MANUFACTURER_NAME: u16 = 0x0004;
pub const ATTR_MODEL_IDENTIFIER: u16 = 0x0005;
pub const ATTR_POWER_SOURCE: u16 = 0x0007;

/// On/Off cluster commands (§3.8.2.3).
pub const ON_OFF_OFF: u8 = 0x00;
pub const ON_OFF_ON: u8 = 0x01;
pub const ON_OFF_TOGGLE: u8 = 0x02;
/// Level Control: Move to Level (with On/Off) (§3.10.2.4.1, §3.10.2.4.5).
pub const LEVEL_MOVE_TO_LEVEL_WITH_ON_OFF: u8 = 0x04;

/// Move to Level arguments for `pct` percent: level 0–254 (255 is invalid), transition 0.
pub fn move_to_level_args(pct: f64) -> Vec<u8> {
    let level = (pct.clamp(0.0, 100.0) * 254.0 / 100.0).round() as u8;
    vec![level, 0, 0]
}

/// A ZCL frame (§2.4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZclFrame {
    pub frame_control: u8,
    pub manufacturer: Option<u16>,
    pub tsn: u8,
    pub command: u8,
    pub payload: Vec<u8>,
}

impl ZclFrame {
    pub fn parse(data: &[u8]) -> Option<ZclFrame> {
        let fc = *data.first()?;
        let (manufacturer, rest) = if fc & FC_MANUFACTURER_SPECIFIC != 0 {
            let m = u16::from_le_bytes([*data.get(1)?, *data.get(2)?]);
            (Some(m), data.get(3..)?)
        } else {
            (None, data.get(1..)?)
        };
        Some(ZclFrame {
            frame_control: fc,
            manufacturer,
            tsn: *rest.first()?,
            command: *rest.get(1)?,
            payload: rest.get(2..)?.to_vec(),
        })
    }
    pub fn is_general(&self) -> bool {
        self.frame_control & 0x03 == 0
    }
    /// A cluster-specific command from client to server, default response enabled.
    pub fn cluster_command(tsn: u8, command: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = vec![FC_CLUSTER_SPECIFIC, tsn, command];
        v.extend_from_slice(payload);
        v
    }
    /// Write Attributes (§2.5.3) of one attribute, client to server.
    pub fn write_attribute(tsn: u8, attr: u16, data_type: u8, value: &[u8]) -> Vec<u8> {
        let mut v = vec![0x00, tsn, WRITE_ATTRIBUTES];
        v.extend_from_slice(&attr.to_le_bytes());
        v.push(data_type);
        v.extend_from_slice(value);
        v
    }
    /// A cluster-specific command from server to client (a notification).
    pub fn is_cluster_from_server(&self) -> bool {
        self.frame_control & 0x03 == FC_CLUSTER_SPECIFIC
            && self.frame_control & FC_SERVER_TO_CLIENT != 0
    }
    /// Read Attributes (§2.5.1), client to server.
    pub fn read_attributes(tsn: u8, attrs: &[u16]) -> Vec<u8> {
        let mut v = vec![0x00, tsn, READ_ATTRIBUTES];
        for a in attrs {
            v.extend_from_slice(&a.to_le_bytes());
        }
        v
    }
}

/// The value of data type `ty` at the start of `b`, and its length; `None` when the type's length
/// is unknown here or `b` is too short.
pub fn parse_value(ty: u8, b: &[u8]) -> Option<(AttrValue, usize)> {
    let uint = |n: usize| -> Option<(AttrValue, usize)> {
        let s = b.get(..n)?;
        let mut x = 0u64;
        for (i, byte) in s.iter().enumerate() {
            x |= (*byte as u64) << (8 * i);
        }
        Some((AttrValue::Uint(x), n))
    };
    let int = |n: usize| -> Option<(AttrValue, usize)> {
        let (AttrValue::Uint(u), _) = uint(n)? else {
            return None;
        };
        let shift = 64 - 8 * n as u32;
        Some((AttrValue::Int(((u << shift) as i64) >> shift), n))
    };
    match ty {
        0x10 => Some((AttrValue::Bool(*b.first()? != 0), 1)),
        // data, bitmap, unsigned, enum: 8…64 bits.
        0x08..=0x0F => uint((ty - 0x07) as usize),
        0x18..=0x1F => uint((ty - 0x17) as usize),
        0x20..=0x27 => uint((ty - 0x1F) as usize),
        0x28..=0x2F => int((ty - 0x27) as usize),
        0x30 => uint(1),
        0x31 => uint(2),
        0x39 => {
            let s: [u8; 4] = b.get(..4)?.try_into().ok()?;
            Some((AttrValue::Float(f32::from_le_bytes(s) as f64), 4))
        }
        0x3A => {
            let s: [u8; 8] = b.get(..8)?.try_into().ok()?;
            Some((AttrValue::Float(f64::from_le_bytes(s)), 8))
        }
        0x41 | 0x42 => {
            let n = *b.first()? as usize;
            if n == 0xFF {
                // An invalid (absent) string (§2.6.2.11).
                return Some((AttrValue::Text(String::new()), 1));
            }
            let s = b.get(1..1 + n)?;
            let v = if ty == 0x42 {
                AttrValue::Text(
                    String::from_utf8_lossy(s)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            } else {
                AttrValue::Bytes(s.to_vec())
            };
            Some((v, 1 + n))
        }
        0xE2 => uint(4), // UTC time
        0xF0 => uint(8), // IEEE address
        _ => None,
    }
}

/// One attribute as reported or read.
#[derive(Clone, Debug, PartialEq)]
pub struct AttrRecord {
    pub attr: u16,
    pub value: AttrValue,
}

/// Attribute records of a Report Attributes payload (§2.5.11): `id, type, value` repeated. The
/// second element is true when the list ended at something that could not be decoded.
pub fn parse_report(p: &[u8]) -> (Vec<AttrRecord>, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let Some(hdr) = p.get(i..i + 3) else {
            return (out, true);
        };
        let attr = u16::from_le_bytes([hdr[0], hdr[1]]);
        let Some((value, n)) = parse_value(hdr[2], &p[i + 3..]) else {
            return (out, true);
        };
        out.push(AttrRecord { attr, value });
        i += 3 + n;
    }
    (out, false)
}

/// Successful records of a Read Attributes Response (§2.5.2): `id, status, [type, value]`.
pub fn parse_read_rsp(p: &[u8]) -> (Vec<AttrRecord>, bool) {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let Some(hdr) = p.get(i..i + 3) else {
            return (out, true);
        };
        let attr = u16::from_le_bytes([hdr[0], hdr[1]]);
        if hdr[2] != 0 {
            i += 3;
            continue;
        }
        let Some(ty) = p.get(i + 3) else {
            return (out, true);
        };
        let Some((value, n)) = parse_value(*ty, &p[i + 4..]) else {
            return (out, true);
        };
        out.push(AttrRecord { attr, value });
        i += 4 + n;
    }
    (out, false)
}

/// ZCL status names (§2.6.3, table 2-12) for command results.
pub fn status_name(s: u8) -> &'static str {
    match s {
        0x00 => "SUCCESS",
        0x01 => "FAILURE",
        0x7E => "NOT_AUTHORIZED",
        0x80 => "MALFORMED_COMMAND",
        0x81 => "UNSUP_COMMAND",
        0x85 => "INVALID_FIELD",
        0x86 => "UNSUPPORTED_ATTRIBUTE",
        0x87 => "INVALID_VALUE",
        0x88 => "READ_ONLY",
        0x89 => "INSUFFICIENT_SPACE",
        0x8B => "NOT_FOUND",
        0x8C => "UNREPORTABLE_ATTRIBUTE",
        0x8D => "INVALID_DATA_TYPE",
        0x94 => "TIMEOUT",
        0xC3 => "UNSUPPORTED_CLUSTER",
        _ => "unknown status",
    }
}

/// What a known attribute means: point name, unit, class and value type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measure {
    pub point: &'static str,
    pub unit: Option<&'static str>,
    pub class: Option<&'static str>,
    pub kind: MeasureKind,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MeasureKind {
    Float,
    Bool,
}

const fn m(
    point: &'static str,
    unit: Option<&'static str>,
    class: Option<&'static str>,
    kind: MeasureKind,
) -> Measure {
    Measure {
        point,
        unit,
        class,
        kind,
    }
}

const TEMPERATURE: [Measure; 1] = [m(
    "temperature",
    Some("°C"),
    Some("temperature"),
    MeasureKind::Float,
)];
const HUMIDITY: [Measure; 1] = [m(
    "humidity",
    Some("%"),
    Some("humidity"),
    MeasureKind::Float,
)];
const PRESSURE: [Measure; 1] = [m(
    "pressure",
    Some("hPa"),
    Some("pressure"),
    MeasureKind::Float,
)];
const ILLUMINANCE: [Measure; 1] = [m(
    "illuminance",
    Some("lx"),
    Some("illuminance"),
    MeasureKind::Float,
)];
const OCCUPANCY: [Measure; 1] = [m("occupancy", None, Some("occupancy"), MeasureKind::Bool)];
const SOIL: [Measure; 1] = [m(
    "soil_moisture",
    Some("%"),
    Some("moisture"),
    MeasureKind::Float,
)];
const ON_OFF: [Measure; 1] = [m("on_off", None, Some("switch"), MeasureKind::Bool)];
const ELECTRICAL: [Measure; 3] = [
    m("power", Some("W"), Some("power"), MeasureKind::Float),
    m("voltage", Some("V"), Some("voltage"), MeasureKind::Float),
    m("current", Some("A"), Some("current"), MeasureKind::Float),
];
const METERING: [Measure; 1] = [m("energy", Some("kWh"), Some("energy"), MeasureKind::Float)];
const LEVEL: [Measure; 1] = [m(
    "level",
    Some("%"),
    Some("brightness"),
    MeasureKind::Float,
)];
const POWER: [Measure; 2] = [
    m("battery", Some("%"), Some("battery"), MeasureKind::Float),
    m(
        "battery_voltage",
        Some("V"),
        Some("voltage"),
        MeasureKind::Float,
    ),
];

/// The points a device with this server cluster has.
pub fn measures_of_cluster(cluster: u16) -> &'static [Measure] {
    match cluster {
        CLUSTER_TEMPERATURE => &TEMPERATURE,
        CLUSTER_HUMIDITY => &HUMIDITY,
        CLUSTER_PRESSURE => &PRESSURE,
        CLUSTER_ILLUMINANCE => &ILLUMINANCE,
        CLUSTER_OCCUPANCY => &OCCUPANCY,
        CLUSTER_SOIL_MOISTURE => &SOIL,
        CLUSTER_ON_OFF => &ON_OFF,
        CLUSTER_LEVEL => &LEVEL,
        CLUSTER_POWER_CONFIG => &POWER,
        CLUSTER_ELECTRICAL => &ELECTRICAL,
        CLUSTER_METERING => &METERING,
        _ => &[],
    }
}

/// How a cluster's measured attribute is set up to report (ZCL §2.5.7): attribute, data type,
/// minimum and maximum interval in seconds, reportable change (empty for discrete types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reporting {
    pub attr: u16,
    pub data_type: u8,
    pub min_s: u16,
    pub max_s: u16,
    pub change: Vec<u8>,
}

/// The reporting this adapter configures for a server cluster it reads; `None` for others.
/// Changes: 0.1 °C, 1 %RH, 1 hPa, a step of 500 in log-lux, 1 %soil, 1 % battery.
pub fn reporting_of_cluster(cluster: u16) -> Option<Reporting> {
    let r = |attr: u16, data_type: u8, min_s: u16, max_s: u16, change: &[u8]| Reporting {
        attr,
        data_type,
        min_s,
        max_s,
        change: change.to_vec(),
    };
    Some(match cluster {
        CLUSTER_TEMPERATURE => r(0, 0x29, 10, 300, &10i16.to_le_bytes()),
        CLUSTER_HUMIDITY => r(0, 0x21, 10, 300, &100u16.to_le_bytes()),
        CLUSTER_PRESSURE => r(0, 0x29, 10, 300, &1i16.to_le_bytes()),
        CLUSTER_ILLUMINANCE => r(0, 0x21, 10, 300, &500u16.to_le_bytes()),
        CLUSTER_SOIL_MOISTURE => r(0, 0x21, 10, 300, &100u16.to_le_bytes()),
        CLUSTER_OCCUPANCY => r(0, 0x18, 0, 300, &[]),
        CLUSTER_ON_OFF => r(0, 0x10, 0, 300, &[]),
        CLUSTER_LEVEL => r(0, 0x20, 1, 300, &[1]),
        // ActivePower int16 (§4.9.2.2.4), a change of 1 unit; CurrentSummationDelivered uint48.
        CLUSTER_ELECTRICAL => r(0x050B, 0x29, 10, 300, &1i16.to_le_bytes()),
        CLUSTER_METERING => r(0x0000, 0x25, 10, 3600, &[1, 0, 0, 0, 0, 0]),
        CLUSTER_POWER_CONFIG => r(0x0021, 0x20, 3600, 21600, &[2]),
        _ => return None,
    })
}

impl Reporting {
    /// A Configure Reporting command (§2.5.7) with this one record, client to server.
    pub fn command(&self, tsn: u8) -> Vec<u8> {
        let mut v = vec![0x00, tsn, CONFIGURE_REPORTING, 0x00];
        v.extend_from_slice(&self.attr.to_le_bytes());
        v.push(self.data_type);
        v.extend_from_slice(&self.min_s.to_le_bytes());
        v.extend_from_slice(&self.max_s.to_le_bytes());
        v.extend_from_slice(&self.change);
        v
    }
}

/// The first failure in a Configure Reporting Response (§2.5.8): a lone SUCCESS byte means every
/// record succeeded; otherwise `status, direction, attribute` records.
pub fn configure_reporting_failure(p: &[u8]) -> Option<u8> {
    match p {
        [] => Some(0x80),
        [0] => None,
        _ => p.chunks(4).map(|c| c[0]).find(|s| *s != 0),
    }
}

/// The point an IAS zone's alarm 1 bit becomes, by zone type (§8.2.2.2.1.3), its class, and
/// whether it is inverted (a contact switch reports `contact: true` when closed, alarm 1 clear).
pub fn ias_alarm_point(zone_type: Option<u16>) -> (&'static str, &'static str, bool) {
    match zone_type {
        Some(0x0015) => ("contact", "door", true),
        Some(0x002A) => ("water_leak", "moisture", false),
        Some(0x000D) => ("occupancy", "motion", false),
        Some(0x0028) => ("smoke", "smoke", false),
        Some(0x002B) => ("gas", "gas", false),
        _ => ("alarm", "safety", false),
    }
}

/// A Zone Status Change Notification's zone status (§8.2.2.4.1): the alarm point, `tamper`
/// (bit 2) and `battery_low` (bit 3).
pub fn decode_zone_status(zone_type: Option<u16>, status: u16) -> [Decoded; 3] {
    let (point, _, inverted) = ias_alarm_point(zone_type);
    let alarm1 = status & 0x0001 != 0;
    [
        Decoded::Bool(point, alarm1 != inverted),
        Decoded::Bool("tamper", status & 0x0004 != 0),
        Decoded::Bool("battery_low", status & 0x0008 != 0),
    ]
}

/// A decoded attribute: point, value (as f64 or bool) and unit.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    Float(&'static str, f64, Option<&'static str>),
    Bool(&'static str, bool),
}

/// Decode a known attribute with its cluster's scaling (ZCL §4.2–4.9, §3.3, §3.8, §10.4) and the
/// device's multipliers and divisors; `None` for an attribute this adapter does not know, or the
/// cluster's "invalid measurement" value.
pub fn decode_scaled(cluster: u16, attr: u16, v: &AttrValue, scales: &Scales) -> Option<Decoded> {
    let scale = |q: &str| scales.get(q).copied().unwrap_or_default();
    let i = v.as_i64();
    let round = |x: f64| (x * 1e6).round() / 1e6;
    match (cluster, attr) {
        // RMSVoltage uint16, RMSCurrent uint16, ActivePower int16 (§4.9.2.2.4); 0xFFFF / 0x8000
        // invalid.
        (CLUSTER_ELECTRICAL, 0x0505) => {
            let x = i?;
            (x != 0xFFFF).then(|| {
                Decoded::Float(
                    "voltage",
                    round(scale("voltage").apply(x as f64)),
                    Some("V"),
                )
            })
        }
        (CLUSTER_ELECTRICAL, 0x0508) => {
            let x = i?;
            (x != 0xFFFF).then(|| {
                Decoded::Float(
                    "current",
                    round(scale("current").apply(x as f64)),
                    Some("A"),
                )
            })
        }
        (CLUSTER_ELECTRICAL, 0x050B) => {
            let x = i?;
            (x != -0x8000)
                .then(|| Decoded::Float("power", round(scale("power").apply(x as f64)), Some("W")))
        }
        // CurrentSummationDelivered uint48 × multiplier / divisor = kWh (§10.4.2.2.1).
        (CLUSTER_METERING, 0x0000) => Some(Decoded::Float(
            "energy",
            round(scale("energy").apply(i? as f64)),
            Some("kWh"),
        )),
        _ => decode(cluster, attr, v),
    }
}

/// Decode a known attribute with its cluster's fixed scaling (ZCL §4.2–4.8, §3.3, §3.8); `None`
/// for an attribute this adapter does not know, or the cluster's "invalid measurement" value.
pub fn decode(cluster: u16, attr: u16, v: &AttrValue) -> Option<Decoded> {
    let i = v.as_i64();
    match (cluster, attr) {
        // MeasuredValue int16 = 100 × °C; 0x8000 = invalid (§4.4.2.2.1).
        (CLUSTER_TEMPERATURE, 0x0000) => {
            let x = i?;
            (x != -0x8000).then(|| Decoded::Float("temperature", x as f64 / 100.0, Some("°C")))
        }
        // uint16 = 100 × %; 0xFFFF invalid (§4.7.2.1.1).
        (CLUSTER_HUMIDITY, 0x0000) => {
            let x = i?;
            (x != 0xFFFF).then(|| Decoded::Float("humidity", x as f64 / 100.0, Some("%")))
        }
        (CLUSTER_SOIL_MOISTURE, 0x0000) => {
            let x = i?;
            (x != 0xFFFF).then(|| Decoded::Float("soil_moisture", x as f64 / 100.0, Some("%")))
        }
        // int16 = 10 × kPa = hPa (§4.5.2.2.1).
        (CLUSTER_PRESSURE, 0x0000) => {
            let x = i?;
            (x != -0x8000).then_some(Decoded::Float("pressure", x as f64, Some("hPa")))
        }
        // uint16 = 10000 × log10(lx) + 1; 0 = too low, 0xFFFF invalid (§4.2.2.2.1).
        (CLUSTER_ILLUMINANCE, 0x0000) => {
            let x = i?;
            (x != 0xFFFF).then(|| {
                let lx = if x == 0 {
                    0.0
                } else {
                    10f64.powf((x as f64 - 1.0) / 10000.0)
                };
                Decoded::Float("illuminance", (lx * 10.0).round() / 10.0, Some("lx"))
            })
        }
        (CLUSTER_OCCUPANCY, 0x0000) => Some(Decoded::Bool("occupancy", i? & 1 != 0)),
        (CLUSTER_ON_OFF, 0x0000) => Some(Decoded::Bool("on_off", i? != 0)),
        // CurrentLevel uint8 0–254 (§3.10.2.3.1) as a percentage; 255 invalid.
        (CLUSTER_LEVEL, 0x0000) => {
            let x = i?;
            (x != 0xFF).then(|| {
                Decoded::Float(
                    "level",
                    (x as f64 * 1000.0 / 254.0).round() / 10.0,
                    Some("%"),
                )
            })
        }
        // BatteryVoltage uint8 = 100 mV; BatteryPercentageRemaining uint8 = 2 × % (§3.3.2.2.3).
        (CLUSTER_POWER_CONFIG, 0x0020) => Some(Decoded::Float(
            "battery_voltage",
            i? as f64 / 10.0,
            Some("V"),
        )),
        (CLUSTER_POWER_CONFIG, 0x0021) => {
            let x = i?;
            (x != 0xFF).then(|| Decoded::Float("battery", x as f64 / 2.0, Some("%")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_report_from_the_peers_example() {
        // ZCL part of PEERS.md's AF_INCOMING_MSG example (zigpy-encoded): int16 2150.
        let data = [0x18, 0x2a, 0x0a, 0x00, 0x00, 0x29, 0x66, 0x08];
        let f = ZclFrame::parse(&data).unwrap();
        assert_eq!(
            (f.tsn, f.command, f.is_general()),
            (0x2a, REPORT_ATTRIBUTES, true)
        );
        let (recs, cut) = parse_report(&f.payload);
        assert!(!cut);
        assert_eq!(
            decode(CLUSTER_TEMPERATURE, recs[0].attr, &recs[0].value),
            Some(Decoded::Float("temperature", 21.5, Some("°C")))
        );
    }

    #[test]
    fn electrical_and_metering_use_the_device_multiplier_and_divisor() {
        let mut scales = Scales::new();
        scales.insert(
            "power".into(),
            Scale {
                multiplier: 1,
                divisor: 10,
            },
        );
        scales.insert(
            "energy".into(),
            Scale {
                multiplier: 1,
                divisor: 1000,
            },
        );
        assert_eq!(
            decode_scaled(CLUSTER_ELECTRICAL, 0x050B, &AttrValue::Int(1234), &scales),
            Some(Decoded::Float("power", 123.4, Some("W")))
        );
        assert_eq!(
            decode_scaled(CLUSTER_METERING, 0, &AttrValue::Uint(56789), &scales),
            Some(Decoded::Float("energy", 56.789, Some("kWh")))
        );
        // Without a scale the raw value; other clusters as `decode`.
        assert_eq!(
            decode_scaled(CLUSTER_ELECTRICAL, 0x0505, &AttrValue::Uint(230), &scales),
            Some(Decoded::Float("voltage", 230.0, Some("V")))
        );
        assert_eq!(
            decode_scaled(CLUSTER_TEMPERATURE, 0, &AttrValue::Int(2000), &scales),
            Some(Decoded::Float("temperature", 20.0, Some("°C")))
        );
    }

    #[test]
    fn scaled_measurements() {
        let f = |c, a, v| decode(c, a, &v);
        assert_eq!(
            f(CLUSTER_ILLUMINANCE, 0, AttrValue::Uint(30001)),
            Some(Decoded::Float("illuminance", 1000.0, Some("lx")))
        );
        assert_eq!(
            f(CLUSTER_PRESSURE, 0, AttrValue::Int(1013)),
            Some(Decoded::Float("pressure", 1013.0, Some("hPa")))
        );
        assert_eq!(
            f(CLUSTER_POWER_CONFIG, 0x0021, AttrValue::Uint(151)),
            Some(Decoded::Float("battery", 75.5, Some("%")))
        );
        assert_eq!(
            f(CLUSTER_POWER_CONFIG, 0x0020, AttrValue::Uint(29)),
            Some(Decoded::Float("battery_voltage", 2.9, Some("V")))
        );
        assert_eq!(
            f(CLUSTER_LEVEL, 0, AttrValue::Uint(127)),
            Some(Decoded::Float("level", 50.0, Some("%")))
        );
        assert_eq!(
            f(CLUSTER_OCCUPANCY, 0, AttrValue::Uint(1)),
            Some(Decoded::Bool("occupancy", true))
        );
        assert_eq!(move_to_level_args(50.0), vec![127, 0, 0]);
        assert_eq!(move_to_level_args(100.0), vec![254, 0, 0]);
    }

    #[test]
    fn zone_status_by_zone_type() {
        assert_eq!(
            decode_zone_status(Some(0x0015), 0x0001),
            [
                Decoded::Bool("contact", false),
                Decoded::Bool("tamper", false),
                Decoded::Bool("battery_low", false)
            ]
        );
        assert_eq!(
            decode_zone_status(Some(0x0015), 0x0000)[0],
            Decoded::Bool("contact", true)
        );
        assert_eq!(
            decode_zone_status(Some(0x002A), 0x0009)[0],
            Decoded::Bool("water_leak", true)
        );
        assert_eq!(
            decode_zone_status(Some(0x002A), 0x0009)[2],
            Decoded::Bool("battery_low", true)
        );
        assert_eq!(
            decode_zone_status(None, 0x0004)[1],
            Decoded::Bool("tamper", true)
        );
    }

    #[test]
    fn configure_reporting_as_zigpy_reads_it() {
        // zigpy's Configure_Reporting schema reads these as (attr 0, int16, 10, 300, change 10)
        // and (attr 0, bool, 0, 300, no change): tests/peer/znp_emulator.py prints them.
        let t = reporting_of_cluster(CLUSTER_TEMPERATURE)
            .unwrap()
            .command(7);
        assert_eq!(t, [0x00, 7, 0x06, 0, 0, 0, 0x29, 10, 0, 0x2c, 1, 10, 0]);
        let o = reporting_of_cluster(CLUSTER_ON_OFF).unwrap().command(8);
        assert_eq!(o, [0x00, 8, 0x06, 0, 0, 0, 0x10, 0, 0, 0x2c, 1]);
        assert_eq!(configure_reporting_failure(&[0]), None);
        assert_eq!(configure_reporting_failure(&[0x86, 0, 0, 0]), Some(0x86));
        assert_eq!(reporting_of_cluster(CLUSTER_BASIC), None);
    }

    #[test]
    fn negative_temperature_and_invalid_values() {
        assert_eq!(
            decode(
                CLUSTER_TEMPERATURE,
                0,
                &parse_value(0x29, &(-550i16).to_le_bytes()).unwrap().0
            ),
            Some(Decoded::Float("temperature", -5.5, Some("°C")))
        );
        assert_eq!(
            decode(CLUSTER_TEMPERATURE, 0, &AttrValue::Int(-0x8000)),
            None
        );
        assert_eq!(decode(CLUSTER_HUMIDITY, 0, &AttrValue::Uint(0xFFFF)), None);
        assert_eq!(decode(0x0B04, 0x050B, &AttrValue::Int(5)), None);
    }

    #[test]
    fn read_response_skips_failed_records_and_truncation_is_flagged() {
        // model "TH-1", manufacturer unsupported (0x86), power source enum8 3.
        let p = [
            0x05, 0x00, 0x00, 0x42, 0x04, b'T', b'H', b'-', b'1', 0x04, 0x00, 0x86, 0x07, 0x00,
            0x00, 0x30, 0x03,
        ];
        let (recs, cut) = parse_read_rsp(&p);
        assert!(!cut);
        assert_eq!(recs[0].value, AttrValue::Text("TH-1".into()));
        assert_eq!(
            recs[1],
            AttrRecord {
                attr: 7,
                value: AttrValue::Uint(3)
            }
        );
        let (recs, cut) = parse_read_rsp(&p[..7]);
        assert!(cut && recs.is_empty());
        let (recs, cut) = parse_report(&[0x00, 0x00, 0x4C, 0x01]);
        assert!(cut && recs.is_empty(), "a struct (0x4C) cannot be skipped");
    }
}
