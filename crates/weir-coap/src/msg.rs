//! Message helpers on top of the `coap-lite` codec: protocol constants, Block options, responses.
//!
//! The codec (header, token, option deltas and lengths, payload marker; RFC 7252 §3) is coap-lite's
//! `Packet::from_bytes` / `to_bytes`. What is here is the part coap-lite leaves to its user.

use std::time::Duration;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

/// Transmission parameters (RFC 7252 §4.8).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
pub const ACK_RANDOM_FACTOR: f64 = 1.5;
pub const MAX_RETRANSMIT: u32 = 4;
/// EXCHANGE_LIFETIME (RFC 7252 §4.8.2): how long a message id must be remembered for deduplication.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Default Max-Age of a response without the option (RFC 7252 §5.10.5).
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);

/// Option numbers used here (RFC 7252 §5.10, RFC 7641 §2, RFC 7959 §2.1 and §4).
pub mod opt {
    pub const IF_MATCH: u16 = 1;
    pub const URI_HOST: u16 = 3;
    pub const IF_NONE_MATCH: u16 = 5;
    pub const OBSERVE: u16 = 6;
    pub const URI_PORT: u16 = 7;
    pub const URI_PATH: u16 = 11;
    pub const CONTENT_FORMAT: u16 = 12;
    pub const MAX_AGE: u16 = 14;
    pub const URI_QUERY: u16 = 15;
    pub const ACCEPT: u16 = 17;
    pub const BLOCK2: u16 = 23;
    pub const BLOCK1: u16 = 27;
    pub const SIZE1: u16 = 60;
}

/// Critical options this endpoint understands in a request; any other critical (odd-numbered)
/// option is answered 4.02 Bad Option (RFC 7252 §5.4.1).
const UNDERSTOOD_CRITICAL: [u16; 5] = [
    opt::URI_HOST,
    opt::URI_PORT,
    opt::URI_PATH,
    opt::URI_QUERY,
    opt::ACCEPT,
];

/// The first unrecognised critical option of a request, if any. Block1/Block2 are understood where
/// the caller handles them and are excluded here.
pub fn unknown_critical_option(p: &Packet) -> Option<u16> {
    p.options().map(|(n, _)| *n).find(|n| {
        n % 2 == 1 && !UNDERSTOOD_CRITICAL.contains(n) && *n != opt::BLOCK1 && *n != opt::BLOCK2
    })
}

/// A Block1/Block2 option value (RFC 7959 §2.2): `NUM` (up to 20 bits), `M`, `SZX` (size 2^(SZX+4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl Block {
    pub fn size(self) -> usize {
        1usize << (self.szx + 4)
    }

    /// Decode an option value of 0–3 bytes; SZX 7 is reserved (RFC 7959 §2.2) and refused.
    pub fn decode(v: &[u8]) -> Option<Block> {
        if v.len() > 3 {
            return None;
        }
        let x = v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b));
        let szx = (x & 0x7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block {
            num: x >> 4,
            more: x & 0x8 != 0,
            szx,
        })
    }

    /// Encode in the fewest bytes (RFC 7252 §3.2 uint).
    pub fn encode(self) -> Vec<u8> {
        uint((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx))
    }
}

/// An unsigned option value in the fewest bytes (RFC 7252 §3.2: `uint`, zero is empty).
pub fn uint(x: u32) -> Vec<u8> {
    let b = x.to_be_bytes();
    let skip = b.iter().take_while(|v| **v == 0).count();
    b[skip..].to_vec()
}

/// Decode a `uint` option value of at most 4 bytes.
pub fn decode_uint(v: &[u8]) -> Option<u32> {
    (v.len() <= 4).then(|| v.iter().fold(0u32, |a, b| (a << 8) | u32::from(*b)))
}

/// The first value of option `n` as a `uint`.
pub fn uint_option(p: &Packet, n: u16) -> Option<u32> {
    p.get_first_option(CoapOption::from(n))
        .and_then(|v| decode_uint(v))
}

/// The Uri-Path segments of a request.
pub fn uri_path(p: &Packet) -> Vec<String> {
    p.get_option(CoapOption::UriPath)
        .map(|l| {
            l.iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The response to `req`: piggybacked on an ACK for a CON (RFC 7252 §5.2.1), a NON with `mid`
/// for a NON (§5.2.3); same token either way.
pub fn response_to(req: &Packet, code: ResponseType, mid: u16) -> Packet {
    let mut r = Packet::new();
    match req.header.get_type() {
        MessageType::Confirmable => {
            r.header.set_type(MessageType::Acknowledgement);
            r.header.message_id = req.header.message_id;
        }
        _ => {
            r.header.set_type(MessageType::NonConfirmable);
            r.header.message_id = mid;
        }
    }
    r.header.code = MessageClass::Response(code);
    r.set_token(req.get_token().to_vec());
    r
}

/// An empty message (code 0.00) of type `t` with message id `mid` — an ACK or a RST (RFC 7252 §4.2).
pub fn empty(t: MessageType, mid: u16) -> Packet {
    let mut r = Packet::new();
    r.header.set_type(t);
    r.header.code = MessageClass::Empty;
    r.header.message_id = mid;
    r
}

/// A RST for a datagram that failed to parse but has a readable 4-byte header of version 1 and
/// type CON: RFC 7252 §4.2 says such a message is rejected with a matching Reset. `None` for
/// anything else (NON, ACK, RST, a bad version or under 4 bytes: silently ignored, §3 and §4.3).
pub fn reset_for_garbage(buf: &[u8]) -> Option<Vec<u8>> {
    if buf.len() < 4 || buf[0] >> 6 != 1 || (buf[0] >> 4) & 0x3 != 0 {
        return None;
    }
    // Ver=1, T=RST (3), TKL=0, code 0.00, same message id.
    Some(vec![0x70, 0x00, buf[2], buf[3]])
}

/// Jittered retransmission timeout for attempt `n` (0-based), from `base` (RFC 7252 §4.2: initial
/// timeout random in [ACK_TIMEOUT, ACK_TIMEOUT × ACK_RANDOM_FACTOR], doubled on each retry).
pub fn retransmit_timeout(base: Duration, n: u32) -> Duration {
    let f = 1.0 + rand::random::<f64>() * (ACK_RANDOM_FACTOR - 1.0);
    base.mul_f64(f) * 2u32.saturating_pow(n.min(16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_option_round_trips_with_20_bit_numbers() {
        for b in [
            Block {
                num: 0,
                more: true,
                szx: 2,
            },
            Block {
                num: 15,
                more: false,
                szx: 6,
            },
            Block {
                num: 0xF_FFFF,
                more: true,
                szx: 0,
            },
        ] {
            assert_eq!(Block::decode(&b.encode()), Some(b));
        }
        // RFC 7959 §2.2: NUM=0, M=0, SZX=0 is the empty option.
        assert_eq!(
            Block {
                num: 0,
                more: false,
                szx: 0
            }
            .encode(),
            Vec::<u8>::new()
        );
        assert_eq!(Block::decode(&[0x0f]), None, "SZX 7 is reserved");
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
        assert_eq!(
            Block {
                num: 1,
                more: true,
                szx: 6
            }
            .size(),
            1024
        );
    }

    #[test]
    fn rst_only_for_con_garbage_with_a_header() {
        // CON, TKL=8 but only 2 token bytes follow: a format error.
        assert_eq!(
            reset_for_garbage(&[0x48, 0x02, 0x12, 0x34, 1, 2]),
            Some(vec![0x70, 0, 0x12, 0x34])
        );
        assert_eq!(reset_for_garbage(&[0x58, 0x02, 0x12, 0x34]), None, "NON");
        assert_eq!(reset_for_garbage(&[0x88, 0x02, 0x12, 0x34]), None, "ver 2");
        assert_eq!(reset_for_garbage(&[0x40, 0x02]), None, "short");
    }

    #[test]
    fn uint_is_minimal() {
        assert_eq!(uint(0), Vec::<u8>::new());
        assert_eq!(uint(60), vec![60]);
        assert_eq!(uint(0x1_0000), vec![1, 0, 0]);
        assert_eq!(decode_uint(&[1, 0, 0]), Some(0x1_0000));
    }
}
