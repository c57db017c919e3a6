//! The device database: what the interview of each paired device found, plus its network address,
//! link quality and when it was last heard, kept in the source's state directory as SQLite
//! (`devices.sqlite`) so a restart needs no re-pairing and `weir zigbee devices` can list it.
//!
//! Schema (`PRAGMA user_version` 1), one row per device:
//!
//! ```sql
//! devices(ieee TEXT PRIMARY KEY,        -- "00:12:4b:00:1c:aa:bb:01"
//!         nwk INTEGER, logical_type TEXT, mains_powered INTEGER, manufacturer TEXT, model TEXT,
//!         interviewed INTEGER, ias_zone_type INTEGER,
//!         endpoints TEXT,               -- JSON: [{id, profile, device_type, in_clusters, out_clusters}]
//!         scales TEXT,                  -- JSON: multipliers/divisors read at the interview
//!         lqi INTEGER, last_seen_ms INTEGER)   -- Unix ms; NULL until heard
//! ```
//!
//! Invariants:
//! * The daemon is the only writer (WAL journal, `synchronous=FULL`: a paired device survives a
//!   power cut once [`DeviceDb::put`] returned). Readers ([`read_only`]) open it with
//!   `SQLITE_OPEN_READONLY` and never block or disturb it.
//! * The interview's result is written when it changes ([`DeviceDb::put`], [`DeviceDb::delete`]);
//!   link quality and last-seen change with every message, so they are kept in memory and written
//!   in one transaction by [`DeviceDb::flush_seen`] (the adapter does so every
//!   [`SEEN_FLUSH_INTERVAL`] and when it stops): after a crash they may be that much older.
//! * Migration: a `devices.json` left by an earlier version is imported once, in the same
//!   transaction that creates the table, then renamed `devices.json.imported`; an unreadable one
//!   is set aside as `devices.json.bad` (its devices must re-join), never silently dropped. A
//!   database SQLite cannot read is set aside as `devices.sqlite.bad` the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};
use serde::{Deserialize, Serialize};

/// The database file in the source's state directory.
pub const DB_FILE: &str = "devices.sqlite";
/// The file earlier versions kept (imported once).
pub const LEGACY_JSON_FILE: &str = "devices.json";
/// How often the adapter writes link quality and last-seen times.
pub const SEEN_FLUSH_INTERVAL: Duration = Duration::from_secs(10);
const SCHEMA_VERSION: i64 = 1;

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
    /// Link quality of the last message heard from it (AF_INCOMING_MSG `LinkQuality`, 0–255).
    #[serde(default)]
    pub lqi: Option<u8>,
    /// When it was last heard, Unix milliseconds.
    #[serde(default)]
    pub last_seen_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("device database {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("device database {}: {op}: {error}", path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        error: rusqlite::Error,
    },
    #[error("device database {}: row {ieee}: {what}", path.display())]
    BadRow {
        path: PathBuf,
        ieee: String,
        what: String,
    },
}

/// The devices by IEEE address (u64), in memory, backed by the SQLite file.
#[derive(Debug)]
pub struct DeviceDb {
    path: PathBuf,
    /// Behind a mutex only so the adapter's future is `Send` + `Sync` (`Connection` is not `Sync`);
    /// the adapter is its only user.
    conn: std::sync::Mutex<Connection>,
    pub devices: BTreeMap<u64, DbDevice>,
    /// Devices whose `lqi`/`last_seen_ms` changed since the last [`DeviceDb::flush_seen`].
    seen_dirty: BTreeSet<u64>,
}

const CREATE: &str = "CREATE TABLE IF NOT EXISTS devices (
    ieee TEXT PRIMARY KEY NOT NULL,
    nwk INTEGER NOT NULL,
    logical_type TEXT NOT NULL,
    mains_powered INTEGER NOT NULL,
    manufacturer TEXT,
    model TEXT,
    interviewed INTEGER NOT NULL,
    ias_zone_type INTEGER,
    endpoints TEXT NOT NULL,
    scales TEXT NOT NULL,
    lqi INTEGER,
    last_seen_ms INTEGER
)";

const UPSERT: &str = "INSERT INTO devices (ieee, nwk, logical_type, mains_powered, manufacturer,
    model, interviewed, ias_zone_type, endpoints, scales, lqi, last_seen_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT(ieee) DO UPDATE SET nwk = ?2, logical_type = ?3, mains_powered = ?4,
    manufacturer = ?5, model = ?6, interviewed = ?7, ias_zone_type = ?8, endpoints = ?9,
    scales = ?10, lqi = ?11, last_seen_ms = ?12";

const SELECT: &str = "SELECT ieee, nwk, logical_type, mains_powered, manufacturer, model,
    interviewed, ias_zone_type, endpoints, scales, lqi, last_seen_ms FROM devices ORDER BY ieee";

fn upsert(conn: &Connection, d: &DbDevice) -> rusqlite::Result<()> {
    let endpoints = serde_json::to_string(&d.endpoints).expect("plain data serialises");
    let scales = serde_json::to_string(&d.scales).expect("plain data serialises");
    conn.prepare_cached(UPSERT)?.execute(params![
        d.ieee,
        d.nwk,
        d.logical_type,
        d.mains_powered,
        d.manufacturer,
        d.model,
        d.interviewed,
        d.ias_zone_type,
        endpoints,
        scales,
        d.lqi,
        d.last_seen_ms,
    ])?;
    Ok(())
}

fn load_all(conn: &Connection, path: &Path) -> Result<Vec<DbDevice>, DbError> {
    let sql = |error| DbError::Sqlite {
        path: path.to_path_buf(),
        op: "read devices",
        error,
    };
    let mut stmt = conn.prepare(SELECT).map_err(sql)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                DbDevice {
                    ieee: r.get(0)?,
                    nwk: r.get(1)?,
                    logical_type: r.get(2)?,
                    mains_powered: r.get(3)?,
                    manufacturer: r.get(4)?,
                    model: r.get(5)?,
                    interviewed: r.get(6)?,
                    ias_zone_type: r.get(7)?,
                    endpoints: Vec::new(),
                    scales: Default::default(),
                    lqi: r.get(10)?,
                    last_seen_ms: r.get(11)?,
                },
                r.get::<_, String>(8)?,
                r.get::<_, String>(9)?,
            ))
        })
        .map_err(sql)?;
    let mut out = Vec::new();
    for row in rows {
        let (mut d, endpoints, scales) = row.map_err(sql)?;
        let bad = |what: String| DbError::BadRow {
            path: path.to_path_buf(),
            ieee: d.ieee.clone(),
            what,
        };
        d.endpoints =
            serde_json::from_str(&endpoints).map_err(|e| bad(format!("endpoints: {e}")))?;
        d.scales = serde_json::from_str(&scales).map_err(|e| bad(format!("scales: {e}")))?;
        out.push(d);
    }
    Ok(out)
}

/// The devices in `dir`'s database, read without writing anything (safe while the daemon runs).
/// No database yet: the legacy JSON file if there is one, else an empty list.
pub fn read_only(dir: &Path) -> Result<Vec<DbDevice>, DbError> {
    let path = dir.join(DB_FILE);
    if !path.exists() {
        let json = dir.join(LEGACY_JSON_FILE);
        return match std::fs::read(&json) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DbError::Io {
                path: json,
                error: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(DbError::Io { path: json, error }),
        };
    }
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|error| DbError::Sqlite {
        path: path.clone(),
        op: "open read-only",
        error,
    })?;
    let _ = conn.busy_timeout(Duration::from_secs(5));
    load_all(&conn, &path)
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl DeviceDb {
    /// Open (or create) the database in `dir`, importing a legacy `devices.json` once.
    pub fn open(dir: &Path) -> Result<DeviceDb, DbError> {
        let path = dir.join(DB_FILE);
        match Self::open_at(dir, &path) {
            Err(DbError::Sqlite {
                error: rusqlite::Error::SqliteFailure(e, _),
                ..
            }) if matches!(
                e.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
            {
                let bad = dir.join(format!("{DB_FILE}.bad"));
                tracing::error!(
                    file = %path.display(),
                    "device database unreadable ({e}); set aside as {}, devices must re-join",
                    bad.display()
                );
                std::fs::rename(&path, &bad).map_err(|error| DbError::Io {
                    path: path.clone(),
                    error,
                })?;
                for ext in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(dir.join(format!("{DB_FILE}{ext}")));
                }
                Self::open_at(dir, &path)
            }
            r => r,
        }
    }

    fn open_at(dir: &Path, path: &Path) -> Result<DeviceDb, DbError> {
        let sql = |op| {
            move |error| DbError::Sqlite {
                path: path.to_path_buf(),
                op,
                error,
            }
        };
        let mut conn = Connection::open(path).map_err(sql("open"))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sql("busy_timeout"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("journal_mode=WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql("synchronous=FULL"))?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql("user_version"))?;
        if version == 0 {
            let tx = conn.transaction().map_err(sql("begin"))?;
            tx.execute(CREATE, []).map_err(sql("create table"))?;
            let imported = import_json(dir, &tx).map_err(sql("import devices.json"))?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(sql("user_version"))?;
            tx.commit().map_err(sql("commit"))?;
            if let Some(n) = imported {
                let json = dir.join(LEGACY_JSON_FILE);
                let done = dir.join(format!("{LEGACY_JSON_FILE}.imported"));
                tracing::info!(
                    file = %json.display(),
                    "imported {n} zigbee device(s) into {}; the old file is kept as {}",
                    path.display(), done.display()
                );
                std::fs::rename(&json, &done).map_err(|error| DbError::Io {
                    path: json.clone(),
                    error,
                })?;
            }
        } else if version > SCHEMA_VERSION {
            return Err(DbError::BadRow {
                path: path.to_path_buf(),
                ieee: "-".into(),
                what: format!(
                    "schema version {version} is newer than this build's {SCHEMA_VERSION}"
                ),
            });
        }
        let devices = load_all(&conn, path)?
            .into_iter()
            .filter_map(|d| crate::config::parse_ieee(&d.ieee).map(|k| (k, d)))
            .collect();
        Ok(DeviceDb {
            path: path.to_path_buf(),
            conn: std::sync::Mutex::new(conn),
            devices,
            seen_dirty: BTreeSet::new(),
        })
    }

    /// Write `ieee`'s row as it is in memory (after a pairing or a changed address).
    pub fn put(&mut self, ieee: u64) -> Result<(), DbError> {
        let Some(d) = self.devices.get(&ieee) else {
            return Ok(());
        };
        upsert(&self.conn(), d).map_err(|error| DbError::Sqlite {
            path: self.path.clone(),
            op: "write device",
            error,
        })?;
        self.seen_dirty.remove(&ieee);
        Ok(())
    }

    /// Remove `ieee` from memory and from the file.
    pub fn delete(&mut self, ieee: u64) -> Result<Option<DbDevice>, DbError> {
        let Some(d) = self.devices.remove(&ieee) else {
            return Ok(None);
        };
        self.seen_dirty.remove(&ieee);
        self.conn()
            .execute("DELETE FROM devices WHERE ieee = ?1", [&d.ieee])
            .map_err(|error| DbError::Sqlite {
                path: self.path.clone(),
                op: "delete device",
                error,
            })?;
        Ok(Some(d))
    }

    /// Note that `ieee` was heard now (with its link quality when the message carried one); kept
    /// in memory until [`DeviceDb::flush_seen`].
    pub fn seen(&mut self, ieee: u64, lqi: Option<u8>) {
        if let Some(d) = self.devices.get_mut(&ieee) {
            d.last_seen_ms = Some(unix_ms_now());
            if lqi.is_some() {
                d.lqi = lqi;
            }
            self.seen_dirty.insert(ieee);
        }
    }

    /// Write the link qualities and last-seen times noted since the last flush, in one
    /// transaction; how many rows were written.
    pub fn flush_seen(&mut self) -> Result<usize, DbError> {
        if self.seen_dirty.is_empty() {
            return Ok(0);
        }
        let sql = |op| {
            let path = self.path.clone();
            move |error| DbError::Sqlite { path, op, error }
        };
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(sql("begin"))?;
        let mut n = 0;
        {
            let mut st = tx
                .prepare_cached("UPDATE devices SET lqi = ?2, last_seen_ms = ?3 WHERE ieee = ?1")
                .map_err(sql("prepare"))?;
            for ieee in &self.seen_dirty {
                if let Some(d) = self.devices.get(ieee) {
                    n += st
                        .execute(params![d.ieee, d.lqi, d.last_seen_ms])
                        .map_err(sql("write last seen"))?;
                }
            }
        }
        tx.commit().map_err(sql("commit"))?;
        self.seen_dirty.clear();
        Ok(n)
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Insert the devices of a legacy `devices.json` (inside the creating transaction); `None` when
/// there is no such file. An unreadable file is set aside as `devices.json.bad`.
fn import_json(dir: &Path, conn: &Connection) -> rusqlite::Result<Option<usize>> {
    let json = dir.join(LEGACY_JSON_FILE);
    let Ok(bytes) = std::fs::read(&json) else {
        return Ok(None);
    };
    match serde_json::from_slice::<Vec<DbDevice>>(&bytes) {
        Ok(list) => {
            let mut n = 0;
            for d in &list {
                if crate::config::parse_ieee(&d.ieee).is_some() {
                    upsert(conn, d)?;
                    n += 1;
                } else {
                    tracing::warn!(file = %json.display(), "device with a bad IEEE address {:?} not imported", d.ieee);
                }
            }
            Ok(Some(n))
        }
        Err(e) => {
            let bad = dir.join(format!("{LEGACY_JSON_FILE}.bad"));
            tracing::error!(
                file = %json.display(),
                "old device database unreadable ({e}); set aside as {}, devices must re-join",
                bad.display()
            );
            let _ = std::fs::rename(&json, &bad);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sensor() -> DbDevice {
        DbDevice {
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
            lqi: None,
            last_seen_ms: None,
        }
    }

    const SENSOR: u64 = 0x00124b001caabb01;

    #[test]
    fn saves_reloads_deletes_and_reads_read_only_beside_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = DeviceDb::open(dir.path()).unwrap();
        assert!(db.devices.is_empty());
        let d = sensor();
        db.devices.insert(SENSOR, d.clone());
        db.put(SENSOR).unwrap();
        db.seen(SENSOR, Some(117));
        // Not flushed yet: the file still has no last-seen time.
        assert_eq!(read_only(dir.path()).unwrap()[0].last_seen_ms, None);
        assert_eq!(db.flush_seen().unwrap(), 1);
        assert_eq!(db.flush_seen().unwrap(), 0);
        // A reader while the writer holds the database open.
        let listed = read_only(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].lqi, Some(117));
        assert!(listed[0].last_seen_ms.unwrap() > 1_700_000_000_000);
        drop(db);
        let mut db = DeviceDb::open(dir.path()).unwrap();
        let got = &db.devices[&SENSOR];
        assert_eq!(got.endpoints, d.endpoints);
        assert_eq!(got.lqi, Some(117));
        assert_eq!(db.delete(SENSOR).unwrap().map(|d| d.ieee), Some(d.ieee));
        drop(db);
        assert!(DeviceDb::open(dir.path()).unwrap().devices.is_empty());
        assert!(read_only(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_json_database_is_imported_once_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        // The file as the JSON version wrote it (no lqi / last_seen_ms fields).
        let json = r#"[{"ieee":"00:12:4b:00:1c:aa:bb:01","nwk":4660,"logical_type":"end_device",
            "mains_powered":false,"endpoints":[{"id":1,"profile":260,"device_type":770,
            "in_clusters":[0,1026],"out_clusters":[]}],"manufacturer":"Weir Test","model":"TH-1",
            "interviewed":true,"ias_zone_type":null,"scales":{}}]"#;
        std::fs::write(dir.path().join(LEGACY_JSON_FILE), json).unwrap();
        // Before the daemon migrated it, the read-only listing reads the JSON file.
        assert_eq!(read_only(dir.path()).unwrap(), vec![sensor()]);
        let mut db = DeviceDb::open(dir.path()).unwrap();
        assert_eq!(db.devices[&SENSOR], sensor());
        assert!(!dir.path().join(LEGACY_JSON_FILE).exists());
        assert!(dir.path().join("devices.json.imported").exists());
        db.delete(SENSOR).unwrap();
        drop(db);
        // A JSON file that shows up again later is not imported a second time.
        std::fs::write(dir.path().join(LEGACY_JSON_FILE), json).unwrap();
        assert!(DeviceDb::open(dir.path()).unwrap().devices.is_empty());
    }

    #[test]
    fn unreadable_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LEGACY_JSON_FILE), b"{not json").unwrap();
        assert!(DeviceDb::open(dir.path()).unwrap().devices.is_empty());
        assert!(dir.path().join("devices.json.bad").exists());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_FILE), vec![0x5a; 8192]).unwrap();
        let mut db = DeviceDb::open(dir.path()).unwrap();
        assert!(dir.path().join("devices.sqlite.bad").exists());
        db.devices.insert(SENSOR, sensor());
        db.put(SENSOR).unwrap();
        assert_eq!(read_only(dir.path()).unwrap().len(), 1);
    }
}
