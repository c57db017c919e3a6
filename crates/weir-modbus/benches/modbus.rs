//! Modbus throughput and overhead. Prints figures; asserts nothing.
//!
//! `cargo bench -p weir-modbus --bench modbus`
//!
//! 1. Modbus TCP against an in-process tokio-modbus server on loopback: one connection, one
//!    transaction at a time (as on a real line): requests/s and registers/s of the transport alone.
//! 2. The whole source: a `ModbusSource` polling 64 unit ids behind that server, each with 60
//!    `f32` points (one 120-register request per poll, `poll_ms: 1`), every reading decoded, put
//!    on the bus and taken off it: requests/s and points/s.
//! 3. RTU: an in-process responder on one end of a socat pty pair, the RTU transport on the
//!    other, at the inter-frame delay of 19200 and of 115200 baud. A pty has no wire time, so the
//!    measured time per transaction is the overhead a real line adds to its wire time (computed
//!    from the frame sizes, 10 bits per character for 8N1). Skipped without `socat`.
//! 4. The codec alone: decoding an `f32` point to its shortest decimal (`Value::from_f32`) against
//!    the plain widening `f32 as f64` it replaced, and a scaled `u16` with its decimal rounding.

use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_modbus::server::tcp::{accept_tcp_connection, Server};
use tokio_modbus::{ExceptionCode, Request as MbRequest, Response as MbResponse};
use weir_core::{bus, CancellationToken, CommandRouter, Metrics, SourceBuilder, SourceContext};
use weir_modbus::pdu::{self, Request, Table};
use weir_modbus::transport::{inter_frame_delay, RtuTransport, TcpTransport, Transport};
use weir_modbus::{ModbusBuilder, ModbusConfig};

/// Registers whose values change on every request.
struct Regs(AtomicU16);

impl tokio_modbus::server::Service for Regs {
    type Request = MbRequest<'static>;
    type Response = MbResponse;
    type Exception = ExceptionCode;
    type Future = Ready<Result<MbResponse, ExceptionCode>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let t = self.0.fetch_add(1, Ordering::Relaxed);
        let regs = |a: u16, n: u16| (0..n).map(|i| a.wrapping_add(i) ^ t).collect::<Vec<_>>();
        ready(match req {
            MbRequest::ReadHoldingRegisters(a, n) => {
                Ok(MbResponse::ReadHoldingRegisters(regs(a, n)))
            }
            MbRequest::ReadInputRegisters(a, n) => Ok(MbResponse::ReadInputRegisters(regs(a, n))),
            _ => Err(ExceptionCode::IllegalFunction),
        })
    }
}

async fn start_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Arc::new(Regs(AtomicU16::new(0)));
    tokio::spawn(async move {
        let server = Server::new(listener);
        let new_service = move |_| Ok(Some(service.clone()));
        let on_connected = |stream, socket_addr| {
            let ns = new_service.clone();
            async move { accept_tcp_connection(stream, socket_addr, ns) }
        };
        let _ = server.serve(&on_connected, |_| {}).await;
    });
    addr
}

async fn tcp_transport(addr: SocketAddr) {
    let mut t = TcpTransport::connect(addr, Duration::from_secs(1))
        .await
        .unwrap();
    let req = Request::Read {
        table: Table::Holding,
        address: 0,
        count: 125,
    };
    for _ in 0..200 {
        t.transact(1, &req, Duration::from_secs(1)).await.unwrap();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        t.transact(1, &req, Duration::from_secs(1)).await.unwrap();
        n += 1;
    }
    let s = start.elapsed().as_secs_f64();
    println!(
        "tcp transport   : {:>8.0} requests/s, {:>9.0} registers/s (125 per request), {:.1} µs per transaction",
        n as f64 / s,
        n as f64 * 125.0 / s,
        s * 1e6 / n as f64
    );
}

async fn tcp_source(addr: SocketAddr) {
    let units = 64;
    let mut yaml = format!(
        "poll_ms: 1\ntcp:\n  - host: 127.0.0.1\n    port: {}\n    devices:\n",
        addr.port()
    );
    for u in 1..=units {
        yaml.push_str(&format!(
            "      - id: bench/d{u}\n        unit: {u}\n        points:\n"
        ));
        for p in 0..60 {
            yaml.push_str(&format!(
                "          - {{ name: p{p}, table: holding, address: {}, type: f32, order: CDAB, scale: 0.5 }}\n",
                p * 2
            ));
        }
    }
    let cfg: ModbusConfig = serde_yaml::from_str(&yaml).unwrap();
    let resolved = cfg.resolve(Path::new(".")).unwrap();
    let metrics = Metrics::new();
    let builder = ModbusBuilder::new(resolved);
    let router = CommandRouter::new();
    let inbox = router.register("bench", &builder.devices(), 4);
    let (tx, mut rx) = bus(1024, &metrics);
    let token = CancellationToken::new();
    let mut src = builder.build("bench", &metrics).unwrap();
    let ctx = SourceContext::new(tx.for_source("bench"), token.clone(), inbox);
    drop(tx);
    let task = tokio::spawn(async move { src.run(ctx).await });
    let label = format!("tcp:127.0.0.1:{}", addr.port());
    let requests = metrics.counter(
        "weir_modbus_line_requests_total",
        &[("source", "bench"), ("line", &label)],
    );
    // Warm up, then measure.
    let warm = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warm {
        rx.recv().await;
    }
    let (r0, start) = (requests.get(), Instant::now());
    let mut readings = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        if let Some(b) = rx.recv().await {
            readings += b.len() as u64;
        }
    }
    let s = start.elapsed().as_secs_f64();
    let reqs = requests.get() - r0;
    token.cancel();
    let _ = task.await;
    println!(
        "tcp source      : {:>8.0} requests/s, {:>9.0} points/s decoded onto the bus ({units} units x 60 f32 points, 120 registers per request)",
        reqs as f64 / s,
        readings as f64 / s
    );
}

/// Answers every Read Holding Registers frame on `port` with `count` registers.
async fn rtu_responder(port: String) {
    let mut s = weir_serial::SerialSettings::new(port, 115_200)
        .open()
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        let Ok(n) = s.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        while buf.len() >= 8 {
            let frame: Vec<u8> = buf.drain(..8).collect();
            if pdu::crc16(&frame[..6]).to_le_bytes() != frame[6..8] {
                buf.clear();
                break;
            }
            let count = u16::from_be_bytes([frame[4], frame[5]]);
            let mut resp = vec![frame[1], (count * 2) as u8];
            for i in 0..count {
                resp.extend(i.to_be_bytes());
            }
            if s.write_all(&pdu::rtu_frame(frame[0], &resp)).await.is_err() {
                return;
            }
        }
    }
}

async fn rtu_overhead() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let Ok(mut socat) = std::process::Command::new("socat")
        .arg(format!("pty,raw,echo=0,link={}", a.display()))
        .arg(format!("pty,raw,echo=0,link={}", b.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        println!("rtu             : skipped (socat not installed)");
        return;
    };
    while !(a.exists() && b.exists()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::spawn(rtu_responder(a.display().to_string()));
    let count = 10u16;
    let req = Request::Read {
        table: Table::Holding,
        address: 0,
        count,
    };
    let req_bytes = 8usize;
    let resp_bytes = pdu::rtu_response_size(&req);
    // Baud 0: no inter-frame gap at all, the pty + responder + transport baseline.
    for baud in [0u32, 19_200, 115_200] {
        let port = weir_serial::SerialSettings::new(&b, baud.max(9600))
            .open()
            .unwrap();
        let gap = if baud == 0 {
            Duration::ZERO
        } else {
            inter_frame_delay(baud, 10)
        };
        let mut t = RtuTransport::new(port, gap);
        for _ in 0..50 {
            t.transact(1, &req, Duration::from_secs(1)).await.unwrap();
        }
        let n = 1000;
        let start = Instant::now();
        for _ in 0..n {
            t.transact(1, &req, Duration::from_secs(1)).await.unwrap();
        }
        let per = start.elapsed().as_secs_f64() / n as f64;
        if baud == 0 {
            println!(
                "rtu  no gap    : {:.3} ms per transaction on the pty (transport + pty + responder, no inter-frame wait)",
                per * 1e3
            );
            continue;
        }
        let wire = (req_bytes + resp_bytes) as f64 * 10.0 / baud as f64;
        println!(
            "rtu {baud:>6} baud: frames {req_bytes}+{resp_bytes} bytes, wire {:.3} ms; measured on a pty {:.3} ms per transaction = overhead beyond wire time, of which {:.3} ms is the t3.5 inter-frame gap and {:.3} ms software + pty + responder; a real line: {:.3} ms ({:.0} transactions/s, overhead {:.0} %)",
            wire * 1e3,
            per * 1e3,
            gap.as_secs_f64() * 1e3,
            (per - gap.as_secs_f64()) * 1e3,
            (wire + per) * 1e3,
            1.0 / (wire + per),
            100.0 * per / (wire + per)
        );
    }
    let _ = socat.kill();
    let _ = socat.wait();
}

/// ns per decoded point, best of 5 runs of `n` decodes of changing registers.
fn per_point(n: u32, mut decode: impl FnMut(u32) -> f64) -> f64 {
    let mut best = f64::MAX;
    let mut sink = 0.0;
    for _ in 0..5 {
        let start = Instant::now();
        for i in 0..n {
            sink += decode(i);
        }
        best = best.min(start.elapsed().as_nanos() as f64 / n as f64);
    }
    std::hint::black_box(sink);
    best
}

fn codec_costs() {
    use weir_modbus::{Codec, DataType, Order};
    let unscaled = Codec::new(DataType::U16, Order::ABCD);
    let i_u16 = |i: u32| {
        unscaled
            .decode_registers(&[(i % 60000) as u16])
            .unwrap()
            .as_f64()
            .unwrap_or_default()
    };
    let n = 1_000_000;
    let regs = |i: u32| {
        let b = (200.0f32 + (i % 1000) as f32 * 0.1).to_bits();
        [(b >> 16) as u16, b as u16]
    };
    let f = Codec::new(DataType::F32, Order::ABCD);
    let short = per_point(n, |i| {
        f.decode_registers(&regs(i))
            .unwrap()
            .as_f64()
            .unwrap_or_default()
    });
    // The same registers as an unscaled i32: the decode without any decimal work (what an f32
    // cost before it was published as its shortest decimal).
    let i = Codec::new(DataType::I32, Order::ABCD);
    let plain = per_point(n, |n| {
        i.decode_registers(&regs(n))
            .unwrap()
            .as_f64()
            .unwrap_or_default()
    });
    let u16_plain = per_point(n, i_u16);
    let mut u = Codec::new(DataType::U16, Order::ABCD);
    u.scale = 0.1;
    let scaled = per_point(n, |i| {
        u.decode_registers(&[(i % 60000) as u16])
            .unwrap()
            .as_f64()
            .unwrap_or_default()
    });
    println!(
        "codec           : f32 to its shortest decimal {short:.0} ns/point (i32, no decimal work: {plain:.0} ns); u16 × 0.1 rounded to its decimals {scaled:.0} ns/point (unscaled u16: {u16_plain:.0} ns)"
    );
}

fn main() {
    codec_costs();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let addr = start_server().await;
        tcp_transport(addr).await;
        tcp_source(addr).await;
        rtu_overhead().await;
    });
}
