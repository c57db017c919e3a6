//! Bytes written per outbox transaction at a real site's pace: small commits (one device poll,
//! a few rows), each followed by the delete transaction of its acknowledgement, `synchronous =
//! FULL`, on the disk `WEIR_BENCH_DIR` points at (default `$TMPDIR`; tmpfs writes no blocks).
//!
//! `cargo bench -p weir-store --bench commit_bytes`
//!
//! Prints, per append transaction and per delete transaction, the bytes the process handed to
//! `write(2)` (`/proc/self/io` `wchar`: WAL frames and checkpoint copies) and the bytes it caused
//! to be written to the block device (`write_bytes`), plus WAL frames per commit (from the
//! `-wal` file's growth before the first checkpoint). The binary only uses `Outbox::open`,
//! `append` and `delete`, so the same file built against an older schema measures that schema:
//! `scripts/bench-outbox-schemas` runs both builds in one go.
//!
//! Environment: `WEIR_BENCH_COMMITS` (default 2000), `WEIR_BENCH_ROWS_PER_COMMIT` (default 4),
//! `WEIR_BENCH_DEVICES` (default 40), `WEIR_BENCH_DIR`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use weir_store::{Limits, NewMessage, Outbox};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (`wchar`, `write_bytes`) of this process.
fn io() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (field("wchar:"), field("write_bytes:"))
}

fn main() {
    let commits = env_usize("WEIR_BENCH_COMMITS", 2000);
    let per = env_usize("WEIR_BENCH_ROWS_PER_COMMIT", 4);
    let devices = env_usize("WEIR_BENCH_DEVICES", 40);
    let label = std::env::var("WEIR_BENCH_LABEL").unwrap_or_else(|_| "this build".to_owned());
    let tmp = match std::env::var_os("WEIR_BENCH_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            tempfile::tempdir_in(d).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let path = tmp.path().join("outbox.db");
    let wal = tmp.path().join("outbox.db-wal");
    let limits = Limits {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(7 * 24 * 3600),
        synchronous_full: true,
        min_free_bytes: 0,
    };
    let mut ob = Outbox::open(&path, limits).unwrap();
    let names: Vec<String> = (0..devices).map(|d| format!("site/plc-{d:02}")).collect();
    let ts0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let commit = |ob: &mut Outbox, i: usize| {
        let d = &names[i % devices];
        ob.append(|seq| {
            (0..per)
                .map(|p| {
                    let s = seq.next(d);
                    NewMessage {
                        topic: format!("weir/{d}/telemetry"),
                        payload: format!(
                            r#"{{"point":"p{p}","value":{:.2},"unit":"bar","ts":{},"seq":{s}}}"#,
                            1.0 + (i % 100) as f64 * 0.01,
                            ts0 + i as u128 * 1_000_000
                        )
                        .into_bytes(),
                        qos: 1,
                        retain: false,
                    }
                })
                .collect()
        })
        .unwrap()
    };
    // Warm up: every device has its sequence row, the tables have their first pages.
    for i in 0..devices * 2 {
        let r = commit(&mut ob, i);
        ob.delete(&(r.first_id..=r.last_id).collect::<Vec<_>>())
            .unwrap();
    }
    // WAL frames of one append + one delete, before any checkpoint resets the file.
    let w0 = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let (mut append_wchar, mut append_blocks, mut delete_wchar, mut delete_blocks) = (0, 0, 0, 0);
    let mut frames = Vec::new();
    for i in 0..commits {
        let before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let (c0, b0) = io();
        let r = commit(&mut ob, devices * 2 + i);
        let (c1, b1) = io();
        let ids: Vec<i64> = (r.first_id..=r.last_id).collect();
        ob.delete(&ids).unwrap();
        let (c2, b2) = io();
        append_wchar += c1 - c0;
        append_blocks += b1 - b0;
        delete_wchar += c2 - c1;
        delete_blocks += b2 - b1;
        let after = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        if frames.len() < 20 && after > before && before >= w0 {
            frames.push(after - before);
        }
    }
    let n = commits as f64;
    let page = 4096 + 24;
    let avg_frames =
        frames.iter().sum::<u64>() as f64 / frames.len().max(1) as f64 / f64::from(page);
    println!(
        "{label}: {commits} commits of {per} rows ({devices} devices), synchronous=FULL, {}",
        path.display()
    );
    println!(
        "  append: {:>7.0} B/commit to write(2), {:>7.0} B/commit to the device",
        append_wchar as f64 / n,
        append_blocks as f64 / n
    );
    println!(
        "  delete: {:>7.0} B/commit to write(2), {:>7.0} B/commit to the device",
        delete_wchar as f64 / n,
        delete_blocks as f64 / n
    );
    println!(
        "  append+delete: {:.1} WAL frames (pages) per cycle before checkpoints; total {:.0} B/cycle to the device",
        avg_frames,
        (append_blocks + delete_blocks) as f64 / n
    );
}
