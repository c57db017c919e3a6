//! MQTT 5 against mosquitto: per-device batches, and a broker that refuses some publishes
//! (ACL deny → PUBACK reason 135) without blocking the outbox.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

#[test]
fn mqtt5_per_device_batches_carry_every_reading() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let total = 3000;
    let _gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            &format!(
                "      greenhouses: 2\n      readings_per_s: 3000\n      total_readings: {total}\n"
            ),
            "  protocol: \"5\"\n  mode: per_device\n",
            "",
        ),
    );
    let count = || -> usize {
        sub.snapshot()
            .iter()
            .filter(|m| !m.topic.starts_with("t/status"))
            .map(|m| m.json()["readings"].as_array().map(Vec::len).unwrap_or(0))
            .sum()
    };
    wait_until("every reading in batches", Duration::from_secs(30), || {
        count() >= total
    });
    assert_eq!(count(), total);
    // Per device topic, batch seqs are 1..=n without gaps, and points keep their order.
    let mut seqs: HashMap<String, Vec<u64>> = HashMap::new();
    for m in sub
        .snapshot()
        .iter()
        .filter(|m| !m.topic.starts_with("t/status"))
    {
        let j = m.json();
        seqs.entry(m.topic.clone())
            .or_default()
            .push(j["seq"].as_u64().unwrap());
        let r = &j["readings"][0];
        assert!(
            r["point"].is_string() && r["ts"].is_string() && r["quality"] == "good",
            "{j}"
        );
    }
    assert!(seqs.contains_key("t/gh2/bed4"), "{:?}", seqs.keys());
    for (topic, s) in seqs {
        let want: Vec<u64> = (1..=s.len() as u64).collect();
        assert_eq!(s, want, "{topic}");
    }
}

#[test]
fn mqtt5_refused_publishes_are_counted_and_do_not_block_the_outbox() {
    let dir0 = tempfile::tempdir().unwrap();
    let acl = dir0.path().join("acl");
    std::fs::write(&acl, "topic readwrite t/#\ntopic deny t/gh1/bed1/#\n").unwrap();
    let broker = Mosquitto::start_with(&format!("acl_file {}\n", acl.display()), false);
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      readings_per_s: 700\n      total_readings: 140\n",
            "  protocol: \"5\"\n",
            "",
        ),
    );
    // 7 points round robin: 20 readings of gh1/bed1/moisture are refused, 120 arrive.
    // mosquitto 2.0.11 answers a denied QoS 1 publish with PUBACK 135 and then drops the
    // connection, so the gateway reconnects once per refusal; nothing is stuck or lost.
    wait_until("120 readings", Duration::from_secs(60), || {
        seqs_by_device(&sub.snapshot(), "t")
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 120
    });
    wait_until("an empty outbox", Duration::from_secs(30), || {
        let (_, out, _) = gw.cli(&["buffer", "stats"]);
        out.contains("\"rows\": 0")
    });
    let devices: HashSet<String> = seqs_by_device(&sub.snapshot(), "t").into_keys().collect();
    assert!(!devices.contains("gh1/bed1"));
    assert!(devices.contains("gh1/bed2"));
    wait_until(
        "the rejection count in the status document",
        Duration::from_secs(10),
        || {
            sub.last_json("t/status/metrics")
                .is_some_and(|j| j["metrics"]["weir_mqtt_rejected_total"] == 20)
        },
    );
    assert!(
        gw.log().contains("broker refused the message"),
        "{}",
        gw.log()
    );
    assert!(gw.is_running());
}
