//! Sparkplug B 3.0 (Eclipse Sparkplug Specification 3.0.0) as a [`NorthboundFormat`].
//!
//! Payloads are the protobuf `Payload` of Eclipse Tahu's `sparkplug_b.proto` (kept in
//! `crates/weir-mqtt/proto/`, EPL-2.0), declared here as prost structs with the same field numbers
//! (only the fields Weir writes or reads).
//!
//! # Topics (specification chapter "Topics and Messages", "Topic Namespace Elements")
//!
//! `spBv1.0/<group_id>/<NBIRTH|NDEATH|NDATA|NCMD>/<edge_node_id>` and
//! `spBv1.0/<group_id>/<DBIRTH|DDEATH|DDATA|DCMD>/<edge_node_id>/<device_id>`. Weir device ids may
//! contain `/`, which Sparkplug ids may not (nor `+` `#`): the mapping escapes `%` as `%25`, `/` as
//! `%2F`, `+` as `%2B` and `#` as `%23` ([`device_id`]); it is stable and reversible, so a DCMD
//! names the Weir device it came for.
//!
//! # Session (chapters "Operational Behavior" and "Payloads")
//!
//! * The will is NDEATH (QoS 1, not retained) with the `bdSeq` metric; `bdSeq` (0–255) is
//!   incremented for every connect and persisted in the state file before the connect, so the
//!   NBIRTH of the session carries the same value.
//! * Subscriptions: NCMD of this node and, with `primary_host_id`, `spBv1.0/STATE/<host>`; with
//!   `mqtt.commands`, the DCMD topic of every device the registry knows.
//! * QoS: rows go out with `mqtt.qos` (default 1, so a row leaves the outbox only after its
//!   PUBACK: Weir's store-and-forward contract), births and deaths with QoS 1. The specification
//!   asks for QoS 0 on NBIRTH/DBIRTH/NDATA/DDATA; `mqtt.qos: 0` gives that for data, at the price of
//!   at-most-once delivery.
//! * Without a primary host, NBIRTH (seq 0, `bdSeq`, `Node Control/Rebirth`) and one DBIRTH per
//!   device follow the subscriptions; with one, they wait for the host's STATE
//!   `{"online":true,…}`, and rows are only published while it says online (they keep being
//!   committed to the outbox meanwhile). When the host goes offline the session ends (NDEATH by
//!   the will) and the next one waits for it again.
//! * DBIRTH lists every point of the device from the registry: name, alias, datatype, the last
//!   value published (or `is_null`), and the unit as property `engUnit`.
//! * Rows become DDATA by alias (with the datatype, see `reading_metric`), with the reading's time; replayed rows (committed before the
//!   current publishing window opened) carry `is_historical = true`. Quality is the property
//!   `Quality` (Int32: 192 good, 64 uncertain, 0 bad) and a reason `Quality Reason` (String).
//! * Alerts and command results are DDATA metrics `Alerts/<name>` (Boolean, active) and
//!   `Commands/<point>/Result` (String: `ok` or the error), sent by name with their datatype
//!   (they are not in DBIRTH: alerts are named by rules at run time).
//! * `seq` counts 0–255 over every message of the session after NBIRTH (0), wrapping to 0.
//! * NCMD `Node Control/Rebirth` = true publishes NBIRTH and the DBIRTHs again; DCMD metric
//!   writes (by name or alias) go to the command router, which refuses points not declared
//!   writable; the new value shows in a later DDATA.
//! * A device that goes offline in the registry gets DDEATH; one that comes back or appears at
//!   run time gets DBIRTH.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use prost::Message as _;
use weir_core::{Availability, DeviceId, DeviceView, Registry, Timestamp, Value, ValueType};
use weir_store::record::{self, OriginRef, QualityRef, ValueRef};
use weir_store::{RowKind, StoredMessage};

use crate::northbound::{EncodeError, Inbound, InboundCommand, Message, NorthboundFormat};

/// The topic namespace ("Topic Namespace Elements": `namespace`).
pub const NAMESPACE: &str = "spBv1.0";

/// Datatypes ("Payloads": the `DataType` values of `sparkplug_b.proto`).
pub mod datatype {
    pub const INT32: u32 = 3;
    pub const INT64: u32 = 4;
    pub const UINT64: u32 = 8;
    pub const DOUBLE: u32 = 10;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
}

/// The node metric that asks for births again ("Operational Behavior": rebirth request).
pub const REBIRTH: &str = "Node Control/Rebirth";
/// The birth/death sequence metric ("Payloads": bdSeq in NBIRTH and NDEATH).
pub const BDSEQ: &str = "bdSeq";

/// The `Payload` message of `sparkplug_b.proto` (fields Weir uses, same numbers).
pub mod proto {
    /// `Payload`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Payload {
        #[prost(uint64, optional, tag = "1")]
        pub timestamp: Option<u64>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
        #[prost(uint64, optional, tag = "3")]
        pub seq: Option<u64>,
    }

    /// `Payload.Metric`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Metric {
        #[prost(string, optional, tag = "1")]
        pub name: Option<String>,
        #[prost(uint64, optional, tag = "2")]
        pub alias: Option<u64>,
        #[prost(uint64, optional, tag = "3")]
        pub timestamp: Option<u64>,
        #[prost(uint32, optional, tag = "4")]
        pub datatype: Option<u32>,
        #[prost(bool, optional, tag = "5")]
        pub is_historical: Option<bool>,
        #[prost(bool, optional, tag = "7")]
        pub is_null: Option<bool>,
        #[prost(message, optional, tag = "9")]
        pub properties: Option<PropertySet>,
        #[prost(oneof = "MetricValue", tags = "10, 11, 12, 13, 14, 15")]
        pub value: Option<MetricValue>,
    }

    /// `Payload.Metric.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum MetricValue {
        #[prost(uint32, tag = "10")]
        IntValue(u32),
        #[prost(uint64, tag = "11")]
        LongValue(u64),
        #[prost(float, tag = "12")]
        FloatValue(f32),
        #[prost(double, tag = "13")]
        DoubleValue(f64),
        #[prost(bool, tag = "14")]
        BooleanValue(bool),
        #[prost(string, tag = "15")]
        StringValue(String),
    }

    /// `Payload.PropertySet`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PropertySet {
        #[prost(string, repeated, tag = "1")]
        pub keys: Vec<String>,
        #[prost(message, repeated, tag = "2")]
        pub values: Vec<PropertyValue>,
    }

    /// `Payload.PropertyValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PropertyValue {
        #[prost(uint32, optional, tag = "1")]
        pub r#type: Option<u32>,
        #[prost(bool, optional, tag = "2")]
        pub is_null: Option<bool>,
        #[prost(oneof = "PropertyValueValue", tags = "3, 4, 6, 7, 8")]
        pub value: Option<PropertyValueValue>,
    }

    /// `Payload.PropertyValue.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum PropertyValueValue {
        #[prost(uint32, tag = "3")]
        IntValue(u32),
        #[prost(uint64, tag = "4")]
        LongValue(u64),
        #[prost(double, tag = "6")]
        DoubleValue(f64),
        #[prost(bool, tag = "7")]
        BooleanValue(bool),
        #[prost(string, tag = "8")]
        StringValue(String),
    }
}

use proto::{Metric, MetricValue, Payload, PropertySet, PropertyValue, PropertyValueValue};

/// Settings of the Sparkplug B format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparkplugConfig {
    pub group_id: String,
    pub edge_node_id: String,
    /// Publish only while this host application's STATE says online.
    pub primary_host_id: Option<String>,
    /// Where `bdSeq` is persisted (a small text file).
    pub bdseq_path: PathBuf,
}

/// A Weir device id as a Sparkplug device id (see the module documentation).
pub fn device_id(weir: &str) -> String {
    let mut s = String::with_capacity(weir.len() + 8);
    for c in weir.chars() {
        match c {
            '%' => s.push_str("%25"),
            '/' => s.push_str("%2F"),
            '+' => s.push_str("%2B"),
            '#' => s.push_str("%23"),
            c => s.push(c),
        }
    }
    s
}

/// The inverse of [`device_id`]; `None` for a string [`device_id`] cannot produce.
pub fn weir_device_id(sparkplug: &str) -> Option<String> {
    let mut out = String::with_capacity(sparkplug.len());
    let mut rest = sparkplug;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 3)?;
        out.push(match code {
            "25" => '%',
            "2F" => '/',
            "2B" => '+',
            "23" => '#',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    if rest.contains(['/', '+', '#']) {
        return None;
    }
    out.push_str(rest);
    Some(out)
}

fn now_ms() -> u64 {
    u64::try_from(Timestamp::now().as_nanos() / 1_000_000).unwrap_or(0)
}

fn ns_to_ms(ns: i64) -> u64 {
    u64::try_from(ns.div_euclid(1_000_000)).unwrap_or(0)
}

fn prop_int(v: u32) -> PropertyValue {
    PropertyValue {
        r#type: Some(datatype::INT32),
        is_null: None,
        value: Some(PropertyValueValue::IntValue(v)),
    }
}

fn prop_str(v: &str) -> PropertyValue {
    PropertyValue {
        r#type: Some(datatype::STRING),
        is_null: None,
        value: Some(PropertyValueValue::StringValue(v.to_string())),
    }
}

/// OPC quality codes carried in the `Quality` property.
pub const QUALITY_GOOD: u32 = 192;
pub const QUALITY_UNCERTAIN: u32 = 64;
pub const QUALITY_BAD: u32 = 0;

fn quality_props(q: QualityRef<'_>) -> PropertySet {
    let (code, reason) = match q {
        QualityRef::Good => (QUALITY_GOOD, None),
        QualityRef::Uncertain(r) => (QUALITY_UNCERTAIN, Some(r)),
        QualityRef::Bad(r) => (QUALITY_BAD, Some(r)),
    };
    let mut set = PropertySet {
        keys: vec!["Quality".into()],
        values: vec![prop_int(code)],
    };
    if let Some(r) = reason {
        set.keys.push("Quality Reason".into());
        set.values.push(prop_str(r));
    }
    set
}

/// Datatype and value of a Weir value.
fn metric_value(v: ValueRef<'_>) -> (u32, MetricValue) {
    match v {
        ValueRef::F64(f) => (datatype::DOUBLE, MetricValue::DoubleValue(f)),
        // Sparkplug carries signed integers in the unsigned field, two's complement ("Payloads": Metric datatypes).
        ValueRef::I64(i) => (datatype::INT64, MetricValue::LongValue(i as u64)),
        ValueRef::Bool(b) => (datatype::BOOLEAN, MetricValue::BooleanValue(b)),
        ValueRef::Str(s) => (datatype::STRING, MetricValue::StringValue(s.to_string())),
    }
}

fn owned_value_ref(v: &Value) -> ValueRef<'_> {
    crate::format::value_ref(v)
}

fn value_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::F64(f) => Value::F64(f),
        ValueRef::I64(i) => Value::I64(i),
        ValueRef::Bool(b) => Value::Bool(b),
        ValueRef::Str(s) => Value::from(s),
    }
}

fn datatype_of(t: ValueType) -> u32 {
    match t {
        ValueType::Float | ValueType::Unknown => datatype::DOUBLE,
        ValueType::Int => datatype::INT64,
        ValueType::Bool => datatype::BOOLEAN,
        ValueType::Text => datatype::STRING,
    }
}

/// A command value from a metric, by the metric's datatype (or the point's).
fn command_value(m: &Metric, fallback: u32) -> Result<Value, String> {
    let dt = m.datatype.unwrap_or(fallback);
    match &m.value {
        Some(MetricValue::BooleanValue(b)) => Ok(Value::Bool(*b)),
        Some(MetricValue::DoubleValue(f)) => Ok(Value::F64(*f)),
        Some(MetricValue::FloatValue(f)) => Ok(Value::F64(f64::from(*f))),
        Some(MetricValue::StringValue(s)) => Ok(Value::from(s.as_str())),
        Some(MetricValue::LongValue(l)) => Ok(match dt {
            datatype::UINT64 => Value::I64(i64::try_from(*l).map_err(|_| "value out of range")?),
            _ => Value::I64(*l as i64),
        }),
        Some(MetricValue::IntValue(i)) => Ok(match dt {
            1..=4 => Value::I64(i64::from(*i as i32)),
            _ => Value::I64(i64::from(*i)),
        }),
        None => Err("the metric has no value".into()),
    }
}

/// The Sparkplug B format; one per forwarder run.
#[derive(Debug)]
pub struct SparkplugFormat {
    cfg: SparkplugConfig,
    bd_seq: u8,
    /// The next `seq` to use.
    seq: u8,
    /// Whether NBIRTH was published in this session.
    born: bool,
    /// Whether the primary host says online (always true without one).
    host_online: bool,
    /// Aliases of device metrics, stable for the run: (device, metric name) → alias.
    aliases: HashMap<(String, String), u64>,
    next_alias: u64,
    /// Last value published per (device, point), for DBIRTH.
    last: HashMap<(String, String), Value>,
    /// Devices born in this session, and whether each is online.
    devices: HashMap<DeviceId, bool>,
    /// A registry snapshot to (re)birth from, taken when the registry changes.
    registry: Option<Registry>,
}

impl SparkplugFormat {
    pub fn new(cfg: SparkplugConfig) -> SparkplugFormat {
        let bd_seq = std::fs::read_to_string(&cfg.bdseq_path)
            .ok()
            .and_then(|s| s.trim().parse::<u8>().ok())
            .unwrap_or(0);
        SparkplugFormat {
            host_online: cfg.primary_host_id.is_none(),
            cfg,
            bd_seq,
            seq: 0,
            born: false,
            aliases: HashMap::new(),
            next_alias: 1,
            last: HashMap::new(),
            devices: HashMap::new(),
            registry: None,
        }
    }

    /// The `bdSeq` of the current (or next) session.
    pub fn bd_seq(&self) -> u8 {
        self.bd_seq
    }

    fn node_topic(&self, kind: &str) -> String {
        format!(
            "{NAMESPACE}/{}/{kind}/{}",
            self.cfg.group_id, self.cfg.edge_node_id
        )
    }

    fn device_topic(&self, kind: &str, device: &str) -> String {
        format!(
            "{NAMESPACE}/{}/{kind}/{}/{}",
            self.cfg.group_id,
            self.cfg.edge_node_id,
            device_id(device)
        )
    }

    fn state_topic(&self) -> Option<String> {
        self.cfg
            .primary_host_id
            .as_ref()
            .map(|h| format!("{NAMESPACE}/STATE/{h}"))
    }

    fn next_seq(&mut self) -> u64 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(1);
        u64::from(s)
    }

    fn alias(&mut self, device: &str, name: &str) -> u64 {
        let key = (device.to_string(), name.to_string());
        if let Some(a) = self.aliases.get(&key) {
            return *a;
        }
        let a = self.next_alias;
        self.next_alias += 1;
        self.aliases.insert(key, a);
        a
    }

    fn message(&self, topic: String, payload: &Payload) -> Message {
        Message {
            topic,
            payload: payload.encode_to_vec(),
            qos: 1,
            retain: false,
        }
    }

    fn bdseq_metric(&self) -> Metric {
        Metric {
            name: Some(BDSEQ.into()),
            datatype: Some(datatype::UINT64),
            value: Some(MetricValue::LongValue(u64::from(self.bd_seq))),
            timestamp: Some(now_ms()),
            ..Default::default()
        }
    }

    fn nbirth(&mut self) -> Message {
        self.seq = 0;
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(now_ms()),
            seq: Some(seq),
            metrics: vec![
                self.bdseq_metric(),
                Metric {
                    name: Some(REBIRTH.into()),
                    datatype: Some(datatype::BOOLEAN),
                    value: Some(MetricValue::BooleanValue(false)),
                    timestamp: Some(now_ms()),
                    ..Default::default()
                },
            ],
        };
        self.born = true;
        self.message(self.node_topic("NBIRTH"), &payload)
    }

    fn dbirth(&mut self, d: &DeviceView) -> Message {
        let dev = d.id.as_str().to_string();
        let ts = now_ms();
        let mut metrics = Vec::with_capacity(d.points.len() + 2);
        for p in &d.points {
            let name = p.spec.name.as_str().to_string();
            let alias = self.alias(&dev, &name);
            let last = self.last.get(&(dev.clone(), name.clone()));
            let (dt, value) = match last {
                Some(v) => {
                    let (dt, v) = metric_value(owned_value_ref(v));
                    (dt, Some(v))
                }
                None => (datatype_of(p.spec.value_type), None),
            };
            let mut props = PropertySet::default();
            if let Some(u) = &p.spec.unit {
                props.keys.push("engUnit".into());
                props.values.push(prop_str(u));
            }
            props.keys.push("writable".into());
            props.values.push(PropertyValue {
                r#type: Some(datatype::BOOLEAN),
                is_null: None,
                value: Some(PropertyValueValue::BooleanValue(p.spec.writable)),
            });
            metrics.push(Metric {
                name: Some(name),
                alias: Some(alias),
                timestamp: Some(ts),
                datatype: Some(dt),
                is_null: value.is_none().then_some(true),
                properties: Some(props),
                value,
                ..Default::default()
            });
        }
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(ts),
            seq: Some(seq),
            metrics,
        };
        self.devices.insert(d.id.clone(), true);
        self.message(self.device_topic("DBIRTH", &dev), &payload)
    }

    fn ddeath(&mut self, device: &str) -> Message {
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(now_ms()),
            seq: Some(seq),
            metrics: Vec::new(),
        };
        self.message(self.device_topic("DDEATH", device), &payload)
    }

    /// NBIRTH and every device's DBIRTH (devices offline get DDEATH after their birth).
    fn births(&mut self, registry: &Registry) -> Vec<Message> {
        let mut out = vec![self.nbirth()];
        self.devices.clear();
        for d in registry.snapshot() {
            out.push(self.dbirth(&d));
            if d.availability == Availability::Offline {
                out.push(self.ddeath(d.id.as_str()));
                self.devices.insert(d.id.clone(), false);
            }
        }
        out
    }

    fn ddata(&mut self, device: &str, metrics: Vec<Metric>) -> Message {
        let seq = self.next_seq();
        let payload = Payload {
            timestamp: Some(now_ms()),
            seq: Some(seq),
            metrics,
        };
        self.message(self.device_topic("DDATA", device), &payload)
    }

    fn reading_metric(
        &mut self,
        device: &str,
        r: &record::ReadingRef<'_>,
        historical: bool,
    ) -> Metric {
        let key = (device.to_string(), r.point.to_string());
        let alias = self.aliases.get(&key).copied();
        if !historical {
            self.last.insert(key, value_of(r.value));
        }
        let (dt, value) = metric_value(r.value);
        let finite = !matches!(r.value, ValueRef::F64(f) if !f.is_finite());
        Metric {
            // By alias once born; by name (with its datatype) for a point not born yet.
            name: alias.is_none().then(|| r.point.to_string()),
            alias,
            timestamp: Some(ns_to_ms(r.ts_ns)),
            // The specification says DATA SHOULD NOT repeat the datatype; decoders that pick the value
            // field by it (Tahu's JavaScript `sparkplug-payload`, hence Node-RED hosts) read no
            // value without it. Two bytes per metric buy that interoperability.
            datatype: Some(dt),
            is_historical: historical.then_some(true),
            is_null: (!finite).then_some(true),
            properties: Some(quality_props(r.quality)),
            value: finite.then_some(value),
        }
    }

    /// The DDATA of a row (pure apart from `seq`, aliases and the last values).
    fn row_message(
        &mut self,
        row: &StoredMessage,
        historical: bool,
    ) -> Result<Message, EncodeError> {
        let kind = RowKind::from_code(row.kind).ok_or(EncodeError::UnknownKind(row.kind))?;
        let device = row.topic.as_str();
        let metrics = match kind {
            RowKind::Message => {
                return Err(EncodeError::Other(
                    "a row stored as a ready-made JSON message cannot be sent as Sparkplug B"
                        .into(),
                ))
            }
            RowKind::Reading | RowKind::Readings => {
                let mut ms = Vec::new();
                for r in record::readings(&row.payload) {
                    let r = r?;
                    ms.push(self.reading_metric(device, &r, historical));
                }
                if ms.is_empty() {
                    return Err(EncodeError::Empty);
                }
                ms
            }
            RowKind::Alert => {
                let a = record::alert(&row.payload)?;
                let mut props = PropertySet::default();
                props.keys.push("severity".into());
                props.values.push(prop_str(a.severity));
                props.keys.push("message".into());
                props.values.push(prop_str(a.message));
                props.keys.push("rule".into());
                props.values.push(prop_str(a.by));
                vec![Metric {
                    name: Some(format!("Alerts/{}", a.name)),
                    timestamp: Some(ns_to_ms(a.ts_ns)),
                    datatype: Some(datatype::BOOLEAN),
                    is_historical: historical.then_some(true),
                    properties: Some(props),
                    value: Some(MetricValue::BooleanValue(a.active)),
                    ..Default::default()
                }]
            }
            RowKind::CommandResult => {
                let c = record::result(&row.payload)?;
                let origin = match c.origin {
                    OriginRef::Mqtt => "mqtt".to_string(),
                    OriginRef::Rule(r) => format!("rule {r}"),
                    OriginRef::Cli => "cli".to_string(),
                };
                vec![Metric {
                    name: Some(format!("Commands/{}/Result", c.point)),
                    timestamp: Some(ns_to_ms(c.ts_ns)),
                    datatype: Some(datatype::STRING),
                    is_historical: historical.then_some(true),
                    properties: Some(PropertySet {
                        keys: vec!["origin".into()],
                        values: vec![prop_str(&origin)],
                    }),
                    value: Some(MetricValue::StringValue(
                        c.error.unwrap_or("ok").to_string(),
                    )),
                    ..Default::default()
                }]
            }
        };
        let mut m = self.ddata(device, metrics);
        m.qos = row.qos;
        Ok(m)
    }

    fn on_state(&mut self, payload: &[u8]) -> Inbound {
        let online = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("online").and_then(serde_json::Value::as_bool))
            .unwrap_or(false);
        let was = self.host_online;
        self.host_online = online;
        match (was, online) {
            (false, true) => match self.registry.clone() {
                Some(r) => Inbound::Publish(self.births(&r)),
                None => Inbound::Ignore,
            },
            (true, false) if self.born => {
                Inbound::Reconnect("the Sparkplug primary host application went offline".into())
            }
            _ => Inbound::Ignore,
        }
    }

    fn on_ncmd(&mut self, payload: &[u8]) -> Inbound {
        let Ok(p) = Payload::decode(payload) else {
            tracing::warn!("sparkplug: NCMD that does not decode");
            return Inbound::Ignore;
        };
        let rebirth = p.metrics.iter().any(|m| {
            m.name.as_deref() == Some(REBIRTH)
                && matches!(m.value, Some(MetricValue::BooleanValue(true)))
        });
        match (rebirth, self.registry.clone()) {
            (true, Some(r)) if self.host_online => {
                tracing::info!("sparkplug: rebirth requested");
                Inbound::Publish(self.births(&r))
            }
            _ => Inbound::Ignore,
        }
    }

    fn on_dcmd(&mut self, device: &str, payload: &[u8]) -> Inbound {
        let Some(weir) = weir_device_id(device) else {
            return Inbound::Ignore;
        };
        let Ok(p) = Payload::decode(payload) else {
            tracing::warn!(device = weir, "sparkplug: DCMD that does not decode");
            return Inbound::Ignore;
        };
        let by_alias: HashMap<u64, &str> = self
            .aliases
            .iter()
            .filter(|((d, _), _)| *d == weir)
            .map(|((_, n), a)| (*a, n.as_str()))
            .collect();
        let cmds = p
            .metrics
            .iter()
            .filter_map(|m| {
                let point = m.name.clone().or_else(|| {
                    m.alias
                        .and_then(|a| by_alias.get(&a).map(|n| n.to_string()))
                })?;
                Some(InboundCommand {
                    device: weir.clone(),
                    point,
                    value: command_value(m, datatype::DOUBLE),
                    reply_to: None,
                })
            })
            .collect();
        Inbound::Commands(cmds)
    }
}

impl NorthboundFormat for SparkplugFormat {
    fn name(&self) -> &'static str {
        "sparkplug_b"
    }

    fn will(&mut self) -> Message {
        // A new connection: the next bdSeq, persisted before it is used ("Payloads": bdSeq).
        self.bd_seq = self.bd_seq.wrapping_add(1);
        if let Some(dir) = self.cfg.bdseq_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = std::fs::write(&self.cfg.bdseq_path, format!("{}\n", self.bd_seq)) {
            tracing::warn!(path = %self.cfg.bdseq_path.display(), "sparkplug: cannot persist bdSeq: {e}");
        }
        self.born = false;
        self.seq = 0;
        self.devices.clear();
        self.host_online = self.cfg.primary_host_id.is_none();
        let payload = Payload {
            timestamp: Some(now_ms()),
            seq: None,
            metrics: vec![self.bdseq_metric()],
        };
        self.message(self.node_topic("NDEATH"), &payload)
    }

    fn device_filter(&self, device: &DeviceId) -> Option<String> {
        Some(self.device_topic("DCMD", device.as_str()))
    }

    fn fixed_filters(&self) -> Vec<String> {
        let mut f = vec![self.node_topic("NCMD")];
        f.extend(self.state_topic());
        f
    }

    fn on_connected(&mut self, registry: &Registry) -> Vec<Message> {
        self.registry = Some(registry.clone());
        if self.host_online {
            self.births(registry)
        } else {
            Vec::new()
        }
    }

    fn on_registry_change(&mut self, registry: &Registry) -> Vec<Message> {
        if !self.born || !self.host_online {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for d in registry.snapshot() {
            seen.insert(d.id.clone());
            let online = d.availability != Availability::Offline;
            match self.devices.get(&d.id).copied() {
                None => {
                    out.push(self.dbirth(&d));
                    if !online {
                        out.push(self.ddeath(d.id.as_str()));
                        self.devices.insert(d.id.clone(), false);
                    }
                }
                Some(true) if !online => {
                    out.push(self.ddeath(d.id.as_str()));
                    self.devices.insert(d.id.clone(), false);
                }
                Some(false) if online => out.push(self.dbirth(&d)),
                _ => {
                    // Points first heard at run time: born again when the count changes.
                    let born = self
                        .aliases
                        .keys()
                        .filter(|(dev, _)| dev == d.id.as_str())
                        .count();
                    if online && d.points.len() > born {
                        out.push(self.dbirth(&d));
                    }
                }
            }
        }
        let gone: Vec<DeviceId> = self
            .devices
            .keys()
            .filter(|d| !seen.contains(*d))
            .cloned()
            .collect();
        for d in gone {
            if self.devices.remove(&d) == Some(true) {
                out.push(self.ddeath(d.as_str()));
            }
        }
        out
    }

    fn ready(&self) -> bool {
        self.born && self.host_online
    }

    fn goodbye(&mut self) -> Vec<Message> {
        // The will does not fire on a clean disconnect: publish NDEATH ourselves (an intentional disconnect, "Operational Behavior").
        let payload = Payload {
            timestamp: Some(now_ms()),
            seq: None,
            metrics: vec![self.bdseq_metric()],
        };
        vec![self.message(self.node_topic("NDEATH"), &payload)]
    }

    fn encode(&mut self, row: StoredMessage, historical: bool) -> Result<Message, EncodeError> {
        self.row_message(&row, historical)
    }

    fn topic_of(&self, row: &StoredMessage) -> Option<String> {
        Some(self.device_topic("DDATA", &row.topic))
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) -> Inbound {
        if self.state_topic().as_deref() == Some(topic) {
            return self.on_state(payload);
        }
        if topic == self.node_topic("NCMD") {
            return self.on_ncmd(payload);
        }
        if let Some(dev) = topic
            .strip_prefix(&self.node_topic("DCMD"))
            .and_then(|r| r.strip_prefix('/'))
        {
            return self.on_dcmd(dev, payload);
        }
        Inbound::Ignore
    }

    fn answer(&mut self, cmd: &InboundCommand, outcome: &Result<(), String>) -> Option<Message> {
        if let Err(e) = outcome {
            tracing::warn!(
                device = cmd.device,
                point = cmd.point,
                "sparkplug: DCMD refused: {e}"
            );
        }
        // The device's new value shows in a later DDATA ("Topics and Messages": DCMD).
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_map_both_ways() {
        for id in [
            "gh1/climate",
            "a%2Fb",
            "x",
            "site/north/hall/bay/gh1",
            "a+b#c",
        ] {
            let s = device_id(id);
            assert!(!s.contains(['/', '+', '#']), "{s}");
            assert_eq!(weir_device_id(&s).as_deref(), Some(id));
        }
        assert_eq!(device_id("gh1/climate"), "gh1%2Fclimate");
        assert_eq!(weir_device_id("a/b"), None);
        assert_eq!(weir_device_id("a%zz"), None);
    }
}
