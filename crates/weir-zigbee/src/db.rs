//! The device database: what the interview of each paired device found, kept in the source's
//! state directory (`devices.json`) so a restart needs no re-pairing.
//!
//! Invariants: the file is replaced atomically (written beside it, fsynced, renamed), so a crash
//! leaves the old or the new database, never a torn one; an unreadable file is reported and set
//! aside (`devices.json.bad`), never silently overwritten.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One endpoint's simple descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: u8,
    pub profile: u16,
    pub device_type: u16,
    pub in_clusters: Vec<u16>,
    pub out_clusters: Vec<u16>,
}

/// A paired device.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DbDevice {
    /// IEEE address as `00:12:4b:…`.
    pub ieee: String,
    pub nwk: u16,
    /// `coordinator`, `router` or `end_device`.
    pub logical_type: String,
    pub mains_powered: bool,
    pub endpoints: Vec<Endpoint>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    /// The interview got every answer.
    pub interviewed: bool,
    /// An IAS zone's type (ZCL §8.2.2.2.1.3), read at the interview.
    #[serde(default)]
    pub ias_zone_type: Option<u16>,
    /// Multipliers and divisors of electrical and metering readings, read at the interview.
    #[serde(default)]
    pub scales: crate::zcl::Scales,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("device database {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// The devices by IEEE address (u64).
#[derive(Debug)]
pub struct DeviceDb {
    path: PathBuf,
    pub devices: BTreeMap<u64, DbDevice>,
}

impl DeviceDb {
    pub fn open(dir: &Path) -> DeviceDb {
        let path = dir.join("devices.json");
        let devices = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<DbDevice>>(&bytes) {
                Ok(list) => list
                    .into_iter()
                    .filter_map(|d| crate::config::parse_ieee(&d.ieee).map(|k| (k, d)))
                    .collect(),
                Err(e) => {
                    let bad = dir.join("devices.json.bad");
                    tracing::error!(
                        file = %path.display(),
                        "device database unreadable ({e}); set aside as {}, devices must re-join",
                        bad.display()
                    );
                    let _ = std::fs::rename(&path, &bad);
                    BTreeMap::new()
                }
            },
            Err(_) => BTreeMap::new(),
        };
        DeviceDb { path, devices }
    }

    pub fn save(&self) -> Result<(), DbError> {
        let err = |error| DbError::Io {
            path: self.path.clone(),
            error,
        };
        let tmp = self.path.with_extension("json.tmp");
        let list: Vec<&DbDevice> = self.devices.values().collect();
        let body = serde_json::to_vec_pretty(&list).expect("plain data serialises");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_reloads_and_sets_a_corrupt_file_aside() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DeviceDb::open(dir.path());
        assert!(db.devices.is_empty());
        let d = DbDevice {
            ieee: "00:12:4b:00:1c:aa:bb:01".into(),
            nwk: 0x1234,
            logical_type: "end_device".into(),
            mains_powered: false,
            endpoints: vec![Endpoint {
                id: 1,
                profile: 0x0104,
                device_type: 0x0302,
                in_clusters: vec![0, 0x0402],
                out_clusters: vec![],
            }],
            manufacturer: Some("Weir Test".into()),
            model: Some("TH-1".into()),
            interviewed: true,
            ias_zone_type: None,
            scales: Default::default(),
        };
        db.devices.insert(0x00124b001caabb01, d.clone());
        db.save().unwrap();
        assert_eq!(DeviceDb::open(dir.path()).devices[&0x00124b001caabb01], d);
        std::fs::write(dir.path().join("devices.json"), b"{not json").unwrap();
        assert!(DeviceDb::open(dir.path()).devices.is_empty());
        assert!(dir.path().join("devices.json.bad").exists());
    }
}
