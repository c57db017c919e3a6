//! Protocol behaviour of the server task over real UDP sockets on loopback: deduplication of
//! retransmitted CONs (RFC 7252 §4.5), NON answers, Block1 sequencing (RFC 7959 §2.9.2), 4.02 for
//! unknown critical options, 5.03 + counted drops when the bus is full, 4.04 for undeclared devices
//! and 4.00 for names that give no single device and point.
//!
//! No waiting is needed before counting readings: the server puts a request's readings on the bus
//! before it sends the answer, so once the client has the answer the bus has the readings.

use std::net::UdpSocket;
use std::sync::Arc;
use std::time::Duration;

use weir_coap::{server::Server, CoapConfig, Stats};
use weir_core::{bus, BusReceiver, CancellationToken, Metrics};

struct Running {
    addr: std::net::SocketAddr,
    rx: BusReceiver,
    stats: Arc<Stats>,
    token: CancellationToken,
    /// Keeps the server task alive for the test.
    _rt: tokio::runtime::Runtime,
}

fn start(yaml: &str, bus_capacity: usize) -> Running {
    let cfg: CoapConfig = serde_yaml::from_str(yaml).unwrap();
    let metrics = Metrics::new();
    let (tx, rx) = bus(bus_capacity, &metrics);
    let stats = Arc::new(Stats::register(&metrics, "t"));
    let token = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let addr = sock.local_addr().unwrap();
    let (s2, t2) = (stats.clone(), token.clone());
    rt.spawn(async move {
        let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
        Server::new(Some(sock), &cfg, Arc::from("t"), tx.for_source("t"), s2)
            .run(t2, None)
            .await
    });
    Running {
        addr,
        rx,
        stats,
        token,
        _rt: rt,
    }
}

impl Running {
    fn client(&self) -> UdpSocket {
        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.connect(self.addr).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        c
    }
    fn readings(&mut self) -> usize {
        self.take().len()
    }
    fn take(&mut self) -> Vec<weir_core::Reading> {
        let mut v = Vec::new();
        while let Some(b) = self.rx.try_recv() {
            v.extend(b);
        }
        v
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// POST `path` (segments < 13 bytes) with `payload`; `con`; Content-Format absent; extra options
/// (number, value) appended in order after Uri-Path.
fn post(con: bool, mid: u16, path: &[&str], extra: &[(u16, Vec<u8>)], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![if con { 0x41 } else { 0x51 }, 0x02];
    b.extend_from_slice(&mid.to_be_bytes());
    b.push(0xAB); // token, 1 byte
    let mut last = 0u16;
    let mut opts: Vec<(u16, Vec<u8>)> = path.iter().map(|s| (11, s.as_bytes().to_vec())).collect();
    opts.extend_from_slice(extra);
    for (n, v) in opts {
        let delta = n - last;
        last = n;
        let (d, dext) = if delta < 13 {
            (delta as u8, vec![])
        } else {
            (13, vec![(delta - 13) as u8])
        };
        assert!(v.len() < 13);
        b.push((d << 4) | v.len() as u8);
        b.extend_from_slice(&dext);
        b.extend_from_slice(&v);
    }
    if !payload.is_empty() {
        b.push(0xff);
        b.extend_from_slice(payload);
    }
    b
}

fn answer(c: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let n = c.recv(&mut buf).expect("an answer");
    buf[..n].to_vec()
}

#[test]
fn retransmitted_con_is_answered_again_but_counted_once() {
    let mut s = start("{listen: '127.0.0.1:0', devices: [{id: d1}]}", 16);
    let c = s.client();
    let req = post(true, 0x1234, &["d1", "t"], &[], b"1.5");
    c.send(&req).unwrap();
    let a1 = answer(&c);
    c.send(&req).unwrap(); // our ACK "was lost": the device retransmits
    let a2 = answer(&c);
    assert_eq!(a1, a2, "the same ACK for the retransmission");
    assert_eq!(
        &a1[..5],
        &[0x61, 0x44, 0x12, 0x34, 0xAB],
        "ACK 2.04, same mid and token"
    );
    assert_eq!(s.readings(), 1);
    assert_eq!(s.stats.duplicates.get(), 1);
    // A NON is answered with a NON (RFC 7252 §5.2.3); its duplicate is ignored.
    let non = post(false, 0x2000, &["d1", "t"], &[], b"2");
    c.send(&non).unwrap();
    let a = answer(&c);
    assert_eq!(a[0] & 0x30, 0x10, "NON");
    assert_eq!(a[1], 0x44);
    c.send(&non).unwrap();
    // A fence: the server handles datagrams in order, so the next answer is the fence's, and
    // nothing came for the duplicate.
    c.send(&post(true, 0x2001, &["d1", "t"], &[], b"3"))
        .unwrap();
    let a = answer(&c);
    assert_eq!(
        &a[..4],
        &[0x61, 0x44, 0x20, 0x01],
        "a duplicate NON gets no answer"
    );
    let got = s.take();
    assert_eq!(
        got.len(),
        2,
        "the NON and the fence, not the duplicate: {got:?}"
    );
    assert_eq!(s.stats.duplicates.get(), 2);
}

#[test]
fn unknown_critical_option_is_4_02_and_blocks_out_of_sequence_are_4_08() {
    let mut s = start(
        "{listen: '127.0.0.1:0', max_body_bytes: 64, devices: [{id: d1}]}",
        16,
    );
    let c = s.client();
    // Option 13 (unassigned) is odd, hence critical (RFC 7252 §5.4.6), and not understood here.
    c.send(&post(true, 1, &["d1"], &[(13, vec![1])], b"{}"))
        .unwrap();
    assert_eq!(answer(&c)[1], 0x82, "4.02 Bad Option");
    // Block1 #1 without #0.
    let block = |num: u32, more: bool| vec![((num << 4) | (u32::from(more) << 3)) as u8]; // SZX 0: 16 bytes
    let body = br#"[{"n":"a","v":1},{"n":"b","v":2}]"#; // 34 bytes
    c.send(&post(
        true,
        2,
        &["d1"],
        &[(27, block(1, true))],
        &body[16..32],
    ))
    .unwrap();
    let a = answer(&c);
    assert_eq!(a[1], 0x88, "4.08 Request Entity Incomplete");
    // In sequence: 2.31, 2.31, 2.04.
    c.send(&post(
        true,
        3,
        &["d1"],
        &[(27, block(0, true))],
        &body[..16],
    ))
    .unwrap();
    assert_eq!(answer(&c)[1], 0x5F, "2.31 Continue");
    c.send(&post(
        true,
        4,
        &["d1"],
        &[(27, block(1, true))],
        &body[16..32],
    ))
    .unwrap();
    assert_eq!(answer(&c)[1], 0x5F);
    c.send(&post(
        true,
        5,
        &["d1"],
        &[(27, block(2, false))],
        &body[32..],
    ))
    .unwrap();
    assert_eq!(answer(&c)[1], 0x44, "2.04 after the last block");
    assert_eq!(s.readings(), 2);
    // Past max_body_bytes (64) while reassembling: 4.13.
    let big = [b' '; 16];
    for n in 0..4 {
        c.send(&post(
            true,
            10 + n as u16,
            &["d1"],
            &[(27, block(n, true))],
            &big,
        ))
        .unwrap();
        assert_eq!(answer(&c)[1], 0x5F);
    }
    c.send(&post(true, 20, &["d1"], &[(27, block(4, true))], &big))
        .unwrap();
    assert_eq!(answer(&c)[1], 0x8D, "4.13");
}

#[test]
fn full_bus_answers_5_03_and_counts_the_dropped_readings() {
    let mut s = start(
        "{listen: '127.0.0.1:0', max_burst: 1, devices: [{id: d1}]}",
        1,
    );
    let c = s.client();
    c.send(&post(true, 1, &["d1", "t"], &[], b"1")).unwrap();
    assert_eq!(answer(&c)[1], 0x44);
    // Nobody drains the bus (capacity 1 batch): the next request's reading is dropped.
    c.send(&post(true, 2, &["d1"], &[], br#"{"a":1,"b":2}"#))
        .unwrap();
    let a = answer(&c);
    assert_eq!(a[1], 0xA3, "5.03 Service Unavailable");
    assert_eq!(s.stats.bus_dropped.get(), 2);
    assert_eq!(s.readings(), 1);
    // Drained: accepted again.
    c.send(&post(true, 3, &["d1", "t"], &[], b"3")).unwrap();
    assert_eq!(answer(&c)[1], 0x44);
    assert_eq!(s.readings(), 1);
}

#[test]
fn thousands_of_random_version_1_datagrams_do_not_stop_the_server() {
    let mut s = start(
        "{listen: '127.0.0.1:0', max_body_bytes: 256, devices: [{id: after}]}",
        4096,
    );
    let c = s.client();
    c.set_nonblocking(true).unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = [0u8; 2048];
    for i in 0..3000u32 {
        let len = 4 + (rnd() % 120) as usize;
        let mut d: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
        // Version 1, any type and token length; every tenth a POST with plausible options so the
        // request path (Uri-Path, Content-Format, Block1, payload decoding) sees garbage too.
        d[0] = 0x40 | (d[0] & 0x3F);
        if i % 10 == 0 {
            d[0] = 0x40 | (d[0] & 0x30);
            d[1] = 0x02;
        }
        c.send(&d).unwrap();
        while c.recv(&mut buf).is_ok() {}
        if i % 100 == 0 {
            std::thread::sleep(Duration::from_millis(2)); // let the server keep up
        }
    }
    // A fresh endpoint, so no random datagram shares its message id (deduplication).
    let c = s.client();
    // The server may still be working through the garbage queued before this (slow emulators),
    // and while its socket buffer is full the kernel drops what arrives, this request included.
    // So retransmit it like a CoAP client would (RFC 7252 §4.2: same message id, every 2 s),
    // for up to a minute.
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = post(true, 0x4242, &["after", "fuzz"], &[], b"1");
    let mut buf = [0u8; 2048];
    let mut a = None;
    for _ in 0..30 {
        c.send(&request).unwrap();
        if let Ok(n) = c.recv(&mut buf) {
            a = Some(buf[..n].to_vec());
            break;
        }
    }
    let a = a.expect("an answer within a minute of retransmissions");
    assert_eq!(
        &a[..4],
        &[0x61, 0x44, 0x42, 0x42],
        "still serving after the garbage"
    );
    assert!(s.stats.malformed.get() > 0);
    assert!(s.stats.requests.get() > 0);
    let _ = s.readings();
}

/// The code byte and the diagnostic payload of an answer.
fn code_and_diagnostic(a: &[u8]) -> (u8, String) {
    let text = match a.iter().position(|b| *b == 0xff) {
        Some(i) => String::from_utf8_lossy(&a[i + 1..]).into_owned(),
        None => String::new(),
    };
    (a[1], text)
}

/// Only declared devices by default: a forged plain-UDP POST for another device is 4.04, counted,
/// and puts nothing on the bus; a prefix opens undeclared devices under it, and only those.
#[test]
fn undeclared_devices_are_refused_unless_under_an_opened_prefix() {
    let mut s = start("{listen: '127.0.0.1:0', devices: [{id: gh1/door}]}", 16);
    let c = s.client();
    c.send(&post(
        true,
        1,
        &["plant", "boiler", "temperature"],
        &[],
        b"99",
    ))
    .unwrap();
    let (code, diag) = code_and_diagnostic(&answer(&c));
    assert_eq!(code, 0x84, "4.04 Not Found: {diag}");
    assert!(diag.contains("unknown device `plant/boiler`"), "{diag}");
    assert_eq!(s.stats.undeclared.get(), 1);
    assert_eq!(s.readings(), 0);
    c.send(&post(true, 2, &["gh1", "door", "open"], &[], b"true"))
        .unwrap();
    assert_eq!(answer(&c)[1], 0x44, "a declared device is accepted");
    assert_eq!(s.readings(), 1);

    let mut s = start(
        "{listen: '127.0.0.1:0', accept_undeclared_under: [coap/], devices: [{id: gh1/door}]}",
        16,
    );
    let c = s.client();
    c.send(&post(true, 1, &["coap", "th9", "t"], &[], b"1"))
        .unwrap();
    assert_eq!(answer(&c)[1], 0x44, "under the opened prefix");
    c.send(&post(true, 2, &["coapx", "th9", "t"], &[], b"1"))
        .unwrap();
    assert_eq!(answer(&c)[1], 0x84, "only under it");
    c.send(&post(true, 3, &["plant", "boiler", "t"], &[], b"1"))
        .unwrap();
    assert_eq!(answer(&c)[1], 0x84);
    assert_eq!(s.stats.undeclared.get(), 2);
    let got = s.take();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].device.as_str(), "coap/th9");
}

/// RFC 8428 names posted to a device: `bn` repeating the device gives plain points; a name that
/// would add levels below the device or name another device is 4.00, counted, and the whole pack
/// is refused.
#[test]
fn senml_names_map_to_one_device_and_one_point_or_are_refused() {
    let mut s = start(
        "{listen: '127.0.0.1:0', devices: [{id: aio/dev2}, {id: aio/dev3}]}",
        16,
    );
    let c = s.client();
    let senml = (12u16, vec![110u8]); // Content-Format: application/senml+json
    c.send(&post(
        true,
        1,
        &["aio", "dev2"],
        std::slice::from_ref(&senml),
        br#"[{"bn":"aio/dev2/","n":"pressure","v":1013.2},{"n":"temp","v":21}]"#,
    ))
    .unwrap();
    assert_eq!(answer(&c)[1], 0x44);
    let got = s.take();
    let pts: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (r.device.as_str(), r.point.as_str()))
        .collect();
    assert_eq!(pts, [("aio/dev2", "pressure"), ("aio/dev2", "temp")]);
    for (mid, body) in [
        (2u16, &br#"[{"bn":"aio/dev2/","n":"a/b","v":1}]"#[..]),
        (
            3,
            br#"[{"n":"ok","v":1},{"bn":"aio/dev3/","n":"pressure","v":1}]"#,
        ),
    ] {
        c.send(&post(
            true,
            mid,
            &["aio", "dev2"],
            std::slice::from_ref(&senml),
            body,
        ))
        .unwrap();
        let (code, diag) = code_and_diagnostic(&answer(&c));
        assert_eq!(code, 0x80, "4.00: {diag}");
        assert!(
            diag.contains("does not map to one device and one point"),
            "{diag}"
        );
    }
    // RFC 8428 §4.5.1 characters.
    c.send(&post(
        true,
        4,
        &["aio", "dev2"],
        std::slice::from_ref(&senml),
        br#"[{"n":"two words","v":1}]"#,
    ))
    .unwrap();
    assert_eq!(answer(&c)[1], 0x80);
    assert_eq!(s.stats.bad_names.get(), 3);
    assert_eq!(s.readings(), 0, "a refused pack puts nothing on the bus");
}
