//! Device shadow: desired, reported and delta state per device, and the reconciler's decisions.
//!
//! This crate is the I/O-free core (no MQTT, no router, no clock of its own): the caller feeds it
//! desired documents, readings and command outcomes with the current [`Instant`], and asks it what
//! to write now ([`Shadow::due`]) through an [`Actuator`], and what to publish. The MQTT side
//! and the loop are [`service`]; the daemon runs it with `mqtt.shadow`.
//!
//! # Topics and documents (JSON)
//!
//! * `<prefix>/<device>/shadow/desired` (retained, written by whoever may command):
//!   `{"state": {"setpoint": 21.5, "running": true}}`; a point set to `null` is no longer desired.
//!   Each accepted document bumps the device's desired `version`.
//! * `<prefix>/<device>/shadow/reported` (retained, by the gateway): the latest reported value of
//!   each writable point, and the refusals:
//!   `{"state": {"setpoint": 21.5}, "refused": {"running": {"value": true, "reason": "…"}},
//!   "version": 7}`.
//! * `<prefix>/<device>/shadow/delta` (by the gateway): what still differs,
//!   `{"state": {"running": true}, "version": 7}` (`state` empty once in sync).
//!
//! # Invariants
//!
//! * A desired value is written only while its device is not offline, at most one write per point
//!   in flight, and again only after a jittered backoff ([`weir_core::Backoff`]) when the
//!   outcome was transient (busy, offline, no answer, timeout).
//! * A refusal (the router's least-privilege check, a device exception such as an illegal value)
//!   is final for that desired value: it is reported with its reason and not retried until a new
//!   desired value arrives for the point.
//! * A device coming back online makes its pending writes due at once (the backoff is reset).
//! * An applied write is not repeated while the device's reading confirming it is awaited; only
//!   if reported still differs after the longest retry delay is it written again.
//! * A point is in sync when its latest reported value equals the desired one (numbers compare
//!   as numbers: `21` equals `21.0`).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub mod service;

use serde_json::{json, Map, Value as Json};
use weir_core::{Backoff, Value};

/// Why a desired document was not accepted.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ShadowError {
    #[error("desired document is not JSON: {0}")]
    Json(String),
    #[error("desired document needs a `state` object")]
    NoState,
    #[error("desired value of `{point}` is not a scalar: {value}")]
    NotScalar { point: String, value: String },
}

/// What a write's outcome means for the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The device took it.
    Applied,
    /// Try again later (busy, offline, no answer, a timeout).
    Retry(String),
    /// Do not try this value again (read-only point, unknown point, a value the device refuses).
    Refused(String),
}

/// Classify a command outcome's error text (the router's and the adapters' messages).
pub fn classify(outcome: &Result<(), String>) -> Verdict {
    let e = match outcome {
        Ok(()) => return Verdict::Applied,
        Err(e) => e,
    };
    let l = e.to_ascii_lowercase();
    let refused = [
        "read-only",
        "has no point",
        "unknown device",
        "illegal data value",
        "illegal data address",
        "illegal function",
        "out of range",
        "not writable",
        "cannot be written",
        "invalid value",
        "does not fit",
    ];
    if refused.iter().any(|r| l.contains(r)) {
        Verdict::Refused(e.clone())
    } else {
        Verdict::Retry(e.clone())
    }
}

/// Writes a desired value to a device (the daemon: the command router, origin `shadow`).
pub trait Actuator {
    /// Start a write; its outcome comes back through [`Shadow::outcome`].
    fn write(&mut self, device: &str, point: &str, value: &Value);
}

#[derive(Debug, Clone, PartialEq)]
struct Wish {
    value: Value,
    /// The backoff of this wish's transient failures.
    backoff: Backoff,
    /// When it may be written next (`None`: now).
    next_at: Option<Instant>,
    in_flight: bool,
    refused: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct DeviceShadow {
    version: u64,
    desired: BTreeMap<String, Wish>,
    reported: BTreeMap<String, Value>,
}

/// Retry bounds of transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub min: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }
}

/// Every device's shadow.
#[derive(Debug, Clone, Default)]
pub struct Shadow {
    devices: HashMap<String, DeviceShadow>,
    retry: RetryPolicy,
}

fn to_value(point: &str, j: &Json) -> Result<Value, ShadowError> {
    Ok(match j {
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => n
            .as_i64()
            .map(Value::I64)
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(f64::NAN))),
        Json::String(s) => Value::from(s.as_str()),
        other => {
            return Err(ShadowError::NotScalar {
                point: point.to_string(),
                value: other.to_string(),
            })
        }
    })
}

fn to_json(v: &Value) -> Json {
    match v {
        Value::F64(f) => json!(f),
        Value::I64(i) => json!(i),
        Value::Bool(b) => json!(b),
        Value::Str(s) => json!(s.as_ref()),
    }
}

/// Equality as the shadow means it: numbers by value, whatever their type.
pub fn same(a: &Value, b: &Value) -> bool {
    let num = |v: &Value| match v {
        Value::F64(f) => Some(*f),
        Value::I64(i) => Some(*i as f64),
        _ => None,
    };
    match (num(a), num(b)) {
        (Some(x), Some(y)) => x == y || (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
        _ => a == b,
    }
}

impl Shadow {
    pub fn new(retry: RetryPolicy) -> Shadow {
        Shadow {
            devices: HashMap::new(),
            retry,
        }
    }

    /// A desired document for `device` (the payload of `…/shadow/desired`); returns the new
    /// version. Points it does not name keep their desired value; `null` removes one.
    pub fn set_desired(&mut self, device: &str, payload: &[u8]) -> Result<u64, ShadowError> {
        let doc: Json =
            serde_json::from_slice(payload).map_err(|e| ShadowError::Json(e.to_string()))?;
        let state = doc
            .get("state")
            .and_then(Json::as_object)
            .ok_or(ShadowError::NoState)?;
        let mut wishes = Vec::with_capacity(state.len());
        for (point, v) in state {
            if v.is_null() {
                wishes.push((point.clone(), None));
            } else {
                wishes.push((point.clone(), Some(to_value(point, v)?)));
            }
        }
        let retry = self.retry;
        let d = self.devices.entry(device.to_string()).or_default();
        let mut changed = false;
        for (point, v) in wishes {
            match v {
                None => {
                    changed |= d.desired.remove(&point).is_some();
                }
                Some(value) => {
                    // The same value again keeps its state (a retained desired re-read on
                    // reconnect is not a new wish); a new value is a fresh wish.
                    if d.desired.get(&point).is_some_and(|w| w.value == value) {
                        continue;
                    }
                    changed = true;
                    d.desired.insert(
                        point,
                        Wish {
                            value,
                            backoff: Backoff::new(retry.min, retry.max),
                            next_at: None,
                            in_flight: false,
                            refused: None,
                        },
                    );
                }
            }
        }
        // A document that changes nothing (a retained one read again, our own echo) keeps the
        // version.
        if changed || d.version == 0 {
            d.version += 1;
        }
        Ok(d.version)
    }

    /// The desired document of `device` as `…/shadow/desired` carries it.
    pub fn desired_doc(&self, device: &str) -> Json {
        let state: Map<String, Json> = self
            .devices
            .get(device)
            .map(|d| {
                d.desired
                    .iter()
                    .map(|(p, w)| (p.clone(), to_json(&w.value)))
                    .collect()
            })
            .unwrap_or_default();
        json!({ "state": state })
    }

    /// A reading of a point (the reported side).
    pub fn report(&mut self, device: &str, point: &str, value: &Value) {
        if let Some(d) = self.devices.get_mut(device) {
            d.reported.insert(point.to_string(), value.clone());
        }
    }

    /// The device came back online: its pending writes are due at once.
    pub fn online(&mut self, device: &str) {
        if let Some(d) = self.devices.get_mut(device) {
            for w in d.desired.values_mut() {
                w.next_at = None;
                w.backoff.reset();
            }
        }
    }

    /// Start every write that is due now for devices `is_offline` says are not offline; returns
    /// how many were started.
    pub fn due(
        &mut self,
        now: Instant,
        is_offline: impl Fn(&str) -> bool,
        act: &mut dyn Actuator,
    ) -> usize {
        let mut n = 0;
        for (device, d) in &mut self.devices {
            if is_offline(device) {
                continue;
            }
            for (point, w) in &mut d.desired {
                let in_sync = d.reported.get(point).is_some_and(|r| same(r, &w.value));
                if in_sync || w.in_flight || w.refused.is_some() {
                    continue;
                }
                if w.next_at.is_some_and(|t| now < t) {
                    continue;
                }
                w.in_flight = true;
                act.write(device, point, &w.value);
                n += 1;
            }
        }
        n
    }

    /// The outcome of a write [`Shadow::due`] started; returns the verdict.
    pub fn outcome(
        &mut self,
        device: &str,
        point: &str,
        value: &Value,
        outcome: &Result<(), String>,
        now: Instant,
    ) -> Verdict {
        let verdict = classify(outcome);
        let Some(w) = self
            .devices
            .get_mut(device)
            .and_then(|d| d.desired.get_mut(point))
            .filter(|w| w.value == *value)
        else {
            // The wish changed meanwhile: the new one is judged on its own.
            return verdict;
        };
        w.in_flight = false;
        match &verdict {
            Verdict::Applied => {
                // Written: wait for the device's reading to confirm it; written again only if
                // reported still differs after the longest retry delay (the device reverted it).
                w.backoff.reset();
                w.next_at = Some(now + self.retry.max);
            }
            Verdict::Retry(_) => w.next_at = Some(now + w.backoff.next_delay()),
            Verdict::Refused(why) => w.refused = Some(why.clone()),
        }
        verdict
    }

    /// `…/shadow/reported` of `device`.
    pub fn reported_doc(&self, device: &str) -> Json {
        let Some(d) = self.devices.get(device) else {
            return json!({ "state": {}, "version": 0 });
        };
        let state: Map<String, Json> = d
            .reported
            .iter()
            .map(|(p, v)| (p.clone(), to_json(v)))
            .collect();
        let refused: Map<String, Json> = d
            .desired
            .iter()
            .filter_map(|(p, w)| {
                let why = w.refused.as_ref()?;
                Some((
                    p.clone(),
                    json!({ "value": to_json(&w.value), "reason": why }),
                ))
            })
            .collect();
        let mut doc = json!({ "state": state, "version": d.version });
        if !refused.is_empty() {
            doc["refused"] = Json::Object(refused);
        }
        doc
    }

    /// `…/shadow/delta` of `device`: desired values not reported yet (refused ones included:
    /// they still differ; `reported.refused` says why).
    pub fn delta_doc(&self, device: &str) -> Json {
        let Some(d) = self.devices.get(device) else {
            return json!({ "state": {}, "version": 0 });
        };
        let state: Map<String, Json> = d
            .desired
            .iter()
            .filter(|(p, w)| !d.reported.get(*p).is_some_and(|r| same(r, &w.value)))
            .map(|(p, w)| (p.clone(), to_json(&w.value)))
            .collect();
        json!({ "state": state, "version": d.version })
    }

    /// The desired value of a point (for rules).
    pub fn desired(&self, device: &str, point: &str) -> Option<&Value> {
        self.devices
            .get(device)?
            .desired
            .get(point)
            .map(|w| &w.value)
    }

    /// The reported value of a point (for rules).
    pub fn reported(&self, device: &str, point: &str) -> Option<&Value> {
        self.devices.get(device)?.reported.get(point)
    }

    /// Every device's desired state, as the documents it came in (persisted under the state dir
    /// and reloaded with [`Shadow::restore`] after a restart).
    pub fn save(&self) -> Json {
        let mut out = Map::new();
        for (device, d) in &self.devices {
            let state: Map<String, Json> = d
                .desired
                .iter()
                .map(|(p, w)| (p.clone(), to_json(&w.value)))
                .collect();
            out.insert(
                device.clone(),
                json!({ "state": state, "version": d.version }),
            );
        }
        Json::Object(out)
    }

    /// The desired state [`Shadow::save`] wrote (versions kept).
    pub fn restore(&mut self, saved: &Json) -> Result<(), ShadowError> {
        let devices = saved.as_object().ok_or(ShadowError::NoState)?;
        for (device, doc) in devices {
            self.set_desired(device, doc.to_string().as_bytes())?;
            if let Some(v) = doc.get("version").and_then(Json::as_u64) {
                if let Some(d) = self.devices.get_mut(device) {
                    d.version = v;
                }
            }
        }
        Ok(())
    }
}

/// The running shadow, shared by the service task and the rules (`shadow_desired`,
/// `shadow_reported`, `set_desired`). Locks are held only for a lookup or an update, never across
/// an await.
#[derive(Debug, Clone)]
pub struct ShadowHandle {
    shadow: std::sync::Arc<std::sync::Mutex<Shadow>>,
    /// Devices whose desired state a rule changed: the service saves and publishes them.
    changed: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    wake: std::sync::Arc<tokio::sync::Notify>,
}

static HANDLE: std::sync::OnceLock<ShadowHandle> = std::sync::OnceLock::new();

/// The process's shadow, once the service started (`None` without `mqtt.shadow`).
pub fn handle() -> Option<&'static ShadowHandle> {
    HANDLE.get()
}

impl ShadowHandle {
    fn new(shadow: Shadow) -> ShadowHandle {
        ShadowHandle {
            shadow: std::sync::Arc::new(std::sync::Mutex::new(shadow)),
            changed: Default::default(),
            wake: Default::default(),
        }
    }

    /// Run `f` on the shadow.
    pub fn with<T>(&self, f: impl FnOnce(&mut Shadow) -> T) -> T {
        f(&mut self.shadow.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The desired value of a point.
    pub fn desired(&self, device: &str, point: &str) -> Option<Value> {
        self.with(|s| s.desired(device, point).cloned())
    }

    /// The reported value of a point.
    pub fn reported(&self, device: &str, point: &str) -> Option<Value> {
        self.with(|s| s.reported(device, point).cloned())
    }

    /// Desire `value` for a point (a rule's `set_desired`); the same value again changes
    /// nothing. Returns the device's desired version.
    pub fn set_desired(
        &self,
        device: &str,
        point: &str,
        value: &Value,
    ) -> Result<u64, ShadowError> {
        let mut state = Map::new();
        state.insert(point.to_string(), to_json(value));
        let doc = json!({ "state": state }).to_string();
        let v = self.with(|s| {
            if s.desired(device, point).is_some_and(|d| d == value) {
                return Ok(s.devices.get(device).map_or(0, |d| d.version));
            }
            s.set_desired(device, doc.as_bytes())
        })?;
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(device.to_string());
        self.wake.notify_one();
        Ok(v)
    }

    fn take_changed(&self) -> Vec<String> {
        self.changed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Writes(Vec<(String, String, Value)>);

    impl Actuator for Writes {
        fn write(&mut self, device: &str, point: &str, value: &Value) {
            self.0.push((device.into(), point.into(), value.clone()));
        }
    }

    fn shadow() -> Shadow {
        Shadow::new(RetryPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
    }

    #[test]
    fn desired_is_applied_once_and_delta_empties_when_reported() {
        let mut s = shadow();
        let t0 = Instant::now();
        assert_eq!(
            s.set_desired("fan", br#"{"state":{"speed":1200,"running":true}}"#),
            Ok(1)
        );
        let mut w = Writes::default();
        assert_eq!(s.due(t0, |_| false, &mut w), 2);
        assert_eq!(
            s.due(t0, |_| false, &mut w),
            0,
            "one write in flight per point"
        );
        for (d, p, v) in w.0.clone() {
            assert_eq!(s.outcome(&d, &p, &v, &Ok(()), t0), Verdict::Applied);
        }
        assert_eq!(
            s.due(t0 + Duration::from_millis(500), |_| false, &mut w),
            0,
            "written: waits for the reading, no second write"
        );
        assert_eq!(s.delta_doc("fan")["state"].as_object().unwrap().len(), 2);
        s.report("fan", "speed", &Value::F64(1200.0));
        s.report("fan", "running", &Value::Bool(true));
        assert_eq!(s.delta_doc("fan"), json!({"state": {}, "version": 1}));
        assert_eq!(
            s.reported_doc("fan"),
            json!({"state": {"running": true, "speed": 1200.0}, "version": 1})
        );
        assert_eq!(s.due(t0, |_| false, &mut w), 0, "in sync: nothing to write");
    }

    #[test]
    fn offline_waits_busy_backs_off_and_coming_back_applies_at_once() {
        let mut s = shadow();
        let t0 = Instant::now();
        s.set_desired("fan", br#"{"state":{"speed":5}}"#).unwrap();
        let mut w = Writes::default();
        assert_eq!(s.due(t0, |_| true, &mut w), 0, "offline: no write");
        assert_eq!(s.due(t0, |_| false, &mut w), 1);
        let busy = Err("adapter `plant` is busy (command queue full)".to_string());
        assert!(matches!(
            s.outcome("fan", "speed", &Value::I64(5), &busy, t0),
            Verdict::Retry(_)
        ));
        assert_eq!(s.due(t0, |_| false, &mut w), 0, "backing off");
        assert_eq!(s.due(t0 + Duration::from_secs(2), |_| false, &mut w), 1);
        let timeout = Err("no answer within 200 ms".to_string());
        s.outcome("fan", "speed", &Value::I64(5), &timeout, t0);
        s.online("fan");
        assert_eq!(s.due(t0, |_| false, &mut w), 1, "back online: at once");
    }

    #[test]
    fn a_refused_value_is_reported_and_not_retried_until_a_new_wish() {
        let mut s = shadow();
        let t0 = Instant::now();
        s.set_desired("fan", br#"{"state":{"speed":99999}}"#)
            .unwrap();
        let mut w = Writes::default();
        s.due(t0, |_| false, &mut w);
        let exc = Err("modbus exception 3 (illegal data value)".to_string());
        assert!(matches!(
            s.outcome("fan", "speed", &Value::I64(99999), &exc, t0),
            Verdict::Refused(_)
        ));
        assert_eq!(s.due(t0 + Duration::from_secs(3600), |_| false, &mut w), 0);
        assert_eq!(
            s.reported_doc("fan")["refused"]["speed"]["reason"],
            "modbus exception 3 (illegal data value)"
        );
        // The same document again (a retained message re-read) does not revive it...
        s.set_desired("fan", br#"{"state":{"speed":99999}}"#)
            .unwrap();
        assert_eq!(s.due(t0, |_| false, &mut w), 0);
        // ...a new value does.
        s.set_desired("fan", br#"{"state":{"speed":1000}}"#)
            .unwrap();
        assert_eq!(s.due(t0, |_| false, &mut w), 1);
        assert!(s.reported_doc("fan").get("refused").is_none());
    }

    #[test]
    fn desired_survives_a_restart_and_bad_documents_are_refused() {
        let mut s = shadow();
        s.set_desired("a/b", br#"{"state":{"x":1.5,"on":false}}"#)
            .unwrap();
        s.set_desired("a/b", br#"{"state":{"on":null}}"#).unwrap();
        let saved = s.save();
        let mut again = shadow();
        again.restore(&saved).unwrap();
        assert_eq!(again.desired("a/b", "x"), Some(&Value::F64(1.5)));
        assert_eq!(again.desired("a/b", "on"), None);
        assert_eq!(again.delta_doc("a/b")["version"], 2);
        // The same document again changes nothing, not even the version.
        assert_eq!(s.set_desired("a/b", br#"{"state":{"x":1.5}}"#), Ok(2));
        assert_eq!(
            s.set_desired("a/b", b"{}"),
            Err(ShadowError::NoState),
            "no state object"
        );
        assert!(matches!(
            s.set_desired("a/b", br#"{"state":{"x":[1]}}"#),
            Err(ShadowError::NotScalar { .. })
        ));
        assert!(matches!(
            s.set_desired("a/b", b"not json"),
            Err(ShadowError::Json(_))
        ));
        assert!(same(&Value::I64(21), &Value::F64(21.0)));
        assert!(!same(&Value::Bool(true), &Value::I64(1)));
    }
}
