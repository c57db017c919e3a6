//! Server mode: devices push readings with POST/PUT over UDP.
//!
//! Resources (RFC 7252 §5.8, RFC 6690):
//! * `POST|PUT /<device…>/<point>` with a scalar body — one reading (the last segment is the point);
//! * `POST|PUT /<device…>` with a JSON object, a SenML JSON or a SenML CBOR pack — one reading per
//!   member or record (see [`crate::payload`]);
//! * `POST|PUT /` with SenML whose resolved names are `<device>/<point>` (or `<device>:<point>`);
//! * `GET /.well-known/core` — the link-format listing (RFC 6690 §4).
//!
//! Names → device and point (see [`locate`]). A SenML record's name is resolved first, as RFC 8428
//! §4.5.1 says: base name and name concatenated (`bn + n`). Then:
//! * posted to `/<device>`: the name (a JSON member's or a resolved SenML name) is the point, after
//!   removing a leading `<device>/` or `<device>:` — so a pack whose base name repeats the device
//!   (`{"bn":"aio/dev2/","n":"pressure"}` to `/aio/dev2`) gives point `pressure` of `aio/dev2`;
//! * posted to `/`: the name is split at its last `/` or `:` into `<device>` and `<point>`;
//! * a name that does not give one device and one non-empty point without `/` (e.g.
//!   `other/dev/pressure` posted to `/aio/dev2`) is refused: 4.00 with a diagnostic, the whole
//!   request is dropped, counted in `weir_coap_bad_names_total`.
//!
//! Which devices are accepted: those declared under `devices`, and undeclared ones only under a
//! prefix listed in `accept_undeclared_under` (an explicit opt-in: plain UDP is unauthenticated).
//! Any other device is answered 4.04 Not Found — the resource does not exist on this server —
//! and counted in `weir_coap_undeclared_total`. (4.03 Forbidden is kept for a DTLS identity
//! writing a device it may not.)
//!
//! Answers: 2.04 Changed; 2.31 Continue for a Block1 block with more to come (RFC 7959 §2.9.1);
//! 4.00 Bad Request with a UTF-8 diagnostic payload (RFC 7252 §5.5.2); 4.02 Bad Option for an
//! unknown critical option (§5.4.1); 4.03 for a DTLS identity writing a device it may not; 4.04 for
//! a device that is not accepted; 4.05 for other methods;
//! 4.08 for a block out of sequence (RFC 7959 §2.9.2); 4.13 with Size1 when the body is too large
//! (RFC 7252 §5.9.2.9, RFC 7959 §4); 4.15 for an unknown Content-Format; 5.03 with Max-Age when the
//! bus is full (the readings were dropped and counted: a push source never waits).
//!
//! Invariants:
//! * a request is taken whole or not at all: its readings go on the bus together, or none do;
//! * a CON gets exactly one piggybacked answer; a retransmission of a message id already seen from
//!   the same endpoint (within EXCHANGE_LIFETIME, at most `DEDUP_CAPACITY` remembered) is answered
//!   with the same bytes and not processed again (RFC 7252 §4.5);
//! * a datagram that does not parse is counted; if it is a CON with a readable header it is
//!   answered with a RST (§4.2), otherwise dropped (§4.3). Nothing a peer sends stops the task;
//! * memory is bounded: block-wise uploads by `max_block_transfers` × `max_body_bytes`, the
//!   deduplication cache by `DEDUP_CAPACITY` entries.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, RequestType, ResponseType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use weir_core::{
    BusSender, CancellationToken, DeviceId, PointId, Quality, Reading, SourceError, Timestamp,
};

use crate::config::{glob_match, valid_id, CoapConfig};
use crate::msg::{self, opt, Block};
use crate::payload::{self, cf};
use crate::Stats;

/// Message ids remembered per server for deduplication. Below 65536 so that a peer sending faster
/// than ids wrap within EXCHANGE_LIFETIME is never mistaken for a retransmission.
pub const DEDUP_CAPACITY: usize = 8192;

/// Largest datagram read (a UDP payload cannot be larger).
const MAX_DATAGRAM: usize = 65_535;

/// A request's identity for deduplication: endpoint and message id (RFC 7252 §4.5).
type DedupKey = (Peer, u16);

/// Who sent a datagram: the address, and for DTLS the PSK identity the session authenticated.
/// A DTLS peer never shares dedup or block state with a plain-UDP one at the same address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub identity: Option<Arc<str>>,
}

/// A datagram decrypted by a DTLS session, handed to the server with the way back.
#[derive(Debug)]
pub struct Inbound {
    pub data: Vec<u8>,
    pub peer: Peer,
    pub reply: mpsc::Sender<Vec<u8>>,
}

enum Dest {
    Udp(SocketAddr),
    Secure(mpsc::Sender<Vec<u8>>),
}

/// What the server knows about the devices it accepts.
#[derive(Debug)]
pub struct Acceptance {
    declared: HashMap<String, std::collections::BTreeMap<String, String>>,
    /// `accept_undeclared_under`: id prefixes ending in `/`.
    prefixes: Vec<String>,
    /// PSK identity → device globs it may write (DTLS).
    identities: HashMap<String, Vec<String>>,
}

impl Acceptance {
    pub fn new(cfg: &CoapConfig) -> Self {
        Acceptance {
            declared: cfg
                .devices
                .iter()
                .map(|d| (d.id.clone(), d.units.clone()))
                .collect(),
            prefixes: cfg.accept_undeclared_under.clone(),
            identities: cfg
                .dtls
                .iter()
                .flat_map(|d| &d.identities)
                .map(|i| (i.identity.clone(), i.devices.clone()))
                .collect(),
        }
    }

    /// Declared, or under one of the `accept_undeclared_under` prefixes.
    pub fn accepts(&self, device: &str) -> bool {
        self.declared.contains_key(device)
            || self
                .prefixes
                .iter()
                .any(|p| device.len() > p.len() && device.starts_with(p.as_str()))
    }

    /// May the DTLS session authenticated as `identity` write `device`? Plain UDP may write any
    /// accepted device.
    fn authorized(&self, identity: Option<&str>, device: &str) -> bool {
        match identity {
            None => true,
            Some(id) => self
                .identities
                .get(id)
                .is_some_and(|globs| globs.iter().any(|g| glob_match(g, device))),
        }
    }

    fn unit(&self, device: &str, point: &str) -> Option<&str> {
        self.declared
            .get(device)
            .and_then(|u| u.get(point))
            .map(String::as_str)
    }
}

struct Assembly {
    body: Vec<u8>,
    szx: u8,
    format: Option<u16>,
    touched: Instant,
}

/// The outcome of one request before the bus has been tried.
enum Answer {
    /// Send these bytes (already final).
    Bytes(Vec<u8>),
    /// A response that becomes 5.03 if the burst's readings could not go on the bus.
    Accepted(Packet),
    /// A final response not depending on the bus (errors, 2.31, discovery).
    Final(Packet),
    None,
}

/// The UDP server task.
pub struct Server {
    sock: Option<UdpSocket>,
    source: Arc<str>,
    bus: BusSender,
    stats: Arc<Stats>,
    accept: Acceptance,
    max_body: usize,
    max_blocks: usize,
    block_timeout: Duration,
    max_burst: usize,
    dedup: HashMap<DedupKey, Option<Vec<u8>>>,
    dedup_order: VecDeque<(DedupKey, Instant)>,
    blocks: HashMap<(Peer, String), Assembly>,
    next_mid: u16,
    ids: HashMap<String, DeviceId>,
    points: HashMap<String, PointId>,
    units: HashMap<String, Arc<str>>,
    well_known: Vec<u8>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("source", &self.source)
            .field(
                "addr",
                &self.sock.as_ref().and_then(|s| s.local_addr().ok()),
            )
            .finish()
    }
}

impl Server {
    /// A server on `sock` (plain UDP; `None` when only DTLS datagrams come in through `run`).
    pub fn new(
        sock: Option<UdpSocket>,
        cfg: &CoapConfig,
        source: Arc<str>,
        bus: BusSender,
        stats: Arc<Stats>,
    ) -> Server {
        Server {
            sock,
            source,
            bus,
            stats,
            accept: Acceptance::new(cfg),
            max_body: cfg.max_body_bytes,
            max_blocks: cfg.max_block_transfers,
            block_timeout: Duration::from_millis(cfg.block_timeout_ms),
            max_burst: cfg.max_burst,
            dedup: HashMap::new(),
            dedup_order: VecDeque::new(),
            blocks: HashMap::new(),
            next_mid: rand::random(),
            ids: HashMap::new(),
            points: HashMap::new(),
            units: HashMap::new(),
            well_known: well_known_core(cfg).into_bytes(),
        }
    }

    /// Serve until `shutdown`: datagrams from the UDP socket and, decrypted, from DTLS sessions
    /// (`secure`). An error only when the socket itself fails.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        mut secure: Option<mpsc::Receiver<Inbound>>,
    ) -> Result<(), SourceError> {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut readings: Vec<Reading> = Vec::new();
        let mut answers: Vec<(Dest, Option<DedupKey>, Answer)> = Vec::new();
        let sock = self.sock.take();
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                r = recv_udp(sock.as_ref(), &mut buf) => Ok(r),
                m = recv_secure(secure.as_mut()) => Err(m),
            };
            let now = Timestamp::now();
            match first {
                Ok(first) => {
                    let mut next = Some(first);
                    let mut handled = 0;
                    while let Some(r) = next.take() {
                        match r {
                            Ok((n, addr)) => {
                                let peer = Peer {
                                    addr,
                                    identity: None,
                                };
                                let (key, answer) =
                                    self.handle(&buf[..n], &peer, now, &mut readings);
                                answers.push((Dest::Udp(addr), key, answer));
                            }
                            // ICMP errors from earlier sends surface here on some systems: not fatal.
                            Err(e) if is_transient(&e) => {}
                            Err(e) => return Err(SourceError::Io(e)),
                        }
                        handled += 1;
                        if let (true, Some(s)) = (handled < self.max_burst, sock.as_ref()) {
                            match s.try_recv_from(&mut buf) {
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                r => next = Some(r),
                            }
                        }
                    }
                }
                Err(None) => secure = None, // every DTLS session and the listener are gone
                Err(Some(first)) => {
                    let mut next = Some(first);
                    let mut handled = 0;
                    while let Some(m) = next.take() {
                        let (key, answer) = self.handle(&m.data, &m.peer, now, &mut readings);
                        answers.push((Dest::Secure(m.reply), key, answer));
                        handled += 1;
                        if let (true, Some(rx)) = (handled < self.max_burst, secure.as_mut()) {
                            next = rx.try_recv().ok();
                        }
                    }
                }
            }
            let accepted = if readings.is_empty() {
                true
            } else {
                let n = readings.len() as u64;
                match self.bus.try_send(std::mem::take(&mut readings)) {
                    Ok(true) => {
                        self.stats.readings.add(n);
                        true
                    }
                    Ok(false) => {
                        self.stats.bus_dropped.add(n);
                        false
                    }
                    Err(_) if shutdown.is_cancelled() => return Ok(()),
                    Err(e) => return Err(SourceError::BusClosed(e)),
                }
            };
            for (dest, key, answer) in answers.drain(..) {
                let bytes = match answer {
                    Answer::None => None,
                    Answer::Bytes(b) => Some(b),
                    Answer::Final(p) => encode(&p),
                    Answer::Accepted(p) if accepted => encode(&p),
                    Answer::Accepted(mut p) => {
                        p.header.code = MessageClass::Response(ResponseType::ServiceUnavailable);
                        p.clear_all_options();
                        // RFC 7252 §5.9.3.4: Max-Age says when to retry.
                        p.add_option(CoapOption::MaxAge, msg::uint(1));
                        p.payload = b"gateway busy: readings dropped".to_vec();
                        self.stats.rejected.inc();
                        encode(&p)
                    }
                };
                if let Some(k) = key {
                    if let Some(slot) = self.dedup.get_mut(&k) {
                        slot.clone_from(&bytes);
                    }
                }
                match (bytes, &dest, sock.as_ref()) {
                    (Some(b), Dest::Udp(peer), Some(s)) => {
                        if let Err(e) = s.send_to(&b, peer).await {
                            tracing::debug!(source = %self.source, %peer, "send failed: {e}");
                        }
                    }
                    // The session task encrypts and sends; a full or closed session drops it.
                    (Some(b), Dest::Secure(tx), _) => {
                        let _ = tx.try_send(b);
                    }
                    _ => {}
                }
            }
        }
    }

    /// One datagram through the whole request path without a socket (the fuzz targets and their
    /// corpus replay): parsing, deduplication, Block1 reassembly, payload decoding. Readings are
    /// appended to `readings` (not sent to the bus); the answer's bytes are returned as if the
    /// bus had taken them.
    pub fn handle_datagram(
        &mut self,
        buf: &[u8],
        peer: &Peer,
        readings: &mut Vec<Reading>,
    ) -> Option<Vec<u8>> {
        match self.handle(buf, peer, Timestamp::now(), readings).1 {
            Answer::None => None,
            Answer::Bytes(b) => Some(b),
            Answer::Final(p) | Answer::Accepted(p) => encode(&p),
        }
    }

    /// Handle one datagram. Returns the dedup key to store the final answer under, and the answer.
    fn handle(
        &mut self,
        buf: &[u8],
        peer: &Peer,
        now: Timestamp,
        readings: &mut Vec<Reading>,
    ) -> (Option<DedupKey>, Answer) {
        let req = match Packet::from_bytes(buf) {
            Ok(p) if p.header.get_version() == 1 => p,
            Ok(_) => {
                // RFC 7252 §3: messages with an unknown version number MUST be silently ignored.
                self.stats.malformed.inc();
                return (None, Answer::None);
            }
            Err(e) => {
                self.stats.malformed.inc();
                tracing::debug!(source = %self.source, peer = %peer.addr, "malformed datagram ({} bytes): {e}", buf.len());
                return (None, reset_or_none(buf));
            }
        };
        let ty = req.header.get_type();
        let code = req.header.code;
        match (ty, code) {
            // ACK / RST: the server sends no CON, so nothing to match (RFC 7252 §4.2, §4.3).
            (MessageType::Acknowledgement | MessageType::Reset, _) => return (None, Answer::None),
            // An empty CON is a ping: answer RST (§4.3). An empty NON is a format error.
            (MessageType::Confirmable, MessageClass::Empty) => {
                return (
                    None,
                    Answer::Final(msg::empty(MessageType::Reset, req.header.message_id)),
                )
            }
            (_, MessageClass::Request(_)) => {}
            // A response or reserved code in a CON/NON: reject (§4.2) or ignore (§4.3).
            _ => {
                self.stats.malformed.inc();
                return (None, reset_or_none(buf));
            }
        }
        self.stats.requests.inc();
        let key = (peer.clone(), req.header.message_id);
        let instant = Instant::now();
        if let Some(prev) = self.dedup.get(&key) {
            self.stats.duplicates.inc();
            return match (ty, prev) {
                (MessageType::Confirmable, Some(b)) => (None, Answer::Bytes(b.clone())),
                _ => (None, Answer::None),
            };
        }
        self.remember(key.clone(), instant);
        let answer = self.request(&req, peer, now, instant, readings);
        if let Answer::Final(p) = &answer {
            if p.header.code.is_error_response() {
                self.stats.rejected.inc();
            }
        }
        (Some(key), answer)
    }

    fn remember(&mut self, key: DedupKey, at: Instant) {
        while let Some((k, t)) = self.dedup_order.front() {
            if self.dedup_order.len() >= DEDUP_CAPACITY
                || at.duration_since(*t) > msg::EXCHANGE_LIFETIME
            {
                self.dedup.remove(k);
                self.dedup_order.pop_front();
            } else {
                break;
            }
        }
        self.dedup.insert(key.clone(), None);
        self.dedup_order.push_back((key, at));
    }

    fn next_mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    fn error(&mut self, req: &Packet, code: ResponseType, diag: impl Into<String>) -> Answer {
        let mid = self.next_mid();
        let mut r = msg::response_to(req, code, mid);
        r.payload = diag.into().into_bytes();
        Answer::Final(r)
    }

    fn request(
        &mut self,
        req: &Packet,
        peer: &Peer,
        now: Timestamp,
        instant: Instant,
        readings: &mut Vec<Reading>,
    ) -> Answer {
        if let Some(n) = msg::unknown_critical_option(req) {
            return self.error(
                req,
                ResponseType::BadOption,
                format!("unsupported critical option {n}"),
            );
        }
        let path = msg::uri_path(req);
        let MessageClass::Request(method) = req.header.code else {
            return Answer::None;
        };
        match method {
            RequestType::Get if path == [".well-known", "core"] => {
                let mid = self.next_mid();
                let mut r = msg::response_to(req, ResponseType::Content, mid);
                r.add_option(
                    CoapOption::ContentFormat,
                    msg::uint(u32::from(cf::LINK_FORMAT)),
                );
                r.payload = self.well_known.clone();
                Answer::Final(r)
            }
            RequestType::Post | RequestType::Put => {
                self.write(req, peer, path, now, instant, readings)
            }
            RequestType::Get => self.error(
                req,
                ResponseType::NotFound,
                "readings are POSTed or PUT here; GET /.well-known/core lists resources",
            ),
            _ => self.error(req, ResponseType::MethodNotAllowed, "use POST or PUT"),
        }
    }

    fn too_large(&mut self, req: &Packet) -> Answer {
        let max = self.max_body;
        let Answer::Final(mut r) = self.error(
            req,
            ResponseType::RequestEntityTooLarge,
            format!("body larger than {max} bytes"),
        ) else {
            return Answer::None;
        };
        r.add_option(CoapOption::Size1, msg::uint(max as u32));
        Answer::Final(r)
    }

    fn write(
        &mut self,
        req: &Packet,
        peer: &Peer,
        path: Vec<String>,
        now: Timestamp,
        instant: Instant,
        readings: &mut Vec<Reading>,
    ) -> Answer {
        let format = msg::uint_option(req, opt::CONTENT_FORMAT).map(|f| f as u16);
        if msg::uint_option(req, opt::SIZE1).is_some_and(|s| s as usize > self.max_body) {
            return self.too_large(req);
        }
        let block1 = match req.get_first_option(CoapOption::Block1) {
            None => None,
            Some(v) => match Block::decode(v) {
                Some(b) => Some(b),
                None => return self.error(req, ResponseType::BadOption, "invalid Block1 option"),
            },
        };
        let assembled;
        let (body, format, block1) = match block1 {
            None => {
                if req.payload.len() > self.max_body {
                    return self.too_large(req);
                }
                (&req.payload[..], format, None)
            }
            Some(b) => match self.block(req, peer, &path, b, format, instant) {
                Err(answer) => return answer,
                Ok((body, format)) => {
                    assembled = body;
                    (&assembled[..], format, Some(b))
                }
            },
        };
        let entries = match payload::decode(format, body, now) {
            Ok(e) => e,
            Err(e) if e.is_unsupported_format() => {
                return self.error(req, ResponseType::UnsupportedContentFormat, e.to_string())
            }
            Err(e) if e.is_bad_name() => {
                self.stats.bad_names.inc();
                return self.error(req, ResponseType::BadRequest, e.to_string());
            }
            Err(e) => return self.error(req, ResponseType::BadRequest, e.to_string()),
        };
        let start = readings.len();
        for e in entries {
            let (device, point) = match locate(&path, e.name.as_deref()) {
                Ok(dp) => dp,
                Err(diag) => {
                    readings.truncate(start);
                    if e.name.is_some() {
                        self.stats.bad_names.inc();
                    }
                    return self.error(req, ResponseType::BadRequest, diag);
                }
            };
            if !valid_id(&device) || !valid_id(&point) {
                readings.truncate(start);
                if e.name.is_some() {
                    self.stats.bad_names.inc();
                }
                return self.error(
                    req,
                    ResponseType::BadRequest,
                    format!("invalid device or point id `{device}` / `{point}`"),
                );
            }
            if !self.accept.authorized(peer.identity.as_deref(), &device) {
                readings.truncate(start);
                return self.error(
                    req,
                    ResponseType::Forbidden,
                    format!("PSK identity may not write device `{device}`"),
                );
            }
            if !self.accept.accepts(&device) {
                readings.truncate(start);
                self.stats.undeclared.inc();
                return self.error(
                    req,
                    ResponseType::NotFound,
                    format!(
                        "unknown device `{device}`: not declared in this CoAP source (nor under `accept_undeclared_under`)"
                    ),
                );
            }
            let unit = e.unit.or_else(|| {
                self.accept
                    .unit(&device, &point)
                    .map(|u| intern_unit(&mut self.units, u))
            });
            readings.push(Reading {
                device: intern(&mut self.ids, &device, DeviceId::new),
                point: intern(&mut self.points, &point, PointId::new),
                value: e.value,
                unit,
                ts: e.ts.unwrap_or(now),
                quality: Quality::Good,
                source: self.source.clone(),
            });
        }
        let mid = self.next_mid();
        let mut r = msg::response_to(req, ResponseType::Changed, mid);
        if let Some(b) = block1 {
            r.add_option(CoapOption::Block1, Block { more: false, ..b }.encode());
        }
        Answer::Accepted(r)
    }

    /// Block1 reassembly (RFC 7959 §2.5). `Ok` with the whole body after the last block; `Err` with
    /// the answer (2.31 Continue, 4.08, 4.13, 5.03) otherwise.
    fn block(
        &mut self,
        req: &Packet,
        peer: &Peer,
        path: &[String],
        b: Block,
        format: Option<u16>,
        now: Instant,
    ) -> Result<(Vec<u8>, Option<u16>), Answer> {
        let key = (peer.clone(), path.join("/"));
        let timeout = self.block_timeout;
        self.blocks
            .retain(|_, a| now.duration_since(a.touched) < timeout);
        if b.more && req.payload.len() != b.size() {
            self.blocks.remove(&key);
            return Err(self.error(
                req,
                ResponseType::BadRequest,
                format!(
                    "Block1 {} with M=1 carries {} bytes, not the block size {}",
                    b.num,
                    req.payload.len(),
                    b.size()
                ),
            ));
        }
        if b.num == 0 {
            if !self.blocks.contains_key(&key) && self.blocks.len() >= self.max_blocks {
                return Err(self.error(
                    req,
                    ResponseType::ServiceUnavailable,
                    "too many block-wise transfers in progress",
                ));
            }
            self.blocks.insert(
                key.clone(),
                Assembly {
                    body: Vec::new(),
                    szx: b.szx,
                    format,
                    touched: now,
                },
            );
            self.stats.block_transfers.inc();
        }
        let Some(a) = self.blocks.get_mut(&key) else {
            return Err(self.error(
                req,
                ResponseType::RequestEntityIncomplete,
                format!("Block1 {} without the blocks before it", b.num),
            ));
        };
        // The client may switch to a smaller block size mid-transfer (RFC 7959 §2.5); the byte
        // offset is what must continue.
        let offset = b.num as usize * b.size();
        if offset != a.body.len() || b.szx > a.szx {
            self.blocks.remove(&key);
            return Err(self.error(
                req,
                ResponseType::RequestEntityIncomplete,
                format!("Block1 {} out of sequence", b.num),
            ));
        }
        if a.body.len() + req.payload.len() > self.max_body {
            self.blocks.remove(&key);
            return Err(self.too_large(req));
        }
        a.body.extend_from_slice(&req.payload);
        a.szx = b.szx;
        a.touched = now;
        if format.is_some() {
            a.format = format;
        }
        if b.more {
            let mid = self.next_mid();
            let mut r = msg::response_to(req, ResponseType::Continue, mid);
            r.add_option(CoapOption::Block1, b.encode());
            return Err(Answer::Final(r));
        }
        let a = self.blocks.remove(&key).map(|a| (a.body, a.format));
        a.ok_or(Answer::None)
    }
}

fn intern<T: Clone>(map: &mut HashMap<String, T>, s: &str, make: impl Fn(&str) -> T) -> T {
    if let Some(v) = map.get(s) {
        return v.clone();
    }
    if map.len() >= 10_000 {
        map.clear();
    }
    let v = make(s);
    map.insert(s.to_string(), v.clone());
    v
}

fn intern_unit(map: &mut HashMap<String, Arc<str>>, s: &str) -> Arc<str> {
    intern(map, s, |x: &str| Arc::from(x))
}

/// Device and point of one decoded entry posted to `path`: `name` is `None` for a scalar (the last
/// path segment is the point), else a JSON member's name or a resolved SenML name (`bn + n`). See
/// the module docs for the mapping; `Err` is the 4.00 diagnostic.
pub fn locate(path: &[String], name: Option<&str>) -> Result<(String, String), String> {
    let Some(name) = name else {
        return match path.len() {
            n if n >= 2 => Ok((path[..n - 1].join("/"), path[n - 1].clone())),
            _ => Err("a scalar payload is posted to /<device>/<point>".into()),
        };
    };
    if path.is_empty() {
        return match name.rfind(['/', ':']) {
            Some(i) if i > 0 && i + 1 < name.len() => {
                Ok((name[..i].to_string(), name[i + 1..].to_string()))
            }
            _ => Err(format!(
                "posted to /: name `{name}` must be <device>/<point> or <device>:<point>"
            )),
        };
    }
    let device = path.join("/");
    // A base name that repeats the device (`bn: "<device>/"`) names the point after it.
    let point = name
        .strip_prefix(device.as_str())
        .and_then(|rest| rest.strip_prefix(['/', ':']))
        .unwrap_or(name);
    if point.is_empty() || point.contains('/') {
        return Err(format!(
            "name `{name}` posted to /{device} must be <point> or {device}/<point>: it does not map to one device and one point"
        ));
    }
    Ok((device, point.to_string()))
}

async fn recv_udp(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The next DTLS datagram; `None` once every sender is gone; pending forever without DTLS.
async fn recv_secure(rx: Option<&mut mpsc::Receiver<Inbound>>) -> Option<Inbound> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn reset_or_none(buf: &[u8]) -> Answer {
    msg::reset_for_garbage(buf).map_or(Answer::None, Answer::Bytes)
}

fn encode(p: &Packet) -> Option<Vec<u8>> {
    match p.to_bytes_unlimited() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!("cannot encode a CoAP response: {e}");
            None
        }
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::Interrupted
    )
}

/// The RFC 6690 link-format document served at `/.well-known/core`.
pub fn well_known_core(cfg: &CoapConfig) -> String {
    let ct = format!(
        "ct=\"{} {} {} {} {}\"",
        cf::TEXT_PLAIN,
        cf::JSON,
        cf::CBOR,
        cf::SENML_JSON,
        cf::SENML_CBOR
    );
    let mut links = vec!["</.well-known/core>;ct=40".to_string()];
    for d in &cfg.devices {
        links.push(format!("</{}>;rt=\"weir.device\";{ct}", d.id));
    }
    for p in &cfg.accept_undeclared_under {
        links.push(format!(
            "</{p}>;rt=\"weir.ingest\";title=\"POST /{p}<device>[/<point>]\";{ct}"
        ));
    }
    links.join(",")
}

trait IsError {
    fn is_error_response(&self) -> bool;
}
impl IsError for MessageClass {
    fn is_error_response(&self) -> bool {
        matches!(self, MessageClass::Response(r) if r.is_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_maps_paths_and_names() {
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            locate(&p(&["gh1", "door", "open"]), None),
            Ok(("gh1/door".into(), "open".into()))
        );
        assert!(locate(&p(&["th1"]), None).is_err());
        assert_eq!(
            locate(&p(&["gh1", "door"]), Some("open")),
            Ok(("gh1/door".into(), "open".into()))
        );
        assert_eq!(
            locate(&[], Some("urn:dev:ow:10e2073a01080063:temp")),
            Ok(("urn:dev:ow:10e2073a01080063".into(), "temp".into()))
        );
        assert!(locate(&[], Some("temp")).is_err());
        assert!(locate(&[], Some("lab/th3/")).is_err(), "no point");
    }

    /// A base name that repeats the device it is posted to names the point after the device; a
    /// name that would put `/` in the point (another device, deeper levels) is refused.
    #[test]
    fn names_posted_to_a_device_give_one_device_and_one_point() {
        let dev = ["aio".to_string(), "dev2".to_string()];
        for name in ["pressure", "aio/dev2/pressure", "aio/dev2:pressure"] {
            assert_eq!(
                locate(&dev, Some(name)),
                Ok(("aio/dev2".into(), "pressure".into())),
                "{name}"
            );
        }
        // A colon inside a point is one point (an RFC 8428 URN-style name).
        assert_eq!(
            locate(&dev, Some("urn:dev:mac:0024:temp")),
            Ok(("aio/dev2".into(), "urn:dev:mac:0024:temp".into()))
        );
        for name in [
            "aio/dev2/a/b",       // two levels below the device
            "other/dev/pressure", // another device
            "aio/dev2x/pressure", // a device that only starts like it
            "aio/dev2/",          // no point
            "aio/dev2",           // the device itself
            "a/b",
        ] {
            let e = locate(&dev, Some(name)).unwrap_err();
            assert!(
                e.contains("does not map to one device and one point"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn only_declared_devices_unless_a_prefix_is_opened() {
        let c: CoapConfig =
            serde_yaml::from_str("{listen: '127.0.0.1:0', devices: [{id: gh1/door}]}").unwrap();
        let a = Acceptance::new(&c);
        assert!(a.accepts("gh1/door"));
        assert!(!a.accepts("plant/boiler"), "undeclared: refused by default");
        assert!(!a.accepts("gh1/door/x"));
        let c: CoapConfig = serde_yaml::from_str(
            "{listen: '127.0.0.1:0', accept_undeclared_under: [coap/], devices: [{id: gh1/door}]}",
        )
        .unwrap();
        let a = Acceptance::new(&c);
        assert!(a.accepts("coap/th1") && a.accepts("coap/a/b") && a.accepts("gh1/door"));
        assert!(!a.accepts("coap") && !a.accepts("coap/") && !a.accepts("coapx/th1"));
        assert!(!a.accepts("plant/boiler"));
    }

    #[test]
    fn well_known_lists_declared_devices() {
        let c: CoapConfig =
            serde_yaml::from_str("{listen: '127.0.0.1:0', devices: [{id: gh1/door}]}").unwrap();
        let w = well_known_core(&c);
        assert!(w.starts_with("</.well-known/core>;ct=40,"), "{w}");
        assert!(w.contains("</gh1/door>;rt=\"weir.device\";ct=\"0 50 60 110 112\""));
        assert!(!w.contains("weir.ingest"));
        let c: CoapConfig =
            serde_yaml::from_str("{listen: '127.0.0.1:0', accept_undeclared_under: [coap/]}")
                .unwrap();
        assert!(well_known_core(&c).contains("</coap/>;rt=\"weir.ingest\""));
    }
}
