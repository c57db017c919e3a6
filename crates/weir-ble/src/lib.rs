//! Bluetooth LE adapter: the gateway's own radio, through BlueZ over D-Bus (btleplug), as a
//! Weir source (`kind: ble`).
//!
//! What it does: finds the adapter (`adapter:` or the first one), subscribes to its events and
//! starts discovery; every advert (`ManufacturerData` / `ServiceData` / `RSSI` property change)
//! from an allowed address is decoded with [`decode`] into readings of the device named in
//! gateway.yaml (else `ble/<mac>` when `allow_unknown`), with `rssi` and `present` points.
//!
//! Invariants:
//! * A decode failure, a wrong BTHome bind key or a replayed encryption counter is counted
//!   (`weir_ble_decode_errors_total{kind}`), never a reading.
//! * One reading per measurement: an advert whose bytes equal the previous one of that device
//!   and AD type is a repeat; an advert with a counter (BTHome packet id or encryption counter,
//!   Ruuvi sequence, pvvx/ATC counter) gives readings once per counter value; others at most
//!   every `min_interval_ms` per device.
//! * `present` is `true` when a device is first heard and `false` after `away_after_s` of
//!   silence (then `true` again when heard); the registry's availability follows it.
//! * The source never returns an error because the radio or BlueZ went away: no adapter → one
//!   log line and a wait; the adapter removed or powered off → the same; bluetoothd restarting
//!   (the D-Bus name `org.bluez` gets a new owner) → a new scanning session; no advert from any
//!   allowed device for `silence_restart_s` → discovery is stopped and started again. Each is
//!   counted (`weir_ble_{adapter_waits,adapter_lost,bluez_restarts,discovery_restarts}_total`).
//!
//! What btleplug 0.13 cannot express, and the route taken instead:
//! * Its `start_scan` sets BlueZ's discovery filter itself: `DuplicateData=true` (what we want)
//!   but `Transport=auto`, not `le`, and no way to choose; on an LE-only radio that is the same.
//! * It does not report D-Bus name owner changes: a separate D-Bus connection (dbus-tokio, the
//!   library btleplug itself uses) asks `GetNameOwner("org.bluez")` every health check; unique
//!   connection names are never reused, so every restart is seen.
//! * It has no way to close a `Manager`'s D-Bus connection (bluez-async spawns its I/O task and
//!   btleplug drops the handle), so one `Manager` serves a whole run of the source; a new session
//!   re-lists adapters, re-subscribes the event stream and restarts discovery on it.
//! * It reports each advert as one event per property after a `GetAll` round trip on the
//!   device: throughput is bounded by D-Bus, not by decoding (see the benchmark).
//!
//! GATT ([`gatt`]): devices with `gatt:` points are connected by a task each (connections capped
//! and made one at a time), read on a period, subscribed for notifications and written from the
//! command router; the adapter a session found is handed to them through a watch channel.

pub mod config;
pub mod decode;
pub mod gatt;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use btleplug::api::{Central, CentralEvent, CentralState, Manager as _, ScanFilter};
use btleplug::platform::{Adapter, Manager};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;
use uuid::Uuid;
use weir_core::{
    Availability, Backoff, BuildError, Counter, DeviceId, DeviceInfo, DeviceMeta, DeviceSpec,
    Metrics, PointId, PointSpec, Quality, Reading, Source, SourceBuilder, SourceContext,
    SourceError, Timestamp, Value, ValueType,
};

use config::{mac_hex, Match};
pub use config::{BleConfig, ResolvedBle};
use decode::{bthome, DecodeError, Decoded, Format};

/// The Bluetooth base UUID's low 96 bits: 16-bit UUIDs are `0000xxxx-0000-1000-8000-00805f9b34fb`
/// (Core Specification, Vol 3, Part B, §2.5.1).
const BASE_UUID_LOW: u128 = 0x0000_0000_0000_1000_8000_0080_5F9B_34FB;

/// The 16-bit form of `u`, if it is one.
pub fn uuid16(u: &Uuid) -> Option<u16> {
    let v = u.as_u128();
    (v & !(0xFFFF_FFFFu128 << 96) == BASE_UUID_LOW && (v >> 112) == 0).then_some((v >> 96) as u16)
}

/// `hci0/dev_A4_C1_38_11_22_33` (a BlueZ device id as btleplug prints it) → the address.
pub fn mac_of_peripheral(id: &str) -> Option<[u8; 6]> {
    let dev = id.rsplit('/').next()?.strip_prefix("dev_")?;
    config::parse_mac(&dev.replace('_', ""))
}

impl SourceBuilder for ResolvedBle {
    fn kind(&self) -> &'static str {
        "ble"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices
            .values()
            .map(|d| DeviceInfo {
                device: DeviceId::new(&d.id),
                writable_points: d
                    .gatt
                    .iter()
                    .filter(|g| g.writable)
                    .map(|g| PointId::new(&g.point))
                    .collect(),
            })
            .collect()
    }

    fn device_specs(&self) -> Vec<DeviceSpec> {
        self.devices
            .iter()
            .map(|(m, d)| device_spec(&d.id, m, self.cfg.rssi, &d.gatt))
            .collect()
    }

    fn build(&self, name: &str, metrics: &Metrics) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(BleSource {
            r: self.clone(),
            name: Arc::from(name),
            m: BMetrics::new(metrics, name),
        }))
    }
}

fn device_spec(id: &str, m: &Match, rssi: bool, gatt: &[config::GattPoint]) -> DeviceSpec {
    let mut s = DeviceSpec::new(DeviceId::new(id)).point(
        PointSpec::new(PointId::new("present"))
            .value_type(ValueType::Bool)
            .class(Some("presence")),
    );
    if rssi {
        s = s.point(
            PointSpec::new(PointId::new("rssi"))
                .value_type(ValueType::Int)
                .unit(Some("dBm"))
                .class(Some("signal_strength")),
        );
    }
    for g in gatt {
        let ty = match g.value_type {
            config::GattType::Bool => ValueType::Bool,
            config::GattType::Utf8 | config::GattType::Hex => ValueType::Text,
            config::GattType::F32 => ValueType::Float,
            _ if g.scale != 1.0 || g.offset != 0.0 => ValueType::Float,
            _ => ValueType::Int,
        };
        s = s.point(
            PointSpec::new(PointId::new(&g.point))
                .value_type(ty)
                .unit(g.unit.as_deref())
                .writable(g.writable)
                .period_ms(g.read_every_s.map(|x| x * 1000)),
        );
    }
    s.meta = DeviceMeta {
        name: Some(match m {
            Match::Mac(mac) => format!("BLE {}", fmt_mac(mac)),
            Match::Beacon(b) => format!("BLE beacon {b}"),
        }),
        ..Default::default()
    };
    s
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Counters on `/metrics` (`weir_ble_*_total{source}`).
#[derive(Debug, Clone)]
struct BMetrics {
    metrics: Metrics,
    source: String,
    adverts: Counter,
    ignored: Counter,
    repeats: Counter,
    rate_limited: Counter,
    unknown_format: Counter,
    readings: Counter,
    adapter_waits: Counter,
    adapter_lost: Counter,
    bluez_restarts: Counter,
    discovery_restarts: Counter,
    sessions: Counter,
    gatt_connects: Counter,
    gatt_disconnects: Counter,
    gatt_errors: Counter,
    decode_errors: HashMap<&'static str, Counter>,
}

impl BMetrics {
    fn new(m: &Metrics, source: &str) -> BMetrics {
        let c = |n: &str| m.counter(&format!("weir_ble_{n}_total"), &[("source", source)]);
        BMetrics {
            metrics: m.clone(),
            source: source.to_string(),
            adverts: c("adverts"),
            ignored: c("ignored_adverts"),
            repeats: c("repeated_adverts"),
            rate_limited: c("rate_limited_adverts"),
            unknown_format: c("unknown_format_adverts"),
            readings: c("readings"),
            adapter_waits: c("adapter_waits"),
            adapter_lost: c("adapter_lost"),
            bluez_restarts: c("bluez_restarts"),
            discovery_restarts: c("discovery_restarts"),
            sessions: c("sessions"),
            gatt_connects: c("gatt_connects"),
            gatt_disconnects: c("gatt_disconnects"),
            gatt_errors: c("gatt_errors"),
            decode_errors: HashMap::new(),
        }
    }

    fn decode_error(&mut self, e: &DecodeError) {
        let kind = e.kind();
        let (m, s) = (&self.metrics, &self.source);
        self.decode_errors
            .entry(kind)
            .or_insert_with(|| {
                m.counter(
                    "weir_ble_decode_errors_total",
                    &[("source", s), ("kind", kind)],
                )
            })
            .inc();
    }
}

/// A running `ble` source.
#[derive(Debug)]
pub struct BleSource {
    r: ResolvedBle,
    name: Arc<str>,
    m: BMetrics,
}

/// Which AD structure of an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum AdKey {
    Manufacturer(u16),
    Service(Uuid),
}

#[derive(Debug)]
struct Dev {
    id: DeviceId,
    keys: bthome::KeyState,
    raw: bool,
    /// Last bytes per AD structure (exact repeats are skipped before decoding).
    last_data: HashMap<AdKey, Vec<u8>>,
    last_counter: HashMap<Format, u32>,
    last_emit: Option<Instant>,
    heard: Option<Instant>,
    present: Option<bool>,
    rssi: Option<i16>,
    /// What the registry was told (re-told with the format and firmware once they are known).
    spec: DeviceSpec,
}

impl Dev {
    fn new(spec: DeviceSpec, keys: bthome::KeyState, raw: bool) -> Dev {
        Dev {
            id: spec.id.clone(),
            keys,
            raw,
            last_data: HashMap::new(),
            last_counter: HashMap::new(),
            last_emit: None,
            heard: None,
            present: None,
            rssi: None,
            spec,
        }
    }
}

/// Why a scanning session ended.
enum End {
    Shutdown,
    AdapterGone(String),
    BluezRestarted,
    StreamEnded,
}

struct Run<'a> {
    cfg: &'a BleConfig,
    name: Arc<str>,
    m: &'a mut BMetrics,
    ctx: &'a SourceContext,
    devs: HashMap<Match, Dev>,
    /// Beacon identities are looked up only when some are configured.
    has_beacons: bool,
    pending: Vec<Reading>,
    units: HashMap<&'static str, Arc<str>>,
    started: Instant,
    last_allowed: Instant,
    commands_open: bool,
    /// Addresses a listed beacon was last heard from (its RSSI updates come by address).
    beacon_macs: HashMap<[u8; 6], Match>,
    /// Command inboxes of the GATT device tasks.
    gatt: HashMap<DeviceId, tokio::sync::mpsc::Sender<weir_core::Command>>,
}

#[async_trait]
impl Source for BleSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError> {
        let mut devs = HashMap::new();
        for (m, d) in &self.r.devices {
            devs.insert(
                m.clone(),
                Dev::new(
                    device_spec(&d.id, m, self.r.cfg.rssi, &d.gatt),
                    bthome::KeyState {
                        key: d.key.map(|k| k.0),
                        last_counter: None,
                    },
                    d.raw,
                ),
            );
        }
        let now = Instant::now();
        let mut run = Run {
            cfg: &self.r.cfg,
            name: self.name.clone(),
            has_beacons: devs.keys().any(|k| matches!(k, Match::Beacon(_))),
            m: &mut self.m,
            ctx: &ctx,
            devs,
            pending: Vec::new(),
            units: HashMap::new(),
            started: now,
            last_allowed: now,
            commands_open: true,
            gatt: HashMap::new(),
            beacon_macs: HashMap::new(),
        };
        for (m, d) in &self.r.devices {
            if let Err(e) = ctx
                .registry
                .upsert(device_spec(&d.id, m, self.r.cfg.rssi, &d.gatt))
            {
                tracing::error!(source = %self.name, "{e}");
            }
        }
        // GATT devices: a task each, fed the adapter of the current session.
        let (adapter_tx, adapter_rx) = tokio::sync::watch::channel(None::<Adapter>);
        let mut gatt_tasks = tokio::task::JoinSet::new();
        let shared = gatt::Shared {
            source: self.name.clone(),
            bus: ctx.bus.clone(),
            shutdown: ctx.shutdown.child_token(),
            adapter: adapter_rx,
            connect_lock: Arc::new(tokio::sync::Semaphore::new(1)),
            slots: Arc::new(tokio::sync::Semaphore::new(
                self.r.cfg.max_connections.max(1),
            )),
            connect_timeout: Duration::from_millis(self.r.cfg.connect_timeout_ms),
            reconnect_backoff: Duration::from_millis(self.r.cfg.reconnect_backoff_ms),
            connects: run.m.gatt_connects.clone(),
            disconnects: run.m.gatt_disconnects.clone(),
            errors: run.m.gatt_errors.clone(),
        };
        let gatt_stop = shared.shutdown.clone();
        for (m, d) in &self.r.devices {
            if let (Match::Mac(mac), false) = (m, d.gatt.is_empty()) {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                let id = DeviceId::new(&d.id);
                run.gatt.insert(id.clone(), tx);
                gatt_tasks.spawn(gatt::run_device(
                    shared.clone(),
                    id,
                    *mac,
                    d.gatt.clone(),
                    rx,
                ));
            }
        }
        drop(shared);
        let result = Self::scan(&self.r, &self.name, &mut run, &adapter_tx).await;
        gatt_stop.cancel();
        // Each task disconnects its device on the way out.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while gatt_tasks.join_next().await.is_some() {}
        })
        .await;
        result
    }
}

impl BleSource {
    /// Scanning sessions until shutdown.
    async fn scan(
        r: &ResolvedBle,
        name: &Arc<str>,
        run: &mut Run<'_>,
        adapter_tx: &tokio::sync::watch::Sender<Option<Adapter>>,
    ) -> Result<(), SourceError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        let mut logged = false;
        let manager = loop {
            match Manager::new().await {
                Ok(m) => break m,
                Err(e) => {
                    if !logged {
                        logged = true;
                        tracing::warn!(source = %name, "BlueZ is not reachable on the system D-Bus ({e}); waiting for it");
                    }
                    if !run.wait(backoff.next_delay()).await {
                        return Ok(());
                    }
                }
            }
        };
        let owner = match BluezOwner::connect() {
            Ok(o) => o,
            Err(e) => {
                return Err(SourceError::Other(format!(
                    "cannot open a second system D-Bus connection: {e}"
                )))
            }
        };
        let want = r.cfg.adapter.as_deref();
        let mut waiting_since: Option<std::time::Instant> = None;
        loop {
            let adapter = match find_adapter(&manager, want).await {
                Ok(a) => a,
                Err(why) => {
                    run.m.adapter_waits.inc();
                    if waiting_since.is_none() {
                        waiting_since = Some(std::time::Instant::now());
                        tracing::warn!(source = %name, "no Bluetooth adapter ({why}); waiting for one");
                    } else {
                        tracing::debug!(source = %name, "still no Bluetooth adapter: {why}");
                    }
                    if !run.wait(backoff.next_delay()).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            let bluez = owner.get().await;
            let started = async {
                let events = adapter.events().await?;
                adapter.start_scan(ScanFilter::default()).await?;
                Ok::<_, btleplug::Error>(events)
            }
            .await;
            let events = match started {
                Ok(ev) => ev,
                Err(e) => {
                    run.m.adapter_waits.inc();
                    if waiting_since.is_none() {
                        waiting_since = Some(std::time::Instant::now());
                        tracing::warn!(source = %name, "cannot start discovery ({e}); waiting for the adapter");
                    }
                    if !run.wait(backoff.next_delay()).await {
                        return Ok(());
                    }
                    continue;
                }
            };
            backoff.reset();
            run.m.sessions.inc();
            let info = adapter.adapter_info().await.unwrap_or_default();
            match waiting_since.take() {
                Some(t) => tracing::info!(
                    source = %name,
                    "scanning on {info} (after waiting {:.1} s)",
                    t.elapsed().as_secs_f64()
                ),
                None => tracing::info!(source = %name, "scanning on {info}"),
            }
            adapter_tx.send_replace(Some(adapter.clone()));
            let end = run.serve(&adapter, events, &owner, bluez).await;
            adapter_tx.send_replace(None);
            let end = end?;
            match end {
                End::Shutdown => {
                    let _ = adapter.stop_scan().await;
                    return Ok(());
                }
                End::AdapterGone(why) => {
                    run.m.adapter_lost.inc();
                    waiting_since = Some(std::time::Instant::now());
                    tracing::warn!(source = %name, "Bluetooth adapter lost ({why}); waiting for it");
                }
                End::BluezRestarted => {
                    run.m.bluez_restarts.inc();
                    tracing::warn!(source = %name, "bluetoothd restarted (org.bluez has a new owner); starting a new session");
                }
                End::StreamEnded => {
                    tracing::warn!(source = %name, "BlueZ event stream ended; starting a new session");
                }
            }
        }
    }
}

/// The adapter named `want` (`hci0`), else the first.
async fn find_adapter(manager: &Manager, want: Option<&str>) -> Result<Adapter, String> {
    let adapters = manager.adapters().await.map_err(|e| e.to_string())?;
    for a in adapters {
        let info = a.adapter_info().await.map_err(|e| e.to_string())?;
        let name = info.split_whitespace().next().unwrap_or("");
        if want.is_none_or(|w| w == name) {
            if a.adapter_state().await.ok() == Some(CentralState::PoweredOff) {
                return Err(format!("{name} is powered off"));
            }
            return Ok(a);
        }
    }
    Err(match want {
        Some(w) => format!("BlueZ lists no adapter {w}"),
        None => "BlueZ lists no adapter".into(),
    })
}

/// Who owns `org.bluez` on the system bus, asked over a connection of our own.
struct BluezOwner {
    conn: Arc<dbus::nonblock::SyncConnection>,
    io: tokio::task::JoinHandle<()>,
}

impl BluezOwner {
    fn connect() -> Result<BluezOwner, dbus::Error> {
        let (resource, conn) = dbus_tokio::connection::new_system_sync()?;
        let io = tokio::spawn(async move {
            let _ = resource.await;
        });
        Ok(BluezOwner { conn, io })
    }

    /// The unique name owning `org.bluez`, `None` when nobody does (or the bus is gone).
    async fn get(&self) -> Option<String> {
        let p = dbus::nonblock::Proxy::new(
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            Duration::from_secs(2),
            self.conn.clone(),
        );
        p.method_call::<(String,), _, _, _>("org.freedesktop.DBus", "GetNameOwner", ("org.bluez",))
            .await
            .ok()
            .map(|(o,)| o)
    }
}

impl Drop for BluezOwner {
    fn drop(&mut self) {
        self.io.abort();
    }
}

impl Run<'_> {
    /// Sleep `d`, answering commands meanwhile; false when shut down.
    async fn wait(&mut self, d: Duration) -> bool {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                c = self.ctx.commands.recv(), if self.commands_open => self.refuse(c),
            }
        }
    }

    fn refuse(&mut self, c: Option<weir_core::Command>) {
        match c {
            Some(c) if self.gatt.contains_key(&c.device) => {
                let tx = &self.gatt[&c.device];
                if let Err(e) = tx.try_send(c) {
                    let (c, why) = match e {
                        tokio::sync::mpsc::error::TrySendError::Full(c) => {
                            (c, "busy: earlier writes to this device are still pending")
                        }
                        tokio::sync::mpsc::error::TrySendError::Closed(c) => {
                            (c, "the device's GATT task has ended")
                        }
                    };
                    let _ = c.reply.send(Err(why.into()));
                }
            }
            Some(c) => {
                let _ = c.reply.send(Err(
                    "this BLE device has no writable points (only `gatt:` points with `writable: true` are)".into(),
                ));
            }
            None => self.commands_open = false,
        }
    }

    async fn serve(
        &mut self,
        adapter: &Adapter,
        mut events: std::pin::Pin<Box<dyn futures_util::Stream<Item = CentralEvent> + Send>>,
        owner: &BluezOwner,
        bluez: Option<String>,
    ) -> Result<End, SourceError> {
        let mut health = tokio::time::interval(Duration::from_millis(self.cfg.health_interval_ms));
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.last_allowed = Instant::now();
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => {
                    self.flush()?;
                    return Ok(End::Shutdown);
                }
                ev = events.next() => {
                    let Some(ev) = ev else { self.flush()?; return Ok(End::StreamEnded) };
                    self.on_event(ev);
                    // Take what else is ready, then send one batch.
                    for _ in 0..255 {
                        match events.next().now_or_never() {
                            Some(Some(ev)) => self.on_event(ev),
                            Some(None) => { self.flush()?; return Ok(End::StreamEnded) }
                            None => break,
                        }
                    }
                    self.flush()?;
                }
                c = self.ctx.commands.recv(), if self.commands_open => self.refuse(c),
                _ = health.tick() => {
                    if owner.get().await != bluez {
                        self.flush()?;
                        return Ok(End::BluezRestarted);
                    }
                    match adapter.adapter_state().await {
                        Ok(CentralState::PoweredOn) => {}
                        Ok(_) => return Ok(End::AdapterGone("powered off".into())),
                        Err(e) => return Ok(End::AdapterGone(e.to_string())),
                    }
                    if adapter.adapter_info().await.is_err() {
                        return Ok(End::AdapterGone("removed".into()));
                    }
                    self.sweep_presence();
                    self.flush()?;
                    let silence = self.cfg.silence_restart_s;
                    if silence > 0 && !self.devs.is_empty()
                        && self.last_allowed.elapsed() >= Duration::from_secs(silence)
                    {
                        self.m.discovery_restarts.inc();
                        tracing::warn!(
                            source = %self.name,
                            "no advert from any allowed device for {silence} s; restarting discovery"
                        );
                        let _ = adapter.stop_scan().await;
                        if let Err(e) = adapter.start_scan(ScanFilter::default()).await {
                            return Ok(End::AdapterGone(format!("discovery restart failed: {e}")));
                        }
                        self.last_allowed = Instant::now();
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), SourceError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        self.m.readings.add(batch.len() as u64);
        self.ctx.bus.try_send(batch)?;
        Ok(())
    }

    fn unit(&mut self, u: &'static str) -> Arc<str> {
        self.units.entry(u).or_insert_with(|| Arc::from(u)).clone()
    }

    fn push(&mut self, device: &DeviceId, point: &str, value: Value, unit: Option<&'static str>) {
        let unit = unit.map(|u| self.unit(u));
        self.pending.push(Reading {
            device: device.clone(),
            point: PointId::new(point),
            value,
            unit,
            ts: Timestamp::now(),
            quality: Quality::Good,
            source: self.name.clone(),
        });
    }

    fn on_event(&mut self, ev: CentralEvent) {
        match ev {
            CentralEvent::ManufacturerDataAdvertisement {
                id,
                manufacturer_data,
            } => {
                let Some(mac) = mac_of_peripheral(&id.to_string()) else {
                    return;
                };
                for (cid, data) in manufacturer_data {
                    self.on_data(mac, AdKey::Manufacturer(cid), data);
                }
            }
            CentralEvent::ServiceDataAdvertisement { id, service_data } => {
                let Some(mac) = mac_of_peripheral(&id.to_string()) else {
                    return;
                };
                for (uuid, data) in service_data {
                    self.on_data(mac, AdKey::Service(uuid), data);
                }
            }
            CentralEvent::RssiUpdate { id, rssi } => {
                let Some(mac) = mac_of_peripheral(&id.to_string()) else {
                    return;
                };
                let k = self
                    .beacon_macs
                    .get(&mac)
                    .cloned()
                    .unwrap_or(Match::Mac(mac));
                if let Some(d) = self.devs.get_mut(&k) {
                    d.rssi = Some(rssi);
                }
            }
            _ => {}
        }
    }

    fn decode(
        mac: [u8; 6],
        key: AdKey,
        data: &[u8],
        keys: &mut bthome::KeyState,
    ) -> Option<Result<Decoded, DecodeError>> {
        match key {
            AdKey::Manufacturer(cid) => decode::manufacturer_data(cid, data),
            AdKey::Service(u) => {
                uuid16(&u).and_then(|u16| decode::service_data(u16, data, mac, keys))
            }
        }
    }

    fn on_data(&mut self, mac: [u8; 6], key: AdKey, data: Vec<u8>) {
        self.m.adverts.inc();
        let mut k = Match::Mac(mac);
        if !self.devs.contains_key(&k) {
            // A beacon's identity, or an unlisted address when unknown devices are allowed.
            let beacon_like = matches!(key, AdKey::Manufacturer(decode::beacon::APPLE_COMPANY_ID))
                || matches!(key, AdKey::Service(u) if uuid16(&u) == Some(decode::beacon::EDDYSTONE_UUID16));
            let mut found = false;
            if self.has_beacons && beacon_like {
                if let Some(Ok(d)) = Self::decode(mac, key, &data, &mut Default::default()) {
                    if let Some(b) = d.beacon {
                        let bk = Match::Beacon(b);
                        if self.devs.contains_key(&bk) {
                            // Bounded: beacons on phones rotate their address.
                            if self.beacon_macs.len() >= 4 * self.devs.len() + 16 {
                                self.beacon_macs.clear();
                            }
                            self.beacon_macs.insert(mac, bk.clone());
                            k = bk;
                            found = true;
                        }
                    }
                }
            }
            if !found {
                if !self.cfg.allow_unknown {
                    self.m.ignored.inc();
                    return;
                }
                match Self::decode(mac, key, &data, &mut Default::default()) {
                    Some(Ok(d)) if !d.measurements.is_empty() || d.beacon.is_some() => {
                        let id = format!("ble/{}", mac_hex(&mac));
                        let spec = device_spec(&id, &k, self.cfg.rssi, &[]);
                        let _ = self.ctx.registry.upsert(spec.clone());
                        self.devs
                            .insert(k.clone(), Dev::new(spec, Default::default(), self.cfg.raw));
                    }
                    _ => {
                        self.m.ignored.inc();
                        return;
                    }
                }
            }
        }
        let now = Instant::now();
        self.last_allowed = now;
        let min_interval = Duration::from_millis(self.cfg.min_interval_ms);
        let rssi_on = self.cfg.rssi;
        let Some(dev) = self.devs.get_mut(&k) else {
            return;
        };
        dev.heard = Some(now);
        let came_back = dev.present != Some(true);
        if came_back {
            dev.present = Some(true);
            let id = dev.id.clone();
            self.ctx
                .registry
                .set_availability(id.as_str(), Availability::Online);
            self.push(&id, "present", Value::Bool(true), None);
        }
        let Some(dev) = self.devs.get_mut(&k) else {
            return;
        };
        if dev.last_data.get(&key) == Some(&data) {
            self.m.repeats.inc();
            return;
        }
        let decoded = Self::decode(mac, key, &data, &mut dev.keys);
        match decoded {
            None => {
                dev.last_data.insert(key, data.clone());
                if !dev.raw {
                    self.m.unknown_format.inc();
                    return;
                }
                if dev
                    .last_emit
                    .is_some_and(|t| now.duration_since(t) < min_interval)
                {
                    self.m.rate_limited.inc();
                    return;
                }
                dev.last_emit = Some(now);
                let point = match key {
                    AdKey::Manufacturer(c) => format!("manufacturer_{c:04x}"),
                    AdKey::Service(u) => match uuid16(&u) {
                        Some(s) => format!("service_{s:04x}"),
                        None => format!("service_{}", u.simple()),
                    },
                };
                let (id, rssi) = (dev.id.clone(), dev.rssi);
                self.push(&id, &point, Value::from(decode::hex(&data).as_str()), None);
                if let (true, Some(r)) = (rssi_on, rssi) {
                    self.push(&id, "rssi", Value::I64(i64::from(r)), Some("dBm"));
                }
            }
            Some(Err(e)) => {
                // Kept too: BlueZ's repeats of one bad advert count once.
                dev.last_data.insert(key, data);
                tracing::debug!(source = %self.name, device = %dev.id.as_str(), "{e}");
                self.m.decode_error(&e);
            }
            Some(Ok(d)) => {
                dev.last_data.insert(key, data);
                if let Some(p) = &d.problem {
                    self.m.decode_error(p);
                }
                match d.dedupe {
                    Some(c) => {
                        if dev.last_counter.insert(d.format, c) == Some(c) {
                            self.m.repeats.inc();
                            return;
                        }
                    }
                    None => {
                        if dev
                            .last_emit
                            .is_some_and(|t| now.duration_since(t) < min_interval)
                        {
                            self.m.rate_limited.inc();
                            return;
                        }
                    }
                }
                dev.last_emit = Some(now);
                let (id, rssi) = (dev.id.clone(), dev.rssi);
                // The format as the model, the firmware a BTHome device announces: told once.
                let model = d.format.model();
                if dev.spec.meta.model.as_deref() != Some(model)
                    || (d.firmware.is_some() && dev.spec.meta.firmware != d.firmware)
                {
                    dev.spec.meta.model = Some(model.to_string());
                    if d.firmware.is_some() {
                        dev.spec.meta.firmware = d.firmware.clone();
                    }
                    if let Err(e) = self.ctx.registry.upsert(dev.spec.clone()) {
                        tracing::warn!(source = %self.name, "{e}");
                    }
                }
                for m in d.measurements {
                    self.push(&id, &m.name, m.value, m.unit);
                }
                if let (true, Some(r)) = (rssi_on, rssi) {
                    self.push(&id, "rssi", Value::I64(i64::from(r)), Some("dBm"));
                }
            }
        }
    }

    /// Devices silent for `away_after_s` (since they were last heard, or since the start for
    /// those never heard) become `present=false`.
    fn sweep_presence(&mut self) {
        let away = Duration::from_secs(self.cfg.away_after_s);
        let now = Instant::now();
        let mut gone = Vec::new();
        for d in self.devs.values_mut() {
            let since = d.heard.unwrap_or(self.started);
            if d.present != Some(false) && now.duration_since(since) >= away {
                d.present = Some(false);
                gone.push(d.id.clone());
            }
        }
        for id in gone {
            self.ctx
                .registry
                .set_availability(id.as_str(), Availability::Offline);
            self.push(&id, "present", Value::Bool(false), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid16_and_peripheral_ids() {
        let u = Uuid::parse_str("0000fcd2-0000-1000-8000-00805f9b34fb").unwrap();
        assert_eq!(uuid16(&u), Some(0xFCD2));
        let other = Uuid::parse_str("6e400001-b5a3-f393-e0a9-e50e24dcca9e").unwrap();
        assert_eq!(uuid16(&other), None);
        assert_eq!(
            mac_of_peripheral("hci0/dev_A4_C1_38_11_22_33"),
            Some([0xA4, 0xC1, 0x38, 0x11, 0x22, 0x33])
        );
        assert_eq!(mac_of_peripheral("hci0"), None);
    }
}
