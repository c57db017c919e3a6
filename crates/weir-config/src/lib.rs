//! `gateway.yaml`: schema, loading and validation.
//!
//! Loading is done in stages so that every problem is reported at once, each with the file, the
//! YAML path and the line:
//!
//! 1. the text is parsed by serde_yaml (a syntax error stops here, with its position);
//! 2. the text is indexed by path → line ([`PathIndex`]);
//! 3. `${VAR}` references in string values are substituted ([`env`]); substituted text stays
//!    text except where the field is a number or boolean, and is never shown in an error;
//! 4. each top-level section, and each entry of `sources:`, is deserialised on its own with
//!    `deny_unknown_fields`, so an error in one does not hide errors in the others, and within a
//!    section every key in error is reported ([`Diagnostics::parse`]);
//! 5. cross-field checks (ranges, TLS files present, duplicate source names) add their errors.
//!
//! A command that needs only some sections loads the file with [`load_file_for`] and a
//! [`Sections`] list: the whole text is still parsed as YAML and its top-level keys checked, but
//! only the listed sections are `${VAR}`-expanded, read (secret files included) and validated;
//! the others are not looked at, so an unset variable or a missing TLS or secret file in them is
//! no error. This is what lets `weir rules test` run on a laptop with the production file.
//!
//! Adapter sections (`sources[i].<kind>`) are parsed by the adapter's own crate through
//! [`Diagnostics::parse`], so their errors look the same. The binary's explicit, feature-gated match
//! on [`SourceEntry::kind`] decides which kinds exist in a build.

mod de;
pub mod diag;
pub mod env;
mod index;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use diag::{ConfigErrors, Diagnostic, Diagnostics, Partial};
pub use env::Secret;
pub use index::PathIndex;

/// `gateway:` — identity and local state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySection {
    /// This gateway's id: letters, digits, `-` and `_`. Default client id and topic prefix use it.
    pub id: String,
    /// Directory for the outbox and other state (systemd's `StateDirectory`).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How long shutdown may take to drain the bus and flush the outbox before it gives up.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/weir")
}
fn default_shutdown_timeout_ms() -> u64 {
    10_000
}

/// `bus:` — the bounded channel from sources to the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusSection {
    /// Capacity in batches. Full: polling sources wait, push sources drop the newest (counted).
    #[serde(default = "default_bus_capacity")]
    pub capacity_batches: usize,
}

impl Default for BusSection {
    fn default() -> Self {
        BusSection {
            capacity_batches: default_bus_capacity(),
        }
    }
}
fn default_bus_capacity() -> usize {
    1024
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum MqttProtocol {
    #[default]
    #[serde(rename = "3.1.1")]
    V311,
    #[serde(rename = "5")]
    V5,
}

/// How readings map to MQTT messages.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// One message per reading on `telemetry_topic`.
    #[default]
    PerReading,
    /// One message per device per pipeline batch on `batch_topic`, with a `readings` array.
    PerDevice,
}

/// `mqtt.format`: how rows are encoded northbound.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum NorthboundFormat {
    /// Weir's JSON topics and payloads (`telemetry_topic`, `batch_topic`, `alerts_topic`).
    #[default]
    Json,
    /// Sparkplug B 3.0 (`mqtt.sparkplug`).
    SparkplugB,
}

/// `mqtt.sparkplug:` — Sparkplug B 3.0 settings, with `format: sparkplug_b`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SparkplugSection {
    /// Sparkplug group id (topics `spBv1.0/<group_id>/…`).
    pub group_id: String,
    /// Edge node id; default `gateway.id`.
    pub edge_node_id: Option<String>,
    /// A host application whose `spBv1.0/STATE/<id>` gates publishing: rows are published only
    /// while it says online, and those committed meanwhile are sent with `is_historical`.
    pub primary_host_id: Option<String>,
}

/// `mqtt.home_assistant:` — Home Assistant MQTT discovery: every registry device and point is
/// announced under `<prefix>/<component>/<node_id>/<object_id>/config` (retained), with the
/// gateway's status and the device's availability as HA availability topics.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HomeAssistantSection {
    /// Publish discovery (default true when the section is given).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// HA's discovery prefix (HA's own default: `homeassistant`); HA's birth message is
    /// expected on `<prefix>/status`.
    #[serde(default = "default_ha_prefix")]
    pub prefix: String,
}

/// `mqtt.shadow:` — the device shadow: `<prefix>/<device>/shadow/desired` (retained, JSON
/// `{"state": {point: value}}`) is applied through the command router; `…/shadow/reported` and
/// `…/shadow/delta` are published by the gateway (README, "Device shadow").
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ShadowSection {
    /// Run the shadow (default true when the section is given).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// First retry of a write that failed for a passing reason (busy, offline, no answer).
    #[serde(default = "default_shadow_retry_min_ms")]
    pub retry_min_ms: u64,
    /// Retries back off (jittered, doubling) up to this.
    #[serde(default = "default_shadow_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_shadow_retry_min_ms() -> u64 {
    1000
}

fn default_shadow_retry_max_ms() -> u64 {
    60_000
}

fn default_ha_prefix() -> String {
    "homeassistant".into()
}

/// `mqtt.tls:` — TLS, and mTLS when a client certificate is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM file with the CA certificate(s) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM client certificate (chain) for mTLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) for `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// `mqtt:` — the northbound connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSection {
    #[serde(default = "default_host")]
    pub host: String,
    /// Default 1883, or 8883 with `tls`.
    pub port: Option<u16>,
    /// Default `weir-<gateway.id>`.
    pub client_id: Option<String>,
    /// `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Seconds between pings when nothing else is sent; the broker drops the client after 1.5×
    /// this without traffic. 0: no keep alive (sent as 0 in CONNECT), else at least 5.
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u64,
    /// How long one connection attempt may take, TCP connect, TLS handshake and CONNACK
    /// together, in milliseconds (at least 1).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// File holding the password (alternative to `password`).
    pub password_file: Option<PathBuf>,
    pub tls: Option<TlsSection>,
    /// Default `weir/<gateway.id>`. Status goes to `<prefix>/status`.
    pub topic_prefix: Option<String>,
    /// Topic of one reading; `{prefix}`, `{device}`, `{point}` are replaced.
    #[serde(default = "default_telemetry_topic")]
    pub telemetry_topic: String,
    /// Topic of a per-device batch; `{prefix}`, `{device}` are replaced.
    #[serde(default = "default_batch_topic")]
    pub batch_topic: String,
    /// Topic of a rule's alert (raised / cleared); `{prefix}`, `{device}`, `{name}` are replaced.
    #[serde(default = "default_alerts_topic")]
    pub alerts_topic: String,
    #[serde(default)]
    pub mode: PublishMode,
    /// `json` (default) or `sparkplug_b` (then `sparkplug` is required).
    #[serde(default)]
    pub format: NorthboundFormat,
    pub sparkplug: Option<SparkplugSection>,
    /// Home Assistant MQTT discovery (`mqtt.home_assistant`), with `format: json`.
    pub home_assistant: Option<HomeAssistantSection>,
    /// Device shadow (`mqtt.shadow`): desired / reported / delta documents per device.
    pub shadow: Option<ShadowSection>,
    /// QoS of telemetry: 0 or 1. With 1 a row leaves the outbox only after its PUBACK.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Messages published but not yet acknowledged, at most (1–65535).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Subscribe to `<prefix>/+/+/set` style command topics (`<prefix>/<device>/<point>/set`).
    #[serde(default = "default_true")]
    pub commands: bool,
    /// How often the retained status document is republished.
    #[serde(default = "default_status_interval_s")]
    pub status_interval_s: u64,
}

fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_keepalive_s() -> u64 {
    30
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_telemetry_topic() -> String {
    "{prefix}/{device}/{point}".into()
}
fn default_batch_topic() -> String {
    "{prefix}/{device}".into()
}
fn default_alerts_topic() -> String {
    "{prefix}/alerts/{device}/{name}".into()
}
fn default_qos() -> u8 {
    1
}
fn default_max_inflight() -> u16 {
    256
}
fn default_reconnect_min_ms() -> u64 {
    500
}
fn default_reconnect_max_ms() -> u64 {
    30_000
}
fn default_true() -> bool {
    true
}
fn default_status_interval_s() -> u64 {
    10
}

/// SQLite synchronous mode of the outbox.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Synchronous {
    /// fsync on every commit: a committed batch survives power loss.
    #[default]
    Full,
    /// WAL default: survives a crash of the process, may lose the last commits on power loss.
    Normal,
}

/// `store:` — the durable outbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite file; relative paths are under `gateway.state_dir`.
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Upper bound on stored bytes; on overflow the oldest rows are dropped (counted).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rows older than this are dropped (counted).
    #[serde(default = "default_max_age_s")]
    pub max_age_s: u64,
    #[serde(default)]
    pub synchronous: Synchronous,
    /// Readings committed in one transaction at most.
    #[serde(default = "default_max_batch_readings")]
    pub max_batch_readings: usize,
    /// Group commit: after the first batch of readings arrives, the pipeline waits this long for
    /// more (from every source) and commits them in one transaction, up to `max_batch_readings`.
    /// The only latency it adds; it turns a poll per device per second into one transaction
    /// (one fsync, one write to the SD card) for every device polled in the same few ms. 0 commits
    /// whatever is waiting at once.
    #[serde(default = "default_commit_window_ms")]
    pub commit_window_ms: u64,
    /// Free space kept on the outbox's filesystem. Below it new readings are held (the bus
    /// fills, sources slow down or count drops) rather than stored, so that delivered rows can
    /// always be deleted to make room; nothing already stored is dropped for it. 0 turns the
    /// check off (SQLite then fails only at 0 bytes, when even deleting may fail).
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: default_store_path(),
            max_bytes: default_max_bytes(),
            max_age_s: default_max_age_s(),
            synchronous: Synchronous::Full,
            max_batch_readings: default_max_batch_readings(),
            commit_window_ms: default_commit_window_ms(),
            min_free_bytes: default_min_free_bytes(),
        }
    }
}

fn default_store_path() -> PathBuf {
    PathBuf::from("outbox.db")
}
fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}
fn default_max_age_s() -> u64 {
    7 * 24 * 3600
}
fn default_max_batch_readings() -> usize {
    5_000
}
fn default_commit_window_ms() -> u64 {
    2
}
/// Room for SQLite's write-ahead log (checkpointed at ~4 MiB) with a wide margin.
fn default_min_free_bytes() -> u64 {
    32 * 1024 * 1024
}

/// `metrics:` — the local Prometheus endpoint.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address for `GET /metrics`, e.g. `127.0.0.1:9898`; absent: no endpoint.
    pub listen: Option<SocketAddr>,
}

/// One entry of `sources:` — `- <kind>: { name: …, … }`. The body (without `name`) is parsed by
/// the adapter crate for `kind`.
#[derive(Debug, Clone)]
pub struct SourceEntry {
    pub kind: String,
    pub name: String,
    pub body: serde_yaml::Value,
    /// YAML path of the body, e.g. `sources[2].modbus`.
    pub path: String,
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub file: PathBuf,
    pub gateway: GatewaySection,
    pub bus: BusSection,
    pub mqtt: MqttSection,
    pub store: StoreSection,
    pub metrics: MetricsSection,
    pub sources: Vec<SourceEntry>,
    /// Pipeline-stage sections (`rules:`, `inference:`) as written, with their YAML path; parsed by
    /// the stage's own crate through [`Diagnostics::parse`] like the sources.
    pub stages: Vec<(String, serde_yaml::Value)>,
    /// The MQTT password after `password` / `password_file` resolution.
    pub mqtt_password: Option<Secret>,
}

impl GatewayConfig {
    pub fn topic_prefix(&self) -> String {
        self.mqtt
            .topic_prefix
            .clone()
            .unwrap_or_else(|| format!("weir/{}", self.gateway.id))
    }
    pub fn client_id(&self) -> String {
        self.mqtt
            .client_id
            .clone()
            .unwrap_or_else(|| format!("weir-{}", self.gateway.id))
    }
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt
            .port
            .unwrap_or(if self.mqtt.tls.is_some() { 8883 } else { 1883 })
    }
    pub fn store_path(&self) -> PathBuf {
        if self.store.path.is_absolute() {
            self.store.path.clone()
        } else {
            self.gateway.state_dir.join(&self.store.path)
        }
    }
    pub fn store_max_age(&self) -> Duration {
        Duration::from_secs(self.store.max_age_s)
    }
}

const TOP_KEYS: &[&str] = &[
    "gateway",
    "bus",
    "mqtt",
    "store",
    "metrics",
    "sources",
    "rules",
    "inference",
];

/// Which top-level sections of the file to expand, read and validate.
///
/// Invariant: a section not listed is neither `${VAR}`-expanded nor parsed nor validated, and its
/// [`GatewayConfig`] field holds the section's default (`sources` and `stages` are empty, no
/// `mqtt_password`). Whatever the list, the text must be YAML, a mapping, and use known top-level
/// keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sections<'a> {
    /// The whole file (`run`, `check`, `buffer drain`).
    All,
    /// Only these sections, by top-level key (`gateway`, `store`, `rules` …). `gateway` is
    /// required only when listed.
    Only(&'a [&'a str]),
}

impl Sections<'_> {
    /// Whether the section `name` is loaded.
    pub fn wants(&self, name: &str) -> bool {
        match self {
            Sections::All => true,
            Sections::Only(names) => names.contains(&name),
        }
    }
}

/// Read and validate a whole file; see [`load_str`].
pub fn load_file(path: &Path) -> (Option<GatewayConfig>, Diagnostics) {
    load_file_for(path, &Sections::All)
}

/// Read a file and validate only the `sections` listed; see [`load_str_for`].
pub fn load_file_for(path: &Path, sections: &Sections) -> (Option<GatewayConfig>, Diagnostics) {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str_for(&text, path, &|k| std::env::var(k).ok(), sections),
        Err(e) => {
            let mut d = Diagnostics::new(path, PathIndex::default());
            d.error("", format!("cannot read: {e}"));
            (None, d)
        }
    }
}

/// Parse and validate `text` (named `file` in messages), with `lookup` for `${VAR}`.
///
/// Returns the config when the document is a mapping (sections that failed to parse are replaced
/// by their defaults, their errors recorded), and the diagnostics collector. The caller parses adapter
/// sections (`sources[i]`) into the same collector, then calls [`Diagnostics::finish`], which fails
/// when anything was recorded: a config must not be used unless `finish` succeeded.
pub fn load_str(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> (Option<GatewayConfig>, Diagnostics) {
    load_str_for(text, file, lookup, &Sections::All)
}

/// Like [`load_str`], but only the `sections` listed are `${VAR}`-expanded, parsed and
/// validated (see [`Sections`]); the text as a whole is still checked to be a YAML mapping with
/// known top-level keys.
pub fn load_str_for(
    text: &str,
    file: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
    sections: &Sections,
) -> (Option<GatewayConfig>, Diagnostics) {
    let mut d = Diagnostics::new(file, PathIndex::build(text));
    let root: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            d.error_at_line(e.location().map(|l| l.line()), e.to_string());
            return (None, d);
        }
    };

    let serde_yaml::Value::Mapping(mut map) = root else {
        d.error(
            "",
            "the configuration must be a mapping with `gateway:`, `mqtt:`, `sources:` …",
        );
        return (None, d);
    };
    for k in map.keys() {
        let k = k.as_str().unwrap_or("?");
        if !TOP_KEYS.contains(&k) {
            d.error(
                k,
                format!(
                    "unknown section `{k}`, expected one of {}",
                    TOP_KEYS.join(", ")
                ),
            );
        }
    }
    // Sections not asked for leave here: never expanded (their variables may be unset on this
    // machine), never read. The substitution runs on the root so that a section that
    // substitutes to "" counts as not given, as any other key.
    map.retain(|k, _| k.as_str().is_some_and(|k| sections.wants(k)));
    let mut root = serde_yaml::Value::Mapping(map);
    env::substitute(&mut root, "", lookup, &mut d);
    let serde_yaml::Value::Mapping(map) = root else {
        return (None, d); // substitution keeps a mapping a mapping
    };
    let section = |name: &str| map.get(name).cloned();

    let gateway: Option<GatewaySection> = match section("gateway") {
        Some(v) => d.parse(v, "gateway"),
        None if !sections.wants("gateway") => None,
        None => {
            d.error("gateway", "missing section `gateway:` (at least `id:`)");
            None
        }
    };
    // The sections below are read partially: a key in error is reported and its default stands
    // in, so the range checks still run on the other keys (every error at once). Each default is
    // valid on its own; cross-field checks skip pairs with a key in error.
    let bus: BusSection = section("bus")
        .and_then(|v| d.parse_partial(v, "bus"))
        .map(|p| p.value)
        .unwrap_or_default();
    let empty = || serde_yaml::Value::Mapping(Default::default());
    let mqtt: Option<Partial<MqttSection>> = if sections.wants("mqtt") {
        d.parse_partial(section("mqtt").unwrap_or_else(empty), "mqtt")
    } else {
        None
    };
    let store: StoreSection = section("store")
        .and_then(|v| d.parse_partial(v, "store"))
        .map(|p| p.value)
        .unwrap_or_default();
    let metrics: MetricsSection = section("metrics")
        .and_then(|v| d.parse_partial(v, "metrics"))
        .map(|p| p.value)
        .unwrap_or_default();
    let sources = parse_sources(section("sources"), &mut d);

    if let Some(g) = &gateway {
        if g.id.is_empty()
            || !g
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            d.error(
                "gateway.id",
                format!("`{}` must be non-empty letters, digits, `-` or `_`", g.id),
            );
        }
    }
    if bus.capacity_batches == 0 {
        d.error("bus.capacity_batches", "must be at least 1");
    }
    if store.max_bytes < 64 * 1024 {
        d.error("store.max_bytes", "must be at least 65536 bytes");
    }
    if store.max_batch_readings == 0 {
        d.error("store.max_batch_readings", "must be at least 1");
    }
    if store.commit_window_ms > 1000 {
        d.error(
            "store.commit_window_ms",
            "must be at most 1000 (it delays every reading; a few ms groups what arrives together)",
        );
    }
    let mut mqtt_password = None;
    if let Some(p) = &mqtt {
        let m = &p.value;
        validate_mqtt(p, &mut d);
        mqtt_password =
            env::resolve_secret(&m.password, &m.password_file, "mqtt", "password", &mut d);
        if mqtt_password.is_some() && m.username.is_none() && !p.skipped("mqtt.username") {
            d.error("mqtt.username", "a password is given but no `username`");
        }
    }

    // A section that failed to parse has its error recorded; defaults stand in for it so that the
    // rest (the sources above all) is still validated and every error is reported at once.
    let config = GatewayConfig {
        file: file.to_path_buf(),
        gateway: gateway.unwrap_or_else(|| GatewaySection {
            id: String::new(),
            state_dir: default_state_dir(),
            shutdown_timeout_ms: default_shutdown_timeout_ms(),
        }),
        bus,
        mqtt: match mqtt {
            Some(p) => p.value,
            None => match serde_yaml::from_value(empty()) {
                Ok(m) => m,
                Err(_) => return (None, d),
            },
        },
        store,
        metrics,
        sources,
        stages: ["rules", "inference"]
            .iter()
            .filter_map(|k| section(k).map(|v| (k.to_string(), v)))
            .collect(),
        mqtt_password,
    };
    (Some(config), d)
}

fn validate_mqtt(p: &Partial<MqttSection>, d: &mut Diagnostics) {
    let m = &p.value;
    if m.host.trim().is_empty() {
        d.error("mqtt.host", "must not be empty");
    }
    if m.qos > 1 {
        d.error(
            "mqtt.qos",
            format!("{} is not supported: use 0 or 1", m.qos),
        );
    }
    if m.max_inflight == 0 {
        d.error("mqtt.max_inflight", "must be at least 1");
    }
    if m.keepalive_s != 0 && m.keepalive_s < 5 {
        d.error("mqtt.keepalive_s", "must be 0 (off) or at least 5");
    }
    if m.keepalive_s > u64::from(u16::MAX) {
        d.error("mqtt.keepalive_s", "must be at most 65535 (MQTT's limit)");
    }
    if m.connect_timeout_ms == 0 {
        d.error("mqtt.connect_timeout_ms", "must be at least 1");
    }
    if (m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms)
        && !p.skipped("mqtt.reconnect_min_ms")
        && !p.skipped("mqtt.reconnect_max_ms")
    {
        d.error(
            "mqtt.reconnect_min_ms",
            "must be at least 1 and not above reconnect_max_ms",
        );
    }
    for (key, tpl, needed) in [
        (
            "telemetry_topic",
            &m.telemetry_topic,
            &["{device}", "{point}"][..],
        ),
        ("batch_topic", &m.batch_topic, &["{device}"][..]),
        ("alerts_topic", &m.alerts_topic, &["{device}", "{name}"][..]),
    ] {
        for n in needed {
            if !tpl.contains(n) {
                d.error(
                    &format!("mqtt.{key}"),
                    format!("`{tpl}` must contain `{n}`"),
                );
            }
        }
        if tpl.contains('+') || tpl.contains('#') {
            d.error(
                &format!("mqtt.{key}"),
                "wildcards `+`/`#` are not allowed in a publish topic",
            );
        }
    }
    match (m.format, &m.sparkplug) {
        (NorthboundFormat::SparkplugB, None) if !p.skipped("mqtt.sparkplug") => d.error(
            "mqtt.sparkplug",
            "`format: sparkplug_b` needs a `sparkplug:` section with at least `group_id`",
        ),
        (NorthboundFormat::Json, Some(_)) if !p.skipped("mqtt.format") => d.error(
            "mqtt.sparkplug",
            "given, but `format` is `json`: set `format: sparkplug_b` or remove the section",
        ),
        _ => {}
    }
    if let Some(s) = &m.sparkplug {
        // Sparkplug 3.0, "Topic Namespace Elements": ids are UTF-8 without `/`, `+` and `#`.
        for (key, v) in [
            ("group_id", Some(&s.group_id)),
            ("edge_node_id", s.edge_node_id.as_ref()),
            ("primary_host_id", s.primary_host_id.as_ref()),
        ] {
            if let Some(v) = v {
                if v.is_empty() || v.contains(['/', '+', '#']) {
                    d.error(
                        &format!("mqtt.sparkplug.{key}"),
                        format!("`{v}` must be non-empty and without `/`, `+` or `#`"),
                    );
                }
            }
        }
    }
    if let Some(h) = &m.home_assistant {
        if h.enabled && m.format != NorthboundFormat::Json && !p.skipped("mqtt.format") {
            d.error(
                "mqtt.home_assistant",
                "discovery is published by the `json` format: set `format: json` or `enabled: false`",
            );
        }
        if h.enabled && m.mode == PublishMode::PerDevice && !p.skipped("mqtt.mode") {
            d.error(
                "mqtt.home_assistant",
                "entities read their state from one reading per message: set `mode: per_reading`",
            );
        }
        // HA subscribes `<prefix>/+/+/config` and `<prefix>/+/+/+/config`: one or more plain levels.
        if h.prefix.is_empty()
            || h.prefix.contains(['+', '#'])
            || h.prefix.split('/').any(str::is_empty)
        {
            d.error(
                "mqtt.home_assistant.prefix",
                format!(
                    "`{}` must be a topic without wildcards or empty levels",
                    h.prefix
                ),
            );
        }
    }
    if let Some(sh) = &m.shadow {
        if sh.retry_min_ms == 0 || sh.retry_min_ms > sh.retry_max_ms {
            d.error(
                "mqtt.shadow.retry_min_ms",
                "must be at least 1 and not above retry_max_ms",
            );
        }
        if sh.enabled && m.format != NorthboundFormat::Json && !p.skipped("mqtt.format") {
            d.error(
                "mqtt.shadow",
                "the shadow reads reported values from the `json` format's telemetry: set `format: json`",
            );
        }
        if sh.enabled && m.mode == PublishMode::PerDevice && !p.skipped("mqtt.mode") {
            d.error(
                "mqtt.shadow",
                "reported values are read from one reading per message: set `mode: per_reading`",
            );
        }
    }
    if let Some(t) = &m.tls {
        for (key, f) in [
            ("ca_file", Some(&t.ca_file)),
            ("cert_file", t.cert_file.as_ref()),
            ("key_file", t.key_file.as_ref()),
        ] {
            if let Some(f) = f {
                if let Err(e) = std::fs::metadata(f) {
                    d.error(
                        &format!("mqtt.tls.{key}"),
                        format!("cannot read {}: {e}", f.display()),
                    );
                }
            }
        }
        if t.cert_file.is_some() != t.key_file.is_some()
            && !p.skipped("mqtt.tls.cert_file")
            && !p.skipped("mqtt.tls.key_file")
        {
            d.error("mqtt.tls", "mTLS needs both `cert_file` and `key_file`");
        }
    }
}

fn parse_sources(v: Option<serde_yaml::Value>, d: &mut Diagnostics) -> Vec<SourceEntry> {
    let mut out: Vec<SourceEntry> = Vec::new();
    let seq = match v {
        None | Some(serde_yaml::Value::Null) => return out,
        Some(serde_yaml::Value::Sequence(s)) => s,
        Some(_) => {
            d.error("sources", "must be a list of `- <kind>: {…}` entries");
            return out;
        }
    };
    for (i, item) in seq.into_iter().enumerate() {
        let at = format!("sources[{i}]");
        let serde_yaml::Value::Mapping(m) = item else {
            d.error(
                &at,
                "must be a mapping with one key, the source kind (e.g. `sim:`)",
            );
            continue;
        };
        if m.len() != 1 {
            d.error(
                &at,
                format!(
                    "must have exactly one key, the source kind; found {}",
                    m.len()
                ),
            );
            continue;
        }
        let Some((k, body)) = m.into_iter().next() else {
            continue;
        };
        let kind = k.as_str().unwrap_or("?").to_string();
        let path = format!("{at}.{kind}");
        let mut body = match body {
            serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
            b @ serde_yaml::Value::Mapping(_) => b,
            _ => {
                d.error(&path, "must be a mapping of the source's settings");
                continue;
            }
        };
        let name = match body.as_mapping_mut().and_then(|m| m.remove("name")) {
            None => format!("{kind}{i}"),
            Some(serde_yaml::Value::String(s)) => s,
            Some(_) => {
                d.error(&format!("{path}.name"), "must be a string");
                continue;
            }
        };
        if name.is_empty() || name.contains(['/', '+', '#']) {
            d.error(
                &format!("{path}.name"),
                format!("`{name}` must be non-empty, without `/`, `+`, `#`"),
            );
        }
        if let Some(prev) = out.iter().find(|e| e.name == name) {
            d.error(
                &format!("{path}.name"),
                format!("duplicate source name `{name}` (also at {})", prev.path),
            );
        }
        out.push(SourceEntry {
            kind,
            name,
            body,
            path,
        });
    }
    out
}

#[cfg(test)]
mod tests;
