//! End-to-end tests of the CoAP adapter: the real `weir` binary, a real mosquitto and subscriber,
//! and real CoAP peers — libcoap's `coap-client-notls` and aiocoap (client and server) — over UDP
//! on loopback.
//!
//! Needs `libcoap3-bin` and aiocoap (`scripts/test` installs both); the Python that has aiocoap is
//! `$WEIR_TEST_PYTHON`, else `target/coap-venv/bin/python`, else `python3`.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const PEER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/crates/weir-coap/tests/peer/coap_peer.py"
);

/// `$WEIR_TEST_PYTHON`, else the virtualenv `scripts/test` makes, else `python3`.
fn python() -> String {
    if let Ok(p) = std::env::var("WEIR_TEST_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/target/coap-venv/bin/python");
    if std::path::Path::new(venv).exists() {
        return venv.into();
    }
    "python3".into()
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn gateway_config(mqtt_port: u16, coap_source: &str) -> String {
    config_with(mqtt_port, "", "", &format!("sources:\n{coap_source}"))
}

fn server_source(udp: u16) -> String {
    format!(
        "  - coap:\n      name: coap\n      listen: 127.0.0.1:{udp}\n      accept_undeclared_under: [\"lab/\"]\n      max_body_bytes: 32768\n      stats_interval_s: 1\n      devices:\n        - id: lab/th1\n          units: {{ temperature: \"°C\" }}\n"
    )
}

/// `GET /.well-known/core` as raw bytes: CON, mid 0x7777, Uri-Path ".well-known", "core".
fn discovery_request() -> Vec<u8> {
    let mut b = vec![0x40, 0x01, 0x77, 0x77, 0xBB];
    b.extend_from_slice(b".well-known");
    b.push(0x04);
    b.extend_from_slice(b"core");
    b
}

/// Wait until the gateway answers CoAP on `port`.
fn wait_coap(port: u16, gw: &mut Gateway) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        assert!(gw.is_running(), "weir exited:\n{}", gw.log());
        s.send_to(&discovery_request(), ("127.0.0.1", port))
            .unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            assert!(n >= 4);
            assert_eq!(buf[1], 0x45, "2.05 Content for /.well-known/core");
            return;
        }
    }
    panic!("CoAP server did not answer on {port}:\n{}", gw.log());
}

/// One request with aiocoap; the JSON line it prints.
fn aiocoap(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(PEER)
        .arg("request")
        .args(args)
        .output()
        .expect("python with aiocoap (set WEIR_TEST_PYTHON)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aiocoap {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap()
}

/// `coap-client-notls <args>`; returns stdout+stderr.
fn coap_client(args: &[&str]) -> String {
    let out = Command::new("coap-client-notls")
        .args(args)
        .output()
        .expect("coap-client-notls (apt-get install libcoap3-bin)");
    assert!(out.status.success(), "coap-client {args:?}: {out:?}");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_topic(sub: &Subscriber, topic: &str) -> serde_json::Value {
    wait_until(topic, Duration::from_secs(20), || {
        sub.last_json(topic).is_some()
    });
    sub.last_json(topic).unwrap()
}

#[test]
fn libcoap_and_aiocoap_post_json_and_senml_that_reach_a_subscriber() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let udp = free_udp_port();
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_config(broker.port, &server_source(udp)),
    );
    wait_coap(udp, &mut gw);
    let base = format!("coap://127.0.0.1:{udp}");

    // libcoap: JSON object to /<device>, a scalar to /<device>/<point>, SenML JSON to /.
    coap_client(&[
        "-m",
        "post",
        "-t",
        "json",
        "-e",
        r#"{"temperature":21.5,"door":true}"#,
        &format!("{base}/lab/th1"),
    ]);
    coap_client(&[
        "-m",
        "put",
        "-t",
        "text",
        "-e",
        "415",
        &format!("{base}/lab/th2/co2"),
    ]);
    coap_client(&[
        "-m",
        "post",
        "-t",
        "senml+json",
        "-e",
        r#"[{"bn":"lab/th3/","n":"temp","u":"Cel","v":19.5},{"n":"hum","v":40}]"#,
        &format!("{base}/"),
    ]);

    // aiocoap: SenML CBOR (integer labels, RFC 8428 §6), hand-encoded:
    // [{-2: "lab/th4/", 0: "temp", 2: 23.5}, {0: "door", 4: false}]
    let mut cbor = vec![0x82, 0xa3, 0x21, 0x68];
    cbor.extend_from_slice(b"lab/th4/");
    cbor.extend_from_slice(&[0x00, 0x64]);
    cbor.extend_from_slice(b"temp");
    cbor.extend_from_slice(&[0x02, 0xfb]);
    cbor.extend_from_slice(&23.5f64.to_be_bytes());
    cbor.extend_from_slice(&[0xa2, 0x00, 0x64]);
    cbor.extend_from_slice(b"door");
    cbor.extend_from_slice(&[0x04, 0xf4]);
    let cbor_file = dir.path().join("pack.cbor");
    std::fs::write(&cbor_file, &cbor).unwrap();
    let r = aiocoap(&[
        "post",
        &format!("{base}/"),
        "--cf",
        "112",
        "--payload-file",
        cbor_file.to_str().unwrap(),
    ]);
    assert_eq!(r["code"], "2.04", "{r}");
    // Non-confirmable SenML JSON to /<device>: answered with a NON 2.04.
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/th5"),
        "--cf",
        "110",
        "--non",
        "--payload",
        r#"[{"n":"lux","v":312,"u":"lx"}]"#,
    ]);
    assert_eq!(r["code"], "2.04", "{r}");

    // Errors: 4.00 with a diagnostic, 4.04 for a device not accepted, 4.15, discovery.
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/th1"),
        "--cf",
        "50",
        "--payload",
        r#"{"a":"#,
    ]);
    assert_eq!(r["code"], "4.00", "{r}");
    assert!(
        r["payload"].as_str().unwrap().contains("invalid JSON"),
        "{r}"
    );
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/th1"),
        "--cf",
        "50",
        "--payload",
        r#"{"temperature":[1,2]}"#,
    ]);
    assert_eq!(r["code"], "4.00", "{r}");
    assert!(
        r["payload"].as_str().unwrap().contains("temperature"),
        "{r}"
    );
    let r = aiocoap(&["post", &format!("{base}/other/x"), "--payload", "1"]);
    assert_eq!(r["code"], "4.04", "{r}");
    assert!(
        r["payload"].as_str().unwrap().contains("unknown device"),
        "{r}"
    );
    // `lab` itself is not under the prefix `lab/`.
    let r = aiocoap(&["post", &format!("{base}/lab/x"), "--payload", "1"]);
    assert_eq!(r["code"], "4.04", "{r}");
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/th1"),
        "--cf",
        "41",
        "--payload",
        "<x/>",
    ]);
    assert_eq!(r["code"], "4.15", "{r}");
    let r = aiocoap(&["get", &format!("{base}/.well-known/core")]);
    assert_eq!(r["code"], "2.05", "{r}");
    assert_eq!(r["content_format"], 40, "{r}");
    assert!(r["payload"].as_str().unwrap().contains("</lab/th1>"), "{r}");

    let t = wait_topic(&sub, "t/lab/th1/temperature");
    assert_eq!(t["value"], 21.5);
    assert_eq!(t["unit"], "°C", "declared unit applied");
    assert_eq!(wait_topic(&sub, "t/lab/th1/door")["value"], true);
    assert_eq!(wait_topic(&sub, "t/lab/th2/co2")["value"], 415);
    let t3 = wait_topic(&sub, "t/lab/th3/temp");
    assert_eq!(
        (t3["value"].clone(), t3["unit"].clone()),
        (19.5.into(), "Cel".into())
    );
    assert_eq!(wait_topic(&sub, "t/lab/th3/hum")["value"], 40.0);
    assert_eq!(wait_topic(&sub, "t/lab/th4/temp")["value"], 23.5);
    assert_eq!(wait_topic(&sub, "t/lab/th4/door")["value"], false);
    let lux = wait_topic(&sub, "t/lab/th5/lux");
    assert_eq!(
        (lux["value"].clone(), lux["unit"].clone()),
        (312.0.into(), "lx".into())
    );
    // A fence: readings are forwarded in order, so once this one is here everything sent before
    // it that was going to arrive has arrived.
    fence(&sub, &base);
    let msgs = sub.snapshot();
    assert!(
        !msgs
            .iter()
            .any(|m| m.topic.starts_with("t/other/") || m.topic == "t/lab/x"),
        "rejected requests put nothing on the bus"
    );
    // Exactly one reading per accepted value (no duplicates from retransmissions).
    let readings = msgs
        .iter()
        .filter(|m| m.topic.starts_with("t/lab/") && m.topic != FENCE)
        .count();
    assert_eq!(
        readings,
        8,
        "{:?}",
        msgs.iter().map(|m| &m.topic).collect::<Vec<_>>()
    );
    wait_until("the refusals counted", Duration::from_secs(10), || {
        gw.log().contains(" undeclared=2 ")
    });
    assert!(gw.is_running());
}

const FENCE: &str = "t/lab/fence/seq";

/// Post a fresh value to `lab/fence/seq` and wait until the subscriber has it: everything the
/// gateway accepted before it has been forwarded by then (one outbox, forwarded in order).
fn fence(sub: &Subscriber, base: &str) {
    let n = sub.count(|m| m.topic == FENCE) as i64 + 1;
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/fence/seq"),
        "--payload",
        &n.to_string(),
    ]);
    assert_eq!(r["code"], "2.04", "{r}");
    wait_until("the fence", Duration::from_secs(20), || {
        sub.snapshot()
            .iter()
            .any(|m| m.topic == FENCE && m.json()["value"] == n)
    });
}

/// A SenML pack of `n` records for `/lab/<device>`: points p0 … p{n-1}.
fn big_pack(n: usize) -> String {
    let recs: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"n":"p{i}","v":{}.25,"u":"W"}}"#, i))
        .collect();
    format!("[{}]", recs.join(","))
}

#[test]
fn block_wise_post_of_a_large_senml_pack() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let udp = free_udp_port();
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_config(broker.port, &server_source(udp)),
    );
    wait_coap(udp, &mut gw);
    let base = format!("coap://127.0.0.1:{udp}");

    let pack = big_pack(400);
    assert!(pack.len() > 10_000);
    let file = dir.path().join("pack.json");
    std::fs::write(&file, &pack).unwrap();
    // aiocoap splits it into 1024-byte Block1 blocks by itself.
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/big"),
        "--cf",
        "110",
        "--payload-file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(r["code"], "2.04", "{r}");
    // libcoap with 256-byte blocks.
    coap_client(&[
        "-m",
        "post",
        "-b",
        "256",
        "-t",
        "senml+json",
        "-f",
        file.to_str().unwrap(),
        &format!("{base}/lab/big2"),
    ]);
    // Over max_body_bytes (32768): 4.13 with Size1, nothing on the bus.
    let huge = dir.path().join("huge.json");
    std::fs::write(&huge, big_pack(1500)).unwrap();
    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/huge"),
        "--cf",
        "110",
        "--payload-file",
        huge.to_str().unwrap(),
    ]);
    assert_eq!(r["code"], "4.13", "{r}");
    assert_eq!(r["size1"], 32768, "{r}");

    wait_until("800 readings", Duration::from_secs(30), || {
        sub.count(|m| m.topic.starts_with("t/lab/big")) >= 800
    });
    let msgs = sub.snapshot();
    for dev in ["big", "big2"] {
        let mut pts: Vec<u64> = msgs
            .iter()
            .filter_map(|m| m.topic.strip_prefix(&format!("t/lab/{dev}/p")))
            .map(|p| p.parse().unwrap())
            .collect();
        pts.sort();
        assert_eq!(
            pts,
            (0..400).collect::<Vec<u64>>(),
            "{dev}: every record once"
        );
    }
    let p7 = sub.last_json("t/lab/big2/p7").unwrap();
    assert_eq!(p7["value"], 7.25);
    assert_eq!(p7["unit"], "W");
    fence(&sub, &base);
    assert_eq!(sub.count(|m| m.topic.starts_with("t/lab/huge")), 0);
    assert!(gw.is_running());
}

#[test]
fn garbage_datagrams_and_truncated_options_are_counted_and_the_daemon_keeps_running() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let udp = free_udp_port();
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_config(broker.port, &server_source(udp)),
    );
    wait_coap(udp, &mut gw);

    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let to = ("127.0.0.1", udp);
    // (datagram, the RST's message id if one is due)
    let cases: Vec<(Vec<u8>, Option<[u8; 2]>)> = vec![
        (vec![0xff, 0x01, 0x02], None), // shorter than a header
        (vec![0x49, 0x02, 0x00, 0x01, 1, 2, 3], Some([0, 1])), // CON, TKL 9
        (vec![0x40, 0x02, 0x00, 0x02, 0xBD], Some([0, 2])), // CON, option length byte missing
        (vec![0x40, 0x02, 0x00, 0x03, 0xB5, b'a', b'b'], Some([0, 3])), // option past the end
        (vec![0x50, 0x02, 0x00, 0x04, 0xBD], None), // NON, truncated: dropped
        (vec![0x80, 0x02, 0x00, 0x05], None), // version 2: ignored
        (vec![0x40, 0x02, 0x00, 0x06, 0xF0], Some([0, 6])), // reserved option delta 15
        (vec![0x40, 0x45, 0x00, 0x07], Some([0, 7])), // a response sent as a CON request
    ];
    for (d, rst) in &cases {
        s.send_to(d, to).unwrap();
        let mut buf = [0u8; 64];
        match (rst, s.recv_from(&mut buf)) {
            (Some(mid), Ok((n, _))) => {
                assert_eq!(&buf[..n], &[0x70, 0x00, mid[0], mid[1]], "RST for {d:02x?}")
            }
            (None, Err(_)) => {}
            (want, got) => panic!("{d:02x?}: expected {want:?}, got {got:?}"),
        }
    }
    // 200 datagrams of pseudo-random bytes with a version of 2 or 3: all counted, none answered.
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for i in 0..200 {
        let len = 1 + (i * 7) % 90;
        let mut d = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            d.push(x as u8);
        }
        d[0] |= 0x80;
        s.send_to(&d, to).unwrap();
    }
    // An empty CON (a ping) gets a RST and is not malformed (RFC 7252 §4.3).
    s.send_to(&[0x40, 0x00, 0x12, 0x34], to).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).expect("RST to a ping");
    assert_eq!(&buf[..n], &[0x70, 0x00, 0x12, 0x34]);
    assert!(
        s.recv_from(&mut buf).is_err(),
        "no answer to the random datagrams"
    );

    // Still serving.
    let out = coap_client(&[
        "-m",
        "post",
        "-e",
        "7",
        &format!("coap://127.0.0.1:{udp}/lab/after/garbage"),
    ]);
    assert!(!out.contains("4."), "{out}");
    assert_eq!(wait_topic(&sub, "t/lab/after/garbage")["value"], 7);
    assert!(gw.is_running());
    wait_until(
        "the malformed count in the log",
        Duration::from_secs(10),
        || gw.log().contains("malformed=208 "),
    );
}

struct Peer(Child);

impl Peer {
    fn start(port: u16, run: u32) -> Peer {
        let mut c = Command::new(python())
            .arg(PEER)
            .args(["server", &port.to_string(), &run.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python with aiocoap (set WEIR_TEST_PYTHON)");
        let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line.trim(), "ready", "aiocoap server started");
        // Keep reading so the pipe never fills.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while std::io::BufRead::read_line(&mut out, &mut sink).unwrap_or(0) > 0 {}
        });
        Peer(c)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn values(sub: &Subscriber, topic: &str) -> Vec<serde_json::Value> {
    sub.snapshot()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json()["value"].clone())
        .collect()
}

#[test]
fn observes_an_aiocoap_resource_re_registers_after_restart_polls_and_writes() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let peer = Peer::start(port, 1);
    let source = format!(
        "  - coap:\n      name: field\n      ack_timeout_ms: 200\n      max_retransmit: 2\n      backoff_max_ms: 1000\n      reregister_grace_ms: 500\n      stats_interval_s: 1\n      devices:\n        - id: plant/pump1\n          address: 127.0.0.1:{port}\n          resources:\n            - {{ path: counter, read: observe }}\n            - {{ path: temp, point: temperature, unit: \"°C\", interval_ms: 300 }}\n            - {{ path: valve, point: valve, read: none, writable: true }}\n            - {{ path: big, interval_ms: 2000 }}\n"
    );
    let mut gw = Gateway::start(dir.path(), &gateway_config(broker.port, &source));

    // Observe: notifications every 100 ms.
    wait_until("20 notifications", Duration::from_secs(20), || {
        values(&sub, "t/plant/pump1/count").len() >= 20
    });
    let counts: Vec<i64> = values(&sub, "t/plant/pump1/count")
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert!(
        counts.windows(2).all(|w| w[0] < w[1]),
        "notifications in order: {counts:?}"
    );
    assert_eq!(values(&sub, "t/plant/pump1/run")[0], 1);
    // Poll: plain-text GET every 300 ms.
    wait_until("3 polls", Duration::from_secs(10), || {
        values(&sub, "t/plant/pump1/temperature").len() >= 3
    });
    let t = sub.last_json("t/plant/pump1/temperature").unwrap();
    assert_eq!(
        (t["value"].clone(), t["unit"].clone()),
        (21.5.into(), "°C".into())
    );

    // A 4 KB SenML pack that aiocoap sends block-wise (Block2): every record arrives.
    wait_until(
        "150 points of the block-wise read",
        Duration::from_secs(20),
        || sub.count(|m| m.topic.starts_with("t/plant/pump1/p")) >= 150,
    );
    let p149 = sub.last_json("t/plant/pump1/p149").unwrap();
    assert_eq!(
        (p149["value"].clone(), p149["unit"].clone()),
        (149.5.into(), "W".into())
    );

    // Commands: PUT to /valve; the device's answer is the result.
    // One at a time: two commands in flight may be answered in either order.
    sub.publish("t/plant/pump1/valve/set", b"true");
    wait_until("the first command result", Duration::from_secs(10), || {
        sub.count(|m| m.topic == "t/plant/pump1/valve/set/result") >= 1
    });
    sub.publish("t/plant/pump1/valve/set", br#""maybe""#);
    wait_until("2 command results", Duration::from_secs(10), || {
        sub.count(|m| m.topic == "t/plant/pump1/valve/set/result") >= 2
    });
    let results: Vec<serde_json::Value> = sub
        .snapshot()
        .iter()
        .filter(|m| m.topic == "t/plant/pump1/valve/set/result")
        .map(Msg::json)
        .collect();
    assert_eq!(results[0]["ok"], true, "{results:?}");
    assert_eq!(results[1]["ok"], false, "{results:?}");
    let err = results[1]["error"].as_str().unwrap();
    assert!(
        err.contains("4.00") && err.contains("valve takes true or false"),
        "{err}"
    );

    // Restart the server: the new instance knows nothing of the observation; Weir notices the
    // silence past Max-Age (1 s) and registers again.
    drop(peer);
    // A command to the device while it is down fails with the reason (ICMP port unreachable or
    // no answer after the retransmissions), it does not hang.
    sub.publish("t/plant/pump1/valve/set", b"false");
    wait_until(
        "the failed command's result",
        Duration::from_secs(10),
        || sub.count(|m| m.topic == "t/plant/pump1/valve/set/result") >= 3,
    );
    let r = sub.last_json("t/plant/pump1/valve/set/result").unwrap();
    assert_eq!(r["ok"], false, "{r}");
    let err = r["error"].as_str().unwrap();
    assert!(
        err.contains("unreachable") || err.contains("no answer"),
        "{err}"
    );
    // Restart the device once Weir has noticed the silence (it then keeps trying until the new
    // instance answers).
    wait_until("the silence to be noticed", Duration::from_secs(20), || {
        gw.log().contains("re-registering the observation")
    });
    let _peer = Peer::start(port, 2);
    wait_until(
        "notifications from the restarted server",
        Duration::from_secs(20),
        || values(&sub, "t/plant/pump1/run").iter().any(|v| v == 2),
    );
    let n2 = values(&sub, "t/plant/pump1/run")
        .iter()
        .filter(|v| *v == 2)
        .count();
    wait_until("the stream to continue", Duration::from_secs(10), || {
        values(&sub, "t/plant/pump1/run")
            .iter()
            .filter(|v| *v == 2)
            .count()
            >= n2 + 10
    });
    assert!(gw.is_running());
}

#[test]
fn weir_check_reports_coap_errors_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        "gateway:\n  id: t\n  state_dir: /tmp/weir-coap-check\nsources:\n  - coap:\n      name: c\n      listen: 127.0.0.1:5683\n      max_body_bytes: 1\n      devices:\n        - id: a+b\n        - id: pump\n          address: nowhere\n          resources:\n            - { path: valve, writable: true }\n",
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for want in [
        ":8: sources[0].coap.max_body_bytes: must be 16",
        ":10: sources[0].coap.devices[0].id: `a+b`",
        ":12: sources[0].coap.devices[1].address: `nowhere`: expected host:port",
        ":14: sources[0].coap.devices[1].resources[0].point: a writable resource needs `point`",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// A forged plain-UDP POST for a device the CoAP source does not declare never reaches a rule:
/// answered 4.04 and counted. The rule switches a (simulated) actuator from whatever `plant/*`
/// reports; the same POST for a declared device does switch it, so the rule itself works.
#[test]
fn a_forged_post_for_an_undeclared_device_does_not_reach_a_rule() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let udp = free_udp_port();
    let cfg = config_with(
        broker.port,
        "",
        "",
        &format!(
            "sources:\n  - sim:\n      name: sim\n      seed: 7\n      interval_ms: 3600000\n  - coap:\n      name: coap\n      listen: 127.0.0.1:{udp}\n      stats_interval_s: 1\n      devices:\n        - id: plant/boiler2\nrules:\n  - name: boiler\n    match: {{ device: \"plant/*\", point: temperature }}\n    script: |\n      command(\"gh1/actuators\", \"shade\", r.value);\n"
        ),
    );
    let mut gw = Gateway::start(dir.path(), &cfg);
    wait_coap(udp, &mut gw);

    // Raw datagram from a plain UDP socket: CON POST /plant/boiler/temperature, body "77".
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut forged = vec![0x40, 0x02, 0x51, 0x51, 0xB5];
    forged.extend_from_slice(b"plant");
    forged.push(0x06);
    forged.extend_from_slice(b"boiler");
    forged.push(0x0B);
    forged.extend_from_slice(b"temperature");
    forged.push(0xFF);
    forged.extend_from_slice(b"77");
    let mut buf = [0u8; 512];
    let n = (0..10)
        .find_map(|_| {
            s.send_to(&forged, ("127.0.0.1", udp)).unwrap();
            s.recv_from(&mut buf).ok().map(|(n, _)| n)
        })
        .expect("an answer");
    assert_eq!(buf[1], 0x84, "4.04 Not Found");
    let diag = String::from_utf8_lossy(&buf[..n]);
    assert!(diag.contains("unknown device `plant/boiler`"), "{diag}");

    // The declared device: the rule runs and the actuator follows.
    let r = aiocoap(&[
        "post",
        &format!("coap://127.0.0.1:{udp}/plant/boiler2/temperature"),
        "--payload",
        "33",
    ]);
    assert_eq!(r["code"], "2.04", "{r}");
    wait_until("the rule's command", Duration::from_secs(20), || {
        sub.last_json("t/gh1/actuators/shade")
            .is_some_and(|v| v["value"] == 33.0)
    });
    // Sent before it, through the same pipeline: had the forged reading got in, it would be here.
    let shades: Vec<Option<f64>> = values(&sub, "t/gh1/actuators/shade")
        .iter()
        .map(serde_json::Value::as_f64)
        .collect();
    assert_eq!(shades, [Some(33.0)], "only the declared device");
    assert_eq!(sub.count(|m| m.topic.starts_with("t/plant/boiler/")), 0);
    wait_until("the refusal counted", Duration::from_secs(10), || {
        gw.log().contains(" undeclared=1 ")
    });
}

/// SenML names resolved as RFC 8428 says (bn + n), sent by aiocoap: a base name that repeats the
/// device gives its plain points; a name that would not map to one device and one point is 4.00,
/// counted, and nothing of that pack is forwarded.
#[test]
fn senml_base_names_repeating_the_device_give_plain_points() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let udp = free_udp_port();
    let mut gw = Gateway::start(
        dir.path(),
        &gateway_config(broker.port, &server_source(udp)),
    );
    wait_coap(udp, &mut gw);
    let base = format!("coap://127.0.0.1:{udp}");

    let r = aiocoap(&[
        "post",
        &format!("{base}/lab/dev2"),
        "--cf",
        "110",
        "--payload",
        r#"[{"bn":"lab/dev2/","n":"pressure","u":"hPa","v":1013.2},{"n":"temp","v":21.5}]"#,
    ]);
    assert_eq!(r["code"], "2.04", "{r}");
    for bad in [
        r#"[{"bn":"lab/dev2/","n":"a/b","v":1}]"#,
        r#"[{"n":"ok","v":1},{"bn":"lab/dev3/","n":"pressure","v":2}]"#,
    ] {
        let r = aiocoap(&[
            "post",
            &format!("{base}/lab/dev2"),
            "--cf",
            "110",
            "--payload",
            bad,
        ]);
        assert_eq!(r["code"], "4.00", "{bad}: {r}");
        assert!(
            r["payload"]
                .as_str()
                .unwrap()
                .contains("does not map to one device and one point"),
            "{r}"
        );
    }
    let p = wait_topic(&sub, "t/lab/dev2/pressure");
    assert_eq!(
        (p["value"].clone(), p["unit"].clone()),
        (1013.2.into(), "hPa".into())
    );
    assert_eq!(wait_topic(&sub, "t/lab/dev2/temp")["value"], 21.5);
    fence(&sub, &base);
    let topics: Vec<String> = sub
        .snapshot()
        .iter()
        .map(|m| m.topic.clone())
        .filter(|t| t.starts_with("t/lab/dev") && !t.ends_with("/status"))
        .collect();
    assert_eq!(
        topics,
        ["t/lab/dev2/pressure", "t/lab/dev2/temp"],
        "nothing else"
    );
    wait_until("the bad names counted", Duration::from_secs(10), || {
        gw.log().contains(" bad_names=2 ")
    });
}

/// A polled device that stops answering (its aiocoap server killed) sends no readings — the
/// client counts failed exchanges, it reports nothing — so its polled point goes stale after
/// three poll intervals and the device offline (its other point is write-only, not timed), seen
/// in `/devices`, `weir devices`, the log and `weir_points_stale`. The restarted server is
/// polled again and the device is online with a fresh point.
#[test]
fn a_polled_device_that_stops_answering_goes_stale_and_offline_then_back_online() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let mport = free_port();
    let peer = Peer::start(port, 1);
    // Slower machines (WEIR_TEST_TIME_SCALE) poll slower, so a late poll is not taken for silence.
    let period_ms = 500 * u64::from(time_scale());
    let rest = format!(
        "metrics:\n  listen: 127.0.0.1:{mport}\nsources:\n  - coap:\n      name: field\n      ack_timeout_ms: 100\n      max_retransmit: 1\n      backoff_max_ms: 400\n      stats_interval_s: 1\n      devices:\n        - id: plant/probe\n          address: 127.0.0.1:{port}\n          resources:\n            - {{ path: temp, point: temperature, unit: \"°C\", interval_ms: {period_ms} }}\n            - {{ path: valve, point: valve, read: none, writable: true }}\n"
    );
    let mut gw = Gateway::start(dir.path(), &config_with(broker.port, "", "", &rest));

    // Heard: online, the point fresh, declared with its unit and period before any reading.
    wait_until("the probe online", Duration::from_secs(20), || {
        let d = device_doc(mport, "plant/probe");
        d["availability"] == "online" && point_doc(&d, "temperature")["stale"] == false
    });
    let d = device_doc(mport, "plant/probe");
    assert_eq!(d["owner"], "field", "{d}");
    let t = point_doc(&d, "temperature");
    assert_eq!(
        (
            t["unit"].clone(),
            t["expected_period_ms"].clone(),
            t["writable"].clone()
        ),
        ("°C".into(), period_ms.into(), false.into()),
        "{d}"
    );
    let v = point_doc(&d, "valve");
    assert_eq!(v["writable"], true, "{d}");
    assert!(v.get("expected_period_ms").is_none(), "write-only: {d}");
    // Polled every period, it stays fresh across sweeps (once a second) past 3 periods.
    wait_until("6 readings forwarded", Duration::from_secs(20), || {
        values(&sub, "t/plant/probe/temperature").len() >= 6
    });
    let d = device_doc(mport, "plant/probe");
    assert_eq!(d["availability"], "online", "{d}");
    assert_eq!(point_doc(&d, "temperature")["stale"], false, "{d}");
    assert!(!gw.log().contains("marked stale"), "{}", gw.log());

    // The device stops answering: nothing is reported, the point goes stale, the device offline.
    drop(peer);
    wait_until(
        "the point stale, the device offline",
        Duration::from_secs(20),
        || {
            let d = device_doc(mport, "plant/probe");
            d["availability"] == "offline" && point_doc(&d, "temperature")["stale"] == true
        },
    );
    assert!(gw.log().contains("marked stale"), "{}", gw.log());
    assert!(
        gw.log()
            .contains("every timed point is stale: device offline"),
        "{}",
        gw.log()
    );
    assert_eq!(gauge(mport, "weir_points_stale"), Some(1));
    let (code, out, err) = gw.cli(&["devices"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("plant/probe "))
        .unwrap_or_else(|| panic!("no plant/probe in:\n{out}"));
    assert!(
        line.contains("offline") && line.contains("temperature (stale)"),
        "{out}"
    );
    // Failed exchanges are not readings: nothing bad was published for the point.
    assert!(
        values(&sub, "t/plant/probe/temperature")
            .iter()
            .all(|v| *v == 21.5),
        "{:?}",
        values(&sub, "t/plant/probe/temperature")
    );

    // The device answers again: polled, online, fresh.
    let n = values(&sub, "t/plant/probe/temperature").len();
    let _peer = Peer::start(port, 2);
    wait_until("the probe back online", Duration::from_secs(20), || {
        let d = device_doc(mport, "plant/probe");
        d["availability"] == "online" && point_doc(&d, "temperature")["stale"] == false
    });
    wait_until("readings again", Duration::from_secs(10), || {
        values(&sub, "t/plant/probe/temperature").len() > n
    });
    assert!(gw.is_running());
}

#[test]
fn an_observe_stream_that_stops_goes_stale_at_its_max_age_then_back_online() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let mport = free_port();
    // The peer's observable counter notifies every 100 ms with Max-Age 1 s.
    let peer = Peer::start(port, 1);
    let grace_ms = 500 * u64::from(time_scale());
    let rest = format!(
        "metrics:\n  listen: 127.0.0.1:{mport}\nsources:\n  - coap:\n      name: field\n      ack_timeout_ms: 100\n      max_retransmit: 1\n      backoff_max_ms: 400\n      reregister_grace_ms: {grace_ms}\n      stats_interval_s: 1\n      devices:\n        - id: plant/meter\n          address: 127.0.0.1:{port}\n          resources:\n            - {{ path: counter, point: count, read: observe }}\n"
    );
    let gw = Gateway::start(dir.path(), &config_with(broker.port, "", "", &rest));

    // Before the device states a Max-Age the default 60 s (+ grace) stands; the first
    // notification's Max-Age (1 s) replaces it.
    wait_until(
        "the period from the device's Max-Age",
        Duration::from_secs(20),
        || {
            let d = device_doc(mport, "plant/meter");
            d["availability"] == "online"
                && point_doc(&d, "count")["expected_period_ms"] == 1000 + grace_ms
        },
    );
    wait_until("notifications forwarded", Duration::from_secs(20), || {
        sub.count(|m| m.topic == "t/plant/meter/count") >= 10
    });
    assert_eq!(
        point_doc(&device_doc(mport, "plant/meter"), "count")["stale"],
        false
    );

    // The stream stops (the device is gone; re-registering fails): stale, then offline.
    drop(peer);
    wait_until(
        "the observed point stale, the device offline",
        Duration::from_secs(30),
        || {
            let d = device_doc(mport, "plant/meter");
            d["availability"] == "offline" && point_doc(&d, "count")["stale"] == true
        },
    );
    assert!(
        gw.log().contains("device=plant/meter point=count"),
        "{}",
        gw.log()
    );

    // Back: re-registered, notifications again, online and fresh.
    let n = sub.count(|m| m.topic == "t/plant/meter/count");
    let _peer = Peer::start(port, 2);
    wait_until("the meter back online", Duration::from_secs(30), || {
        let d = device_doc(mport, "plant/meter");
        d["availability"] == "online" && point_doc(&d, "count")["stale"] == false
    });
    wait_until("notifications again", Duration::from_secs(10), || {
        sub.count(|m| m.topic == "t/plant/meter/count") > n
    });
}
