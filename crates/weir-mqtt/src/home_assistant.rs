//! Home Assistant MQTT discovery, published by the JSON format (`mqtt.home_assistant`).
//!
//! For every registry device and point one retained config message on
//! `<discovery_prefix>/<component>/<node_id>/<object_id>/config` (HA docs, "MQTT Discovery",
//! *Discovery topic*), where `node_id` is the gateway id and `object_id` the device and point,
//! both reduced to `[a-zA-Z0-9_-]` (a stable 8-hex-digit hash of the original ids is appended
//! when anything had to be replaced, so `a/b` and `a_b` stay apart). The payload:
//!
//! ```json
//! {"name":"temperature","unique_id":"weir_gw1_gh1_climate_temperature_<hash>",
//!  "object_id":"gh1_climate_temperature",
//!  "state_topic":"weir/gw1/gh1/climate/temperature","value_template":"{{ … value_json.value … }}",
//!  "unit_of_measurement":"°C","device_class":"temperature","state_class":"measurement",
//!  "availability":[{"topic":"weir/gw1/status"},{"topic":"weir/gw1/availability/gh1/climate"}],
//!  "availability_mode":"all","payload_available":"online","payload_not_available":"offline",
//!  "device":{"identifiers":["weir_gw1_gh1_climate"],"name":"Climate","manufacturer":"…",
//!            "model":"…","sw_version":"…","via_device":"weir_gw1"},
//!  "origin":{"name":"Weir","sw_version":"0.1.0"}}
//! ```
//!
//! (`object_id` only suggests HA's entity id, `sensor.gh1_climate_temperature`; `unique_id` and
//! the topic carry the hash because `gh1/climate` holds a `/`.)
//!
//! * **Components.** A read-only point is a `sensor` (a `binary_sensor` when its values are
//!   booleans); a writable one a `switch` (booleans, class `switch`/`outlet`), `number`
//!   (numbers), `button` (class `button`) or `text`, with `command_topic`
//!   `<prefix>/<device>/<point>/set`, the JSON format's command topic: a switch sends `true` /
//!   `false`, a number its value, a button `true`, a text its string, all shapes
//!   [`parse_command_value`](crate::forwarder::parse_command_value) accepts. The state is read
//!   from the per-reading telemetry topic (`mode: per_reading`; `weir check` requires it): a bad
//!   reading sets the entity's state to unknown (HA's `None` payload).
//! * **Classes.** The point's class hint becomes `device_class` only when HA knows it for that
//!   component (the lists below are HA 2024.3's); numeric sensors get `state_class:
//!   measurement`. Points named `rssi`, `lqi`, `linkquality`, `battery`, `last_seen` (or with class
//!   `signal_strength`) are `entity_category: diagnostic`.
//! * **Availability.** Two topics, `availability_mode: all`: the gateway's retained
//!   `<prefix>/status` (its will says `offline`) and the device's retained
//!   `<prefix>/availability/<device>` (`online` / `offline`, from the registry: a device is online
//!   unless the registry says offline), so a dead sensor greys out while the gateway is up.
//! * **The gateway** is a device too (identifier `weir_<gateway id>`, the `via_device` of every
//!   other), with one diagnostic `binary_sensor` (`connectivity`) on `<prefix>/status`.
//! * **Changes.** On connect, and when HA's birth (`<discovery_prefix>/status` = `online`) arrives,
//!   everything is published again. On a registry change only what changed: new or different
//!   configs, availability flips, and an empty retained config for an entity that is gone (HA
//!   deletes it), with the device's availability topic cleared.
//!
//! Invariant: every config topic published is remembered (with a hash of its payload) until an
//! empty config has been published for it, so nothing is left behind in HA by removals. A
//! device's configs are rebuilt only when its points or metadata change (a fingerprint), so an
//! availability flip costs a registry snapshot, not every config again.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value as Json};
use weir_core::{Availability, DeviceView, PointView, Registry, ValueType};

use crate::format::TopicTemplate;
use crate::northbound::Message;

/// Sensor device classes of HA 2024.3 (`homeassistant.components.sensor.SensorDeviceClass`).
const SENSOR_CLASSES: &[&str] = &[
    "apparent_power",
    "aqi",
    "atmospheric_pressure",
    "battery",
    "carbon_dioxide",
    "carbon_monoxide",
    "current",
    "data_rate",
    "data_size",
    "distance",
    "duration",
    "energy",
    "energy_storage",
    "frequency",
    "gas",
    "humidity",
    "illuminance",
    "irradiance",
    "moisture",
    "monetary",
    "nitrogen_dioxide",
    "nitrogen_monoxide",
    "nitrous_oxide",
    "ozone",
    "ph",
    "pm1",
    "pm10",
    "pm25",
    "power_factor",
    "power",
    "precipitation",
    "precipitation_intensity",
    "pressure",
    "reactive_power",
    "signal_strength",
    "sound_pressure",
    "speed",
    "sulphur_dioxide",
    "temperature",
    "volatile_organic_compounds",
    "volatile_organic_compounds_parts",
    "voltage",
    "volume",
    "volume_storage",
    "water",
    "weight",
    "wind_speed",
];

/// Binary sensor device classes of HA 2024.3 (`BinarySensorDeviceClass`).
const BINARY_SENSOR_CLASSES: &[&str] = &[
    "battery",
    "battery_charging",
    "carbon_monoxide",
    "cold",
    "connectivity",
    "door",
    "garage_door",
    "gas",
    "heat",
    "light",
    "lock",
    "moisture",
    "motion",
    "moving",
    "occupancy",
    "opening",
    "plug",
    "power",
    "presence",
    "problem",
    "running",
    "safety",
    "smoke",
    "sound",
    "tamper",
    "update",
    "vibration",
    "window",
];

/// Switch device classes of HA 2024.3 (`SwitchDeviceClass`).
const SWITCH_CLASSES: &[&str] = &["outlet", "switch"];

/// Point names (or classes) shown as diagnostics rather than as the device's main entities.
const DIAGNOSTIC_NAMES: &[&str] = &["rssi", "lqi", "linkquality", "battery", "last_seen"];

/// A number without declared bounds: HA's own default range is 1–100, too narrow for setpoints.
const NUMBER_MIN: f64 = -1_000_000.0;
const NUMBER_MAX: f64 = 1_000_000.0;

/// Discovery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    /// HA's discovery prefix (`homeassistant`).
    pub discovery_prefix: String,
    /// `gateway.id`: the `node_id` of every config topic and the gateway device's identifier.
    pub gateway_id: String,
}

/// The Home Assistant part of a JSON format's session: what was announced, what changed.
#[derive(Debug, Clone)]
pub struct HomeAssistant {
    cfg: HaConfig,
    /// Weir's topic prefix (`<prefix>/status`, commands, availability).
    prefix: String,
    telemetry: TopicTemplate,
    node_id: String,
    /// Per device: its fingerprint and the configs published for it (until emptied).
    devices: HashMap<weir_core::DeviceId, DeviceCache>,
    gateway_announced: bool,
    /// Availability topics published → what they say.
    availability: HashMap<String, &'static str>,
}

/// `s` reduced to HA's id alphabet `[a-zA-Z0-9_-]`, and whether anything was replaced.
fn id_part(s: &str) -> (String, bool) {
    let mut changed = false;
    let out = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                changed = true;
                '_'
            }
        })
        .collect();
    (out, changed)
}

/// FNV-1a 64 (the FNV reference parameters, IETF draft-eastlake-fnv §2): stable across builds,
/// unlike `std`'s hasher, so ids and topics do not move between releases.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// An id for `parts` in HA's alphabet, joined by `_`, unique for distinct inputs.
fn stable_id(parts: &[&str]) -> String {
    let mut out = String::new();
    let mut changed = false;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            out.push('_');
        }
        let (s, c) = id_part(p);
        changed |= c;
        out.push_str(&s);
    }
    if changed {
        let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        out.push_str(&format!("_{:08x}", fnv1a(&bytes) as u32));
    }
    out
}

fn is_numeric(p: &PointView) -> bool {
    match p.spec.value_type {
        ValueType::Float | ValueType::Int => true,
        // Learned without a value yet: a unit says it is a quantity.
        ValueType::Unknown => p.spec.unit.is_some(),
        ValueType::Bool | ValueType::Text => false,
    }
}

fn class_of(p: &PointView) -> Option<String> {
    p.spec.class.as_deref().map(str::to_ascii_lowercase)
}

/// The HA component of a point.
fn component(p: &PointView) -> &'static str {
    let class = class_of(p);
    let class = class.as_deref();
    let boolean = p.spec.value_type == ValueType::Bool;
    if p.spec.writable {
        match class {
            Some("button") => "button",
            Some("switch" | "outlet") => "switch",
            _ if boolean => "switch",
            _ if is_numeric(p) => "number",
            _ => "text",
        }
    } else if boolean {
        "binary_sensor"
    } else {
        "sensor"
    }
}

impl HomeAssistant {
    /// `prefix` is Weir's topic prefix, `telemetry` its per-reading telemetry topic template.
    pub fn new(cfg: HaConfig, prefix: &str, telemetry: TopicTemplate) -> HomeAssistant {
        let node_id = stable_id(&[&cfg.gateway_id]);
        HomeAssistant {
            cfg,
            prefix: prefix.to_string(),
            telemetry,
            node_id,
            devices: HashMap::new(),
            gateway_announced: false,
            availability: HashMap::new(),
        }
    }

    /// HA's birth/last-will topic (`<discovery_prefix>/status`).
    pub fn birth_topic(&self) -> String {
        format!("{}/status", self.cfg.discovery_prefix)
    }

    /// Whether a message is HA's birth (HA came online and forgot what it knew).
    pub fn is_birth(&self, topic: &str, payload: &[u8]) -> bool {
        topic == self.birth_topic() && payload.trim_ascii() == b"online"
    }

    /// The retained availability topic of `device`.
    pub fn availability_topic(&self, device: &str) -> String {
        format!("{}/availability/{}", self.prefix, device)
    }

    fn gateway_identifier(&self) -> String {
        format!("weir_{}", self.node_id)
    }

    fn config_topic(&self, component: &str, object_id: &str) -> String {
        format!(
            "{}/{component}/{}/{object_id}/config",
            self.cfg.discovery_prefix, self.node_id
        )
    }

    /// The gateway's own device block.
    fn gateway_device(&self) -> Json {
        json!({
            "identifiers": [self.gateway_identifier()],
            "name": format!("Weir {}", self.cfg.gateway_id),
            "manufacturer": "Weir",
            "model": "edge gateway",
            "sw_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn origin() -> Json {
        json!({ "name": "Weir", "sw_version": env!("CARGO_PKG_VERSION") })
    }

    /// The gateway's own config (its connectivity sensor on `<prefix>/status`).
    fn gateway_config(&self) -> (String, Vec<u8>) {
        let gw = json!({
            "name": "Connectivity",
            "unique_id": format!("{}_connectivity", self.gateway_identifier()),
            "state_topic": format!("{}/status", self.prefix),
            "payload_on": "online",
            "payload_off": "offline",
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": self.gateway_device(),
            "origin": Self::origin(),
        });
        (
            self.config_topic("binary_sensor", "gateway_connectivity"),
            gw.to_string().into_bytes(),
        )
    }

    /// Every config message for the registry as it is: `(topic, payload)`, sorted by topic.
    pub fn configs(&self, devices: &[DeviceView]) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let (t, p) = self.gateway_config();
        out.insert(t, p);
        for d in devices {
            for p in &d.points {
                let (topic, doc) = self.entity(d, p);
                out.insert(topic, doc.to_string().into_bytes());
            }
        }
        out
    }

    /// One point's config topic and payload.
    pub fn entity(&self, d: &DeviceView, p: &PointView) -> (String, Json) {
        let device = d.id.as_str();
        let point = p.spec.name.as_str();
        let component = component(p);
        let object_id = stable_id(&[device, point]);
        let class = class_of(p);
        let mut doc = Map::new();
        doc.insert("name".into(), point.replace('_', " ").into());
        doc.insert(
            "unique_id".into(),
            format!("weir_{}_{object_id}", self.node_id).into(),
        );
        // HA's entity id suggestion: readable, without the hash (HA itself numbers collisions).
        doc.insert(
            "object_id".into(),
            id_part(&format!("{device}_{point}")).0.into(),
        );
        let state_topic = self.telemetry.render(device, point);
        let command_topic = format!("{}/{}/{}/set", self.prefix, device, point);
        // A bad reading makes the state unknown (`None` is HA's "no value" payload).
        let value = "value_json.value if value_json.quality != 'bad' else 'None'";
        let onoff =
            "('ON' if value_json.value else 'OFF') if value_json.quality != 'bad' else 'None'";
        let valid_class = |list: &[&str]| {
            class
                .as_deref()
                .filter(|c| list.contains(c))
                .map(str::to_string)
        };
        let mut device_class = None;
        match component {
            "sensor" => {
                doc.insert("state_topic".into(), state_topic.into());
                doc.insert("value_template".into(), format!("{{{{ {value} }}}}").into());
                device_class = valid_class(SENSOR_CLASSES);
                if is_numeric(p) {
                    // Meters count up (HA's long-term statistics need this for energy & co).
                    let state_class = match device_class.as_deref() {
                        Some("energy" | "gas" | "water" | "volume") => "total_increasing",
                        _ => "measurement",
                    };
                    doc.insert("state_class".into(), state_class.into());
                    if let Some(u) = &p.spec.unit {
                        doc.insert("unit_of_measurement".into(), u.to_string().into());
                    }
                }
            }
            "binary_sensor" => {
                doc.insert("state_topic".into(), state_topic.into());
                doc.insert("value_template".into(), format!("{{{{ {onoff} }}}}").into());
                device_class = valid_class(BINARY_SENSOR_CLASSES);
            }
            "switch" => {
                doc.insert("state_topic".into(), state_topic.into());
                doc.insert("value_template".into(), format!("{{{{ {onoff} }}}}").into());
                doc.insert("state_on".into(), "ON".into());
                doc.insert("state_off".into(), "OFF".into());
                doc.insert("command_topic".into(), command_topic.into());
                doc.insert("payload_on".into(), "true".into());
                doc.insert("payload_off".into(), "false".into());
                device_class = valid_class(SWITCH_CLASSES);
            }
            "number" => {
                doc.insert("state_topic".into(), state_topic.into());
                doc.insert("value_template".into(), format!("{{{{ {value} }}}}").into());
                doc.insert("command_topic".into(), command_topic.into());
                doc.insert("min".into(), NUMBER_MIN.into());
                doc.insert("max".into(), NUMBER_MAX.into());
                let step = if p.spec.value_type == ValueType::Int {
                    1.0
                } else {
                    0.001
                };
                doc.insert("step".into(), step.into());
                doc.insert("mode".into(), "box".into());
                if let Some(u) = &p.spec.unit {
                    doc.insert("unit_of_measurement".into(), u.to_string().into());
                }
                device_class = valid_class(SENSOR_CLASSES);
            }
            "button" => {
                doc.insert("command_topic".into(), command_topic.into());
                doc.insert("payload_press".into(), "true".into());
            }
            _ => {
                // text
                doc.insert("state_topic".into(), state_topic.into());
                doc.insert("value_template".into(), format!("{{{{ {value} }}}}").into());
                doc.insert("command_topic".into(), command_topic.into());
            }
        }
        if let Some(c) = device_class {
            doc.insert("device_class".into(), c.into());
        }
        let diagnostic = DIAGNOSTIC_NAMES.contains(&point.to_ascii_lowercase().as_str())
            || class.as_deref() == Some("signal_strength");
        if diagnostic {
            doc.insert("entity_category".into(), "diagnostic".into());
        }
        doc.insert(
            "availability".into(),
            json!([
                { "topic": format!("{}/status", self.prefix) },
                { "topic": self.availability_topic(device) },
            ]),
        );
        doc.insert("availability_mode".into(), "all".into());
        doc.insert("payload_available".into(), "online".into());
        doc.insert("payload_not_available".into(), "offline".into());
        let mut dev = Map::new();
        dev.insert(
            "identifiers".into(),
            json!([format!("weir_{}_{}", self.node_id, stable_id(&[device]))]),
        );
        dev.insert(
            "name".into(),
            d.meta
                .name
                .clone()
                .unwrap_or_else(|| device.to_string())
                .into(),
        );
        for (k, v) in [
            ("manufacturer", &d.meta.manufacturer),
            ("model", &d.meta.model),
            ("sw_version", &d.meta.firmware),
        ] {
            if let Some(v) = v {
                dev.insert(k.into(), v.clone().into());
            }
        }
        dev.insert("via_device".into(), self.gateway_identifier().into());
        doc.insert("device".into(), Json::Object(dev));
        doc.insert("origin".into(), Self::origin());
        (self.config_topic(component, &object_id), Json::Object(doc))
    }

    fn availability_of(d: &DeviceView) -> &'static str {
        if d.availability == Availability::Offline {
            "offline"
        } else {
            "online"
        }
    }

    /// Everything, again (on connect, on HA's birth): every config and every device's
    /// availability, plus empty configs for entities announced before and gone now.
    pub fn announce_all(&mut self, registry: &Registry) -> Vec<Message> {
        self.diff(registry, true)
    }

    /// What changed since the last call: new or different configs, availability changes, and
    /// removals (empty retained configs, cleared availability topics).
    pub fn changes(&mut self, registry: &Registry) -> Vec<Message> {
        self.diff(registry, false)
    }

    /// A device's configs are built again only when what they are made of changed (its
    /// fingerprint), or when everything is republished (`all`): an availability flip of one of
    /// 500 devices costs a snapshot and a hash per device, not 2,000 JSON documents.
    fn diff(&mut self, registry: &Registry, all: bool) -> Vec<Message> {
        let devices = registry.snapshot();
        let mut out = Vec::new();
        let retained = |topic: String, payload: Vec<u8>| Message {
            topic,
            payload,
            qos: 1,
            retain: true,
        };
        // Availability first: an entity whose config arrives finds its device's state there.
        if all {
            self.availability.clear();
        }
        let mut seen_av = HashMap::with_capacity(devices.len());
        for d in &devices {
            let topic = self.availability_topic(d.id.as_str());
            let now = Self::availability_of(d);
            if self.availability.get(&topic) != Some(&now) {
                out.push(retained(topic.clone(), now.as_bytes().to_vec()));
            }
            seen_av.insert(topic, now);
        }
        for topic in self.availability.keys() {
            if !seen_av.contains_key(topic) {
                out.push(retained(topic.clone(), Vec::new()));
            }
        }
        self.availability = seen_av;
        if all || !self.gateway_announced {
            let (t, p) = self.gateway_config();
            out.push(retained(t, p));
            self.gateway_announced = true;
        }
        let mut cache = HashMap::with_capacity(devices.len());
        for d in &devices {
            let fp = fingerprint(d);
            let old = self.devices.remove(&d.id);
            if let Some(old) = old.as_ref().filter(|o| o.fingerprint == fp && !all) {
                cache.insert(d.id.clone(), old.clone());
                continue;
            }
            let mut topics = Vec::with_capacity(d.points.len());
            for p in &d.points {
                let (topic, doc) = self.entity(d, p);
                let payload = doc.to_string().into_bytes();
                let h = fnv1a(&[&payload]);
                let before = old
                    .as_ref()
                    .and_then(|o| o.topics.iter().find(|(t, _)| *t == topic));
                if all || before.map(|(_, bh)| *bh) != Some(h) {
                    out.push(retained(topic.clone(), payload));
                }
                topics.push((topic, h));
            }
            if let Some(old) = old {
                for (t, _) in old.topics {
                    if !topics.iter().any(|(nt, _)| *nt == t) {
                        out.push(retained(t, Vec::new()));
                    }
                }
            }
            cache.insert(
                d.id.clone(),
                DeviceCache {
                    fingerprint: fp,
                    topics,
                },
            );
        }
        // Devices gone: HA deletes an entity whose config becomes empty (retained, so it stays
        // gone for an HA that starts later).
        for (_, old) in self.devices.drain() {
            for (t, _) in old.topics {
                out.push(retained(t, Vec::new()));
            }
        }
        self.devices = cache;
        out
    }
}

/// What a device's configs were made from, and the configs published for it.
#[derive(Debug, Clone)]
struct DeviceCache {
    fingerprint: u64,
    /// Config topic → a hash of the payload published on it.
    topics: Vec<(String, u64)>,
}

/// A hash of everything a device's configs depend on (not its availability or last seen).
fn fingerprint(d: &DeviceView) -> u64 {
    let mut parts: Vec<&[u8]> = Vec::with_capacity(4 + d.points.len() * 5);
    let m = &d.meta;
    for v in [&m.name, &m.manufacturer, &m.model, &m.firmware] {
        parts.push(v.as_deref().unwrap_or("\0").as_bytes());
    }
    for p in &d.points {
        let s = &p.spec;
        parts.push(s.name.as_str().as_bytes());
        parts.push(s.unit.as_deref().unwrap_or("\0").as_bytes());
        parts.push(s.class.as_deref().unwrap_or("\0").as_bytes());
        parts.push(match s.value_type {
            ValueType::Float => b"f",
            ValueType::Int => b"i",
            ValueType::Bool => b"b",
            ValueType::Text => b"t",
            ValueType::Unknown => b"u",
        });
        parts.push(if s.writable { b"w" } else { b"-" });
    }
    fnv1a(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::{DeviceMeta, DeviceSpec, Metrics, PointSpec};

    fn ha() -> HomeAssistant {
        HomeAssistant::new(
            HaConfig {
                discovery_prefix: "homeassistant".into(),
                gateway_id: "gw1".into(),
            },
            "weir/gw1",
            TopicTemplate::new("{prefix}/{device}/{point}", "weir/gw1"),
        )
    }

    fn registry() -> Registry {
        let r = Registry::new(&Metrics::new());
        let mut spec = DeviceSpec::new("gh1/climate")
            .point(
                PointSpec::new("temperature")
                    .unit(Some("°C"))
                    .value_type(ValueType::Float)
                    .class(Some("temperature")),
            )
            .point(
                PointSpec::new("fan")
                    .value_type(ValueType::Bool)
                    .writable(true)
                    .class(Some("switch")),
            )
            .point(
                PointSpec::new("rssi")
                    .unit(Some("dBm"))
                    .value_type(ValueType::Int),
            );
        spec.meta = DeviceMeta {
            name: Some("Greenhouse climate".into()),
            manufacturer: Some("Acme".into()),
            ..DeviceMeta::default()
        };
        r.claim("modbus", spec).unwrap();
        r
    }

    #[test]
    fn ids_are_in_has_alphabet_and_distinct() {
        assert_eq!(stable_id(&["pump", "on"]), "pump_on");
        let a = stable_id(&["a/b", "x"]);
        let b = stable_id(&["a_b", "x"]);
        assert!(
            a.starts_with("a_b_x_") && a.len() == "a_b_x_".len() + 8,
            "{a}"
        );
        assert_eq!(b, "a_b_x");
        assert_ne!(a, stable_id(&["a.b", "x"]));
    }

    #[test]
    fn entities_components_classes_and_availability() {
        let h = ha();
        let devices = registry().snapshot();
        let configs = h.configs(&devices);
        let get = |t: &str| -> Json { serde_json::from_slice(&configs[t]).unwrap() };
        let topic = configs
            .keys()
            .find(|t| t.starts_with("homeassistant/sensor/gw1/gh1_climate_temperature_"))
            .expect("a sensor, its id hashed (the device id has a `/`)");
        let temp = get(topic);
        assert_eq!(temp["device_class"], "temperature");
        assert_eq!(temp["unit_of_measurement"], "°C");
        assert_eq!(temp["state_class"], "measurement");
        assert_eq!(temp["state_topic"], "weir/gw1/gh1/climate/temperature");
        assert_eq!(temp["availability_mode"], "all");
        assert_eq!(
            temp["availability"][1]["topic"],
            "weir/gw1/availability/gh1/climate"
        );
        assert_eq!(temp["device"]["name"], "Greenhouse climate");
        assert_eq!(temp["device"]["via_device"], "weir_gw1");
        let fan = configs
            .iter()
            .find(|(t, _)| t.starts_with("homeassistant/switch/gw1/gh1_climate_fan"))
            .map(|(_, p)| serde_json::from_slice::<Json>(p).unwrap())
            .expect("a switch");
        assert_eq!(fan["command_topic"], "weir/gw1/gh1/climate/fan/set");
        assert_eq!(fan["payload_on"], "true");
        let rssi = configs
            .iter()
            .find(|(t, _)| t.contains("rssi"))
            .map(|(_, p)| serde_json::from_slice::<Json>(p).unwrap())
            .unwrap();
        assert_eq!(rssi["entity_category"], "diagnostic");
        assert!(configs.contains_key("homeassistant/binary_sensor/gw1/gateway_connectivity/config"));
    }

    #[test]
    fn changes_publish_only_differences_and_removals() {
        let mut h = ha();
        let r = registry();
        let first = h.changes(&r);
        // 1 availability + 1 gateway + 3 points.
        assert_eq!(first.len(), 5);
        assert!(first.iter().all(|m| m.retain && m.qos == 1));
        assert!(h.changes(&r).is_empty(), "nothing changed");
        r.set_availability("modbus", "gh1/climate", Availability::Offline);
        let flip = h.changes(&r);
        assert_eq!(flip.len(), 1);
        assert_eq!(flip[0].topic, "weir/gw1/availability/gh1/climate");
        assert_eq!(flip[0].payload, b"offline");
        // A point learned at run time: its config alone.
        let mut spec = DeviceSpec::new("gh1/climate")
            .point(
                PointSpec::new("temperature")
                    .unit(Some("°C"))
                    .value_type(ValueType::Float)
                    .class(Some("temperature")),
            )
            .point(
                PointSpec::new("fan")
                    .value_type(ValueType::Bool)
                    .writable(true)
                    .class(Some("switch")),
            )
            .point(
                PointSpec::new("rssi")
                    .unit(Some("dBm"))
                    .value_type(ValueType::Int),
            )
            .point(
                PointSpec::new("co2")
                    .unit(Some("ppm"))
                    .value_type(ValueType::Float),
            );
        spec.meta = DeviceMeta {
            name: Some("Greenhouse climate".into()),
            manufacturer: Some("Acme".into()),
            ..DeviceMeta::default()
        };
        r.claim("modbus", spec).unwrap();
        let learned = h.changes(&r);
        assert_eq!(learned.len(), 1, "{learned:?}");
        assert!(learned[0].topic.contains("gh1_climate_co2"));
        r.remove("modbus", "gh1/climate");
        let gone = h.changes(&r);
        assert_eq!(gone.len(), 5, "{gone:?}");
        assert!(gone.iter().all(|m| m.payload.is_empty()));
        // Everything again after HA's birth.
        r.claim("modbus", DeviceSpec::new("d2").point(PointSpec::new("x")))
            .unwrap();
        h.changes(&r);
        assert_eq!(h.announce_all(&r).len(), 3);
    }
}
