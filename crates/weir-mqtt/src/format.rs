//! Topics and payloads of northbound messages.
//!
//! Telemetry, one reading per message (`mode: per_reading`), on `telemetry_topic`
//! (default `{prefix}/{device}/{point}`):
//!
//! ```json
//! {"value":23.4,"unit":"°C","ts":"2026-11-22T03:16:00.123456789Z","quality":"good","seq":1041}
//! ```
//!
//! `quality` is `good`, `uncertain` or `bad`; a bad or uncertain reading adds `"reason":"…"`.
//! `seq` increases by one per message per device, across restarts (the outbox persists it in the same transaction as
//! the message), so a consumer sees gaps (loss) and repeats (duplicates from the in-flight window
//! after a reconnect). Replayed messages are byte-identical to the first attempt: `ts` is the
//! reading's own time, never the send time.
//!
//! Per-device batches (`mode: per_device`), one message per device per pipeline batch, on
//! `batch_topic` (default `{prefix}/{device}`):
//!
//! ```json
//! {"seq":17,"readings":[{"point":"temperature","value":23.4,"unit":"°C","ts":"…","quality":"good"}]}
//! ```
//!
//! Events travel with the readings as typed [`Event`]s and are committed in the same transaction.
//! An alert raised or cleared (by a rule) is its own message in either mode on `alerts_topic`
//! (default `{prefix}/alerts/{device}/{name}`), delivered later if raised offline, with its own
//! `seq` series per device (kept apart from the device's telemetry `seq`):
//!
//! ```json
//! {"alert":"high_temperature","device":"gh1/climate","state":"active","severity":"warning","message":"…","rule":"vent","ts":"…","seq":3}
//! ```
//!
//! The result of a command a rule sent is published like the answer to an MQTT `…/set`, on
//! `{prefix}/{device}/{point}/set/result`, through the outbox (its own `seq` series per device):
//!
//! ```json
//! {"ok":false,"error":"…","value":true,"origin":"rule","rule":"vent","ts":"…","seq":2}
//! ```
//!
//! MQTT topic names may not contain the wildcards `+` and `#` (MQTT 3.1.1 §4.7.1); a device or point
//! id containing one is published with `_` in its place, so a message can always be sent.
//!
//! # Commit and publish
//!
//! [`Encoder::rows`] runs at commit, inside the outbox transaction: it assigns the `seq` numbers
//! and stores each message-to-be as a typed row ([`weir_store::record`]: device, point, typed
//! value, unit, reading time, quality and reason). [`JsonFormat`] turns a row into the message
//! above when the forwarder publishes it. Encoding is a pure function of the row and of the topic
//! templates, so a replayed row is byte-identical to its first attempt. Rows stored by a build
//! before typed rows (schema version 1 or 2) are published as stored.
//!
//! Commands: `{prefix}/{device}/{point}/set` (subscribed per device the registry knows), answered
//! on `…/set/result` with `{"ok":true,"ts":"…"}` or `{"ok":false,"error":"…","ts":"…"}`. The
//! will and the retained status are `offline` / `online` on `{prefix}/status`.

use serde::Serialize;
use weir_config::PublishMode;
use weir_core::{
    Alert, CommandOrigin, CommandResult, DeviceId, Event, Quality, Reading, Timestamp, Value,
};
use weir_store::record::{self, AlertRef, OriginRef, QualityRef, ReadingRef, ResultRef, ValueRef};
use weir_store::{NewRow, RowKind, SeqAllocator, StoredMessage};

use crate::northbound::{EncodeError, Inbound, InboundCommand, Message, NorthboundFormat};

/// `seq` series keys of events. `#` cannot appear in a device id (the registry refuses MQTT
/// wildcards), so these never collide with a device's telemetry series.
const ALERT_SEQ: &str = "#alerts/";
const RESULT_SEQ: &str = "#results/";

/// A topic template split at its placeholders once, at start.
#[derive(Debug, Clone)]
pub struct TopicTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Lit(String),
    Device,
    Point,
}

impl TopicTemplate {
    pub fn new(template: &str, prefix: &str) -> Self {
        let t = template.replace("{prefix}", prefix);
        let mut parts = Vec::new();
        let mut rest = t.as_str();
        while let Some(i) = rest.find('{') {
            let (lit, tail) = rest.split_at(i);
            let (part, skip) = if tail.starts_with("{device}") {
                (Part::Device, "{device}".len())
            } else if tail.starts_with("{point}") {
                (Part::Point, "{point}".len())
            } else if tail.starts_with("{name}") {
                (Part::Point, "{name}".len())
            } else {
                (Part::Lit("{".into()), 1)
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(lit.to_string()));
            }
            parts.push(part);
            rest = &tail[skip..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        TopicTemplate { parts }
    }

    pub fn render(&self, device: &str, point: &str) -> String {
        let mut s = String::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Lit(l) => s.push_str(l),
                Part::Device => push_topic_safe(&mut s, device),
                Part::Point => push_topic_safe(&mut s, point),
            }
        }
        s
    }
}

fn push_topic_safe(s: &mut String, v: &str) {
    if v.contains(['+', '#']) {
        s.extend(
            v.chars()
                .map(|c| if c == '+' || c == '#' { '_' } else { c }),
        );
    } else {
        s.push_str(v);
    }
}

/// `ts` as RFC 3339 with nanoseconds, UTC.
pub fn rfc3339(r: &Reading) -> String {
    rfc3339_ts(r.ts)
}

/// A timestamp as RFC 3339 with nanoseconds, UTC.
pub fn rfc3339_ts(ts: Timestamp) -> String {
    humantime::format_rfc3339_nanos(ts.to_system_time()).to_string()
}

/// A core value as stored in a row.
pub fn value_ref(v: &Value) -> ValueRef<'_> {
    match v {
        Value::F64(f) => ValueRef::F64(*f),
        Value::I64(i) => ValueRef::I64(*i),
        Value::Bool(b) => ValueRef::Bool(*b),
        Value::Str(s) => ValueRef::Str(s),
    }
}

/// A reading as stored in a row.
pub fn reading_ref(r: &Reading) -> ReadingRef<'_> {
    ReadingRef {
        point: r.point.as_str(),
        value: value_ref(&r.value),
        unit: r.unit.as_deref(),
        ts_ns: r.ts.as_nanos(),
        quality: match &r.quality {
            Quality::Good => QualityRef::Good,
            Quality::Uncertain(reason) => QualityRef::Uncertain(reason),
            Quality::Bad(reason) => QualityRef::Bad(reason),
        },
    }
}

struct JsonValue<'a>(ValueRef<'a>);

impl Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            ValueRef::F64(v) if v.is_finite() => s.serialize_f64(v),
            ValueRef::F64(_) => s.serialize_none(),
            ValueRef::I64(v) => s.serialize_i64(v),
            ValueRef::Bool(v) => s.serialize_bool(v),
            ValueRef::Str(v) => s.serialize_str(v),
        }
    }
}

#[derive(Serialize)]
struct ReadingJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    point: Option<&'a str>,
    value: JsonValue<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    ts: String,
    quality: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

fn reading_json<'a>(r: &ReadingRef<'a>, with_point: bool, seq: Option<u64>) -> ReadingJson<'a> {
    ReadingJson {
        point: with_point.then_some(r.point),
        value: JsonValue(r.value),
        unit: r.unit,
        ts: rfc3339_ts(Timestamp(r.ts_ns)),
        quality: match r.quality {
            QualityRef::Good => "good",
            QualityRef::Uncertain(_) => "uncertain",
            QualityRef::Bad(_) => "bad",
        },
        reason: match r.quality {
            QualityRef::Bad(reason) | QualityRef::Uncertain(reason) => Some(reason),
            QualityRef::Good => None,
        },
        seq,
    }
}

#[derive(Serialize)]
struct BatchJson<'a> {
    seq: u64,
    readings: Vec<ReadingJson<'a>>,
}

/// Turns readings and events into typed outbox rows at commit (the `seq` numbers, the message
/// shape of `mqtt.mode`), and carries the JSON topic templates used when they are published.
#[derive(Debug, Clone)]
pub struct Encoder {
    telemetry: TopicTemplate,
    batch: TopicTemplate,
    alerts: TopicTemplate,
    prefix: String,
    mode: PublishMode,
    qos: u8,
    retain: bool,
    /// Home Assistant discovery, published by the JSON format (`mqtt.home_assistant`).
    home_assistant: Option<crate::home_assistant::HaConfig>,
}

impl Encoder {
    pub fn new(
        prefix: &str,
        telemetry_topic: &str,
        batch_topic: &str,
        mode: PublishMode,
        qos: u8,
    ) -> Self {
        Encoder {
            telemetry: TopicTemplate::new(telemetry_topic, prefix),
            batch: TopicTemplate::new(batch_topic, prefix),
            alerts: TopicTemplate::new("{prefix}/alerts/{device}/{name}", prefix),
            prefix: prefix.to_string(),
            mode,
            qos,
            retain: false,
            home_assistant: None,
        }
    }

    pub fn from_config(cfg: &weir_config::GatewayConfig) -> Self {
        Encoder::new(
            &cfg.topic_prefix(),
            &cfg.mqtt.telemetry_topic,
            &cfg.mqtt.batch_topic,
            cfg.mqtt.mode,
            cfg.mqtt.qos,
        )
        .with_alerts_topic(&cfg.mqtt.alerts_topic, &cfg.topic_prefix())
        .with_home_assistant(
            cfg.mqtt
                .home_assistant
                .as_ref()
                .filter(|h| h.enabled)
                .map(|h| crate::home_assistant::HaConfig {
                    discovery_prefix: h.prefix.clone(),
                    gateway_id: cfg.gateway.id.clone(),
                }),
        )
    }

    /// Publish Home Assistant discovery with the JSON format (`None`: not).
    pub fn with_home_assistant(mut self, ha: Option<crate::home_assistant::HaConfig>) -> Self {
        self.home_assistant = ha;
        self
    }

    /// Publish alerts on `template` (`{prefix}`, `{device}`, `{name}`).
    pub fn with_alerts_topic(mut self, template: &str, prefix: &str) -> Self {
        self.alerts = TopicTemplate::new(template, prefix);
        self
    }

    fn row(&self, kind: RowKind, key: &str, body: Vec<u8>, seq: u64) -> NewRow {
        NewRow {
            kind,
            key: key.to_string(),
            body,
            seq,
            qos: self.qos,
            retain: self.retain,
        }
    }

    fn alert_row(&self, a: &Alert, seqs: &mut SeqAllocator<'_>) -> NewRow {
        let mut body = Vec::with_capacity(64);
        record::encode_alert(
            &mut body,
            &AlertRef {
                name: &a.name,
                active: a.active,
                severity: &a.severity,
                message: &a.message,
                by: &a.by,
                ts_ns: a.ts.as_nanos(),
            },
        );
        let seq = seqs.next(&format!("{ALERT_SEQ}{}", a.device));
        self.row(RowKind::Alert, a.device.as_str(), body, seq)
    }

    fn result_row(&self, c: &CommandResult, seqs: &mut SeqAllocator<'_>) -> NewRow {
        let mut body = Vec::with_capacity(64);
        record::encode_result(
            &mut body,
            &ResultRef {
                point: c.point.as_str(),
                value: value_ref(&c.value),
                error: c.outcome.as_ref().err().map(String::as_str),
                origin: match &c.origin {
                    CommandOrigin::Mqtt => OriginRef::Mqtt,
                    CommandOrigin::Rule(r) => OriginRef::Rule(r),
                    CommandOrigin::Cli => OriginRef::Cli,
                },
                ts_ns: c.ts.as_nanos(),
            },
        );
        let seq = seqs.next(&format!("{RESULT_SEQ}{}", c.device));
        self.row(RowKind::CommandResult, c.device.as_str(), body, seq)
    }

    /// Rows for `readings`, then `events`, in order, taking sequence numbers from `seqs`:
    /// `per_reading` makes one row per reading, `per_device` one row per device (in order of
    /// first appearance, its readings in order), each event one row with its own series.
    pub fn rows(
        &self,
        readings: &[Reading],
        events: &[Event],
        seqs: &mut SeqAllocator<'_>,
    ) -> Vec<NewRow> {
        let mut out = Vec::with_capacity(readings.len() + events.len());
        match self.mode {
            PublishMode::PerReading => {
                for r in readings {
                    let mut body = Vec::with_capacity(48 + r.point.as_str().len());
                    record::encode_reading(&mut body, &reading_ref(r));
                    let seq = seqs.next(r.device.as_str());
                    out.push(self.row(RowKind::Reading, r.device.as_str(), body, seq));
                }
            }
            PublishMode::PerDevice => {
                // Group by device, keeping the order of first appearance and the order within.
                let mut groups: Vec<(&DeviceId, Vec<u8>)> = Vec::new();
                for r in readings {
                    let body = match groups.iter_mut().find(|(d, _)| *d == &r.device) {
                        Some((_, b)) => b,
                        None => {
                            groups.push((&r.device, Vec::with_capacity(1024)));
                            &mut groups.last_mut().expect("just pushed").1
                        }
                    };
                    record::encode_reading(body, &reading_ref(r));
                }
                for (device, body) in groups {
                    let seq = seqs.next(device.as_str());
                    out.push(self.row(RowKind::Readings, device.as_str(), body, seq));
                }
            }
        }
        for e in events {
            out.push(match e {
                Event::Alert(a) => self.alert_row(a, seqs),
                Event::CommandResult(c) => self.result_row(c, seqs),
            });
        }
        out
    }

    /// The JSON format publishing with these topics.
    pub fn json_format(&self) -> JsonFormat {
        JsonFormat {
            enc: self.clone(),
            ha: self.home_assistant.clone().map(|c| {
                crate::home_assistant::HomeAssistant::new(c, &self.prefix, self.telemetry.clone())
            }),
            registry: None,
        }
    }
}

/// Today's JSON topics and payloads (see the module documentation), and Home Assistant
/// discovery when configured ([`crate::home_assistant`]).
#[derive(Debug, Clone)]
pub struct JsonFormat {
    enc: Encoder,
    ha: Option<crate::home_assistant::HomeAssistant>,
    /// The registry, kept from `on_connected` for HA's birth message.
    registry: Option<weir_core::Registry>,
}

impl JsonFormat {
    fn status_topic(&self) -> String {
        format!("{}/status", self.enc.prefix)
    }

    fn message(&self, row: &StoredMessage, topic: String, payload: Vec<u8>) -> Message {
        Message {
            topic,
            payload,
            qos: row.qos,
            retain: row.retain,
        }
    }

    /// The message of a typed row (pure: the same row gives the same bytes).
    pub fn encode_row(&self, row: &StoredMessage) -> Result<Message, EncodeError> {
        let kind = RowKind::from_code(row.kind).ok_or(EncodeError::UnknownKind(row.kind))?;
        let device = row.topic.as_str();
        let enc = &self.enc;
        Ok(match kind {
            RowKind::Message => Message {
                topic: row.topic.clone(),
                payload: row.payload.clone(),
                qos: row.qos,
                retain: row.retain,
            },
            RowKind::Reading => {
                let mut it = record::readings(&row.payload);
                let r = it.next().ok_or(EncodeError::Empty)??;
                let payload = serde_json::to_vec(&reading_json(&r, false, Some(row.seq)))
                    .map_err(|e| EncodeError::Json(e.to_string()))?;
                self.message(row, enc.telemetry.render(device, r.point), payload)
            }
            RowKind::Readings => {
                let readings = record::readings(&row.payload)
                    .map(|r| r.map(|r| reading_json(&r, true, None)))
                    .collect::<Result<Vec<_>, _>>()?;
                let doc = BatchJson {
                    seq: row.seq,
                    readings,
                };
                let payload =
                    serde_json::to_vec(&doc).map_err(|e| EncodeError::Json(e.to_string()))?;
                self.message(row, enc.batch.render(device, ""), payload)
            }
            RowKind::Alert => {
                let a = record::alert(&row.payload)?;
                let mut doc = serde_json::Map::new();
                doc.insert("alert".into(), a.name.into());
                doc.insert("device".into(), device.into());
                doc.insert(
                    "state".into(),
                    if a.active { "active" } else { "cleared" }.into(),
                );
                doc.insert("severity".into(), a.severity.into());
                if a.active {
                    doc.insert("message".into(), a.message.into());
                }
                doc.insert("rule".into(), a.by.into());
                doc.insert("ts".into(), rfc3339_ts(Timestamp(a.ts_ns)).into());
                doc.insert("seq".into(), row.seq.into());
                let payload =
                    serde_json::to_vec(&doc).map_err(|e| EncodeError::Json(e.to_string()))?;
                self.message(row, enc.alerts.render(device, a.name), payload)
            }
            RowKind::CommandResult => {
                let c = record::result(&row.payload)?;
                let mut doc = serde_json::Map::new();
                doc.insert("ok".into(), c.error.is_none().into());
                if let Some(e) = c.error {
                    doc.insert("error".into(), e.into());
                }
                doc.insert(
                    "value".into(),
                    serde_json::to_value(JsonValue(c.value)).unwrap_or_default(),
                );
                let (origin, rule) = match c.origin {
                    OriginRef::Mqtt => ("mqtt", None),
                    OriginRef::Rule(r) => ("rule", Some(r)),
                    OriginRef::Cli => ("cli", None),
                };
                doc.insert("origin".into(), origin.into());
                if let Some(r) = rule {
                    doc.insert("rule".into(), r.into());
                }
                doc.insert("ts".into(), rfc3339_ts(Timestamp(c.ts_ns)).into());
                doc.insert("seq".into(), row.seq.into());
                let payload =
                    serde_json::to_vec(&doc).map_err(|e| EncodeError::Json(e.to_string()))?;
                self.message(
                    row,
                    format!("{}/set/result", enc.telemetry.render(device, c.point)),
                    payload,
                )
            }
        })
    }
}

impl NorthboundFormat for JsonFormat {
    fn name(&self) -> &'static str {
        "json"
    }

    fn will(&mut self) -> Message {
        Message {
            topic: self.status_topic(),
            payload: b"offline".to_vec(),
            qos: 1,
            retain: true,
        }
    }

    fn device_filter(&self, device: &DeviceId) -> Option<String> {
        Some(format!("{}/{}/+/set", self.enc.prefix, device))
    }

    fn fixed_filters(&self) -> Vec<String> {
        self.ha.iter().map(|h| h.birth_topic()).collect()
    }

    fn on_connected(&mut self, registry: &weir_core::Registry) -> Vec<Message> {
        let mut out = vec![Message {
            topic: self.status_topic(),
            payload: b"online".to_vec(),
            qos: 1,
            retain: true,
        }];
        if let Some(h) = &mut self.ha {
            self.registry = Some(registry.clone());
            out.extend(h.announce_all(registry));
        }
        out
    }

    fn on_registry_change(&mut self, registry: &weir_core::Registry) -> Vec<Message> {
        match &mut self.ha {
            Some(h) => h.changes(registry),
            None => Vec::new(),
        }
    }

    fn goodbye(&mut self) -> Vec<Message> {
        vec![self.will()]
    }

    fn encode(&mut self, row: StoredMessage, _historical: bool) -> Result<Message, EncodeError> {
        if row.kind == RowKind::Message as u8 {
            // Stored before typed rows (or appended as a message): published as stored.
            return Ok(Message {
                topic: row.topic,
                payload: row.payload,
                qos: row.qos,
                retain: row.retain,
            });
        }
        self.encode_row(&row)
    }

    fn topic_of(&self, row: &StoredMessage) -> Option<String> {
        self.encode_row(row).ok().map(|m| m.topic)
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Inbound {
        if let (Some(h), Some(r)) = (&mut self.ha, &self.registry) {
            if h.is_birth(topic, payload) {
                tracing::info!("home assistant came online: publishing discovery again");
                return Inbound::Publish(h.announce_all(r));
            }
        }
        let Some(rest) = topic
            .strip_prefix(self.enc.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_suffix("/set"))
        else {
            return Inbound::Ignore;
        };
        let Some((device, point)) = rest.rsplit_once('/') else {
            return Inbound::Ignore;
        };
        Inbound::Commands(vec![InboundCommand {
            device: device.to_string(),
            point: point.to_string(),
            value: crate::forwarder::parse_command_value(payload),
            reply_to: Some(format!("{topic}/result")),
        }])
    }

    fn answer(&mut self, cmd: &InboundCommand, outcome: &Result<(), String>) -> Option<Message> {
        let ts = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let doc = match outcome {
            Ok(()) => serde_json::json!({ "ok": true, "ts": ts }),
            Err(e) => serde_json::json!({ "ok": false, "error": e, "ts": ts }),
        };
        Some(Message {
            topic: cmd.reply_to.clone()?,
            payload: doc.to_string().into_bytes(),
            qos: 1,
            retain: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use weir_core::Quality;

    #[test]
    fn template_renders_and_sanitises_wildcards() {
        let t = TopicTemplate::new("{prefix}/{device}/{point}", "weir/gh");
        assert_eq!(
            t.render("gh1/climate", "temperature"),
            "weir/gh/gh1/climate/temperature"
        );
        assert_eq!(t.render("a+b", "c#"), "weir/gh/a_b/c_");
        let t = TopicTemplate::new("site/{x}/{device}", "p");
        assert_eq!(t.render("d", ""), "site/{x}/d");
    }

    #[test]
    fn reading_payload_shape() {
        let r = Reading {
            device: "gh1/climate".into(),
            point: "temperature".into(),
            value: Value::F64(23.5),
            unit: Some(Arc::from("°C")),
            ts: Timestamp(1_700_000_000_000_000_001),
            quality: Quality::Bad(Arc::from("timeout")),
            source: Arc::from("sim"),
        };
        let j = serde_json::to_string(&reading_json(&reading_ref(&r), false, Some(7))).unwrap();
        assert_eq!(
            j,
            r#"{"value":23.5,"unit":"°C","ts":"2023-11-14T22:13:20.000000001Z","quality":"bad","reason":"timeout","seq":7}"#
        );
        let nan = Reading {
            value: Value::F64(f64::NAN),
            quality: Quality::Good,
            unit: None,
            ..r
        };
        let j = serde_json::to_string(&reading_json(&reading_ref(&nan), true, None)).unwrap();
        assert!(
            j.starts_with(r#"{"point":"temperature","value":null,"ts":"#),
            "{j}"
        );
    }

    fn reading(device: &str, point: &str, v: Value, q: Quality) -> Reading {
        Reading {
            device: device.into(),
            point: point.into(),
            value: v,
            unit: (point == "temperature").then(|| Arc::from("°C")),
            ts: Timestamp(1_700_000_000_000_000_001),
            quality: q,
            source: Arc::from("sim"),
        }
    }

    /// Rows committed through a real outbox and published by the JSON format: the topics and
    /// payloads of the builds that stored encoded messages, byte for byte, on every attempt.
    fn published(
        mode: PublishMode,
        readings: &[Reading],
        events: &[Event],
    ) -> Vec<(String, String)> {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = weir_store::Outbox::open(
            &dir.path().join("o.db"),
            weir_store::Limits {
                max_bytes: u64::MAX,
                max_age: std::time::Duration::from_secs(60),
                synchronous_full: false,
                min_free_bytes: 0,
            },
        )
        .unwrap();
        let enc = Encoder::new(
            "p",
            "{prefix}/{device}/{point}",
            "{prefix}/{device}",
            mode,
            1,
        );
        ob.append_rows(|seqs| enc.rows(readings, events, seqs))
            .unwrap();
        let mut json = enc.json_format();
        ob.read_after(0, 100)
            .unwrap()
            .into_iter()
            .map(|row| {
                let again = json.encode_row(&row).unwrap();
                let m = json.encode(row, true).unwrap();
                assert_eq!(m, again, "encoding is a pure function of the row");
                (m.topic, String::from_utf8(m.payload).unwrap())
            })
            .collect()
    }

    #[test]
    fn json_rows_publish_todays_topics_and_payloads() {
        let rs = [
            reading(
                "gh1/climate",
                "temperature",
                Value::F64(23.5),
                Quality::Good,
            ),
            reading(
                "gh2",
                "on",
                Value::Bool(true),
                Quality::Bad(Arc::from("timeout")),
            ),
            reading(
                "gh1/climate",
                "mode",
                Value::from("auto"),
                Quality::Uncertain(Arc::from("clock_unsynchronised")),
            ),
        ];
        let ts = "2023-11-14T22:13:20.000000001Z";
        let events = [
            Event::Alert(Alert {
                device: "gh1/climate".into(),
                name: Arc::from("hot"),
                active: true,
                severity: Arc::from("warning"),
                message: Arc::from("too hot"),
                by: Arc::from("vent"),
                ts: Timestamp(1_700_000_000_000_000_001),
            }),
            Event::CommandResult(CommandResult {
                device: "gh2".into(),
                point: "on".into(),
                value: Value::I64(3),
                origin: CommandOrigin::Rule(Arc::from("vent")),
                outcome: Err("refused".into()),
                ts: Timestamp(1_700_000_000_000_000_001),
            }),
        ];
        let got = published(PublishMode::PerReading, &rs, &events);
        let want = [
            (
                "p/gh1/climate/temperature".to_string(),
                format!(r#"{{"value":23.5,"unit":"°C","ts":"{ts}","quality":"good","seq":1}}"#),
            ),
            (
                "p/gh2/on".to_string(),
                format!(
                    r#"{{"value":true,"ts":"{ts}","quality":"bad","reason":"timeout","seq":1}}"#
                ),
            ),
            (
                "p/gh1/climate/mode".to_string(),
                format!(
                    r#"{{"value":"auto","ts":"{ts}","quality":"uncertain","reason":"clock_unsynchronised","seq":2}}"#
                ),
            ),
            (
                "p/alerts/gh1/climate/hot".to_string(),
                format!(
                    r#"{{"alert":"hot","device":"gh1/climate","message":"too hot","rule":"vent","seq":1,"severity":"warning","state":"active","ts":"{ts}"}}"#
                ),
            ),
            (
                "p/gh2/on/set/result".to_string(),
                format!(
                    r#"{{"error":"refused","ok":false,"origin":"rule","rule":"vent","seq":1,"ts":"{ts}","value":3}}"#
                ),
            ),
        ];
        assert_eq!(got, want);

        let got = published(PublishMode::PerDevice, &rs, &[]);
        assert_eq!(
            got,
            [
                (
                    "p/gh1/climate".to_string(),
                    format!(
                        r#"{{"seq":1,"readings":[{{"point":"temperature","value":23.5,"unit":"°C","ts":"{ts}","quality":"good"}},{{"point":"mode","value":"auto","ts":"{ts}","quality":"uncertain","reason":"clock_unsynchronised"}}]}}"#
                    )
                ),
                (
                    "p/gh2".to_string(),
                    format!(
                        r#"{{"seq":1,"readings":[{{"point":"on","value":true,"ts":"{ts}","quality":"bad","reason":"timeout"}}]}}"#
                    )
                ),
            ]
        );
    }
}
