//! Device shadow end to end (`mqtt.shadow`): a pymodbus device → `weir run` → mosquitto.
//!
//! * desired set while the device does not answer → retried with backoff, applied when it
//!   answers again; reported follows the device's telemetry and delta empties;
//! * a desired value the device cannot take (out of the register's range) → reported as refused
//!   with the reason, written once and not retried;
//! * desired set while the gateway is down and the device too → applied after the restart once
//!   the device answers; the desired copy under the state dir is kept.
//!
//! Needs `WEIR_MODBUS_PYTHON` (scripts/lib.sh `need_pymodbus`) and mosquitto.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn publish_retained(port: u16, topic: &str, payload: &str) {
    let st = Command::new("mosquitto_pub")
        .args([
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-r",
            "-t",
            topic,
            "-m",
            payload,
        ])
        .status()
        .expect("mosquitto_pub");
    assert!(st.success());
}

fn sources(mport: u16) -> String {
    format!(
        r#"sources:
  - modbus:
      name: plant
      poll_ms: 200
      tcp:
        - host: 127.0.0.1
          port: {mport}
          response_timeout_ms: 200
          devices:
            - id: plant/fan
              unit: 2
              points:
                - {{ name: running, table: coil, address: 0, writable: true }}
                - {{ name: speed, table: holding, address: 1, type: u16, unit: rpm, writable: true }}
"#
    )
}

const SHADOW: &str = "  shadow:\n    retry_min_ms: 200\n    retry_max_ms: 1000\n";

#[test]
fn desired_state_is_applied_when_the_device_returns_refused_when_impossible_and_kept_across_restarts(
) {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mport = free_port();
    let mut peer = ModbusPeer::tcp(mport, "2");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &config_with(broker.port, SHADOW, "", &sources(mport)),
    );
    wait_until("the fan's telemetry", Duration::from_secs(20), || {
        sub.last_json("t/plant/fan/speed").is_some()
    });

    // The device stops answering; a wish arrives meanwhile.
    peer.cmd("silent 2");
    publish_retained(
        broker.port,
        "t/plant/fan/shadow/desired",
        r#"{"state":{"speed":1200}}"#,
    );
    wait_until("the delta names the speed", Duration::from_secs(10), || {
        sub.last_json("t/plant/fan/shadow/delta")
            .is_some_and(|d| d["state"]["speed"] == 1200)
    });
    // Tried and retried while silent (no answer), nothing written.
    wait_until("two attempts", Duration::from_secs(20), || {
        gw.log().matches("shadow: applying desired value").count() >= 2
    });
    assert_eq!(peer.cmd("get 2 h 1 1"), "0");
    // Back: applied, reported, in sync.
    peer.cmd("answer 2");
    wait_until("the register written", Duration::from_secs(20), || {
        peer.cmd("get 2 h 1 1") == "1200"
    });
    wait_until("reported and no delta", Duration::from_secs(10), || {
        sub.last_json("t/plant/fan/shadow/reported")
            .is_some_and(|r| r["state"]["speed"] == 1200)
            && sub
                .last_json("t/plant/fan/shadow/delta")
                .is_some_and(|d| d["state"].as_object().is_some_and(|s| s.is_empty()))
    });

    // Out of the register's range: refused with the reason, not retried.
    let before = gw.log().matches("shadow: applying desired value").count();
    publish_retained(
        broker.port,
        "t/plant/fan/shadow/desired",
        r#"{"state":{"speed":70000}}"#,
    );
    wait_until("refused in reported", Duration::from_secs(10), || {
        sub.last_json("t/plant/fan/shadow/reported")
            .is_some_and(|r| {
                r["refused"]["speed"]["value"] == 70000
                    && r["refused"]["speed"]["reason"]
                        .as_str()
                        .is_some_and(|s| s.contains("out of range"))
            })
    });
    // Several retry periods later: still one attempt for that value.
    let polls = || sub.count(|m| m.topic == "t/plant/fan/speed");
    let p0 = polls();
    wait_until("ten more polls", Duration::from_secs(20), || {
        polls() >= p0 + 10
    });
    assert_eq!(
        gw.log().matches("shadow: applying desired value").count(),
        before + 1,
        "{}",
        gw.log()
    );
    assert_eq!(peer.cmd("get 2 h 1 1"), "1200");

    // Restart in between: gateway down, device down, a wish for the coil.
    gw.terminate();
    peer.cmd("silent 2");
    publish_retained(
        broker.port,
        "t/plant/fan/shadow/desired",
        r#"{"state":{"running":true,"speed":900}}"#,
    );
    gw.start_again();
    let since_restart = || {
        let log = gw.log();
        let (_, tail) = log.rsplit_once("---- start ----").unwrap();
        tail.to_string()
    };
    wait_until(
        "attempted after the restart",
        Duration::from_secs(20),
        || since_restart().contains("shadow: applying desired value"),
    );
    assert!(since_restart().contains("shadow: desired state restored"));
    assert_eq!(peer.cmd("get 2 c 0 1"), "0");
    peer.cmd("answer 2");
    wait_until("coil and register written", Duration::from_secs(20), || {
        peer.cmd("get 2 c 0 1") == "1" && peer.cmd("get 2 h 1 1") == "900"
    });
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/shadow/desired.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["plant/fan"]["state"]["running"], true);
    assert_eq!(saved["plant/fan"]["state"]["speed"], 900);
}

/// Rules read and set the shadow: a rule desires a speed when the coil turns on, and emits the
/// desired value it reads back; the shadow applies it through the router and keeps the retained
/// desired topic true.
#[test]
fn rules_read_and_set_desired_state() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mport = free_port();
    let mut peer = ModbusPeer::tcp(mport, "2");
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"rules:
  - name: boost
    match: { device: plant/fan, point: running }
    script: |
      if r.value == true { set_desired("plant/fan", "speed", 300); }
      let d = shadow_desired("plant/fan", "speed");
      if d != () { emit("desired_speed", d); }
"#;
    let _gw = Gateway::start(
        dir.path(),
        &config_with(
            broker.port,
            SHADOW,
            "",
            &format!("{}{rules}", sources(mport)),
        ),
    );
    wait_until("the fan's telemetry", Duration::from_secs(20), || {
        sub.last_json("t/plant/fan/running").is_some()
    });
    assert!(sub.last_json("t/plant/fan/desired_speed").is_none());
    peer.cmd("set 2 c 0 1");
    wait_until("the rule's wish applied", Duration::from_secs(20), || {
        peer.cmd("get 2 h 1 1") == "300"
    });
    wait_until("the rule reads it back", Duration::from_secs(10), || {
        sub.last_json("t/plant/fan/desired_speed")
            .is_some_and(|j| j["value"] == 300)
    });
    wait_until(
        "the retained desired topic",
        Duration::from_secs(10),
        || {
            sub.last_json("t/plant/fan/shadow/desired")
                .is_some_and(|j| j["state"]["speed"] == 300)
        },
    );
}
