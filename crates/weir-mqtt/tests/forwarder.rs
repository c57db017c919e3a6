//! The forwarder against a scripted MQTT 3.1.1 broker on a real loopback socket: behaviours
//! mosquitto cannot be told to show on demand — closing the connection on one topic's publish
//! without an ack, never acknowledging a topic, closing every connection right after CONNACK.
//! (The same path against the real mosquitto and its ACLs is in the workspace's tests/mqtt5.rs.)

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use weir_core::{CancellationToken, CommandRouter, Metrics};
use weir_mqtt::forwarder::{lock, QUARANTINE_AFTER};
use weir_mqtt::{ConnectOptions, Forwarder, ForwarderConfig};
use weir_store::{Limits, NewMessage, Outbox};

/// What the scripted broker does.
#[derive(Debug, Clone, Default)]
struct Script {
    /// A QoS 1 publish to this topic closes the connection, unacknowledged.
    kill_on: Option<String>,
    /// A QoS 1 publish to this topic is never acknowledged.
    hold: Option<String>,
    /// Close every connection right after CONNACK.
    close_after_connack: bool,
}

#[derive(Debug, Default)]
struct Seen {
    connections: usize,
    /// (topic, payload) of every publish received, status topics included.
    publishes: Vec<(String, Vec<u8>)>,
}

struct Broker {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl Broker {
    fn start(script: Script) -> Broker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                s2.lock().unwrap().connections += 1;
                let (script, seen) = (script.clone(), s2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &script, &seen);
                });
            }
        });
        Broker { port, seen }
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    fn payloads_on(&self, prefix: &str) -> Vec<Vec<u8>> {
        self.seen
            .lock()
            .unwrap()
            .publishes
            .iter()
            .filter(|(t, _)| t.starts_with(prefix))
            .map(|(_, p)| p.clone())
            .collect()
    }
}

fn read_packet(c: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    c.read_exact(&mut b)?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut d = [0u8; 1];
        c.read_exact(&mut d)?;
        len |= ((d[0] & 0x7f) as usize) << shift;
        shift += 7;
        if d[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok((b[0], body))
}

fn serve(mut c: TcpStream, script: &Script, seen: &Mutex<Seen>) -> std::io::Result<()> {
    loop {
        let (header, body) = read_packet(&mut c)?;
        match header >> 4 {
            1 => {
                c.write_all(&[0x20, 0x02, 0x00, 0x00])?;
                if script.close_after_connack {
                    return Ok(());
                }
            }
            3 => {
                let qos = (header >> 1) & 3;
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                let topic = String::from_utf8_lossy(&body[2..2 + tl]).into_owned();
                let mut at = 2 + tl;
                let pkid = if qos > 0 {
                    at += 2;
                    Some([body[at - 2], body[at - 1]])
                } else {
                    None
                };
                if script.kill_on.as_deref() == Some(topic.as_str()) {
                    return Ok(());
                }
                let hold = script.hold.as_deref() == Some(topic.as_str());
                seen.lock()
                    .unwrap()
                    .publishes
                    .push((topic, body[at..].to_vec()));
                if let (Some(p), false) = (pkid, hold) {
                    c.write_all(&[0x40, 0x02, p[0], p[1]])?;
                }
            }
            8 => c.write_all(&[0x90, 0x03, body[0], body[1], 0x01])?,
            12 => c.write_all(&[0xd0, 0x00])?,
            14 => return Ok(()),
            _ => {}
        }
    }
}

fn config(port: u16, max_inflight: u16, max_age: Duration) -> ForwarderConfig {
    ForwarderConfig {
        connect: ConnectOptions {
            host: "127.0.0.1".into(),
            port,
            client_id: "weir-test".into(),
            v5: false,
            keepalive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            credentials: None,
            tls: None,
            max_inflight,
            will: ("t/status".into(), b"offline".to_vec()),
            max_packet_bytes: 1 << 20,
        },
        prefix: "t".into(),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(400),
        commands: false,
        status_interval: Duration::from_secs(1),
        max_age,
        exit_when_empty: false,
        format: weir_mqtt::FormatConfig::json("t"),
    }
}

fn outbox(dir: &tempfile::TempDir, max_age: Duration) -> Arc<Mutex<Outbox>> {
    let limits = Limits {
        max_bytes: 1 << 30,
        max_age,
        synchronous_full: false,
        min_free_bytes: 0,
    };
    Arc::new(Mutex::new(
        Outbox::open(&dir.path().join("outbox.db"), limits).unwrap(),
    ))
}

fn append(outbox: &Mutex<Outbox>, topics: &[&str]) {
    lock(outbox)
        .append(|_| {
            topics
                .iter()
                .map(|t| NewMessage {
                    topic: (*t).to_string(),
                    payload: t.as_bytes().to_vec(),
                    qos: 1,
                    retain: false,
                })
                .collect()
        })
        .unwrap();
}

/// Runs a forwarder until dropped.
struct Running {
    token: CancellationToken,
    metrics: Metrics,
    /// What the outbox writer notifies after a commit.
    wake: Arc<Notify>,
}

impl Running {
    fn start(cfg: ForwarderConfig, outbox: Arc<Mutex<Outbox>>) -> Running {
        let token = CancellationToken::new();
        let metrics = Metrics::new();
        let wake = Arc::new(Notify::new());
        let f = Forwarder::new(
            cfg,
            outbox,
            wake.clone(),
            CommandRouter::new(),
            metrics.clone(),
        );
        tokio::spawn(f.run(token.clone()));
        Running {
            token,
            metrics,
            wake,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_publish_ends_the_connection_is_set_aside_and_the_rest_delivered() {
    let broker = Broker::start(Script {
        kill_on: Some("t/bad".into()),
        ..Script::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let max_age = Duration::from_secs(3600);
    let ob = outbox(&dir, max_age);
    let good: Vec<String> = (1..=10).map(|i| format!("t/good/{i}")).collect();
    let mut topics: Vec<&str> = good[..5].iter().map(String::as_str).collect();
    topics.push("t/bad");
    topics.extend(good[5..].iter().map(String::as_str));
    append(&ob, &topics);
    let run = Running::start(config(broker.port, 20, max_age), ob.clone());

    wait_until("the outbox to empty", Duration::from_secs(20), || {
        let s = lock(&ob).stats().unwrap();
        s.rows == 0 && s.dead_letter_rows == 1
    })
    .await;
    let delivered: HashSet<Vec<u8>> = broker.payloads_on("t/good/").into_iter().collect();
    let want: HashSet<Vec<u8>> = good.iter().map(|t| t.as_bytes().to_vec()).collect();
    assert_eq!(delivered, want);
    let dead = lock(&ob).dead_letters(10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message.topic, "t/bad");
    assert!(
        dead[0]
            .reason
            .contains(&format!("ended the connection {QUARANTINE_AFTER} times")),
        "{}",
        dead[0].reason
    );
    assert_eq!(run.metrics.counter_sum("weir_mqtt_quarantined_total"), 1);
    assert_eq!(run.metrics.counter_sum("weir_mqtt_rejected_total"), 1);
    // One connection per strike, a first one that found the row and a last one that delivered
    // the rest — not a storm. The good rows published in the same burst as the bad one can lose
    // their PUBACKs when the broker closes (written before the close, but the client's writes
    // after it draw a RST, and a RST discards what the client had not read yet: seen in CI,
    // unresolved=[1..11] after the first session). Each such row is probed once, alone, before
    // the bad row is: at most one extra connection per good row ahead of it (5 here), bounded
    // by the in-flight window, never a loop.
    let n = broker.connections();
    assert!(
        n > QUARANTINE_AFTER as usize && n <= QUARANTINE_AFTER as usize + 2 + 5,
        "{n} connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_dies_right_after_it_is_made_backs_off() {
    let broker = Broker::start(Script {
        close_after_connack: true,
        ..Script::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let max_age = Duration::from_secs(3600);
    let ob = outbox(&dir, max_age);
    append(&ob, &["t/a"]);
    let mut cfg = config(broker.port, 20, max_age);
    cfg.reconnect_min = Duration::from_millis(50);
    cfg.reconnect_max = Duration::from_secs(1);
    let _run = Running::start(cfg, ob.clone());
    // Delays of at least 25, 50, 100, 200, 400, 500, 500 ms: at most 8 connections in 2 s.
    // Resetting the backoff on every CONNACK would reconnect every 25-50 ms (40+ times).
    wait_until("a few connections", Duration::from_secs(10), || {
        broker.connections() >= 3
    })
    .await;
    let start = Instant::now();
    let before = broker.connections();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let made = broker.connections() - before;
    assert!(
        made <= 8,
        "{made} connections in {:?} after {before}",
        start.elapsed()
    );
    assert_eq!(lock(&ob).stats().unwrap().rows, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_max_age_are_dropped_during_a_long_session() {
    let broker = Broker::start(Script {
        hold: Some("t/held".into()),
        ..Script::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let max_age = Duration::from_secs(1);
    let ob = outbox(&dir, max_age);
    // A window of one: the held row blocks the five behind it for the whole session.
    append(
        &ob,
        &["t/held", "t/a/1", "t/a/2", "t/a/3", "t/a/4", "t/a/5"],
    );
    let _run = Running::start(config(broker.port, 1, max_age), ob.clone());
    wait_until("the held row to be sent", Duration::from_secs(10), || {
        !broker.payloads_on("t/held").is_empty()
    })
    .await;
    wait_until("rows past max_age dropped", Duration::from_secs(10), || {
        let s = lock(&ob).stats().unwrap();
        s.rows == 0 && s.dropped_for_age_total == 6
    })
    .await;
    // During the one session: no reconnect, and the aged rows were never sent.
    assert_eq!(broker.connections(), 1);
    assert!(broker.payloads_on("t/a/").is_empty());
}

/// Acknowledged rows are deleted in coalesced transactions on a deadline set by the first of
/// them, so a steady trickle of PUBACKs (a poll every few ms) cannot postpone the delete for as
/// long as it lasts (it did while the deadline moved with every ack: the acknowledged rows then
/// piled up until 1,000 of them or a pause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_rows_are_deleted_while_publishes_keep_coming() {
    let broker = Broker::start(Script::default());
    let dir = tempfile::tempdir().unwrap();
    let ob = outbox(&dir, Duration::from_secs(3600));
    let mut cfg = config(broker.port, 16, Duration::from_secs(3600));
    cfg.status_interval = Duration::from_secs(3600); // no other timer flushes
    let run = Running::start(cfg, ob.clone());
    // Rows 2 ms apart for up to 3 s: the first delete comes 200 ms after the first ack. (The old
    // moving deadline deleted only after 20 ms without an ack, or at 1,000 rows.)
    let mut appended = 0u64;
    let mut deleted_while_streaming = false;
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        append(&ob, &[format!("t/trickle/{appended}").as_str()]);
        run.wake.notify_one(); // as the outbox writer does after a commit
        appended += 1;
        if lock(&ob).stats().unwrap().rows + 20 < appended {
            deleted_while_streaming = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        deleted_while_streaming,
        "{appended} rows appended 2 ms apart over 3 s and none deleted"
    );
    wait_until(
        "every row delivered and deleted",
        Duration::from_secs(10),
        || lock(&ob).stats().unwrap().rows == 0,
    )
    .await;
    assert_eq!(broker.payloads_on("t/trickle/").len() as u64, appended);
}

/// With no broker to reach, the outbox gauges still follow the backlog (they were refreshed only
/// in a session, so an outage showed the last connected value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_gauges_follow_the_backlog_while_the_broker_is_away() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again: connections are refused
    let dir = tempfile::tempdir().unwrap();
    let ob = outbox(&dir, Duration::from_secs(3600));
    let mut cfg = config(port, 16, Duration::from_secs(3600));
    cfg.status_interval = Duration::from_millis(100);
    let run = Running::start(cfg, ob.clone());
    let rows = run.metrics.gauge("weir_outbox_rows", &[]);
    append(&ob, &["t/a/1", "t/a/2", "t/a/3"]);
    wait_until("weir_outbox_rows = 3", Duration::from_secs(10), || {
        rows.get() == 3
    })
    .await;
    append(&ob, &["t/a/4", "t/a/5"]);
    wait_until("weir_outbox_rows = 5", Duration::from_secs(10), || {
        rows.get() == 5
    })
    .await;
}
