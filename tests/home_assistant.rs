//! Home Assistant MQTT discovery end to end: pymodbus devices → `weir run` (`mqtt.home_assistant`)
//! → mosquitto → every discovery message checked by Home Assistant's own discovery code
//! (`tests/peers/ha_discovery_check.py`: HA 2024.3.3's topic pattern, platform
//! `DISCOVERY_SCHEMA`s, origin schema, sensor unit / state-class tables, templates rendered);
//! then what HA would do with them: a switch's `payload_on` on its `command_topic` reaches the
//! pymodbus coil, a silent device's availability topic says `offline` (and `online` when it
//! answers again), HA's birth message brings discovery again, and a device removed by a reload
//! gets empty retained configs (HA deletes its entities).
//!
//! Needs `WEIR_HA_PYTHON` and `WEIR_MODBUS_PYTHON` (scripts/lib.sh `need_home_assistant`,
//! `need_pymodbus`).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn ha_python() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_HA_PYTHON") {
        return p.into();
    }
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ha-venv/bin/python");
    assert!(
        v.exists(),
        "WEIR_HA_PYTHON: run `. scripts/lib.sh; need_home_assistant`"
    );
    v
}

/// Every message through HA's checker: one result per message, in order.
fn ha_check(msgs: &[(String, Vec<u8>)]) -> Vec<serde_json::Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/ha_discovery_check.py");
    let mut child = Command::new(ha_python())
        .arg(script)
        .arg("homeassistant")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with homeassistant");
    let mut input = String::new();
    for (topic, payload) in msgs {
        let line = serde_json::json!({
            "topic": topic,
            "payload": String::from_utf8_lossy(payload),
        });
        input.push_str(&line.to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    // Written from a thread: the checker answers as it reads, and a full stdout pipe would block it.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "checker failed");
    let res: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(res.len(), msgs.len());
    res
}

/// The newest retained-or-not message per discovery config topic.
fn configs(sub: &Subscriber) -> BTreeMap<String, Vec<u8>> {
    sub.snapshot()
        .into_iter()
        .filter(|m| m.topic.starts_with("homeassistant/") && m.topic.ends_with("/config"))
        .map(|m| (m.topic, m.payload))
        .collect()
}

fn text(sub: &Subscriber, topic: &str) -> Option<String> {
    sub.snapshot()
        .into_iter()
        .rev()
        .find(|m| m.topic == topic)
        .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
}

fn sources(mport: u16, with_fan: bool) -> String {
    let fan = if with_fan {
        "            - id: plant/fan
              unit: 2
              points:
                - { name: running, table: coil, address: 0, writable: true }
                - { name: speed, table: holding, address: 1, type: u16, unit: rpm, writable: true }
"
    } else {
        ""
    };
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
            - id: plant/boiler
              unit: 1
              points:
                - {{ name: temperature, table: input, address: 0, type: f32, unit: °C }}
                - {{ name: voltage, table: input, address: 2, type: f32, unit: V }}
                - {{ name: energy, table: input, address: 4, type: u32, unit: kWh }}
{fan}"#
    )
}

const HA: &str = "  home_assistant:\n    prefix: homeassistant\n";

#[test]
fn discovery_passes_home_assistants_schemas_and_drives_devices() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "#");
    let mport = free_port();
    let mut peer = ModbusPeer::tcp(mport, "1,2");
    peer.cmd("setv 1 i 0 f32 ABCD 21.5");
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &config_with(broker.port, HA, "", &sources(mport, true)),
    );

    // The gateway's connectivity sensor and the five points.
    wait_until("six discovery configs", Duration::from_secs(20), || {
        configs(&sub).len() == 6
    });
    let cfgs: Vec<(String, Vec<u8>)> = configs(&sub).into_iter().collect();
    let checked = ha_check(&cfgs);
    for r in &checked {
        assert_eq!(r["ok"], true, "Home Assistant refuses {r}");
    }
    let by_name = |name: &str| -> &serde_json::Value {
        checked
            .iter()
            .find(|r| r["config"]["name"] == name)
            .unwrap_or_else(|| panic!("no entity {name}: {checked:?}"))
    };
    let temp = by_name("temperature");
    assert_eq!(temp["component"], "sensor");
    assert_eq!(temp["config"]["device_class"], "temperature");
    assert_eq!(temp["config"]["unit_of_measurement"], "°C");
    assert_eq!(temp["config"]["state_class"], "measurement");
    assert_eq!(temp["config"]["state_topic"], "t/plant/boiler/temperature");
    assert_eq!(temp["config"]["availability_mode"], "all");
    assert_eq!(temp["config"]["device"]["via_device"], "weir_test");
    // HA's template, rendered on the JSON format's payloads: the value, unknown when bad.
    assert_eq!(temp["rendered"]["good"], "21.5");
    assert_eq!(temp["rendered"]["bad"], "None");
    assert_eq!(by_name("voltage")["config"]["device_class"], "voltage");
    assert_eq!(
        by_name("energy")["config"]["state_class"],
        "total_increasing"
    );
    let running = by_name("running");
    assert_eq!(running["component"], "switch");
    assert_eq!(running["config"]["device_class"], "switch");
    assert_eq!(running["rendered"]["true"], "ON");
    let speed = by_name("speed");
    assert_eq!(speed["component"], "number");
    assert_eq!(speed["config"]["command_topic"], "t/plant/fan/speed/set");
    assert_eq!(
        by_name("Connectivity")["component"],
        "binary_sensor",
        "the gateway is a device too"
    );

    // Availability: the gateway's status and the device's own topic, retained.
    wait_until("the fan online", Duration::from_secs(10), || {
        text(&sub, "t/status").as_deref() == Some("online")
            && text(&sub, "t/availability/plant/fan").as_deref() == Some("online")
    });

    // HA toggles the switch: its payload_on on its command_topic reaches the coil.
    let cmd_topic = running["config"]["command_topic"]
        .as_str()
        .unwrap()
        .to_string();
    let on = running["config"]["payload_on"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(peer.cmd("get 2 c 0 1"), "0");
    sub.publish(&cmd_topic, on.as_bytes());
    wait_until("the coil switched on", Duration::from_secs(10), || {
        peer.cmd("get 2 c 0 1") == "1"
    });
    // And the number: its value, as HA sends it.
    sub.publish("t/plant/fan/speed/set", b"1200");
    wait_until(
        "the speed register written",
        Duration::from_secs(10),
        || peer.cmd("get 2 h 1 1") == "1200",
    );

    // A silent device greys out (its availability topic), the gateway stays online.
    peer.cmd("silent 2");
    wait_until("the fan offline", Duration::from_secs(20), || {
        text(&sub, "t/availability/plant/fan").as_deref() == Some("offline")
    });
    assert_eq!(text(&sub, "t/status").as_deref(), Some("online"));
    assert_eq!(
        text(&sub, "t/availability/plant/boiler").as_deref(),
        Some("online")
    );
    peer.cmd("answer 2");
    wait_until("the fan online again", Duration::from_secs(20), || {
        text(&sub, "t/availability/plant/fan").as_deref() == Some("online")
    });

    // HA restarted: its birth message brings every config again.
    let before = sub.count(|m| m.topic.ends_with("/config"));
    sub.publish("homeassistant/status", b"online");
    wait_until("discovery again", Duration::from_secs(10), || {
        sub.count(|m| m.topic.ends_with("/config")) >= before + 6
    });

    // The fan removed from gateway.yaml: its entities get empty retained configs.
    let fan_topics: Vec<String> = configs(&sub)
        .into_iter()
        .filter(|(_, p)| String::from_utf8_lossy(p).contains("plant/fan"))
        .map(|(t, _)| t)
        .collect();
    assert_eq!(fan_topics.len(), 2);
    gw.rewrite(&config_with(broker.port, HA, "", &sources(mport, false)));
    gw.hup();
    wait_until(
        "the fan's entities deleted",
        Duration::from_secs(20),
        || {
            let c = configs(&sub);
            fan_topics
                .iter()
                .all(|t| c.get(t).is_some_and(Vec::is_empty))
        },
    );
    let removals: Vec<(String, Vec<u8>)> =
        fan_topics.iter().map(|t| (t.clone(), Vec::new())).collect();
    for r in ha_check(&removals) {
        assert_eq!(r["ok"], true, "{r}");
    }
    // A late subscriber (HA starting now) finds the boiler's configs retained, not the fan's.
    let late = Subscriber::connect(broker.port, "homeassistant/#");
    wait_until("retained configs", Duration::from_secs(10), || {
        configs(&late).len() == 4
    });
    assert!(configs(&late)
        .values()
        .all(|p| !String::from_utf8_lossy(p).contains("plant/fan")));
}
