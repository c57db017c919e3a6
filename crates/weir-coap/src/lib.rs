//! The CoAP adapter (RFC 7252): devices push readings to Weir, or Weir polls and observes them.
//!
//! One `coap` source is one task tree:
//! * **server mode** (`listen:`) — one UDP socket; devices POST/PUT scalars, JSON objects, SenML
//!   JSON or SenML CBOR packs (RFC 8428), whole or block-wise (RFC 7959 Block1); discovery at
//!   `/.well-known/core` (RFC 6690). A push source: readings go on the bus with `try_send`, a full
//!   bus drops them (counted) and the device is answered 5.03. See [`server`].
//! * **client mode** (`devices[i].address` + `resources`) — one task per device with its own
//!   socket: GET polls, Observe (RFC 7641) with re-registration, and commands as PUT/POST whose
//!   response code is the command's result. See [`client`].
//!
//! Registry: declared devices with the points the configuration names; polled points expect a
//! reading every `interval_ms`, observed ones every Max-Age + `reregister_grace_ms` (60 s by
//! default, then as each notification states), posted ones have no expected period (see
//! `device_specs` on [`CoapConfig`]). A client exchange that fails sends no reading, so a polled
//! device that stops answering, or an Observe stream that stops and whose re-registration fails,
//! goes stale, then offline, three periods later.
//!
//! The codec is the `coap-lite` crate; [`msg`] holds what it leaves to its user (Block values,
//! empty messages, protocol constants), [`payload`] turns bodies into values.
//!
//! Counters (`weir_coap_*_total`, labelled with the source) are kept in a [`Stats`]; the running
//! source logs a summary every `stats_interval_s` when they changed.
//!
//! * **DTLS-PSK** (`dtls:`, cargo feature `dtls`) — a second listener for `coaps://` whose
//!   datagrams, once decrypted, are served by the same server task; each PSK identity may write
//!   only its devices. See [`dtls`] (present with the feature).
//!
//! Not supported: OSCORE, multicast, DTLS in client mode, Block2 for responses we serve (the only
//! resource served, `/.well-known/core`, fits one datagram). Block2 responses we read are
//! reassembled (RFC 7959 §2.4).

pub mod client;
pub mod config;
#[cfg(feature = "dtls")]
pub mod dtls;
pub mod msg;
pub mod payload;
pub mod server;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use weir_core::{
    BuildError, Command, Counter, DeviceId, DeviceInfo, DeviceSpec, Metrics, PointId, PointSpec,
    Source, SourceBuilder, SourceContext, SourceError,
};

pub use config::CoapConfig;

/// The adapter's counters.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Requests received by the server (parsed, deduplicated or not).
    pub requests: Counter,
    /// Readings put on the bus.
    pub readings: Counter,
    /// Datagrams that were not valid CoAP.
    pub malformed: Counter,
    /// Requests answered with 4.xx or 5.xx.
    pub rejected: Counter,
    /// Requests refused (4.04) because their device is neither declared nor under an
    /// `accept_undeclared_under` prefix.
    pub undeclared: Counter,
    /// Requests refused (4.00) because a name (JSON member, resolved SenML name) does not map to
    /// one device and one point, or breaks RFC 8428 §4.5.1.
    pub bad_names: Counter,
    /// Retransmitted requests answered from the deduplication cache.
    pub duplicates: Counter,
    /// Readings dropped because the bus was full.
    pub bus_dropped: Counter,
    /// Block-wise uploads started.
    pub block_transfers: Counter,
    /// Observe notifications accepted.
    pub notifications: Counter,
    /// Observations re-registered after going quiet.
    pub reregistrations: Counter,
    /// Client exchanges that got no answer, a RST or ICMP unreachable.
    pub client_failures: Counter,
    /// Client responses whose payload could not be read.
    pub bad_payloads: Counter,
    /// Commands sent to devices.
    pub commands: Counter,
    /// DTLS sessions established.
    pub dtls_sessions: Counter,
    /// DTLS handshakes that failed or timed out (unknown identity, wrong key, garbage).
    pub dtls_handshake_failures: Counter,
}

impl Stats {
    /// Counters named `weir_coap_<what>_total{source=…}` in `metrics`.
    pub fn register(metrics: &Metrics, source: &str) -> Stats {
        let c = |n: &str| metrics.counter(&format!("weir_coap_{n}_total"), &[("source", source)]);
        Stats {
            requests: c("requests"),
            readings: c("readings"),
            malformed: c("malformed"),
            rejected: c("rejected"),
            undeclared: c("undeclared"),
            bad_names: c("bad_names"),
            duplicates: c("duplicates"),
            bus_dropped: c("bus_dropped"),
            block_transfers: c("block_transfers"),
            notifications: c("notifications"),
            reregistrations: c("reregistrations"),
            client_failures: c("client_failures"),
            bad_payloads: c("bad_payloads"),
            commands: c("commands"),
            dtls_sessions: c("dtls_sessions"),
            dtls_handshake_failures: c("dtls_handshake_failures"),
        }
    }

    /// `requests=… readings=… …` for the log.
    pub fn summary(&self) -> String {
        format!(
            "requests={} readings={} malformed={} rejected={} undeclared={} bad_names={} duplicates={} bus_dropped={} block_transfers={} notifications={} reregistrations={} client_failures={} bad_payloads={} commands={} dtls_sessions={} dtls_handshake_failures={}",
            self.requests.get(),
            self.readings.get(),
            self.malformed.get(),
            self.rejected.get(),
            self.undeclared.get(),
            self.bad_names.get(),
            self.duplicates.get(),
            self.bus_dropped.get(),
            self.block_transfers.get(),
            self.notifications.get(),
            self.reregistrations.get(),
            self.client_failures.get(),
            self.bad_payloads.get(),
            self.commands.get(),
            self.dtls_sessions.get(),
            self.dtls_handshake_failures.get(),
        )
    }
}

impl SourceBuilder for CoapConfig {
    fn kind(&self) -> &'static str {
        "coap"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        self.devices
            .iter()
            .map(|d| DeviceInfo {
                device: DeviceId::new(&d.id),
                writable_points: d
                    .resources
                    .iter()
                    .filter(|r| r.writable)
                    .filter_map(|r| r.point.as_deref().map(PointId::new))
                    .collect(),
            })
            .collect()
    }

    /// Every declared device with the points its configuration names:
    ///
    /// * a resource's `point` with its unit (the resource's `unit`, else the device's `units`),
    ///   writable when the resource is; expected period: `interval_ms` when the resource is
    ///   polled. An observed resource has none: a notification comes when the value changes (RFC
    ///   7641), so a steady value is silent, and how often the client re-registers depends on
    ///   the Max-Age the device sends, which the configuration does not state. A write-only
    ///   resource (`read: none`) has none either. Two resources naming one point make one point,
    ///   writable if either is, with the shortest poll interval.
    /// * the names in `units` no resource names (points a server-mode device posts, or that a
    ///   JSON/SenML payload names), read-only, without a period: a device posts when it wants.
    ///
    /// Points named only by a payload (a resource without `point`) are learned from the first
    /// reading. The payload decides value types, so they are left unknown; no class is guessed.
    fn device_specs(&self) -> Vec<DeviceSpec> {
        self.devices
            .iter()
            .map(|d| {
                let mut spec = DeviceSpec::new(DeviceId::new(&d.id));
                for r in &d.resources {
                    let Some(point) = r.point.as_deref() else {
                        continue;
                    };
                    // Polled: the poll interval. Observed: a notification or a re-registration's
                    // answer is due within Max-Age + `reregister_grace_ms`; until the device
                    // states its Max-Age, the default 60 s (RFC 7252 §5.10.5) stands, and the
                    // client updates it from every notification.
                    let period = match r.read {
                        config::ReadMode::Poll => Some(r.interval_ms.max(1)),
                        config::ReadMode::Observe => {
                            Some(DEFAULT_MAX_AGE_MS + self.reregister_grace_ms)
                        }
                        _ => None,
                    };
                    match spec.points.iter_mut().find(|p| p.name.as_str() == point) {
                        Some(p) => {
                            p.writable |= r.writable;
                            p.expected_period_ms = match (p.expected_period_ms, period) {
                                (Some(a), Some(b)) => Some(a.min(b)),
                                (a, b) => a.or(b),
                            };
                            if p.unit.is_none() {
                                p.unit = resource_unit(d, point, r).map(Arc::from);
                            }
                        }
                        None => spec.points.push(
                            PointSpec::new(PointId::new(point))
                                .unit(resource_unit(d, point, r))
                                .writable(r.writable)
                                .period_ms(period),
                        ),
                    }
                }
                for (point, unit) in &d.units {
                    if !spec.points.iter().any(|p| p.name.as_str() == point) {
                        spec.points
                            .push(PointSpec::new(PointId::new(point)).unit(Some(unit)));
                    }
                }
                spec
            })
            .collect()
    }

    fn build(&self, name: &str, metrics: &Metrics) -> Result<Box<dyn Source>, BuildError> {
        if let Some((key, msg)) = self.validate().into_iter().next() {
            return Err(BuildError {
                source_name: name.to_string(),
                message: format!("{key}: {msg}"),
            });
        }
        Ok(Box::new(CoapSource::new(self.clone(), name, metrics)))
    }
}

/// Max-Age when a response has none (RFC 7252 §5.10.5).
const DEFAULT_MAX_AGE_MS: u64 = 60_000;

/// The unit of `point` read from resource `r`: the resource's `unit`, else the device's `units`.
fn resource_unit<'a>(
    d: &'a config::DeviceConfig,
    point: &str,
    r: &'a config::ResourceConfig,
) -> Option<&'a str> {
    r.unit
        .as_deref()
        .or_else(|| d.units.get(point).map(String::as_str))
}

/// A running `coap` source.
#[derive(Debug)]
pub struct CoapSource {
    cfg: CoapConfig,
    name: Arc<str>,
    stats: Arc<Stats>,
}

impl CoapSource {
    /// A source whose counters live in `metrics`.
    pub fn new(cfg: CoapConfig, name: &str, metrics: &Metrics) -> Self {
        CoapSource {
            stats: Arc::new(Stats::register(metrics, name)),
            name: Arc::from(name),
            cfg,
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
}

#[async_trait]
impl Source for CoapSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), SourceError> {
        let stop = ctx.shutdown.child_token();
        let mut tasks: JoinSet<Result<(), SourceError>> = JoinSet::new();
        let sock = match self.cfg.listen {
            None => None,
            Some(addr) => {
                let sock = tokio::net::UdpSocket::bind(addr).await.map_err(|e| {
                    SourceError::Io(std::io::Error::new(
                        e.kind(),
                        format!("coap: cannot listen on udp {addr}: {e}"),
                    ))
                })?;
                tracing::info!(source = %self.name, addr = %sock.local_addr()?, "CoAP server listening");
                Some(sock)
            }
        };
        #[cfg(feature = "dtls")]
        let secure = match &self.cfg.dtls {
            None => None,
            Some(d) => {
                let (tx, rx) = mpsc::channel(1024);
                tasks.spawn(dtls::serve(
                    d.clone(),
                    self.name.clone(),
                    self.stats.clone(),
                    tx,
                    stop.clone(),
                ));
                Some(rx)
            }
        };
        #[cfg(not(feature = "dtls"))]
        let secure = None;
        if sock.is_some() || secure.is_some() {
            let server = server::Server::new(
                sock,
                &self.cfg,
                self.name.clone(),
                ctx.bus.clone(),
                self.stats.clone(),
            );
            tasks.spawn(server.run(stop.clone(), secure));
        }
        let mut routes: HashMap<DeviceId, mpsc::Sender<Command>> = HashMap::new();
        for d in &self.cfg.devices {
            if d.address.is_none() || d.resources.is_empty() {
                continue;
            }
            let (tx, rx) = mpsc::channel(16);
            routes.insert(DeviceId::new(&d.id), tx);
            let c = client::DeviceClient::new(
                d,
                &self.cfg,
                self.name.clone(),
                ctx.bus.clone(),
                self.stats.clone(),
            )
            .with_registry(ctx.registry.clone());
            tasks.spawn(c.run(rx, stop.clone()));
        }
        let mut tick = tokio::time::interval(Duration::from_secs(self.cfg.stats_interval_s));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = String::new();
        let mut commands_open = true;
        let result = loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break Ok(()),
                done = tasks.join_next(), if !tasks.is_empty() => match done {
                    Some(Ok(Ok(()))) if ctx.shutdown.is_cancelled() => break Ok(()),
                    Some(Ok(Ok(()))) => break Err(SourceError::Other("a CoAP task stopped".into())),
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(e)) => break Err(SourceError::Other(format!("a CoAP task failed: {e}"))),
                    None => {}
                },
                // A closed inbox (no router) would be ready forever: stop polling it.
                cmd = ctx.commands.recv(), if commands_open => {
                    let Some(cmd) = cmd else { commands_open = false; continue };
                    match routes.get(&cmd.device) {
                        None => {
                            let _ = cmd.reply.send(Err(format!(
                                "device `{}` has no address: server-mode devices cannot be written",
                                cmd.device
                            )));
                        }
                        Some(tx) => {
                            if let Err(e) = tx.try_send(cmd) {
                                let cmd = match e {
                                    mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
                                };
                                let _ = cmd.reply.send(Err(format!("device `{}` is busy", cmd.device)));
                            }
                        }
                    }
                }
                _ = tick.tick() => {
                    let s = self.stats.summary();
                    if s != last {
                        tracing::info!(source = %self.name, "coap stats {s}");
                        last = s;
                    }
                }
            }
        };
        stop.cancel();
        while tasks.join_next().await.is_some() {}
        tracing::info!(source = %self.name, "coap stats {}", self.stats.summary());
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_core::ValueType;

    /// (name, unit, writable, expected period) of a point.
    type Row = (String, Option<String>, bool, Option<u64>);

    /// The rows of every point of every declared device.
    fn points(yaml: &str) -> Vec<(String, Vec<Row>)> {
        let c: CoapConfig = serde_yaml::from_str(yaml).unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        c.device_specs()
            .into_iter()
            .map(|d| {
                for p in &d.points {
                    assert_eq!(p.value_type, ValueType::Unknown, "the payload decides");
                    assert_eq!(p.class, None);
                }
                (
                    d.id.to_string(),
                    d.points
                        .iter()
                        .map(|p| {
                            (
                                p.name.to_string(),
                                p.unit.as_deref().map(str::to_string),
                                p.writable,
                                p.expected_period_ms,
                            )
                        })
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn declared_devices_with_units_writability_and_poll_periods() {
        let got = points(
            r#"
listen: 127.0.0.1:5683
devices:
  - id: lab/th1
    units: { temperature: "°C", humidity: "%" }
  - id: plant/pump1
    address: 127.0.0.1:5684
    units: { pressure: hPa, temperature: K }
    resources:
      - { path: counter, read: observe }
      - { path: temp, point: temperature, unit: "°C", interval_ms: 300 }
      - { path: p, point: pressure }
      - { path: level, point: level, read: observe }
      - { path: valve, point: valve, read: none, writable: true }
      - { path: valve/state, point: valve, interval_ms: 2000 }
      - { path: valve/state2, point: valve, interval_ms: 500 }
      - { path: big, interval_ms: 2000 }
"#,
        );
        let s = |x: &str| x.to_string();
        assert_eq!(
            got,
            vec![
                (
                    s("lab/th1"),
                    vec![
                        // Server mode: no period, a device posts when it wants.
                        (s("humidity"), Some(s("%")), false, None),
                        (s("temperature"), Some(s("°C")), false, None),
                    ]
                ),
                (
                    s("plant/pump1"),
                    vec![
                        // The resource's unit wins over the device's `units`.
                        (s("temperature"), Some(s("°C")), false, Some(300)),
                        // The default poll interval, the unit from `units`.
                        (s("pressure"), Some(s("hPa")), false, Some(10_000)),
                        // Observed: the default Max-Age (60 s) + the re-registration grace,
                        // until the device states its own.
                        (s("level"), None, false, Some(60_000 + 5_000)),
                        // Written at `valve`, polled at two paths: the shortest interval.
                        (s("valve"), None, true, Some(500)),
                    ]
                ),
            ]
        );
        // The router's view is unchanged: the writable points.
        let c: CoapConfig = serde_yaml::from_str(
            "devices: [ { id: d, address: \"h:1\", resources: [ { path: v, point: v, read: none, writable: true } ] } ]",
        )
        .unwrap();
        assert_eq!(c.devices()[0].writable_points, vec![PointId::new("v")]);
        assert!(c.device_specs()[0].points[0].writable);
    }
}
