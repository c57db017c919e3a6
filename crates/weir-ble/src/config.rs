//! The `ble` source section of gateway.yaml.
//!
//! ```yaml
//! sources:
//!   - name: ble
//!     kind: ble
//!     adapter: hci0                 # default: the first adapter BlueZ lists
//!     devices:                      # the allowlist: MAC (or beacon id) → device id
//!       "A4:C1:38:11:22:33": gh1/bed-north
//!       "54:48:E6:8F:80:A5": { id: gh1/door, bindkey_file: /etc/weir/keys/door.key }
//!       "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1:7": staff/badge-7
//!       "C0:FF:EE:00:00:01": { id: gh1/tank, raw: true }   # hex points for a rhai rule
//!     min_interval_ms: 1000
//!     away_after_s: 300
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// A BLE radio through BlueZ.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BleConfig {
    /// BlueZ adapter name (`hci0`); absent: the first adapter BlueZ lists.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Devices by MAC (`A4:C1:38:11:22:33`) or beacon identity (`ibeacon:<uuid>:<major>:<minor>`,
    /// `eddystone:<namespace>:<instance>`): a device id, or `{id, bindkey | bindkey_file, raw}`.
    /// Only these are devices unless `allow_unknown` is set.
    #[serde(default)]
    pub devices: BTreeMap<String, DeviceEntry>,
    /// Also make a device `ble/<mac>` of every advert in a known format from an unlisted
    /// address (off by default: a busy street's phones and tags would become devices).
    #[serde(default)]
    pub allow_unknown: bool,
    /// Emit the manufacturer and service data no decoder reads as hex string points
    /// (`manufacturer_<company>`, `service_<uuid>`) for every allowed device (per device:
    /// `raw: true`).
    #[serde(default)]
    pub raw: bool,
    /// Adverts without a measurement counter (and raw points) give readings at most this often
    /// per device; adverts with one (BTHome packet id, Ruuvi sequence, pvvx counter) give one
    /// reading per counter value.
    #[serde(default = "default_min_interval_ms")]
    pub min_interval_ms: u64,
    /// A device not heard for this long gets `present=false` (and `true` when heard again).
    #[serde(default = "default_away_after_s")]
    pub away_after_s: u64,
    /// Emit the advert's signal strength as the `rssi` point (dBm) with each reading.
    #[serde(default = "default_true")]
    pub rssi: bool,
    /// No advert from any allowed device for this long restarts discovery (a BlueZ scan that
    /// silently stops delivering). 0 turns the check off.
    #[serde(default = "default_silence_restart_s")]
    pub silence_restart_s: u64,
    /// How often the adapter and BlueZ are checked (adapter gone, bluetoothd restarted).
    #[serde(default = "default_health_interval_ms")]
    pub health_interval_ms: u64,
    /// At most this many GATT connections open at once (connects are made one at a time:
    /// BlueZ misbehaves with parallel connects).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a GATT connect plus service discovery may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First delay before reconnecting a GATT device that dropped or failed (doubled up to a
    /// minute, with jitter).
    #[serde(default = "default_reconnect_backoff_ms")]
    pub reconnect_backoff_ms: u64,
}

/// One `devices` entry: a device id, or a map of [`DeviceConfig`] (whose own errors, such as an
/// unknown key, are reported as such).
#[derive(Debug, Clone)]
pub enum DeviceEntry {
    Id(String),
    Full(DeviceConfig),
}

impl<'de> Deserialize<'de> for DeviceEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = DeviceEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a device id, or { id, bindkey | bindkey_file, raw }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DeviceEntry, E> {
                Ok(DeviceEntry::Id(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                m: A,
            ) -> Result<DeviceEntry, A::Error> {
                DeviceConfig::deserialize(serde::de::value::MapAccessDeserializer::new(m))
                    .map(DeviceEntry::Full)
            }
        }
        d.deserialize_any(V)
    }
}

/// A device with options.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    /// BTHome bind key, 32 hex digits (prefer `bindkey_file`).
    #[serde(default)]
    pub bindkey: Option<String>,
    /// File holding the bind key (relative to the configuration file's directory).
    #[serde(default)]
    pub bindkey_file: Option<PathBuf>,
    /// Emit undecoded data as hex points for this device.
    #[serde(default)]
    pub raw: bool,
    /// Characteristics to read, subscribe to or write over a GATT connection (the device must
    /// be connectable); the device is connected while the source runs.
    #[serde(default)]
    pub gatt: Vec<GattPoint>,
}

/// One characteristic as a point.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GattPoint {
    /// Point name.
    pub point: String,
    /// Characteristic UUID: 16-bit (`2a6e`) or full.
    pub characteristic: String,
    /// Service UUID, when the characteristic UUID is not unique on the device.
    #[serde(default)]
    pub service: Option<String>,
    /// How the value is coded.
    #[serde(rename = "type")]
    pub value_type: GattType,
    /// Byte order of numbers (BLE's own is little endian).
    #[serde(default)]
    pub big_endian: bool,
    /// value = raw · scale + offset (numbers only; a write is converted back).
    #[serde(default = "default_scale")]
    pub scale: f64,
    #[serde(default)]
    pub offset: f64,
    #[serde(default)]
    pub unit: Option<String>,
    /// Read the characteristic this often.
    #[serde(default)]
    pub read_every_s: Option<u64>,
    /// Subscribe to notifications (or indications).
    #[serde(default)]
    pub notify: bool,
    /// Writable from the command router (MQTT `…/set`, rules); the result is `ok` or the ATT
    /// error's name.
    #[serde(default)]
    pub writable: bool,
}

/// Value types of the GATT codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GattType {
    U8,
    I8,
    U16,
    I16,
    U24,
    U32,
    I32,
    F32,
    Bool,
    Utf8,
    Hex,
}

fn default_scale() -> f64 {
    1.0
}

fn default_min_interval_ms() -> u64 {
    1000
}
fn default_away_after_s() -> u64 {
    300
}
fn default_true() -> bool {
    true
}
fn default_silence_restart_s() -> u64 {
    120
}
fn default_health_interval_ms() -> u64 {
    1000
}
fn default_max_connections() -> usize {
    3
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_reconnect_backoff_ms() -> u64 {
    1000
}

/// A BTHome bind key; never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BindKey(pub [u8; 16]);

impl std::fmt::Debug for BindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BindKey(…)")
    }
}

/// A device after resolution (key files read).
#[derive(Debug, Clone)]
pub struct ResolvedDevice {
    pub id: String,
    pub key: Option<BindKey>,
    pub raw: bool,
    pub gatt: Vec<GattPoint>,
}

/// How a configured device is recognised.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Match {
    Mac([u8; 6]),
    Beacon(String),
}

/// The section with every device resolved: what `build` runs.
#[derive(Debug, Clone)]
pub struct ResolvedBle {
    pub cfg: BleConfig,
    pub devices: BTreeMap<Match, ResolvedDevice>,
}

/// `A4:C1:38:11:22:33`, `a4-c1-…` or `a4c138112233` → bytes, most significant first.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    if hex.len() != 12 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, b) in m.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(m)
}

/// `a4c138112233`: the id part of `ble/<mac>`.
pub fn mac_hex(m: &[u8; 6]) -> String {
    crate::decode::hex(m)
}

/// `2a6e` (a 16-bit UUID on the Bluetooth base) or a full UUID.
pub fn parse_uuid(s: &str) -> Option<uuid::Uuid> {
    if s.len() == 4 {
        let v = u16::from_str_radix(s, 16).ok()?;
        return uuid::Uuid::parse_str(&format!("0000{v:04x}-0000-1000-8000-00805f9b34fb")).ok();
    }
    uuid::Uuid::parse_str(s).ok()
}

pub fn parse_key(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

impl BleConfig {
    /// Check every setting and read the bind key files (relative to `dir`, the configuration
    /// file's directory); problems as (key, message).
    pub fn resolve(&self, dir: &Path) -> Result<ResolvedBle, Vec<(String, String)>> {
        let mut p: Vec<(String, String)> = Vec::new();
        if let Some(a) = &self.adapter {
            if a.is_empty() || a.contains('/') {
                p.push(("adapter".into(), "must be an adapter name like hci0".into()));
            }
        }
        if self.health_interval_ms == 0 {
            p.push(("health_interval_ms".into(), "must be positive".into()));
        }
        if self.max_connections == 0 || self.connect_timeout_ms == 0 {
            p.push((
                "max_connections".into(),
                "max_connections and connect_timeout_ms must be positive".into(),
            ));
        }
        if self.away_after_s == 0 {
            p.push(("away_after_s".into(), "must be positive".into()));
        }
        let mut devices = BTreeMap::new();
        let mut ids: BTreeMap<String, String> = BTreeMap::new();
        for (k, e) in &self.devices {
            let at = format!("devices.{k}");
            let m = if k.starts_with("ibeacon:")
                || k.starts_with("eddystone:")
                || k.starts_with("eddystone-url:")
            {
                Match::Beacon(k.to_ascii_lowercase())
            } else if let Some(mac) = parse_mac(k) {
                Match::Mac(mac)
            } else {
                p.push((
                    at,
                    "not a MAC address (A4:C1:38:11:22:33) or a beacon id (ibeacon:<uuid>:<major>:<minor>, eddystone:<namespace>:<instance>)".into(),
                ));
                continue;
            };
            let (id, key, raw, gatt) = match e {
                DeviceEntry::Id(id) => (id.clone(), None, self.raw, Vec::new()),
                DeviceEntry::Full(d) => {
                    let key = match (&d.bindkey, &d.bindkey_file) {
                        (Some(_), Some(_)) => {
                            p.push((
                                format!("{at}.bindkey_file"),
                                "give either `bindkey` or `bindkey_file`, not both".into(),
                            ));
                            None
                        }
                        (Some(s), None) => match parse_key(s) {
                            Some(k) => Some(BindKey(k)),
                            None => {
                                p.push((
                                    format!("{at}.bindkey"),
                                    "must be 32 hex digits (the value is not shown)".into(),
                                ));
                                None
                            }
                        },
                        (None, Some(f)) => {
                            let path = if f.is_absolute() {
                                f.clone()
                            } else {
                                dir.join(f)
                            };
                            match std::fs::read_to_string(&path) {
                                Ok(s) => match parse_key(s.trim()) {
                                    Some(k) => Some(BindKey(k)),
                                    None => {
                                        p.push((
                                            format!("{at}.bindkey_file"),
                                            format!(
                                                "{} does not hold 32 hex digits (the content is not shown)",
                                                path.display()
                                            ),
                                        ));
                                        None
                                    }
                                },
                                Err(e) => {
                                    p.push((
                                        format!("{at}.bindkey_file"),
                                        format!("cannot read {}: {e}", path.display()),
                                    ));
                                    None
                                }
                            }
                        }
                        (None, None) => None,
                    };
                    (d.id.clone(), key, d.raw || self.raw, d.gatt.clone())
                }
            };
            let mut names = std::collections::BTreeSet::new();
            for (i, g) in gatt.iter().enumerate() {
                let at = format!("{at}.gatt[{i}]");
                if parse_uuid(&g.characteristic).is_none() {
                    p.push((
                        format!("{at}.characteristic"),
                        "not a UUID (2a6e or 00002a6e-0000-1000-8000-00805f9b34fb)".into(),
                    ));
                }
                if g.service
                    .as_deref()
                    .is_some_and(|s| parse_uuid(s).is_none())
                {
                    p.push((format!("{at}.service"), "not a UUID".into()));
                }
                if g.read_every_s.is_none() && !g.notify && !g.writable {
                    p.push((at.clone(), "give read_every_s, notify or writable".into()));
                }
                if g.read_every_s == Some(0) {
                    p.push((format!("{at}.read_every_s"), "must be positive".into()));
                }
                if matches!(
                    g.value_type,
                    GattType::Utf8 | GattType::Hex | GattType::Bool
                ) && (g.scale != 1.0 || g.offset != 0.0)
                {
                    p.push((at.clone(), "scale and offset apply to numbers only".into()));
                }
                if !g.scale.is_finite() || g.scale == 0.0 || !g.offset.is_finite() {
                    p.push((
                        format!("{at}.scale"),
                        "scale must be a non-zero number".into(),
                    ));
                }
                if g.point.is_empty() || g.point.contains(['/', '#', '+']) {
                    p.push((
                        format!("{at}.point"),
                        "must be a name without /, # or +".into(),
                    ));
                }
                if matches!(g.point.as_str(), "present" | "rssi") || !names.insert(g.point.clone())
                {
                    p.push((
                        format!("{at}.point"),
                        format!("`{}` is already a point of this device", g.point),
                    ));
                }
            }
            if !gatt.is_empty() && !matches!(m, Match::Mac(_)) {
                p.push((
                    at.clone(),
                    "GATT needs a MAC address, not a beacon id".into(),
                ));
            }
            if let Err(e) = weir_core::validate_device_id(&id) {
                p.push((at.clone(), e.to_string()));
            }
            if let Some(other) = ids.insert(id.clone(), k.clone()) {
                p.push((
                    at.clone(),
                    format!("device id `{id}` is also given to `{other}`"),
                ));
            }
            if matches!(m, Match::Beacon(_)) && key.is_some() {
                p.push((at.clone(), "a beacon has no bind key".into()));
            }
            devices.insert(m, ResolvedDevice { id, key, raw, gatt });
        }
        if p.is_empty() {
            Ok(ResolvedBle {
                cfg: self.clone(),
                devices,
            })
        } else {
            Err(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resolves_and_names_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("door.key"),
            "231d39c1d7cc1ab1aee224cd096db932\n",
        )
        .unwrap();
        let c: BleConfig = serde_yaml::from_str(
            "devices:\n  'A4:C1:38:11:22:33': gh1/bed\n  '54:48:E6:8F:80:A5': { id: gh1/door, bindkey_file: door.key }\n  'ibeacon:FDA50693-A4E2-4FB1-AFCF-C6EB07647825:1:7': staff/b7\n",
        )
        .unwrap();
        let r = c.resolve(dir.path()).unwrap();
        assert_eq!(r.devices.len(), 3);
        let door = &r.devices[&Match::Mac([0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5])];
        assert!(door.key.is_some());
        assert_eq!(format!("{:?}", door.key), "Some(BindKey(…))");
        assert!(r.devices.contains_key(&Match::Beacon(
            "ibeacon:fda50693-a4e2-4fb1-afcf-c6eb07647825:1:7".into()
        )));
        assert!(serde_yaml::from_str::<BleConfig>("min_interval: 5\n").is_err());
        let e = serde_yaml::from_str::<BleConfig>(
            "devices: {'A4:C1:38:11:22:33': {id: a, bind_key: x}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `bind_key`"), "{e}");
        let bad: BleConfig = serde_yaml::from_str(
            "devices:\n  nope: x\n  'A4:C1:38:11:22:33': { id: a, bindkey: '12' }\n  'A4:C1:38:11:22:34': { id: a, bindkey_file: missing.key }\n",
        )
        .unwrap();
        let keys: Vec<String> = bad
            .resolve(dir.path())
            .unwrap_err()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [
                "devices.A4:C1:38:11:22:33.bindkey",
                "devices.A4:C1:38:11:22:34.bindkey_file",
                "devices.A4:C1:38:11:22:34",
                "devices.nope"
            ]
        );
    }
}
