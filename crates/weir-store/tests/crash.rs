//! Crash safety: a child process (this test binary re-run with an environment variable) writes to an
//! outbox and dies abruptly; the parent reopens the file and checks it holds exactly whole committed
//! batches.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use weir_store::{Limits, NewMessage, Outbox, StoredMessage};

const MODE_ENV: &str = "WEIR_STORE_CRASH_CHILD";
const DB_ENV: &str = "WEIR_STORE_CRASH_DB";
const MARK: &str = "WEIR-COMMITTED";
const ABORT_BATCHES: usize = 5;
const ABORT_BATCH_ROWS: usize = 100;
const LOOP_BATCH_ROWS: usize = 50;

fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(3600),
        synchronous_full: true,
        min_free_bytes: 0,
    }
}

fn batch(seq: &mut weir_store::SeqAllocator<'_>, n: usize) -> Vec<NewMessage> {
    (0..n)
        .map(|_| {
            let s = seq.next("dev");
            NewMessage {
                topic: format!("site/dev/{s}"),
                payload: format!(r#"{{"seq":{s},"value":{}}}"#, s * 3).into_bytes(),
                qos: 1,
                retain: false,
            }
        })
        .collect()
}

fn seq_of(row: &StoredMessage) -> u64 {
    row.topic
        .strip_prefix("site/dev/")
        .unwrap()
        .parse()
        .unwrap()
}

/// Child side: not a test of its own. It is `#[ignore]`d so a plain `cargo test` neither runs it
/// nor counts it as passed; the crash tests run it with `--ignored --exact`. Run any other way it
/// fails, since it has nothing to check.
#[test]
#[ignore = "child process of the crash tests (run by them with --ignored --exact)"]
fn crash_child() {
    let mode = std::env::var(MODE_ENV).unwrap_or_else(|_| {
        panic!("crash_child is the crash tests' child process, not a test: {MODE_ENV} is not set")
    });
    let path = std::env::var(DB_ENV).unwrap();
    let mut ob = Outbox::open(Path::new(&path), limits()).unwrap();
    let mut out = std::io::stdout().lock();
    match mode.as_str() {
        "abort" => {
            for _ in 0..ABORT_BATCHES {
                let rep = ob.append(|seq| batch(seq, ABORT_BATCH_ROWS)).unwrap();
                writeln!(out, "{MARK} {}", rep.last_id).unwrap();
                out.flush().unwrap();
            }
            let _ = ob.append(|seq| {
                let half = batch(seq, ABORT_BATCH_ROWS / 2);
                assert_eq!(half.len(), ABORT_BATCH_ROWS / 2);
                std::process::abort();
            });
            unreachable!("abort returned");
        }
        "loop" => {
            // Runs until killed; bounded in case the parent died first.
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(60) {
                let rep = ob.append(|seq| batch(seq, LOOP_BATCH_ROWS)).unwrap();
                writeln!(out, "{MARK} {}", rep.last_id).unwrap();
                out.flush().unwrap();
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn_child(mode: &str, db: &Path) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    // Under an emulator (`scripts/cross-aarch64 --test`) the child goes through it too: binfmt is
    // not set up on build machines.
    let prefix = std::env::var("WEIR_TEST_EXEC_PREFIX").unwrap_or_default();
    // `ulimit -c 0` keeps the aborting child from leaving a core file behind.
    Command::new("/bin/sh")
        .arg("-c")
        .arg(r#"ulimit -c 0; exec $WEIR_TEST_EXEC_PREFIX "$0" "$@""#)
        .env("WEIR_TEST_EXEC_PREFIX", prefix)
        .arg(exe)
        .args([
            "crash_child",
            "--ignored",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_ENV, mode)
        .env(DB_ENV, db)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn committed_ids(lines: impl Iterator<Item = String>) -> Vec<i64> {
    lines
        .filter_map(|l| l.strip_prefix(MARK).map(|s| s.trim().parse().unwrap()))
        .collect()
}

/// Reopens the outbox after the crash and checks it holds rows 1..=n with sequence numbers 1..=n, n a
/// whole number of batches; returns n.
fn check_whole_batches(db: &Path, batch_rows: usize) -> i64 {
    let mut ob = Outbox::open(db, limits()).unwrap();
    let rows = ob.read_after(0, usize::MAX).unwrap();
    let n = rows.len();
    assert_eq!(n % batch_rows, 0, "only whole batches survive ({n} rows)");
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.id, i as i64 + 1);
        assert_eq!(seq_of(row), i as u64 + 1);
        assert_eq!(
            row.payload,
            format!(r#"{{"seq":{},"value":{}}}"#, i + 1, (i + 1) * 3).into_bytes()
        );
    }
    let st = ob.stats().unwrap();
    assert_eq!(st.rows, n as u64);
    let bytes: u64 = rows
        .iter()
        .map(|r| (r.topic.len() + r.payload.len()) as u64 + weir_store::ROW_OVERHEAD_BYTES)
        .sum();
    assert_eq!(
        st.bytes, bytes,
        "persisted byte counter matches the surviving rows"
    );
    // Sequence numbers and ids continue right after the surviving batches.
    let rep = ob
        .append(|seq| {
            assert_eq!(seq.next("dev"), n as u64 + 1);
            vec![NewMessage {
                topic: "after/crash".into(),
                payload: vec![],
                qos: 0,
                retain: false,
            }]
        })
        .unwrap();
    assert_eq!(rep.first_id, n as i64 + 1);
    n as i64
}

#[test]
fn abort_while_building_a_batch_keeps_exactly_the_committed_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("outbox.db");
    let child = spawn_child("abort", &db);
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.signal(),
        Some(6),
        "child died of SIGABRT: {:?}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let ids = committed_ids(stdout.lines().map(str::to_owned));
    let expected_last = (ABORT_BATCHES * ABORT_BATCH_ROWS) as i64;
    assert_eq!(ids.last(), Some(&expected_last), "child output: {stdout}");
    assert!(
        Path::new(&format!("{}-wal", db.display())).exists(),
        "the child died with its commits only in the WAL"
    );
    let n = check_whole_batches(&db, ABORT_BATCH_ROWS);
    assert_eq!(n, expected_last);
}

#[test]
fn sigkill_at_random_moments_keeps_whole_committed_batches() {
    let mut rng = rand::rng();
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("outbox.db");
        let mut child = spawn_child("loop", &db);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        while seen.len() < 10 + round * 10 {
            let line = lines.next().expect("child output ended early").unwrap();
            seen.extend(committed_ids(std::iter::once(line)));
        }
        std::thread::sleep(Duration::from_micros(rng.random_range(0..3000)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        seen.extend(committed_ids(lines.map_while(Result::ok)));
        let last_reported = *seen.last().unwrap();

        let n = check_whole_batches(&db, LOOP_BATCH_ROWS);
        assert!(
            n >= last_reported,
            "every reported commit survived ({n} < {last_reported})"
        );
        assert!(
            n <= last_reported + LOOP_BATCH_ROWS as i64,
            "at most one batch committed but not yet reported"
        );
    }
}
