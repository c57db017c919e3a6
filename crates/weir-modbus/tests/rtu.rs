//! Modbus RTU against a real pymodbus 3.16 server on one end of a socat pty pair, the adapter on
//! the other: one line, several slaves, fault isolation, a vanishing port, noise on the line.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use weir_core::{Quality, Value};

fn line_yaml(port: &std::path::Path, extra: &str, devices: &str) -> String {
    line_yaml_timeout(port, extra, devices, 300)
}

fn line_yaml_timeout(
    port: &std::path::Path,
    extra: &str,
    devices: &str,
    response_timeout_ms: u64,
) -> String {
    format!(
        "reconnect_min_ms: 100\nreconnect_max_ms: 400\n{extra}rtu:\n  - port: {}\n    baud: 115200\n    response_timeout_ms: {response_timeout_ms}\n    devices:\n{devices}",
        port.display()
    )
}

fn device(id: &str, unit: u8, poll_ms: u64) -> String {
    format!(
        "      - id: {id}\n        unit: {unit}\n        poll_ms: {poll_ms}\n        points:\n          - {{ name: value, table: holding, address: 0 }}\n          - {{ name: temp, table: input, address: 1, type: i16, scale: 0.1, unit: °C }}\n"
    )
}

/// Timestamps (ms, since the first) of a device's good polls (one `value` reading per poll).
fn poll_times_ms(src: &Running, dev: &str) -> Vec<f64> {
    let ts: Vec<i64> = src
        .of(dev)
        .iter()
        .filter(|s| s.r.point.as_str() == "value" && s.r.quality == Quality::Good)
        .map(|s| s.r.ts.as_nanos())
        .collect();
    ts.iter().map(|t| (t - ts[0]) as f64 / 1e6).collect()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One silent slave among three on a line. The properties, none of them a wall-clock bound that
/// a slow or emulated machine could break (every interval is scaled by `WEIR_TEST_TIME_SCALE`):
///
/// * between two probes of the silent slave, each live slave is polled (the earliest-due request
///   goes first, and a probe waits at least the backoff) — counted, not timed;
/// * the silent slave's probes get further apart (the backoff doubles);
/// * the live slaves' poll periods agree with each other and with the configured one within a
///   wide factor, and a poll delayed by a probe is not caught up in a burst (no more polls than
///   the time allows);
/// * its bad quality is reported once, and it recovers when it answers again.
#[test]
fn a_silent_slave_does_not_stall_the_others_and_recovers() {
    let k = time_scale() as u64;
    let (poll, timeout, backoff_min, backoff_max) = (200 * k, 300 * k, 400 * k, 1600 * k);
    let dir = tempfile::tempdir().unwrap();
    let socat = Socat::start(dir.path());
    let mut peer = Peer::rtu(&socat.a, "1,2,3");
    for u in 1..=3 {
        peer.ok(&format!("set {u} h 0 {}", 100 + u));
        peer.ok(&format!("set {u} i 1 {}", 215 + u));
    }
    peer.ok("silent 3");
    let yaml = line_yaml_timeout(
        &socat.b,
        &format!("backoff_min_ms: {backoff_min}\nbackoff_max_ms: {backoff_max}\n"),
        &[
            device("m1", 1, poll),
            device("m2", 2, poll),
            device("m3", 3, poll),
        ]
        .concat(),
        timeout,
    );
    let src = Running::start(&yaml);
    let label = format!("rtu:{}", socat.b.display());
    let c = |name: &str, dev: &str| {
        src.counter(name, &[("source", "mb"), ("line", &label), ("device", dev)])
    };
    let polls = |dev: &str| poll_times_ms(&src, dev).len();
    // Each probe of the silent slave as it is counted: when, and the live slaves' polls so far.
    let mut probes: Vec<(std::time::Instant, usize, usize)> = Vec::new();
    wait_until(
        "four probes of the silent slave",
        Duration::from_secs(30),
        || {
            let n = c("weir_modbus_timeouts_total", "m3") as usize;
            while probes.len() < n.min(4) {
                probes.push((std::time::Instant::now(), polls("m1"), polls("m2")));
            }
            probes.len() == 4
        },
    );
    // Every request to the silent slave was a probe that timed out (the next one is at least a
    // backoff away).
    assert_eq!(
        c("weir_modbus_requests_total", "m3"),
        c("weir_modbus_timeouts_total", "m3")
    );
    for w in probes.windows(2) {
        assert!(
            w[1].1 > w[0].1 && w[1].2 > w[0].2,
            "the live slaves were polled between two probes: {probes:?}"
        );
    }
    let gap = |i: usize| probes[i + 1].0 - probes[i].0;
    eprintln!(
        "probe gaps {:?} {:?} {:?}; polls of m1 at the probes {:?}",
        gap(0),
        gap(1),
        gap(2),
        probes.iter().map(|p| p.1).collect::<Vec<_>>()
    );
    // Backoff 400 → 800 → 1600 ms (±25 %), each plus the response timeout: the third gap is at
    // least (1200 + 300) ms, the first at most (500 + 300) ms plus what other requests delayed it.
    assert!(gap(2) > gap(0), "the backoff grows: {probes:?}");

    let mut medians = Vec::new();
    for dev in ["m1", "m2"] {
        let t = poll_times_ms(&src, dev);
        let periods: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        let m = median(periods);
        eprintln!("{dev}: {} polls, median period {m:.1} ms", t.len());
        assert!(
            (0.75 * poll as f64..=1.5 * poll as f64).contains(&m),
            "{dev}: median period {m:.1} ms, configured {poll} ms"
        );
        medians.push(m);
        // A poll a probe delayed is followed by the next on the original phase, not by a burst:
        // each poll is on its own due time, so no more polls than periods in the span (plus the
        // first poll's own delay).
        let span = t.last().unwrap();
        let most = ((span + (timeout + poll) as f64) / poll as f64).floor() as usize + 1;
        assert!(t.len() <= most, "{dev}: {} polls in {span:.0} ms", t.len());
        assert_eq!(
            c("weir_modbus_timeouts_total", dev),
            0,
            "{dev} never timed out"
        );
        let want = if dev == "m1" { 21.6 } else { 21.7 };
        assert_eq!(
            src.latest(dev, "temp").unwrap().value,
            Value::F64(want),
            "{dev}: 216 or 217 × 0.1 published as its decimal"
        );
    }
    let ratio = medians[0] / medians[1];
    assert!(
        (2.0 / 3.0..=1.5).contains(&ratio),
        "the live slaves' periods agree: {medians:?}"
    );
    let bad = src.latest("m3", "value").unwrap();
    assert_eq!(bad.quality, Quality::Bad("timeout".into()));
    // Bad is reported once, not at every failed probe.
    let bad_reports = src
        .of("m3")
        .iter()
        .filter(|s| s.r.point.as_str() == "value")
        .count();
    assert_eq!(bad_reports, 1);

    peer.ok("answer 3");
    peer.ok("set 3 h 0 333");
    wait_until(
        "the silent slave to recover",
        Duration::from_secs(10),
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
    wait_until("the stray bytes counted", Duration::from_secs(10), || {
        src.counter("weir_modbus_line_garbage_bytes_total", &ll) >= 20
    });
    let garbage = src.counter("weir_modbus_line_garbage_bytes_total", &ll);
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
