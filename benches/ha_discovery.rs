//! Home Assistant discovery for many devices: how long until HA could know them all.
//!
//! `cargo bench --bench ha_discovery` (mosquitto on the PATH; `WEIR_BENCH_HA_DEVICES`, default
//! 500, 4 points each: temperature, humidity, a writable switch, rssi). Prints figures; asserts
//! only that every message arrived.
//!
//! * **gateway**: the forwarder with the JSON format and `mqtt.home_assistant` connects to a fresh
//!   mosquitto with that registry; timed from the forwarder's start until a subscriber on the
//!   discovery prefix has every config message (one per point and the gateway's own), and until
//!   it has every device's availability too;
//! * **baseline** (same run, same broker, same subscriber): a bare rumqttc client publishing the
//!   very same messages (topics, payloads, QoS 1, retained) as fast as it can.
//!
//! Also prints the config bytes per entity and the CPU time of building the messages once.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weir_core::{
    CancellationToken, CommandRouter, DeviceSpec, Metrics, PointSpec, Registry, ValueType,
};
use weir_mqtt::format::TopicTemplate;
use weir_mqtt::home_assistant::{HaConfig, HomeAssistant};
use weir_mqtt::{ConnectOptions, Encoder, Forwarder, ForwarderConfig};
use weir_store::{Limits, Outbox};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Broker(Child, u16, #[allow(dead_code)] tempfile::TempDir);

impl Broker {
    fn start() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("m.conf");
        std::fs::write(
            &conf,
            format!("user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\nset_tcp_nodelay true\n"),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Broker(child, port, dir)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PREFIX: &str = "bench";

fn registry(devices: usize) -> Registry {
    let r = Registry::new(&Metrics::new());
    for i in 0..devices {
        let spec = DeviceSpec::new(format!("room{i}/sensor"))
            .point(
                PointSpec::new("temperature")
                    .unit(Some("°C"))
                    .value_type(ValueType::Float)
                    .class(Some("temperature")),
            )
            .point(
                PointSpec::new("humidity")
                    .unit(Some("%"))
                    .value_type(ValueType::Float)
                    .class(Some("humidity")),
            )
            .point(
                PointSpec::new("relay")
                    .value_type(ValueType::Bool)
                    .writable(true)
                    .class(Some("switch")),
            )
            .point(
                PointSpec::new("rssi")
                    .unit(Some("dBm"))
                    .value_type(ValueType::Int)
                    .class(Some("signal_strength")),
            );
        r.claim("sim", spec).unwrap();
    }
    r
}

fn ha_config() -> HaConfig {
    HaConfig {
        discovery_prefix: "homeassistant".into(),
        gateway_id: "bench".into(),
    }
}

/// A subscriber on the discovery prefix and the availability topics, counting messages.
async fn subscriber(port: u16) -> (Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let mut o = rumqttc::MqttOptions::new(format!("bench-sub-{port}"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
    client
        .subscribe("homeassistant/#", rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    client
        .subscribe(format!("{PREFIX}/availability/#"), rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    let configs = Arc::new(AtomicUsize::new(0));
    let avail = Arc::new(AtomicUsize::new(0));
    let (c2, a2) = (configs.clone(), avail.clone());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut ready = Some(ready_tx);
        let mut subacks = 0;
        while let Ok(ev) = el.poll().await {
            match ev {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    subacks += 1;
                    if subacks == 2 {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    if p.topic.ends_with("/config") {
                        c2.fetch_add(1, Ordering::Relaxed);
                    } else {
                        a2.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ => {}
            }
        }
    });
    ready_rx.await.unwrap();
    (configs, avail)
}

async fn wait_for(count: &AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n}",
            count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The bare rumqttc client publishing `msgs`; seconds until the subscriber has them all.
async fn baseline(msgs: &[weir_mqtt::northbound::Message]) -> f64 {
    let broker = Broker::start();
    let (configs, avail) = subscriber(broker.1).await;
    let mut o = rumqttc::MqttOptions::new("bench-raw", "127.0.0.1", broker.1);
    o.set_inflight(256).set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1024);
    let n_cfg = msgs.iter().filter(|m| m.topic.ends_with("/config")).count();
    let n_av = msgs.len() - n_cfg;
    let start = Instant::now();
    let owned: Vec<_> = msgs.to_vec();
    let pub_task = tokio::spawn(async move {
        for m in owned {
            client
                .publish(m.topic, rumqttc::QoS::AtLeastOnce, true, m.payload)
                .await
                .unwrap();
        }
        client
    });
    let el_task = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    wait_for(&configs, n_cfg, "baseline configs").await;
    wait_for(&avail, n_av, "baseline availability").await;
    let secs = start.elapsed().as_secs_f64();
    drop(pub_task.await);
    el_task.abort();
    secs
}

/// The forwarder with HA discovery; seconds until every config, and every availability.
async fn gateway(devices: usize, n_cfg: usize) -> (f64, f64) {
    let broker = Broker::start();
    let (configs, avail) = subscriber(broker.1).await;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(86400),
        synchronous_full: true,
        min_free_bytes: 0,
    };
    let outbox = Arc::new(Mutex::new(
        Outbox::open(&dir.path().join("outbox.db"), limits).unwrap(),
    ));
    let enc = Encoder::new(
        PREFIX,
        "{prefix}/{device}/{point}",
        "{prefix}/{device}",
        weir_config::PublishMode::PerReading,
        1,
    )
    .with_home_assistant(Some(ha_config()));
    let cfg = ForwarderConfig {
        connect: ConnectOptions {
            host: "127.0.0.1".into(),
            port: broker.1,
            client_id: "bench-gw".into(),
            v5: false,
            keepalive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            credentials: None,
            tls: None,
            max_inflight: 256,
            will: (format!("{PREFIX}/status"), b"offline".to_vec()),
            max_packet_bytes: 1 << 20,
        },
        prefix: PREFIX.into(),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        commands: true,
        status_interval: Duration::from_secs(60),
        max_age: Duration::from_secs(86400),
        exit_when_empty: false,
        format: weir_mqtt::FormatConfig::Json(enc),
    };
    let router = CommandRouter::with_registry(registry(devices));
    let fwd = Forwarder::new(cfg, outbox, Arc::new(Notify::new()), router, Metrics::new());
    let token = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(fwd.run(token.clone()));
    wait_for(&configs, n_cfg, "gateway configs").await;
    let cfg_secs = start.elapsed().as_secs_f64();
    wait_for(&avail, devices, "gateway availability").await;
    let all_secs = start.elapsed().as_secs_f64();
    token.cancel();
    let _ = task.await;
    (cfg_secs, all_secs)
}

fn main() {
    let devices: usize = std::env::var("WEIR_BENCH_HA_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let reg = registry(devices);
    let t = Instant::now();
    let mut ha = HomeAssistant::new(
        ha_config(),
        PREFIX,
        TopicTemplate::new("{prefix}/{device}/{point}", PREFIX),
    );
    let msgs = ha.announce_all(&reg);
    let build = t.elapsed();
    let n_cfg = msgs.iter().filter(|m| m.topic.ends_with("/config")).count();
    let cfg_bytes: usize = msgs
        .iter()
        .filter(|m| m.topic.ends_with("/config"))
        .map(|m| m.payload.len())
        .sum();
    println!(
        "home assistant discovery, {devices} devices × 4 points: {} messages ({n_cfg} configs, {} availability), {:.0} bytes per config, built in {:.1} ms",
        msgs.len(),
        msgs.len() - n_cfg,
        cfg_bytes as f64 / n_cfg as f64,
        build.as_secs_f64() * 1e3
    );
    // One device going offline: what a registry change costs the forwarder's task.
    reg.set_availability("sim", "room7/sensor", weir_core::Availability::Offline);
    let t = Instant::now();
    let flip = ha.changes(&reg);
    println!(
        "one device offline: {} message(s), diffed in {:.2} ms",
        flip.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let (base, (gw_cfg, gw_all)) = rt.block_on(async {
        let base = baseline(&msgs).await;
        let gw = gateway(devices, n_cfg).await;
        (base, gw)
    });
    println!(
        "baseline (bare rumqttc, same messages): {:.0} ms",
        base * 1e3
    );
    println!(
        "gateway: every config at a subscriber after {:.0} ms, with availability {:.0} ms ({:.2}× the baseline; includes connect and 500 command subscriptions)",
        gw_cfg * 1e3,
        gw_all * 1e3,
        gw_all / base
    );
}
