//! The `zigbee` source section of gateway.yaml.
//!
//! ```yaml
//! sources:
//!   - name: zigbee
//!     kind: zigbee
//!     serial: { port: /dev/serial/by-id/usb-ITead_Sonoff_Zigbee_3.0_USB_Dongle_Plus-if00-port0, baud: 115200 }
//!     channel: 15
//!     pan_id: 0x1a62
//!     extended_pan_id: "dd:dd:dd:dd:dd:dd:dd:dd"
//!     permit_join_s: 0
//!     devices:
//!       "00:12:4b:00:1c:aa:bb:01": gh1/soil-north
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use weir_serial::SerialSettings;

/// The Zigbee Alliance's well-known default network key ("ZigBeeAlliance09" is the link key;
/// this is the network key many sticks ship with): anyone can decrypt a network that uses it.
pub const DEFAULT_NETWORK_KEY: [u8; 16] = [
    0x01, 0x03, 0x05, 0x07, 0x09, 0x0B, 0x0D, 0x0F, 0x00, 0x02, 0x04, 0x06, 0x08, 0x0A, 0x0C, 0x0D,
];

/// A Z-Stack ZNP coordinator on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZigbeeConfig {
    /// The stick's serial port (Z-Stack ZNP speaks 115200 8N1).
    pub serial: SerialSettings,
    /// 2.4 GHz channel 11–26 used when a network is formed (ignored when the stick already
    /// holds one: it is adopted, never re-formed).
    #[serde(default = "default_channel")]
    pub channel: u8,
    /// PAN id of a network formed here.
    #[serde(default = "default_pan_id")]
    pub pan_id: u16,
    /// Extended PAN id of a network formed here, 8 bytes as `aa:bb:…` (most significant first).
    #[serde(default = "default_ext_pan_id")]
    pub extended_pan_id: String,
    /// The network key as 32 hex digits. Absent (recommended): generated at random once and kept
    /// in the source's state directory (`network.key`, mode 0600), never printed.
    #[serde(default)]
    pub network_key: Option<String>,
    /// Open the network for joining this many seconds after every start (0–254; 0: closed).
    #[serde(default)]
    pub permit_join_s: u8,
    /// Device ids by IEEE address (`"00:12:4b:…": gh1/soil-north`); others are `zigbee/<ieee>`.
    #[serde(default)]
    pub devices: BTreeMap<String, String>,
    /// The coordinator's own device id (point `permit_join`, writable: seconds to open).
    #[serde(default = "default_coordinator_id")]
    pub coordinator_id: String,
    /// How long to wait for an SRSP.
    #[serde(default = "default_sreq_timeout_ms")]
    pub sreq_timeout_ms: u64,
    /// How long to wait for a device's answers during its interview and for a command's
    /// confirmation and default response.
    #[serde(default = "default_device_timeout_ms")]
    pub device_timeout_ms: u64,
    /// A battery device silent this long is offline (default 25 h: sleepy sensors report rarely).
    #[serde(default = "default_battery_offline_after_s")]
    pub battery_offline_after_s: u64,
    /// A mains device silent this long is checked (a read of a cheap attribute); it is offline
    /// when the check is not delivered.
    #[serde(default = "default_mains_check_after_s")]
    pub mains_check_after_s: u64,
    /// First delay before reopening a lost coordinator (doubled up to 30 s, with jitter).
    #[serde(default = "default_reopen_ms")]
    pub reopen_backoff_ms: u64,
}

fn default_channel() -> u8 {
    15
}
fn default_pan_id() -> u16 {
    0x1A62
}
fn default_ext_pan_id() -> String {
    "dd:dd:dd:dd:dd:dd:dd:dd".into()
}
fn default_coordinator_id() -> String {
    "zigbee/coordinator".into()
}
fn default_sreq_timeout_ms() -> u64 {
    6000
}
fn default_device_timeout_ms() -> u64 {
    10_000
}
fn default_battery_offline_after_s() -> u64 {
    25 * 3600
}
fn default_mains_check_after_s() -> u64 {
    600
}
fn default_reopen_ms() -> u64 {
    500
}

/// `00:12:4b:…` or `00124b…` (most significant byte first) → the 64-bit address.
pub fn parse_ieee(s: &str) -> Option<u64> {
    let hex: String = s.chars().filter(|c| *c != ':' && *c != '-').collect();
    (hex.len() == 16).then(|| u64::from_str_radix(&hex, 16).ok())?
}

/// The address as `00:12:4b:00:1c:aa:bb:01`.
pub fn format_ieee(v: u64) -> String {
    v.to_be_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub fn parse_key(s: &str) -> Option<[u8; 16]> {
    let hex: String = s
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if hex.len() != 32 {
        return None;
    }
    let mut k = [0u8; 16];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(k)
}

impl ZigbeeConfig {
    /// Problems as (key, message); empty when the section is usable.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = self
            .serial
            .validate()
            .into_iter()
            .map(|(k, m)| (format!("serial.{k}"), m))
            .collect();
        if !(11..=26).contains(&self.channel) {
            p.push(("channel".into(), "must be 11–26".into()));
        }
        if self.pan_id == 0xFFFF || self.pan_id == 0 {
            p.push(("pan_id".into(), "must not be 0x0000 or 0xFFFF".into()));
        }
        if parse_ieee(&self.extended_pan_id).is_none() {
            p.push((
                "extended_pan_id".into(),
                "must be 8 bytes like dd:dd:dd:dd:dd:dd:dd:dd".into(),
            ));
        }
        if let Some(k) = &self.network_key {
            if parse_key(k).is_none() {
                p.push(("network_key".into(), "must be 32 hex digits".into()));
            }
        }
        if self.permit_join_s == 255 {
            p.push(("permit_join_s".into(), "must be 0–254".into()));
        }
        for (ieee, id) in &self.devices {
            if parse_ieee(ieee).is_none() {
                p.push((
                    format!("devices.{ieee}"),
                    "not an IEEE address (8 bytes like 00:12:4b:00:1c:aa:bb:01)".into(),
                ));
            }
            if let Err(e) = weir_core::validate_device_id(id) {
                p.push((format!("devices.{ieee}"), e.to_string()));
            }
        }
        if let Err(e) = weir_core::validate_device_id(&self.coordinator_id) {
            p.push(("coordinator_id".into(), e.to_string()));
        }
        if self.battery_offline_after_s == 0 || self.mains_check_after_s == 0 {
            p.push((
                "mains_check_after_s".into(),
                "availability periods must be positive".into(),
            ));
        }
        if self.sreq_timeout_ms == 0 || self.device_timeout_ms == 0 {
            p.push(("sreq_timeout_ms".into(), "timeouts must be positive".into()));
        }
        p
    }

    /// The device id of `ieee`: its configured name, else `zigbee/<ieee as 16 hex digits>`.
    pub fn device_id(&self, ieee: u64) -> String {
        self.devices
            .iter()
            .find(|(k, _)| parse_ieee(k) == Some(ieee))
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("zigbee/{ieee:016x}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_defaults_and_refuses_unknown_keys() {
        let c: ZigbeeConfig = serde_yaml::from_str(
            "serial: { port: /dev/ttyUSB0, baud: 115200 }\ndevices: { '00:12:4b:00:1c:aa:bb:01': gh1/soil }\n",
        )
        .unwrap();
        assert!(c.validate().is_empty(), "{:?}", c.validate());
        assert_eq!(c.channel, 15);
        assert_eq!(c.device_id(0x00124b001caabb01), "gh1/soil");
        assert_eq!(c.device_id(0x00124b001caabb02), "zigbee/00124b001caabb02");
        assert!(serde_yaml::from_str::<ZigbeeConfig>(
            "serial: { port: /dev/ttyUSB0, baud: 115200 }\nchanel: 11\n"
        )
        .is_err());
        let bad: ZigbeeConfig = serde_yaml::from_str(
            "serial: { port: /dev/ttyUSB0, baud: 115200 }\nchannel: 27\nextended_pan_id: x\n",
        )
        .unwrap();
        let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["channel", "extended_pan_id"]);
    }

    #[test]
    fn ieee_round_trip() {
        assert_eq!(
            format_ieee(parse_ieee("00:12:4b:00:1c:aa:bb:01").unwrap()),
            "00:12:4b:00:1c:aa:bb:01"
        );
    }
}
