//! `sources: - coap: {…}` — the adapter's section of gateway.yaml.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

use serde::Deserialize;

/// `sources: - coap: {…}`. One instance is one UDP listener (server mode, optional) plus one client
/// task per device that has an `address` and `resources` (client mode).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoapConfig {
    /// Server mode: the UDP address devices POST/PUT to (`0.0.0.0:5683`). Absent: no server.
    pub listen: Option<SocketAddr>,
    /// Server mode: accept devices that are not declared under `devices`, when their id matches one
    /// of `accept_patterns`. `false`: undeclared devices are answered 4.04 Not Found.
    #[serde(default = "yes")]
    pub accept_unknown: bool,
    /// Globs (`*` any run of characters, `?` one) for undeclared device ids.
    #[serde(default = "star")]
    pub accept_patterns: Vec<String>,
    /// Largest request body, whole or reassembled from blocks; larger is answered 4.13.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Block-wise (RFC 7959) uploads in progress at most; more are answered 5.03.
    #[serde(default = "default_max_blocks")]
    pub max_block_transfers: usize,
    /// A block-wise upload with no block for this long is forgotten.
    #[serde(default = "default_block_timeout_ms")]
    pub block_timeout_ms: u64,
    /// Datagrams handled before their readings go to the bus as one batch (server mode).
    #[serde(default = "default_burst")]
    pub max_burst: usize,
    /// How often a summary of the adapter's counters is logged (when something changed).
    #[serde(default = "default_stats_interval_s")]
    pub stats_interval_s: u64,
    /// Client mode: first retransmission timeout of a confirmable request (RFC 7252 §4.8: 2 s).
    #[serde(default = "default_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Client mode: retransmissions before a device counts as unreachable (RFC 7252 §4.8: 4).
    #[serde(default = "default_max_retransmit")]
    pub max_retransmit: u32,
    /// Client mode: an unreachable device is retried after a jittered, doubling delay up to this.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Client mode: an observation with no notification for Max-Age plus this is re-registered.
    #[serde(default = "default_reregister_grace_ms")]
    pub reregister_grace_ms: u64,
    #[serde(default)]
    pub devices: Vec<DeviceConfig>,
}

/// `devices[i]` — a device declared by id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Device id on the bus and in topics (`gh1/door`); in server mode the URI path it posts to.
    pub id: String,
    /// Client mode: the device's CoAP endpoint, `host:port`.
    pub address: Option<String>,
    /// Units for points whose payload carries none.
    #[serde(default)]
    pub units: BTreeMap<String, String>,
    /// Client mode: resources polled, observed or written.
    #[serde(default)]
    pub resources: Vec<ResourceConfig>,
}

/// How a resource is read.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// GET every `interval_ms`.
    #[default]
    Poll,
    /// GET with Observe (RFC 7641), re-registered when notifications stop past Max-Age.
    Observe,
    /// Not read (a write-only actuator).
    None,
}

/// Method of a command.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteMethod {
    #[default]
    Put,
    Post,
}

/// Body of a command.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum WriteFormat {
    /// `text/plain`: `21.5`, `true`, `open`.
    #[default]
    Text,
    /// `application/json`: `21.5`, `true`, `"open"`.
    Json,
}

/// `devices[i].resources[j]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceConfig {
    /// URI path on the device, e.g. `sensors/temp`.
    pub path: String,
    /// The point a scalar payload (or a command) maps to; JSON objects and SenML name their points.
    pub point: Option<String>,
    pub unit: Option<String>,
    #[serde(default)]
    pub read: ReadMode,
    /// Poll interval.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Commands to `point` become a PUT/POST of the value to this resource.
    #[serde(default)]
    pub writable: bool,
    #[serde(default)]
    pub method: WriteMethod,
    #[serde(default)]
    pub format: WriteFormat,
}

fn yes() -> bool {
    true
}
fn star() -> Vec<String> {
    vec!["*".into()]
}
fn default_max_body() -> usize {
    64 * 1024
}
fn default_max_blocks() -> usize {
    64
}
fn default_block_timeout_ms() -> u64 {
    60_000
}
fn default_burst() -> usize {
    64
}
fn default_stats_interval_s() -> u64 {
    60
}
fn default_ack_timeout_ms() -> u64 {
    2_000
}
fn default_max_retransmit() -> u32 {
    4
}
fn default_backoff_max_ms() -> u64 {
    60_000
}
fn default_reregister_grace_ms() -> u64 {
    5_000
}
fn default_interval_ms() -> u64 {
    10_000
}

/// A device or point id usable on the bus and in MQTT topics.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('/')
        && !s.ends_with('/')
        && !s.contains("//")
        && !s.contains(['+', '#', '\0'])
}

impl CoapConfig {
    /// Problems with the values as (key under the section, message); the caller adds the YAML path.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut e: Vec<(String, String)> = Vec::new();
        let clients = self
            .devices
            .iter()
            .any(|d| d.address.is_some() && !d.resources.is_empty());
        if self.listen.is_none() && !clients {
            e.push((
                "listen".into(),
                "nothing to do: set `listen` (server mode) or a device with `address` and `resources` (client mode)"
                    .into(),
            ));
        }
        if self.accept_patterns.is_empty() || self.accept_patterns.iter().any(String::is_empty) {
            e.push((
                "accept_patterns".into(),
                "needs at least one non-empty pattern".into(),
            ));
        }
        if !(16..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            e.push(("max_body_bytes".into(), "must be 16 … 16777216".into()));
        }
        if self.max_block_transfers == 0 {
            e.push(("max_block_transfers".into(), "must be at least 1".into()));
        }
        if self.block_timeout_ms == 0 {
            e.push(("block_timeout_ms".into(), "must be at least 1".into()));
        }
        if self.max_burst == 0 {
            e.push(("max_burst".into(), "must be at least 1".into()));
        }
        if self.stats_interval_s == 0 {
            e.push(("stats_interval_s".into(), "must be at least 1".into()));
        }
        if self.ack_timeout_ms == 0 {
            e.push(("ack_timeout_ms".into(), "must be at least 1".into()));
        }
        if self.max_retransmit > 20 {
            e.push(("max_retransmit".into(), "must be at most 20".into()));
        }
        if self.backoff_max_ms < self.ack_timeout_ms {
            e.push((
                "backoff_max_ms".into(),
                "must be at least ack_timeout_ms".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, d) in self.devices.iter().enumerate() {
            let at = |k: &str| format!("devices[{i}].{k}");
            if !valid_id(&d.id) {
                e.push((
                    at("id"),
                    format!(
                        "`{}`: must be non-empty, without `+`, `#`, empty or outer `/` segments",
                        d.id
                    ),
                ));
            } else if !seen.insert(d.id.as_str()) {
                e.push((at("id"), format!("duplicate device `{}`", d.id)));
            }
            if let Some(a) = &d.address {
                if !a
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
                {
                    e.push((at("address"), format!("`{a}`: expected host:port")));
                }
            } else if !d.resources.is_empty() {
                e.push((at("address"), "resources need the device's address".into()));
            }
            let mut points = HashSet::new();
            for (j, r) in d.resources.iter().enumerate() {
                let at = |k: &str| format!("devices[{i}].resources[{j}].{k}");
                if r.path.trim_matches('/').is_empty() {
                    e.push((
                        at("path"),
                        "must name a resource, e.g. `sensors/temp`".into(),
                    ));
                }
                if let Some(p) = &r.point {
                    if !valid_id(p) {
                        e.push((at("point"), format!("`{p}` is not a valid point id")));
                    } else if r.writable && !points.insert(p.as_str()) {
                        e.push((at("point"), format!("point `{p}` is writable twice")));
                    }
                } else if r.writable {
                    e.push((at("point"), "a writable resource needs `point`".into()));
                }
                if r.read == ReadMode::Poll && r.interval_ms < 10 {
                    e.push((at("interval_ms"), "must be at least 10".into()));
                }
                if r.read == ReadMode::None && !r.writable {
                    e.push((
                        at("read"),
                        "`none` only makes sense for a writable resource".into(),
                    ));
                }
            }
        }
        e
    }
}

/// `*` matches any run of characters (including `/`), `?` exactly one.
pub fn glob_match(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(y: &str) -> CoapConfig {
        serde_yaml::from_str(y).unwrap()
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "a/b"));
        assert!(glob_match("sensors/*", "sensors/t1"));
        assert!(!glob_match("sensors/*", "actuators/t1"));
        assert!(glob_match("th?", "th1"));
        assert!(!glob_match("th?", "th12"));
        assert!(glob_match("*/climate", "gh1/climate"));
    }

    #[test]
    fn validation_names_keys() {
        let c = cfg("{devices: [{id: a, resources: [{path: x, writable: true}]}, {id: a}, {id: 'b+', address: nope}]}");
        let keys: Vec<String> = c.validate().into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"listen".to_string()), "{keys:?}");
        assert!(keys.contains(&"devices[0].address".to_string()), "{keys:?}");
        assert!(
            keys.contains(&"devices[0].resources[0].point".to_string()),
            "{keys:?}"
        );
        assert!(keys.contains(&"devices[1].id".to_string()), "{keys:?}");
        assert!(keys.contains(&"devices[2].id".to_string()), "{keys:?}");
        assert!(keys.contains(&"devices[2].address".to_string()), "{keys:?}");
        assert!(cfg("{listen: '127.0.0.1:5683'}").validate().is_empty());
        assert!(
            serde_yaml::from_str::<CoapConfig>("{listen: '127.0.0.1:5683', bogus: 1}").is_err()
        );
    }
}

#[cfg(test)]
mod reference_tests {
    use super::*;

    /// The commented-out `coap` example in the reference gateway.yaml parses and validates.
    #[test]
    fn reference_gateway_yaml_example_is_valid() {
        let text = include_str!("../../../gateway.yaml");
        let mut block = String::new();
        let mut inside = false;
        for line in text.lines() {
            if line.starts_with("  # - coap:") {
                inside = true;
            } else if inside && (line.starts_with("  # - ") || !line.starts_with("  #")) {
                break;
            }
            if inside {
                block.push_str(
                    line.trim_start_matches("  #")
                        .strip_prefix(' ')
                        .unwrap_or(""),
                );
                block.push('\n');
            }
        }
        assert!(block.contains("listen:"), "example found:\n{block}");
        let v: serde_yaml::Value = serde_yaml::from_str(&block).unwrap();
        let mut body = v[0]["coap"].clone();
        body.as_mapping_mut().unwrap().remove("name");
        let c: CoapConfig = serde_yaml::from_value(body).unwrap();
        assert_eq!(c.validate(), Vec::<(String, String)>::new());
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[1].resources[2].method, WriteMethod::Put);
        assert_eq!(c.devices[1].resources[1].read, ReadMode::Observe);
    }
}
