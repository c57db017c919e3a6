//! Xiaomi LYWSD03MMC and friends on custom firmware: service data of UUID 0x181A
//! ("Environmental Sensing").
//!
//! pvvx custom format, 15 bytes, little endian
//! (<https://github.com/pvvx/ATC_MiThermometer#custom-format-all-data-little-endian>):
//! ```text
//! MAC[6] (reversed) · temperature int16 0.01 °C · humidity uint16 0.01 % · battery uint16 mV ·
//! battery uint8 % · counter uint8 · flags uint8
//! ```
//! ATC1441 format, 13 bytes, big endian
//! (<https://github.com/atc1441/ATC_MiThermometer#advertising-format-of-the-custom-firmware>):
//! ```text
//! MAC[6] · temperature int16 0.1 °C · humidity uint8 % · battery uint8 % · battery uint16 mV ·
//! counter uint8
//! ```
//! The encrypted variants (11 and 8 bytes) need the device's key and are reported as
//! unsupported lengths. The counter changes with every new measurement (dedupe key).

use weir_core::Value;

use super::{scaled, DecodeError, Decoded, Format, Measurement};

/// Environmental Sensing service UUID.
pub const UUID16: u16 = 0x181A;

/// Decode a 0x181A service data value.
pub fn decode(d: &[u8]) -> Result<Decoded, DecodeError> {
    match d.len() {
        15 => {
            let mut out = Decoded::new(Format::Pvvx);
            let t = i16::from_le_bytes([d[6], d[7]]);
            let h = u16::from_le_bytes([d[8], d[9]]);
            let mv = u16::from_le_bytes([d[10], d[11]]);
            out.measurements = vec![
                Measurement::new(
                    "temperature",
                    "temperature",
                    Some("°C"),
                    Value::F64(scaled(i64::from(t), 1, 2)),
                ),
                Measurement::new(
                    "humidity",
                    "humidity",
                    Some("%"),
                    Value::F64(scaled(i64::from(h), 1, 2)),
                ),
                Measurement::new(
                    "battery_voltage",
                    "voltage",
                    Some("V"),
                    Value::F64(scaled(i64::from(mv), 1, 3)),
                ),
                Measurement::new(
                    "battery",
                    "battery",
                    Some("%"),
                    Value::I64(i64::from(d[12])),
                ),
            ];
            out.dedupe = Some(u32::from(d[13]));
            Ok(out)
        }
        13 => {
            let mut out = Decoded::new(Format::Atc1441);
            let t = i16::from_be_bytes([d[6], d[7]]);
            let mv = u16::from_be_bytes([d[10], d[11]]);
            out.measurements = vec![
                Measurement::new(
                    "temperature",
                    "temperature",
                    Some("°C"),
                    Value::F64(scaled(i64::from(t), 1, 1)),
                ),
                Measurement::new(
                    "humidity",
                    "humidity",
                    Some("%"),
                    Value::I64(i64::from(d[8])),
                ),
                Measurement::new("battery", "battery", Some("%"), Value::I64(i64::from(d[9]))),
                Measurement::new(
                    "battery_voltage",
                    "voltage",
                    Some("V"),
                    Value::F64(scaled(i64::from(mv), 1, 3)),
                ),
            ];
            out.dedupe = Some(u32::from(d[12]));
            Ok(out)
        }
        len => Err(DecodeError::Length {
            format: "pvvx/atc1441",
            len,
        }),
    }
}

/// The device address inside a pvvx (reversed) or ATC1441 (as written) advert.
pub fn mac_of(d: &[u8]) -> Option<[u8; 6]> {
    let mut m: [u8; 6] = d.get(..6)?.try_into().ok()?;
    if d.len() == 15 {
        m.reverse();
    }
    Some(m)
}
