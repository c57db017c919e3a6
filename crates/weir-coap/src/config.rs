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
    /// Server mode: device-id prefixes (each ending in `/`, e.g. `coap/`) under which devices that
    /// are not declared under `devices` are accepted too. Default: none — only declared devices are
    /// accepted; a request for any other device is answered 4.04 Not Found and counted in
    /// `weir_coap_undeclared_total`.
    ///
    /// Risk: plain CoAP over UDP carries no authentication, and a UDP source address is trivially
    /// forged. Anyone who can reach `listen` can post readings for every device under these
    /// prefixes, and so reach every rule that matches them (a rule that switches an actuator on a
    /// reading is then switchable by anyone on the network). Keep the prefixes disjoint from the
    /// devices of other sources and from what rules act on, or use `dtls` with per-identity
    /// `devices`.
    #[serde(default)]
    pub accept_undeclared_under: Vec<String>,
    /// Replaced by `accept_undeclared_under` (kept only to name the replacement in `weir check`).
    #[doc(hidden)]
    #[serde(default)]
    pub accept_unknown: Option<serde::de::IgnoredAny>,
    /// Replaced by `accept_undeclared_under` (kept only to name the replacement in `weir check`).
    #[doc(hidden)]
    #[serde(default)]
    pub accept_patterns: Option<serde::de::IgnoredAny>,
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
    /// Server mode over DTLS 1.2 with pre-shared keys (`coaps://`, RFC 7252 §9.1.3.1). Needs a
    /// build with the `coap-dtls` feature.
    pub dtls: Option<DtlsConfig>,
}

/// `dtls:` — a second listener whose datagrams are DTLS records, authenticated by PSK identity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DtlsConfig {
    /// UDP address of the DTLS listener (CoAP's default is port 5684).
    pub listen: SocketAddr,
    /// A handshake not finished within this is abandoned.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// The PSK identities accepted; each may write only the devices it lists.
    pub identities: Vec<PskIdentity>,
}

/// `dtls.identities[i]`: one pre-shared key. The key is never logged.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PskIdentity {
    /// The PSK identity the device presents (`-u` of libcoap's coap-client).
    pub identity: String,
    /// The key as text (`-k` of coap-client), usually `${ENV}`; or `key_hex`.
    pub key: Option<String>,
    /// The key as hex digits.
    pub key_hex: Option<String>,
    /// Globs of the device ids this identity may write; others are answered 4.03 Forbidden.
    #[serde(default = "star")]
    pub devices: Vec<String>,
}

impl std::fmt::Debug for PskIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PskIdentity")
            .field("identity", &self.identity)
            .field("key", &"<redacted>")
            .field("devices", &self.devices)
            .finish()
    }
}

impl PskIdentity {
    /// The key bytes, or why the configuration is wrong.
    pub fn key_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.key, &self.key_hex) {
            (Some(k), None) if !k.is_empty() => Ok(k.as_bytes().to_vec()),
            (None, Some(h)) => {
                let h = h.trim();
                if h.is_empty() || h.len() % 2 != 0 {
                    return Err("key_hex needs an even, non-zero number of hex digits".into());
                }
                (0..h.len())
                    .step_by(2)
                    .map(|i| {
                        u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| {
                            "key_hex has a character that is not a hex digit".to_string()
                        })
                    })
                    .collect()
            }
            (Some(_), Some(_)) => Err("set `key` or `key_hex`, not both".into()),
            _ => Err("needs a non-empty `key` or `key_hex`".into()),
        }
    }
}

fn default_handshake_timeout_ms() -> u64 {
    10_000
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
        if let Some(d) = &self.dtls {
            if !cfg!(feature = "dtls") {
                e.push((
                    "dtls".into(),
                    "this build of weir has no DTLS support (cargo feature `coap-dtls`)".into(),
                ));
            }
            if d.identities.is_empty() {
                e.push((
                    "dtls.identities".into(),
                    "needs at least one PSK identity".into(),
                ));
            }
            if d.handshake_timeout_ms == 0 {
                e.push((
                    "dtls.handshake_timeout_ms".into(),
                    "must be at least 1".into(),
                ));
            }
            let mut seen = HashSet::new();
            for (i, id) in d.identities.iter().enumerate() {
                if id.identity.is_empty() || !seen.insert(id.identity.as_str()) {
                    e.push((
                        format!("dtls.identities[{i}].identity"),
                        format!("`{}`: must be non-empty and unique", id.identity),
                    ));
                }
                if let Err(m) = id.key_bytes() {
                    e.push((format!("dtls.identities[{i}].key"), m));
                }
                if id.devices.is_empty() {
                    e.push((
                        format!("dtls.identities[{i}].devices"),
                        "needs at least one pattern".into(),
                    ));
                }
            }
        }
        if self.listen.is_none() && self.dtls.is_none() && !clients {
            e.push((
                "listen".into(),
                "nothing to do: set `listen` or `dtls` (server mode) or a device with `address` and `resources` (client mode)"
                    .into(),
            ));
        }
        for (key, present) in [
            ("accept_unknown", self.accept_unknown.is_some()),
            ("accept_patterns", self.accept_patterns.is_some()),
        ] {
            if present {
                e.push((
                    key.into(),
                    "removed: only declared devices are accepted; to accept undeclared ones, list \
                     id prefixes in `accept_undeclared_under` (e.g. [\"coap/\"])"
                        .into(),
                ));
            }
        }
        for (i, p) in self.accept_undeclared_under.iter().enumerate() {
            if !p.strip_suffix('/').is_some_and(valid_id) {
                e.push((
                    format!("accept_undeclared_under[{i}]"),
                    format!(
                        "`{p}`: must be a device-id prefix ending in `/` (e.g. `coap/`), without `+`, `#`, empty or leading `/` segments"
                    ),
                ));
            }
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
    fn undeclared_prefixes_are_validated_and_the_old_keys_name_their_replacement() {
        assert!(
            cfg("{listen: '127.0.0.1:5683', accept_undeclared_under: [coap/, lab/th/]}")
                .validate()
                .is_empty()
        );
        let e = cfg(
            "{listen: '127.0.0.1:5683', accept_undeclared_under: ['', coap, '/x/', 'a//', '+/', '*']}",
        )
        .validate();
        let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            (0..6)
                .map(|i| format!("accept_undeclared_under[{i}]"))
                .collect::<Vec<_>>(),
            "{e:?}"
        );
        let e = cfg("{listen: '127.0.0.1:5683', accept_unknown: true, accept_patterns: ['*']}")
            .validate();
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(e[0].0, "accept_unknown");
        assert!(e[0].1.contains("accept_undeclared_under"), "{e:?}");
        assert_eq!(e[1].0, "accept_patterns");
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
        assert!(cfg("{listen: '127.0.0.1:5683'}")
            .accept_undeclared_under
            .is_empty());
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
        let problems = c.validate();
        if cfg!(feature = "dtls") {
            assert_eq!(problems, Vec::<(String, String)>::new());
        } else {
            // Without the feature the only complaint is the DTLS section itself.
            let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(keys, ["dtls"], "{problems:?}");
        }
        let d = c.dtls.as_ref().unwrap();
        assert_eq!(
            d.identities[1].key_bytes().unwrap(),
            [0x8f, 0x1c, 0x2a, 0x0b, 0x9d, 0x7e, 0x6f, 0x5a]
        );
        assert!(
            !format!("{:?}", d.identities[0]).contains("WEIR_PSK"),
            "keys are redacted"
        );
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[1].resources[2].method, WriteMethod::Put);
        assert_eq!(c.devices[1].resources[1].read, ReadMode::Observe);
    }
}
