//! Upgrading in place: a Pi that was offline while Weir was upgraded still holds rows its old build
//! committed (outbox schema version 1 or 2: topic + JSON payload per row; version 3: typed rows,
//! a `batch` table, counters in `meta`). The new build (schema version 4) opens that file, keeps
//! every row and publishes them — v1/v2 rows as stored, v3 rows encoded from their record — in
//! order, before the rows it commits itself, and the per-device `seq` continues without a gap.

mod common;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

/// Rows the old build left behind, all for one device the simulator also reports.
const OLD_ROWS: u64 = 500;
const DEVICE: &str = "gh1/climate";

/// The schema of the builds before typed rows, exactly as they created it (version 1 tables, then
/// the version 2 dead-letter table).
const SCHEMA_V1: &str = "
CREATE TABLE outbox (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, enqueued_ns INTEGER NOT NULL);
CREATE TABLE batch (first_id INTEGER PRIMARY KEY, last_id INTEGER NOT NULL,
    enqueued_ns INTEGER NOT NULL);
CREATE INDEX batch_enqueued ON batch (enqueued_ns);
CREATE TABLE device_seq (device TEXT PRIMARY KEY, last_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (singleton INTEGER PRIMARY KEY CHECK (singleton = 0),
    write_gen INTEGER NOT NULL, last_id INTEGER NOT NULL, rows INTEGER NOT NULL,
    bytes INTEGER NOT NULL, dropped_for_space_total INTEGER NOT NULL,
    dropped_for_age_total INTEGER NOT NULL, max_bytes INTEGER NOT NULL);
";
const SCHEMA_V2_TAIL: &str = "
CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, enqueued_ns INTEGER NOT NULL,
    dead_ns INTEGER NOT NULL, reason TEXT NOT NULL);
";
/// What version 3 (typed rows) added, exactly as that build ran it.
const SCHEMA_V3_TAIL: &str = "
ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN sent_topic TEXT;
";

/// The value the old build stored for reading `seq`.
fn old_value(seq: u64) -> f64 {
    (15 + seq % 10) as f64 + 0.5
}

/// Writes an outbox of `version` holding `OLD_ROWS` telemetry rows of `DEVICE` (seq 1..=500) as
/// the old build encoded and committed them; returns (topic, payload) of each, in id order.
fn old_outbox(path: &std::path::Path, version: i32) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(SCHEMA_V1).unwrap();
    if version >= 2 {
        c.execute_batch(SCHEMA_V2_TAIL).unwrap();
    }
    if version >= 3 {
        c.execute_batch(SCHEMA_V3_TAIL).unwrap();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let tx = c.transaction().unwrap();
    let mut rows = Vec::new();
    let mut bytes = 0u64;
    for seq in 1..=OLD_ROWS {
        if version >= 3 {
            // A typed row: the device as key, one reading's record, its seq (a batch per poll).
            use weir_store::record::{encode_reading, QualityRef, ReadingRef, ValueRef};
            let mut body = Vec::new();
            encode_reading(
                &mut body,
                &ReadingRef {
                    point: "temperature",
                    value: ValueRef::F64(old_value(seq)),
                    unit: Some("°C"),
                    ts_ns: now - 1_000_000_000 + seq as i64,
                    quality: QualityRef::Good,
                },
            );
            bytes += (DEVICE.len() + body.len()) as u64 + 32;
            tx.execute(
                "INSERT INTO outbox (id, topic, payload, qos, retain, enqueued_ns, kind, seq) \
                 VALUES (?1, ?2, ?3, 1, 0, ?4, 1, ?1)",
                rusqlite::params![seq as i64, DEVICE, body, now],
            )
            .unwrap();
            if seq % 4 == 0 {
                tx.execute(
                    "INSERT INTO batch VALUES (?1, ?2, ?3)",
                    rusqlite::params![seq as i64 - 3, seq as i64, now],
                )
                .unwrap();
            }
            continue;
        }
        let topic = format!("t/{DEVICE}/temperature");
        let payload = format!(
            r#"{{"value":{}.5,"unit":"°C","ts":"2026-11-30T03:16:00.{seq:09}Z","quality":"good","seq":{seq}}}"#,
            15 + seq % 10
        )
        .into_bytes();
        bytes += (topic.len() + payload.len()) as u64 + 32;
        tx.execute(
            "INSERT INTO outbox (id, topic, payload, qos, retain, enqueued_ns) \
             VALUES (?1, ?2, ?3, 1, 0, ?4)",
            rusqlite::params![seq as i64, topic, payload, now],
        )
        .unwrap();
        rows.push((topic, payload));
    }
    if version < 3 {
        tx.execute(
            "INSERT INTO batch VALUES (1, ?1, ?2)",
            rusqlite::params![OLD_ROWS as i64, now],
        )
        .unwrap();
    }
    tx.execute(
        "INSERT INTO device_seq VALUES (?1, ?2)",
        rusqlite::params![DEVICE, OLD_ROWS as i64],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO meta VALUES (0, 1, ?1, ?1, ?2, 0, 0, 104857600)",
        rusqlite::params![OLD_ROWS as i64, bytes as i64],
    )
    .unwrap();
    tx.commit().unwrap();
    c.pragma_update(None, "application_id", 0x5745_4952)
        .unwrap();
    c.pragma_update(None, "user_version", version).unwrap();
    rows
}

fn upgrade_from(version: i32) {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let old = old_outbox(&dir.path().join("state").join("outbox.db"), version);
    let gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      readings_per_s: 200\n      total_readings: 400\n",
            "",
            "",
        ),
    );
    // Every old row arrives, as stored, and new rows of the same device follow them.
    wait_until(
        "the old rows and new ones after them",
        Duration::from_secs(60),
        || {
            seqs_by_device(&sub.snapshot(), "t")
                .get(DEVICE)
                .is_some_and(|s| s.iter().any(|q| *q > OLD_ROWS + 20))
        },
    );
    let msgs = sub.snapshot();
    if version < 3 {
        let old_set: HashSet<(String, Vec<u8>)> = old.iter().cloned().collect();
        let arrived_old: HashSet<(String, Vec<u8>)> = msgs
            .iter()
            .map(|m| (m.topic.clone(), m.payload.clone()))
            .filter(|m| old_set.contains(m))
            .collect();
        assert_eq!(
            arrived_old.len() as u64,
            OLD_ROWS,
            "every row of the version {version} outbox reached the subscriber byte for byte"
        );
    } else {
        // Typed rows are encoded at publish time: each arrives with the value it was stored with.
        let topic = format!("t/{DEVICE}/temperature");
        for seq in 1..=OLD_ROWS {
            let m = msgs
                .iter()
                .find(|m| m.topic == topic && m.json()["seq"] == seq)
                .unwrap_or_else(|| panic!("row {seq} of the version 3 outbox did not arrive"));
            assert_eq!(m.json()["value"], old_value(seq), "{:?}", m.json());
            assert_eq!(m.json()["unit"], "°C");
        }
    }
    // In order, old before new, no gap: the device's first arrivals are 1, 2, 3, … in order.
    let seqs = &seqs_by_device(&msgs, "t")[DEVICE];
    let mut seen = HashSet::new();
    let firsts: Vec<u64> = seqs.iter().copied().filter(|q| seen.insert(*q)).collect();
    let max = *firsts.iter().max().unwrap();
    assert_eq!(firsts, (1..=max).collect::<Vec<_>>(), "in order, gapless");
    // The new rows are the new build's own (JSON encoded at publish time, same shape).
    let new = msgs
        .iter()
        .find(|m| m.json()["seq"] == OLD_ROWS + 1 && m.topic.starts_with(&format!("t/{DEVICE}/")))
        .unwrap();
    assert_eq!(new.json()["quality"], "good", "{:?}", new.json());
    assert!(
        gw.log().contains(&format!(
            "outbox upgraded from schema version {version} to 4"
        )),
        "{}",
        gw.log()
    );
    wait_until("an empty outbox", Duration::from_secs(30), || {
        let (_, out, _) = gw.cli(&["buffer", "stats"]);
        out.contains("\"rows\": 0")
    });
}

#[test]
fn a_version_3_outbox_with_rows_is_upgraded_and_its_rows_published_first() {
    upgrade_from(3);
}

#[test]
fn a_version_2_outbox_with_rows_is_upgraded_and_its_rows_published_first() {
    upgrade_from(2);
}

#[test]
fn a_version_1_outbox_with_rows_is_upgraded_and_its_rows_published_first() {
    upgrade_from(1);
}
