//! Server-mode throughput: readings/s the CoAP server accepts from a load generator on loopback,
//! and the server task's CPU time per message.
//!
//! `cargo bench -p weir-coap --bench server` (optionally `-- <seconds per scenario>`, default 3).
//!
//! Set-up: the server task runs alone on a current-thread Tokio runtime on its own OS thread; a
//! consumer thread drains the bus (capacity 1024 batches) and counts readings; one generator thread
//! sends requests over a real UDP socket on 127.0.0.1 and reads the answers. CPU per message is the
//! server thread's on-CPU time (`/proc/thread-self/schedstat`) divided by the requests it handled.
//!
//! Scenarios:
//! * `con-scalar`  — CON `POST /bench/d<i>/temp` with `21.5` (text/plain), 64 requests in flight:
//!   every request answered 2.04 before the next takes its slot (what devices really do);
//! * `non-scalar`  — NON requests as fast as one thread sends them (datagrams the kernel drops when
//!   the server falls behind are simply not accepted);
//! * `con-senml10` — CON SenML JSON packs of 10 records to `/bench/d<i>`, 64 in flight.
//!
//! The generator is one endpoint reusing message ids far faster than RFC 7252 §4.4 allows (an id
//! may come back only after EXCHANGE_LIFETIME, 247 s): when the kernel drops a long run of a NON
//! flood, a later id can still be in the deduplication cache and is (correctly, by the rules)
//! treated as a retransmission; the bench prints how many.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_coap::{server::Server, CoapConfig, Stats};
use weir_core::{bus, CancellationToken, Metrics};

fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// A CoAP request: `con` or NON, POST, Uri-Path segments, Content-Format, payload (RFC 7252 §3).
fn request(con: bool, mid: u16, path: &[&str], cf: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![if con { 0x40 } else { 0x50 }, 0x02];
    b.extend_from_slice(&mid.to_be_bytes());
    let mut last = 0u16;
    for (i, seg) in path.iter().enumerate() {
        let delta = if i == 0 { 11 - last } else { 0 };
        last = 11;
        assert!(seg.len() < 13);
        b.push(((delta as u8) << 4) | seg.len() as u8);
        b.extend_from_slice(seg.as_bytes());
    }
    // Content-Format (12): delta 1 from Uri-Path.
    if cf == 0 {
        b.push(0x10);
    } else {
        b.push(0x11);
        b.push(cf);
    }
    b.push(0xff);
    b.extend_from_slice(payload);
    b
}

struct Outcome {
    sent: u64,
    answered: u64,
    readings: u64,
    requests: u64,
    dropped: u64,
    duplicates: u64,
    rejected: u64,
    secs: f64,
    cpu_ns: u64,
}

fn run(scenario: &str, secs: f64) -> Outcome {
    let cfg: CoapConfig =
        serde_yaml::from_str("{listen: '127.0.0.1:0', accept_undeclared_under: [bench/]}").unwrap();
    let metrics = Metrics::new();
    let (tx, mut rx) = bus(1024, &metrics);
    let stats = Arc::new(Stats::register(&metrics, "bench"));
    let token = CancellationToken::new();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let addr: SocketAddr = sock.local_addr().unwrap();

    let (t2, s2, tx2) = (token.clone(), stats.clone(), tx.for_source("bench"));
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
            let srv = Server::new(Some(sock), &cfg, Arc::from("bench"), tx2, s2);
            let cpu0 = thread_cpu_ns();
            srv.run(t2, None).await.unwrap();
            thread_cpu_ns() - cpu0
        })
    });
    drop(tx);
    let readings = Arc::new(AtomicU64::new(0));
    let r2 = readings.clone();
    let consumer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            while let Some(b) = rx.recv().await {
                r2.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        })
    });

    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let pack: String = format!(
        "[{}]",
        (0..10)
            .map(|i| format!(r#"{{"n":"p{i}","v":{i}.5,"u":"W"}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    let devs: Vec<String> = (0..100).map(|i| format!("d{i}")).collect();
    let make = |con: bool, mid: u16| -> Vec<u8> {
        let d = devs[mid as usize % devs.len()].as_str();
        match scenario {
            "con-senml10" => request(con, mid, &["bench", d], 110, pack.as_bytes()),
            _ => request(con, mid, &["bench", d, "temp"], 0, b"21.5"),
        }
    };
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    let mut answered = 0u64;
    let mut mid: u16 = 0;
    let mut buf = [0u8; 1500];
    if scenario.starts_with("con") {
        for _ in 0..64 {
            mid = mid.wrapping_add(1);
            client.send(&make(true, mid)).unwrap();
            sent += 1;
        }
        while Instant::now() < end {
            match client.recv(&mut buf) {
                Ok(n) if n >= 4 && buf[1] == 0x44 => {
                    answered += 1;
                    mid = mid.wrapping_add(1);
                    client.send(&make(true, mid)).unwrap();
                    sent += 1;
                }
                Ok(_) => {}
                // A lost datagram: refill the window.
                Err(_) => {
                    mid = mid.wrapping_add(1);
                    client.send(&make(true, mid)).unwrap();
                    sent += 1;
                }
            }
        }
    } else {
        let stop = Arc::new(AtomicBool::new(false));
        let got = Arc::new(AtomicU64::new(0));
        let reader = client.try_clone().unwrap();
        let (st, g) = (stop.clone(), got.clone());
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !st.load(Ordering::Relaxed) {
                if reader.recv(&mut buf).is_ok() {
                    g.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while Instant::now() < end {
            for _ in 0..256 {
                mid = mid.wrapping_add(1);
                if client.send(&make(false, mid)).is_ok() {
                    sent += 1;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        answered = got.load(Ordering::Relaxed);
    }
    let elapsed = start.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    token.cancel();
    let cpu_ns = server.join().unwrap();
    consumer.join().unwrap();
    Outcome {
        sent,
        answered,
        readings: readings.load(Ordering::Relaxed),
        requests: stats.requests.get(),
        dropped: stats.bus_dropped.get(),
        duplicates: stats.duplicates.get(),
        rejected: stats.rejected.get(),
        secs: elapsed,
        cpu_ns,
    }
}

fn main() {
    let secs: f64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3.0);
    println!(
        "CoAP server mode on loopback, {secs} s per scenario (1 generator thread, 1 server thread)"
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>14}",
        "scenario",
        "sent",
        "answered",
        "requests",
        "readings",
        "bus drop",
        "readings/s",
        "server CPU/msg"
    );
    for scenario in ["con-scalar", "non-scalar", "con-senml10"] {
        let o = run(scenario, secs);
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11.0} {:>11.2} µs",
            scenario,
            o.sent,
            o.answered,
            o.requests,
            o.readings,
            o.dropped,
            o.readings as f64 / o.secs,
            o.cpu_ns as f64 / 1000.0 / o.requests.max(1) as f64
        );
        if o.duplicates + o.rejected > 0 {
            println!(
                "{:<12} ({} treated as retransmissions, {} answered 4.xx/5.xx)",
                "", o.duplicates, o.rejected
            );
        }
    }
}
