//! End to end: a pymodbus device → the `weir` binary (modbus source) → mosquitto → a subscriber;
//! and back: MQTT `…/set` → weir → a holding register the pymodbus server then holds.

mod common;

use std::path::Path;
use std::time::Duration;

use common::ModbusPeer as Peer;
use common::*;

#[test]
fn pymodbus_to_mqtt_and_set_back_to_a_holding_register() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mport = free_port();
    let mut peer = Peer::tcp(mport, "1,2");
    peer.cmd("setv 1 i 0 f32 ABCD 230.5");
    peer.cmd("setv 1 i 6 f32 ABCD 4.25");
    peer.cmd("setv 2 h 10 f32 CDAB 12.5");
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/profiles/energy-meter.yaml");
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"sources:
  - modbus:
      name: plant
      poll_ms: 200
      profiles:
        meter: {{ file: {profile} }}
      tcp:
        - host: 127.0.0.1
          port: {mport}
          devices:
            - {{ id: plant/meter, unit: 1, profile: meter, poll_ms: 200 }}
            - id: plant/pump
              unit: 2
              points:
                - {{ name: flow_sp, table: holding, address: 10, type: f32, order: CDAB, unit: m3/h, writable: true }}
                - {{ name: running, table: coil, address: 0 }}
"#,
        profile = profile.display(),
    );
    let cfg = config_with(broker.port, "", "", &sources);
    let gw = Gateway::start(dir.path(), &cfg);
    wait_until("meter readings over MQTT", Duration::from_secs(20), || {
        sub.last_json("t/plant/meter/voltage_l1")
            .is_some_and(|j| j["value"] == 230.5)
            && sub
                .last_json("t/plant/meter/current_l1")
                .is_some_and(|j| j["value"] == 4.25)
            && sub
                .last_json("t/plant/pump/flow_sp")
                .is_some_and(|j| j["value"] == 12.5)
    });
    let v = sub.last_json("t/plant/meter/voltage_l1").unwrap();
    assert_eq!(v["unit"], "V");
    assert_eq!(v["quality"], "good");
    // The device changes a value: the new one arrives.
    peer.cmd("setv 1 i 0 f32 ABCD 229.75");
    wait_until("the changed voltage", Duration::from_secs(10), || {
        sub.last_json("t/plant/meter/voltage_l1")
            .is_some_and(|j| j["value"] == 229.75)
    });
    // MQTT …/set writes the holding register; pymodbus holds the value; weir reads it back.
    sub.publish("t/plant/pump/flow_sp/set", b"42.5");
    wait_until("the command result", Duration::from_secs(10), || {
        sub.last_json("t/plant/pump/flow_sp/set/result").is_some()
    });
    assert_eq!(
        sub.last_json("t/plant/pump/flow_sp/set/result").unwrap()["ok"],
        true,
        "{}",
        gw.log()
    );
    assert_eq!(peer.cmd("getv 2 h 10 f32 CDAB 2"), "42.5");
    wait_until(
        "the written value read back",
        Duration::from_secs(10),
        || {
            sub.last_json("t/plant/pump/flow_sp")
                .is_some_and(|j| j["value"] == 42.5)
        },
    );
    // Not writable: refused by the router, nothing written.
    sub.publish("t/plant/pump/running/set", b"true");
    wait_until("the refusal", Duration::from_secs(10), || {
        sub.last_json("t/plant/pump/running/set/result").is_some()
    });
    let r = sub.last_json("t/plant/pump/running/set/result").unwrap();
    assert_eq!(r["ok"], false);
    assert_eq!(peer.cmd("get 2 c 0 1"), "0");
}

/// A float32 register holding 231.7 is published as `231.7`, not as the f32's binary expansion
/// `231.6999969482422`; so are a scaled float32 and a scaled integer that mean 231.7.
#[test]
fn float32_values_are_published_as_their_short_decimal() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mport = free_port();
    let mut peer = Peer::tcp(mport, "1");
    peer.cmd("setv 1 i 0 f32 ABCD 231.7");
    peer.cmd("setv 1 i 20 f32 ABCD 2317.0");
    peer.cmd("setv 1 i 30 u32 CDAB 23170");
    let profile = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/profiles/energy-meter.yaml");
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"sources:
  - modbus:
      name: plant
      profiles:
        meter: {{ file: {profile} }}
      tcp:
        - host: 127.0.0.1
          port: {mport}
          devices:
            - id: plant/meter
              unit: 1
              profile: meter
              poll_ms: 200
              points:
                - {{ name: scaled_f32, table: input, address: 20, type: f32, scale: 0.1, unit: V }}
                - {{ name: scaled_u32, table: input, address: 30, type: u32, order: CDAB, scale: 0.01, unit: V }}
"#,
        profile = profile.display(),
    );
    let cfg = config_with(broker.port, "", "", &sources);
    let gw = Gateway::start(dir.path(), &cfg);
    let topics = [
        "t/plant/meter/voltage_l1",
        "t/plant/meter/scaled_f32",
        "t/plant/meter/scaled_u32",
    ];
    let raw = |topic: &str| {
        sub.snapshot()
            .into_iter()
            .rev()
            .find(|m| m.topic == topic)
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
    };
    wait_until(
        "the three values over MQTT",
        Duration::from_secs(20),
        || topics.iter().all(|t| raw(t).is_some()),
    );
    for t in topics {
        let payload = raw(t).unwrap();
        let j: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            j["value"].to_string(),
            "231.7",
            "{t}: {payload}\n{}",
            gw.log()
        );
        assert!(
            payload.contains("231.7") && !payload.contains("231.69"),
            "{t}: {payload}"
        );
    }
}

#[test]
fn weir_modbus_read_and_write_commission_a_device() {
    let port = free_port();
    let mut peer = Peer::tcp(port, "3");
    peer.cmd("setv 3 i 10 f32 CDAB 49.875");
    let tcp = format!("127.0.0.1:{port}");
    let weir = |args: &[&str]| {
        let out = weir_cmd().args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = weir(&[
        "modbus",
        "read",
        "--tcp",
        &tcp,
        "--unit",
        "3",
        "--table",
        "input",
        "--address",
        "10",
        "--type",
        "f32",
        "--order",
        "CDAB",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("49.875"), "{out}");
    let (code, out, err) = weir(&[
        "modbus",
        "write",
        "--tcp",
        &tcp,
        "--unit",
        "3",
        "--address",
        "4",
        "--type",
        "i16",
        "--scale",
        "0.5",
        "--value",
        "-21",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out, "ok: holding 4 [0xffd6]\n",
        "what was written, not Rust Debug"
    );
    assert_eq!(peer.cmd("getv 3 h 4 i16 ABCD 1"), "-42");
    // An exception is reported by name, with a failing exit code.
    let (code, _, err) = weir(&[
        "modbus",
        "read",
        "--tcp",
        &tcp,
        "--unit",
        "3",
        "--address",
        "1000",
    ]);
    assert_eq!(code, Some(2));
    assert!(err.contains("illegal_data_address"), "{err}");
}

#[test]
fn weir_check_reports_modbus_errors_with_path_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        dir.path().join("meter.yaml"),
        "points:\n  - { name: v, table: input, address: 0, type: f32 }\n",
    )
    .unwrap();
    std::fs::write(
        &cfg,
        r#"gateway:
  id: t
mqtt:
  host: 127.0.0.1
sources:
  - modbus:
      name: plant
      profiles:
        meter: { file: meter.yaml }
      rtu:
        - port: /dev/ttyUSB9
          parity: mark
          devices:
            - { id: m1, unit: 1, profile: meter }
"#,
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gateway.yaml:12: sources[0].modbus.rtu[0].parity: unknown variant `mark`"),
        "{err}"
    );
    // Fixed, the profile (relative to gateway.yaml) is loaded and checked too.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("parity: mark", "parity: even")).unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("plant (modbus)"));
    std::fs::write(
        dir.path().join("meter.yaml"),
        "points:\n  - { name: v, table: input, address: 0, type: f32, bit: 3 }\n",
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("sources[0].modbus.rtu[0].devices[0].profile(")
            && err.contains("bit: `bit` needs type bool"),
        "{err}"
    );
}

/// `weir check` promises every error at once: two bad points of one device are two errors, each
/// with its path and line; a broken profile file is its own error, adds no false "no profile",
/// and the errors after it are still reported.
#[test]
fn weir_check_reports_every_modbus_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(dir.path().join("meter.yaml"), "points:\n  - { name: v\n").unwrap();
    std::fs::write(
        &cfg,
        r#"gateway:
  id: t
mqtt:
  host: 127.0.0.1
sources:
  - modbus:
      name: plant
      profiles:
        meter: { file: meter.yaml }
      tcp:
        - host: 127.0.0.1
          devices:
            - { id: m1, unit: 1, profile: meter }
            - id: pump
              unit: 2
              points:
                - { name: a, table: holding, address: 0, type: f33 }
                - { name: b, table: holdng, address: 1 }
                - { name: c, table: input, address: 2, writable: true }
"#,
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let at = "sources[0].modbus";
    for want in [
        format!(":9: {at}.profiles.meter.file: "),
        format!(":17: {at}.tcp[0].devices[1].points[0].type: unknown variant `f33`"),
        format!(":18: {at}.tcp[0].devices[1].points[1].table: unknown variant `holdng`"),
        format!(":19: {at}.tcp[0].devices[1].points[2].writable: "),
    ] {
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    assert!(
        err.contains("meter.yaml:"),
        "the profile error names its file:\n{err}"
    );
    assert!(!err.contains("no profile"), "{err}");
    assert!(err.contains("4 errors"), "{err}");
}

/// The commented-out `modbus` example in the reference gateway.yaml, uncommented, passes
/// `weir check` (with the serial port named there replaced by one that exists everywhere).
#[test]
fn the_reference_modbus_example_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/gateway.yaml")).unwrap();
    let start = text
        .find("  # - modbus:")
        .expect("a modbus example in gateway.yaml");
    let mut out = text[..start].to_string();
    let mut in_block = true;
    for (i, line) in text[start..].lines().enumerate() {
        // The example is `# - modbus:` and the indented commented lines under it.
        in_block &= i == 0 || line.starts_with("  #     ");
        match line.strip_prefix("  #") {
            Some(rest) if in_block => {
                out.push_str("  ");
                out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("examples/profiles")).unwrap();
    std::fs::copy(
        format!("{root}/examples/profiles/energy-meter.yaml"),
        dir.path().join("examples/profiles/energy-meter.yaml"),
    )
    .unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, out.replace("/dev/ttyUSB0", "/dev/null")).unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("plant (modbus)"));
}

/// The greenhouse promise with a real device: a rule watches a pymodbus temperature register and
/// switches a pymodbus coil through the command router, with hysteresis; the coil's new state
/// comes back as telemetry.
#[cfg(feature = "rules")]
#[test]
fn a_rule_switches_a_pymodbus_coil_with_hysteresis() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mport = free_port();
    let mut peer = Peer::tcp(mport, "1,2");
    peer.cmd("setv 1 i 0 f32 ABCD 50.0");
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"sources:
  - modbus:
      name: plant
      poll_ms: 200
      tcp:
        - host: 127.0.0.1
          port: {mport}
          devices:
            - id: plant/boiler
              unit: 1
              points:
                - {{ name: temperature, table: input, address: 0, type: f32, unit: °C }}
            - id: plant/fan
              unit: 2
              points:
                - {{ name: running, table: coil, address: 0, writable: true }}
rules:
  - name: cooling
    match: {{ device: plant/boiler, point: temperature }}
    script: |
      let on = hysteresis("hot", r.value, 60.0, 70.0);
      if changed("fan", on) {{ command("plant/fan", "running", on); }}
"#
    );
    let cfg = config_with(broker.port, "", "", &sources);
    let gw = Gateway::start(dir.path(), &cfg);
    wait_until("the boiler at 50 °C", Duration::from_secs(20), || {
        sub.last_json("t/plant/boiler/temperature")
            .is_some_and(|j| j["value"] == 50.0)
            && sub.last_json("t/plant/fan/running").is_some()
    });
    assert_eq!(peer.cmd("get 2 c 0 1"), "0", "{}", gw.log());
    // Above the high threshold: the rule switches the fan on in the device.
    peer.cmd("setv 1 i 0 f32 ABCD 75.0");
    wait_until("the coil switched on", Duration::from_secs(20), || {
        peer.cmd("get 2 c 0 1") == "1"
    });
    wait_until("the fan on in telemetry", Duration::from_secs(10), || {
        sub.last_json("t/plant/fan/running")
            .is_some_and(|j| j["value"] == true)
    });
    // Between the thresholds: no change, however long it stays there.
    peer.cmd("setv 1 i 0 f32 ABCD 65.0");
    wait_until("the boiler at 65 °C", Duration::from_secs(10), || {
        sub.last_json("t/plant/boiler/temperature")
            .is_some_and(|j| j["value"] == 65.0)
    });
    // Several readings between the thresholds went through the rule (a reading is published
    // after the rule has seen it): none of them switched the fan.
    let at_65 =
        || sub.count(|m| m.topic == "t/plant/boiler/temperature" && m.json()["value"] == 65.0);
    wait_until("three readings at 65 °C", Duration::from_secs(10), || {
        at_65() >= 3
    });
    assert_eq!(peer.cmd("get 2 c 0 1"), "1", "hysteresis holds the fan on");
    // At the low threshold: off again.
    peer.cmd("setv 1 i 0 f32 ABCD 60.0");
    wait_until("the coil switched off", Duration::from_secs(20), || {
        peer.cmd("get 2 c 0 1") == "0"
    });
    // One command per edge: off at the first reading (`changed` is true the first time), on at
    // 75 °C, off at 60 °C; none while the temperature sat between the thresholds.
    let log = gw.log();
    let sent = |v: &str| {
        log.matches(&format!("command plant/fan/running <- {v} sent"))
            .count()
    };
    assert_eq!((sent("true"), sent("false")), (1, 2), "{log}");
}

/// The `/devices` document as (device id → device), empty while the listener is not up.
fn devices_doc(mport: u16) -> std::collections::HashMap<String, serde_json::Value> {
    http_get(mport, "/devices")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|doc| doc["devices"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d["id"].as_str().unwrap_or_default().to_string(), d))
        .collect()
}

/// (availability, the stale flag of `point`) of `device` in `/devices`.
fn availability(mport: u16, device: &str, point: &str) -> (String, Option<bool>) {
    let docs = devices_doc(mport);
    let Some(d) = docs.get(device) else {
        return (String::new(), None);
    };
    let stale = point_doc(d, point)["stale"].as_bool();
    (d["availability"].as_str().unwrap_or_default().into(), stale)
}

/// Staleness with a real Modbus device, as the adapter honestly reports it. A bad quality is a
/// reading, reported once when it starts (a slave that answers exceptions, a lost connection);
/// after it the points are silent, so they go stale three poll intervals later and the device
/// offline — per device: the other slave on the line stays online. An `on_change` point that
/// holds still is not timed, so it never goes stale. The device answering again brings it back.
#[test]
fn a_modbus_device_that_stops_answering_goes_stale_and_offline_per_device_then_back() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let port = free_port();
    let mport = free_port();
    let mut peer = Peer::tcp(port, "1,2");
    peer.cmd("setv 1 i 0 f32 ABCD 230.5");
    peer.cmd("set 2 h 10 7");
    // Slower machines (WEIR_TEST_TIME_SCALE) poll slower, so a late poll is not taken for silence.
    let poll_ms = 200 * u64::from(time_scale());
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"metrics:
  listen: 127.0.0.1:{mport}
sources:
  - modbus:
      name: plant
      poll_ms: {poll_ms}
      reconnect_min_ms: 100
      reconnect_max_ms: 400
      tcp:
        - host: 127.0.0.1
          port: {port}
          devices:
            - id: plant/meter
              unit: 1
              points:
                - {{ name: voltage, table: input, address: 0, type: f32, unit: V }}
            - id: plant/pump
              unit: 2
              points:
                - {{ name: flow, table: holding, address: 10 }}
                - {{ name: running, table: coil, address: 0, on_change: true }}
"#
    );
    let mut gw = Gateway::start(dir.path(), &config_with(broker.port, "", "", &sources));
    let count = |topic: &str| sub.count(|m| m.topic == topic);
    let last = |topic: &str| sub.last_json(topic).unwrap_or_default();

    // Polled for well over three intervals: both online, nothing stale, the steady `on_change`
    // coil (one reading) included.
    wait_until("12 polls of each device", Duration::from_secs(20), || {
        count("t/plant/meter/voltage") >= 12 && count("t/plant/pump/flow") >= 12
    });
    assert_eq!(
        availability(mport, "plant/meter", "voltage"),
        ("online".into(), Some(false))
    );
    assert_eq!(
        availability(mport, "plant/pump", "running"),
        ("online".into(), Some(false)),
        "a steady on_change point is not stale"
    );
    assert_eq!(
        count("t/plant/pump/running"),
        1,
        "reported once, it holds still"
    );
    let pump = &devices_doc(mport)["plant/pump"];
    let running = pump["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "running")
        .unwrap();
    assert!(running.get("expected_period_ms").is_none(), "{pump}");
    assert!(!gw.log().contains("marked stale"), "{}", gw.log());

    // Slave 1 stops answering (the peer, a TCP gateway, answers exception 0x0B for it): one bad
    // reading, then silence; the meter goes offline, the pump on the same line stays online.
    peer.cmd("silent 1");
    wait_until("the meter offline", Duration::from_secs(20), || {
        availability(mport, "plant/meter", "voltage") == ("offline".into(), Some(true))
    });
    assert_eq!(
        availability(mport, "plant/pump", "flow"),
        ("online".into(), Some(false))
    );
    let bad = |topic: &str| sub.count(|m| m.topic == topic && m.json()["quality"] == "bad");
    let v = last("t/plant/meter/voltage");
    assert_eq!(
        (v["quality"].clone(), v["reason"].clone()),
        ("bad".into(), "gateway_target_failed_to_respond".into()),
        "{v}"
    );
    assert_eq!(
        bad("t/plant/meter/voltage"),
        1,
        "a bad quality is reported once"
    );
    assert!(
        gw.log().contains("device offline device=plant/meter"),
        "{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("device offline device=plant/pump"),
        "{}",
        gw.log()
    );

    // It answers again: online, fresh, good.
    peer.cmd("answer 1");
    wait_until("the meter back online", Duration::from_secs(20), || {
        availability(mport, "plant/meter", "voltage") == ("online".into(), Some(false))
            && last("t/plant/meter/voltage")["quality"] == "good"
    });

    // The whole peer goes away: every point of the line is reported bad once (connection
    // lost), then silent; both devices go offline.
    drop(peer);
    wait_until("both devices offline", Duration::from_secs(20), || {
        availability(mport, "plant/meter", "voltage") == ("offline".into(), Some(true))
            && availability(mport, "plant/pump", "flow") == ("offline".into(), Some(true))
    });
    let f = last("t/plant/pump/flow");
    assert_eq!(f["quality"], "bad", "{f}");
    assert!(
        f["reason"]
            .as_str()
            .unwrap_or_default()
            .starts_with("connection_lost"),
        "{f}"
    );
    // The peer is back on the same port: reconnected, both online.
    let _peer = Peer::tcp(port, "1,2");
    wait_until("both devices back online", Duration::from_secs(20), || {
        availability(mport, "plant/meter", "voltage") == ("online".into(), Some(false))
            && availability(mport, "plant/pump", "flow") == ("online".into(), Some(false))
    });
    assert!(gw.is_running());
}

/// A healthy slave polled behind one that does not answer at all waits one response timeout per
/// probe, so its readings come up to poll + timeout apart: that is not silence. The slave that
/// stopped answering goes stale and offline; the healthy one stays online, never marked stale.
#[test]
fn a_healthy_slave_behind_a_silent_one_is_not_marked_stale() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let port = free_port();
    let mport = free_port();
    // No answer at all for a silent unit (not exception 0x0B): every probe of it times out.
    let mut peer = Peer::tcp_with(port, "1,2", &["--quiet-gateway"]);
    let k = u64::from(time_scale());
    let dir = tempfile::tempdir().unwrap();
    let sources = format!(
        r#"metrics:
  listen: 127.0.0.1:{mport}
sources:
  - modbus:
      name: plant
      poll_ms: {poll}
      backoff_min_ms: {backoff_min}
      backoff_max_ms: {backoff_max}
      tcp:
        - host: 127.0.0.1
          port: {port}
          response_timeout_ms: {timeout}
          devices:
            - id: plant/meter
              unit: 1
              points:
                - {{ name: voltage, table: input, address: 0, type: f32, unit: V }}
            - id: plant/pump
              unit: 2
              points:
                - {{ name: flow, table: holding, address: 10 }}
"#,
        poll = 100 * k,
        backoff_min = 100 * k,
        backoff_max = 200 * k,
        timeout = 1000 * k,
    );
    let gw = Gateway::start(dir.path(), &config_with(broker.port, "", "", &sources));
    wait_until("both online", Duration::from_secs(20), || {
        availability(mport, "plant/meter", "voltage") == ("online".into(), Some(false))
            && availability(mport, "plant/pump", "flow") == ("online".into(), Some(false))
    });
    peer.cmd("silent 1");
    wait_until("the meter offline", Duration::from_secs(30), || {
        availability(mport, "plant/meter", "voltage") == ("offline".into(), Some(true))
    });
    wait_until("the meter's bad quality", Duration::from_secs(10), || {
        sub.last_json("t/plant/meter/voltage")
            .is_some_and(|v| v["quality"] == "bad" && v["reason"] == "timeout")
    });
    // The pump, meanwhile, is polled between the probes: readings about poll + timeout apart,
    // far more than three bare poll intervals. Over six probes (six sweeps, one a second, most
    // of them landing in such a gap) it stays online and fresh.
    let probes = |peer: &mut Peer| peer.cmd("count 1").parse::<u64>().unwrap();
    let n = probes(&mut peer);
    wait_until(
        "6 more probes of the meter",
        Duration::from_secs(30),
        || probes(&mut peer) >= n + 6,
    );
    assert!(sub.count(|m| m.topic == "t/plant/pump/flow") > 6);
    assert_eq!(
        availability(mport, "plant/pump", "flow"),
        ("online".into(), Some(false))
    );
    assert!(
        !gw.log()
            .contains("marked stale device=plant/pump point=flow"),
        "{}",
        gw.log()
    );
    assert!(
        !gw.log().contains("device offline device=plant/pump"),
        "{}",
        gw.log()
    );
}
