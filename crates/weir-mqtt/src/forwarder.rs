//! The forwarder: publishes outbox rows in commit order and deletes each only after its PUBACK.
//!
//! The forwarder is format-agnostic: the will, the command topics, what is published on connect
//! and how a row becomes a message belong to a [`NorthboundFormat`](crate::northbound) (JSON, or
//! Sparkplug B), chosen by [`FormatConfig`].
//!
//! Per session (one MQTT connection):
//! 1. connect with the format's last will (JSON: `offline`, retained, on `<prefix>/status`),
//!    subscribe to the format's command topics, then publish what the format publishes on connect
//!    (JSON: `online`, retained, on `<prefix>/status`) and the status document on
//!    `<prefix>/status/metrics` — so `online` also means commands sent from now on are heard;
//! 2. while the format is ready, read rows after a cursor in id order (a page at a time), have the
//!    format encode each (a row committed before the session became ready is *historical*), and
//!    hand them to rumqttc while fewer than `max_inflight` messages are unacknowledged; a row the
//!    format cannot encode is set aside as a dead letter;
//! 3. match `Outgoing::Publish(pkid)` events and `PubAck(pkid)` to rows with the I/O-free
//!    [`Inflight`] tracker, and delete acknowledged rows in batches;
//! 4. every `max_age / 4` (1 s to 60 s) drop rows past `store.max_age_s`, during a session as
//!    between sessions.
//!
//! When the connection fails the session is dropped whole and, after a jittered exponential
//! backoff ([`weir_core::Backoff`]), a new one starts from the oldest row still in the outbox.
//! At-least-once: the only duplicates are rows that were in flight when the connection broke.
//!
//! Rows that cannot be delivered never block the queue: a row the broker refuses (an MQTT 5 PUBACK
//! with an error reason, e.g. 135 not authorized) or that can never be published (an invalid
//! topic) is moved to the outbox's dead-letter table (kept, listed by `weir buffer stats`,
//! requeued by `weir buffer requeue`) and counted in `weir_mqtt_rejected_total`.
//!
//! # A publish that ends the connection
//!
//! Some brokers punish a publish by closing the connection, often before the PUBACK with the
//! reason is read (mosquitto 2.0.11 does for an ACL-denied QoS 1 publish from an MQTT 5 client).
//! Replaying from the oldest row would hit the same row again and again: a reconnect storm that
//! stalls everything behind it. So:
//!
//! * the backoff is reset only by a session that made progress (resolved a row) or stayed up for
//!   [`STABLE_SESSION`]; a connection that keeps dying right after it is made waits longer and
//!   longer (up to `reconnect_max`);
//! * after a session died with rows unresolved, the next session *probes*: it sends only the
//!   oldest unresolved row (window 1) until that row is resolved, so the culprit is known exactly
//!   (and, with nothing else in flight, the broker's PUBACK usually arrives before its close);
//! * a probed row whose publish was followed by the end of the connection (within
//!   [`STRIKE_WINDOW`]) [`QUARANTINE_AFTER`] times in a row is moved to the dead-letter table and
//!   counted in `weir_mqtt_quarantined_total` (and `weir_mqtt_rejected_total`). Strikes live in
//!   memory: a restart starts them again.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;
use weir_core::{
    Backoff, CancellationToken, CommandOrigin, CommandRouter, Metrics, Timestamp, Value,
};
use weir_store::{Outbox, StoredMessage};

use crate::conn::{ConnectOptions, Ev, PublishError, Session};
use crate::format::Encoder;
use crate::inflight::{Ack, Inflight, Sent};
use crate::northbound::{Inbound, InboundCommand, Message, NorthboundFormat};

/// Rows read from the outbox per query.
const PAGE: usize = 1000;
/// Acknowledged rows deleted per transaction at most; fewer are flushed by the tick.
const DELETE_BATCH: usize = 1000;
/// How long an adapter may take to answer a command before the result says so.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for acknowledgements of messages already in flight.
const SHUTDOWN_ACK_WAIT: Duration = Duration::from_secs(2);
/// A probed row whose publish ended the connection this many times in a row is quarantined.
pub const QUARANTINE_AFTER: u32 = 3;
/// A connection lost this soon after the probed row was written counts as that row's strike.
pub const STRIKE_WINDOW: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the reconnect backoff even without progress.
pub const STABLE_SESSION: Duration = Duration::from_secs(30);

/// Everything the forwarder needs.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    pub connect: ConnectOptions,
    pub prefix: String,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub commands: bool,
    pub status_interval: Duration,
    /// Outbox rows older than this are dropped (checked every `max_age / 4`, 1 s to 60 s,
    /// during sessions and between them).
    pub max_age: Duration,
    /// Return once the outbox is empty and everything is acknowledged (`weir buffer drain`).
    pub exit_when_empty: bool,
    /// The northbound format (`mqtt.format`).
    pub format: FormatConfig,
}

/// Which [`NorthboundFormat`] a forwarder publishes with, and its settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum FormatConfig {
    /// Today's JSON topics and payloads, with these topic templates.
    Json(Encoder),
    /// Sparkplug B 3.0.
    SparkplugB(crate::sparkplug::SparkplugConfig),
}

impl FormatConfig {
    /// JSON with the default topics under `prefix`.
    pub fn json(prefix: &str) -> FormatConfig {
        FormatConfig::Json(Encoder::new(
            prefix,
            "{prefix}/{device}/{point}",
            "{prefix}/{device}",
            weir_config::PublishMode::PerReading,
            1,
        ))
    }

    /// A fresh format for one forwarder run.
    pub fn build(&self) -> Box<dyn NorthboundFormat> {
        match self {
            FormatConfig::Json(e) => Box::new(e.json_format()),
            FormatConfig::SparkplugB(c) => {
                Box::new(crate::sparkplug::SparkplugFormat::new(c.clone()))
            }
        }
    }
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
    published_bytes: weir_core::Counter,
    acked: weir_core::Counter,
    rejected: weir_core::Counter,
    quarantined: weir_core::Counter,
    reconnects: weir_core::Counter,
    connected: weir_core::Gauge,
    commands: weir_core::Counter,
    outbox_rows: weir_core::Gauge,
    outbox_bytes: weir_core::Gauge,
    outbox_oldest_age_s: weir_core::Gauge,
    dropped_space: weir_core::Counter,
    dropped_age: weir_core::Counter,
    dead_letters: weir_core::Gauge,
    fs_available: weir_core::Gauge,
}

/// Raise a counter to a persisted total (the outbox keeps its drop counts across restarts).
fn raise_to(c: &weir_core::Counter, total: u64) {
    let now = c.get();
    if total > now {
        c.add(total - now);
    }
}

/// What the forwarder remembers across sessions about rows that may end the connection.
#[derive(Debug, Default)]
struct Suspects {
    /// Consecutive connection losses right after the probed row was written, per row.
    strikes: HashMap<i64, u32>,
    /// Send only this row (window 1) until it is resolved.
    probe: Option<i64>,
}

/// State the run loop keeps across sessions.
#[derive(Debug)]
struct Across {
    last_error: Option<String>,
    next_age_check: Instant,
    suspects: Suspects,
}

/// What a session leaves behind for the next one.
#[derive(Debug, Default)]
struct Outcome {
    /// Some row was resolved (delivered, refused, set aside).
    progress: bool,
    /// How long the connection was up.
    lasted: Duration,
    /// Rows requested and not resolved when the connection ended, ascending.
    unresolved: Vec<i64>,
    /// When the probed row was written, if it was and is unresolved.
    probe_sent: Option<Instant>,
}

/// How a session ended.
enum End {
    Shutdown,
    Drained,
    Lost(String),
}

/// A command's outcome, for the format to answer.
type Outgoing = (InboundCommand, Result<(), String>);

/// Command-topic filters per SUBSCRIBE packet at most (MQTT 3.1.1 §3.8.3 allows many; a few KiB
/// per packet stays far below any broker's packet size limit).
const SUBSCRIBE_CHUNK: usize = 100;

/// How long acknowledged rows wait, from the first, to be deleted together: at most 5 delete
/// transactions a second (each an fsync and a few pages written to the SD card) however the
/// PUBACKs trickle in, or one per [`DELETE_BATCH`] rows when they pour. Acknowledged rows still
/// in the outbox are only ever sent again after a crash (a duplicate, never a loss).
const FLUSH_DELAY: Duration = Duration::from_millis(200);

/// Rows resolved in a session and not yet written to the outbox.
#[derive(Debug, Default)]
struct Done {
    /// Acknowledged: delete.
    acked: Vec<i64>,
    /// Refused or unpublishable: set aside, with the reason.
    dead: Vec<(i64, String)>,
    /// When the probed row was written (cleared once it is resolved).
    probe_sent: Option<Instant>,
    /// When the oldest row in `acked` / `dead` was resolved: they are flushed [`FLUSH_DELAY`]
    /// after it (a deadline that does not move while more PUBACKs arrive).
    since: Option<Instant>,
}

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
            published_bytes: metrics.counter("weir_mqtt_published_bytes_total", &[]),
            acked: metrics.counter("weir_mqtt_acked_total", &[]),
            rejected: metrics.counter("weir_mqtt_rejected_total", &[]),
            quarantined: metrics.counter("weir_mqtt_quarantined_total", &[]),
            reconnects: metrics.counter("weir_mqtt_reconnects_total", &[]),
            connected: metrics.gauge("weir_mqtt_connected", &[]),
            commands: metrics.counter("weir_commands_total", &[]),
            outbox_rows: metrics.gauge("weir_outbox_rows", &[]),
            outbox_bytes: metrics.gauge("weir_outbox_bytes", &[]),
            outbox_oldest_age_s: metrics.gauge("weir_outbox_oldest_age_seconds", &[]),
            dropped_space: metrics.counter("weir_outbox_dropped_total", &[("reason", "space")]),
            dropped_age: metrics.counter("weir_outbox_dropped_total", &[("reason", "age")]),
            dead_letters: metrics.gauge("weir_outbox_dead_letters", &[]),
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
        let mut format = self.cfg.format.build();
        let mut backoff = Backoff::new(self.cfg.reconnect_min, self.cfg.reconnect_max);
        let mut across = Across {
            last_error: None,
            next_age_check: Instant::now(),
            suspects: Suspects::default(),
        };
        loop {
            if Instant::now() >= across.next_age_check {
                self.enforce_age();
                across.next_age_check = Instant::now() + self.age_check_interval();
            }
            let mut outcome = Outcome::default();
            let end = self
                .session(
                    format.as_mut(),
                    &shutdown,
                    &results_tx,
                    &mut results_rx,
                    &mut across,
                    &mut outcome,
                )
                .await;
            self.m.connected.set(0);
            if matches!(end, End::Lost(_))
                && self.judge(format.as_ref(), &mut across.suspects, &outcome)
            {
                outcome.progress = true;
            }
            if outcome.progress || outcome.lasted >= STABLE_SESSION {
                backoff.reset();
            }
            match end {
                End::Shutdown | End::Drained => return,
                End::Lost(e) => {
                    self.m.reconnects.inc();
                    let target = format!("{}:{}", self.cfg.connect.host, self.cfg.connect.port);
                    if across.last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(broker = %target, "mqtt: {e}; buffering in the outbox and retrying");
                    } else {
                        tracing::debug!(broker = %target, "mqtt: {e}");
                    }
                    across.last_error = Some(e);
                }
            }
            // While the broker is away the outbox gauges (`weir_outbox_rows`, bytes, age) keep
            // following the backlog, refreshed every status interval: an outage is when they
            // matter most.
            let until = Instant::now() + backoff.next_delay();
            loop {
                let _ = self.status_document();
                let next = (Instant::now() + self.cfg.status_interval).min(until);
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(next) => {}
                }
                if Instant::now() >= until {
                    break;
                }
            }
        }
    }

    /// How often rows past `max_age` are looked for: a quarter of it, 1 s to 60 s.
    fn age_check_interval(&self) -> Duration {
        (self.cfg.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// Drops rows past `max_age`; returns how many went.
    fn enforce_age(&self) -> u64 {
        match blocking(|| lock(&self.outbox).enforce_age()) {
            Ok(0) => 0,
            Ok(n) => {
                tracing::warn!(dropped = n, "outbox: dropped rows older than max_age");
                n
            }
            Err(e) => {
                tracing::error!("outbox: age check failed: {e}");
                0
            }
        }
    }

    /// After a lost connection: strike the probed row if its publish was followed by the loss,
    /// quarantine it after [`QUARANTINE_AFTER`] strikes, or start probing the oldest unresolved
    /// row. Returns whether a row was quarantined (progress).
    fn judge(
        &self,
        format: &dyn NorthboundFormat,
        suspects: &mut Suspects,
        outcome: &Outcome,
    ) -> bool {
        match suspects.probe {
            Some(row) if outcome.unresolved.contains(&row) => {
                let struck = outcome
                    .probe_sent
                    .is_some_and(|t| t.elapsed() <= STRIKE_WINDOW);
                if !struck {
                    return false;
                }
                let n = suspects.strikes.entry(row).or_insert(0);
                *n += 1;
                let n = *n;
                if n < QUARANTINE_AFTER {
                    tracing::warn!(
                        row,
                        strikes = n,
                        "mqtt: the connection ended right after this row was published"
                    );
                    return false;
                }
                suspects.strikes.remove(&row);
                suspects.probe = None;
                let reason = format!(
                    "its publish ended the connection {n} times in a row (the broker closes it \
                     instead of accepting the message)"
                );
                tracing::error!(row, "mqtt: {reason}; setting it aside as a dead letter");
                let topic = self.sent_topic(format, row);
                match blocking(|| lock(&self.outbox).dead_letter_sent(&[(row, reason, topic)])) {
                    Ok(_) => {
                        self.m.quarantined.inc();
                        self.m.rejected.inc();
                    }
                    Err(e) => tracing::error!("outbox: could not set row {row} aside: {e}"),
                }
                true
            }
            // Probing, but the connection ended before the probed row went out: keep probing it.
            Some(_) if outcome.unresolved.is_empty() => false,
            // Nothing probed (or the probed row is gone): probe the oldest row left, if any.
            _ => {
                suspects.probe = outcome.unresolved.first().copied();
                // Strikes only count for the probed row ("in a row"); forget rows gone since.
                let probe = suspects.probe;
                suspects.strikes.retain(|id, _| Some(*id) == probe);
                false
            }
        }
    }

    fn status_document(&self) -> Vec<u8> {
        let (stats, fs_available) = blocking(|| {
            let mut o = lock(&self.outbox);
            (o.stats(), o.fs_available_bytes().ok())
        });
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
                let age = s.oldest_age_ns.map(|a| a / 1_000_000_000).unwrap_or(0);
                self.m.outbox_oldest_age_s.set(age);
                raise_to(&self.m.dropped_space, s.dropped_for_space_total);
                raise_to(&self.m.dropped_age, s.dropped_for_age_total);
                self.m
                    .dead_letters
                    .set(i64::try_from(s.dead_letter_rows).unwrap_or(i64::MAX));
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
                        "dead_letter_rows": s.dead_letter_rows,
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

    #[allow(clippy::too_many_arguments)]
    async fn session(
        &self,
        format: &mut dyn NorthboundFormat,
        shutdown: &CancellationToken,
        results_tx: &mpsc::Sender<Outgoing>,
        results_rx: &mut mpsc::Receiver<Outgoing>,
        across: &mut Across,
        outcome: &mut Outcome,
    ) -> End {
        let Across {
            last_error,
            next_age_check,
            suspects,
        } = across;
        let max_inflight = self.cfg.connect.max_inflight as usize;
        let metrics_topic = format!("{}/status/metrics", self.cfg.prefix);
        let mut opts = self.cfg.connect.clone();
        let will = format.will();
        opts.will = (will.topic, will.payload);
        let mut s = Session::with_will_retain(&opts, will.retain);
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
        let connected_at = Instant::now();
        if last_error.take().is_some() {
            tracing::info!(broker = %format!("{}:{}", self.cfg.connect.host, self.cfg.connect.port), "mqtt: connected again");
        } else {
            tracing::info!(broker = %format!("{}:{}", self.cfg.connect.host, self.cfg.connect.port), "mqtt: connected");
        }
        self.m.connected.set(1);

        let mut inflight = Inflight::new();
        let mut buffer: VecDeque<StoredMessage> = VecDeque::new();
        let mut cursor: i64 = 0;
        // The last row handed to the client: the read cursor goes back here when the read-ahead
        // buffer is discarded (rows in it may have been dropped for age).
        let mut last_requested: i64 = 0;
        let mut done = Done::default();
        let mut exhausted = false;
        let mut stopping: Option<Instant> = None;

        let mut next_status = Instant::now() + self.cfg.status_interval;

        let send_other = |s: &Session, inflight: &mut Inflight, m: Message| match s
            .publish(&m.topic, m.qos, m.retain, m.payload)
        {
            Ok(()) => {
                if m.qos > 0 {
                    inflight.request(None);
                }
            }
            Err(e) => tracing::warn!(topic = m.topic, "mqtt: could not queue message: {e}"),
        };
        // Messages a format asked for that did not fit rumqttc's bounded request queue (Home
        // Assistant discovery of hundreds of devices at once): sent in order as it drains, at the
        // top of every turn of the loop below, before any row.
        let mut others: VecDeque<Message> = VecDeque::new();
        let send_others = |s: &Session, inflight: &mut Inflight, others: &mut VecDeque<Message>| {
            while let Some(m) = others.pop_front() {
                match s.publish(&m.topic, m.qos, m.retain, m.payload.clone()) {
                    Ok(()) => {
                        if m.qos > 0 {
                            inflight.request(None);
                        }
                    }
                    Err(PublishError::Full) => {
                        others.push_front(m);
                        return;
                    }
                    Err(e) => tracing::warn!(topic = m.topic, "mqtt: could not queue message: {e}"),
                }
            }
        };
        let status = |payload: Vec<u8>| Message {
            topic: metrics_topic.clone(),
            payload,
            qos: 1,
            retain: true,
        };
        // One subscription per device the registry knows, whatever the depth of its id
        // (`<prefix>/<device…>/+/set`): a write to a read-only point is answered as such; devices
        // added at run time are subscribed when the registry announces them. A device nobody owns
        // is not listened for (no broad wildcard that would echo our own telemetry back). Subscribed before `online` is published: the broker handles one
        // connection's packets in order, so whoever sees `online` can send a command and it is
        // heard.
        let mut reg_changes = self.router.registry().changes();
        let mut subscribed = std::collections::HashSet::new();
        // The format's own topics (Sparkplug: NCMD, the primary host's STATE) always; per-device
        // command topics only with `mqtt.commands`.
        for filter in format.fixed_filters() {
            if let Err(e) = s.subscribe(&filter) {
                tracing::warn!("mqtt: could not subscribe to {filter}: {e}");
            }
        }
        if self.cfg.commands {
            self.subscribe_commands(&s, &*format, &mut subscribed);
        }
        reg_changes.mark_unchanged();
        others.extend(format.on_connected(self.router.registry()));
        send_others(&s, &mut inflight, &mut others);
        send_other(&s, &mut inflight, status(self.status_document()));
        // Rows committed before this instant are the backlog (historical where the format says so).
        let mut ready = format.ready();
        let mut live_since = if ready {
            Timestamp::now().as_nanos()
        } else {
            i64::MAX
        };

        let end = loop {
            send_others(&s, &mut inflight, &mut others);
            // Fill the window from the outbox.
            let mut queue_full = false;
            // While probing, only the probed row goes out (nothing else in flight).
            let window = if suspects.probe.is_some() {
                1
            } else {
                max_inflight
            };
            if format.ready() != ready {
                ready = !ready;
                if ready {
                    live_since = Timestamp::now().as_nanos();
                }
            }
            while ready && stopping.is_none() && others.is_empty() && inflight.len() < window {
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
                let Some(row) = buffer.pop_front() else { break };
                last_requested = row.id;
                let id = row.id;
                let historical = row.enqueued_ns < live_since;
                let m = match format.encode(row, historical) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(
                            row = id,
                            format = format.name(),
                            "mqtt: cannot encode the row ({e}); setting it aside as a dead letter"
                        );
                        self.m.rejected.inc();
                        done.dead.push((id, format!("cannot encode: {e}")));
                        if suspects.probe.is_some_and(|p| id >= p) {
                            suspects.probe = None;
                        }
                        continue;
                    }
                };
                let wire = publish_packet_bytes(m.topic.len(), m.payload.len(), m.qos);
                match s.publish(&m.topic, m.qos, m.retain, m.payload) {
                    Ok(()) => {
                        inflight.request(Some(id));
                        self.m.published.inc();
                        self.m.published_bytes.add(wire);
                    }
                    Err(PublishError::InvalidTopic(t)) => {
                        tracing::error!(
                            row = id,
                            "mqtt: cannot publish to invalid topic `{t}`; setting the row aside \
                             as a dead letter"
                        );
                        self.m.rejected.inc();
                        done.dead.push((id, format!("invalid topic `{t}`")));
                        if suspects.probe.is_some_and(|p| id >= p) {
                            suspects.probe = None;
                        }
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
            if done.acked.len() >= DELETE_BATCH {
                self.flush(&*format, &mut done, outcome);
            }
            if self.cfg.exit_when_empty && exhausted && buffer.is_empty() && inflight.is_empty() {
                self.flush(&*format, &mut done, outcome);
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
                if inflight.is_empty() || Instant::now() >= deadline {
                    break End::Shutdown;
                }
            }
            let idle = buffer.is_empty() && exhausted && inflight.len() < window;
            // Wake only for work: acknowledged rows to delete (soon, to batch them), the next age
            // check or status document, the end of a shutdown's wait. An idle gateway sleeps
            // until one of those; new rows wake it through `wake` (a permit is kept if it comes
            // while we are busy, so none is missed).
            let next_tick = {
                let mut t = (*next_age_check).min(next_status);
                if !done.acked.is_empty() || !done.dead.is_empty() {
                    let since = *done.since.get_or_insert_with(Instant::now);
                    t = t.min(since + FLUSH_DELAY);
                }
                if let Some(d) = stopping {
                    t = t.min(d);
                }
                t
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if stopping.is_none() => {
                    stopping = Some(Instant::now() + SHUTDOWN_ACK_WAIT);
                }
                ev = s.poll() => match ev {
                    Ok(ev) => match self.on_event(ev, format, &mut inflight, &mut done, suspects, results_tx) {
                        None => {}
                        Some(Inbound::Publish(msgs)) => others.extend(msgs),
                        Some(Inbound::Reconnect(why)) => break End::Lost(why),
                        Some(Inbound::Ignore | Inbound::Commands(_)) => {}
                    },
                    Err(e) => {
                        for ev in s.leftover() {
                            self.on_event(ev, format, &mut inflight, &mut done, suspects, results_tx);
                        }
                        break End::Lost(format!("connection lost: {e}"));
                    }
                },
                Some((cmd, outcome)) = results_rx.recv() => {
                    if let Some(m) = format.answer(&cmd, &outcome) {
                        send_other(&s, &mut inflight, m);
                    }
                }
                Ok(()) = reg_changes.changed() => {
                    if self.cfg.commands {
                        self.subscribe_commands(&s, &*format, &mut subscribed);
                    }
                    others.extend(format.on_registry_change(self.router.registry()));
                }
                _ = self.wake.notified(), if idle => {
                    exhausted = false;
                }
                _ = tokio::time::sleep_until(next_tick) => {
                    self.flush(&*format, &mut done, outcome);
                    if Instant::now() >= *next_age_check {
                        *next_age_check = Instant::now() + self.age_check_interval();
                        if self.enforce_age() > 0 {
                            // The read-ahead may hold rows that are gone now: read again.
                            buffer.clear();
                            cursor = last_requested;
                            exhausted = false;
                        }
                    }
                    if Instant::now() >= next_status {
                        next_status = Instant::now() + self.cfg.status_interval;
                        let doc = self.status_document();
                        send_other(&s, &mut inflight, status(doc));
                    }
                }
            }
        };
        self.flush(&*format, &mut done, outcome);
        outcome.lasted = connected_at.elapsed();
        outcome.probe_sent = done.probe_sent;
        outcome.unresolved = inflight.clear();
        if matches!(end, End::Shutdown | End::Drained) {
            // A clean goodbye: the retained status says offline (the will only fires on a lost
            // connection), then DISCONNECT.
            for m in format.goodbye() {
                send_other(&s, &mut inflight, m);
            }
            s.disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while s.poll().await.is_ok() {}
            })
            .await;
        }
        end
    }

    /// Feed a client event to the in-flight tracker and act on what it resolved; an incoming
    /// message goes to the format, and what it asks for beyond commands is returned.
    fn on_event(
        &self,
        ev: Ev,
        format: &mut dyn NorthboundFormat,
        inflight: &mut Inflight,
        done: &mut Done,
        suspects: &mut Suspects,
        results_tx: &mpsc::Sender<Outgoing>,
    ) -> Option<Inbound> {
        let resolved = match ev {
            Ev::Sent(pkid) => match inflight.sent(pkid) {
                Sent::Delivered(id) => {
                    self.m.acked.inc();
                    done.acked.push(id);
                    Some(id)
                }
                Sent::Awaiting(id) => {
                    if suspects.probe == Some(id) {
                        done.probe_sent = Some(Instant::now());
                    }
                    None
                }
                Sent::Reused { previous, .. } => {
                    tracing::warn!(
                        pkid,
                        row = previous,
                        "mqtt: packet id reused while awaiting its ack; the row is sent again later"
                    );
                    None
                }
                Sent::NotARow => None,
                Sent::Unmatched => {
                    tracing::warn!(pkid, "mqtt: publish event without a queued message");
                    None
                }
            },
            Ev::Acked(pkid, r) => match inflight.acked(pkid, r) {
                Ack::Delivered(id) => {
                    self.m.acked.inc();
                    done.acked.push(id);
                    Some(id)
                }
                Ack::Refused(id, reason) => {
                    self.m.rejected.inc();
                    tracing::error!(
                        row = id,
                        "mqtt: broker refused the message ({reason}); setting it aside as a dead \
                         letter"
                    );
                    done.dead
                        .push((id, format!("refused by the broker: {reason}")));
                    Some(id)
                }
                Ack::NotARow | Ack::Unknown => None,
            },
            Ev::Message { topic, payload } => {
                return match format.on_message(&topic, &payload) {
                    Inbound::Commands(cmds) => {
                        for c in cmds {
                            self.on_command(c, results_tx);
                        }
                        None
                    }
                    Inbound::Ignore => None,
                    other => Some(other),
                };
            }
            Ev::Connected | Ev::Other => None,
        };
        if let Some(id) = resolved {
            suspects.strikes.remove(&id);
            // Rows go out in id order from the oldest: a row at or past the probed one resolved
            // means the probed row is resolved or gone (dropped for age).
            if suspects.probe.is_some_and(|p| id >= p) {
                suspects.probe = None;
                done.probe_sent = None;
            }
        }
        None
    }

    /// Delete the acknowledged rows and set the refused ones aside, each in one transaction.
    /// The topic the format publishes row `id` on (read again: refusals are rare).
    fn sent_topic(&self, format: &dyn NorthboundFormat, id: i64) -> Option<String> {
        let row = blocking(|| lock(&self.outbox).read_after(id - 1, 1))
            .ok()?
            .into_iter()
            .next()
            .filter(|r| r.id == id)?;
        format.topic_of(&row)
    }

    fn flush(&self, format: &dyn NorthboundFormat, done: &mut Done, outcome: &mut Outcome) {
        done.since = None;
        if !done.acked.is_empty() {
            outcome.progress = true;
            if let Err(e) = blocking(|| lock(&self.outbox).delete(&done.acked)) {
                // Rows stay and are sent again later: a duplicate, never a loss.
                tracing::error!("outbox: delete of acknowledged rows failed: {e}");
            }
            done.acked.clear();
        }
        if !done.dead.is_empty() {
            outcome.progress = true;
            let rows: Vec<(i64, String, Option<String>)> = done
                .dead
                .drain(..)
                .map(|(id, reason)| (id, reason, self.sent_topic(format, id)))
                .collect();
            if let Err(e) = blocking(|| lock(&self.outbox).dead_letter_sent(&rows)) {
                // They stay in the outbox and are offered to the broker again.
                tracing::error!("outbox: could not set refused rows aside: {e}");
            }
            done.dead.clear();
        }
    }

    /// Subscribe the format's command filter (JSON: `<prefix>/<device>/+/set`) for every known
    /// device not subscribed yet.
    fn subscribe_commands(
        &self,
        s: &Session,
        format: &dyn NorthboundFormat,
        subscribed: &mut std::collections::HashSet<weir_core::DeviceId>,
    ) {
        let new: Vec<(weir_core::DeviceId, String)> = self
            .router
            .registry()
            .ids()
            .into_iter()
            .filter(|d| !subscribed.contains(d))
            .filter_map(|d| format.device_filter(&d).map(|f| (d, f)))
            .collect();
        // A few SUBSCRIBE packets, not one per device: each is one entry in rumqttc's bounded
        // request queue, and hundreds of devices joining at once must not crowd out publishes.
        for chunk in new.chunks(SUBSCRIBE_CHUNK) {
            let filters: Vec<String> = chunk.iter().map(|(_, f)| f.clone()).collect();
            match s.subscribe_many(&filters) {
                Ok(()) => subscribed.extend(chunk.iter().map(|(d, _)| d.clone())),
                Err(e) => tracing::warn!(
                    "mqtt: could not subscribe to the command topics of {} devices ({} …): {e}",
                    chunk.len(),
                    filters[0]
                ),
            }
        }
    }

    /// Hand a parsed command to the router; its outcome comes back through `results` for the
    /// format to answer.
    fn on_command(&self, cmd: InboundCommand, results: &mpsc::Sender<Outgoing>) {
        self.m.commands.inc();
        let router = self.router.clone();
        let results = results.clone();
        tracing::info!(
            device = cmd.device,
            point = cmd.point,
            "command received over MQTT"
        );
        tokio::spawn(async move {
            let outcome = match &cmd.value {
                Err(e) => Err(e.clone()),
                Ok(v) => match tokio::time::timeout(
                    COMMAND_TIMEOUT,
                    router.execute(
                        cmd.device.as_str().into(),
                        cmd.point.as_str().into(),
                        v.clone(),
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
                tracing::warn!(
                    device = cmd.device,
                    point = cmd.point,
                    "command failed: {e}"
                );
            }
            if results.try_send((cmd, outcome)).is_err() {
                tracing::warn!("command results queue full; result not published");
            }
        });
    }
}

/// Bytes of an MQTT 3.1.1 PUBLISH packet (§3.3): fixed header (1 byte and the remaining length
/// as a variable byte integer, §2.2.3), topic with its 2-byte length, packet id for QoS > 0,
/// payload. Counted in `weir_mqtt_published_bytes_total` for rows.
pub fn publish_packet_bytes(topic: usize, payload: usize, qos: u8) -> u64 {
    let remaining = 2 + topic + usize::from(qos > 0) * 2 + payload;
    let len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    (1 + len_bytes + remaining) as u64
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

/// Jittered exponential backoff: a delay drawn from [d/2, d] with d = min(max, min·2^attempt),
/// never above `max`. A thin wrapper over [`weir_core::Backoff::delay`], kept for callers.
pub fn backoff(min: Duration, max: Duration, attempt: u32) -> Duration {
    Backoff::delay(min, max, attempt)
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
        // Below a millisecond the old formula waited 1 ms, above the configured max.
        let tiny = Duration::from_micros(300);
        for a in 0..5 {
            assert!(backoff(tiny, tiny, a) <= tiny);
        }
    }

    #[test]
    fn dropped_totals_are_counters_that_follow_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let limits = weir_store::Limits {
            max_bytes: 200,
            max_age: Duration::from_secs(3600),
            synchronous_full: false,
            min_free_bytes: 0,
        };
        let outbox = Arc::new(Mutex::new(
            Outbox::open(&dir.path().join("o.db"), limits).unwrap(),
        ));
        let metrics = Metrics::new();
        let cfg = ForwarderConfig {
            connect: ConnectOptions {
                host: "127.0.0.1".into(),
                port: 1,
                client_id: "t".into(),
                v5: false,
                keepalive: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(1),
                credentials: None,
                tls: None,
                max_inflight: 10,
                will: ("t/status".into(), b"offline".to_vec()),
                max_packet_bytes: 1 << 20,
            },
            prefix: "t".into(),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(1),
            commands: false,
            status_interval: Duration::from_secs(1),
            max_age: Duration::from_secs(3600),
            exit_when_empty: false,
            format: FormatConfig::json("t"),
        };
        let f = Forwarder::new(
            cfg,
            outbox.clone(),
            Arc::new(Notify::new()),
            CommandRouter::new(),
            metrics.clone(),
        );
        let append = |n: usize| {
            lock(&outbox)
                .append(|_| {
                    (0..n)
                        .map(|_| weir_store::NewMessage {
                            topic: "t".into(),
                            payload: vec![0; 50],
                            qos: 1,
                            retain: false,
                        })
                        .collect()
                })
                .unwrap()
        };
        append(5); // 5 × 83 bytes against 200: 3 dropped
        f.status_document();
        let text = metrics.render_prometheus();
        assert!(
            text.contains("# TYPE weir_outbox_dropped_total counter"),
            "{text}"
        );
        assert!(
            text.contains("weir_outbox_dropped_total{reason=\"space\"} 3"),
            "{text}"
        );
        append(1);
        f.status_document();
        f.status_document();
        assert!(metrics
            .render_prometheus()
            .contains("weir_outbox_dropped_total{reason=\"space\"} 4"));
    }
}
