//! The device registry: every device the gateway knows, who owns it, its points and whether it is
//! being heard.
//!
//! Invariants:
//! * **One owner per device.** A device is owned by exactly one source (by its name from
//!   gateway.yaml). [`Registry::claim`] by another source is refused; only the owner updates or
//!   removes it. `weir check` refuses two sources declaring the same device before anything runs.
//! * **Readings are admitted only from the owner.** [`Registry::admit`] runs in the pipeline on every
//!   batch from the bus, before any stage: a reading whose `source` is not the device's owner is
//!   removed from the batch and counted (`weir_readings_refused_total{source,reason="not_owner"}`),
//!   so it is never forwarded and never fed to rules. A reading for a device nobody owns yet makes
//!   its source the owner (a source that does not declare its devices up front, such as a CoAP
//!   server accepting a prefix, owns what it first reports). Stages derive readings for any device:
//!   they are not admitted, they are the gateway's own.
//! * **Least privilege for commands.** Only points declared `writable` by the owner can be
//!   commanded; points learned from readings are never writable.
//! * **Every consumer sees every change.** Each change bumps a version published on a
//!   `tokio::sync::watch` channel ([`Registry::changes`]); the router reads the registry on every
//!   command, the forwarder re-subscribes command topics, formats and the status document read a
//!   [`Registry::snapshot`].
//! * **Staleness.** A point with an expected period (`expected_period_ms`, e.g. a Modbus poll
//!   interval) not heard within `period × stale_after_periods` is marked stale by
//!   [`Registry::sweep`]; a device whose every timed point is stale becomes `offline`, and `online`
//!   again with its next reading. Points without a period never go stale by silence.
//!
//! Cost on the hot path: one read lock per batch and, per reading, two hash look-ups and two
//! relaxed atomic stores; the write lock is taken only when something is added or changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tokio::sync::watch;

use crate::metrics::{Counter, Metrics};
use crate::reading::{Batch, DeviceId, PointId, Quality, Reading, Timestamp, Value};

/// The type of a point's values, as declared or as first seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    Float,
    Int,
    Bool,
    Text,
    #[default]
    Unknown,
}

impl ValueType {
    pub fn of(v: &Value) -> ValueType {
        match v {
            Value::F64(_) => ValueType::Float,
            Value::I64(_) => ValueType::Int,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Text,
        }
    }
}

/// One point of a device.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PointSpec {
    pub name: PointId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<Arc<str>>,
    pub value_type: ValueType,
    /// Commands may write it (checked by the router).
    pub writable: bool,
    /// A hint for northbound formats: `temperature`, `humidity`, `switch`, `power`, … (Home
    /// Assistant's device classes are the vocabulary). `None` when nothing is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<Arc<str>>,
    /// How often a reading is expected (a poll interval); `None`: no expectation, never stale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_period_ms: Option<u64>,
}

impl PointSpec {
    pub fn new(name: impl Into<PointId>) -> PointSpec {
        PointSpec {
            name: name.into(),
            unit: None,
            value_type: ValueType::Unknown,
            writable: false,
            class: None,
            expected_period_ms: None,
        }
    }
    pub fn unit(mut self, unit: Option<&str>) -> Self {
        self.unit = unit.map(Arc::from);
        self
    }
    pub fn value_type(mut self, t: ValueType) -> Self {
        self.value_type = t;
        self
    }
    pub fn writable(mut self, w: bool) -> Self {
        self.writable = w;
        self
    }
    pub fn class(mut self, class: Option<&str>) -> Self {
        self.class = class.map(Arc::from);
        self
    }
    pub fn period_ms(mut self, ms: Option<u64>) -> Self {
        self.expected_period_ms = ms;
        self
    }
    /// A point first learned from a reading: read-only, typed by its value.
    fn learned(r: &Reading) -> PointSpec {
        PointSpec::new(r.point.clone())
            .unit(r.unit.as_deref())
            .value_type(ValueType::of(&r.value))
    }
}

/// What is known about a device besides its points.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceMeta {
    /// A readable name (gateway.yaml's `name:` where given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<String>,
}

/// A device as its owning source declares it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceSpec {
    pub id: DeviceId,
    pub points: Vec<PointSpec>,
    pub meta: DeviceMeta,
}

impl DeviceSpec {
    pub fn new(id: impl Into<DeviceId>) -> DeviceSpec {
        DeviceSpec {
            id: id.into(),
            points: Vec::new(),
            meta: DeviceMeta::default(),
        }
    }
    pub fn point(mut self, p: PointSpec) -> Self {
        self.points.push(p);
        self
    }
}

/// Whether a device is being heard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Nothing heard yet.
    Unknown,
    Online,
    /// Every point with an expected period went stale, or its source said so.
    Offline,
}

impl Availability {
    fn from_u8(v: u8) -> Availability {
        match v {
            1 => Availability::Online,
            2 => Availability::Offline,
            _ => Availability::Unknown,
        }
    }
    fn as_u8(self) -> u8 {
        match self {
            Availability::Unknown => 0,
            Availability::Online => 1,
            Availability::Offline => 2,
        }
    }
}

/// Why the registry refused a change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("device `{device}` belongs to source `{owner}`, not to `{claimant}`")]
    OwnedBy {
        device: String,
        owner: String,
        claimant: String,
    },
    #[error("`{id}` is not a valid device id: {why}")]
    InvalidId { id: String, why: &'static str },
}

/// Check a device id: MQTT topic levels without wildcards, no empty level.
pub fn validate_device_id(id: &str) -> Result<(), RegistryError> {
    let why = if id.is_empty() {
        Some("it is empty")
    } else if id.contains(['#', '+']) {
        Some("it contains an MQTT wildcard (`#` or `+`)")
    } else if id.contains('\0') {
        Some("it contains a NUL character")
    } else if id.split('/').any(str::is_empty) {
        Some("it has an empty level (a leading, trailing or double `/`)")
    } else {
        None
    };
    match why {
        Some(why) => Err(RegistryError::InvalidId {
            id: id.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

#[derive(Debug)]
struct PointSlot {
    spec: PointSpec,
    last_seen: AtomicI64,
    stale: AtomicBool,
}

#[derive(Debug)]
struct Slot {
    owner: Arc<str>,
    meta: DeviceMeta,
    /// Points in declaration order, then learned ones.
    points: Vec<Arc<PointSlot>>,
    index: HashMap<PointId, usize>,
    availability: AtomicU8,
    last_seen: AtomicI64,
}

impl Slot {
    fn new(owner: Arc<str>, spec: DeviceSpec) -> Slot {
        let mut s = Slot {
            owner,
            meta: spec.meta,
            points: Vec::new(),
            index: HashMap::new(),
            availability: AtomicU8::new(0),
            last_seen: AtomicI64::new(0),
        };
        for p in spec.points {
            s.add_point(p, 0);
        }
        s
    }

    fn add_point(&mut self, spec: PointSpec, last_seen: i64) {
        let name = spec.name.clone();
        let slot = Arc::new(PointSlot {
            spec,
            last_seen: AtomicI64::new(last_seen),
            stale: AtomicBool::new(false),
        });
        match self.index.get(&name) {
            Some(&i) => self.points[i] = slot,
            None => {
                self.index.insert(name, self.points.len());
                self.points.push(slot);
            }
        }
    }

    fn point(&self, p: &str) -> Option<&PointSlot> {
        self.index.get(p).map(|&i| &*self.points[i])
    }
}

/// A point as [`Registry::snapshot`] shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PointView {
    #[serde(flatten)]
    pub spec: PointSpec,
    /// RFC 3339-free: Unix nanoseconds of the last reading, `None` if never heard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ns: Option<i64>,
    pub stale: bool,
}

/// A device as [`Registry::snapshot`] shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceView {
    pub id: DeviceId,
    pub owner: Arc<str>,
    pub availability: Availability,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_ns: Option<i64>,
    pub meta: DeviceMeta,
    pub points: Vec<PointView>,
}

/// A point that went stale or came back, reported by [`Registry::sweep`].
#[derive(Clone, Debug, PartialEq)]
pub struct StaleChange {
    pub device: DeviceId,
    pub point: PointId,
    pub stale: bool,
    /// Nanoseconds since the point was last heard.
    pub silent_ns: i64,
}

/// A device's availability changed (reported by [`Registry::sweep`] and [`Registry::admit`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AvailabilityChange {
    pub device: DeviceId,
    pub availability: Availability,
}

#[derive(Debug)]
struct Inner {
    devices: RwLock<HashMap<DeviceId, Arc<Slot>>>,
    version: watch::Sender<u64>,
    metrics: Metrics,
    /// Per source: when a refusal was last logged and how many since (logged at most every
    /// [`REFUSAL_LOG_INTERVAL`]).
    refusal_logged: std::sync::Mutex<HashMap<Arc<str>, RefusalLog>>,
    /// Stale points as of the last sweep.
    stale_total: std::sync::atomic::AtomicUsize,
}

/// When refusals were last logged for a source, and how many since.
type RefusalLog = (Option<std::time::Instant>, u64);

/// Refused readings are counted always and logged at most this often per source.
pub const REFUSAL_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// The registry; cloning shares it.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(&Metrics::new())
    }
}

impl Registry {
    pub fn new(metrics: &Metrics) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                devices: RwLock::new(HashMap::new()),
                version: watch::channel(0).0,
                metrics: metrics.clone(),
                refusal_logged: Default::default(),
                stale_total: Default::default(),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<DeviceId, Arc<Slot>>> {
        self.inner.devices.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<DeviceId, Arc<Slot>>> {
        self.inner
            .devices
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }
    fn changed(&self) {
        self.inner.version.send_modify(|v| *v += 1);
    }

    /// A receiver that sees a new version after every change.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Add `spec` for `owner`, or replace it if `owner` already owns it (what was heard is kept).
    pub fn claim(&self, owner: &str, spec: DeviceSpec) -> Result<(), RegistryError> {
        validate_device_id(spec.id.as_str())?;
        {
            let mut devices = self.write();
            let id = spec.id.clone();
            let prev = devices.get(&id).cloned();
            let slot = match prev {
                Some(p) if &*p.owner != owner => {
                    return Err(RegistryError::OwnedBy {
                        device: id.to_string(),
                        owner: p.owner.to_string(),
                        claimant: owner.to_string(),
                    })
                }
                Some(p) => {
                    let mut s = Slot::new(p.owner.clone(), spec);
                    // Keep what was heard: learned points and last-seen times.
                    for old in &p.points {
                        let seen = old.last_seen.load(Ordering::Relaxed);
                        match s.index.get(&old.spec.name) {
                            Some(&i) => s.points[i].last_seen.store(seen, Ordering::Relaxed),
                            None => s.add_point(old.spec.clone(), seen),
                        }
                    }
                    s.availability
                        .store(p.availability.load(Ordering::Relaxed), Ordering::Relaxed);
                    s.last_seen
                        .store(p.last_seen.load(Ordering::Relaxed), Ordering::Relaxed);
                    s
                }
                None => Slot::new(Arc::from(owner), spec),
            };
            devices.insert(id, Arc::new(slot));
        }
        self.changed();
        Ok(())
    }

    /// Remove `device` if `owner` owns it; true when it was removed.
    pub fn remove(&self, owner: &str, device: &str) -> bool {
        let removed = {
            let mut devices = self.write();
            match devices.get(device) {
                Some(s) if &*s.owner == owner => devices.remove(device).is_some(),
                _ => false,
            }
        };
        if removed {
            self.changed();
        }
        removed
    }

    /// Remove every device `owner` owns (its source was removed); returns how many.
    pub fn remove_owner(&self, owner: &str) -> usize {
        let n = {
            let mut devices = self.write();
            let before = devices.len();
            devices.retain(|_, s| &*s.owner != owner);
            before - devices.len()
        };
        if n > 0 {
            self.changed();
        }
        n
    }

    /// The owner's word on a device's availability (a Zigbee device that left, a BLE sensor out
    /// of range). Ignored for a device `owner` does not own.
    pub fn set_availability(&self, owner: &str, device: &str, a: Availability) -> bool {
        let devices = self.read();
        let Some(s) = devices.get(device).filter(|s| &*s.owner == owner) else {
            return false;
        };
        let old = s.availability.swap(a.as_u8(), Ordering::Relaxed);
        drop(devices);
        if old != a.as_u8() {
            self.changed();
        }
        true
    }

    /// Change how often `owner`'s `device`/`point` is expected to report (an Observe stream's
    /// Max-Age, a sleepy device's reporting interval learned at run time). False when `owner` does
    /// not own the device or it has no such point; announced as a change only when it changed.
    pub fn set_point_period(
        &self,
        owner: &str,
        device: &str,
        point: &str,
        period_ms: Option<u64>,
    ) -> bool {
        {
            let mut devices = self.write();
            let Some(slot) = devices.get_mut(device).filter(|s| &*s.owner == owner) else {
                return false;
            };
            let Some(&i) = slot.index.get(point) else {
                return false;
            };
            if slot.points[i].spec.expected_period_ms == period_ms {
                return true;
            }
            // Slots are shared read-only with the hot path: build the changed one and swap it in.
            let old = &slot.points[i];
            let mut spec = old.spec.clone();
            spec.expected_period_ms = period_ms;
            let changed = Arc::new(PointSlot {
                spec,
                last_seen: AtomicI64::new(old.last_seen.load(Ordering::Relaxed)),
                stale: AtomicBool::new(old.stale.load(Ordering::Relaxed)),
            });
            let mut s = Slot {
                owner: slot.owner.clone(),
                meta: slot.meta.clone(),
                points: slot.points.clone(),
                index: slot.index.clone(),
                availability: AtomicU8::new(slot.availability.load(Ordering::Relaxed)),
                last_seen: AtomicI64::new(slot.last_seen.load(Ordering::Relaxed)),
            };
            s.points[i] = changed;
            *slot = Arc::new(s);
        }
        self.changed();
        true
    }

    /// The owner of `device`, if any.
    pub fn owner(&self, device: &str) -> Option<Arc<str>> {
        self.read().get(device).map(|s| s.owner.clone())
    }

    /// What a command to `device`/`point` is allowed: `Ok(owner)` when the point is writable.
    pub fn writable_owner(&self, device: &str, point: &str) -> Result<Arc<str>, WriteRefusal> {
        let devices = self.read();
        let s = devices.get(device).ok_or(WriteRefusal::UnknownDevice)?;
        match s.point(point) {
            Some(p) if p.spec.writable => Ok(s.owner.clone()),
            Some(_) => Err(WriteRefusal::ReadOnly),
            None => Err(WriteRefusal::UnknownPoint {
                writable: s
                    .points
                    .iter()
                    .filter(|p| p.spec.writable)
                    .map(|p| p.spec.name.to_string())
                    .collect(),
            }),
        }
    }

    /// Devices with at least one writable point (the command topics to listen on).
    pub fn commandable(&self) -> Vec<DeviceId> {
        let mut v: Vec<DeviceId> = self
            .read()
            .iter()
            .filter(|(_, s)| s.points.iter().any(|p| p.spec.writable))
            .map(|(id, _)| id.clone())
            .collect();
        v.sort();
        v
    }

    /// Every device id, sorted.
    pub fn ids(&self) -> Vec<DeviceId> {
        let mut v: Vec<DeviceId> = self.read().keys().cloned().collect();
        v.sort();
        v
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admit a batch fresh from the bus: readings from a source that does not own their device are
    /// removed and counted; the rest mark their device and point as heard. Devices and points first
    /// heard are added (owned by the reading's source; points read-only). Returns the devices that
    /// were offline and are back online.
    ///
    /// "Heard" is judged by the time of arrival (a device's own clock may be off) and only from
    /// readings that are not `Bad`: a timeout or a lost connection reported as a bad reading does
    /// not keep a point fresh, and does not bring its device back online.
    pub fn admit(&self, batch: &mut Batch) -> Vec<AvailabilityChange> {
        self.admit_at(batch, Timestamp::now())
    }

    /// [`Registry::admit`] with the time of arrival given (tests, replays).
    pub fn admit_at(&self, batch: &mut Batch, arrived: Timestamp) -> Vec<AvailabilityChange> {
        let arrived = arrived.as_nanos();
        let mut learn: Vec<usize> = Vec::new();
        let mut refused: Vec<usize> = Vec::new();
        let mut invalid: Vec<usize> = Vec::new();
        let mut back = Vec::new();
        let mut announce = false;
        {
            let devices = self.read();
            for (i, r) in batch.iter().enumerate() {
                let Some(s) = devices.get(&r.device) else {
                    learn.push(i);
                    continue;
                };
                if *s.owner != *r.source {
                    refused.push(i);
                    continue;
                }
                let point = s.point(r.point.as_str());
                if point.is_none() {
                    learn.push(i);
                }
                if matches!(r.quality, Quality::Bad(_)) {
                    continue;
                }
                s.last_seen.fetch_max(arrived, Ordering::Relaxed);
                if let Some(p) = point {
                    p.last_seen.fetch_max(arrived, Ordering::Relaxed);
                    p.stale.store(false, Ordering::Relaxed);
                }
                let was = s
                    .availability
                    .swap(Availability::Online.as_u8(), Ordering::Relaxed);
                if was != Availability::Online.as_u8() {
                    announce = true;
                    if was == Availability::Offline.as_u8() {
                        back.push(AvailabilityChange {
                            device: r.device.clone(),
                            availability: Availability::Online,
                        });
                    }
                }
            }
        }
        if !learn.is_empty() {
            let mut devices = self.write();
            for &i in &learn {
                let r = &batch[i];
                if !devices.contains_key(&r.device)
                    && validate_device_id(r.device.as_str()).is_err()
                {
                    invalid.push(i);
                    continue;
                }
                let slot = devices.entry(r.device.clone()).or_insert_with(|| {
                    Arc::new(Slot::new(
                        r.source.clone(),
                        DeviceSpec::new(r.device.clone()),
                    ))
                });
                if *slot.owner != *r.source {
                    refused.push(i);
                    continue;
                }
                let heard = !matches!(r.quality, Quality::Bad(_));
                let ts = if heard { arrived } else { 0 };
                if slot.point(r.point.as_str()).is_none() {
                    let mut s = Slot::new(
                        slot.owner.clone(),
                        DeviceSpec {
                            id: r.device.clone(),
                            points: slot.points.iter().map(|p| p.spec.clone()).collect(),
                            meta: slot.meta.clone(),
                        },
                    );
                    for (n, p) in slot.points.iter().enumerate() {
                        s.points[n]
                            .last_seen
                            .store(p.last_seen.load(Ordering::Relaxed), Ordering::Relaxed);
                    }
                    s.add_point(PointSpec::learned(r), ts);
                    s.last_seen.store(
                        slot.last_seen.load(Ordering::Relaxed).max(ts),
                        Ordering::Relaxed,
                    );
                    s.availability
                        .store(slot.availability.load(Ordering::Relaxed), Ordering::Relaxed);
                    if heard {
                        s.availability
                            .store(Availability::Online.as_u8(), Ordering::Relaxed);
                    }
                    *slot = Arc::new(s);
                }
            }
            drop(devices);
            self.changed();
        }
        for &i in &invalid {
            self.inner
                .metrics
                .counter(
                    "weir_readings_refused_total",
                    &[("source", &batch[i].source), ("reason", "invalid_id")],
                )
                .inc();
        }
        if !invalid.is_empty() {
            let r = &batch[invalid[0]];
            tracing::warn!(
                source = %r.source,
                device = %r.device,
                "refused readings for an invalid device id (empty level or MQTT wildcard)"
            );
        }
        refused.extend(invalid);
        if !refused.is_empty() {
            refused.sort_unstable();
            refused.dedup();
            for &i in refused.iter() {
                let r = &batch[i];
                if self.owner(r.device.as_str()).is_some() {
                    self.refused_counter(&r.source).inc();
                }
            }
            self.log_refused(batch, &refused);
            let mut k = 0;
            let mut n = 0;
            batch.retain(|_| {
                let keep = refused.get(k) != Some(&n);
                if !keep {
                    k += 1;
                }
                n += 1;
                keep
            });
        }
        if announce {
            self.changed();
        }
        back
    }

    fn refused_counter(&self, source: &str) -> Counter {
        self.inner.metrics.counter(
            "weir_readings_refused_total",
            &[("source", source), ("reason", "not_owner")],
        )
    }

    fn log_refused(&self, batch: &Batch, refused: &[usize]) {
        let r = &batch[refused[0]];
        let now = std::time::Instant::now();
        let since_last = {
            let mut logged = self
                .inner
                .refusal_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let e = logged.entry(r.source.clone()).or_insert((None, 0));
            e.1 += refused.len() as u64;
            if e.0
                .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL)
            {
                return;
            }
            let n = e.1;
            *e = (Some(now), 0);
            n
        };
        let Some(owner) = self.owner(r.device.as_str()) else {
            return;
        };
        tracing::warn!(
            source = %r.source,
            device = %r.device,
            owner = %owner,
            refused = since_last,
            "refused readings for a device another source owns (logged at most every {:?}; \
             all counted in weir_readings_refused_total)",
            REFUSAL_LOG_INTERVAL
        );
    }

    /// Mark points not heard within `period × stale_after_periods` stale, and devices whose every
    /// timed point is stale offline. Returns what changed, for logging and events.
    pub fn sweep(
        &self,
        now: Timestamp,
        stale_after_periods: u32,
    ) -> (Vec<StaleChange>, Vec<AvailabilityChange>) {
        let now = now.as_nanos();
        let mut stale = Vec::new();
        let mut avail = Vec::new();
        let mut stale_total = 0;
        {
            let devices = self.read();
            for (id, s) in devices.iter() {
                let mut timed = 0;
                let mut stale_now = 0;
                for p in &s.points {
                    let Some(period) = p.spec.expected_period_ms else {
                        continue;
                    };
                    timed += 1;
                    let seen = p.last_seen.load(Ordering::Relaxed);
                    let limit = (period as i64)
                        .saturating_mul(1_000_000)
                        .saturating_mul(stale_after_periods.max(1) as i64);
                    // Never heard: counted from when the sweep first ran, so a device that never
                    // answers goes stale too.
                    if seen == 0 {
                        p.last_seen.store(now, Ordering::Relaxed);
                        continue;
                    }
                    let silent = now - seen;
                    let is_stale = silent > limit;
                    if is_stale {
                        stale_now += 1;
                        stale_total += 1;
                    }
                    if p.stale.swap(is_stale, Ordering::Relaxed) != is_stale && is_stale {
                        stale.push(StaleChange {
                            device: id.clone(),
                            point: p.spec.name.clone(),
                            stale: true,
                            silent_ns: silent,
                        });
                    }
                }
                if timed > 0 && stale_now == timed {
                    let was = s
                        .availability
                        .swap(Availability::Offline.as_u8(), Ordering::Relaxed);
                    if was != Availability::Offline.as_u8() {
                        avail.push(AvailabilityChange {
                            device: id.clone(),
                            availability: Availability::Offline,
                        });
                    }
                }
            }
        }
        self.inner.stale_total.store(stale_total, Ordering::Relaxed);
        if !stale.is_empty() || !avail.is_empty() {
            self.changed();
        }
        stale.sort_by(|a, b| (&a.device, &a.point).cmp(&(&b.device, &b.point)));
        (stale, avail)
    }

    /// Points found stale by the last [`Registry::sweep`] (a point heard since is counted until
    /// the next sweep).
    pub fn stale_points(&self) -> usize {
        self.inner.stale_total.load(Ordering::Relaxed)
    }

    /// Every device, sorted by id.
    pub fn snapshot(&self) -> Vec<DeviceView> {
        let mut v: Vec<DeviceView> = self
            .read()
            .iter()
            .map(|(id, s)| {
                let seen = s.last_seen.load(Ordering::Relaxed);
                DeviceView {
                    id: id.clone(),
                    owner: s.owner.clone(),
                    availability: Availability::from_u8(s.availability.load(Ordering::Relaxed)),
                    last_seen_ns: (seen != 0).then_some(seen),
                    meta: s.meta.clone(),
                    points: s
                        .points
                        .iter()
                        .map(|p| {
                            let seen = p.last_seen.load(Ordering::Relaxed);
                            PointView {
                                spec: p.spec.clone(),
                                last_seen_ns: (seen != 0).then_some(seen),
                                stale: p.stale.load(Ordering::Relaxed),
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// Why a command may not be written (see [`Registry::writable_owner`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteRefusal {
    UnknownDevice,
    /// The point exists and is read-only.
    ReadOnly,
    /// The device has no such point; these are its writable ones.
    UnknownPoint {
        writable: Vec<String>,
    },
}

/// A source's view of the registry: every change is made as that source, so it cannot touch
/// devices it does not own.
#[derive(Clone, Debug)]
pub struct RegistryHandle {
    registry: Registry,
    owner: Arc<str>,
}

impl RegistryHandle {
    pub fn new(registry: Registry, owner: &str) -> RegistryHandle {
        RegistryHandle {
            registry,
            owner: Arc::from(owner),
        }
    }
    /// Add or update a device this source owns (a Zigbee join, a BLE device first heard).
    pub fn upsert(&self, spec: DeviceSpec) -> Result<(), RegistryError> {
        self.registry.claim(&self.owner, spec)
    }
    /// Remove a device this source owns (a Zigbee device that left the network).
    pub fn remove(&self, device: &str) -> bool {
        self.registry.remove(&self.owner, device)
    }
    pub fn set_availability(&self, device: &str, a: Availability) -> bool {
        self.registry.set_availability(&self.owner, device, a)
    }
    /// See [`Registry::set_point_period`].
    pub fn set_point_period(&self, device: &str, point: &str, period_ms: Option<u64>) -> bool {
        self.registry
            .set_point_period(&self.owner, device, point, period_ms)
    }
    /// The whole registry, read-only use.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(source: &str, device: &str, point: &str, ts: i64) -> Reading {
        Reading {
            device: device.into(),
            point: point.into(),
            value: Value::F64(1.0),
            unit: Some(Arc::from("°C")),
            ts: Timestamp(ts),
            quality: Quality::Good,
            source: Arc::from(source),
        }
    }

    #[test]
    fn one_owner_per_device() {
        let r = Registry::default();
        r.claim("modbus", DeviceSpec::new("plant/boiler")).unwrap();
        assert_eq!(
            r.claim("coap", DeviceSpec::new("plant/boiler")),
            Err(RegistryError::OwnedBy {
                device: "plant/boiler".into(),
                owner: "modbus".into(),
                claimant: "coap".into()
            })
        );
        assert!(!r.remove("coap", "plant/boiler"));
        assert!(r.remove("modbus", "plant/boiler"));
        assert!(r.claim("coap", DeviceSpec::new("plant/boiler")).is_ok());
    }

    #[test]
    fn invalid_ids_are_refused() {
        let r = Registry::default();
        for id in ["", "a/+/b", "a/#", "/a", "a/", "a//b"] {
            assert!(
                matches!(
                    r.claim("s", DeviceSpec::new(id)),
                    Err(RegistryError::InvalidId { .. })
                ),
                "{id:?}"
            );
        }
    }

    #[test]
    fn admit_refuses_readings_from_a_source_that_does_not_own_the_device() {
        let m = Metrics::new();
        let r = Registry::new(&m);
        r.claim(
            "modbus",
            DeviceSpec::new("plant/boiler").point(PointSpec::new("temperature")),
        )
        .unwrap();
        let mut batch = vec![
            reading("coap", "plant/boiler", "temperature", 1),
            reading("modbus", "plant/boiler", "temperature", 2),
            reading("coap", "coap/new", "t", 3),
            reading("coap", "plant/boiler", "pressure", 4),
        ];
        r.admit(&mut batch);
        let kept: Vec<_> = batch
            .iter()
            .map(|r| (r.source.to_string(), r.device.to_string()))
            .collect();
        assert_eq!(
            kept,
            [
                ("modbus".to_string(), "plant/boiler".to_string()),
                ("coap".to_string(), "coap/new".to_string())
            ]
        );
        assert_eq!(
            m.counter(
                "weir_readings_refused_total",
                &[("source", "coap"), ("reason", "not_owner")]
            )
            .get(),
            2
        );
        // A device id no topic can carry is refused, and counted apart.
        let mut bad = vec![
            reading("coap", "a//b", "t", 5),
            reading("coap", "x/+", "t", 5),
        ];
        r.admit(&mut bad);
        assert!(bad.is_empty());
        assert_eq!(
            m.counter(
                "weir_readings_refused_total",
                &[("source", "coap"), ("reason", "invalid_id")]
            )
            .get(),
            2
        );
        assert_eq!(r.owner("a//b"), None);
        // The device first heard from coap is now coap's, with a learned read-only point.
        assert_eq!(r.owner("coap/new").as_deref(), Some("coap"));
        assert_eq!(
            r.writable_owner("coap/new", "t"),
            Err(WriteRefusal::ReadOnly)
        );
    }

    #[test]
    fn learned_points_keep_declared_ones_and_writability() {
        let r = Registry::default();
        r.claim(
            "sim",
            DeviceSpec::new("gh1/vent").point(PointSpec::new("open").writable(true)),
        )
        .unwrap();
        let mut batch = vec![reading("sim", "gh1/vent", "angle", 1)];
        r.admit_at(&mut batch, Timestamp(5));
        assert_eq!(batch.len(), 1);
        assert_eq!(r.writable_owner("gh1/vent", "open").as_deref(), Ok("sim"));
        assert_eq!(
            r.writable_owner("gh1/vent", "angle"),
            Err(WriteRefusal::ReadOnly)
        );
        assert_eq!(
            r.writable_owner("gh1/vent", "speed"),
            Err(WriteRefusal::UnknownPoint {
                writable: vec!["open".into()]
            })
        );
        let snap = r.snapshot();
        assert_eq!(snap[0].points.len(), 2);
        assert_eq!(snap[0].points[1].last_seen_ns, Some(5));
        assert_eq!(snap[0].availability, Availability::Online);
        assert_eq!(r.commandable(), vec![DeviceId::from("gh1/vent")]);
    }

    #[test]
    fn silent_points_go_stale_and_the_device_offline_then_back() {
        let r = Registry::default();
        let ms = 1_000_000i64;
        r.claim(
            "modbus",
            DeviceSpec::new("m1")
                .point(PointSpec::new("a").period_ms(Some(1000)))
                .point(PointSpec::new("b").period_ms(Some(1000)))
                .point(PointSpec::new("note")),
        )
        .unwrap();
        // The readings' own times do not matter (a device clock may be off): arrival does.
        let mut batch = vec![
            reading("modbus", "m1", "a", 0),
            reading("modbus", "m1", "b", 0),
        ];
        r.admit_at(&mut batch, Timestamp(1000 * ms));
        // 2.5 periods later: nothing stale at 3 periods.
        let (s, a) = r.sweep(Timestamp(3500 * ms), 3);
        assert!(s.is_empty() && a.is_empty());
        // `a` heard again, `b` silent for 3.5 periods: only `b` stale, device still online.
        r.admit_at(
            &mut vec![reading("modbus", "m1", "a", 0)],
            Timestamp(4000 * ms),
        );
        let (s, a) = r.sweep(Timestamp(4500 * ms), 3);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].point.as_str(), "b");
        assert!(a.is_empty());
        // Both silent: the device goes offline once, not on every sweep.
        let (_, a) = r.sweep(Timestamp(8000 * ms), 3);
        assert_eq!(a[0].availability, Availability::Offline);
        assert!(r.sweep(Timestamp(9000 * ms), 3).1.is_empty());
        let snap = r.snapshot();
        assert!(snap[0].points[0].stale && snap[0].points[1].stale);
        assert!(
            !snap[0].points[2].stale,
            "points without a period never go stale"
        );
        // A reading brings it back.
        // A bad reading (a timeout) is not being heard: still offline, still stale.
        let mut bad = reading("modbus", "m1", "b", 0);
        bad.quality = Quality::Bad(Arc::from("timeout"));
        assert!(r.admit_at(&mut vec![bad], Timestamp(9200 * ms)).is_empty());
        assert_eq!(r.snapshot()[0].availability, Availability::Offline);
        assert_eq!(r.stale_points(), 2);
        let back = r.admit_at(
            &mut vec![reading("modbus", "m1", "b", 0)],
            Timestamp(9500 * ms),
        );
        assert_eq!(back[0].availability, Availability::Online);
        assert!(!r.snapshot()[0].points[1].stale);
    }

    #[test]
    fn a_point_period_learned_at_run_time_applies_to_staleness() {
        let r = Registry::default();
        let ms = 1_000_000i64;
        r.claim(
            "coap",
            DeviceSpec::new("p").point(PointSpec::new("count").period_ms(Some(60_000))),
        )
        .unwrap();
        r.admit_at(
            &mut vec![reading("coap", "p", "count", 0)],
            Timestamp(1000 * ms),
        );
        // 10 s of silence is nothing at a 60 s period …
        assert!(r.sweep(Timestamp(11_000 * ms), 3).0.is_empty());
        // … but the device said Max-Age 1 s: now it is stale, and the last reading was kept.
        let h = RegistryHandle::new(r.clone(), "coap");
        assert!(h.set_point_period("p", "count", Some(1500)));
        assert!(!RegistryHandle::new(r.clone(), "other").set_point_period("p", "count", None));
        assert!(!h.set_point_period("p", "nope", None));
        let (stale, _) = r.sweep(Timestamp(11_000 * ms), 3);
        assert_eq!(stale.len(), 1);
        assert_eq!(stale[0].silent_ns, 10_000 * ms);
        assert_eq!(
            r.snapshot()[0].points[0].spec.expected_period_ms,
            Some(1500)
        );
    }

    #[test]
    fn changes_are_announced() {
        let r = Registry::default();
        let mut rx = r.changes();
        r.claim("s", DeviceSpec::new("d")).unwrap();
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        let h = RegistryHandle::new(r.clone(), "s");
        assert!(h.set_availability("d", Availability::Offline));
        assert!(rx.has_changed().unwrap());
        assert!(!RegistryHandle::new(r.clone(), "t").remove("d"));
        assert_eq!(r.remove_owner("s"), 1);
        assert!(r.is_empty());
    }
}
