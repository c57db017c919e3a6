//! Topics and payloads of northbound messages.
//!
//! Telemetry, one reading per message (`mode: per_reading`), on `telemetry_topic`
//! (default `{prefix}/{device}/{point}`):
//!
//! ```json
//! {"value":23.4,"unit":"°C","ts":"2026-11-22T03:16:00.123456789Z","quality":"good","seq":1041}
//! ```
//!
//! `quality` is `good`, `uncertain` or `bad`; a bad reading adds `"reason":"…"`. `seq` increases by
//! one per message per device, across restarts (the outbox persists it in the same transaction as
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

use serde::Serialize;
use weir_config::PublishMode;
use weir_core::{Alert, CommandOrigin, CommandResult, Event, Quality, Reading, Timestamp, Value};
use weir_store::{NewMessage, SeqAllocator};

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

struct JsonValue<'a>(&'a Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::F64(v) if v.is_finite() => s.serialize_f64(*v),
            Value::F64(_) => s.serialize_none(),
            Value::I64(v) => s.serialize_i64(*v),
            Value::Bool(v) => s.serialize_bool(*v),
            Value::Str(v) => s.serialize_str(v),
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

fn reading_json(r: &Reading, with_point: bool, seq: Option<u64>) -> ReadingJson<'_> {
    ReadingJson {
        point: with_point.then(|| r.point.as_str()),
        value: JsonValue(&r.value),
        unit: r.unit.as_deref(),
        ts: rfc3339(r),
        quality: r.quality.as_str(),
        reason: match &r.quality {
            Quality::Bad(reason) => Some(reason),
            _ => None,
        },
        seq,
    }
}

#[derive(Serialize)]
struct BatchJson<'a> {
    seq: u64,
    readings: Vec<ReadingJson<'a>>,
}

/// Turns readings into outbox messages.
#[derive(Debug, Clone)]
pub struct Encoder {
    telemetry: TopicTemplate,
    batch: TopicTemplate,
    alerts: TopicTemplate,
    mode: PublishMode,
    qos: u8,
    retain: bool,
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
            mode,
            qos,
            retain: false,
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
    }

    /// Publish alerts on `template` (`{prefix}`, `{device}`, `{name}`).
    pub fn with_alerts_topic(mut self, template: &str, prefix: &str) -> Self {
        self.alerts = TopicTemplate::new(template, prefix);
        self
    }

    /// One alert as its own message; `seq` counts per device in its own series.
    fn encode_alert(&self, a: &Alert, seqs: &mut SeqAllocator<'_>) -> NewMessage {
        let mut doc = serde_json::Map::new();
        doc.insert("alert".into(), (*a.name).into());
        doc.insert("device".into(), a.device.as_str().into());
        doc.insert(
            "state".into(),
            if a.active { "active" } else { "cleared" }.into(),
        );
        doc.insert("severity".into(), (*a.severity).into());
        if a.active {
            doc.insert("message".into(), (*a.message).into());
        }
        doc.insert("rule".into(), (*a.by).into());
        doc.insert("ts".into(), rfc3339_ts(a.ts).into());
        let seq = seqs.next(&format!("{ALERT_SEQ}{}", a.device));
        doc.insert("seq".into(), seq.into());
        NewMessage {
            topic: self.alerts.render(a.device.as_str(), &a.name),
            payload: serde_json::to_vec(&doc).unwrap_or_default(),
            qos: self.qos,
            retain: self.retain,
        }
    }

    /// A command's result on `…/<device>/<point>/set/result`.
    fn encode_result(&self, c: &CommandResult, seqs: &mut SeqAllocator<'_>) -> NewMessage {
        let mut doc = serde_json::Map::new();
        doc.insert("ok".into(), c.outcome.is_ok().into());
        if let Err(e) = &c.outcome {
            doc.insert("error".into(), e.as_str().into());
        }
        doc.insert(
            "value".into(),
            serde_json::to_value(JsonValue(&c.value)).unwrap_or_default(),
        );
        let (origin, rule) = match &c.origin {
            CommandOrigin::Mqtt => ("mqtt", None),
            CommandOrigin::Rule(r) => ("rule", Some(r)),
            CommandOrigin::Cli => ("cli", None),
        };
        doc.insert("origin".into(), origin.into());
        if let Some(r) = rule {
            doc.insert("rule".into(), (**r).into());
        }
        doc.insert("ts".into(), rfc3339_ts(c.ts).into());
        let seq = seqs.next(&format!("{RESULT_SEQ}{}", c.device));
        doc.insert("seq".into(), seq.into());
        NewMessage {
            topic: format!(
                "{}/set/result",
                self.telemetry.render(c.device.as_str(), c.point.as_str())
            ),
            payload: serde_json::to_vec(&doc).unwrap_or_default(),
            qos: self.qos,
            retain: self.retain,
        }
    }

    fn encode_event(&self, e: &Event, seqs: &mut SeqAllocator<'_>) -> NewMessage {
        match e {
            Event::Alert(a) => self.encode_alert(a, seqs),
            Event::CommandResult(c) => self.encode_result(c, seqs),
        }
    }

    /// Encode `readings`, then `events`, in order, taking sequence numbers from `seqs`.
    pub fn encode_all(
        &self,
        readings: &[Reading],
        events: &[Event],
        seqs: &mut SeqAllocator<'_>,
    ) -> Vec<NewMessage> {
        let mut out = self.encode(readings, seqs);
        out.extend(events.iter().map(|e| self.encode_event(e, seqs)));
        out
    }

    /// Encode `readings` in order, taking sequence numbers from `seqs`.
    pub fn encode(&self, readings: &[Reading], seqs: &mut SeqAllocator<'_>) -> Vec<NewMessage> {
        match self.mode {
            PublishMode::PerReading => readings
                .iter()
                .map(|r| {
                    let seq = seqs.next(r.device.as_str());
                    NewMessage {
                        topic: self.telemetry.render(r.device.as_str(), r.point.as_str()),
                        payload: serde_json::to_vec(&reading_json(r, false, Some(seq)))
                            .unwrap_or_default(),
                        qos: self.qos,
                        retain: self.retain,
                    }
                })
                .collect(),
            PublishMode::PerDevice => {
                // Group by device, keeping the order of first appearance and the order within.
                let mut groups: Vec<(&str, Vec<&Reading>)> = Vec::new();
                for r in readings {
                    match groups.iter_mut().find(|(d, _)| *d == r.device.as_str()) {
                        Some((_, v)) => v.push(r),
                        None => groups.push((r.device.as_str(), vec![r])),
                    }
                }
                groups
                    .into_iter()
                    .map(|(device, rs)| {
                        let doc = BatchJson {
                            seq: seqs.next(device),
                            readings: rs.iter().map(|r| reading_json(r, true, None)).collect(),
                        };
                        NewMessage {
                            topic: self.batch.render(device, ""),
                            payload: serde_json::to_vec(&doc).unwrap_or_default(),
                            qos: self.qos,
                            retain: self.retain,
                        }
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

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
        let j = serde_json::to_string(&reading_json(&r, false, Some(7))).unwrap();
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
        let j = serde_json::to_string(&reading_json(&nan, true, None)).unwrap();
        assert!(
            j.starts_with(r#"{"point":"temperature","value":null,"ts":"#),
            "{j}"
        );
    }
}
