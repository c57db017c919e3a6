//! Advert decoders with no I/O: bytes in, measurements out.
//!
//! Each decoder takes the payload of one AD structure as BlueZ reports it (`ServiceData` keyed
//! by UUID, `ManufacturerData` keyed by company id) and returns a [`Decoded`]: named
//! measurements with units and class hints, an optional dedupe key (BTHome packet id or
//! encryption counter, Ruuvi measurement sequence, pvvx/ATC frame counter) and, for beacons,
//! the beacon's identity. A decoder never panics on any input (property-tested); a payload it
//! cannot read is a [`DecodeError`] the source counts, never a reading.
//!
//! Formats and their specifications:
//! * [`bthome`]: BTHome v2, service data UUID 0xFCD2 (<https://bthome.io/format/>,
//!   encryption <https://bthome.io/encryption/>).
//! * [`ruuvi`]: RuuviTag data format 5 "RAWv2", manufacturer 0x0499
//!   (<https://docs.ruuvi.com/communication/bluetooth-advertisements/data-format-5-rawv2>).
//! * [`pvvx`]: the pvvx custom and ATC1441 formats on service data UUID 0x181A
//!   (<https://github.com/pvvx/ATC_MiThermometer#custom-format-all-data-little-endian>,
//!   <https://github.com/atc1441/ATC_MiThermometer#advertising-format-of-the-custom-firmware>).
//! * [`beacon`]: Apple iBeacon (manufacturer 0x004C, type 0x02 length 0x15) and Google
//!   Eddystone UID/URL/TLM (service data UUID 0xFEAA,
//!   <https://github.com/google/eddystone/blob/master/protocol-specification.md>), for presence.

pub mod beacon;
pub mod bthome;
pub mod pvvx;
pub mod ruuvi;

use std::borrow::Cow;

use weir_core::Value;

/// One measured value of an advert.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// Point name (`temperature`, `humidity`, `temperature_2` for a repeated object).
    pub name: Cow<'static, str>,
    /// Class hint for northbound formats (Home Assistant device class names).
    pub class: &'static str,
    pub unit: Option<&'static str>,
    pub value: Value,
}

impl Measurement {
    pub fn new(
        name: &'static str,
        class: &'static str,
        unit: Option<&'static str>,
        value: Value,
    ) -> Measurement {
        Measurement {
            name: Cow::Borrowed(name),
            class,
            unit,
            value,
        }
    }
}

/// Which decoder read an advert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    BtHome,
    Ruuvi,
    Pvvx,
    Atc1441,
    IBeacon,
    Eddystone,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::BtHome => "bthome",
            Format::Ruuvi => "ruuvi",
            Format::Pvvx => "pvvx",
            Format::Atc1441 => "atc1441",
            Format::IBeacon => "ibeacon",
            Format::Eddystone => "eddystone",
        }
    }

    /// How the registry's `model` names a device speaking this format.
    pub fn model(self) -> &'static str {
        match self {
            Format::BtHome => "BTHome v2",
            Format::Ruuvi => "RuuviTag (RAWv2)",
            Format::Pvvx => "pvvx custom firmware",
            Format::Atc1441 => "ATC1441 firmware",
            Format::IBeacon => "iBeacon",
            Format::Eddystone => "Eddystone",
        }
    }
}

/// What an advert said.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub format: Format,
    pub measurements: Vec<Measurement>,
    /// A number the device changes with every new measurement (BTHome packet id or encryption
    /// counter, Ruuvi sequence, pvvx/ATC counter): equal keys are the same measurement repeated.
    pub dedupe: Option<u32>,
    /// BTHome encryption counter (checked against replays by the caller).
    pub counter: Option<u32>,
    /// Firmware version the device announced (BTHome 0xF1/0xF2).
    pub firmware: Option<String>,
    /// Beacon identity (`ibeacon:<uuid>:<major>:<minor>`, `eddystone:<namespace>:<instance>`).
    pub beacon: Option<String>,
    /// A problem after some objects were read (an unknown BTHome object id ends the packet):
    /// the measurements before it are kept, the problem is counted.
    pub problem: Option<DecodeError>,
}

impl Decoded {
    pub fn new(format: Format) -> Decoded {
        Decoded {
            format,
            measurements: Vec::new(),
            dedupe: None,
            counter: None,
            firmware: None,
            beacon: None,
            problem: None,
        }
    }
}

/// Why an advert gave no reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{format}: {len} bytes is not a valid length")]
    Length { format: &'static str, len: usize },
    #[error("{format}: unsupported version or frame type {version}")]
    Version { format: &'static str, version: u8 },
    #[error("bthome: object 0x{id:02X} is unknown; the rest of the packet cannot be read")]
    UnknownObject { id: u8 },
    #[error("bthome: object 0x{id:02X} is truncated")]
    Truncated { id: u8 },
    #[error("bthome: advert is encrypted and no bind key is configured")]
    NoKey,
    #[error("bthome: decryption failed (wrong bind key or corrupted advert)")]
    WrongKey,
    #[error("bthome: encryption counter {counter} is not above the last accepted {last} (replay)")]
    Replay { counter: u32, last: u32 },
    #[error("bthome: a device with a bind key sent an unencrypted advert (downgrade refused)")]
    Downgrade,
}

impl DecodeError {
    /// Label for the `weir_ble_decode_errors_total{kind}` counter.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Length { .. } => "length",
            DecodeError::Version { .. } => "version",
            DecodeError::UnknownObject { .. } => "unknown_object",
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::NoKey => "no_key",
            DecodeError::WrongKey => "wrong_key",
            DecodeError::Replay { .. } => "replay",
            DecodeError::Downgrade => "downgrade",
        }
    }
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// `raw · mul / 10^p` as the `f64` nearest to that decimal (division by an exact power of ten).
pub(crate) fn scaled(raw: i64, mul: i64, p: u32) -> f64 {
    const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6];
    (raw as f64 * mul as f64) / POW10[p as usize]
}

#[cfg(test)]
pub(crate) fn tests_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Decode service data of a 16-bit UUID; `None` when no decoder knows the UUID.
pub fn service_data(
    uuid16: u16,
    data: &[u8],
    mac: [u8; 6],
    keys: &mut bthome::KeyState,
) -> Option<Result<Decoded, DecodeError>> {
    match uuid16 {
        bthome::UUID16 => Some(bthome::decode(data, mac, keys)),
        pvvx::UUID16 => Some(pvvx::decode(data)),
        beacon::EDDYSTONE_UUID16 => Some(beacon::decode_eddystone(data)),
        _ => None,
    }
}

/// Decode manufacturer data of a company id; `None` when no decoder knows it (or an Apple
/// advert that is not an iBeacon).
pub fn manufacturer_data(company: u16, data: &[u8]) -> Option<Result<Decoded, DecodeError>> {
    match company {
        ruuvi::COMPANY_ID => Some(ruuvi::decode(data)),
        beacon::APPLE_COMPANY_ID => beacon::decode_ibeacon(data).transpose(),
        _ => None,
    }
}
