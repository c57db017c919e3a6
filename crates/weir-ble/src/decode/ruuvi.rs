//! RuuviTag data format 5 ("RAWv2"), manufacturer specific data of company 0x0499
//! (<https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2>).
//!
//! ```text
//! offset 0   format (5)
//!        1   temperature, int16 BE, 0.005 °C            invalid 0x8000
//!        3   humidity, uint16 BE, 0.0025 %              invalid 0xFFFF
//!        5   pressure, uint16 BE, Pa − 50000            invalid 0xFFFF
//!        7   acceleration x, y, z, int16 BE, mG         invalid 0x8000 (each)
//!       13   power: 11 bits battery mV − 1600 (invalid 2047), 5 bits tx power (−40 + 2·n dBm,
//!            invalid 31), uint16 BE
//!       15   movement counter, uint8                    invalid 0xFF
//!       16   measurement sequence, uint16 BE            invalid 0xFFFF
//!       18   MAC, 6 bytes                               invalid FF:FF:FF:FF:FF:FF
//! ```
//! An invalid marker gives no reading for that field (never 0). The spec departs from the
//! reference decoder (`ruuvi-decoders` 0.2.0) in places; the spec wins: each axis is its own
//! field, movement 0xFF and sequence 0xFFFF are "not available", the format byte is checked.

use weir_core::Value;

use super::{scaled, DecodeError, Decoded, Format, Measurement};

/// Ruuvi Innovations' Bluetooth SIG company id.
pub const COMPANY_ID: u16 = 0x0499;
const LEN: usize = 24;

fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

/// Decode the manufacturer data value (after the company id).
pub fn decode(d: &[u8]) -> Result<Decoded, DecodeError> {
    match d.first() {
        Some(5) => {}
        Some(v) => {
            return Err(DecodeError::Version {
                format: "ruuvi",
                version: *v,
            })
        }
        None => {
            return Err(DecodeError::Length {
                format: "ruuvi",
                len: 0,
            })
        }
    }
    if d.len() < LEN {
        return Err(DecodeError::Length {
            format: "ruuvi",
            len: d.len(),
        });
    }
    let mut out = Decoded::new(Format::Ruuvi);
    let m = &mut out.measurements;
    let t = be16(d, 1) as i16;
    if t != i16::MIN {
        m.push(Measurement::new(
            "temperature",
            "temperature",
            Some("°C"),
            Value::F64(scaled(i64::from(t), 5, 3)),
        ));
    }
    let h = be16(d, 3);
    if h != 0xFFFF {
        m.push(Measurement::new(
            "humidity",
            "humidity",
            Some("%"),
            Value::F64(scaled(i64::from(h), 25, 4)),
        ));
    }
    let p = be16(d, 5);
    if p != 0xFFFF {
        m.push(Measurement::new(
            "pressure",
            "pressure",
            Some("hPa"),
            Value::F64(scaled(i64::from(p) + 50_000, 1, 2)),
        ));
    }
    for (i, name) in ["acceleration_x", "acceleration_y", "acceleration_z"]
        .into_iter()
        .enumerate()
    {
        let a = be16(d, 7 + 2 * i) as i16;
        if a != i16::MIN {
            m.push(Measurement::new(
                name,
                "acceleration",
                Some("g"),
                Value::F64(scaled(i64::from(a), 1, 3)),
            ));
        }
    }
    let power = be16(d, 13);
    let batt = power >> 5;
    if batt != 0x7FF {
        m.push(Measurement::new(
            "battery_voltage",
            "voltage",
            Some("V"),
            Value::F64(scaled(i64::from(batt) + 1600, 1, 3)),
        ));
    }
    let tx = power & 0x1F;
    if tx != 0x1F {
        m.push(Measurement::new(
            "tx_power",
            "signal_strength",
            Some("dBm"),
            Value::I64(-40 + 2 * i64::from(tx)),
        ));
    }
    if d[15] != 0xFF {
        m.push(Measurement::new(
            "movement_counter",
            "count",
            None,
            Value::I64(i64::from(d[15])),
        ));
    }
    let seq = be16(d, 16);
    if seq != 0xFFFF {
        m.push(Measurement::new(
            "measurement_sequence",
            "count",
            None,
            Value::I64(i64::from(seq)),
        ));
        out.dedupe = Some(u32::from(seq));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_valid_and_invalid() {
        // docs.ruuvi.com, data format 5, "Test vectors": valid data, maximum, minimum, invalid.
        let valid = super::super::tests_hex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F");
        let d = decode(&valid).unwrap();
        let v = |n: &str| {
            d.measurements
                .iter()
                .find(|m| m.name == n)
                .map(|m| m.value.clone())
        };
        assert_eq!(v("temperature"), Some(Value::F64(24.3)));
        assert_eq!(v("humidity"), Some(Value::F64(53.49)));
        assert_eq!(v("pressure"), Some(Value::F64(1000.44)));
        assert_eq!(v("battery_voltage"), Some(Value::F64(2.977)));
        assert_eq!(v("tx_power"), Some(Value::I64(4)));
        assert_eq!(d.dedupe, Some(205));
        let invalid = super::super::tests_hex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF");
        let d = decode(&invalid).unwrap();
        assert!(d.measurements.is_empty(), "{:?}", d.measurements);
        assert_eq!(d.dedupe, None);
        assert!(decode(&valid[..23]).is_err());
        assert!(decode(&[3; 24]).is_err());
    }
}
