//! Zigbee adapter: a TI Z-Stack 3.x ZNP coordinator stick (CC2652P/R, CC1352P, CC2531) on a
//! serial port, as a Weir source (`kind: zigbee`).
//!
//! What it does, in order: opens the port (`weir-serial`), skips the CC2652 serial bootloader,
//! resets the ZNP, pings it, logs its version, reads the NV item that says whether it holds a
//! network. A stick that holds one is **adopted** (started from its NV state, never re-formed: that
//! would orphan every paired device); a blank stick **forms** one from gateway.yaml (channel, PAN
//! id, extended PAN id, network key generated at random once and kept in the state directory,
//! never printed). It registers the HA endpoint, optionally opens the network for joining, and then
//! serves: device announces start an **interview** (node descriptor, active endpoints, simple
//! descriptors, Basic manufacturer and model) whose result goes to the device database
//! ([`db`], in the state directory) and to the registry (points with units and classes); ZCL
//! attribute reports become readings; on/off commands from the router are sent and answered from
//! AF_DATA_CONFIRM and the ZCL default response.
//!
//! Invariants:
//! * The source never returns an error because the coordinator went away or wedged (an SREQ
//!   without SRSP): it logs one line, marks its devices offline, reopens the port with backoff (a `/dev/serial/by-id` path that reappears
//!   works) and re-runs start-up; commands meanwhile are answered at once with an error.
//! * Devices in the database are declared to the registry at start, before the coordinator
//!   answers, so their command topics exist and a restart needs no re-pairing.
//! * Every command is answered exactly once.
//! * The network key is never logged; a user-set key equal to the well-known default is warned
//!   about.

pub mod cli;
pub mod config;
pub mod db;
pub mod link;
pub mod mt;
pub mod xiaomi;
pub mod zcl;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use weir_core::{
    Availability, Backoff, BuildError, Command, Counter, DeviceId, DeviceInfo, DeviceMeta,
    DeviceSpec, Metrics, PointId, PointSpec, Quality, Reading, Source, SourceBuilder,
    SourceContext, SourceError, Timestamp, Value, ValueType,
};

pub use config::ZigbeeConfig;
use config::{format_ieee, parse_ieee, parse_key, DEFAULT_NETWORK_KEY};
use db::{DbDevice, DeviceDb, Endpoint};
use link::{Link, LinkCounters, LinkError};
use mt::*;
use zcl::{Decoded, MeasureKind, ZclFrame};

/// NV item ids (Z-Stack `ZComDef.h`; SYS_OSAL_NV_READ, MT API §3.8.1.8, reads them).
mod nv {
    pub const EXTPANID: u16 = 0x002D;
    pub const PRECFGKEY: u16 = 0x0062;
    pub const PRECFGKEYS_ENABLE: u16 = 0x0063;
    pub const PANID: u16 = 0x0083;
    pub const CHANLIST: u16 = 0x0084;
    pub const LOGICAL_TYPE: u16 = 0x0087;
    pub const ZDO_DIRECT_CB: u16 = 0x008F;
    /// Written (0x55) once a network was formed, by every host: 0x0060 on Z-Stack 3.x, 0x0F00 on
    /// Z-Stack 1.2 (zigpy-znp's and zigbee-herdsman's `HAS_CONFIGURED_ZSTACK3` / `_ZSTACK1`). A
    /// stick formed by either host, on either item, is adopted. (Until the herdsman cross-check,
    /// weir wrote 0x0F00 on Z-Stack 3 too; such sticks are still adopted.)
    pub const HAS_CONFIGURED_ZSTACK3: u16 = 0x0060;
    pub const HAS_CONFIGURED_ZSTACK1: u16 = 0x0F00;
    pub const HAS_CONFIGURED_VALUE: u8 = 0x55;
}

/// ZDO_STATE_CHANGE_IND: DEV_ZB_COORD (MT API §3.12.2.22).
const STATE_STARTED_AS_COORDINATOR: u8 = 9;
/// The endpoint this adapter registers (HA profile).
const OUR_ENDPOINT: u8 = 1;
const PROFILE_HA: u16 = 0x0104;
/// AF_DATA_REQUEST options: APS acknowledgement requested (MT API §3.2.1.2, AF_TXOPTIONS_ACK_REQUEST).
const AF_ACK_REQUEST: u8 = 0x10;

/// MT/Z-Stack status names used in command results (`ZComDef.h`).
fn mt_status_name(s: u8) -> String {
    match s {
        0x00 => "SUCCESS".into(),
        0x01 => "FAILURE".into(),
        0x02 => "INVALID_PARAMETER".into(),
        0x10 => "MEM_ERROR".into(),
        0xB7 => "APS_NO_ACK".into(),
        0xC2 => "NWK_INVALID_REQUEST".into(),
        0xCD => "NWK_NO_ROUTE".into(),
        0xE1 => "MAC_CHANNEL_ACCESS_FAILURE".into(),
        0xE9 => "MAC_NO_ACK".into(),
        0xF0 => "MAC_TRANSACTION_EXPIRED".into(),
        other => format!("status 0x{other:02X}"),
    }
}

impl SourceBuilder for ZigbeeConfig {
    fn kind(&self) -> &'static str {
        "zigbee"
    }

    /// The coordinator (its `permit_join` point). Paired devices are added at run time.
    fn devices(&self) -> Vec<DeviceInfo> {
        vec![DeviceInfo {
            device: DeviceId::new(&self.coordinator_id),
            writable_points: vec![PointId::new("permit_join")],
        }]
    }

    fn device_specs(&self) -> Vec<DeviceSpec> {
        vec![coordinator_spec(&self.coordinator_id)]
    }

    fn build(&self, name: &str, metrics: &Metrics) -> Result<Box<dyn Source>, BuildError> {
        if let Some((key, msg)) = self.validate().into_iter().next() {
            return Err(BuildError {
                source_name: name.to_string(),
                message: format!("{key}: {msg}"),
            });
        }
        Ok(Box::new(ZigbeeSource::new(self.clone(), name, metrics)))
    }
}

fn coordinator_spec(id: &str) -> DeviceSpec {
    let mut s = DeviceSpec::new(DeviceId::new(id)).point(
        PointSpec::new(PointId::new("permit_join"))
            .unit(Some("s"))
            .value_type(ValueType::Int)
            .writable(true),
    );
    s.meta.name = Some("Zigbee coordinator".into());
    s
}

/// The registry's view of a paired device: a point per known measurement of its server
/// clusters (on/off writable), plus `lqi`.
pub fn device_spec(id: &str, d: &DbDevice) -> DeviceSpec {
    let mut spec = DeviceSpec::new(DeviceId::new(id));
    for ep in &d.endpoints {
        for c in &ep.in_clusters {
            if *c == zcl::CLUSTER_IAS_ZONE {
                let (alarm, class, _) = zcl::ias_alarm_point(d.ias_zone_type);
                for (point, class) in [
                    (alarm, class),
                    ("tamper", "tamper"),
                    ("battery_low", "battery"),
                ] {
                    if !spec.points.iter().any(|p| p.name.as_str() == point) {
                        spec.points.push(
                            PointSpec::new(PointId::new(point))
                                .class(Some(class))
                                .value_type(ValueType::Bool),
                        );
                    }
                }
            }
            for m in zcl::measures_of_cluster(*c) {
                if spec.points.iter().any(|p| p.name.as_str() == m.point) {
                    continue;
                }
                spec.points.push(
                    PointSpec::new(PointId::new(m.point))
                        .unit(m.unit)
                        .class(m.class)
                        .value_type(match m.kind {
                            MeasureKind::Float => ValueType::Float,
                            MeasureKind::Bool => ValueType::Bool,
                        })
                        .writable(matches!(*c, zcl::CLUSTER_ON_OFF | zcl::CLUSTER_LEVEL)),
                );
            }
        }
    }
    if xiaomi::is_lumi(d.manufacturer.as_deref(), d.model.as_deref()) {
        for m in xiaomi::points(d.model.as_deref()) {
            if !spec.points.iter().any(|p| p.name.as_str() == m.point) {
                spec.points.push(
                    PointSpec::new(PointId::new(m.point))
                        .unit(m.unit)
                        .class(m.class)
                        .value_type(ValueType::Float),
                );
            }
        }
    }
    spec.points.push(
        PointSpec::new(PointId::new("lqi"))
            .value_type(ValueType::Int)
            .class(Some("signal_strength")),
    );
    spec.points.push(
        PointSpec::new(PointId::new("available"))
            .value_type(ValueType::Bool)
            .class(Some("connectivity")),
    );
    spec.meta = DeviceMeta {
        name: None,
        manufacturer: d.manufacturer.clone(),
        model: d.model.clone(),
        firmware: None,
    };
    spec
}

/// Counters on `/metrics` (`weir_zigbee_*_total{source}`).
#[derive(Debug, Clone)]
struct ZMetrics {
    link: LinkCounters,
    reconnects: Counter,
    reports: Counter,
    unknown_attributes: Counter,
    unknown_senders: Counter,
    joins: Counter,
    commands: Counter,
}

impl ZMetrics {
    fn new(m: &Metrics, source: &str) -> ZMetrics {
        let c = |n: &str| m.counter(&format!("weir_zigbee_{n}_total"), &[("source", source)]);
        ZMetrics {
            link: LinkCounters {
                frames_in: c("frames_in"),
                frames_out: c("frames_out"),
                bad_frames: c("bad_frames"),
                stray_bytes: c("stray_bytes"),
                sreq_timeouts: c("sreq_timeouts"),
            },
            reconnects: c("reconnects"),
            reports: c("reports"),
            unknown_attributes: c("unknown_attributes"),
            unknown_senders: c("unknown_senders"),
            joins: c("joins"),
            commands: c("commands"),
        }
    }
}

/// A running `zigbee` source.
#[derive(Debug)]
pub struct ZigbeeSource {
    cfg: ZigbeeConfig,
    name: Arc<str>,
    m: ZMetrics,
}

impl ZigbeeSource {
    pub fn new(cfg: ZigbeeConfig, name: &str, metrics: &Metrics) -> ZigbeeSource {
        ZigbeeSource {
            m: ZMetrics::new(metrics, name),
            cfg,
            name: Arc::from(name),
        }
    }
}

/// The network key: the configured one, else the one kept in `dir/network.key`, else a new random
/// one written there (mode 0600) first.
pub fn network_key(dir: &Path, cfg: &ZigbeeConfig) -> std::io::Result<[u8; 16]> {
    if let Some(k) = cfg.network_key.as_deref().and_then(parse_key) {
        if k == DEFAULT_NETWORK_KEY {
            tracing::warn!(
                "zigbee network_key is the well-known default key: anyone in radio range can read this network's traffic; remove it to have a random key generated"
            );
        }
        return Ok(k);
    }
    let path = dir.join("network.key");
    match std::fs::read_to_string(&path) {
        Ok(s) => parse_key(s.trim()).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} does not hold 32 hex digits", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key: [u8; 16] = rand::random();
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(hex.as_bytes())?;
            f.sync_all()?;
            tracing::info!(file = %path.display(), "generated a new random zigbee network key");
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

struct Run<'a> {
    cfg: &'a ZigbeeConfig,
    name: Arc<str>,
    m: &'a ZMetrics,
    ctx: &'a SourceContext,
    db: DeviceDb,
    key: [u8; 16],
    tsn: u8,
    /// The coordinator's IEEE address (UTIL_GET_DEVICE_INFO): devices bind to it.
    coord_ieee: Option<u64>,
    by_nwk: HashMap<u16, u64>,
    /// When each device was last heard, and whether it was declared offline.
    heard: HashMap<u64, Heard>,
    commands_open: bool,
    /// When link qualities and last-seen times were last written to the database.
    flushed_at: tokio::time::Instant,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    at: tokio::time::Instant,
    /// The last active check of a mains device (it is not checked again sooner).
    checked: Option<tokio::time::Instant>,
    offline: bool,
}

#[async_trait]
impl Source for ZigbeeSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError> {
        let key = network_key(&ctx.state_dir, &self.cfg)?;
        let db = DeviceDb::open(&ctx.state_dir).map_err(|e| SourceError::Other(e.to_string()))?;
        let mut run = Run {
            cfg: &self.cfg,
            name: self.name.clone(),
            m: &self.m,
            ctx: &ctx,
            by_nwk: db.devices.iter().map(|(k, d)| (d.nwk, *k)).collect(),
            db,
            key,
            tsn: 0,
            coord_ieee: None,
            heard: HashMap::new(),
            commands_open: true,
            flushed_at: tokio::time::Instant::now(),
        };
        let now = tokio::time::Instant::now();
        for ieee in run.db.devices.keys() {
            run.heard.insert(
                *ieee,
                Heard {
                    at: now,
                    checked: None,
                    offline: false,
                },
            );
        }
        run.declare_all();
        let mut backoff = Backoff::new(
            Duration::from_millis(self.cfg.reopen_backoff_ms.max(1)),
            Duration::from_secs(30),
        );
        let port = self.cfg.serial.port.display().to_string();
        let mut down_since: Option<std::time::Instant> = None;
        let mut logged_down = false;
        loop {
            if ctx.shutdown.is_cancelled() {
                return Ok(());
            }
            let started = tokio::select! {
                _ = ctx.shutdown.cancelled() => return Ok(()),
                r = run.open_and_start() => r,
            };
            match started {
                Ok(link) => {
                    if let Some(t) = down_since.take() {
                        tracing::info!(
                            source = %self.name, port,
                            "zigbee coordinator is back after {:.1} s; carrying on",
                            t.elapsed().as_secs_f64()
                        );
                    }
                    backoff.reset();
                    match run.serve(link).await {
                        Ok(()) => return Ok(()),
                        Err(e @ LinkError::Reset { .. }) => {
                            // Its network state is in NV: run start-up again at once.
                            self.m.reconnects.inc();
                            tracing::warn!(source = %self.name, port, "{e}; running start-up again");
                            continue;
                        }
                        Err(e) => {
                            self.m.reconnects.inc();
                            down_since = Some(std::time::Instant::now());
                            logged_down = true;
                            tracing::warn!(
                                source = %self.name, port,
                                "zigbee coordinator lost ({e}); readings stop until it is back, reopening with backoff"
                            );
                            run.mark_offline();
                            run.flush_seen();
                        }
                    }
                }
                Err(e) => {
                    if !logged_down {
                        logged_down = true;
                        down_since.get_or_insert_with(std::time::Instant::now);
                        tracing::warn!(
                            source = %self.name, port,
                            "zigbee coordinator not available ({e}); retrying with backoff"
                        );
                    } else {
                        tracing::debug!(source = %self.name, port, "zigbee coordinator still not available: {e}");
                    }
                }
            }
            let delay = backoff.next_delay();
            if !run.wait_answering(delay).await {
                return Ok(());
            }
        }
    }
}

fn le16(p: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*p.get(i)?, *p.get(i + 1)?]))
}

impl Run<'_> {
    fn device_id(&self, ieee: u64) -> String {
        self.cfg.device_id(ieee)
    }

    /// Declare the coordinator and every device of the database to the registry.
    fn declare_all(&self) {
        if let Err(e) = self
            .ctx
            .registry
            .upsert(coordinator_spec(&self.cfg.coordinator_id))
        {
            tracing::error!(source = %self.name, "{e}");
        }
        for (ieee, d) in &self.db.devices {
            let id = self.device_id(*ieee);
            if let Err(e) = self.ctx.registry.upsert(device_spec(&id, d)) {
                tracing::error!(source = %self.name, "{e}");
            }
        }
    }

    fn mark_offline(&self) {
        for ieee in self.db.devices.keys() {
            self.ctx
                .registry
                .set_availability(&self.device_id(*ieee), Availability::Offline);
        }
    }

    /// Sleep `d`, answering commands with an error meanwhile; false when shut down.
    async fn wait_answering(&mut self, d: Duration) -> bool {
        let until = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = self.ctx.shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                c = self.ctx.commands.recv(), if self.commands_open => match c {
                    Some(c) => {
                        let _ = c.reply.send(Err("the zigbee coordinator is not connected".into()));
                    }
                    None => self.commands_open = false,
                },
            }
        }
    }

    fn next_tsn(&mut self) -> u8 {
        self.tsn = self.tsn.wrapping_add(1);
        self.tsn
    }

    fn device_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.device_timeout_ms)
    }

    async fn open_and_start(&mut self) -> Result<Link, LinkError> {
        let port = self.cfg.serial.open().map_err(std::io::Error::from)?;
        let mut link = Link::new(
            port,
            Duration::from_millis(self.cfg.sreq_timeout_ms),
            self.m.link.clone(),
        );
        // CC2652/CC1352 serial bootloader: 0xEF makes it jump to the application (a running
        // ZNP counts it as one stray byte).
        link.write_raw(&[0xEF]).await?;
        // SYS_RESET_REQ type 1 (soft reset, MT API §3.8.1.1), answered by SYS_RESET_IND.
        link.areq(SYS_RESET_REQ, vec![0x01]).await?;
        match link
            .wait_for("SYS_RESET_IND", self.device_timeout(), |f| {
                f.is(SYS_RESET_IND)
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is_port_gone() => return Err(e),
            Err(e) => tracing::debug!(source = %self.name, "no reset indication ({e}); going on"),
        }
        link.clear_queue();
        link.sreq(SYS_PING, vec![]).await?;
        let v = link.sreq(SYS_VERSION, vec![]).await?;
        if v.len() >= 5 {
            let build = if v.len() >= 9 {
                u32::from_le_bytes([v[5], v[6], v[7], v[8]])
            } else {
                0
            };
            tracing::info!(
                source = %self.name,
                "Z-Stack ZNP {}.{}.{} (product {}, transport {}, build {build})",
                v[2], v[3], v[4], v[1], v[0]
            );
        }
        // SYS_VERSION's product id: 0 is Z-Stack 1.2, 1 and 2 are Z-Stack 3.x.
        let zstack3 = v.get(1).is_some_and(|p| *p != 0);
        let configured_item = if zstack3 {
            nv::HAS_CONFIGURED_ZSTACK3
        } else {
            nv::HAS_CONFIGURED_ZSTACK1
        };
        let mut formed = false;
        for item in [nv::HAS_CONFIGURED_ZSTACK3, nv::HAS_CONFIGURED_ZSTACK1] {
            if self.nv_read(&mut link, item).await? == Some(vec![nv::HAS_CONFIGURED_VALUE]) {
                formed = true;
                break;
            }
        }
        if formed {
            let pan = self.nv_read(&mut link, nv::PANID).await?;
            tracing::info!(
                source = %self.name,
                "adopting the network the coordinator holds (PAN id {})",
                pan.as_deref().and_then(|p| le16(p, 0)).map(|p| format!("0x{p:04X}")).unwrap_or_else(|| "?".into())
            );
            // ZDO_STARTUP_FROM_APP (§3.12.1.26), start delay 100 ms.
            link.sreq(ZDO_STARTUP_FROM_APP, vec![100, 0]).await?;
        } else {
            self.form(&mut link, configured_item).await?;
        }
        link.wait_for(
            "ZDO_STATE_CHANGE_IND (started as coordinator)",
            Duration::from_secs(30),
            |f| {
                f.is(ZDO_STATE_CHANGE_IND)
                    && f.payload.first() == Some(&STATE_STARTED_AS_COORDINATOR)
            },
        )
        .await?;
        // UTIL_GET_DEVICE_INFO (§3.10.1.1): Status, IEEE address, short address, …
        let info = link.sreq_ok(UTIL_GET_DEVICE_INFO, vec![]).await?;
        self.coord_ieee = info
            .get(1..9)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
        // AF_REGISTER (MT_AF): endpoint 1, HA profile, device 0x0005 (configuration tool),
        // Basic + On/Off in and out.
        let mut reg = vec![OUR_ENDPOINT];
        reg.extend_from_slice(&PROFILE_HA.to_le_bytes());
        reg.extend_from_slice(&0x0005u16.to_le_bytes());
        reg.extend_from_slice(&[0, 0]);
        for _ in 0..2 {
            reg.push(2);
            reg.extend_from_slice(&zcl::CLUSTER_BASIC.to_le_bytes());
            reg.extend_from_slice(&zcl::CLUSTER_ON_OFF.to_le_bytes());
        }
        let s = link.sreq(AF_REGISTER, reg).await?;
        // 0xB8 (APS_DUPLICATE_ENTRY): already registered, as after a soft reset that kept it.
        if !matches!(s.first(), Some(0x00) | Some(0xB8)) {
            return Err(LinkError::Status {
                cmd: AF_REGISTER.name,
                status: s.first().copied().unwrap_or(0xFF),
            });
        }
        if self.cfg.permit_join_s > 0 {
            self.permit_join(&mut link, self.cfg.permit_join_s).await?;
        }
        Ok(link)
    }

    async fn nv_read(&self, link: &mut Link, id: u16) -> Result<Option<Vec<u8>>, LinkError> {
        let mut p = id.to_le_bytes().to_vec();
        p.push(0);
        let r = link.sreq(SYS_OSAL_NV_READ, p).await?;
        // Status, Len, Value (§3.8.1.8); any status but SUCCESS: the item does not exist.
        if r.first() != Some(&0) {
            return Ok(None);
        }
        let n = *r.get(1).unwrap_or(&0) as usize;
        Ok(Some(r.get(2..2 + n).unwrap_or(&[]).to_vec()))
    }

    async fn nv_write(&self, link: &mut Link, id: u16, value: &[u8]) -> Result<(), LinkError> {
        let mut p = id.to_le_bytes().to_vec();
        p.push(0);
        p.push(value.len() as u8);
        p.extend_from_slice(value);
        link.sreq_ok(SYS_OSAL_NV_WRITE, p).await.map(|_| ())
    }

    /// Form a network from the configuration (Z-Stack 3 BDB formation).
    async fn form(&self, link: &mut Link, configured_item: u16) -> Result<(), LinkError> {
        let ext = parse_ieee(&self.cfg.extended_pan_id).unwrap_or(0xDDDD_DDDD_DDDD_DDDD);
        let mask: u32 = 1 << self.cfg.channel;
        tracing::info!(
            source = %self.name,
            "the coordinator holds no network: forming one on channel {} with PAN id 0x{:04X}, extended PAN id {}",
            self.cfg.channel, self.cfg.pan_id, format_ieee(ext)
        );
        self.nv_write(link, nv::LOGICAL_TYPE, &[0]).await?;
        self.nv_write(link, nv::PANID, &self.cfg.pan_id.to_le_bytes())
            .await?;
        self.nv_write(link, nv::EXTPANID, &ext.to_le_bytes())
            .await?;
        self.nv_write(link, nv::CHANLIST, &mask.to_le_bytes())
            .await?;
        self.nv_write(link, nv::PRECFGKEY, &self.key).await?;
        self.nv_write(link, nv::PRECFGKEYS_ENABLE, &[1]).await?;
        self.nv_write(link, nv::ZDO_DIRECT_CB, &[1]).await?;
        let mut primary = vec![1];
        primary.extend_from_slice(&mask.to_le_bytes());
        link.sreq_ok(APP_CNF_BDB_SET_CHANNEL, primary).await?;
        link.sreq_ok(APP_CNF_BDB_SET_CHANNEL, vec![0, 0, 0, 0, 0])
            .await?;
        // Mode 0x04: network formation.
        link.sreq_ok(APP_CNF_BDB_START_COMMISSIONING, vec![0x04])
            .await?;
        loop {
            let n = link
                .wait_for(
                    "APP_CNF_BDB_COMMISSIONING_NOTIFICATION",
                    Duration::from_secs(60),
                    |f| f.is(APP_CNF_BDB_COMMISSIONING_NOTIFICATION),
                )
                .await?;
            match n.payload.first() {
                Some(0) => break,    // success
                Some(1) => continue, // in progress
                other => {
                    return Err(LinkError::Status {
                        cmd: APP_CNF_BDB_COMMISSIONING_NOTIFICATION.name,
                        status: other.copied().unwrap_or(0xFF),
                    })
                }
            }
        }
        // Mark the stick as configured (item init: 0x09 means created, 0 means it existed).
        let mut p = configured_item.to_le_bytes().to_vec();
        p.extend_from_slice(&[1, 0, 1, nv::HAS_CONFIGURED_VALUE]);
        let s = link.sreq(SYS_OSAL_NV_ITEM_INIT, p).await?;
        if s.first() == Some(&0) {
            self.nv_write(link, configured_item, &[nv::HAS_CONFIGURED_VALUE])
                .await?;
        }
        tracing::info!(source = %self.name, "network formed");
        Ok(())
    }

    async fn permit_join(&self, link: &mut Link, seconds: u8) -> Result<(), LinkError> {
        // ZDO_MGMT_PERMIT_JOIN_REQ (§3.12.1.22): broadcast to all routers and the coordinator.
        link.sreq_ok(ZDO_MGMT_PERMIT_JOIN_REQ, vec![0x0F, 0xFC, 0xFF, seconds, 1])
            .await?;
        tracing::info!(source = %self.name, "zigbee network open for joining for {seconds} s");
        Ok(())
    }

    /// Serve until shutdown (`Ok`) or the coordinator fails (`Err`).
    async fn serve(&mut self, mut link: Link) -> Result<(), LinkError> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.ctx.shutdown.cancelled() => {
                    self.flush_seen();
                    return Ok(());
                }
                _ = tick.tick() => {
                    self.availability(&mut link).await?;
                    if self.flushed_at.elapsed() >= db::SEEN_FLUSH_INTERVAL {
                        self.flush_seen();
                    }
                }
                c = self.ctx.commands.recv(), if self.commands_open => match c {
                    Some(c) => self.command(&mut link, c).await?,
                    None => self.commands_open = false,
                },
                f = link.next_callback() => {
                    let f = f?;
                    self.callback(&mut link, f).await?;
                }
            }
        }
    }

    async fn callback(&mut self, link: &mut Link, f: Frame) -> Result<(), LinkError> {
        if f.is(AF_INCOMING_MSG) {
            let p = &f.payload;
            let enroll = le16(p, 2) == Some(zcl::CLUSTER_IAS_ZONE)
                && p.get(17..).and_then(ZclFrame::parse).is_some_and(|z| {
                    z.is_cluster_from_server() && z.command == zcl::IAS_ZONE_ENROLL_REQUEST
                });
            self.incoming(p);
            if enroll {
                let (nwk, ep) = (le16(p, 4).unwrap_or(0), p.get(6).copied().unwrap_or(1));
                self.ias_enroll(link, nwk, ep).await?;
            }
        } else if f.is(ZDO_END_DEVICE_ANNCE_IND) {
            let p = &f.payload;
            if p.len() >= 13 {
                let nwk = le16(p, 2).unwrap_or(0);
                let ieee = u64::from_le_bytes(p[4..12].try_into().expect("8 bytes"));
                self.m.joins.inc();
                self.interview(link, nwk, ieee).await?;
            }
        } else if f.is(ZDO_LEAVE_IND) {
            let p = &f.payload;
            if p.len() >= 13 {
                let ieee = u64::from_le_bytes(p[2..10].try_into().expect("8 bytes"));
                let rejoin = p[12] != 0;
                let removed = if rejoin {
                    None
                } else {
                    self.db.delete(ieee).unwrap_or_else(|e| {
                        tracing::error!(source = %self.name, "{e}");
                        self.db.devices.remove(&ieee)
                    })
                };
                if removed.is_some() {
                    let id = self.device_id(ieee);
                    self.ctx.registry.remove(&id);
                    self.by_nwk.retain(|_, v| *v != ieee);
                    self.heard.remove(&ieee);
                    tracing::info!(source = %self.name, device = %id, "zigbee device left the network");
                }
            }
        } else if f.is(SYS_RESET_IND) {
            return Err(LinkError::Reset {
                reason: f.payload.first().copied().unwrap_or(0),
            });
        } else {
            tracing::debug!(source = %self.name, frame = %f.name(), "callback ignored");
        }
        Ok(())
    }

    /// Note that `ieee` was heard; a device declared offline is online again.
    fn heard_from(&mut self, ieee: u64) {
        let now = tokio::time::Instant::now();
        self.db.seen(ieee, None);
        let was_offline = self.heard.get(&ieee).is_some_and(|h| h.offline);
        self.heard.insert(
            ieee,
            Heard {
                at: now,
                checked: None,
                offline: false,
            },
        );
        if was_offline {
            self.set_available(ieee, true);
        }
    }

    /// Publish availability as the device's `available` reading and tell the registry.
    fn set_available(&self, ieee: u64, up: bool) {
        let id = self.device_id(ieee);
        tracing::info!(source = %self.name, device = %id, "zigbee device {}", if up { "online again" } else { "offline" });
        self.ctx.registry.set_availability(
            &id,
            if up {
                Availability::Online
            } else {
                Availability::Offline
            },
        );
        let r = Reading {
            device: DeviceId::new(&id),
            point: PointId::new("available"),
            value: Value::Bool(up),
            unit: None,
            ts: Timestamp::now(),
            quality: Quality::Good,
            source: self.name.clone(),
        };
        let _ = self.ctx.bus.try_send(vec![r]);
    }

    /// Availability, once a second: a battery device silent for `battery_offline_after_s` is
    /// offline; a mains device silent for `mains_check_after_s` is asked for a cheap attribute
    /// (Basic ZCLVersion) and is offline when that is not delivered.
    async fn availability(&mut self, link: &mut Link) -> Result<(), LinkError> {
        let now = tokio::time::Instant::now();
        let battery_after = Duration::from_secs(self.cfg.battery_offline_after_s);
        let mains_after = Duration::from_secs(self.cfg.mains_check_after_s);
        let mut to_check = Vec::new();
        let mut gone = Vec::new();
        for (ieee, d) in &self.db.devices {
            let Some(h) = self.heard.get(ieee) else {
                continue;
            };
            if h.offline {
                continue;
            }
            if d.mains_powered {
                let since = h.checked.map_or(h.at, |c| c.max(h.at));
                if now.duration_since(since) >= mains_after {
                    let ep = d
                        .endpoints
                        .iter()
                        .find(|e| e.in_clusters.contains(&zcl::CLUSTER_BASIC))
                        .or(d.endpoints.first())
                        .map_or(1, |e| e.id);
                    to_check.push((*ieee, d.nwk, ep));
                }
            } else if now.duration_since(h.at) >= battery_after {
                gone.push(*ieee);
            }
        }
        for ieee in gone {
            if let Some(h) = self.heard.get_mut(&ieee) {
                h.offline = true;
            }
            self.set_available(ieee, false);
        }
        for (ieee, nwk, ep) in to_check {
            if let Some(h) = self.heard.get_mut(&ieee) {
                h.checked = Some(now);
            }
            let r = self
                .af_send(link, nwk, ep, zcl::CLUSTER_BASIC, |t| {
                    ZclFrame::read_attributes(t, &[0x0000])
                })
                .await?;
            match r {
                // Delivered (APS acknowledged): it is there; its answer is read as any other.
                Ok(_) => {
                    if let Some(h) = self.heard.get_mut(&ieee) {
                        h.at = tokio::time::Instant::now();
                    }
                }
                Err(why) => {
                    tracing::debug!(source = %self.name, device = %self.device_id(ieee), "availability check failed: {why}");
                    if let Some(h) = self.heard.get_mut(&ieee) {
                        h.offline = true;
                    }
                    self.set_available(ieee, false);
                }
            }
        }
        Ok(())
    }

    /// Write `ieee`'s database row (after a pairing or a changed address).
    fn save_db(&mut self, ieee: u64) {
        if let Err(e) = self.db.put(ieee) {
            tracing::error!(source = %self.name, "{e}");
        }
    }

    /// Write the link qualities and last-seen times noted since the last flush.
    fn flush_seen(&mut self) {
        self.flushed_at = tokio::time::Instant::now();
        if let Err(e) = self.db.flush_seen() {
            tracing::error!(source = %self.name, "{e}");
        }
    }

    /// AF_INCOMING_MSG (MT_AF callback) → readings.
    fn incoming(&mut self, p: &[u8]) {
        let (Some(cluster), Some(src)) = (le16(p, 2), le16(p, 4)) else {
            return;
        };
        let (Some(lqi), Some(len)) = (p.get(9), p.get(16)) else {
            return;
        };
        let Some(data) = p.get(17..17 + *len as usize) else {
            return;
        };
        let Some(ieee) = self.by_nwk.get(&src).copied() else {
            self.m.unknown_senders.inc();
            tracing::debug!(source = %self.name, "message from unknown network address 0x{src:04X}");
            return;
        };
        self.heard_from(ieee);
        self.db.seen(ieee, Some(*lqi));
        let Some(z) = ZclFrame::parse(data) else {
            return;
        };
        let id = DeviceId::new(&self.device_id(ieee));
        let ts = Timestamp::now();
        let mk = |point: &str, value: Value, unit: Option<&str>| Reading {
            device: id.clone(),
            point: PointId::new(point),
            value,
            unit: unit.map(Arc::from),
            ts,
            quality: Quality::Good,
            source: self.name.clone(),
        };
        if cluster == zcl::CLUSTER_IAS_ZONE
            && z.is_cluster_from_server()
            && z.command == zcl::IAS_ZONE_STATUS_CHANGE
        {
            let Some(status) = le16(&z.payload, 0) else {
                return;
            };
            let zone_type = self.db.devices.get(&ieee).and_then(|d| d.ias_zone_type);
            let mut batch: Vec<Reading> = zcl::decode_zone_status(zone_type, status)
                .into_iter()
                .map(|d| match d {
                    Decoded::Bool(p, v) => mk(p, Value::Bool(v), None),
                    Decoded::Float(p, v, u) => mk(p, Value::F64(v), u),
                })
                .collect();
            batch.push(mk("lqi", Value::I64(*lqi as i64), None));
            self.m.reports.inc();
            if let Err(e) = self.ctx.bus.try_send(batch) {
                tracing::debug!(source = %self.name, "bus closed: {e}");
            }
            return;
        }
        let mut batch = Vec::new();
        // Xiaomi/Aqara's tagged values in Basic attribute 0xFF01 (with or without LUMI's
        // manufacturer code in the header).
        let ff01 = cluster == zcl::CLUSTER_BASIC
            && z.is_general()
            && z.command == zcl::REPORT_ATTRIBUTES
            && matches!(z.manufacturer, None | Some(xiaomi::MANUFACTURER_LUMI));
        if let Some(tlv) = ff01.then(|| xiaomi::find_ff01(&z.payload)).flatten() {
            let (items, cut) = xiaomi::parse_tlv(tlv);
            let model = self.db.devices.get(&ieee).and_then(|d| d.model.as_deref());
            let (decoded, unknown) = xiaomi::decode(model, &items);
            if cut || unknown > 0 {
                self.m.unknown_attributes.inc();
                tracing::debug!(
                    source = %self.name, device = %id,
                    "attribute 0xFF01: {unknown} tag(s) not decoded{}", if cut { ", cut short" } else { "" }
                );
            }
            for d in decoded {
                match d {
                    Decoded::Float(point, v, unit) => batch.push(mk(point, Value::F64(v), unit)),
                    Decoded::Bool(point, v) => batch.push(mk(point, Value::Bool(v), None)),
                }
            }
        }
        let (recs, cut) = match z.command {
            _ if !z.is_general() || z.manufacturer.is_some() => (Vec::new(), false),
            zcl::REPORT_ATTRIBUTES => zcl::parse_report(&z.payload),
            zcl::READ_ATTRIBUTES_RSP => zcl::parse_read_rsp(&z.payload),
            _ => return,
        };
        if cut {
            self.m.unknown_attributes.inc();
        }
        let empty = zcl::Scales::new();
        let scales = self.db.devices.get(&ieee).map_or(&empty, |d| &d.scales);
        for r in recs
            .iter()
            .filter(|r| !(ff01 && r.attr == xiaomi::ATTR_FF01))
        {
            match zcl::decode_scaled(cluster, r.attr, &r.value, scales) {
                Some(Decoded::Float(point, v, unit)) => batch.push(mk(point, Value::F64(v), unit)),
                Some(Decoded::Bool(point, v)) => batch.push(mk(point, Value::Bool(v), None)),
                None => {
                    self.m.unknown_attributes.inc();
                    tracing::debug!(
                        source = %self.name, device = %id,
                        "attribute 0x{:04X} of cluster 0x{cluster:04X} not decoded", r.attr
                    );
                }
            }
        }
        if batch.is_empty() {
            return;
        }
        self.m.reports.inc();
        batch.push(mk("lqi", Value::I64(*lqi as i64), None));
        if let Err(e) = self.ctx.bus.try_send(batch) {
            tracing::debug!(source = %self.name, "bus closed: {e}");
        }
    }

    /// Send `data` to `nwk`/`ep` on `cluster` and wait for AF_DATA_CONFIRM; the TSN used for
    /// both the AF transaction and the ZCL frame is returned. `Ok(Err(reason))`: not delivered.
    async fn af_send(
        &mut self,
        link: &mut Link,
        nwk: u16,
        ep: u8,
        cluster: u16,
        data: impl FnOnce(u8) -> Vec<u8>,
    ) -> Result<Result<u8, String>, LinkError> {
        let tsn = self.next_tsn();
        let data = data(tsn);
        let mut p = nwk.to_le_bytes().to_vec();
        p.push(ep);
        p.push(OUR_ENDPOINT);
        p.extend_from_slice(&cluster.to_le_bytes());
        p.extend_from_slice(&[tsn, AF_ACK_REQUEST, 30, data.len() as u8]);
        p.extend_from_slice(&data);
        let s = match link.sreq(AF_DATA_REQUEST, p).await {
            Ok(s) => s,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if s.first() != Some(&0) {
            return Ok(Err(format!(
                "coordinator refused the request: {}",
                mt_status_name(s.first().copied().unwrap_or(0xFF))
            )));
        }
        let c = match link
            .wait_for("AF_DATA_CONFIRM", self.device_timeout(), |f| {
                f.is(AF_DATA_CONFIRM) && f.payload.get(2) == Some(&tsn)
            })
            .await
        {
            Ok(c) => c,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => return Ok(Err(e.to_string())),
        };
        match c.payload.first() {
            Some(0) => Ok(Ok(tsn)),
            s => Ok(Err(format!(
                "not delivered: {}",
                mt_status_name(s.copied().unwrap_or(0xFF))
            ))),
        }
    }

    /// Wait for a ZCL frame from `nwk` on `cluster` with `tsn` and general command `cmd`.
    async fn wait_zcl(
        &self,
        link: &mut Link,
        what: &str,
        nwk: u16,
        cluster: u16,
        tsn: u8,
        cmd: u8,
    ) -> Result<Result<ZclFrame, String>, LinkError> {
        let f = link
            .wait_for(what, self.device_timeout(), |f| {
                f.is(AF_INCOMING_MSG)
                    && le16(&f.payload, 4) == Some(nwk)
                    && le16(&f.payload, 2) == Some(cluster)
                    && f.payload
                        .get(17..)
                        .and_then(ZclFrame::parse)
                        .is_some_and(|z| z.tsn == tsn && z.command == cmd && z.is_general())
            })
            .await;
        match f {
            Ok(f) => Ok(ZclFrame::parse(&f.payload[17..]).ok_or_else(|| "malformed".to_string())),
            Err(e) if e.is_fatal() => Err(e),
            Err(e) => Ok(Err(e.to_string())),
        }
    }

    /// Interview a device that announced itself, record it and declare it.
    async fn interview(&mut self, link: &mut Link, nwk: u16, ieee: u64) -> Result<(), LinkError> {
        let id = self.device_id(ieee);
        if let Some(d) = self.db.devices.get_mut(&ieee) {
            if d.interviewed {
                // A known device rejoined: keep what the interview found, note its address.
                if d.nwk != nwk {
                    self.by_nwk.retain(|_, v| *v != ieee);
                    d.nwk = nwk;
                    self.by_nwk.insert(nwk, ieee);
                    self.save_db(ieee);
                }
                tracing::info!(source = %self.name, device = %id, "known zigbee device rejoined (0x{nwk:04X})");
                self.heard_from(ieee);
                return Ok(());
            }
        }
        tracing::info!(source = %self.name, device = %id, "zigbee device {} joined (0x{nwk:04X}); interviewing", format_ieee(ieee));
        self.by_nwk.retain(|_, v| *v != ieee);
        self.by_nwk.insert(nwk, ieee);
        let mut d = DbDevice {
            ieee: format_ieee(ieee),
            nwk,
            logical_type: "unknown".into(),
            mains_powered: false,
            endpoints: Vec::new(),
            manufacturer: None,
            model: None,
            interviewed: false,
            ias_zone_type: None,
            scales: Default::default(),
            lqi: None,
            last_seen_ms: None,
        };
        let complete = match self.interview_steps(link, nwk, &mut d).await {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                tracing::warn!(source = %self.name, device = %id, "interview incomplete: {why}");
                false
            }
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => {
                tracing::warn!(source = %self.name, device = %id, "interview incomplete: {e}");
                false
            }
        };
        d.interviewed = complete;
        let spec = device_spec(&id, &d);
        let points: Vec<String> = spec.points.iter().map(|p| p.name.to_string()).collect();
        if let Err(e) = self.ctx.registry.upsert(spec) {
            tracing::error!(source = %self.name, "{e}");
        }
        tracing::info!(
            source = %self.name, device = %id,
            "zigbee device paired: {} {} ({}, {}), points: {}",
            d.manufacturer.as_deref().unwrap_or("?"), d.model.as_deref().unwrap_or("?"),
            d.logical_type, if d.mains_powered { "mains" } else { "battery" }, points.join(", ")
        );
        self.db.devices.insert(ieee, d);
        self.save_db(ieee);
        self.heard_from(ieee);
        Ok(())
    }

    async fn interview_steps(
        &mut self,
        link: &mut Link,
        nwk: u16,
        d: &mut DbDevice,
    ) -> Result<Result<(), String>, LinkError> {
        let to = self.device_timeout();
        let addr = [nwk.to_le_bytes(), nwk.to_le_bytes()].concat();
        let for_nwk = |c: Cmd| move |f: &Frame| f.is(c) && le16(&f.payload, 3) == Some(nwk);
        // Node descriptor (ZDO_NODE_DESC_REQ / §3.12.2.3).
        link.sreq_ok(ZDO_NODE_DESC_REQ, addr.clone()).await?;
        let n = link
            .wait_for("ZDO_NODE_DESC_RSP", to, for_nwk(ZDO_NODE_DESC_RSP))
            .await?;
        let p = &n.payload;
        if p.get(2) != Some(&0) || p.len() < 8 {
            return Ok(Err("node descriptor request failed".into()));
        }
        d.logical_type = match p[5] & 0x07 {
            0 => "coordinator",
            1 => "router",
            2 => "end_device",
            _ => "unknown",
        }
        .into();
        d.mains_powered = p[7] & 0x04 != 0;
        // Active endpoints (§3.12.1.6 / §3.12.2.6).
        link.sreq_ok(ZDO_ACTIVE_EP_REQ, addr.clone()).await?;
        let a = link
            .wait_for("ZDO_ACTIVE_EP_RSP", to, for_nwk(ZDO_ACTIVE_EP_RSP))
            .await?;
        let p = &a.payload;
        if p.get(2) != Some(&0) {
            return Ok(Err("active endpoints request failed".into()));
        }
        let count = *p.get(5).unwrap_or(&0) as usize;
        let eps: Vec<u8> = p.get(6..6 + count).unwrap_or(&[]).to_vec();
        // Simple descriptors (§3.12.1.5 / ZDO_SIMPLE_DESC_RSP).
        for ep in eps {
            let mut q = addr.clone();
            q.push(ep);
            link.sreq_ok(ZDO_SIMPLE_DESC_REQ, q).await?;
            let s = link
                .wait_for("ZDO_SIMPLE_DESC_RSP", to, for_nwk(ZDO_SIMPLE_DESC_RSP))
                .await?;
            match parse_simple_desc(&s.payload) {
                Some(e) => d.endpoints.push(e),
                None => {
                    return Ok(Err(format!(
                        "simple descriptor of endpoint {ep} unreadable"
                    )))
                }
            }
        }
        // Basic cluster: manufacturer, model, power source.
        if let Some(ep) = d
            .endpoints
            .iter()
            .find(|e| e.in_clusters.contains(&zcl::CLUSTER_BASIC))
            .map(|e| e.id)
        {
            let attrs = [
                zcl::ATTR_MANUFACTURER_NAME,
                zcl::ATTR_MODEL_IDENTIFIER,
                zcl::ATTR_POWER_SOURCE,
            ];
            let tsn = match self
                .af_send(link, nwk, ep, zcl::CLUSTER_BASIC, |t| {
                    ZclFrame::read_attributes(t, &attrs)
                })
                .await?
            {
                Ok(t) => t,
                Err(why) => return Ok(Err(format!("Basic cluster read: {why}"))),
            };
            let z = match self
                .wait_zcl(
                    link,
                    "Basic read attributes response",
                    nwk,
                    zcl::CLUSTER_BASIC,
                    tsn,
                    zcl::READ_ATTRIBUTES_RSP,
                )
                .await?
            {
                Ok(z) => z,
                Err(why) => return Ok(Err(format!("Basic cluster read: {why}"))),
            };
            for r in zcl::parse_read_rsp(&z.payload).0 {
                match (r.attr, r.value) {
                    (zcl::ATTR_MANUFACTURER_NAME, zcl::AttrValue::Text(s)) => {
                        d.manufacturer = Some(s)
                    }
                    (zcl::ATTR_MODEL_IDENTIFIER, zcl::AttrValue::Text(s)) => d.model = Some(s),
                    // PowerSource (ZCL §3.2.2.2.8): 1, 2, 5, 6 are mains.
                    (zcl::ATTR_POWER_SOURCE, v) => {
                        if let Some(x) = v.as_i64() {
                            d.mains_powered = matches!(x & 0x7F, 1 | 2 | 5 | 6);
                        }
                    }
                    _ => {}
                }
            }
        }
        // Electrical measurement / metering: the multipliers and divisors readings are scaled by.
        for cluster in [zcl::CLUSTER_ELECTRICAL, zcl::CLUSTER_METERING] {
            let Some(ep) = d
                .endpoints
                .iter()
                .find(|e| e.in_clusters.contains(&cluster))
                .map(|e| e.id)
            else {
                continue;
            };
            let wanted: Vec<(&str, u16, u16)> = zcl::SCALE_ATTRS
                .iter()
                .filter(|(_, c, _, _)| *c == cluster)
                .map(|(q, _, m, dv)| (*q, *m, *dv))
                .collect();
            let attrs: Vec<u16> = wanted.iter().flat_map(|(_, m, dv)| [*m, *dv]).collect();
            let tsn = match self
                .af_send(link, nwk, ep, cluster, |t| {
                    ZclFrame::read_attributes(t, &attrs)
                })
                .await?
            {
                Ok(t) => t,
                Err(why) => return Ok(Err(format!("multiplier/divisor read: {why}"))),
            };
            let z = match self
                .wait_zcl(
                    link,
                    "multiplier/divisor",
                    nwk,
                    cluster,
                    tsn,
                    zcl::READ_ATTRIBUTES_RSP,
                )
                .await?
            {
                Ok(z) => z,
                Err(why) => return Ok(Err(format!("multiplier/divisor read: {why}"))),
            };
            let recs = zcl::parse_read_rsp(&z.payload).0;
            let get = |a: u16| {
                recs.iter()
                    .find(|r| r.attr == a)
                    .and_then(|r| r.value.as_i64())
                    .and_then(|v| u32::try_from(v).ok())
                    .filter(|v| *v > 0)
            };
            for (q, m, dv) in wanted {
                let s = zcl::Scale {
                    multiplier: get(m).unwrap_or(1),
                    divisor: get(dv).unwrap_or(1),
                };
                d.scales.insert(q.to_string(), s);
            }
        }
        // An IAS zone: its type, then the coordinator as its CIE (the zone then asks to enroll,
        // answered in `callback`).
        if let Some(ep) = d
            .endpoints
            .iter()
            .find(|e| e.in_clusters.contains(&zcl::CLUSTER_IAS_ZONE))
            .map(|e| e.id)
        {
            if let Err(why) = self.ias_setup(link, nwk, ep, d).await? {
                return Ok(Err(format!("IAS zone: {why}")));
            }
        }
        // Bind each measured cluster to the coordinator and configure its reporting. A device that
        // refuses keeps its other clusters; what it reports by itself still arrives.
        let wanted: Vec<(u8, u16, zcl::Reporting)> = d
            .endpoints
            .iter()
            .flat_map(|e| {
                e.in_clusters
                    .iter()
                    .filter_map(move |c| zcl::reporting_of_cluster(*c).map(|r| (e.id, *c, r)))
            })
            .collect();
        let ieee = parse_ieee(&d.ieee).unwrap_or(0);
        for (ep, cluster, rep) in wanted {
            if let Err(why) = self
                .bind_and_report(link, nwk, ieee, ep, cluster, &rep)
                .await?
            {
                tracing::warn!(
                    source = %self.name, device = %self.device_id(ieee),
                    "reporting of cluster 0x{cluster:04X} not configured: {why}"
                );
            }
        }
        Ok(Ok(()))
    }

    async fn ias_setup(
        &mut self,
        link: &mut Link,
        nwk: u16,
        ep: u8,
        d: &mut DbDevice,
    ) -> Result<Result<(), String>, LinkError> {
        let c = zcl::CLUSTER_IAS_ZONE;
        let tsn = match self
            .af_send(link, nwk, ep, c, |t| {
                ZclFrame::read_attributes(t, &[zcl::ATTR_IAS_ZONE_TYPE])
            })
            .await?
        {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let z = match self
            .wait_zcl(link, "IAS zone type", nwk, c, tsn, zcl::READ_ATTRIBUTES_RSP)
            .await?
        {
            Ok(z) => z,
            Err(why) => return Ok(Err(why)),
        };
        d.ias_zone_type = zcl::parse_read_rsp(&z.payload)
            .0
            .iter()
            .find(|r| r.attr == zcl::ATTR_IAS_ZONE_TYPE)
            .and_then(|r| r.value.as_i64())
            .map(|v| v as u16);
        let Some(coord) = self.coord_ieee else {
            return Ok(Err("the coordinator's address is unknown".into()));
        };
        let tsn = match self
            .af_send(link, nwk, ep, c, |t| {
                ZclFrame::write_attribute(t, zcl::ATTR_IAS_CIE_ADDRESS, 0xF0, &coord.to_le_bytes())
            })
            .await?
        {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let z = match self
            .wait_zcl(
                link,
                "CIE address write response",
                nwk,
                c,
                tsn,
                zcl::WRITE_ATTRIBUTES_RSP,
            )
            .await?
        {
            Ok(z) => z,
            Err(why) => return Ok(Err(why)),
        };
        // Write Attributes Response (§2.5.4): one SUCCESS byte, or status records.
        match z.payload.first() {
            Some(0) => Ok(Ok(())),
            s => Ok(Err(format!(
                "CIE address refused: {}",
                zcl::status_name(s.copied().unwrap_or(0x01))
            ))),
        }
    }

    /// Answer a Zone Enroll Request (ZCL §8.2.2.4.2) with success and a zone id.
    async fn ias_enroll(&mut self, link: &mut Link, nwk: u16, ep: u8) -> Result<(), LinkError> {
        let zone_id = (nwk & 0x7F) as u8;
        let r = self
            .af_send(link, nwk, ep, zcl::CLUSTER_IAS_ZONE, |t| {
                let mut v =
                    ZclFrame::cluster_command(t, zcl::IAS_ZONE_ENROLL_RESPONSE, &[0x00, zone_id]);
                v[0] |= zcl::FC_DISABLE_DEFAULT_RESPONSE;
                v
            })
            .await?;
        match r {
            Ok(_) => {
                tracing::info!(source = %self.name, "IAS zone 0x{nwk:04X} enrolled (zone id {zone_id})")
            }
            Err(why) => {
                tracing::warn!(source = %self.name, "IAS zone 0x{nwk:04X} not enrolled: {why}")
            }
        }
        Ok(())
    }

    /// ZDO_BIND_REQ (§3.12.1.14) of `cluster` on the device to the coordinator, then ZCL
    /// Configure Reporting. `Ok(Err(why))`: the device refused or did not answer.
    async fn bind_and_report(
        &mut self,
        link: &mut Link,
        nwk: u16,
        ieee: u64,
        ep: u8,
        cluster: u16,
        rep: &zcl::Reporting,
    ) -> Result<Result<(), String>, LinkError> {
        let Some(coord) = self.coord_ieee else {
            return Ok(Err("the coordinator's address is unknown".into()));
        };
        let mut p = nwk.to_le_bytes().to_vec();
        p.extend_from_slice(&ieee.to_le_bytes());
        p.push(ep);
        p.extend_from_slice(&cluster.to_le_bytes());
        p.push(0x03); // destination address mode: 64-bit
        p.extend_from_slice(&coord.to_le_bytes());
        p.push(OUR_ENDPOINT);
        link.sreq_ok(ZDO_BIND_REQ, p).await?;
        let r = match link
            .wait_for("ZDO_BIND_RSP", self.device_timeout(), |f| {
                f.is(ZDO_BIND_RSP) && le16(&f.payload, 0) == Some(nwk)
            })
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_fatal() => return Err(e),
            Err(e) => return Ok(Err(e.to_string())),
        };
        if r.payload.get(2) != Some(&0) {
            return Ok(Err(format!(
                "bind refused (ZDO status 0x{:02X})",
                r.payload.get(2).copied().unwrap_or(0xFF)
            )));
        }
        let tsn = match self
            .af_send(link, nwk, ep, cluster, |t| rep.command(t))
            .await?
        {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let z = match self
            .wait_zcl(
                link,
                "Configure Reporting response",
                nwk,
                cluster,
                tsn,
                zcl::CONFIGURE_REPORTING_RSP,
            )
            .await?
        {
            Ok(z) => z,
            Err(why) => return Ok(Err(why)),
        };
        match zcl::configure_reporting_failure(&z.payload) {
            None => Ok(Ok(())),
            Some(s) => Ok(Err(format!("device answered {}", zcl::status_name(s)))),
        }
    }

    async fn command(&mut self, link: &mut Link, c: Command) -> Result<(), LinkError> {
        self.m.commands.inc();
        let r = self.execute(link, &c).await;
        let (answer, fatal) = match r {
            Ok(a) => (a, None),
            Err(e) if e.is_fatal() => (Err(format!("the zigbee coordinator failed: {e}")), Some(e)),
            Err(e) => (Err(e.to_string()), None),
        };
        let _ = c.reply.send(answer);
        match fatal {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn execute(
        &mut self,
        link: &mut Link,
        c: &Command,
    ) -> Result<Result<(), String>, LinkError> {
        if c.device.as_str() == self.cfg.coordinator_id {
            if c.point.as_str() != "permit_join" {
                return Ok(Err(format!(
                    "the coordinator has no writable point `{}`",
                    c.point
                )));
            }
            let secs = match &c.value {
                Value::Bool(b) => {
                    if *b {
                        254
                    } else {
                        0
                    }
                }
                Value::I64(i) => (*i).clamp(0, 254),
                Value::F64(f) => f.clamp(0.0, 254.0) as i64,
                Value::Str(_) => {
                    return Ok(Err("permit_join takes seconds (0–254) or true/false".into()))
                }
            };
            self.permit_join(link, secs as u8).await?;
            return Ok(Ok(()));
        }
        let Some(d) = self
            .db
            .devices
            .iter()
            .find(|(k, _)| self.cfg.device_id(**k) == c.device.as_str())
            .map(|(_, d)| d.clone())
        else {
            return Ok(Err(format!("no paired zigbee device `{}`", c.device)));
        };
        let (cluster, cmd, args): (u16, u8, Vec<u8>) = match c.point.as_str() {
            "on_off" => {
                let cmd = match &c.value {
                    Value::Bool(true) | Value::I64(1) => zcl::ON_OFF_ON,
                    Value::Bool(false) | Value::I64(0) => zcl::ON_OFF_OFF,
                    Value::Str(s) if s.eq_ignore_ascii_case("on") => zcl::ON_OFF_ON,
                    Value::Str(s) if s.eq_ignore_ascii_case("off") => zcl::ON_OFF_OFF,
                    Value::Str(s) if s.eq_ignore_ascii_case("toggle") => zcl::ON_OFF_TOGGLE,
                    other => {
                        return Ok(Err(format!(
                            "on_off takes true/false, on/off or toggle, not {other:?}"
                        )))
                    }
                };
                (zcl::CLUSTER_ON_OFF, cmd, Vec::new())
            }
            "level" => {
                let pct = match &c.value {
                    Value::F64(f) if (0.0..=100.0).contains(f) => *f,
                    Value::I64(i) if (0..=100).contains(i) => *i as f64,
                    other => {
                        return Ok(Err(format!(
                            "level takes a percentage 0–100, not {other:?}"
                        )))
                    }
                };
                (
                    zcl::CLUSTER_LEVEL,
                    zcl::LEVEL_MOVE_TO_LEVEL_WITH_ON_OFF,
                    zcl::move_to_level_args(pct),
                )
            }
            other => return Ok(Err(format!("point `{other}` cannot be written"))),
        };
        let Some(ep) = d
            .endpoints
            .iter()
            .find(|e| e.in_clusters.contains(&cluster))
            .map(|e| e.id)
        else {
            return Ok(Err(format!(
                "`{}` has no cluster 0x{cluster:04X} for `{}`",
                c.device, c.point
            )));
        };
        let tsn = match self
            .af_send(link, d.nwk, ep, cluster, |t| {
                ZclFrame::cluster_command(t, cmd, &args)
            })
            .await?
        {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        let z = match self
            .wait_zcl(
                link,
                "ZCL default response",
                d.nwk,
                cluster,
                tsn,
                zcl::DEFAULT_RESPONSE,
            )
            .await?
        {
            Ok(z) => z,
            Err(why) => return Ok(Err(why)),
        };
        if let Some(ieee) = parse_ieee(&d.ieee) {
            self.heard_from(ieee);
        }
        // Default response: command id, status (ZCL §2.5.12).
        match z.payload.get(1) {
            Some(0) => Ok(Ok(())),
            Some(s) => Ok(Err(format!("device answered {}", zcl::status_name(*s)))),
            None => Ok(Err("malformed default response".into())),
        }
    }
}

/// ZDO_SIMPLE_DESC_RSP payload (MT_ZDO callback) → endpoint.
fn parse_simple_desc(p: &[u8]) -> Option<Endpoint> {
    if p.get(2) != Some(&0) {
        return None;
    }
    let id = *p.get(6)?;
    let profile = le16(p, 7)?;
    let device_type = le16(p, 9)?;
    let mut i = 12;
    let n_in = *p.get(i)? as usize;
    i += 1;
    let in_clusters = (0..n_in)
        .map(|k| le16(p, i + 2 * k))
        .collect::<Option<Vec<_>>>()?;
    i += 2 * n_in;
    let n_out = *p.get(i)? as usize;
    i += 1;
    let out_clusters = (0..n_out)
        .map(|k| le16(p, i + 2 * k))
        .collect::<Option<Vec<_>>>()?;
    Some(Endpoint {
        id,
        profile,
        device_type,
        in_clusters,
        out_clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_descriptor_as_zigpy_encodes_it() {
        // ZDO_SIMPLE_DESC_RSP payload from the emulator (zigpy's SizePrefixedSimpleDescriptor):
        // src 0x1234, status 0, nwk 0x1234, len, ep 1, profile 0x0104, device 0x0302, ver 1,
        // in [0x0000, 0x0001, 0x0402, 0x0405], out [].
        let p = [
            0x34, 0x12, 0x00, 0x34, 0x12, 0x10, 0x01, 0x04, 0x01, 0x02, 0x03, 0x01, 0x04, 0x00,
            0x00, 0x01, 0x00, 0x02, 0x04, 0x05, 0x04, 0x00,
        ];
        let e = parse_simple_desc(&p).unwrap();
        assert_eq!((e.id, e.profile, e.device_type), (1, PROFILE_HA, 0x0302));
        assert_eq!(e.in_clusters, vec![0x0000, 0x0001, 0x0402, 0x0405]);
        assert!(e.out_clusters.is_empty());
        assert_eq!(parse_simple_desc(&p[..15]), None);
        let mut failed = p;
        failed[2] = 0x80;
        assert_eq!(parse_simple_desc(&failed), None);
    }

    #[test]
    fn device_spec_has_points_with_units_classes_and_only_on_off_writable() {
        let d = DbDevice {
            ieee: "00:12:4b:00:1c:aa:bb:02".into(),
            nwk: 1,
            logical_type: "router".into(),
            mains_powered: true,
            endpoints: vec![Endpoint {
                id: 1,
                profile: PROFILE_HA,
                device_type: 0x51,
                in_clusters: vec![0x0000, 0x0006, 0x0402],
                out_clusters: vec![],
            }],
            manufacturer: Some("M".into()),
            model: Some("P".into()),
            interviewed: true,
            ias_zone_type: None,
            scales: Default::default(),
            lqi: None,
            last_seen_ms: None,
        };
        let s = device_spec("gh1/plug", &d);
        let p = |n: &str| s.points.iter().find(|p| p.name.as_str() == n).unwrap();
        assert!(p("on_off").writable);
        assert_eq!(p("on_off").class.as_deref(), Some("switch"));
        assert_eq!(p("temperature").unit.as_deref(), Some("°C"));
        assert!(!p("temperature").writable && !p("lqi").writable);
        assert_eq!(s.meta.model.as_deref(), Some("P"));
    }

    #[test]
    fn network_key_is_generated_once_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg: ZigbeeConfig =
            serde_yaml::from_str("serial: { port: /dev/null, baud: 115200 }").unwrap();
        let k1 = network_key(dir.path(), &cfg).unwrap();
        let k2 = network_key(dir.path(), &cfg).unwrap();
        assert_eq!(k1, k2);
        assert_ne!(k1, DEFAULT_NETWORK_KEY);
        let meta = std::fs::metadata(dir.path().join("network.key")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(network_key(other.path(), &cfg).unwrap(), k1, "not random");
    }
}
