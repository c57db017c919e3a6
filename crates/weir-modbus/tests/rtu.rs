//! Modbus RTU against a real pymodbus 3.16 server on one end of a socat pty pair, the adapter on
//! the other: one line, several slaves, fault isolation, a vanishing port, noise on the line.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use weir_core::{Quality, Value};

fn line_yaml(port: &std::path::Path, extra: &str, devices: &str) -> String {
    format!(
        "reconnect_min_ms: 100\nreconnect_max_ms: 400\n{extra}rtu:\n  - port: {}\n    baud: 115200\n    response_timeout_ms: 300\n    devices:\n{devices}",
        port.display()
    )
}

fn device(id: &str, unit: u8, poll_ms: u64) -> String {
    format!(
        "      - id: {id}\n        unit: {unit}\n        poll_ms: {poll_ms}\n        points:\n          - {{ name: value, table: holding, address: 0 }}\n          - {{ name: temp, table: input, address: 1, type: i16, scale: 0.1, unit: °C }}\n"
    )
}

/// Poll periods of a device, from the readings' timestamps (one reading of `value` per poll).
fn periods_ms(src: &Running, dev: &str) -> Vec<f64> {
    let ts: Vec<i64> = src
        .of(dev)
        .iter()
        .filter(|s| s.r.point.as_str() == "value" && s.r.quality == Quality::Good)
        .map(|s| s.r.ts.as_nanos())
        .collect();
    ts.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e6).collect()
}

#[test]
fn a_silent_slave_does_not_stall_the_others_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socat = Socat::start(dir.path());
    let mut peer = Peer::rtu(&socat.a, "1,2,3");
    for u in 1..=3 {
        peer.ok(&format!("set {u} h 0 {}", 100 + u));
        peer.ok(&format!("set {u} i 1 {}", 215 + u));
    }
    peer.ok("silent 3");
    let yaml = line_yaml(
        &socat.b,
        "backoff_min_ms: 400\nbackoff_max_ms: 1600\n",
        &[
            device("m1", 1, 200),
            device("m2", 2, 200),
            device("m3", 3, 200),
        ]
        .concat(),
    );
    let src = Running::start(&yaml);
    std::thread::sleep(Duration::from_secs(6));
    let label = format!("rtu:{}", socat.b.display());
    let c = |name: &str, dev: &str| {
        src.counter(name, &[("source", "mb"), ("line", &label), ("device", dev)])
    };
    for dev in ["m1", "m2"] {
        let p = periods_ms(&src, dev);
        assert!(p.len() >= 20, "{dev}: {} polls in 6 s", p.len() + 1);
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        let max = p.iter().cloned().fold(0.0, f64::max);
        let mut sorted = p.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        eprintln!(
            "{dev}: {} periods, median {median:.1} ms, mean {mean:.1} ms, max {max:.1} ms",
            p.len()
        );
        assert!(
            (190.0..=210.0).contains(&median),
            "{dev}: median period {median:.1} ms, configured 200 ms"
        );
        // A probe of the silent slave (response timeout 300 ms) delays a poll by at most that
        // timeout; the poll after it is back on the original phase (a period the delay made the
        // poll miss is skipped, not caught up).
        assert!(
            max < 200.0 + 300.0 + 100.0,
            "{dev}: longest period {max:.1} ms"
        );
        let t0 = src.of(dev)[0].r.ts.as_nanos();
        for s in src.of(dev).iter().filter(|s| s.r.point.as_str() == "value") {
            let late = ((s.r.ts.as_nanos() - t0) as f64 / 1e6) % 200.0;
            assert!(
                late < 300.0 + 100.0,
                "{dev}: a poll {late:.1} ms off its phase"
            );
        }
        assert_eq!(
            c("weir_modbus_timeouts_total", dev),
            0,
            "{dev} never timed out"
        );
        let temp = src.latest(dev, "temp").unwrap().value.as_f64().unwrap();
        let want = if dev == "m1" { 21.6 } else { 21.7 };
        assert!((temp - want).abs() < 1e-9, "{dev}: {temp} °C");
    }
    let bad = src.latest("m3", "value").unwrap();
    assert_eq!(bad.quality, Quality::Bad("timeout".into()));
    // Bad is reported once, not at every failed probe.
    let bad_reports = src
        .of("m3")
        .iter()
        .filter(|s| s.r.point.as_str() == "value")
        .count();
    assert_eq!(bad_reports, 1);
    // Backoff 400 → 800 → 1600 ms: a handful of probes in 6 s, not 30 polls.
    let probes = c("weir_modbus_timeouts_total", "m3");
    assert!(
        (3..=7).contains(&probes),
        "{probes} probes of the silent slave"
    );
    assert_eq!(c("weir_modbus_requests_total", "m3"), probes);

    peer.ok("answer 3");
    peer.ok("set 3 h 0 333");
    wait_until(
        "the silent slave to recover",
        Duration::from_secs(5),
        || {
            src.latest("m3", "value").map(|r| (r.value, r.quality))
                == Some((Value::I64(333), Quality::Good))
        },
    );
    src.stop();
}

#[test]
fn a_vanished_port_is_reopened_when_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut socat = Socat::start(dir.path());
    let mut peer = Peer::rtu(&socat.a, "7");
    peer.ok("set 7 h 0 1");
    let src = Running::start(&line_yaml(&socat.b, "", &device("m7", 7, 100)));
    wait_until("first reading", Duration::from_secs(10), || {
        src.latest("m7", "value").map(|r| r.value) == Some(Value::I64(1))
    });
    // The USB adapter is unplugged: the pty disappears.
    peer.kill();
    socat.stop();
    wait_until("connection_lost", Duration::from_secs(10), || {
        src.latest("m7", "value")
            .and_then(|r| r.quality.reason().map(|s| s.starts_with("connection_lost")))
            == Some(true)
    });
    // While the port is gone, reopening fails: the reason names the port, once, and says what
    // happened without repeating itself (`connection_lost: connection lost: …` before).
    let gone = format!(
        "connection_lost: cannot open serial port {}: ",
        socat.b.display()
    );
    wait_until("a failed reopen", Duration::from_secs(10), || {
        src.latest("m7", "value")
            .and_then(|r| r.quality.reason().map(|s| s.starts_with(&gone)))
            == Some(true)
    });
    for s in src.of("m7") {
        if let Some(reason) = s.r.quality.reason() {
            assert!(
                !reason.to_lowercase()["connection_lost".len()..].contains("connection lost"),
                "{reason}"
            );
        }
    }
    socat.start_again();
    let mut peer = Peer::rtu(&socat.a, "7");
    peer.ok("set 7 h 0 2");
    wait_until(
        "readings after the port is back",
        Duration::from_secs(10),
        || {
            src.latest("m7", "value").map(|r| (r.value, r.quality))
                == Some((Value::I64(2), Quality::Good))
        },
    );
    let label = format!("rtu:{}", socat.b.display());
    assert!(
        src.counter(
            "weir_modbus_line_reconnects_total",
            &[("source", "mb"), ("line", &label)]
        ) >= 2,
        "reopen attempts with backoff while the port was gone"
    );
    src.stop();
}

#[test]
fn noise_on_the_line_is_counted_and_the_line_resynchronises() {
    let dir = tempfile::tempdir().unwrap();
    let socat = Socat::start(dir.path());
    let mut peer = Peer::rtu(&socat.a, "1");
    peer.ok("set 1 h 0 5");
    let src = Running::start(&line_yaml(&socat.b, "", &device("m1", 1, 50)));
    wait_until("first reading", Duration::from_secs(10), || {
        src.latest("m1", "value").is_some()
    });
    // Another writer on the server's side of the cable: its bytes reach the adapter as noise,
    // between or inside the server's answers.
    let mut noise = std::fs::OpenOptions::new()
        .write(true)
        .open(&socat.a)
        .unwrap();
    for i in 0..20u8 {
        noise
            .write_all(&[0x55, 0xAA, i, 0x03, 0x02, 0xFF, 0x00])
            .unwrap();
        std::thread::sleep(Duration::from_millis(37));
    }
    let label = format!("rtu:{}", socat.b.display());
    let ll = [("source", "mb"), ("line", label.as_str())];
    let garbage = src.counter("weir_modbus_line_garbage_bytes_total", &ll);
    assert!(garbage >= 20, "{garbage} stray bytes counted");
    // The line is back in step: fresh good readings of a new value.
    peer.ok("set 1 h 0 6");
    wait_until(
        "good readings after the noise",
        Duration::from_secs(5),
        || {
            src.latest("m1", "value").map(|r| (r.value, r.quality))
                == Some((Value::I64(6), Quality::Good))
        },
    );
    eprintln!(
        "noise: {garbage} garbage bytes, {} crc errors, {} requests",
        src.counter("weir_modbus_line_crc_errors_total", &ll),
        src.counter("weir_modbus_line_requests_total", &ll)
    );
    src.stop();
}
