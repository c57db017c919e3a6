//! Throughput, latency, replay and memory of the whole pipeline against a real mosquitto.
//!
//! `cargo bench --bench pipeline` (mosquitto must be on the PATH). Prints figures; asserts nothing
//! about speed. Every gateway figure is given next to a baseline measured in the same run:
//! a bare rumqttc QoS 1 publish loop to the same broker, one message per reading.
//!
//! Phases:
//! 1. baseline: rumqttc AsyncClient, QoS 1, N messages of a telemetry-sized payload, until the
//!    last PUBACK;
//! 2. gateway, one message per reading: simulator → bus → pipeline stages → durable outbox
//!    (synchronous=FULL) → forwarder → mosquitto, until the last PUBACK;
//! 3. the same with per-device batching;
//! 4. latency at 1,000 readings/s: reading timestamp → arrival at a subscriber on the same broker
//!    (an upper bound for reading → PUBLISH on the wire);
//! 5. outbox replay: 1,000,000 rows committed while no broker is reachable, then delivered;
//! 6. resident memory of the `weir` binary on a greenhouse config at 10,000 readings/s.
//!
//! Phases 2, 3 and 5 run once per northbound format (`json`, then `sparkplug_b`: rows are
//! typed and encoded by the format when published), each with the MQTT PUBLISH bytes per reading
//! the forwarder counted (`weir_mqtt_published_bytes_total`). `WEIR_BENCH_FORMATS=json` runs one.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weir_config::PublishMode;
use weir_core::{
    bus, CancellationToken, CommandRouter, Metrics, Passthrough, SourceBuilder, SourceContext,
    Transform,
};
use weir_mqtt::{ConnectOptions, Encoder, Forwarder, ForwarderConfig, OutboxWriter};
use weir_store::{Limits, Outbox};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The broker process, its port, and the directory holding its config (kept until drop).
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
            std::thread::sleep(Duration::from_millis(50));
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

const PAYLOAD: &[u8] = br#"{"value":21.87,"unit":"\xc2\xb0C","ts":"2026-11-22T03:40:12.512034871Z","quality":"good","seq":14}"#;

async fn baseline(port: u16, n: u64) -> f64 {
    let mut o = rumqttc::MqttOptions::new("bench-raw", "127.0.0.1", port);
    o.set_inflight(256);
    let (client, mut el) = rumqttc::AsyncClient::new(o, 1024);
    // Same TCP settings as the gateway's connection, so the comparison is like for like.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    let start = Instant::now();
    let pub_task = tokio::spawn(async move {
        for i in 0..n {
            client
                .publish(
                    format!("bench/gh{}/climate/temperature", i % 4),
                    rumqttc::QoS::AtLeastOnce,
                    false,
                    PAYLOAD,
                )
                .await
                .unwrap();
        }
        client
    });
    let mut acks = 0;
    while acks < n {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = el.poll().await.unwrap() {
            acks += 1;
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(pub_task.await);
    rate
}

fn connect(port: u16, id: &str) -> ConnectOptions {
    ConnectOptions {
        host: "127.0.0.1".into(),
        port,
        client_id: id.into(),
        v5: false,
        keepalive: Duration::from_secs(30),
        connect_timeout: Duration::from_secs(5),
        credentials: None,
        tls: None,
        max_inflight: 256,
        will: (format!("{id}/status"), b"offline".to_vec()),
        max_packet_bytes: 1 << 20,
    }
}

/// The northbound format of a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Json,
    Sparkplug,
}

impl Fmt {
    fn name(self) -> &'static str {
        match self {
            Fmt::Json => "json",
            Fmt::Sparkplug => "sparkplug_b",
        }
    }

    fn config(self, id: &str, dir: &std::path::Path) -> weir_mqtt::FormatConfig {
        match self {
            Fmt::Json => weir_mqtt::FormatConfig::json(id),
            Fmt::Sparkplug => {
                weir_mqtt::FormatConfig::SparkplugB(weir_mqtt::sparkplug::SparkplugConfig {
                    group_id: id.into(),
                    edge_node_id: "bench".into(),
                    primary_host_id: None,
                    bdseq_path: dir.join("bdseq"),
                })
            }
        }
    }
}

fn fcfg(
    port: u16,
    id: &str,
    exit_when_empty: bool,
    format: weir_mqtt::FormatConfig,
) -> ForwarderConfig {
    ForwarderConfig {
        connect: connect(port, id),
        prefix: id.into(),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        commands: false,
        status_interval: Duration::from_secs(60),
        max_age: Duration::from_secs(86400),
        exit_when_empty,
        format,
    }
}

fn open(dir: &std::path::Path) -> Arc<Mutex<Outbox>> {
    let limits = Limits {
        max_bytes: 4 << 30,
        max_age: Duration::from_secs(86400),
        synchronous_full: true,
        min_free_bytes: 0,
    };
    Arc::new(Mutex::new(
        Outbox::open(&dir.join("outbox.db"), limits).unwrap(),
    ))
}

/// A running gateway pipeline: simulator → bus → stages → outbox → forwarder → mosquitto.
struct Running {
    _dir: tempfile::TempDir,
    outbox: Arc<Mutex<Outbox>>,
    metrics: Metrics,
    token: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// `sim` is the simulator's YAML (flow style); `id` is the topic prefix.
    fn start(
        port: u16,
        id: &str,
        mode: PublishMode,
        fmt: Fmt,
        stages: Vec<Box<dyn Transform>>,
        sim: &str,
    ) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(dir.path());
        let metrics = Metrics::new();
        let wake = Arc::new(Notify::new());
        let (tx, rx) = bus(1024, &metrics);
        let encoder = Encoder::new(
            id,
            "{prefix}/{device}/{point}",
            "{prefix}/{device}",
            mode,
            1,
        );
        let writer = OutboxWriter::new(outbox.clone(), encoder, wake.clone());
        let token = CancellationToken::new();
        let fwd = Forwarder::new(
            fcfg(port, id, false, fmt.config(id, dir.path())),
            outbox.clone(),
            wake,
            CommandRouter::new(),
            metrics.clone(),
        );
        let sim: weir_sim::SimConfig = serde_yaml::from_str(sim).unwrap();
        let router = CommandRouter::new();
        let inbox = router.register("sim", &sim.devices(), 4);
        let mut src = sim.build("sim", &metrics).unwrap();
        let ctx = SourceContext::new(tx.for_source("sim"), token.clone(), inbox);
        drop(tx);
        let tasks = vec![
            tokio::spawn(weir::pipeline(rx, stages, writer, 5000, metrics.clone())),
            tokio::spawn(fwd.run(token.clone())),
            tokio::spawn(async move {
                let _ = src.run(ctx).await;
            }),
        ];
        Running {
            _dir: dir,
            outbox,
            metrics,
            token,
            tasks,
        }
    }

    async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Simulator → … → mosquitto for `n` readings; readings/s until the last PUBACK.
async fn gateway(port: u16, n: u64, mode: PublishMode, fmt: Fmt) -> (f64, u64, f64) {
    let id = format!("bench-{}", free_port());
    let stages: Vec<Box<dyn Transform>> = vec![
        Box::new(Passthrough("rules")),
        Box::new(Passthrough("inference")),
    ];
    let start = Instant::now();
    let run = Running::start(
        port,
        &id,
        mode,
        fmt,
        stages,
        &format!("{{greenhouses: 10, beds: 6, readings_per_s: 10000000, total_readings: {n}, max_batch: 1000, seed: 1}}"),
    );
    let acked = run.metrics.counter("weir_mqtt_acked_total", &[]);
    let bytes = run.metrics.counter("weir_mqtt_published_bytes_total", &[]);
    let committed = run.metrics.counter("weir_readings_committed_total", &[]);
    // Wait until every reading is committed and every resulting message acknowledged.
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if committed.get() >= n
            && weir_mqtt::forwarder::lock(&run.outbox)
                .stats()
                .unwrap()
                .rows
                == 0
        {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let messages = acked.get();
    let per_reading = bytes.get() as f64 / n as f64;
    run.stop().await;
    (n as f64 / secs, messages, per_reading)
}

async fn latency(port: u16) -> (f64, f64, f64) {
    let id = format!("lat-{}", free_port());
    let mut o = rumqttc::MqttOptions::new(format!("{id}-sub"), "127.0.0.1", port);
    o.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut el) = rumqttc::AsyncClient::new(o, 1024);
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    el.set_network_options(net);
    sub.subscribe(format!("{id}/#"), rumqttc::QoS::AtMostOnce)
        .await
        .unwrap();
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) = el.poll().await.unwrap() {
            break;
        }
    }
    let n = 5000u64;
    let run = Running::start(
        port,
        &id,
        PublishMode::PerReading,
        Fmt::Json,
        vec![],
        &format!("{{readings_per_s: 1000, tick_ms: 1, total_readings: {n}, seed: 1}}"),
    );
    let mut lat = Vec::new();
    while (lat.len() as u64) < n {
        if let Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)))) =
            tokio::time::timeout(Duration::from_secs(10), el.poll()).await
        {
            let now = std::time::SystemTime::now();
            let v: serde_json::Value = match serde_json::from_slice(&p.payload) {
                Ok(v) => v,
                Err(_) => continue,
            };
            if let Some(ts) = v["ts"].as_str() {
                let t = humantime::parse_rfc3339(ts).unwrap();
                lat.push(now.duration_since(t).unwrap_or_default().as_secs_f64() * 1e3);
            }
        }
    }
    run.stop().await;
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    (q(0.5), q(0.99), q(1.0))
}

/// `rows` typed rows (one reading each, committed through the same encoder as the pipeline's)
/// while no forwarder runs, then delivered by one; (commit rows/s, delivery readings/s, PUBLISH
/// bytes per reading).
async fn replay(port: u16, rows: u64, fmt: Fmt, typed: bool) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = open(dir.path());
    let id = format!("replay-{}", free_port());
    let enc = Encoder::new(
        &id,
        "{prefix}/{device}/{point}",
        "{prefix}/{device}",
        PublishMode::PerReading,
        1,
    );
    let devices: Vec<weir_core::DeviceId> = (0..8)
        .map(|i| format!("gh{i}/climate").as_str().into())
        .collect();
    let point: weir_core::PointId = "temperature".into();
    let unit: Option<Arc<str>> = Some(Arc::from("°C"));
    let source: Arc<str> = Arc::from("sim");
    let start = Instant::now();
    let mut i = 0u64;
    for _ in 0..rows / 1000 {
        let batch: Vec<weir_core::Reading> = (0..1000)
            .map(|_| {
                i += 1;
                weir_core::Reading {
                    device: devices[(i % 8) as usize].clone(),
                    point: point.clone(),
                    value: weir_core::Value::F64(21.87),
                    unit: unit.clone(),
                    ts: weir_core::Timestamp(1_795_000_000_000_000_000 + i as i64),
                    quality: weir_core::Quality::Good,
                    source: source.clone(),
                }
            })
            .collect();
        if typed {
            weir_mqtt::forwarder::lock(&outbox)
                .append_rows(|seqs| enc.rows(&batch, &[], seqs))
                .unwrap();
        } else {
            // As builds before typed rows stored them: the JSON message, encoded at commit.
            weir_mqtt::forwarder::lock(&outbox)
                .append(|seqs| {
                    batch
                        .iter()
                        .map(|r| {
                            let s = seqs.next(r.device.as_str());
                            weir_store::NewMessage {
                                topic: format!("{id}/{}/{}", r.device, r.point),
                                payload: format!(r#"{{"value":21.87,"unit":"°C","ts":"2026-11-22T03:40:12.512034871Z","quality":"good","seq":{s}}}"#).into_bytes(),
                                qos: 1,
                                retain: false,
                            }
                        })
                        .collect()
                })
                .unwrap();
        }
    }
    let fill = rows as f64 / start.elapsed().as_secs_f64();
    let metrics = Metrics::new();
    let fwd = Forwarder::new(
        fcfg(port, &id, true, fmt.config(&id, dir.path())),
        outbox.clone(),
        Arc::new(Notify::new()),
        CommandRouter::new(),
        metrics.clone(),
    );
    let start = Instant::now();
    fwd.run(CancellationToken::new()).await;
    let rate = rows as f64 / start.elapsed().as_secs_f64();
    let bytes = metrics
        .counter("weir_mqtt_published_bytes_total", &[])
        .get() as f64
        / rows as f64;
    assert_eq!(
        weir_mqtt::forwarder::lock(&outbox).stats().unwrap().rows,
        0,
        "replay delivered everything"
    );
    (fill, rate, bytes)
}

fn rss_of_weir(port: u16) -> Option<(u64, u64)> {
    let bin = env!("CARGO_BIN_EXE_weir");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        format!(
            "gateway:\n  id: rss\n  state_dir: {}\nmqtt:\n  port: {port}\nsources:\n  - sim:\n      greenhouses: 4\n      readings_per_s: 10000\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(bin)
        .args(["run", "-c"])
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_secs(10));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).ok()?;
    let kb = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let r = (kb("VmRSS:")?, kb("VmHWM:")?);
    let _ = child.kill();
    let _ = child.wait();
    Some(r)
}

fn main() {
    weir_mqtt::tls::install_crypto_provider();
    let n: u64 = std::env::var("WEIR_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let replay_rows: u64 = std::env::var("WEIR_BENCH_REPLAY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = Broker::start();
    let port = broker.1;
    rt.block_on(async {
        let _ = baseline(port, 20_000).await; // warm-up
        let raw = baseline(port, n).await;
        println!("baseline: bare rumqttc QoS 1 publish loop      {raw:>10.0} msg/s");
        let formats: Vec<Fmt> = match std::env::var("WEIR_BENCH_FORMATS").as_deref() {
            Ok("json") => vec![Fmt::Json],
            Ok("sparkplug_b") => vec![Fmt::Sparkplug],
            _ => vec![Fmt::Json, Fmt::Sparkplug],
        };
        for &fmt in &formats {
            let f = fmt.name();
            // The machine may be shared: a baseline right before each phase, too.
            let near = baseline(port, n).await;
            let (per_reading, msgs, b) = gateway(port, n, PublishMode::PerReading, fmt).await;
            println!(
                "[{f}] gateway, one message per reading (QoS 1, durable) {per_reading:>10.0} readings/s  ({msgs} messages, {b:.1} B/reading on the wire)  ratio to baseline {:.2} (to the one just before: {near:.0} msg/s, {:.2})",
                per_reading / raw,
                per_reading / near
            );
            let (batched, msgs, b) = gateway(port, n * 3, PublishMode::PerDevice, fmt).await;
            println!(
                "[{f}] gateway, per-device batches                      {batched:>10.0} readings/s  ({msgs} messages, {b:.1} B/reading on the wire)  ratio to baseline {:.2}",
                batched / raw
            );
        }
        let (p50, p99, max) = latency(port).await;
        println!("[json] latency at 1,000 readings/s, reading -> subscriber: p50 {p50:.2} ms  p99 {p99:.2} ms  max {max:.2} ms");
        let near = baseline(port, n).await;
        let (fill, rate, b) = replay(port, replay_rows, Fmt::Json, false).await;
        println!(
            "[stored JSON, as before typed rows] outbox replay of {replay_rows} rows: committed at {fill:.0} rows/s, delivered at {rate:.0} readings/s ({b:.1} B/reading)  ratio to baseline {:.2} (to the one just before: {near:.0} msg/s, {:.2})",
            rate / raw,
            rate / near
        );
        for &fmt in &formats {
            let f = fmt.name();
            let near = baseline(port, n).await;
            let (fill, rate, b) = replay(port, replay_rows, fmt, true).await;
            println!(
                "[{f}] outbox replay of {replay_rows} typed rows: committed at {fill:.0} rows/s (1,000 per transaction, FULL), delivered at {rate:.0} readings/s ({b:.1} B/reading)  ratio to baseline {:.2} (to the one just before: {near:.0} msg/s, {:.2})",
                rate / raw,
                rate / near
            );
        }
    });
    match rss_of_weir(port) {
        Some((rss, hwm)) => println!(
            "weir binary, 4 greenhouses at 10,000 readings/s: RSS {:.1} MB, peak {:.1} MB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        ),
        None => println!("weir binary RSS: could not be measured"),
    }
}
