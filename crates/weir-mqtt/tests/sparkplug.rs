//! Sparkplug B against real peers: the forwarder publishes to a real mosquitto, a rumqttc
//! subscriber records every message on `spBv1.0/#`, and the payloads are decoded by Eclipse Tahu's
//! own `sparkplug-payload` (npm, `tests/peers/sparkplug_decode.js` at the workspace root), never by
//! Weir's code. A primary host's STATE is published on the broker as a host application would.
//!
//! Needs `mosquitto` and node with `WEIR_SPARKPLUG_NODE_PATH` (scripts/lib.sh
//! `need_sparkplug_peers`); without them the test says so and fails.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weir_core::{
    CancellationToken, CommandRouter, DeviceSpec, Metrics, PointSpec, Quality, Reading, Registry,
    Timestamp, Value, ValueType,
};
use weir_mqtt::sparkplug::SparkplugConfig;
use weir_mqtt::{ConnectOptions, Encoder, FormatConfig, Forwarder, ForwarderConfig, OutboxWriter};
use weir_store::{Limits, Outbox};

const GROUP: &str = "plant";
const NODE: &str = "weir1";
const HOST: &str = "scada";
const DEVICE: &str = "gh1/climate";
const SP_DEVICE: &str = "gh1%2Fclimate";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Mosquitto(
    std::process::Child,
    u16,
    #[allow(dead_code)] tempfile::TempDir,
);

impl Mosquitto {
    fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("m.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto on the PATH");
        wait_until("mosquitto listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Mosquitto(child, port, dir)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every message on `spBv1.0/#`, in arrival order.
type Log = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

fn subscriber(port: u16) -> (rumqttc::Client, Log) {
    let mut o = rumqttc::MqttOptions::new("observer", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = rumqttc::Client::new(o, 1000);
    client
        .subscribe("spBv1.0/#", rumqttc::QoS::AtLeastOnce)
        .unwrap();
    let log: Log = Arc::default();
    let l2 = log.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for ev in conn.iter() {
            match ev {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    let _ = tx.send(());
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    l2.lock()
                        .unwrap()
                        .push((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (client, log)
}

fn state(client: &rumqttc::Client, online: bool) {
    let ms = Timestamp::now().as_nanos() / 1_000_000;
    client
        .publish(
            format!("spBv1.0/STATE/{HOST}"),
            rumqttc::QoS::AtLeastOnce,
            true,
            format!(r#"{{"online":{online},"timestamp":{ms}}}"#),
        )
        .unwrap();
}

fn reading(i: i64) -> Reading {
    Reading {
        device: DEVICE.into(),
        point: "temperature".into(),
        value: Value::F64(20.0 + i as f64 / 100.0),
        unit: Some(Arc::from("°C")),
        ts: Timestamp(1_700_000_000_000_000_000 + i * 1_000_000),
        quality: if i % 50 == 7 {
            Quality::Bad(Arc::from("timeout"))
        } else {
            Quality::Good
        },
        source: Arc::from("dev"),
    }
}

/// Tahu's decoding of every logged message: `{"topic":…,"payload":…}`.
fn decode(log: &[(String, Vec<u8>)]) -> Vec<serde_json::Value> {
    let node_path = std::env::var("WEIR_SPARKPLUG_NODE_PATH").expect(
        "WEIR_SPARKPLUG_NODE_PATH: run `. scripts/lib.sh; need_sparkplug_peers` (Tahu's \
         sparkplug-payload decodes the payloads)",
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/peers/sparkplug_decode.js"
    );
    let mut child = Command::new("node")
        .arg(script)
        .env("NODE_PATH", node_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node");
    let mut input = String::new();
    for (t, p) in log {
        let hex: String = p.iter().map(|b| format!("{b:02x}")).collect();
        input.push_str(&format!("{t} {hex}\n"));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let docs: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(docs.len(), log.len());
    for d in &docs {
        assert!(d.get("error").is_none(), "Tahu could not decode: {d}");
    }
    docs
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

fn kind(d: &serde_json::Value) -> &str {
    d["topic"].as_str().unwrap().split('/').nth(2).unwrap()
}

fn bdseq(d: &serde_json::Value) -> u64 {
    let m = d["payload"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "bdSeq")
        .expect("a bdSeq metric");
    num(&m["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sparkplug_sessions_as_tahu_decodes_them() {
    weir_mqtt::tls::install_crypto_provider();
    let broker = Mosquitto::start();
    let (obs, log) = subscriber(broker.1);
    let dir = tempfile::tempdir().unwrap();
    let outbox = Arc::new(Mutex::new(
        Outbox::open(
            &dir.path().join("outbox.db"),
            Limits {
                max_bytes: 1 << 30,
                max_age: Duration::from_secs(3600),
                synchronous_full: false,
                min_free_bytes: 0,
            },
        )
        .unwrap(),
    ));
    let metrics = Metrics::new();
    let registry = Registry::new(&metrics);
    registry
        .claim(
            "dev",
            DeviceSpec::new(DEVICE)
                .point(
                    PointSpec::new("temperature")
                        .unit(Some("°C"))
                        .value_type(ValueType::Float),
                )
                .point(
                    PointSpec::new("fan")
                        .value_type(ValueType::Bool)
                        .writable(true),
                ),
        )
        .unwrap();
    let router = CommandRouter::with_registry(registry.clone());
    let inbox = router.inbox("dev", 8);
    let commands: Arc<Mutex<Vec<(String, String, Value)>>> = Arc::default();
    let c2 = commands.clone();
    tokio::spawn(async move {
        while let Some(c) = inbox.recv().await {
            c2.lock()
                .unwrap()
                .push((c.device.to_string(), c.point.to_string(), c.value.clone()));
            let _ = c.reply.send(Ok(()));
        }
    });
    let wake = Arc::new(Notify::new());
    let enc = Encoder::new(
        "unused",
        "{prefix}/{device}/{point}",
        "{prefix}/{device}",
        weir_config::PublishMode::PerReading,
        1,
    );
    let writer = OutboxWriter::new(outbox.clone(), enc, wake.clone());
    let cfg = ForwarderConfig {
        connect: ConnectOptions {
            host: "127.0.0.1".into(),
            port: broker.1,
            client_id: "weir-sparkplug".into(),
            v5: false,
            keepalive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            credentials: None,
            tls: None,
            max_inflight: 64,
            will: ("unused".into(), Vec::new()),
            max_packet_bytes: 1 << 20,
        },
        prefix: "weir".into(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(300),
        commands: true,
        status_interval: Duration::from_secs(60),
        max_age: Duration::from_secs(3600),
        exit_when_empty: false,
        format: FormatConfig::SparkplugB(SparkplugConfig {
            group_id: GROUP.into(),
            edge_node_id: NODE.into(),
            primary_host_id: Some(HOST.into()),
            bdseq_path: dir.path().join("sparkplug").join("bdseq"),
        }),
    };
    let token = CancellationToken::new();
    let task =
        tokio::spawn(Forwarder::new(cfg, outbox.clone(), wake, router, metrics).run(token.clone()));
    let count = |k: &'static str| {
        let log = log.clone();
        move || {
            log.lock()
                .unwrap()
                .iter()
                .filter(|(t, _)| t.split('/').nth(2) == Some(k))
                .count()
        }
    };
    let rows = |o: &Arc<Mutex<Outbox>>| o.lock().unwrap().stats().unwrap().rows;

    // 1. The host is not online: nothing is born, readings wait in the outbox.
    writer
        .commit(&(0..5).map(reading).collect::<Vec<_>>())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        count("NBIRTH")(),
        0,
        "no birth before the primary host is online"
    );
    assert_eq!(rows(&outbox), 5);

    // 2. The host comes online: births, then the backlog marked historical.
    state(&obs, true);
    wait("the backlog", Duration::from_secs(10), || {
        count("DDATA")() == 5
    })
    .await;
    // 3. Live data: 300 more messages, enough for seq to wrap past 255.
    for chunk in (5..305).collect::<Vec<i64>>().chunks(10) {
        writer
            .commit(&chunk.iter().copied().map(reading).collect::<Vec<_>>())
            .unwrap();
    }
    wait("live data", Duration::from_secs(20), || {
        count("DDATA")() == 305
    })
    .await;
    // 4. The host asks for a rebirth.
    let rebirth = {
        use prost::Message as _;
        weir_mqtt::sparkplug::proto::Payload {
            timestamp: Some(1),
            seq: None,
            metrics: vec![weir_mqtt::sparkplug::proto::Metric {
                name: Some("Node Control/Rebirth".into()),
                datatype: Some(11),
                value: Some(weir_mqtt::sparkplug::proto::MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
        }
        .encode_to_vec()
    };
    obs.publish(
        format!("spBv1.0/{GROUP}/NCMD/{NODE}"),
        rumqttc::QoS::AtLeastOnce,
        false,
        rebirth,
    )
    .unwrap();
    wait("a rebirth", Duration::from_secs(10), || {
        count("NBIRTH")() == 2
    })
    .await;
    // 5. A DCMD write by name reaches the device's adapter through the router.
    let write = {
        use prost::Message as _;
        weir_mqtt::sparkplug::proto::Payload {
            timestamp: Some(1),
            seq: None,
            metrics: vec![weir_mqtt::sparkplug::proto::Metric {
                name: Some("fan".into()),
                datatype: Some(11),
                value: Some(weir_mqtt::sparkplug::proto::MetricValue::BooleanValue(true)),
                ..Default::default()
            }],
        }
        .encode_to_vec()
    };
    obs.publish(
        format!("spBv1.0/{GROUP}/DCMD/{NODE}/{SP_DEVICE}"),
        rumqttc::QoS::AtLeastOnce,
        false,
        write,
    )
    .unwrap();
    wait("the DCMD at the adapter", Duration::from_secs(10), || {
        !commands.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        commands.lock().unwrap()[0],
        (DEVICE.to_string(), "fan".to_string(), Value::Bool(true))
    );
    // 6. The host goes offline: the node dies (NDEATH), readings wait; back online: a new
    //    session (bdSeq + 1) and the backlog historical.
    state(&obs, false);
    wait("NDEATH", Duration::from_secs(10), || count("NDEATH")() == 1).await;
    writer
        .commit(&(305..308).map(reading).collect::<Vec<_>>())
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count("DDATA")(), 305);
    state(&obs, true);
    wait("the second backlog", Duration::from_secs(10), || {
        count("DDATA")() == 308
    })
    .await;
    wait("an empty outbox", Duration::from_secs(10), || {
        rows(&outbox) == 0
    })
    .await;
    // 7. Availability and run-time joins: DDEATH when the device goes offline, DBIRTH when it
    //    returns, DBIRTH for a device that appears.
    registry.set_availability("dev", DEVICE, weir_core::Availability::Offline);
    wait("DDEATH", Duration::from_secs(10), || count("DDEATH")() == 1).await;
    let births = count("DBIRTH")();
    registry.set_availability("dev", DEVICE, weir_core::Availability::Online);
    wait("DBIRTH again", Duration::from_secs(10), || {
        count("DBIRTH")() == births + 1
    })
    .await;
    registry
        .claim(
            "dev",
            DeviceSpec::new("gh2/vent").point(PointSpec::new("open")),
        )
        .unwrap();
    wait("a joining device born", Duration::from_secs(10), || {
        log.lock()
            .unwrap()
            .iter()
            .any(|(t, _)| t.ends_with("/DBIRTH/weir1/gh2%2Fvent"))
    })
    .await;
    token.cancel();
    let _ = task.await;
    wait("the goodbye NDEATH", Duration::from_secs(10), || {
        count("NDEATH")() == 2
    })
    .await;

    // What the node published (not the host's STATE, NCMD and DCMD).
    let log: Vec<(String, Vec<u8>)> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| !t.starts_with("spBv1.0/STATE/"))
        .filter(|(t, _)| !matches!(t.split('/').nth(2), Some("NCMD" | "DCMD")))
        .cloned()
        .collect();
    let docs = decode(&log);
    let docs: Vec<&serde_json::Value> = docs.iter().collect();

    // Births before data; seq continuous from NBIRTH (0) with wrap at 255 in each session.
    let mut expected_seq: Option<u64> = None;
    let mut born = false;
    let mut session_bdseq = None;
    let mut sessions = Vec::new();
    for d in &docs {
        match kind(d) {
            "NBIRTH" => {
                assert_eq!(num(&d["payload"]["seq"]), 0, "{d}");
                born = true;
                expected_seq = Some(1);
                let b = bdseq(d);
                if session_bdseq != Some(b) {
                    sessions.push(b);
                }
                session_bdseq = Some(b);
            }
            "NDEATH" => {
                assert_eq!(Some(bdseq(d)), session_bdseq, "NDEATH bdSeq = the NBIRTH's");
                born = false;
            }
            k => {
                assert!(born, "{k} before NBIRTH: {d}");
                let seq = num(&d["payload"]["seq"]);
                assert_eq!(Some(seq), expected_seq, "seq continuity: {d}");
                expected_seq = Some((seq + 1) % 256);
            }
        }
    }
    assert_eq!(sessions.len(), 2, "two sessions: {sessions:?}");
    assert_eq!(
        (sessions[0] + 1) % 256,
        sessions[1],
        "bdSeq incremented per connect"
    );
    let seqs_wrapped = docs
        .iter()
        .filter(|d| kind(d) == "DDATA")
        .any(|d| num(&d["payload"]["seq"]) == 255);
    assert!(seqs_wrapped, "the session's seq went through 255");

    // DBIRTH: every point, with alias, datatype and unit; DDATA by alias.
    let dbirth = docs.iter().find(|d| kind(d) == "DBIRTH").unwrap();
    assert!(dbirth["topic"].as_str().unwrap().ends_with(SP_DEVICE));
    let metrics = dbirth["payload"]["metrics"].as_array().unwrap();
    let temp = metrics.iter().find(|m| m["name"] == "temperature").unwrap();
    assert_eq!(temp["type"], "Double", "{temp}");
    assert_eq!(temp["properties"]["engUnit"]["value"], "°C", "{temp}");
    let alias = num(&temp["alias"]);
    assert!(metrics
        .iter()
        .any(|m| m["name"] == "fan" && m["type"] == "Boolean"));

    // is_historical exactly on the backlog: the first 5 and the last 3 readings.
    let ddata: Vec<&&serde_json::Value> = docs.iter().filter(|d| kind(d) == "DDATA").collect();
    for (i, d) in ddata.iter().enumerate() {
        let m = &d["payload"]["metrics"][0];
        assert_eq!(num(&m["alias"]), alias, "{d}");
        let historical = m["isHistorical"].as_bool().unwrap_or(false);
        assert_eq!(historical, !(5..305).contains(&i), "row {i}: {d}");
        let want = 20.0 + i as f64 / 100.0;
        assert!((m["value"].as_f64().unwrap() - want).abs() < 1e-9, "{d}");
        let q = num(&m["properties"]["Quality"]["value"]);
        if i % 50 == 7 {
            assert_eq!(q, 0);
            assert_eq!(m["properties"]["Quality Reason"]["value"], "timeout");
        } else {
            assert_eq!(q, 192);
        }
        assert_eq!(
            num(&m["timestamp"]),
            1_700_000_000_000 + i as u64,
            "the reading's own time"
        );
    }
}
