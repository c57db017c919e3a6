//! Beacons, for presence: Apple iBeacon and Google Eddystone.
//!
//! iBeacon: manufacturer data of company 0x004C whose value is `02 15` (type, length 21), a
//! 16-byte proximity UUID, major and minor (uint16 BE) and the measured power at 1 m (int8).
//! Identity `ibeacon:<uuid>:<major>:<minor>`.
//!
//! Eddystone (<https://github.com/google/eddystone/blob/master/protocol-specification.md>),
//! service data of UUID 0xFEAA, first byte the frame type:
//! * 0x00 UID: tx power, 10-byte namespace, 6-byte instance → `eddystone:<ns>:<instance>`.
//! * 0x10 URL: tx power, scheme prefix, encoded URL → `eddystone-url:<url>`.
//! * 0x20 TLM (unencrypted, version 0): battery mV (uint16 BE, 0 = not supported),
//!   temperature 8.8 fixed point BE (0x8000 = not supported), advert and uptime counters:
//!   readings, no identity (a TLM frame comes with a UID or URL frame from the same address).
//! * 0x30 EID, 0x40 TLM encrypted: no stable identity, unsupported.

use weir_core::Value;

use super::{hex, scaled, DecodeError, Decoded, Format, Measurement};

pub const APPLE_COMPANY_ID: u16 = 0x004C;
pub const EDDYSTONE_UUID16: u16 = 0xFEAA;

/// Decode Apple manufacturer data; `Ok(None)` when it is not an iBeacon (other Apple adverts).
pub fn decode_ibeacon(d: &[u8]) -> Result<Option<Decoded>, DecodeError> {
    if d.len() < 2 || d[0] != 0x02 || d[1] != 0x15 {
        return Ok(None);
    }
    if d.len() < 23 {
        return Err(DecodeError::Length {
            format: "ibeacon",
            len: d.len(),
        });
    }
    let u = &d[2..18];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex(&u[..4]),
        hex(&u[4..6]),
        hex(&u[6..8]),
        hex(&u[8..10]),
        hex(&u[10..])
    );
    let major = u16::from_be_bytes([d[18], d[19]]);
    let minor = u16::from_be_bytes([d[20], d[21]]);
    let mut out = Decoded::new(Format::IBeacon);
    out.beacon = Some(format!("ibeacon:{uuid}:{major}:{minor}"));
    out.measurements.push(Measurement::new(
        "tx_power_1m",
        "signal_strength",
        Some("dBm"),
        Value::I64(i64::from(d[22] as i8)),
    ));
    Ok(Some(out))
}

const URL_SCHEMES: [&str; 4] = ["http://www.", "https://www.", "http://", "https://"];
const URL_EXPANSIONS: [&str; 14] = [
    ".com/", ".org/", ".edu/", ".net/", ".info/", ".biz/", ".gov/", ".com", ".org", ".edu", ".net",
    ".info", ".biz", ".gov",
];

/// Decode Eddystone service data.
pub fn decode_eddystone(d: &[u8]) -> Result<Decoded, DecodeError> {
    let len_err = || DecodeError::Length {
        format: "eddystone",
        len: d.len(),
    };
    let frame = *d.first().ok_or_else(len_err)?;
    let mut out = Decoded::new(Format::Eddystone);
    match frame {
        0x00 => {
            if d.len() < 18 {
                return Err(len_err());
            }
            out.beacon = Some(format!("eddystone:{}:{}", hex(&d[2..12]), hex(&d[12..18])));
        }
        0x10 => {
            if d.len() < 3 {
                return Err(len_err());
            }
            let mut url = String::from(*URL_SCHEMES.get(usize::from(d[2])).ok_or(
                DecodeError::Version {
                    format: "eddystone-url scheme",
                    version: d[2],
                },
            )?);
            for &c in &d[3..] {
                match URL_EXPANSIONS.get(usize::from(c)) {
                    Some(e) => url.push_str(e),
                    None if (0x21..0x7F).contains(&c) => url.push(char::from(c)),
                    None => {
                        return Err(DecodeError::Version {
                            format: "eddystone-url character",
                            version: c,
                        })
                    }
                }
            }
            out.beacon = Some(format!("eddystone-url:{url}"));
        }
        0x20 => {
            if d.len() < 14 {
                return Err(len_err());
            }
            if d[1] != 0 {
                return Err(DecodeError::Version {
                    format: "eddystone-tlm",
                    version: d[1],
                });
            }
            let mv = u16::from_be_bytes([d[2], d[3]]);
            if mv != 0 {
                out.measurements.push(Measurement::new(
                    "battery_voltage",
                    "voltage",
                    Some("V"),
                    Value::F64(scaled(i64::from(mv), 1, 3)),
                ));
            }
            let t = i16::from_be_bytes([d[4], d[5]]);
            if t != i16::MIN {
                out.measurements.push(Measurement::new(
                    "temperature",
                    "temperature",
                    Some("°C"),
                    Value::F64(f64::from(t) / 256.0),
                ));
            }
        }
        other => {
            return Err(DecodeError::Version {
                format: "eddystone",
                version: other,
            })
        }
    }
    Ok(out)
}
