//! Modbus TCP against a real pymodbus 3.16 server: every type and order, writes, exceptions,
//! a server that drops connections.

mod common;

use std::time::Duration;

use common::*;
use weir_core::{Quality, Value};

const TYPES: [(&str, u16, &str, &str); 9] = [
    // (type, registers, first value, second value)
    ("u16", 1, "51234", "7"),
    ("i16", 1, "-1234", "32000"),
    ("u32", 2, "3000000000", "65537"),
    ("i32", 2, "-2000000000", "123456"),
    ("u64", 4, "1234567890123456789", "42"),
    ("i64", 4, "-1234567890123456789", "9000000000"),
    ("f32", 2, "123.456", "-0.125"),
    ("f64", 4, "-9876.54321", "6.02214076e23"),
    ("string", 4, "WEIR-01", "pump"),
];
const ORDERS: [&str; 4] = ["ABCD", "CDAB", "BADC", "DCBA"];

fn expected(ty: &str, text: &str) -> Value {
    match ty {
        "string" => Value::from(text),
        // An f32 is published as its shortest decimal: `123.456`, not 123.45600128173828.
        "f32" => Value::F64(text.parse().unwrap()),
        "f64" => Value::F64(text.parse().unwrap()),
        _ => Value::I64(text.parse().unwrap()),
    }
}

fn point_name(table: &str, ty: &str, order: &str) -> String {
    format!("{table}_{ty}_{order}")
}

#[test]
fn every_type_and_order_decodes_changing_registers() {
    let port = free_port();
    let mut peer = Peer::tcp(port, "1");
    // Holding and input registers, every type x order, 4 registers apart.
    let mut points = String::new();
    let mut layout = Vec::new();
    let mut addr = 0u16;
    for table in ["holding", "input"] {
        for (ty, _, _, _) in TYPES {
            for order in ORDERS {
                let name = point_name(table, ty, order);
                let len = if ty == "string" { ", length: 4" } else { "" };
                points.push_str(&format!(
                    "          - {{ name: {name}, table: {table}, address: {addr}, type: {ty}, order: {order}{len} }}\n"
                ));
                layout.push((table, ty, order, addr, name));
                addr += 4;
            }
        }
    }
    // A bool in bit 5 of a holding register and a coil.
    points
        .push_str("          - { name: flag, table: holding, address: 290, type: bool, bit: 5 }\n");
    points.push_str("          - { name: relay, table: coil, address: 7 }\n");
    let set_all = |peer: &mut Peer, which: usize| {
        for (table, ty, order, addr, _) in &layout {
            let (_, _, a, b) = TYPES.iter().find(|t| t.0 == *ty).unwrap();
            let v = if which == 0 { a } else { b };
            let t = if *table == "holding" { "h" } else { "i" };
            if *ty == "string" {
                peer.ok(&format!("set 1 {t} {addr} 0 0 0 0")); // a shorter string leaves no tail
            }
            peer.value(&format!("setv 1 {t} {addr} {ty} {order} {v}"));
        }
    };
    set_all(&mut peer, 0);
    peer.ok("set 1 h 290 32"); // bit 5
    peer.ok("set 1 c 7 1");
    let yaml = format!(
        "poll_ms: 100\nmax_gap: 0\ntcp:\n  - host: 127.0.0.1\n    port: {port}\n    devices:\n      - id: plant/dev\n        unit: 1\n        points:\n{points}"
    );
    let src = Running::start(&yaml);
    let check = |which: usize| {
        for (_, ty, _, _, name) in &layout {
            let (_, _, a, b) = TYPES.iter().find(|t| t.0 == *ty).unwrap();
            let want = expected(ty, if which == 0 { a } else { b });
            match src.latest("plant/dev", name) {
                Some(r) if r.value == want && r.quality == Quality::Good => {}
                other => {
                    eprintln!("{name}: want {want:?}, have {other:?}");
                    return false;
                }
            }
        }
        true
    };
    wait_until(
        "every type and order decoded",
        Duration::from_secs(10),
        || check(0),
    );
    assert_eq!(
        src.latest("plant/dev", "flag").unwrap().value,
        Value::Bool(true)
    );
    assert_eq!(
        src.latest("plant/dev", "relay").unwrap().value,
        Value::Bool(true)
    );
    // The registers change while polled: the new values arrive.
    set_all(&mut peer, 1);
    peer.ok("set 1 h 290 65503"); // every bit but 5
    peer.ok("set 1 c 7 0");
    wait_until(
        "the changed values decoded",
        Duration::from_secs(10),
        || check(1),
    );
    wait_until("bit and coil changes", Duration::from_secs(5), || {
        src.latest("plant/dev", "flag").unwrap().value == Value::Bool(false)
            && src.latest("plant/dev", "relay").unwrap().value == Value::Bool(false)
    });
    // max_gap 0 and 72 points of 1-4 registers laid out 4 apart: adjacent 4-register points merge,
    // so requests stay far below one per point per poll.
    let label = format!("tcp:127.0.0.1:{port}");
    let reqs = src.counter(
        "weir_modbus_requests_total",
        &[("source", "mb"), ("line", &label), ("device", "plant/dev")],
    );
    assert!(reqs > 0);
    src.stop();
}

#[test]
fn writes_land_in_the_server_registers() {
    let port = free_port();
    let mut peer = Peer::tcp(port, "1");
    peer.ok("set 1 h 20 1"); // bit 0 already set; the bit write must keep it
    let yaml = format!(
        r#"
poll_ms: 200
tcp:
  - host: 127.0.0.1
    port: {port}
    devices:
      - id: plant/pump
        unit: 1
        points:
          - {{ name: setpoint, table: holding, address: 0, type: u16, writable: true }}
          - {{ name: speed, table: holding, address: 2, type: f32, order: CDAB, writable: true }}
          - {{ name: temp_sp, table: holding, address: 4, type: i32, order: DCBA, scale: 0.1, offset: -40, writable: true }}
          - {{ name: big, table: holding, address: 8, type: i64, order: BADC, writable: true }}
          - {{ name: label, table: holding, address: 12, type: string, length: 4, writable: true }}
          - {{ name: enable, table: holding, address: 20, type: bool, bit: 3, writable: true }}
          - {{ name: relay, table: coil, address: 5, writable: true }}
          - {{ name: status, table: input, address: 0 }}
"#
    );
    let src = Running::start(&yaml);
    wait_until("first poll", Duration::from_secs(10), || {
        src.latest("plant/pump", "setpoint").is_some()
    });
    assert_eq!(
        src.write("plant/pump", "setpoint", Value::I64(4321)),
        Ok(())
    );
    assert_eq!(peer.get(1, "h", 0, 1), vec![4321]);
    assert_eq!(src.write("plant/pump", "speed", Value::F64(1450.5)), Ok(()));
    assert_eq!(peer.value("getv 1 h 2 f32 CDAB 2"), "1450.5");
    assert_eq!(src.write("plant/pump", "temp_sp", Value::F64(21.5)), Ok(()));
    // (21.5 + 40) / 0.1 = 615
    assert_eq!(peer.value("getv 1 h 4 i32 DCBA 2"), "615");
    assert_eq!(
        src.write("plant/pump", "big", Value::I64(-77_000_000_000)),
        Ok(())
    );
    assert_eq!(peer.value("getv 1 h 8 i64 BADC 4"), "-77000000000");
    assert_eq!(src.write("plant/pump", "label", Value::from("P-7")), Ok(()));
    assert_eq!(peer.value("getv 1 h 12 string ABCD 4"), "P-7");
    assert_eq!(src.write("plant/pump", "enable", Value::Bool(true)), Ok(()));
    assert_eq!(
        peer.get(1, "h", 20, 1),
        vec![0b1001],
        "read-modify-write keeps bit 0"
    );
    assert_eq!(src.write("plant/pump", "relay", Value::Bool(true)), Ok(()));
    assert_eq!(peer.get(1, "c", 5, 1), vec![1]);
    // The written value is read back and reported.
    wait_until(
        "the written setpoint reported",
        Duration::from_secs(5),
        || src.latest("plant/pump", "setpoint").map(|r| r.value) == Some(Value::I64(4321)),
    );
    // Refused: not writable (router), out of range and wrong type (codec) — nothing sent.
    let e = src
        .write("plant/pump", "status", Value::I64(1))
        .unwrap_err();
    assert!(e.contains("read-only"), "{e}");
    // The refusals name the value as it was sent and the point's range in its own units.
    assert_eq!(
        src.write("plant/pump", "setpoint", Value::I64(70_000)),
        Err("70000 is out of range: u16 holds 0 to 65535".to_string())
    );
    assert_eq!(
        src.write("plant/pump", "temp_sp", Value::F64(3e8)),
        Err("300000000 is out of range: i32 with scale 0.1 and offset -40 holds -214748404.8 to 214748324.7".to_string())
    );
    assert_eq!(
        src.write("plant/pump", "relay", Value::from("on")),
        Err("bool takes true/false, got \"on\"".to_string())
    );
    assert_eq!(
        src.write("plant/pump", "setpoint", Value::from("abc")),
        Err("u16 takes a number, got \"abc\"".to_string())
    );
    assert_eq!(peer.get(1, "h", 0, 1), vec![4321]);
    src.stop();
}

#[test]
fn exceptions_become_quality_reasons_and_command_results() {
    let port = free_port();
    let mut peer = Peer::tcp(port, "1");
    peer.ok("set 1 h 0 11");
    let yaml = format!(
        r#"
poll_ms: 100
tcp:
  - host: 127.0.0.1
    port: {port}
    devices:
      - id: d
        unit: 1
        points:
          - {{ name: ok, table: holding, address: 0, writable: true }}
          - {{ name: beyond, table: holding, address: 500 }}
"#
    );
    let src = Running::start(&yaml);
    // Address 500 is outside the server's map: illegal data address, while address 0 is good.
    wait_until("an exception reason", Duration::from_secs(10), || {
        src.latest("d", "beyond").map(|r| r.quality)
            == Some(Quality::Bad("illegal_data_address".into()))
            && src.latest("d", "ok").map(|r| r.value) == Some(Value::I64(11))
    });
    // The device now answers every request with "server device busy".
    peer.ok("exc 1 6");
    wait_until("busy on every point", Duration::from_secs(10), || {
        src.latest("d", "ok").map(|r| r.quality) == Some(Quality::Bad("server_device_busy".into()))
    });
    assert_eq!(
        src.write("d", "ok", Value::I64(3)),
        Err("server_device_busy".to_string())
    );
    peer.ok("exc 1 0");
    wait_until("good again", Duration::from_secs(10), || {
        src.latest("d", "ok").map(|r| r.quality) == Some(Quality::Good)
    });
    let label = format!("tcp:127.0.0.1:{port}");
    assert!(
        src.counter(
            "weir_modbus_exceptions_total",
            &[("source", "mb"), ("line", &label), ("device", "d")]
        ) >= 2
    );
    assert_eq!(
        src.counter(
            "weir_modbus_timeouts_total",
            &[("source", "mb"), ("line", &label), ("device", "d")]
        ),
        0,
        "an exception is an answer, not a timeout"
    );
    src.stop();
}

#[test]
fn a_server_that_closes_connections_is_reconnected() {
    let port = free_port();
    let mut peer = Peer::tcp(port, "1");
    let yaml = format!(
        r#"
poll_ms: 100
reconnect_min_ms: 100
reconnect_max_ms: 500
tcp:
  - host: 127.0.0.1
    port: {port}
    devices:
      - id: d
        unit: 1
        points:
          - {{ name: counter, table: input, address: 3 }}
"#
    );
    let src = Running::start(&yaml);
    let label = format!("tcp:127.0.0.1:{port}");
    let reconnects = || {
        src.counter(
            "weir_modbus_line_reconnects_total",
            &[("source", "mb"), ("line", &label)],
        )
    };
    for round in 1..=3i64 {
        peer.ok(&format!("set 1 i 3 {round}"));
        wait_until("the new value", Duration::from_secs(10), || {
            src.latest("d", "counter").map(|r| (r.value, r.quality))
                == Some((Value::I64(round), Quality::Good))
        });
        let before = reconnects();
        peer.ok("drop");
        wait_until("a reconnect", Duration::from_secs(10), || {
            reconnects() > before
        });
    }
    // The server stops for good: the points go bad with the reason, then it comes back.
    peer.kill();
    wait_until("connection_lost", Duration::from_secs(10), || {
        src.latest("d", "counter")
            .and_then(|r| r.quality.reason().map(|s| s.starts_with("connection_lost")))
            == Some(true)
    });
    // Reconnecting fails while it is gone: the reason names the host and port, once.
    let refused = format!("connection_lost: cannot connect to 127.0.0.1:{port}: ");
    wait_until("a refused reconnect", Duration::from_secs(10), || {
        src.latest("d", "counter")
            .and_then(|r| r.quality.reason().map(|s| s.starts_with(&refused)))
            == Some(true)
    });
    for s in src.of("d") {
        if let Some(reason) = s.r.quality.reason() {
            let detail = reason.strip_prefix("connection_lost: ").unwrap_or(reason);
            assert!(
                !detail.to_lowercase().contains("connection lost"),
                "{reason}"
            );
        }
    }
    let mut peer = Peer::tcp(port, "1");
    peer.ok("set 1 i 3 99");
    wait_until(
        "readings after the server is back",
        Duration::from_secs(10),
        || src.latest("d", "counter").map(|r| r.value) == Some(Value::I64(99)),
    );
    src.stop();
}

#[test]
fn rtu_frames_over_tcp_reach_several_units_behind_a_gateway() {
    let port = free_port();
    let mut peer = Peer::tcp_rtu(port, "1,2");
    peer.value("setv 1 i 0 f32 ABCD 12.5");
    peer.value("setv 2 i 0 f32 ABCD -3.25");
    let yaml = format!(
        r#"
poll_ms: 100
tcp:
  - host: 127.0.0.1
    port: {port}
    framing: rtu
    devices:
      - {{ id: gw/a, unit: 1, points: [ {{ name: v, table: input, address: 0, type: f32 }}, {{ name: sp, table: holding, address: 3, writable: true }} ] }}
      - {{ id: gw/b, unit: 2, points: [ {{ name: v, table: input, address: 0, type: f32 }} ] }}
"#
    );
    let src = Running::start(&yaml);
    wait_until(
        "both units through the gateway",
        Duration::from_secs(10),
        || {
            src.latest("gw/a", "v").map(|r| r.value) == Some(Value::F64(12.5))
                && src.latest("gw/b", "v").map(|r| r.value) == Some(Value::F64(-3.25))
        },
    );
    assert_eq!(src.write("gw/a", "sp", Value::I64(900)), Ok(()));
    assert_eq!(peer.get(1, "h", 3, 1), vec![900]);
    src.stop();
}

/// Several units behind one TCP gateway: a dead unit is reported by the gateway (exception 0x0B)
/// or not at all (timeout); either way only its own points go bad and the other unit keeps its
/// period on the shared connection.
#[test]
fn a_dead_unit_behind_a_tcp_gateway_does_not_disturb_the_others() {
    for quiet in [false, true] {
        let port = free_port();
        let mut peer = if quiet {
            Peer::tcp_quiet(port, "1,2")
        } else {
            Peer::tcp(port, "1,2")
        };
        peer.ok("set 1 h 0 1");
        peer.ok("set 2 h 0 2");
        peer.ok("silent 2");
        let yaml = format!(
            r#"
poll_ms: 100
backoff_min_ms: 300
backoff_max_ms: 600
tcp:
  - host: 127.0.0.1
    port: {port}
    response_timeout_ms: 200
    devices:
      - {{ id: u1, unit: 1, points: [ {{ name: v, table: holding, address: 0 }} ] }}
      - {{ id: u2, unit: 2, points: [ {{ name: v, table: holding, address: 0 }} ] }}
"#
        );
        let src = Running::start(&yaml);
        let want = if quiet {
            "timeout"
        } else {
            "gateway_target_failed_to_respond"
        };
        // Unit 2 goes bad with its own reason, and unit 1 keeps being polled after that on the
        // same connection: counted, not timed.
        let first_bad = || {
            src.of("u2")
                .into_iter()
                .find(|s| s.r.quality == Quality::Bad(want.into()))
                .map(|s| s.at)
        };
        let u1_good_after = |t: std::time::Instant| {
            src.of("u1")
                .into_iter()
                .filter(|s| s.at > t && s.r.quality == Quality::Good)
                .count()
        };
        wait_until(
            "unit 1 polled ten times after unit 2 went bad",
            Duration::from_secs(20),
            || first_bad().is_some_and(|t| u1_good_after(t) >= 10),
        );
        assert_eq!(
            src.latest("u2", "v").map(|r| r.quality),
            Some(Quality::Bad(want.into())),
            "quiet={quiet}"
        );
        let label = format!("tcp:127.0.0.1:{port}");
        assert_eq!(
            src.counter(
                "weir_modbus_line_reconnects_total",
                &[("source", "mb"), ("line", &label)]
            ),
            0,
            "quiet={quiet}: the shared connection was never dropped"
        );
        peer.ok("answer 2");
        wait_until("unit 2 back", Duration::from_secs(5), || {
            src.latest("u2", "v").map(|r| (r.value, r.quality))
                == Some((Value::I64(2), Quality::Good))
        });
        src.stop();
    }
}

/// Devices on one connection fall due together (they keep the phase the line was opened with),
/// and a poll round sends their readings as one batch: one wake-up of the pipeline and one outbox
/// commit for the round instead of one per device. Readings of one bus batch share their arrival
/// instant here, so a batch holding two devices' readings is a round.
#[test]
fn devices_polled_in_one_round_arrive_as_one_batch() {
    let port = free_port();
    let mut peer = Peer::tcp(port, "1,2,3");
    for u in 1..=3 {
        peer.ok(&format!("set {u} h 0 {u}"));
    }
    let yaml = format!(
        r#"
poll_ms: 100
tcp:
  - host: 127.0.0.1
    port: {port}
    devices:
      - {{ id: r1, unit: 1, points: [ {{ name: v, table: holding, address: 0 }} ] }}
      - {{ id: r2, unit: 2, points: [ {{ name: v, table: holding, address: 0 }} ] }}
      - {{ id: r3, unit: 3, points: [ {{ name: v, table: holding, address: 0 }} ] }}
"#
    );
    let src = Running::start(&yaml);
    wait_until(
        "a batch with the readings of several devices",
        Duration::from_secs(20),
        || {
            let seen = src.snapshot();
            seen.iter().any(|a| {
                let mut devices: Vec<&str> = seen
                    .iter()
                    .filter(|b| b.at == a.at)
                    .map(|b| b.r.device.as_str())
                    .collect();
                devices.sort_unstable();
                devices.dedup();
                devices.len() >= 2
            })
        },
    );
    // Every device is still polled at its period.
    for d in ["r1", "r2", "r3"] {
        assert!(src.latest(d, "v").is_some(), "{d} polled");
    }
    src.stop();
}
