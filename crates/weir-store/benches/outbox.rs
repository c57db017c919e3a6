//! Outbox throughput: append 1,000,000 realistic rows in batches of 1,000 with `synchronous = FULL`,
//! then replay them (`read_after` 1,000 at a time + `delete`), and print rows/s and peak RSS. For
//! comparison it then does the same with plain rusqlite on a minimal table (no outbox bookkeeping).
//!
//! `cargo bench -p weir-store --bench outbox`
//!
//! Environment: `WEIR_BENCH_ROWS` (default 1000000), `WEIR_BENCH_DIR` (default: a temporary directory
//! under `$TMPDIR`; put it on the disk you care about, tmpfs makes fsync free),
//! `WEIR_BENCH_BASELINE=0` to skip the plain-SQLite comparison.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use weir_store::{Limits, NewMessage, Outbox, SeqAllocator};

const BATCH: usize = 1_000;
const DEVICES: usize = 100;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn print_rss(when: &str) {
    let hwm =
        status_kb("VmHWM:").map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    let rss =
        status_kb("VmRSS:").map_or("?".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!("  memory {when}: peak RSS (VmHWM) {hwm}, current RSS {rss}");
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn rate(rows: usize, d: Duration) -> String {
    format!("{:>9.0} rows/s", rows as f64 / d.as_secs_f64())
}

struct Gen {
    topics: Vec<String>,
    devices: Vec<String>,
    ts: i64,
    i: usize,
}

impl Gen {
    fn new() -> Gen {
        let devices: Vec<String> = (0..DEVICES)
            .map(|d| format!("gh{}/climate-{d:03}", d % 4 + 1))
            .collect();
        // "weir/gh1/climate-007/telemetry": 30 bytes.
        let topics = devices
            .iter()
            .map(|d| format!("weir/{d}/telemetry"))
            .collect();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        Gen {
            topics,
            devices,
            ts,
            i: 0,
        }
    }

    /// One reading as the MQTT stage would encode it: ~90 bytes of JSON (88-90 here).
    fn batch(&mut self, seq: &mut SeqAllocator<'_>, n: usize) -> Vec<NewMessage> {
        (0..n)
            .map(|_| {
                let d = self.i % DEVICES;
                self.i += 1;
                self.ts += 1_000_000;
                let s = seq.next(&self.devices[d]);
                let mut payload = String::with_capacity(112);
                let value = 18.0 + (self.i % 1000) as f64 * 0.0123;
                let _ = write!(
                    payload,
                    r#"{{"point":"temperature","value":{value:.3},"unit":"°C","ts":{},"seq":{s}}}"#,
                    self.ts
                );
                NewMessage {
                    topic: self.topics[d].clone(),
                    payload: payload.into_bytes(),
                    qos: 1,
                    retain: false,
                }
            })
            .collect()
    }
}

fn bench_outbox(dir: &Path, rows: usize) {
    let path = dir.join("outbox.db");
    let limits = Limits {
        max_bytes: 4 << 30,
        max_age: Duration::from_secs(7 * 24 * 3600),
        synchronous_full: true,
        min_free_bytes: 0,
    };
    println!(
        "weir-store outbox: {rows} rows, batches of {BATCH}, synchronous=FULL, {}",
        path.display()
    );
    let mut ob = Outbox::open(&path, limits).unwrap();
    let mut generator = Gen::new();

    // Append.
    let mut building = Duration::ZERO;
    let mut payload_bytes = 0usize;
    let start = Instant::now();
    let mut left = rows;
    while left > 0 {
        let n = left.min(BATCH);
        let rep = ob
            .append(|seq| {
                let t = Instant::now();
                let b = generator.batch(seq, n);
                building += t.elapsed();
                payload_bytes += b
                    .iter()
                    .map(|m| m.topic.len() + m.payload.len())
                    .sum::<usize>();
                b
            })
            .unwrap();
        assert_eq!(rep.appended, n);
        assert_eq!(rep.dropped_for_space, 0);
        left -= n;
    }
    let append = start.elapsed();
    println!(
        "  append : {} ({:.2} s; {:.2} s of it building messages; store alone {})",
        rate(rows, append),
        append.as_secs_f64(),
        building.as_secs_f64(),
        rate(rows, append.saturating_sub(building)).trim()
    );
    println!(
        "           avg row {:.1} B topic+payload; db {:.1} MiB, wal {:.1} MiB",
        payload_bytes as f64 / rows as f64,
        mib(file_size(&path)),
        mib(file_size(&dir.join("outbox.db-wal")))
    );
    print_rss("after append");

    // Reopen: O(1), no table scan.
    drop(ob);
    let t = Instant::now();
    let mut ob = Outbox::open(&path, limits).unwrap();
    let reopen = t.elapsed();
    let t = Instant::now();
    let stats = ob.stats().unwrap();
    let stats_t = t.elapsed();
    assert_eq!(stats.rows, rows as u64);
    let t = Instant::now();
    let aged = ob.enforce_age().unwrap();
    let age_t = t.elapsed();
    assert_eq!(aged, 0);
    println!(
        "  reopen {:.2} ms, stats {:.3} ms, enforce_age (nothing due) {:.3} ms; {} rows, {:.1} MiB counted",
        reopen.as_secs_f64() * 1e3,
        stats_t.as_secs_f64() * 1e3,
        age_t.as_secs_f64() * 1e3,
        stats.rows,
        mib(stats.bytes)
    );

    // Replay: read 1,000, "publish", delete them, in order.
    let start = Instant::now();
    let mut after = 0;
    let mut replayed = 0usize;
    let mut ids = Vec::with_capacity(BATCH);
    loop {
        let page = ob.read_after(after, BATCH).unwrap();
        if page.is_empty() {
            break;
        }
        ids.clear();
        for m in &page {
            assert!(m.id > after, "in order");
            after = m.id;
            ids.push(m.id);
        }
        replayed += page.len();
        ob.delete(&ids).unwrap();
    }
    let replay = start.elapsed();
    assert_eq!(replayed, rows, "none lost");
    assert_eq!(ob.stats().unwrap().rows, 0);
    println!(
        "  replay : {} ({:.2} s; read_after {BATCH} + delete per transaction)",
        rate(rows, replay),
        replay.as_secs_f64()
    );
    print_rss("after replay");
}

/// The same work with plain rusqlite on a minimal table: the floor the outbox is measured against.
fn bench_plain_sqlite(dir: &Path, rows: usize) {
    use rusqlite::params;
    let path = dir.join("plain.db");
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE q (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, \
         qos INTEGER NOT NULL, retain INTEGER NOT NULL, ts INTEGER NOT NULL)",
    )
    .unwrap();
    let mut generator = Gen::new();
    let mut building = Duration::ZERO;
    let start = Instant::now();
    let mut left = rows;
    let mut id = 0i64;
    let mut seqs: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    while left > 0 {
        let n = left.min(BATCH);
        let tx = conn.transaction().unwrap();
        {
            // Reuse the outbox's message generator through a scratch outbox-free allocator.
            let t = Instant::now();
            let msgs: Vec<(String, Vec<u8>)> = (0..n)
                .map(|_| {
                    let d = generator.i % DEVICES;
                    generator.i += 1;
                    generator.ts += 1_000_000;
                    let s = seqs.entry(generator.devices[d].clone()).or_insert(0);
                    *s += 1;
                    let payload = format!(
                        r#"{{"point":"temperature","value":{:.3},"unit":"°C","ts":{},"seq":{}}}"#,
                        18.0 + (generator.i % 1000) as f64 * 0.0123,
                        generator.ts,
                        s
                    );
                    (generator.topics[d].clone(), payload.into_bytes())
                })
                .collect();
            building += t.elapsed();
            let mut stmt = tx
                .prepare_cached("INSERT INTO q (id, topic, payload, qos, retain, ts) VALUES (?1, ?2, ?3, 1, 0, ?4)")
                .unwrap();
            for (topic, payload) in &msgs {
                id += 1;
                stmt.execute(params![id, topic, payload, generator.ts])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
        left -= n;
    }
    let append = start.elapsed();
    println!(
        "plain rusqlite, same rows, no index/counters/seq: insert {} (store alone {})",
        rate(rows, append).trim(),
        rate(rows, append.saturating_sub(building)).trim()
    );
    let start = Instant::now();
    let mut after = 0i64;
    loop {
        let tx = conn.transaction().unwrap();
        let page: Vec<(i64, String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, topic, payload FROM q WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .unwrap();
            let rows = stmt
                .query_map(params![after, BATCH as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .unwrap();
            rows.map(Result::unwrap).collect()
        };
        if page.is_empty() {
            break;
        }
        {
            let mut del = tx.prepare_cached("DELETE FROM q WHERE id = ?1").unwrap();
            for (id, _, _) in &page {
                del.execute([id]).unwrap();
            }
        }
        tx.commit().unwrap();
        after = page.last().unwrap().0;
    }
    println!(
        "                                               read+delete {}",
        rate(rows, start.elapsed()).trim()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    let rows = env_usize("WEIR_BENCH_ROWS", 1_000_000);
    let tmp;
    let dir = match std::env::var_os("WEIR_BENCH_DIR") {
        Some(d) => {
            let d = std::path::PathBuf::from(d);
            std::fs::create_dir_all(&d).unwrap();
            tmp = tempfile::tempdir_in(&d).unwrap();
            tmp.path().to_path_buf()
        }
        None => {
            tmp = tempfile::tempdir().unwrap();
            tmp.path().to_path_buf()
        }
    };
    bench_outbox(&dir, rows);
    if std::env::var("WEIR_BENCH_BASELINE").as_deref() != Ok("0") {
        bench_plain_sqlite(&dir, rows);
        print_rss("at exit");
    }
}
