//! The forwarder: publishes outbox rows in commit order and deletes each only after its PUBACK.
//!
//! Per session (one MQTT connection):
//! 1. connect with the last will `offline` (retained) on `<prefix>/status`, subscribe to the
//!    command topics, then publish `online` (retained) there and the status document — so
//!    `online` also means commands sent from now on are heard;
//! 2. read rows after a cursor in id order (a page at a time) and hand them to rumqttc while fewer
//!    than `max_inflight` messages are unacknowledged;
//! 3. match `Outgoing::Publish(pkid)` events to the rows in the order they were handed over
//!    (`order`), then `PubAck(pkid)` to the row (`inflight`), and delete acknowledged rows in
//!    batches.
//!
//! When the connection fails the session is dropped whole and, after a jittered exponential
//! backoff, a new one starts from the oldest row still in the outbox. At-least-once: the only
//! duplicates are rows that were in flight when the connection broke. A row the broker refuses
//! (an MQTT 5 PUBACK with an error reason, e.g. 135 not authorized) or that can never be published
//! (an invalid topic) is deleted and counted in `weir_mqtt_rejected_total` rather than blocking
//! the queue forever.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use weir_core::{CancellationToken, CommandOrigin, CommandRouter, Metrics, Timestamp, Value};
use weir_store::{Outbox, StoredMessage};

use crate::conn::{ConnectOptions, Ev, PublishError, Session};

/// Rows read from the outbox per query.
const PAGE: usize = 1000;
/// Acknowledged rows deleted per transaction at most; fewer are flushed by the tick.
const DELETE_BATCH: usize = 1000;
/// How long an adapter may take to answer a command before the result says so.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for acknowledgements of messages already in flight.
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(2);

/// Everything the forwarder needs.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub connect: ConnectOptions,
    pub prefix: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub commands: bool,
    pub status_interval: Duration,
    /// Outbox rows older than this are dropped (checked once a minute).
    pub max_age: Duration,
    /// Return once the outbox is empty and everything is acknowledged (`weir buffer drain`).
    pub exit_when_empty: bool,
}

/// Lock the outbox; a poisoned lock (a panic while holding it) still holds a consistent SQLite
/// connection, so it is used as is.
pub fn lock(o: &Mutex<Outbox>) -> std::sync::MutexGuard<'_, Outbox> {
    o.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run blocking SQLite work without stalling the runtime's other tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[derive(Debug)]
pub struct Forwarder {
    cfg: ForwarderConfig,
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<Notify>,
    router: CommandRouter,
    metrics: Metrics,
    m: Counters,
}

#[derive(Debug)]
struct Counters {
    published: weir_core::Counter,
    acked: weir_core::Counter,
    rejected: weir_core::Counter,
    reconnects: weir_core::Counter,
    connected: weir_core::Gauge,
    commands: weir_core::Counter,
    outbox_rows: weir_core::Gauge,
    outbox_bytes: weir_core::Gauge,
    outbox_oldest_age_s: weir_core::Gauge,
    dropped_space: weir_core::Gauge,
    dropped_age: weir_core::Gauge,
    fs_available: weir_core::Gauge,
}

/// How a session ended.
enum End {
    Shutdown,
    Drained,
    Lost(String),
}

/// A result to publish on `…/set/result`.
type Outgoing = (String, Vec<u8>);

impl Forwarder {
    pub fn new(
        cfg: ForwarderConfig,
        outbox: Arc<Mutex<Outbox>>,
        wake: Arc<Notify>,
        router: CommandRouter,
        metrics: Metrics,
    ) -> Self {
        let m = Counters {
            published: metrics.counter("weir_mqtt_published_total", &[]),
            acked: metrics.counter("weir_mqtt_acked_total", &[]),
            rejected: metrics.counter("weir_mqtt_rejected_total", &[]),
            reconnects: metrics.counter("weir_mqtt_reconnects_total", &[]),
            connected: metrics.gauge("weir_mqtt_connected", &[]),
            commands: metrics.counter("weir_commands_total", &[]),
            outbox_rows: metrics.gauge("weir_outbox_rows", &[]),
            outbox_bytes: metrics.gauge("weir_outbox_bytes", &[]),
            outbox_oldest_age_s: metrics.gauge("weir_outbox_oldest_age_seconds", &[]),
            dropped_space: metrics.gauge("weir_outbox_dropped_total", &[("reason", "space")]),
            dropped_age: metrics.gauge("weir_outbox_dropped_total", &[("reason", "age")]),
            fs_available: metrics.gauge("weir_outbox_fs_available_bytes", &[]),
        };
        Forwarder {
            cfg,
            outbox,
            wake,
            router,
            metrics,
            m,
        }
    }

    /// Run until `shutdown` (or, with `exit_when_empty`, until the outbox is delivered).
    pub async fn run(self, shutdown: CancellationToken) {
        let (results_tx, mut results_rx) = mpsc::channel::<Outgoing>(256);
        let mut attempt: u32 = 0;
        let mut last_error: Option<String> = None;
        let mut next_age_check = Instant::now();
        loop {
            if Instant::now() >= next_age_check {
                self.enforce_age();
                next_age_check = Instant::now() + Duration::from_secs(60);
            }
            let end = self
                .session(
                    &shutdown,
                    &results_tx,
                    &mut results_rx,
                    &mut attempt,
                    &mut last_error,
                )
                .await;
            self.m.connected.set(0);
            match end {
                End::Shutdown | End::Drained => return,
                End::Lost(e) => {
                    self.m.reconnects.inc();
                    let target = format!("{}:{}", self.cfg.connect.host, self.cfg.connect.port);
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(broker = %target, "mqtt: {e}; buffering in the outbox and retrying");
                    } else {
                        tracing::debug!(broker = %target, "mqtt: {e}");
                    }
                    last_error = Some(e);
                }
            }
            let delay = backoff(self.cfg.reconnect_min, self.cfg.reconnect_max, attempt);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    fn enforce_age(&self) {
        let now = Timestamp::now().as_nanos();
        match blocking(|| lock(&self.outbox).enforce_age(now)) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(dropped = n, "outbox: dropped rows older than max_age"),
            Err(e) => tracing::error!("outbox: age check failed: {e}"),
        }
    }

    fn status_document(&self) -> Vec<u8> {
        let (stats, fs_available) = blocking(|| {
            let mut o = lock(&self.outbox);
            (o.stats(), o.fs_available_bytes().ok())
        });
        let now = Timestamp::now().as_nanos();
        let mut doc = serde_json::Map::new();
        doc.insert("state".into(), "online".into());
        doc.insert(
            "ts".into(),
            humantime::format_rfc3339_millis(std::time::SystemTime::now())
                .to_string()
                .into(),
        );
        match stats {
            Ok(s) => {
                self.m.outbox_rows.set(s.rows as i64);
                self.m.outbox_bytes.set(s.bytes as i64);
                let age = s
                    .oldest_enqueued_ns
                    .map(|t| (now - t).max(0) / 1_000_000_000)
                    .unwrap_or(0);
                self.m.outbox_oldest_age_s.set(age);
                self.m.dropped_space.set(s.dropped_for_space_total as i64);
                self.m.dropped_age.set(s.dropped_for_age_total as i64);
                if let Some(b) = fs_available {
                    self.m
                        .fs_available
                        .set(i64::try_from(b).unwrap_or(i64::MAX));
                }
                doc.insert(
                    "outbox".into(),
                    serde_json::json!({
                        "rows": s.rows,
                        "bytes": s.bytes,
                        "max_bytes": s.max_bytes,
                        "oldest_age_s": age,
                        "dropped_for_space_total": s.dropped_for_space_total,
                        "dropped_for_age_total": s.dropped_for_age_total,
                        "fs_available_bytes": fs_available,
                    }),
                );
            }
            Err(e) => {
                doc.insert(
                    "outbox".into(),
                    serde_json::json!({ "error": e.to_string() }),
                );
            }
        }
        let metrics: serde_json::Map<String, serde_json::Value> = self
            .metrics
            .snapshot()
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v as i64)))
            .collect();
        doc.insert("metrics".into(), metrics.into());
        serde_json::to_vec(&doc).unwrap_or_default()
    }

    async fn session(
        &self,
        shutdown: &CancellationToken,
        results_tx: &mpsc::Sender<Outgoing>,
        results_rx: &mut mpsc::Receiver<Outgoing>,
        attempt: &mut u32,
        last_error: &mut Option<String>,
    ) -> End {
        let max_inflight = self.cfg.connect.max_inflight as usize;
        let status_topic = format!("{}/status", self.cfg.prefix);
        let metrics_topic = format!("{}/status/metrics", self.cfg.prefix);
        let mut s = Session::new(&self.cfg.connect);
        // Connect.
        let first = tokio::select! {
            _ = shutdown.cancelled() => return End::Shutdown,
            ev = s.poll() => ev,
        };
        match first {
            Ok(Ev::Connected) => {}
            Ok(other) => return End::Lost(format!("unexpected first event {other:?}")),
            Err(e) => return End::Lost(e),
        }
        *attempt = 0;
        if last_error.take().is_some() {
            tracing::info!(broker = %format!("{}:{}", self.cfg.connect.host, self.cfg.connect.port), "mqtt: connected again");
        } else {
            tracing::info!(broker = %format!("{}:{}", self.cfg.connect.host, self.cfg.connect.port), "mqtt: connected");
        }
        self.m.connected.set(1);

        // `None` stands for a message that is not an outbox row (status, command results).
        let mut order: VecDeque<Option<i64>> = VecDeque::new();
        let mut inflight: HashMap<u16, i64> = HashMap::new();
        let mut buffer: VecDeque<StoredMessage> = VecDeque::new();
        let mut cursor: i64 = 0;
        let mut acked: Vec<i64> = Vec::new();
        let mut exhausted = false;
        let mut stopping: Option<Instant> = None;

        let mut housekeeping = tokio::time::interval(Duration::from_millis(20));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_status = Instant::now() + self.cfg.status_interval;

        let send_other = |s: &Session,
                          order: &mut VecDeque<Option<i64>>,
                          topic: &str,
                          retain: bool,
                          payload: Vec<u8>| {
            match s.publish(topic, 1, retain, payload) {
                Ok(()) => order.push_back(None),
                Err(e) => tracing::warn!(topic, "mqtt: could not queue message: {e}"),
            }
        };
        if self.cfg.commands {
            // Device ids have one to four levels (`gh1/climate`): `<prefix>/<device…>/<point>/set`.
            // Subscribed before `online` is published: the broker handles one connection's
            // packets in order, so whoever sees `online` can send a command and it is heard.
            for depth in 1..=4 {
                let filter = format!("{}/{}+/set", self.cfg.prefix, "+/".repeat(depth));
                if let Err(e) = s.subscribe(&filter) {
                    tracing::warn!("mqtt: could not subscribe to {filter}: {e}");
                }
            }
        }
        send_other(&s, &mut order, &status_topic, true, b"online".to_vec());
        send_other(&s, &mut order, &metrics_topic, true, self.status_document());

        let end = loop {
            // Fill the window from the outbox.
            let mut queue_full = false;
            while stopping.is_none() && order.len() + inflight.len() < max_inflight {
                if buffer.is_empty() {
                    if exhausted {
                        break;
                    }
                    match blocking(|| lock(&self.outbox).read_after(cursor, PAGE)) {
                        Ok(rows) => {
                            if let Some(last) = rows.last() {
                                cursor = last.id;
                            }
                            exhausted = rows.len() < PAGE;
                            buffer.extend(rows);
                        }
                        Err(e) => {
                            tracing::error!("outbox: read failed: {e}");
                            exhausted = true;
                        }
                    }
                    if buffer.is_empty() {
                        break;
                    }
                }
                let Some(m) = buffer.pop_front() else { break };
                match s.publish(&m.topic, m.qos, m.retain, m.payload) {
                    Ok(()) => {
                        order.push_back(Some(m.id));
                        self.m.published.inc();
                    }
                    Err(PublishError::InvalidTopic(t)) => {
                        tracing::error!(
                            row = m.id,
                            "mqtt: cannot publish to invalid topic `{t}`; dropping the row"
                        );
                        self.m.rejected.inc();
                        acked.push(m.id);
                    }
                    Err(PublishError::Full) => {
                        queue_full = true;
                        break;
                    }
                }
            }
            if queue_full {
                break End::Lost("rumqttc request queue full".into());
            }
            if acked.len() >= DELETE_BATCH {
                self.delete(&mut acked);
            }
            if self.cfg.exit_when_empty
                && exhausted
                && buffer.is_empty()
                && order.is_empty()
                && inflight.is_empty()
            {
                self.delete(&mut acked);
                // Rows may have been committed since the last read.
                exhausted = false;
                if blocking(|| lock(&self.outbox).read_after(cursor, 1))
                    .map(|r| r.is_empty())
                    .unwrap_or(true)
                {
                    break End::Drained;
                }
                continue;
            }
            if let Some(deadline) = stopping {
                if inflight.is_empty() && order.is_empty() || Instant::now() >= deadline {
                    break End::Shutdown;
                }
            }
            let idle =
                buffer.is_empty() && exhausted && order.len() + inflight.len() < max_inflight;
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stopping.is_none() => {
                    stopping = Some(Instant::now() + SHUTDOWN_ACK_WAIT);
                }
                ev = s.poll() => match ev {
                    Ok(ev) => self.on_event(ev, &mut order, &mut inflight, &mut acked, results_tx),
                    Err(e) => {
                        for ev in s.leftover() {
                            self.on_event(ev, &mut order, &mut inflight, &mut acked, results_tx);
                        }
                        break End::Lost(format!("connection lost: {e}"));
                    }
                },
                Some((topic, payload)) = results_rx.recv() => {
                    send_other(&s, &mut order, &topic, false, payload);
                }
                _ = self.wake.notified(), if idle => {
                    exhausted = false;
                }
                _ = housekeeping.tick() => {
                    self.delete(&mut acked);
                    // New rows may have arrived without a wake-up reaching us (a wake is one permit).
                    if buffer.is_empty() { exhausted = false; }
                    if Instant::now() >= next_status {
                        next_status = Instant::now() + self.cfg.status_interval;
                        let doc = self.status_document();
                        send_other(&s, &mut order, &metrics_topic, true, doc);
                    }
                }
            }
        };
        self.delete(&mut acked);
        if matches!(end, End::Shutdown | End::Drained) {
            // A clean goodbye: the retained status says offline (the will only fires on a lost
            // connection), then DISCONNECT.
            send_other(&s, &mut order, &status_topic, true, b"offline".to_vec());
            s.disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while s.poll().await.is_ok() {}
            })
            .await;
        }
        end
    }

    /// Match an event to outbox rows: `Sent(pkid)` to the next handed-over message, `Acked(pkid)`
    /// to its row.
    fn on_event(
        &self,
        ev: Ev,
        order: &mut VecDeque<Option<i64>>,
        inflight: &mut HashMap<u16, i64>,
        acked: &mut Vec<i64>,
        results_tx: &mpsc::Sender<Outgoing>,
    ) {
        match ev {
            Ev::Sent(pkid) => match order.pop_front() {
                Some(Some(id)) if pkid == 0 => {
                    acked.push(id);
                    self.m.acked.inc();
                }
                Some(Some(id)) => {
                    inflight.insert(pkid, id);
                }
                Some(None) => {}
                None => tracing::warn!(pkid, "mqtt: publish event without a queued message"),
            },
            Ev::Acked(pkid, r) => {
                if let Some(id) = inflight.remove(&pkid) {
                    if let Err(reason) = r {
                        self.m.rejected.inc();
                        tracing::error!(
                            row = id,
                            "mqtt: broker refused the message ({reason}); dropping it"
                        );
                    } else {
                        self.m.acked.inc();
                    }
                    acked.push(id);
                }
            }
            Ev::Message { topic, payload } => self.on_command(&topic, &payload, results_tx),
            Ev::Connected | Ev::Other => {}
        }
    }

    fn delete(&self, acked: &mut Vec<i64>) {
        if acked.is_empty() {
            return;
        }
        if let Err(e) = blocking(|| lock(&self.outbox).delete(acked)) {
            // Rows stay and are sent again later: a duplicate, never a loss.
            tracing::error!("outbox: delete of acknowledged rows failed: {e}");
        }
        acked.clear();
    }

    fn on_command(&self, topic: &str, payload: &[u8], results: &mpsc::Sender<Outgoing>) {
        let Some(rest) = topic
            .strip_prefix(self.cfg.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .and_then(|r| r.strip_suffix("/set"))
        else {
            return;
        };
        let Some((device, point)) = rest.rsplit_once('/') else {
            return;
        };
        self.m.commands.inc();
        let result_topic = format!("{topic}/result");
        let value = parse_command_value(payload);
        let router = self.router.clone();
        let results = results.clone();
        let (device, point) = (device.to_string(), point.to_string());
        tracing::info!(device, point, "command received over MQTT");
        tokio::spawn(async move {
            let outcome = match value {
                Err(e) => Err(e),
                Ok(v) => match tokio::time::timeout(
                    COMMAND_TIMEOUT,
                    router.execute(
                        device.as_str().into(),
                        point.as_str().into(),
                        v,
                        CommandOrigin::Mqtt,
                    ),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!(
                        "no answer from the adapter within {}s",
                        COMMAND_TIMEOUT.as_secs()
                    )),
                },
            };
            if let Err(e) = &outcome {
                tracing::warn!(device, point, "command failed: {e}");
            }
            let doc = match outcome {
                Ok(()) => {
                    serde_json::json!({ "ok": true, "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string() })
                }
                Err(e) => {
                    serde_json::json!({ "ok": false, "error": e, "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string() })
                }
            };
            if results
                .try_send((result_topic, doc.to_string().into_bytes()))
                .is_err()
            {
                tracing::warn!("command results queue full; result not published");
            }
        });
    }
}

/// A command payload: a JSON scalar (`true`, `21.5`, `"auto"`) or `{"value": scalar}`; text that
/// is not JSON is taken as a string.
pub fn parse_command_value(payload: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(payload).map_err(|_| "payload is not UTF-8".to_string())?;
    let json: serde_json::Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(_) => return Ok(Value::from(text.trim())),
    };
    let scalar = match json {
        serde_json::Value::Object(mut o) => o
            .remove("value")
            .ok_or_else(|| "a JSON object payload needs a `value` key".to_string())?,
        v => v,
    };
    match scalar {
        serde_json::Value::Bool(b) => Ok(Value::Bool(b)),
        serde_json::Value::Number(n) => Ok(n
            .as_i64()
            .map(Value::I64)
            .unwrap_or_else(|| Value::F64(n.as_f64().unwrap_or(f64::NAN)))),
        serde_json::Value::String(s) => Ok(Value::from(s.as_str())),
        other => Err(format!("unsupported command value {other}")),
    }
}

/// Jittered exponential backoff: a delay drawn from [d/2, d] with d = min(max, min·2^attempt).
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    let d = min.saturating_mul(1u32 << attempt.min(16)).min(max);
    let lo = d / 2;
    let ms = rand::rng().random_range(lo.as_millis() as u64..=d.as_millis().max(1) as u64);
    Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_payloads() {
        assert_eq!(parse_command_value(b"true"), Ok(Value::Bool(true)));
        assert_eq!(parse_command_value(b" 42 "), Ok(Value::I64(42)));
        assert_eq!(parse_command_value(b"21.5"), Ok(Value::F64(21.5)));
        assert_eq!(
            parse_command_value(br#"{"value":false}"#),
            Ok(Value::Bool(false))
        );
        assert_eq!(parse_command_value(b"auto"), Ok(Value::from("auto")));
        assert!(parse_command_value(br#"{"v":1}"#).is_err());
        assert!(parse_command_value(b"[1]").is_err());
        assert!(parse_command_value(&[0xff]).is_err());
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let min = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for a in 0..20 {
            let d = backoff(min, max, a);
            let cap = (min * (1 << a.min(16))).min(max);
            assert!(d >= cap / 2 && d <= cap, "attempt {a}: {d:?} vs {cap:?}");
        }
    }
}
