//! The fuzz targets' bodies: one function per target, each feeding arbitrary bytes to the same
//! entry points the daemon feeds bytes from outside to. Shared by the libFuzzer binaries
//! (`fuzz/fuzz_targets/*.rs`) and by the corpus replay test (`tests/fuzz_corpora.rs`), which
//! includes this file with `#[path]`, so CI replays every committed corpus file through exactly
//! the code that was fuzzed.
//!
//! Invariant for every function: any input returns normally (no panic, no hang, bounded
//! allocation). Input layouts are documented per function; they are how the fuzzer reaches deep
//! states (several datagrams in one input, a request to answer, chunked serial bytes).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A target's body: any bytes in, nothing out.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/corpus/`).
pub const TARGETS: &[(&str, Target)] = &[
    ("modbus_rtu", modbus_rtu),
    ("coap_server", coap_server),
    ("senml", senml),
    ("mqtt_command", mqtt_command),
    ("config_yaml", config_yaml),
    ("zigbee_mt_zcl", zigbee_mt_zcl),
    ("ble_adverts", ble_adverts),
];

// ---------------------------------------------------------------------------------------------
// Modbus RTU

/// A serial line that accepts the request and then delivers the answer in the given chunks; it
/// is silent (pending) before the request and after the last chunk, so the transport times out.
struct Line {
    written: bool,
    chunks: std::vec::IntoIter<Vec<u8>>,
}

impl AsyncRead for Line {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.written {
            return Poll::Pending;
        }
        match self.chunks.next() {
            Some(c) => {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                Poll::Ready(Ok(()))
            }
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for Line {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written = true;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// Modbus RTU framing and PDU decoding (`weir_modbus::transport::RtuTransport`,
/// `pdu::Request::decode_response`, `codec::Codec::decode_registers`).
///
/// Layout: `kind unit addr_hi addr_lo n_hi n_lo chunk | answer…`. `kind` picks the request (reads
/// of the four tables, the four writes), `n` its count or value; the answer is delivered to the
/// real RTU transport in pieces of `chunk` bytes (0: all at once). The answer is also decoded
/// directly as a PDU, and registers that decode are read back as every type in every order.
pub fn modbus_rtu(data: &[u8]) {
    use weir_modbus::codec::{Codec, DataType, Order};
    use weir_modbus::pdu::{Request, Response, Table};
    use weir_modbus::transport::{RtuTransport, Transport};

    let Some((head, answer)) = data.split_first_chunk::<7>() else {
        return;
    };
    let [kind, unit, a0, a1, n0, n1, chunk] = *head;
    let address = u16::from_be_bytes([a0, a1]);
    let n = u16::from_be_bytes([n0, n1]);
    let tables = [
        Table::Coil,
        Table::DiscreteInput,
        Table::Holding,
        Table::Input,
    ];
    let req = match kind % 8 {
        k @ 0..=3 => Request::Read {
            table: tables[k as usize],
            address,
            count: n,
        },
        4 => Request::WriteCoil {
            address,
            value: n & 1 == 1,
        },
        5 => Request::WriteRegister { address, value: n },
        6 => Request::WriteCoils {
            address,
            values: (0..n % 2000).map(|i| i % 3 == 0).collect(),
        },
        _ => Request::WriteRegisters {
            address,
            values: vec![n; (n % 130) as usize],
        },
    };
    let chunks: Vec<Vec<u8>> = if chunk == 0 {
        vec![answer.to_vec()]
    } else {
        answer.chunks(chunk as usize).map(<[u8]>::to_vec).collect()
    };
    // The real transport waits on tokio timers, whose 1 ms granularity limits it to ~600 inputs/s;
    // while fuzzing (cargo fuzz sets `--cfg fuzzing`) the same steps run synchronously over the
    // same public functions (`frame`), and the corpus replay runs both on every input.
    let framed = frame(unit, &req, &chunks);
    #[allow(unexpected_cfgs)]
    let replaying = !cfg!(fuzzing);
    if replaying {
        let line = Line {
            written: false,
            chunks: chunks.into_iter(),
        };
        let mut t = RtuTransport::new(line, Duration::ZERO);
        let real = RT.with(|rt| rt.block_on(t.transact(unit, &req, Duration::ZERO)));
        let _ = t.take_garbage_bytes();
        // Both accept the same answers.
        assert_eq!(
            real.as_ref().ok(),
            framed.as_ref(),
            "transport and mirror disagree"
        );
    }

    let direct = req.decode_response(answer);
    for r in [framed, direct.ok()].into_iter().flatten() {
        match r {
            Response::Registers(regs) => {
                let types = [
                    DataType::Bool,
                    DataType::U16,
                    DataType::I16,
                    DataType::U32,
                    DataType::I32,
                    DataType::U64,
                    DataType::I64,
                    DataType::F32,
                    DataType::F64,
                    DataType::String,
                ];
                for ty in types {
                    for order in Order::ALL {
                        let mut c = Codec::new(ty, order);
                        c.length = regs.len().clamp(1, 125) as u16;
                        c.bit = (ty == DataType::Bool).then_some(a0 % 16);
                        if kind & 0x80 != 0 {
                            c.scale = 0.1;
                            c.offset = -40.0;
                        }
                        let w = c.registers() as usize;
                        if let Some(window) = regs.get(..w) {
                            if let Ok(v) = c.decode_registers(window) {
                                // What decodes must encode back (a write of the value read).
                                let _ = c.encode_registers(&v, window.first().copied());
                            }
                        }
                    }
                }
            }
            Response::Bits(bits) => {
                let c = Codec::new(DataType::Bool, Order::ABCD);
                for b in bits.into_iter().take(16) {
                    let _ = c.decode_bit(b);
                }
            }
            Response::Written => {}
        }
    }
}

/// The steps of `RtuTransport::transact` after the request is written, without I/O: bytes arrive
/// in `chunks`; once the frame's length is known (`rtu_response_len`) the address, the length
/// bound and the CRC are checked and the PDU decoded. `None`: no valid answer (garbage, CRC,
/// exception, timeout).
fn frame(
    unit: u8,
    req: &weir_modbus::pdu::Request,
    chunks: &[Vec<u8>],
) -> Option<weir_modbus::pdu::Response> {
    use weir_modbus::pdu::{crc16, rtu_response_len, MAX_RTU_FRAME};
    let mut buf = Vec::new();
    for c in chunks {
        buf.extend_from_slice(&c[..c.len().min(MAX_RTU_FRAME)]);
        if let Some(len) = rtu_response_len(req.function(), &buf) {
            if buf[0] != unit || len > MAX_RTU_FRAME {
                return None;
            }
            if buf.len() >= len {
                let (body, crc) = buf[..len].split_at(len - 2);
                if crc16(body).to_le_bytes() != crc {
                    return None;
                }
                return req.decode_response(&body[1..]).ok();
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// CoAP

fn coap_config() -> weir_coap::CoapConfig {
    serde_json::from_value(serde_json::json!({
        "listen": "127.0.0.1:5683",
        "accept_undeclared_under": ["open/"],
        "max_body_bytes": 4096,
        "max_block_transfers": 4,
        "devices": [
            { "id": "gh1/climate", "units": { "temperature": "°C" } },
            { "id": "door" }
        ]
    }))
    .expect("the fuzz target's CoAP configuration")
}

/// The CoAP server's request path (`weir_coap::server::Server::handle_datagram`): messages with
/// options, deduplication, Block1 reassembly across datagrams, payload decoding.
///
/// Layout: a sequence of datagrams, each `len_lo len_hi bytes…` (a short tail is one datagram);
/// the top bit of `len_hi` sends that datagram from a second peer.
pub fn coap_server(data: &[u8]) {
    thread_local! {
        static CFG: weir_coap::CoapConfig = coap_config();
    }
    let metrics = weir_core::Metrics::new();
    let (bus, _rx) = weir_core::bus(4, &metrics);
    let stats = Arc::new(weir_coap::Stats::register(&metrics, "fuzz"));
    let mut server = CFG.with(|cfg| {
        weir_coap::server::Server::new(None, cfg, Arc::from("fuzz"), bus.for_source("fuzz"), stats)
    });
    let peers = [5683u16, 40000].map(|port| weir_coap::server::Peer {
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        identity: None,
    });
    let mut readings = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (dgram, peer) = if let [lo, hi, tail @ ..] = rest {
            let n = (u16::from_le_bytes([*lo, *hi & 0x7F]) as usize).min(tail.len());
            let (d, t) = tail.split_at(n);
            rest = t;
            (d, &peers[(*hi >> 7) as usize])
        } else {
            (std::mem::take(&mut rest), &peers[0])
        };
        let _ = server.handle_datagram(dgram, peer, &mut readings);
        readings.clear();
    }
}

/// SenML JSON and CBOR, JSON objects, scalars (`weir_coap::payload::decode`).
///
/// Layout: `format | body…`; `format` picks the Content-Format: 0 none (sniffed), 1 text/plain,
/// 2 JSON, 3 CBOR, 4 SenML JSON, 5 SenML CBOR, others that number itself (unsupported formats).
pub fn senml(data: &[u8]) {
    use weir_coap::payload::cf;
    let Some((&f, body)) = data.split_first() else {
        return;
    };
    let format = match f {
        0 => None,
        1 => Some(cf::TEXT_PLAIN),
        2 => Some(cf::JSON),
        3 => Some(cf::CBOR),
        4 => Some(cf::SENML_JSON),
        5 => Some(cf::SENML_CBOR),
        other => Some(other as u16),
    };
    let _ = weir_coap::payload::decode(format, body, weir_core::Timestamp::now());
}

// ---------------------------------------------------------------------------------------------
// MQTT

/// The payload of an MQTT `…/set` command (`weir_mqtt::forwarder::parse_command_value`).
pub fn mqtt_command(data: &[u8]) {
    if let Ok(v) = weir_mqtt::forwarder::parse_command_value(data) {
        let _ = v.to_string();
    }
}

// ---------------------------------------------------------------------------------------------
// gateway.yaml

/// The whole `weir check` path on a configuration given as text (`weir::load::load_str` with
/// [`weir::Need::All`]): YAML, `${VAR}` expansion, every section's schema and validation, every
/// source and stage builder (rules compiled), the one-owner check. No variable is set, and the
/// file's directory does not exist, so nothing outside the input is read.
pub fn config_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = weir::load::load_str(
        text,
        Path::new("/nonexistent/weir-fuzz/gateway.yaml"),
        weir::Need::All,
        &|_| None,
    );
}

// ---------------------------------------------------------------------------------------------
// Zigbee

/// Z-Stack MT frames from the serial line and the ZCL frames they carry
/// (`weir_zigbee::mt::Decoder`, `mt::Correlator`, `zcl::ZclFrame::parse`, `zcl::parse_report`,
/// `zcl::parse_read_rsp`, `zcl::decode_scaled`, the IAS zone status and configure-reporting
/// answers).
///
/// Layout: `chunk | bytes…`: the bytes are pushed to the MT decoder `chunk` at a time (0: all at
/// once); every frame decoded is routed through a correlator waiting for an SREQ's answer, and an
/// AF_INCOMING_MSG's data is parsed as ZCL as the coordinator task does (cluster at offset 2,
/// length at 16, data from 17). Every payload is also parsed as ZCL directly.
pub fn zigbee_mt_zcl(data: &[u8]) {
    use weir_zigbee::mt::{self, Correlator, Decoder};
    use weir_zigbee::zcl::{self, ZclFrame};

    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let mut scales = zcl::Scales::new();
    scales.insert(
        "power".into(),
        zcl::Scale {
            multiplier: 3,
            divisor: 7,
        },
    );
    let mut dec = Decoder::new();
    let mut cor = Correlator::default();
    let now = std::time::Instant::now();
    let _ = cor.begin(mt::SYS_PING, now, Duration::from_secs(1));
    let step = if chunk == 0 {
        bytes.len().max(1)
    } else {
        chunk as usize
    };
    for piece in bytes.chunks(step) {
        dec.push(piece);
        while let Some(f) = dec.next_frame() {
            let _ = f.name();
            let _ = f.encode();
            let _ = zcl::configure_reporting_failure(&f.payload);
            let cluster = f
                .payload
                .get(2..4)
                .map(|b| u16::from_le_bytes([b[0], b[1]]));
            let data = f
                .payload
                .get(16)
                .and_then(|&len| f.payload.get(17..17 + len as usize));
            for (cluster, zdata) in [(cluster, data), (Some(0x0B04), Some(&f.payload[..]))] {
                let (Some(cluster), Some(zdata)) = (cluster, zdata) else {
                    continue;
                };
                let Some(z) = ZclFrame::parse(zdata) else {
                    continue;
                };
                if cluster == zcl::CLUSTER_IAS_ZONE {
                    if let Some(b) = z.payload.get(..2) {
                        let _ =
                            zcl::decode_zone_status(Some(0x0015), u16::from_le_bytes([b[0], b[1]]));
                    }
                }
                let (recs, _cut) = match z.command {
                    zcl::READ_ATTRIBUTES_RSP => zcl::parse_read_rsp(&z.payload),
                    _ => zcl::parse_report(&z.payload),
                };
                for r in &recs {
                    let _ = zcl::decode_scaled(cluster, r.attr, &r.value, &scales);
                }
            }
            let _ = cor.on_frame(f);
        }
    }
    let _ = cor.poll_timeout(now + Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// BLE adverts

/// The BLE advert decoders (`weir_ble::decode`), reached through the same dispatch the source
/// uses for service data and manufacturer data. Input: byte 0 picks the path (modulo 7), the
/// rest is the advert's data:
/// 0 BTHome v2 service data (0xFCD2) with no bind key; 1 BTHome encrypted: bytes 1–4 are the
/// counter, the rest the objects, encrypted with a fixed key as a device would and decoded with
/// it (twice: the second is a replay and must not decode), and the same objects as a plain
/// advert must decode to the same measurements; 2 pvvx / ATC1441 (0x181A, and its MAC check);
/// 3 Eddystone (0xFEAA); 4 Ruuvi (company 0x0499); 5 Apple (0x004C, iBeacon or nothing);
/// 6 an unknown UUID and company (no decoder).
pub fn ble_adverts(data: &[u8]) {
    use weir_ble::decode::{self, bthome, pvvx};

    let Some((&sel, d)) = data.split_first() else {
        return;
    };
    let mac = [0xA4, 0xC1, 0x38, 0x0A, 0x1B, 0x2C];
    let key = [0x5Au8; 16];
    let mut keys = bthome::KeyState::default();
    let look = |r: &Option<Result<decode::Decoded, decode::DecodeError>>| {
        if let Some(Err(e)) = r {
            let _ = (e.kind(), e.to_string());
        }
        if let Some(Ok(dec)) = r {
            let _ = format!("{dec:?}");
        }
    };
    match sel % 7 {
        0 => look(&decode::service_data(bthome::UUID16, d, mac, &mut keys)),
        1 => {
            let Some((ctr, objects)) = d.split_first_chunk::<4>() else {
                return;
            };
            let counter = u32::from_le_bytes(*ctr);
            let frame = bthome::encrypt(objects, mac, &key, counter);
            keys.key = Some(key);
            let enc = decode::service_data(bthome::UUID16, &frame, mac, &mut keys);
            look(&enc);
            let again = decode::service_data(bthome::UUID16, &frame, mac, &mut keys);
            if matches!(enc, Some(Ok(_))) {
                assert!(
                    !matches!(again, Some(Ok(_))),
                    "a replayed encrypted advert decoded"
                );
            }
            let mut plain = vec![0x40];
            plain.extend_from_slice(objects);
            let clear = decode::service_data(
                bthome::UUID16,
                &plain,
                mac,
                &mut bthome::KeyState::default(),
            );
            if let (Some(Ok(a)), Some(Ok(b))) = (&enc, &clear) {
                assert_eq!(
                    a.measurements, b.measurements,
                    "encrypted and plain adverts of the same objects differ"
                );
            }
        }
        2 => {
            look(&decode::service_data(pvvx::UUID16, d, mac, &mut keys));
            let _ = pvvx::mac_of(d);
        }
        3 => look(&decode::service_data(0xFEAA, d, mac, &mut keys)),
        4 => look(&decode::manufacturer_data(0x0499, d)),
        5 => look(&decode::manufacturer_data(0x004C, d)),
        _ => {
            assert!(decode::service_data(0x1234, d, mac, &mut keys).is_none());
            assert!(decode::manufacturer_data(0x1234, d).is_none());
        }
    }
}
