//! GATT: connectable devices' characteristics as points.
//!
//! One task per configured device ([`run_device`]): it waits for the adapter, connects
//! (connections are capped by `max_connections` and made one at a time per adapter: BlueZ
//! misbehaves with parallel connects), resolves services, subscribes the `notify` points, reads
//! the `read_every_s` points on their period, and writes the `writable` points on command. A
//! device that drops or fails is reconnected with backoff; commands meanwhile fail at once.
//!
//! The codec ([`Codec`]) is a type (`u8` … `f32`, `bool`, `utf8`, `hex`), a byte order (little
//! endian unless `big_endian`) and `value = raw · scale + offset`; a write converts back and
//! refuses a value the type cannot hold. A write's result is `ok` or the ATT error's name
//! ([`att_error_name`], Core Specification v5.4, Vol 3, Part F, §3.4.1.1, as BlueZ reports it).

use std::sync::Arc;
use std::time::Duration;

use btleplug::api::{Central, Characteristic, Peripheral as _, WriteType};
use btleplug::platform::{Adapter, Peripheral};
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use weir_core::{
    Backoff, BusSender, Command, Counter, DeviceId, PointId, Quality, Reading, Timestamp, Value,
};

use crate::config::{parse_uuid, GattPoint, GattType};

/// How a characteristic's bytes are a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    pub ty: GattType,
    pub big_endian: bool,
    pub scale: f64,
    pub offset: f64,
}

impl Codec {
    pub fn of(p: &GattPoint) -> Codec {
        Codec {
            ty: p.value_type,
            big_endian: p.big_endian,
            scale: p.scale,
            offset: p.offset,
        }
    }

    fn width(&self) -> Option<usize> {
        Some(match self.ty {
            GattType::U8 | GattType::I8 | GattType::Bool => 1,
            GattType::U16 | GattType::I16 => 2,
            GattType::U24 => 3,
            GattType::U32 | GattType::I32 | GattType::F32 => 4,
            GattType::Utf8 | GattType::Hex => return None,
        })
    }

    fn int(&self, raw: i64) -> Value {
        if self.scale == 1.0 && self.offset == 0.0 {
            Value::I64(raw)
        } else {
            Value::F64(raw as f64 * self.scale + self.offset)
        }
    }

    /// The value of `b`; `None` when it is too short for the type (or not UTF-8).
    pub fn decode(&self, b: &[u8]) -> Option<Value> {
        if let Some(w) = self.width() {
            let mut v: Vec<u8> = b.get(..w)?.to_vec();
            if self.big_endian {
                v.reverse();
            }
            let u = v.iter().rev().fold(0u64, |a, x| (a << 8) | u64::from(*x));
            return Some(match self.ty {
                GattType::U8 | GattType::U16 | GattType::U24 | GattType::U32 => self.int(u as i64),
                GattType::I8 => self.int(i64::from(u as u8 as i8)),
                GattType::I16 => self.int(i64::from(u as u16 as i16)),
                GattType::I32 => self.int(i64::from(u as u32 as i32)),
                GattType::F32 => Value::from_f32(
                    f32::from_bits(u as u32) * self.scale as f32 + self.offset as f32,
                ),
                GattType::Bool => Value::Bool(u != 0),
                GattType::Utf8 | GattType::Hex => unreachable!("no width"),
            });
        }
        Some(match self.ty {
            GattType::Utf8 => Value::from(std::str::from_utf8(b).ok()?),
            _ => Value::from(crate::decode::hex(b).as_str()),
        })
    }

    /// The bytes that make `v`, or why it cannot be written.
    pub fn encode(&self, v: &Value) -> Result<Vec<u8>, String> {
        let bytes = match (self.ty, v) {
            (GattType::Bool, _) => {
                let b = match v {
                    Value::Bool(b) => *b,
                    other => other.as_f64().ok_or("a boolean is expected")? != 0.0,
                };
                vec![u8::from(b)]
            }
            (GattType::Utf8, Value::Str(s)) => s.as_bytes().to_vec(),
            (GattType::Hex, Value::Str(s)) => {
                let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
                if s.len() & 1 == 1 {
                    return Err("a hex string of whole bytes is expected".into());
                }
                (0..s.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| "a hex string is expected".to_string())?
            }
            (GattType::Utf8 | GattType::Hex, _) => return Err("a string is expected".into()),
            (GattType::F32, v) => {
                let x = v.as_f64().ok_or("a number is expected")?;
                let raw = ((x - self.offset) / self.scale) as f32;
                raw.to_bits().to_le_bytes().to_vec()
            }
            (ty, v) => {
                let x = v.as_f64().ok_or("a number is expected")?;
                let raw = ((x - self.offset) / self.scale).round();
                let (lo, hi, w): (f64, f64, usize) = match ty {
                    GattType::U8 => (0.0, 255.0, 1),
                    GattType::I8 => (-128.0, 127.0, 1),
                    GattType::U16 => (0.0, 65535.0, 2),
                    GattType::I16 => (-32768.0, 32767.0, 2),
                    GattType::U24 => (0.0, 16_777_215.0, 3),
                    GattType::U32 => (0.0, 4_294_967_295.0, 4),
                    _ => (-2_147_483_648.0, 2_147_483_647.0, 4),
                };
                if !(lo..=hi).contains(&raw) {
                    return Err(format!("{x} is out of range for {ty:?}"));
                }
                (raw as i64).to_le_bytes()[..w].to_vec()
            }
        };
        let mut bytes = bytes;
        if self.big_endian && self.width().is_some() {
            bytes.reverse();
        }
        Ok(bytes)
    }
}

/// ATT error codes by name (Core Specification v5.4, Vol 3, Part F, §3.4.1.1, Table 3.4).
pub fn att_code_name(code: u8) -> String {
    match code {
        0x01 => "INVALID_HANDLE".into(),
        0x02 => "READ_NOT_PERMITTED".into(),
        0x03 => "WRITE_NOT_PERMITTED".into(),
        0x04 => "INVALID_PDU".into(),
        0x05 => "INSUFFICIENT_AUTHENTICATION".into(),
        0x06 => "REQUEST_NOT_SUPPORTED".into(),
        0x07 => "INVALID_OFFSET".into(),
        0x08 => "INSUFFICIENT_AUTHORIZATION".into(),
        0x09 => "PREPARE_QUEUE_FULL".into(),
        0x0A => "ATTRIBUTE_NOT_FOUND".into(),
        0x0B => "ATTRIBUTE_NOT_LONG".into(),
        0x0C => "INSUFFICIENT_ENCRYPTION_KEY_SIZE".into(),
        0x0D => "INVALID_ATTRIBUTE_VALUE_LENGTH".into(),
        0x0E => "UNLIKELY_ERROR".into(),
        0x0F => "INSUFFICIENT_ENCRYPTION".into(),
        0x10 => "UNSUPPORTED_GROUP_TYPE".into(),
        0x11 => "INSUFFICIENT_RESOURCES".into(),
        0x12 => "DATABASE_OUT_OF_SYNC".into(),
        0x13 => "VALUE_NOT_ALLOWED".into(),
        // Common Profile and Service Error Codes (Core Specification Supplement, Part B).
        0xFC => "WRITE_REQUEST_REJECTED".into(),
        0xFD => "CCCD_IMPROPERLY_CONFIGURED".into(),
        0xFE => "PROCEDURE_ALREADY_IN_PROGRESS".into(),
        0xFF => "OUT_OF_RANGE".into(),
        0x80..=0x9F => format!("APPLICATION_ERROR_0x{code:02X}"),
        other => format!("ATT_ERROR_0x{other:02X}"),
    }
}

/// The ATT error name in a BlueZ error: BlueZ turns the common ATT errors into D-Bus error names
/// (`org.bluez.Error.NotPermitted` for WRITE_NOT_PERMITTED, …) and the others into
/// `org.bluez.Error.Failed: Operation failed with ATT error: 0x13`.
pub fn att_error_name(err: &str) -> String {
    if let Some(i) = err.find("ATT error: 0x") {
        let code = &err[i + 13..];
        if let Some(c) = code.get(..2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
            return att_code_name(c);
        }
    }
    for (bluez, att) in [
        ("org.bluez.Error.NotPermitted", "WRITE_NOT_PERMITTED"),
        (
            "org.bluez.Error.NotAuthorized",
            "INSUFFICIENT_AUTHORIZATION",
        ),
        (
            "org.bluez.Error.InvalidValueLength",
            "INVALID_ATTRIBUTE_VALUE_LENGTH",
        ),
        ("org.bluez.Error.NotSupported", "REQUEST_NOT_SUPPORTED"),
        (
            "org.bluez.Error.InProgress",
            "PROCEDURE_ALREADY_IN_PROGRESS",
        ),
        ("org.bluez.Error.InvalidOffset", "INVALID_OFFSET"),
    ] {
        if err.contains(bluez) {
            return att.into();
        }
    }
    if err.contains("org.bluez.Error.NotConnected") || err.contains("NotConnected") {
        return "not connected".into();
    }
    format!("failed: {err}")
}

/// [`att_error_name`] of a btleplug error. btleplug's `Display` keeps only the D-Bus error's
/// message; its `Debug` has the error name too (`D-Bus error: Write not permitted
/// (org.bluez.Error.NotPermitted)`), which is what is matched.
pub fn att_error(e: &btleplug::Error) -> String {
    let name = att_error_name(&format!("{e:?}"));
    if name.starts_with("failed: ") {
        format!("failed: {e}")
    } else {
        name
    }
}

/// What a device task shares with the source.
#[derive(Debug, Clone)]
pub struct Shared {
    pub source: Arc<str>,
    pub bus: BusSender,
    pub shutdown: CancellationToken,
    /// The current adapter (`None` while there is none).
    pub adapter: watch::Receiver<Option<Adapter>>,
    /// One connect at a time.
    pub connect_lock: Arc<Semaphore>,
    /// Open connections.
    pub slots: Arc<Semaphore>,
    pub connect_timeout: Duration,
    pub reconnect_backoff: Duration,
    pub connects: Counter,
    pub disconnects: Counter,
    pub errors: Counter,
}

struct Bound {
    cfg: GattPoint,
    codec: Codec,
    ch: Characteristic,
    next_read: Option<Instant>,
    unit: Option<Arc<str>>,
}

/// Run one GATT device until shutdown: connect, serve, reconnect.
pub async fn run_device(
    sh: Shared,
    id: DeviceId,
    mac: [u8; 6],
    points: Vec<GattPoint>,
    mut commands: mpsc::Receiver<Command>,
) {
    let mut adapter_rx = sh.adapter.clone();
    let mut backoff = Backoff::new(
        sh.reconnect_backoff.max(Duration::from_millis(1)),
        Duration::from_secs(60),
    );
    let mut logged = false;
    loop {
        if sh.shutdown.is_cancelled() {
            return;
        }
        let adapter = adapter_rx.borrow_and_update().clone();
        let attempt: Result<(), String> = match adapter {
            Some(a) => {
                let r = tokio::select! {
                    _ = sh.shutdown.cancelled() => return,
                    r = connect(&sh, &a, mac, &points, &mut commands) => r,
                };
                match r {
                    Ok((p, bound, slot)) => {
                        sh.connects.inc();
                        backoff.reset();
                        logged = false;
                        tracing::info!(source = %sh.source, device = id.as_str(), "GATT connected ({} characteristics)", bound.len());
                        let why = serve(&sh, &id, &p, bound, &mut commands, &mut adapter_rx).await;
                        drop(slot);
                        let _ = p.disconnect().await;
                        if sh.shutdown.is_cancelled() {
                            return;
                        }
                        sh.disconnects.inc();
                        tracing::warn!(source = %sh.source, device = id.as_str(), "GATT connection lost ({why}); reconnecting with backoff");
                        continue_after(&sh, &mut backoff, &mut commands).await;
                        continue;
                    }
                    Err(e) => Err(e),
                }
            }
            None => Err("no adapter".to_string()),
        };
        if let Err(e) = attempt {
            sh.errors.inc();
            if !logged {
                logged = true;
                tracing::warn!(source = %sh.source, device = id.as_str(), "GATT connect failed ({e}); retrying with backoff");
            } else {
                tracing::debug!(source = %sh.source, device = id.as_str(), "GATT connect failed again: {e}");
            }
        }
        if !continue_after(&sh, &mut backoff, &mut commands).await {
            return;
        }
    }
}

/// Wait the next backoff delay, failing commands at once meanwhile; false on shutdown.
async fn continue_after(
    sh: &Shared,
    backoff: &mut Backoff,
    commands: &mut mpsc::Receiver<Command>,
) -> bool {
    let until = Instant::now() + backoff.next_delay();
    loop {
        tokio::select! {
            _ = sh.shutdown.cancelled() => return false,
            _ = tokio::time::sleep_until(until) => return true,
            c = commands.recv() => match c {
                Some(c) => { let _ = c.reply.send(Err("not connected".into())); }
                None => return false,
            },
        }
    }
}

type Connected = (Peripheral, Vec<Bound>, tokio::sync::OwnedSemaphorePermit);

async fn connect(
    sh: &Shared,
    adapter: &Adapter,
    mac: [u8; 6],
    points: &[GattPoint],
    commands: &mut mpsc::Receiver<Command>,
) -> Result<Connected, String> {
    // Commands that wait for a slot or the lock fail at once.
    let slot = loop {
        tokio::select! {
            s = sh.slots.clone().acquire_owned() => break s.map_err(|e| e.to_string())?,
            c = commands.recv() => if let Some(c) = c { let _ = c.reply.send(Err("not connected (waiting for a connection slot)".into())); },
        }
    };
    let _lock = sh.connect_lock.acquire().await.map_err(|e| e.to_string())?;
    let peripherals = adapter.peripherals().await.map_err(|e| e.to_string())?;
    let p = peripherals
        .into_iter()
        .find(|p| p.address().into_inner() == mac)
        .ok_or("not discovered by BlueZ yet")?;
    let t = sh.connect_timeout;
    match tokio::time::timeout(t, async {
        if !p.is_connected().await.unwrap_or(false) {
            p.connect().await?;
        }
        p.discover_services().await
    })
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = p.disconnect().await;
            return Err(e.to_string());
        }
        Err(_) => {
            let _ = p.disconnect().await;
            return Err(format!("no connection within {t:?}"));
        }
    }
    let chars = p.characteristics();
    let mut bound = Vec::new();
    let now = Instant::now();
    for g in points {
        let cu = parse_uuid(&g.characteristic).ok_or("bad characteristic uuid")?;
        let su: Option<Uuid> = g.service.as_deref().and_then(parse_uuid);
        let Some(ch) = chars
            .iter()
            .find(|c| c.uuid == cu && su.is_none_or(|s| s == c.service_uuid))
        else {
            let _ = p.disconnect().await;
            return Err(format!(
                "the device has no characteristic {cu} (point {})",
                g.point
            ));
        };
        if g.notify {
            if let Err(e) = p.subscribe(ch).await {
                let _ = p.disconnect().await;
                return Err(format!("subscribe to {} failed: {e}", g.point));
            }
        }
        bound.push(Bound {
            cfg: g.clone(),
            codec: Codec::of(g),
            ch: ch.clone(),
            next_read: g.read_every_s.map(|_| now),
            unit: g.unit.as_deref().map(Arc::from),
        });
    }
    Ok((p, bound, slot))
}

fn reading(sh: &Shared, id: &DeviceId, b: &Bound, value: Value, quality: Quality) -> Reading {
    Reading {
        device: id.clone(),
        point: PointId::new(&b.cfg.point),
        value,
        unit: b.unit.clone(),
        ts: Timestamp::now(),
        quality,
        source: sh.source.clone(),
    }
}

/// Serve a connected device until it drops, the adapter changes or shutdown; the reason.
async fn serve(
    sh: &Shared,
    id: &DeviceId,
    p: &Peripheral,
    mut bound: Vec<Bound>,
    commands: &mut mpsc::Receiver<Command>,
    adapter_rx: &mut watch::Receiver<Option<Adapter>>,
) -> String {
    let mut notes = match p.notifications().await {
        Ok(n) => n,
        Err(e) => return format!("no notification stream: {e}"),
    };
    let mut check = tokio::time::interval(Duration::from_secs(1));
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = bound.iter().filter_map(|b| b.next_read).min();
        let sleep_until = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = sh.shutdown.cancelled() => return "shutdown".into(),
            _ = adapter_rx.changed() => return "the adapter changed".into(),
            n = notes.next() => match n {
                Some(n) => {
                    let batch: Vec<Reading> = bound
                        .iter()
                        .filter(|b| b.cfg.notify && b.ch.uuid == n.uuid && b.ch.service_uuid == n.service_uuid)
                        .filter_map(|b| b.codec.decode(&n.value).map(|v| reading(sh, id, b, v, Quality::Good)))
                        .collect();
                    if sh.bus.try_send(batch).is_err() {
                        return "the bus is closed".into();
                    }
                }
                None => return "the notification stream ended".into(),
            },
            _ = tokio::time::sleep_until(sleep_until), if next.is_some() => {
                let now = Instant::now();
                let mut batch = Vec::new();
                for b in bound.iter_mut() {
                    let (Some(t), Some(every)) = (b.next_read, b.cfg.read_every_s) else { continue };
                    if t > now { continue; }
                    b.next_read = Some(now + Duration::from_secs(every));
                    match p.read(&b.ch).await {
                        Ok(bytes) => match b.codec.decode(&bytes) {
                            Some(v) => batch.push(reading(sh, id, b, v, Quality::Good)),
                            None => {
                                sh.errors.inc();
                                batch.push(reading(sh, id, b, Value::from(crate::decode::hex(&bytes).as_str()), Quality::Bad(Arc::from("value does not fit the configured type"))));
                            }
                        },
                        Err(e) => {
                            sh.errors.inc();
                            if !p.is_connected().await.unwrap_or(false) {
                                return format!("read failed: {e}");
                            }
                            batch.push(reading(sh, id, b, Value::Bool(false), Quality::Bad(Arc::from(att_error(&e).as_str()))));
                        }
                    }
                }
                if sh.bus.try_send(batch).is_err() {
                    return "the bus is closed".into();
                }
            }
            c = commands.recv() => {
                let Some(c) = c else { return "the command channel closed".into() };
                let Some(b) = bound.iter().find(|b| b.cfg.point == c.point.as_str() && b.cfg.writable) else {
                    let _ = c.reply.send(Err(format!("point `{}` is not a writable GATT point", c.point.as_str())));
                    continue;
                };
                let bytes = match b.codec.encode(&c.value) {
                    Ok(x) => x,
                    Err(e) => { let _ = c.reply.send(Err(e)); continue; }
                };
                match p.write(&b.ch, &bytes, WriteType::WithResponse).await {
                    Ok(()) => {
                        let _ = c.reply.send(Ok(()));
                        // The new value as a reading (what the device accepted).
                        if let Some(v) = b.codec.decode(&bytes) {
                            let _ = sh.bus.try_send(vec![reading(sh, id, b, v, Quality::Good)]);
                        }
                    }
                    Err(e) => {
                        sh.errors.inc();
                        let _ = c.reply.send(Err(att_error(&e)));
                    }
                }
            }
            _ = check.tick() => {
                if !p.is_connected().await.unwrap_or(false) {
                    return "the device disconnected".into();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(ty: GattType, big_endian: bool, scale: f64, offset: f64) -> Codec {
        Codec {
            ty,
            big_endian,
            scale,
            offset,
        }
    }

    #[test]
    fn codec_round_trips_and_refuses_what_does_not_fit() {
        let c = codec(GattType::I16, false, 0.01, 0.0);
        assert_eq!(c.decode(&[0x34, 0x08]), Some(Value::F64(21.0)));
        assert_eq!(c.encode(&Value::F64(21.0)).unwrap(), vec![0x34, 0x08]);
        assert_eq!(c.decode(&[0xCC, 0xFF]), Some(Value::F64(-0.52)));
        assert!(c.encode(&Value::F64(400.0)).is_err());
        assert_eq!(c.decode(&[0x01]), None, "too short");
        let be = codec(GattType::U16, true, 1.0, 0.0);
        assert_eq!(be.decode(&[0x01, 0x02]), Some(Value::I64(0x0102)));
        assert_eq!(be.encode(&Value::I64(0x0102)).unwrap(), vec![0x01, 0x02]);
        let u24 = codec(GattType::U24, false, 1.0, 0.0);
        assert_eq!(u24.decode(&[1, 2, 3]), Some(Value::I64(0x030201)));
        let b = codec(GattType::Bool, false, 1.0, 0.0);
        assert_eq!(b.encode(&Value::Bool(true)).unwrap(), vec![1]);
        assert_eq!(b.decode(&[0]), Some(Value::Bool(false)));
        let f = codec(GattType::F32, false, 1.0, 0.0);
        assert_eq!(f.decode(&1.5f32.to_le_bytes()), Some(Value::F64(1.5)));
        let h = codec(GattType::Hex, false, 1.0, 0.0);
        assert_eq!(h.encode(&Value::from("0a0B")).unwrap(), vec![0x0A, 0x0B]);
        assert!(h.encode(&Value::from("abc")).is_err());
        let s = codec(GattType::Utf8, false, 1.0, 0.0);
        assert_eq!(s.decode(b"on"), Some(Value::from("on")));
        assert!(codec(GattType::U8, false, 1.0, 0.0)
            .encode(&Value::I64(-1))
            .is_err());
    }

    #[test]
    fn att_errors_are_named() {
        assert_eq!(
            att_error_name("D-Bus error: org.bluez.Error.NotPermitted: Write not permitted"),
            "WRITE_NOT_PERMITTED"
        );
        assert_eq!(
            att_error_name("org.bluez.Error.Failed: Operation failed with ATT error: 0x13"),
            "VALUE_NOT_ALLOWED"
        );
        assert_eq!(att_code_name(0x81), "APPLICATION_ERROR_0x81");
    }
}
