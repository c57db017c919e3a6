//! Client mode: one task per device polls (GET), observes (RFC 7641) and writes (commands).
//!
//! The task owns one UDP socket connected to the device, so every datagram it receives is from the
//! device, and ICMP port-unreachable shows up as `ConnectionRefused` on receive.
//!
//! Exchanges (RFC 7252 §4.2, §5.2): every request is a CON with a fresh message id and token,
//! retransmitted after a jittered, doubling timeout (`ack_timeout_ms`, up to `max_retransmit`
//! times); an empty ACK means a separate response will follow (§5.2.2), matched by token. A CON
//! response or notification is acknowledged with an empty ACK; one whose token nobody waits for is
//! answered with a RST, which also cancels a stale observation on the server (RFC 7641 §3.6).
//!
//! Observe (RFC 7641): registration is a GET with Observe 0 (§3.1). A response without the Observe
//! option means the resource is not observable: it is read again after its Max-Age. Notifications
//! older than the last one by sequence number (§3.4) are dropped. When no notification arrived for
//! Max-Age (§3.2; default 60 s, RFC 7252 §5.10.5) plus `reregister_grace_ms`, the observation is
//! re-registered with a new token (§3.3.1) — that is how a restarted server is picked up again.
//! On shutdown every observation is cancelled with a GET carrying Observe 1 (§3.6).
//!
//! Block-wise reads (RFC 7959 §2.4, §2.6): a response or notification that is block 0 of several
//! is completed with GETs carrying Block2 (num + 1, same size) and read once whole, at most
//! `max_body_bytes`; a failed or out-of-sequence block abandons that representation (counted).
//!
//! Failure: a request with no answer after its retransmissions, a RST, or ICMP unreachable counts
//! against the device; its reads are retried after `ack_timeout × 2^failures` (jittered, at most
//! `backoff_max_ms`). Commands to an unreachable device fail at once with the reason.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use weir_core::{
    BusSender, CancellationToken, Command, CommandOutcome, DeviceId, PointId, Quality, Reading,
    RegistryHandle, SourceError, Timestamp, Value,
};

use crate::config::{CoapConfig, DeviceConfig, ReadMode, ResourceConfig, WriteFormat, WriteMethod};
use crate::msg::{self, opt};
use crate::payload::{self, cf};
use crate::Stats;

/// RFC 7641 §3.4: a notification more than 128 s after the last one is fresh whatever its number.
const OBSERVE_FRESHNESS: Duration = Duration::from_secs(128);

#[derive(Debug)]
enum ResState {
    /// Next read at this instant.
    Idle(Instant),
    /// A read request is in flight.
    Waiting,
    /// Registered; notifications carry `token`.
    Observing {
        token: Vec<u8>,
        last: Instant,
        max_age: Duration,
        seq: Option<u32>,
    },
}

struct Res {
    cfg: ResourceConfig,
    segments: Vec<String>,
    state: ResState,
    point: Option<PointId>,
    unit: Option<Arc<str>>,
    /// A Block2 response being reassembled (RFC 7959 §2.4): Content-Format and the bytes so far.
    partial: Option<(Option<u16>, Vec<u8>)>,
    /// The expected period last told to the registry (Observe: Max-Age + grace).
    announced_ms: Option<u64>,
}

enum Purpose {
    Read(usize),
    /// The next block of resource `i`'s representation.
    Block2(usize),
    Command(oneshot::Sender<CommandOutcome>),
}

struct Pending {
    token: Vec<u8>,
    mid: u16,
    bytes: Vec<u8>,
    attempt: u32,
    resend_at: Instant,
    acked: bool,
    deadline: Instant,
    purpose: Purpose,
}

/// One device's client task.
pub struct DeviceClient {
    device: DeviceId,
    address: String,
    source: Arc<str>,
    resources: Vec<Res>,
    units: HashMap<String, Arc<str>>,
    ack_timeout: Duration,
    max_retransmit: u32,
    backoff_max: Duration,
    grace: Duration,
    max_body: usize,
    bus: BusSender,
    /// Where an observed point's expected period is updated from the device's Max-Age.
    registry: Option<RegistryHandle>,
    stats: Arc<Stats>,
    pending: Vec<Pending>,
    failures: u32,
    next_mid: u16,
    next_token: u64,
}

impl std::fmt::Debug for DeviceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceClient")
            .field("device", &self.device)
            .field("address", &self.address)
            .finish()
    }
}

impl DeviceClient {
    /// Keep the registry told how often an observed point reports: a notification (or a
    /// re-registration's answer) is due within the representation's Max-Age (RFC 7641 §4.3.1),
    /// after which the client re-registers (`reregister_grace_ms`), so the point's expected
    /// period is Max-Age + grace. A stream that stops then shows as stale after three periods.
    pub fn with_registry(mut self, registry: RegistryHandle) -> Self {
        self.registry = Some(registry);
        self
    }

    fn note_max_age(&mut self, i: usize, max_age: Duration) {
        let (Some(reg), Some(point)) = (&self.registry, &self.resources[i].point) else {
            return;
        };
        let ms = (max_age + self.grace).as_millis().min(u64::MAX as u128) as u64;
        if self.resources[i].announced_ms != Some(ms) {
            reg.set_point_period(self.device.as_str(), point.as_str(), Some(ms));
            self.resources[i].announced_ms = Some(ms);
        }
    }

    pub fn new(
        d: &DeviceConfig,
        cfg: &CoapConfig,
        source: Arc<str>,
        bus: BusSender,
        stats: Arc<Stats>,
    ) -> Self {
        let now = Instant::now();
        DeviceClient {
            device: DeviceId::new(&d.id),
            address: d.address.clone().unwrap_or_default(),
            source,
            resources: d
                .resources
                .iter()
                .map(|r| Res {
                    segments: r
                        .path
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                    state: ResState::Idle(now),
                    point: r.point.as_deref().map(PointId::new),
                    unit: r.unit.as_deref().map(Arc::from),
                    partial: None,
                    announced_ms: None,
                    cfg: r.clone(),
                })
                .collect(),
            units: d
                .units
                .iter()
                .map(|(k, v)| (k.clone(), Arc::from(v.as_str())))
                .collect(),
            ack_timeout: Duration::from_millis(cfg.ack_timeout_ms),
            max_retransmit: cfg.max_retransmit,
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            grace: Duration::from_millis(cfg.reregister_grace_ms),
            max_body: cfg.max_body_bytes,
            bus,
            registry: None,
            stats,
            pending: Vec::new(),
            failures: 0,
            next_mid: rand::random(),
            next_token: rand::random(),
        }
    }

    async fn connect(&self) -> std::io::Result<UdpSocket> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.address)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{} resolves to no address", self.address),
                )
            })?;
        let local: SocketAddr = if addr.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let sock = UdpSocket::bind(local).await?;
        sock.connect(addr).await?;
        Ok(sock)
    }

    /// Run until shutdown. Commands for this device arrive on `commands`.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: CancellationToken,
    ) -> Result<(), SourceError> {
        let sock = loop {
            match self.connect().await {
                Ok(s) => break s,
                Err(e) => {
                    let delay = self.backoff();
                    tracing::warn!(source = %self.source, device = %self.device, "cannot reach {}: {e}; retrying in {delay:?}", self.address);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(delay) => {}
                        Some(c) = commands.recv() => {
                            let _ = c.reply.send(Err(format!("device {} unreachable: {e}", self.address)));
                        }
                    }
                }
            }
        };
        let mut buf = vec![0u8; 65_535];
        loop {
            let wake = self.next_wake();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    self.deregister(&sock).await;
                    return Ok(());
                }
                r = sock.recv(&mut buf) => match r {
                    Ok(n) => self.datagram(&sock, &buf[..n]).await?,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        self.unreachable("port unreachable (ICMP)");
                    }
                    Err(e) => return Err(SourceError::Io(e)),
                },
                c = commands.recv() => match c {
                    Some(c) => self.command(&sock, c).await,
                    None => return Ok(()),
                },
                _ = tokio::time::sleep_until(wake) => self.timers(&sock).await,
            }
        }
    }

    /// Cancel every observation explicitly (RFC 7641 §3.6: a GET with the observation's token and
    /// Observe 1), best effort and without waiting, so devices stop notifying a gateway that left.
    async fn deregister(&mut self, sock: &UdpSocket) {
        for i in 0..self.resources.len() {
            let ResState::Observing { token, .. } = &self.resources[i].state else {
                continue;
            };
            let mut p = Packet::new();
            p.header.set_type(MessageType::NonConfirmable);
            p.header.code = MessageClass::Request(RequestType::Get);
            p.set_token(token.clone());
            p.add_option(CoapOption::Observe, msg::uint(1));
            for s in &self.resources[i].segments {
                p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
            }
            p.header.message_id = self.fresh_mid();
            if let Ok(b) = p.to_bytes() {
                let _ = sock.send(&b).await;
            }
        }
    }

    fn next_wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(3600);
        let res = self.resources.iter().filter_map(|r| match &r.state {
            ResState::Idle(t) if r.cfg.read != ReadMode::None => Some(*t),
            ResState::Observing { last, max_age, .. } => Some(*last + *max_age + self.grace),
            _ => None,
        });
        let pend = self.pending.iter().map(|p| {
            if p.acked {
                p.deadline
            } else {
                p.resend_at.min(p.deadline)
            }
        });
        res.chain(pend).min().unwrap_or(far).min(far)
    }

    /// Jittered exponential from `ack_timeout`, never above `backoff_max` ([`weir_core::Backoff`]).
    fn backoff(&self) -> Duration {
        weir_core::Backoff::delay(self.ack_timeout, self.backoff_max, self.failures)
    }

    fn fresh_token(&mut self) -> Vec<u8> {
        self.next_token = self.next_token.wrapping_add(1);
        self.next_token.to_be_bytes().to_vec()
    }

    fn fresh_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// The span within which an answer to a CON is expected (RFC 7252 §4.8.2 MAX_TRANSMIT_WAIT).
    fn transmit_wait(&self) -> Duration {
        self.ack_timeout
            .mul_f64(msg::ACK_RANDOM_FACTOR)
            .saturating_mul(2u32.saturating_pow(self.max_retransmit + 1) - 1)
    }

    async fn send_request(
        &mut self,
        sock: &UdpSocket,
        method: RequestType,
        segments: &[String],
        observe: bool,
        body: Option<(u16, Vec<u8>)>,
        purpose: Purpose,
    ) {
        let extra = if observe {
            vec![(CoapOption::Observe, msg::uint(0))]
        } else {
            Vec::new()
        };
        self.send_request_with(sock, method, segments, &extra, body, purpose)
            .await;
    }

    /// A CON request with Uri-Path `segments`, `options` and an optional body.
    async fn send_request_with(
        &mut self,
        sock: &UdpSocket,
        method: RequestType,
        segments: &[String],
        options: &[(CoapOption, Vec<u8>)],
        body: Option<(u16, Vec<u8>)>,
        purpose: Purpose,
    ) {
        let mut p = Packet::new();
        p.header.set_type(MessageType::Confirmable);
        p.header.code = MessageClass::Request(method);
        p.header.message_id = self.fresh_mid();
        let token = self.fresh_token();
        p.set_token(token.clone());
        for (o, v) in options {
            p.add_option(*o, v.clone());
        }
        for s in segments {
            p.add_option(CoapOption::UriPath, s.as_bytes().to_vec());
        }
        if let Some((format, body)) = body {
            p.add_option(CoapOption::ContentFormat, msg::uint(u32::from(format)));
            p.payload = body;
        }
        let bytes = match p.to_bytes_unlimited() {
            Ok(b) => b,
            Err(e) => {
                fail(purpose, &format!("cannot encode request: {e}"));
                return;
            }
        };
        let now = Instant::now();
        if let Err(e) = sock.send(&bytes).await {
            tracing::debug!(device = %self.device, "send failed: {e}");
        }
        self.pending.push(Pending {
            token,
            mid: p.header.message_id,
            bytes,
            attempt: 0,
            resend_at: now + msg::retransmit_timeout(self.ack_timeout, 0),
            acked: false,
            deadline: now + self.transmit_wait(),
            purpose,
        });
    }

    async fn timers(&mut self, sock: &UdpSocket) {
        let now = Instant::now();
        // Retransmissions and give-ups.
        let mut i = 0;
        while i < self.pending.len() {
            let p = &mut self.pending[i];
            if p.deadline <= now
                || (!p.acked && p.resend_at <= now && p.attempt >= self.max_retransmit)
            {
                let p = self.pending.swap_remove(i);
                self.exchange_failed(p, "no answer from the device");
                continue;
            }
            if !p.acked && p.resend_at <= now {
                p.attempt += 1;
                p.resend_at = now + msg::retransmit_timeout(self.ack_timeout, p.attempt);
                let _ = sock.send(&p.bytes).await;
            }
            i += 1;
        }
        // Reads that are due, and observations gone quiet.
        for idx in 0..self.resources.len() {
            let r = &self.resources[idx];
            let due = match &r.state {
                ResState::Idle(t) => r.cfg.read != ReadMode::None && *t <= now,
                ResState::Observing { last, max_age, .. } => {
                    if *last + *max_age + self.grace <= now {
                        self.stats.reregistrations.inc();
                        tracing::info!(source = %self.source, device = %self.device, path = %r.cfg.path,
                            "no notification for {:?}: re-registering the observation", now - *last);
                        true
                    } else {
                        false
                    }
                }
                ResState::Waiting => false,
            };
            if due {
                let observe = r.cfg.read == ReadMode::Observe;
                let segments = r.segments.clone();
                self.resources[idx].state = ResState::Waiting;
                self.send_request(
                    sock,
                    RequestType::Get,
                    &segments,
                    observe,
                    None,
                    Purpose::Read(idx),
                )
                .await;
            }
        }
    }

    fn exchange_failed(&mut self, p: Pending, why: &str) {
        match p.purpose {
            Purpose::Read(i) => {
                self.failures = self.failures.saturating_add(1);
                self.stats.client_failures.inc();
                let delay = self.backoff();
                if self.failures == 1 || self.failures.is_multiple_of(10) {
                    tracing::warn!(source = %self.source, device = %self.device, path = %self.resources[i].cfg.path,
                        failures = self.failures, "{why}; next attempt in {delay:?}");
                }
                let interval = Duration::from_millis(self.resources[i].cfg.interval_ms);
                let wait = if self.resources[i].cfg.read == ReadMode::Poll {
                    delay.max(interval)
                } else {
                    delay
                };
                self.resources[i].state = ResState::Idle(Instant::now() + wait);
            }
            Purpose::Block2(i) => {
                self.stats.client_failures.inc();
                self.resources[i].partial = None;
            }
            Purpose::Command(reply) => {
                let _ = reply.send(Err(format!("{why} ({})", self.address)));
            }
        }
    }

    fn unreachable(&mut self, why: &str) {
        for p in std::mem::take(&mut self.pending) {
            self.exchange_failed(p, why);
        }
    }

    async fn datagram(&mut self, sock: &UdpSocket, buf: &[u8]) -> Result<(), SourceError> {
        let p = match Packet::from_bytes(buf) {
            Ok(p) => p,
            Err(e) => {
                self.stats.malformed.inc();
                tracing::debug!(device = %self.device, "malformed datagram from the device: {e}");
                return Ok(());
            }
        };
        let mid = p.header.message_id;
        match p.header.get_type() {
            MessageType::Reset => {
                if let Some(i) = self.pending.iter().position(|x| x.mid == mid) {
                    let x = self.pending.swap_remove(i);
                    self.exchange_failed(x, "the device reset the request");
                }
                return Ok(());
            }
            MessageType::Acknowledgement => {
                let Some(i) = self.pending.iter().position(|x| x.mid == mid) else {
                    return Ok(());
                };
                if p.header.code == MessageClass::Empty {
                    // Separate response to follow (RFC 7252 §5.2.2).
                    self.pending[i].acked = true;
                    return Ok(());
                }
                if self.pending[i].token != p.get_token() {
                    return Ok(());
                }
                let x = self.pending.swap_remove(i);
                self.response(sock, x, &p).await?;
                return Ok(());
            }
            MessageType::Confirmable | MessageType::NonConfirmable => {}
        }
        let MessageClass::Response(_) = p.header.code else {
            // A request to a client, or an empty NON: reject (RFC 7252 §4.2, §4.3).
            if p.header.get_type() == MessageType::Confirmable {
                let _ = send_empty(sock, MessageType::Reset, mid).await;
            }
            return Ok(());
        };
        let token = p.get_token().to_vec();
        let confirmable = p.header.get_type() == MessageType::Confirmable;
        if let Some(i) = self.pending.iter().position(|x| x.token == token) {
            if confirmable {
                let _ = send_empty(sock, MessageType::Acknowledgement, mid).await;
            }
            let x = self.pending.swap_remove(i);
            self.response(sock, x, &p).await?;
            return Ok(());
        }
        let observed = self
            .resources
            .iter()
            .position(|r| matches!(&r.state, ResState::Observing { token: t, .. } if *t == token));
        let Some(i) = observed else {
            // Nobody waits for this token: a stale observation. RST cancels it (RFC 7641 §3.6).
            let _ = send_empty(sock, MessageType::Reset, mid).await;
            return Ok(());
        };
        if confirmable {
            let _ = send_empty(sock, MessageType::Acknowledgement, mid).await;
        }
        self.notification(sock, i, &p).await
    }

    /// A notification for resource `i` (RFC 7641 §4.2).
    async fn notification(
        &mut self,
        sock: &UdpSocket,
        i: usize,
        p: &Packet,
    ) -> Result<(), SourceError> {
        let now = Instant::now();
        let seq = msg::uint_option(p, opt::OBSERVE);
        let ResState::Observing {
            last,
            max_age,
            seq: last_seq,
            token,
        } = &mut self.resources[i].state
        else {
            return Ok(());
        };
        if !is_success(p.header.code) {
            // An error notification ends the observation (RFC 7641 §3.2): read again later.
            let _ = token;
            self.resources[i].state = ResState::Idle(now + self.backoff());
            return Ok(());
        }
        if let (Some(v1), Some(v2)) = (*last_seq, seq) {
            if !fresher(v1, v2) && now.duration_since(*last) < OBSERVE_FRESHNESS {
                return Ok(()); // reordered: an older notification than the last one
            }
        }
        *last = now;
        *last_seq = seq;
        *max_age = max_age_of(p);
        let age = *max_age;
        self.note_max_age(i, age);
        self.stats.notifications.inc();
        match self.body_or_fetch(sock, i, p).await {
            Some((format, body)) => self.emit(i, format, &body).await,
            None => Ok(()),
        }
    }

    /// The whole representation in `p`, or `None` when it is the first of several Block2 blocks
    /// (RFC 7959 §2.4): the rest is then fetched with GETs carrying Block2 and emitted when
    /// complete (for a notification, without Observe, §2.6).
    async fn body_or_fetch(
        &mut self,
        sock: &UdpSocket,
        i: usize,
        p: &Packet,
    ) -> Option<(Option<u16>, Vec<u8>)> {
        let format = msg::uint_option(p, opt::CONTENT_FORMAT).map(|f| f as u16);
        let block = p
            .get_first_option(CoapOption::Block2)
            .and_then(|v| msg::Block::decode(v));
        match block {
            Some(b) if b.more && b.num == 0 => {
                self.resources[i].partial = Some((format, p.payload.clone()));
                self.fetch_block(sock, i, b.num + 1, b.szx).await;
                None
            }
            _ => Some((format, p.payload.clone())),
        }
    }

    async fn fetch_block(&mut self, sock: &UdpSocket, i: usize, num: u32, szx: u8) {
        let segments = self.resources[i].segments.clone();
        let block = msg::Block {
            num,
            more: false,
            szx,
        };
        self.send_request_with(
            sock,
            RequestType::Get,
            &segments,
            &[(CoapOption::Block2, block.encode())],
            None,
            Purpose::Block2(i),
        )
        .await;
    }

    /// Readings of resource `i` from a complete body. Notifications are pushed (`try_send`, drop
    /// and count when the bus is full); replies to our reads may wait for the bus.
    async fn emit(
        &mut self,
        i: usize,
        format: Option<u16>,
        body: &[u8],
    ) -> Result<(), SourceError> {
        let batch = self.readings(i, format, body);
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        if self.resources[i].cfg.read == ReadMode::Observe {
            match self.bus.try_send(batch) {
                Ok(true) => self.stats.readings.add(n),
                Ok(false) => self.stats.bus_dropped.add(n),
                Err(e) => return Err(SourceError::BusClosed(e)),
            }
        } else {
            self.bus.send(batch).await?;
            self.stats.readings.add(n);
        }
        Ok(())
    }

    async fn response(
        &mut self,
        sock: &UdpSocket,
        x: Pending,
        p: &Packet,
    ) -> Result<(), SourceError> {
        let code = p.header.code;
        match x.purpose {
            Purpose::Block2(i) => {
                let block = p
                    .get_first_option(CoapOption::Block2)
                    .and_then(|v| msg::Block::decode(v));
                let (Some(b), true, Some((format, mut body))) =
                    (block, is_success(code), self.resources[i].partial.take())
                else {
                    self.stats.bad_payloads.inc();
                    tracing::warn!(source = %self.source, device = %self.device, path = %self.resources[i].cfg.path,
                        "block-wise read abandoned: device answered {code} or without Block2");
                    return Ok(());
                };
                if b.num as usize * b.size() != body.len()
                    || body.len() + p.payload.len() > self.max_body
                {
                    self.stats.bad_payloads.inc();
                    tracing::warn!(source = %self.source, device = %self.device, path = %self.resources[i].cfg.path,
                        "block-wise read abandoned: block {} out of sequence or body over max_body_bytes", b.num);
                    return Ok(());
                }
                body.extend_from_slice(&p.payload);
                if b.more {
                    self.resources[i].partial = Some((format, body));
                    self.fetch_block(sock, i, b.num + 1, b.szx).await;
                    return Ok(());
                }
                self.emit(i, format, &body).await?;
            }
            Purpose::Command(reply) => {
                let outcome = if is_success(code) {
                    Ok(())
                } else {
                    let diag = String::from_utf8_lossy(&p.payload);
                    Err(if diag.is_empty() {
                        format!("device answered {code}")
                    } else {
                        format!("device answered {code}: {diag}")
                    })
                };
                let _ = reply.send(outcome);
            }
            Purpose::Read(i) => {
                let now = Instant::now();
                self.failures = 0;
                if !is_success(code) {
                    tracing::warn!(source = %self.source, device = %self.device, path = %self.resources[i].cfg.path,
                        "device answered {code}: {}", String::from_utf8_lossy(&p.payload));
                    let wait = Duration::from_millis(self.resources[i].cfg.interval_ms)
                        .max(self.backoff());
                    self.resources[i].state = ResState::Idle(now + wait);
                    return Ok(());
                }
                let r = &self.resources[i];
                let observing = r.cfg.read == ReadMode::Observe;
                let seq = msg::uint_option(p, opt::OBSERVE);
                self.resources[i].state = if observing && seq.is_some() {
                    ResState::Observing {
                        token: x.token,
                        last: now,
                        max_age: max_age_of(p),
                        seq,
                    }
                } else if observing {
                    // Not observable: read again when the representation gets stale.
                    ResState::Idle(now + max_age_of(p))
                } else {
                    ResState::Idle(now + Duration::from_millis(r.cfg.interval_ms))
                };
                if observing && seq.is_some() {
                    self.note_max_age(i, max_age_of(p));
                }
                if let Some((format, body)) = self.body_or_fetch(sock, i, p).await {
                    self.emit(i, format, &body).await?;
                }
            }
        }
        Ok(())
    }

    fn readings(&self, i: usize, format: Option<u16>, body: &[u8]) -> Vec<Reading> {
        let r = &self.resources[i];
        let now = Timestamp::now();
        let entries = match payload::decode(format, body, now) {
            Ok(e) => e,
            Err(e) => {
                self.stats.bad_payloads.inc();
                tracing::warn!(source = %self.source, device = %self.device, path = %r.cfg.path, "unreadable payload: {e}");
                return Vec::new();
            }
        };
        entries
            .into_iter()
            .filter_map(|e| {
                let point = match (e.name, &r.point) {
                    (Some(n), _) => PointId::from(n),
                    (None, Some(p)) => p.clone(),
                    (None, None) => PointId::from(r.segments.last()?.as_str()),
                };
                let unit = e
                    .unit
                    .or_else(|| r.unit.clone())
                    .or_else(|| self.units.get(point.as_str()).cloned());
                Some(Reading {
                    device: self.device.clone(),
                    point,
                    value: e.value,
                    unit,
                    ts: e.ts.unwrap_or(now),
                    quality: Quality::Good,
                    source: self.source.clone(),
                })
            })
            .collect()
    }

    async fn command(&mut self, sock: &UdpSocket, c: Command) {
        let Some(r) = self
            .resources
            .iter()
            .find(|r| r.cfg.writable && r.point.as_ref() == Some(&c.point))
        else {
            let _ = c.reply.send(Err(format!(
                "no writable resource for point `{}` of `{}`",
                c.point, self.device
            )));
            return;
        };
        let (format, body) = match r.cfg.format {
            WriteFormat::Text => (cf::TEXT_PLAIN, text_of(&c.value).into_bytes()),
            WriteFormat::Json => (cf::JSON, json_of(&c.value).into_bytes()),
        };
        let method = match r.cfg.method {
            WriteMethod::Put => RequestType::Put,
            WriteMethod::Post => RequestType::Post,
        };
        let segments = r.segments.clone();
        self.stats.commands.inc();
        self.send_request(
            sock,
            method,
            &segments,
            false,
            Some((format, body)),
            Purpose::Command(c.reply),
        )
        .await;
    }
}

fn fail(purpose: Purpose, why: &str) {
    if let Purpose::Command(reply) = purpose {
        let _ = reply.send(Err(why.to_string()));
    }
}

async fn send_empty(sock: &UdpSocket, t: MessageType, mid: u16) -> std::io::Result<()> {
    if let Ok(b) = msg::empty(t, mid).to_bytes() {
        sock.send(&b).await?;
    }
    Ok(())
}

fn is_success(code: MessageClass) -> bool {
    matches!(code, MessageClass::Response(r) if !r.is_error() && r != ResponseType::UnKnown)
}

fn max_age_of(p: &Packet) -> Duration {
    msg::uint_option(p, opt::MAX_AGE)
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(msg::DEFAULT_MAX_AGE)
}

/// RFC 7641 §3.4: is `v2` newer than `v1` (24-bit serial numbers)?
pub fn fresher(v1: u32, v2: u32) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF)
}

/// A command value as `text/plain`.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::F64(f) => f.to_string(),
        Value::I64(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => s.to_string(),
    }
}

/// A command value as `application/json`.
pub fn json_of(v: &Value) -> String {
    match v {
        Value::F64(f) => serde_json::Number::from_f64(*f)
            .map(|n| n.to_string())
            .unwrap_or_else(|| "null".into()),
        Value::I64(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => serde_json::Value::String(s.to_string()).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observe_sequence_freshness_per_rfc7641() {
        assert!(fresher(1, 2));
        assert!(!fresher(2, 1));
        assert!(!fresher(5, 5));
        // wrap-around of the 24-bit number
        assert!(fresher(0xFF_FFF0, 3));
        assert!(!fresher(3, 0xFF_FFF0));
    }

    #[test]
    fn command_bodies() {
        assert_eq!(text_of(&Value::F64(21.5)), "21.5");
        assert_eq!(text_of(&Value::Bool(true)), "true");
        assert_eq!(json_of(&Value::Str(Arc::from("o\"n"))), "\"o\\\"n\"");
        assert_eq!(json_of(&Value::I64(3)), "3");
    }
}
