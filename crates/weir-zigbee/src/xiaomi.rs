//! The one vendor quirk worth having: Xiaomi/Aqara ("LUMI") devices report most of their state in
//! attribute 0xFF01 of the Basic cluster, a character string (ZCL type 0x42) that actually holds
//! a list of tagged ZCL values, every 50–60 minutes (the "heartbeat"), instead of (or besides)
//! the standard measurement clusters.
//!
//! Wire format of the string's bytes: `tag (u8), ZCL data type (u8), value` repeated, the value
//! encoded as that data type (ZCL §2.6.2); some devices end it with one stray 0x00. Tags mean
//! what zha-quirks (`zhaquirks.xiaomi.XiaomiCluster._parse_aqara_attributes`, PyPI `zha-quirks`
//! 0.0.112) takes them to mean, some by model:
//!
//! | tag | type | meaning | models |
//! |---|---|---|---|
//! | 1 | uint16 | battery voltage, mV | all |
//! | 3 | int8 | device temperature, °C | all |
//! | 100 | int16 | temperature, 0.01 °C | `lumi.sensor_ht`, `lumi.sens`, `lumi.weather`, `lumi.sensor_ht.agl02` |
//! | 101 | uint16 | relative humidity, 0.01 % | same |
//! | 102 | int32 | pressure: Pa (`lumi.weather`), hPa (the others) | same |
//! | 11 | uint16 | illuminance, lx | `lumi.sensor_motion.aq2` |
//! | 149 | float | energy, kWh | plugs and relays (`lumi.plug*`, `lumi.relay.c2acn01`, `lumi.switch.n0a*`) |
//! | 150 | float | voltage, 0.1 V | same |
//! | 152 | float | power, W | same |
//!
//! The battery percentage is derived from the voltage as zha-quirks'
//! `XiaomiPowerConfiguration` does: linear from 2.82 V (0 %) to 3.1 V (100 %), in half percents.
//! Other tags are left undecoded (counted by the caller). zha-quirks also tolerates a string
//! length off by one; here a length beyond the frame is cut to what arrived.

use crate::zcl::{parse_value, AttrValue, Decoded, Measure, MeasureKind};

/// The attribute (Basic cluster, manufacturer-specific range).
pub const ATTR_FF01: u16 = 0xFF01;
/// LUMI's manufacturer code, present in some of these reports' ZCL header.
pub const MANUFACTURER_LUMI: u16 = 0x115F;

/// Battery voltage range for the percentage (zha-quirks `XiaomiPowerConfiguration`).
const BATTERY_MIN_MV: f64 = 2820.0;
const BATTERY_MAX_MV: f64 = 3100.0;

const WEATHER: &[&str] = &[
    "lumi.sensor_ht",
    "lumi.sens",
    "lumi.weather",
    "lumi.sensor_ht.agl02",
];
const PLUGS: &[&str] = &[
    "lumi.plug",
    "lumi.plug.maus01",
    "lumi.plug.maeu01",
    "lumi.plug.mmeu01",
    "lumi.relay.c2acn01",
    "lumi.switch.n0agl1",
    "lumi.switch.n0acn2",
];
const MOTION_LUX: &str = "lumi.sensor_motion.aq2";

/// Is this a LUMI device whose 0xFF01 reports are decoded?
pub fn is_lumi(manufacturer: Option<&str>, model: Option<&str>) -> bool {
    manufacturer.is_some_and(|m| m.starts_with("LUMI"))
        || model.is_some_and(|m| m.starts_with("lumi."))
}

/// The raw bytes of attribute 0xFF01 (type 0x41 or 0x42) in a Report Attributes payload (ZCL
/// §2.5.11), if there is one.
pub fn find_ff01(report: &[u8]) -> Option<&[u8]> {
    let mut i = 0;
    while let Some(hdr) = report.get(i..i + 3) {
        let attr = u16::from_le_bytes([hdr[0], hdr[1]]);
        let ty = hdr[2];
        if attr == ATTR_FF01 && matches!(ty, 0x41 | 0x42) {
            let n = *report.get(i + 3)? as usize;
            let start = i + 4;
            let end = (start + n).min(report.len());
            return report.get(start..end);
        }
        let (_, n) = parse_value(ty, report.get(i + 3..)?)?;
        i += 3 + n;
    }
    None
}

/// The tagged values of a 0xFF01 string, and whether it ended at something undecodable.
pub fn parse_tlv(mut b: &[u8]) -> (Vec<(u8, AttrValue)>, bool) {
    let mut out = Vec::new();
    while !b.is_empty() && b != [0] {
        let (Some(&tag), Some(&ty)) = (b.first(), b.get(1)) else {
            return (out, true);
        };
        let Some((v, n)) = parse_value(ty, &b[2..]) else {
            return (out, true);
        };
        out.push((tag, v));
        b = &b[2 + n..];
    }
    (out, false)
}

fn num(v: &AttrValue) -> Option<f64> {
    match v {
        AttrValue::Float(f) => Some(*f),
        other => other.as_i64().map(|i| i as f64),
    }
}

/// The battery percentage for a voltage in mV (zha-quirks' curve, rounded to half percents).
pub fn battery_percent(mv: f64) -> f64 {
    let mv = mv.clamp(BATTERY_MIN_MV, BATTERY_MAX_MV);
    ((mv - BATTERY_MIN_MV) * 200.0 / (BATTERY_MAX_MV - BATTERY_MIN_MV)).round() / 2.0
}

/// Readings from the tagged values of a device of `model`; the second element counts the tags
/// left undecoded.
pub fn decode(model: Option<&str>, tlv: &[(u8, AttrValue)]) -> (Vec<Decoded>, usize) {
    let model = model.unwrap_or_default();
    let weather = WEATHER.contains(&model);
    let plug = PLUGS.contains(&model);
    let mut out = Vec::new();
    let mut unknown = 0;
    for (tag, v) in tlv {
        let Some(x) = num(v) else {
            unknown += 1;
            continue;
        };
        match tag {
            1 => {
                out.push(Decoded::Float("battery_voltage", x / 1000.0, Some("V")));
                out.push(Decoded::Float("battery", battery_percent(x), Some("%")));
            }
            3 => out.push(Decoded::Float("device_temperature", x, Some("°C"))),
            100 if weather => out.push(Decoded::Float("temperature", x / 100.0, Some("°C"))),
            101 if weather => out.push(Decoded::Float("humidity", x / 100.0, Some("%"))),
            102 if weather => out.push(Decoded::Float(
                "pressure",
                if model == "lumi.weather" {
                    x / 100.0
                } else {
                    x
                },
                Some("hPa"),
            )),
            11 if model == MOTION_LUX => out.push(Decoded::Float("illuminance", x, Some("lx"))),
            149 if plug => out.push(Decoded::Float("energy", x, Some("kWh"))),
            150 if plug => out.push(Decoded::Float("voltage", x / 10.0, Some("V"))),
            152 if plug => out.push(Decoded::Float("power", x, Some("W"))),
            _ => unknown += 1,
        }
    }
    (out, unknown)
}

const fn f(point: &'static str, unit: &'static str, class: &'static str) -> Measure {
    Measure {
        point,
        unit: Some(unit),
        class: Some(class),
        kind: MeasureKind::Float,
    }
}

const COMMON: [Measure; 3] = [
    f("battery", "%", "battery"),
    f("battery_voltage", "V", "voltage"),
    f("device_temperature", "°C", "temperature"),
];
const WEATHER_POINTS: [Measure; 3] = [
    f("temperature", "°C", "temperature"),
    f("humidity", "%", "humidity"),
    f("pressure", "hPa", "pressure"),
];
const PLUG_POINTS: [Measure; 3] = [
    f("energy", "kWh", "energy"),
    f("voltage", "V", "voltage"),
    f("power", "W", "power"),
];
const MOTION_POINTS: [Measure; 1] = [f("illuminance", "lx", "illuminance")];

/// The points a LUMI device of `model` reports through 0xFF01 (declared with the others).
pub fn points(model: Option<&str>) -> Vec<Measure> {
    let model = model.unwrap_or_default();
    let mut v = COMMON.to_vec();
    if WEATHER.contains(&model) {
        v.extend_from_slice(&WEATHER_POINTS);
    } else if PLUGS.contains(&model) {
        v.extend_from_slice(&PLUG_POINTS);
    } else if model == MOTION_LUX {
        v.extend_from_slice(&MOTION_POINTS);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn battery_curve_is_zha_quirks() {
        assert_eq!(battery_percent(3100.0), 100.0);
        assert_eq!(battery_percent(3300.0), 100.0);
        assert_eq!(battery_percent(2820.0), 0.0);
        assert_eq!(battery_percent(2000.0), 0.0);
        // (3005 − 2820) × 200 / 280 = 132.14 → 132 half percents.
        assert_eq!(battery_percent(3005.0), 66.0);
    }

    #[test]
    fn truncated_and_unknown_tags_do_not_panic() {
        let (v, cut) = parse_tlv(&[0x01, 0x21, 0xBD]);
        assert!(v.is_empty() && cut);
        let (v, cut) = parse_tlv(&[0x01, 0x21, 0xBD, 0x0B, 0x00]);
        assert_eq!(v, vec![(1, AttrValue::Uint(0x0BBD))]);
        assert!(!cut);
        let (v, cut) = parse_tlv(&[0x05, 0xFE, 0x00]);
        assert!(v.is_empty() && cut);
        let (d, unknown) = decode(Some("lumi.sensor_magnet.aq2"), &[(100, AttrValue::Uint(1))]);
        assert!(d.is_empty());
        assert_eq!(unknown, 1);
    }
}
