//! `weir zigbee devices`: the device database of a `zigbee` source as a table or JSON, read without
//! writing anything (safe while the daemon runs; see [`crate::db::read_only`]).

use std::path::Path;

use serde::Serialize;

use crate::config::{parse_ieee, ZigbeeConfig};
use crate::db::{read_only, DbDevice, DbError};

/// One listed device (the `--json` form).
#[derive(Debug, Serialize, PartialEq)]
pub struct Listed {
    pub ieee: String,
    /// Network (short) address as `0x1234`.
    pub nwk: String,
    /// The device id: its name in gateway.yaml, else `zigbee/<ieee>`.
    pub name: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// `mains` or `battery`.
    pub power: &'static str,
    pub logical_type: String,
    pub interviewed: bool,
    pub lqi: Option<u8>,
    /// Unix milliseconds.
    pub last_seen_ms: Option<i64>,
}

fn listed(cfg: &ZigbeeConfig, d: DbDevice) -> Listed {
    Listed {
        name: parse_ieee(&d.ieee).map_or_else(|| d.ieee.clone(), |i| cfg.device_id(i)),
        nwk: format!("0x{:04X}", d.nwk),
        ieee: d.ieee,
        manufacturer: d.manufacturer,
        model: d.model,
        power: if d.mains_powered { "mains" } else { "battery" },
        logical_type: d.logical_type,
        interviewed: d.interviewed,
        lqi: d.lqi,
        last_seen_ms: d.last_seen_ms,
    }
}

/// The devices in the database of a source configured as `cfg` whose state directory is
/// `state_dir`.
pub fn list(state_dir: &Path, cfg: &ZigbeeConfig) -> Result<Vec<Listed>, DbError> {
    Ok(read_only(state_dir)?
        .into_iter()
        .map(|d| listed(cfg, d))
        .collect())
}

fn ago(now_ms: i64, t: Option<i64>) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let s = (now_ms - t).max(0) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// The devices as a table (one header line, one line per device), last-seen times relative to
/// `now_ms`.
pub fn table(list: &[Listed], now_ms: i64) -> String {
    let mut out = format!(
        "{:<23} {:<6} {:<28} {:<28} {:<7} {:>3} {:>9}\n",
        "IEEE", "NWK", "NAME", "MODEL", "POWER", "LQI", "LAST SEEN"
    );
    for d in list {
        let model = match (&d.manufacturer, &d.model) {
            (Some(m), Some(x)) => format!("{m} {x}"),
            (None, Some(x)) => x.clone(),
            (Some(m), None) => m.clone(),
            (None, None) => "?".into(),
        };
        let model = if d.interviewed {
            model
        } else {
            format!("{model} (interview incomplete)")
        };
        out.push_str(&format!(
            "{:<23} {:<6} {:<28} {:<28} {:<7} {:>3} {:>9}\n",
            d.ieee,
            d.nwk,
            d.name,
            model,
            d.power,
            d.lqi.map_or_else(|| "-".to_string(), |l| l.to_string()),
            ago(now_ms, d.last_seen_ms)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_configured_devices_and_says_how_long_ago() {
        let cfg: ZigbeeConfig = serde_yaml::from_str(
            "serial: { port: /dev/null, baud: 115200 }\ndevices:\n  \"00:12:4b:00:1c:aa:bb:02\": gh1/plug\n",
        )
        .unwrap();
        let mk = |ieee: &str, mains, lqi, seen| {
            listed(
                &cfg,
                DbDevice {
                    ieee: ieee.into(),
                    nwk: 0x4a21,
                    logical_type: "router".into(),
                    mains_powered: mains,
                    endpoints: vec![],
                    manufacturer: Some("Weir Test".into()),
                    model: Some("PLUG-1".into()),
                    interviewed: true,
                    ias_zone_type: None,
                    scales: Default::default(),
                    lqi,
                    last_seen_ms: seen,
                },
            )
        };
        let now = 1_800_000_000_000;
        let l = [
            mk(
                "00:12:4b:00:1c:aa:bb:02",
                true,
                Some(120),
                Some(now - 5_000),
            ),
            mk("00:12:4b:00:1c:aa:bb:01", false, None, None),
        ];
        let t = table(&l, now);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("IEEE "));
        let plug: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            plug,
            [
                "00:12:4b:00:1c:aa:bb:02",
                "0x4A21",
                "gh1/plug",
                "Weir",
                "Test",
                "PLUG-1",
                "mains",
                "120",
                "5s",
                "ago"
            ]
        );
        assert!(lines[2].contains("zigbee/00124b001caabb01"));
        assert!(lines[2].contains("battery"));
        assert!(lines[2].ends_with(" -     never"), "{}", lines[2]);
        assert_eq!(ago(now, Some(now - 3 * 3_600_000)), "3h ago");
    }
}
