//! The device registry end to end: one owner per device (`weir check` and at run time), the
//! registry as `weir devices` and `/devices` show it, staleness, and a whole-file reload under
//! load that loses nothing. Real binary, real mosquitto, real subscriber; CoAP readings come from
//! libcoap's `coap-client-notls`.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use common::*;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of one Prometheus sample (`name{labels}`), 0 when absent.
fn metric(text: &str, sample: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn weir_check_refuses_two_sources_declaring_one_device_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        "gateway:\n  id: t\n  state_dir: /tmp/weir-registry-check\nsources:\n  - sim:\n      name: north\n      greenhouses: 1\n  - sim:\n      name: south\n      greenhouses: 2\n",
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "device `gh1/actuators` is already declared by source `north` (sources[0].sim)"
        ) && err.contains("sources[1].sim"),
        "names the device and both places: {err}"
    );
    // gh2's devices are south's alone: no error for them.
    assert!(!err.contains("gh2/"), "{err}");
}

#[test]
fn a_source_cannot_send_readings_for_a_device_another_source_owns() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let (udp, mport) = (free_udp_port(), free_port());
    // A CoAP server wrongly opened to `gh1/`, the simulator's greenhouse, and a rule on gh1's
    // temperature that would act on whatever reaches it.
    let gw = Gateway::start(
        dir.path(),
        &config_with(
            broker.port,
            "",
            "",
            &format!(
                "metrics:\n  listen: 127.0.0.1:{mport}\nsources:\n  - sim:\n      name: sim\n      seed: 7\n      interval_ms: 200\n      beds: 1\n  - coap:\n      name: coap\n      listen: 127.0.0.1:{udp}\n      accept_undeclared_under: [\"gh1/\", \"field/\"]\n      stats_interval_s: 1\nrules:\n  - name: watch\n    match: {{ device: \"gh1/climate\", point: temperature }}\n    script: 'emit(\"seen\", r.value);'\n"
            ),
        ),
    );
    wait_until("online", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/status" && m.payload == b"online") > 0
    });
    let post = |path: &str, value: &str| {
        let out = Command::new("coap-client-notls")
            .args(["-m", "post", "-B", "5", "-e", value])
            .arg(format!("coap://127.0.0.1:{udp}/{path}"))
            .output()
            .expect("coap-client-notls (apt-get install libcoap3-bin)");
        assert!(out.status.success(), "{out:?}");
    };
    post("gh1/climate/temperature", "99");
    post("field/probe/temperature", "12.5");
    wait_until("the refusal counted", Duration::from_secs(30), || {
        metric(
            &http_get(mport, "/metrics").unwrap_or_default(),
            "weir_readings_refused_total{source=\"coap\",reason=\"not_owner\"}",
        ) >= 1
    });
    wait_until(
        "the unowned device accepted",
        Duration::from_secs(30),
        || sub.count(|m| m.topic == "t/field/probe/temperature") > 0,
    );
    // Meanwhile the simulator's own readings keep flowing, and the rule saw only them.
    let sim_temps = sub.count(|m| m.topic == "t/gh1/climate/temperature");
    wait_until("sim readings flow", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/gh1/climate/temperature") >= sim_temps + 3
    });
    let forged = |m: &Msg| m.json()["value"].as_f64() == Some(99.0);
    assert_eq!(
        sub.count(|m| m.topic == "t/gh1/climate/temperature" && forged(m)),
        0
    );
    assert_eq!(
        sub.count(|m| m.topic == "t/gh1/climate/seen" && forged(m)),
        0
    );
    assert!(sub.count(|m| m.topic == "t/gh1/climate/seen") > 0);
    assert!(
        gw.log()
            .contains("refused readings for a device another source owns"),
        "{}",
        gw.log()
    );

    // The registry: the sim owns gh1's devices with their writable points; coap owns what it
    // first reported; `weir devices` prints it, `/devices` serves it as JSON.
    let (code, out, err) = gw.cli(&["devices"]);
    assert_eq!(code, 0, "{err}");
    let line = |id: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} in:\n{out}"))
            .to_string()
    };
    assert!(line("gh1/actuators").contains(" sim "), "{out}");
    assert!(line("gh1/actuators").contains("vent (w)"), "{out}");
    assert!(line("field/probe").contains(" coap "), "{out}");
    assert!(line("gh1/climate").contains("online"), "{out}");
    let probe = device_doc(mport, "field/probe");
    assert_eq!(probe["owner"], "coap");
    assert_eq!(probe["points"][0]["name"], "temperature");
    assert_eq!(probe["points"][0]["writable"], false);
}

#[test]
fn a_whole_file_reload_under_load_loses_nothing() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let a = "  - sim:\n      name: a\n      seed: 1\n      readings_per_s: 1000\n      total_readings: 20000\n";
    let b = |interval: u32| {
        format!("  - sim:\n      name: b\n      prefix: hb\n      seed: 2\n      interval_ms: {interval}\n")
    };
    let cfg = |mqtt: &str, sources: &str| {
        config_with(broker.port, mqtt, "", &format!("sources:\n{sources}"))
    };
    let mut gw = Gateway::start(dir.path(), &cfg("", a));
    let a_count = |sub: &Subscriber| sub.count(|m| m.topic.starts_with("t/gh"));
    wait_until("a flowing", Duration::from_secs(30), || {
        a_count(&sub) > 1000
    });
    let steps: Vec<(String, &str)> = vec![
        (cfg("", &format!("{a}{}", b(50))), "started=[\"b\"]"),
        (
            cfg("  keepalive_s: 20\n", &format!("{a}{}", b(50))),
            "reconnected with the new settings",
        ),
        (
            cfg("  keepalive_s: 20\n", &format!("{a}{}", b(20))),
            "restarted=[\"b\"]",
        ),
        (cfg("  keepalive_s: 20\n", a), "stopped=[\"b\"]"),
    ];
    for (i, (text, says)) in steps.iter().enumerate() {
        let seen = a_count(&sub);
        gw.rewrite(text);
        gw.hup();
        wait_until(
            &format!("reload {i}: {says}"),
            Duration::from_secs(60),
            || gw.log().matches("reload done").count() > i && gw.log().contains(says),
        );
        // Readings keep arriving between reloads.
        wait_until("a still flowing", Duration::from_secs(60), || {
            a_count(&sub) > seen + 500 || a_count(&sub) >= 20000
        });
    }
    wait_until("all of a's readings", Duration::from_secs(120), || {
        let seqs = seqs_by_device(&sub.snapshot(), "t");
        let unique: usize = seqs
            .iter()
            .filter(|(d, _)| d.starts_with("gh"))
            .map(|(_, v)| v.iter().collect::<BTreeSet<_>>().len())
            .sum();
        unique >= 20000
    });
    assert!(gw.is_running());
    // Every device's series is gap-free: nothing committed was lost across the reloads, for
    // the source that kept running and for the one started, restarted and stopped.
    let seqs: HashMap<String, Vec<u64>> = seqs_by_device(&sub.snapshot(), "t");
    assert!(seqs.keys().any(|d| d.starts_with("hb1/")), "b published");
    for (device, v) in &seqs {
        let set: BTreeSet<u64> = v.iter().copied().collect();
        let max = *set.iter().max().unwrap();
        assert_eq!(
            set.len() as u64,
            max,
            "{device}: seq 1..={max} with no gap (got {} distinct)",
            set.len()
        );
    }
    let unique_a: usize = seqs
        .iter()
        .filter(|(d, _)| d.starts_with("gh"))
        .map(|(_, v)| v.iter().collect::<BTreeSet<_>>().len())
        .sum();
    assert_eq!(
        unique_a, 20000,
        "every reading of the source that kept running"
    );
    assert_eq!(
        gw.log().matches("starting source source=a ").count(),
        1,
        "the unchanged source was never restarted"
    );
    assert!(gw.terminate().success());
}
