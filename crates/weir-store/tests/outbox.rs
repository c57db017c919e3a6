//! Behaviour of the outbox through its public API, on real SQLite files in temporary directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;
use weir_store::{
    Limits, MonotonicSource, MonotonicStamp, NewMessage, Outbox, OutboxStats, SimulatedMonotonic,
    StoreError, StoredMessage, APPLICATION_ID, ROW_OVERHEAD_BYTES, SCHEMA_VERSION,
};

const YEAR_NS: i64 = 365 * 24 * 3600 * 1_000_000_000;

/// A simulated clock: boot 1, up for an hour, the wall clock at 2026-12-01 and synchronised.
fn sim() -> SimulatedMonotonic {
    SimulatedMonotonic::new(MonotonicStamp {
        boot: 1,
        boottime_ns: 3_600_000_000_000,
        wall_ns: 1_796_083_200_000_000_000,
        wall_synchronised: true,
    })
}

/// Stats without the age of the oldest row (it moves with the real clock).
fn stats(ob: &mut Outbox) -> OutboxStats {
    OutboxStats {
        oldest_age_ns: None,
        ..ob.stats().unwrap()
    }
}

fn open_sim(path: &Path, lim: Limits, clock: &SimulatedMonotonic) -> Outbox {
    Outbox::open_with_clock(path, lim, Arc::new(clock.clone())).unwrap()
}

fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 30,
        max_age: Duration::from_secs(24 * 3600),
        synchronous_full: true,
        min_free_bytes: 0,
    }
}

fn msg(topic: &str, payload: &[u8]) -> NewMessage {
    NewMessage {
        topic: topic.to_owned(),
        payload: payload.to_vec(),
        qos: 1,
        retain: false,
    }
}

fn size(topic: &str, payload: &[u8]) -> u64 {
    (topic.len() + payload.len()) as u64 + ROW_OVERHEAD_BYTES
}

fn db(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("outbox.db")
}

fn all(ob: &mut Outbox) -> Vec<StoredMessage> {
    ob.read_after(i64::MIN, usize::MAX).unwrap()
}

/// Appends `n` messages for `device`, each carrying its sequence number in topic and payload.
fn append_seq(ob: &mut Outbox, device: &str, n: usize) -> weir_store::AppendReport {
    ob.append(|seq| {
        (0..n)
            .map(|_| {
                let s = seq.next(device);
                msg(&format!("{device}/{s}"), s.to_string().as_bytes())
            })
            .collect()
    })
    .unwrap()
}

fn seqs_of(rows: &[StoredMessage], device: &str) -> Vec<u64> {
    rows.iter()
        .filter_map(|r| r.topic.strip_prefix(&format!("{device}/")))
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Adds a trigger (through a second, plain SQLite connection) that makes SQLite itself fail a statement.
fn add_failing_trigger(path: &Path, name: &str, body: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(&format!(
        "CREATE TRIGGER {name} {body} BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
    ))
    .unwrap();
}

fn drop_trigger(path: &Path, name: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    conn.execute_batch(&format!("DROP TRIGGER {name};"))
        .unwrap();
}

#[test]
fn append_read_delete_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(&db(&dir), limits()).unwrap();
    assert_eq!(ob.path(), db(&dir));

    let batch = vec![
        NewMessage {
            topic: "gh1/climate/temperature".into(),
            payload: br#"{"v":23.4}"#.to_vec(),
            qos: 1,
            retain: false,
        },
        NewMessage {
            topic: "gh1/climate/humidity".into(),
            payload: vec![],
            qos: 0,
            retain: true,
        },
        NewMessage {
            topic: "gh1/status".into(),
            payload: vec![0, 255, 0, 7],
            qos: 2,
            retain: false,
        },
    ];
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let expected = batch.clone();
    let rep = ob.append(move |_| batch).unwrap();
    assert_eq!(rep.appended, 3);
    assert_eq!(rep.last_id - rep.first_id, 2);
    assert_eq!(rep.dropped_for_space, 0);

    let rep2 = ob.append(|_| vec![msg("second/batch", b"x")]).unwrap();
    assert_eq!(rep2.first_id, rep.last_id + 1);
    assert_eq!(rep2.last_id, rep2.first_id);

    let rows = all(&mut ob);
    assert_eq!(rows.len(), 4);
    for (row, want) in rows.iter().zip(&expected) {
        assert_eq!(
            (&row.topic, &row.payload, row.qos, row.retain),
            (&want.topic, &want.payload, want.qos, want.retain)
        );
        assert!(
            row.enqueued_ns >= before,
            "enqueued_ns is the wall clock at append"
        );
    }
    assert_eq!(rows[3].topic, "second/batch");
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert_eq!(rows[0].id, rep.first_id);
    assert_eq!(
        rows[0].enqueued_ns, rows[2].enqueued_ns,
        "one timestamp per batch"
    );
    assert!(rows[3].enqueued_ns >= rows[2].enqueued_ns);

    let st = ob.stats().unwrap();
    let bytes: u64 = expected
        .iter()
        .map(|m| size(&m.topic, &m.payload))
        .sum::<u64>()
        + size("second/batch", b"x");
    assert!(st
        .oldest_age_ns
        .is_some_and(|a| (0..60_000_000_000).contains(&a)));
    assert_eq!(
        st,
        OutboxStats {
            rows: 4,
            bytes,
            oldest_enqueued_ns: Some(rows[0].enqueued_ns),
            oldest_age_ns: st.oldest_age_ns,
            newest_id: Some(rows[3].id),
            dropped_for_space_total: 0,
            dropped_for_age_total: 0,
            max_bytes: limits().max_bytes,
            dead_letter_rows: 0,
            dead_letter_bytes: 0,
        }
    );

    ob.delete(&[rows[1].id, rows[3].id]).unwrap();
    let left = all(&mut ob);
    assert_eq!(left, vec![rows[0].clone(), rows[2].clone()]);
    let st = ob.stats().unwrap();
    assert_eq!(st.rows, 2);
    assert_eq!(st.newest_id, Some(rows[2].id));
    assert_eq!(
        st.bytes,
        size(&rows[0].topic, &rows[0].payload) + size(&rows[2].topic, &rows[2].payload)
    );

    ob.delete(&[rows[0].id, rows[2].id]).unwrap();
    let st = ob.stats().unwrap();
    assert_eq!(
        (st.rows, st.bytes, st.oldest_enqueued_ns, st.newest_id),
        (0, 0, None, None)
    );
}

#[test]
fn read_after_paginates_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(&db(&dir), limits()).unwrap();
    for _ in 0..5 {
        append_seq(&mut ob, "d", 500);
    }
    let mut after = 0;
    let mut pages = Vec::new();
    let mut seen = Vec::new();
    loop {
        let page = ob.read_after(after, 1000).unwrap();
        if page.is_empty() {
            break;
        }
        pages.push(page.len());
        assert!(page.iter().all(|r| r.id > after));
        after = page.last().unwrap().id;
        seen.extend(page);
    }
    assert_eq!(pages, vec![1000, 1000, 500]);
    assert_eq!(seqs_of(&seen, "d"), (1..=2500).collect::<Vec<u64>>());
    assert!(seen.windows(2).all(|w| w[0].id + 1 == w[1].id));

    assert!(ob.read_after(0, 0).unwrap().is_empty());
    assert!(ob.read_after(after, 10).unwrap().is_empty());
    let mid = seen[1233].id;
    let page = ob.read_after(mid, 3).unwrap();
    assert_eq!(page, seen[1234..1237].to_vec());

    // Reading does not consume: only delete does.
    assert_eq!(all(&mut ob).len(), 2500);
}

#[test]
fn ids_never_reused_after_emptying_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let last = {
        let mut ob = Outbox::open(&path, limits()).unwrap();
        let rep = append_seq(&mut ob, "d", 10);
        let ids: Vec<i64> = all(&mut ob).iter().map(|r| r.id).collect();
        ob.delete(&ids).unwrap();
        rep.last_id
    };
    let mut ob = Outbox::open(&path, limits()).unwrap();
    assert_eq!(ob.stats().unwrap().rows, 0);
    let rep = append_seq(&mut ob, "d", 1);
    assert_eq!(rep.first_id, last + 1);
    // An empty batch reports an empty range just past the highest id and writes nothing.
    let empty = ob.append(|_| Vec::new()).unwrap();
    assert_eq!(
        (empty.appended, empty.first_id, empty.last_id),
        (0, rep.last_id + 1, rep.last_id)
    );
}

#[test]
fn delete_ignores_unknown_and_duplicate_ids() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(&db(&dir), limits()).unwrap();
    append_seq(&mut ob, "d", 5);
    let rows = all(&mut ob);
    ob.delete(&[]).unwrap();
    ob.delete(&[-1, 0, rows[1].id, rows[1].id, 10_000]).unwrap();
    ob.delete(&[rows[1].id]).unwrap();
    let left = all(&mut ob);
    assert_eq!(left.len(), 4);
    assert!(left.iter().all(|r| r.id != rows[1].id));
    let st = ob.stats().unwrap();
    assert_eq!(st.rows, 4);
    assert_eq!(
        st.bytes,
        left.iter().map(|r| size(&r.topic, &r.payload)).sum::<u64>()
    );
}

#[test]
fn seq_numbers_are_per_device_and_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let mut ob = Outbox::open(&path, limits()).unwrap();
        let got = ob
            .append(|seq| {
                let v = vec![seq.next("a"), seq.next("b"), seq.next("a"), seq.next("a")];
                assert_eq!(v, vec![1, 1, 2, 3]);
                vec![msg("x", b"")]
            })
            .unwrap();
        assert_eq!(got.appended, 1);
        // Sequence numbers handed out by a batch with no message are still committed.
        ob.append(|seq| {
            assert_eq!(seq.next("b"), 2);
            Vec::new()
        })
        .unwrap();
        append_seq(&mut ob, "a", 2);
    }
    let mut ob = Outbox::open(&path, limits()).unwrap();
    ob.append(|seq| {
        assert_eq!(seq.next("a"), 6);
        assert_eq!(seq.next("b"), 3);
        assert_eq!(seq.next("new"), 1);
        Vec::new()
    })
    .unwrap();
    drop(ob);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    ob.append(|seq| {
        assert_eq!(seq.next("new"), 2);
        Vec::new()
    })
    .unwrap();
}

#[test]
fn failed_insert_rolls_back_batch_and_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut ob, "d", 3);
    let before = stats(&mut ob);

    add_failing_trigger(
        &path,
        "fail_insert",
        "BEFORE INSERT ON outbox WHEN NEW.topic = 'boom'",
    );
    let err = ob
        .append(|seq| {
            let s = seq.next("d");
            assert_eq!(s, 4);
            seq.next("other");
            vec![msg(&format!("d/{s}"), b"ok"), msg("boom", b"fails")]
        })
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Sqlite { op: "append", .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("injected failure"), "{text}");

    assert_eq!(
        stats(&mut ob),
        before,
        "nothing of the failed batch was stored"
    );
    assert_eq!(seqs_of(&all(&mut ob), "d"), vec![1, 2, 3]);

    // The next batch reuses the numbers of the failed one: no gap, also for the device that only
    // appeared in the failed batch, and the ids continue without a hole.
    let rep = ob
        .append(|seq| {
            assert_eq!(seq.next("other"), 1);
            let s = seq.next("d");
            vec![msg(&format!("d/{s}"), b"ok")]
        })
        .unwrap();
    assert_eq!(rep.first_id, before.newest_id.unwrap() + 1);
    assert_eq!(seqs_of(&all(&mut ob), "d"), vec![1, 2, 3, 4]);

    drop_trigger(&path, "fail_insert");
    drop(ob);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    ob.append(|seq| {
        assert_eq!(seq.next("d"), 5);
        assert_eq!(seq.next("other"), 2);
        Vec::new()
    })
    .unwrap();
}

#[test]
fn failure_after_all_inserts_still_rolls_back_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut ob, "d", 2);
    let before = stats(&mut ob);

    // Fails while persisting the sequence numbers, i.e. after every row of the batch was inserted.
    add_failing_trigger(&path, "fail_seq", "BEFORE UPDATE ON state WHEN NEW.ns = 1");
    let err = ob.append(|seq| {
        (0..100)
            .map(|_| msg(&format!("d/{}", seq.next("d")), b"p"))
            .collect()
    });
    assert!(err.is_err());
    assert_eq!(stats(&mut ob), before);
    drop_trigger(&path, "fail_seq");

    let rep = append_seq(&mut ob, "d", 1);
    assert_eq!(rep.first_id, before.newest_id.unwrap() + 1);
    assert_eq!(seqs_of(&all(&mut ob), "d"), vec![1, 2, 3]);
}

#[test]
fn panicking_build_rolls_back_and_outbox_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let mut ob = Outbox::open(&db(&dir), limits()).unwrap();
    append_seq(&mut ob, "d", 1);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ob.append(|seq| {
            seq.next("d");
            panic!("adapter bug");
        })
    }));
    assert!(r.is_err());
    append_seq(&mut ob, "d", 1);
    assert_eq!(seqs_of(&all(&mut ob), "d"), vec![1, 2]);
}

#[test]
fn byte_bound_drops_oldest_first_and_count_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let payload = [b'p'; 68];
    let row = size("d/00", &payload); // 4 + 68 + 32 = 104
    let lim = Limits {
        max_bytes: 10 * row,
        ..limits()
    };
    let mk = |ob: &mut Outbox, from: usize, n: usize| {
        ob.append(|_| {
            (from..from + n)
                .map(|i| msg(&format!("d/{i:02}"), &payload))
                .collect()
        })
        .unwrap()
    };
    {
        let mut ob = Outbox::open(&path, lim).unwrap();
        assert_eq!(mk(&mut ob, 0, 10).dropped_for_space, 0);
        assert_eq!(ob.stats().unwrap().bytes, 10 * row);
        let rep = mk(&mut ob, 10, 3);
        assert_eq!(rep.dropped_for_space, 3);
        let topics: Vec<String> = all(&mut ob).into_iter().map(|r| r.topic).collect();
        let want: Vec<String> = (3..13).map(|i| format!("d/{i:02}")).collect();
        assert_eq!(topics, want, "the oldest rows went first");
        let st = ob.stats().unwrap();
        assert_eq!(
            (st.rows, st.bytes, st.dropped_for_space_total),
            (10, 10 * row, 3)
        );
    }
    // Persisted across reopen, and the bound keeps being enforced from the persisted total.
    let mut ob = Outbox::open(&path, lim).unwrap();
    assert_eq!(ob.stats().unwrap().dropped_for_space_total, 3);
    let rep = mk(&mut ob, 13, 1);
    assert_eq!(rep.dropped_for_space, 1);
    let st = ob.stats().unwrap();
    assert_eq!((st.rows, st.dropped_for_space_total), (10, 4));
    assert_eq!(all(&mut ob)[0].topic, "d/04");

    // A batch bigger than the bound keeps only its newest rows.
    let rep = mk(&mut ob, 20, 15);
    assert_eq!(rep.appended, 15);
    assert_eq!(rep.dropped_for_space, 15);
    let rows = all(&mut ob);
    assert_eq!(rows.len(), 10);
    assert_eq!(rows[0].topic, "d/25");
    assert_eq!(rows[0].id, rep.last_id - 9);
    assert_eq!(ob.stats().unwrap().dropped_for_space_total, 19);

    // A lower bound on reopen applies at the next append, not at open.
    drop(ob);
    let lower = Limits {
        max_bytes: 4 * row,
        ..lim
    };
    let mut ob = Outbox::open(&path, lower).unwrap();
    assert_eq!(ob.stats().unwrap().rows, 10);
    assert_eq!(ob.stats().unwrap().max_bytes, 4 * row);
    mk(&mut ob, 40, 1);
    let st = ob.stats().unwrap();
    assert_eq!(
        (st.rows, st.bytes, st.dropped_for_space_total),
        (4, 4 * row, 26)
    );
}

#[test]
fn byte_bound_of_zero_keeps_nothing_but_ids_advance() {
    let dir = tempfile::tempdir().unwrap();
    let lim = Limits {
        max_bytes: 0,
        ..limits()
    };
    let mut ob = Outbox::open(&db(&dir), lim).unwrap();
    let a = append_seq(&mut ob, "d", 3);
    let b = append_seq(&mut ob, "d", 3);
    assert_eq!(b.first_id, a.last_id + 1);
    let st = ob.stats().unwrap();
    assert_eq!((st.rows, st.bytes, st.dropped_for_space_total), (0, 0, 6));
}

#[test]
fn age_bound_drops_old_rows_and_count_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let max_age = Duration::from_secs(60);
    let lim = Limits {
        max_age,
        ..limits()
    };
    let clock = sim();
    {
        let mut ob = open_sim(&path, lim, &clock);
        append_seq(&mut ob, "old", 3);
        clock.advance(Duration::from_secs(5));
        append_seq(&mut ob, "new", 2);
        let rows = all(&mut ob);
        let (t_old, t_new) = (rows[0].enqueued_ns, rows[3].enqueued_ns);
        assert_eq!(
            t_new - t_old,
            5_000_000_000,
            "enqueued_ns is the wall clock"
        );
        assert_eq!(ob.stats().unwrap().oldest_enqueued_ns, Some(t_old));
        assert_eq!(ob.stats().unwrap().oldest_age_ns, Some(5_000_000_000));

        // Exactly max_age old is kept ("older than", not "as old as").
        clock.advance(max_age - Duration::from_secs(5));
        assert_eq!(ob.enforce_age().unwrap(), 0);
        clock.advance(Duration::from_nanos(1));
        assert_eq!(ob.enforce_age().unwrap(), 3);
        let left = all(&mut ob);
        assert_eq!(seqs_of(&left, "new"), vec![1, 2]);
        assert!(seqs_of(&left, "old").is_empty());
        let st = ob.stats().unwrap();
        assert_eq!((st.rows, st.dropped_for_age_total), (2, 3));
        assert_eq!(st.oldest_enqueued_ns, Some(t_new));
        assert_eq!(
            st.bytes,
            left.iter().map(|r| size(&r.topic, &r.payload)).sum::<u64>()
        );
    }
    let mut ob = open_sim(&path, lim, &clock);
    assert_eq!(ob.stats().unwrap().dropped_for_age_total, 3);
    assert_eq!(ob.enforce_age().unwrap(), 0);
    clock.advance(Duration::from_secs(5));
    assert_eq!(ob.enforce_age().unwrap(), 2);
    let st = ob.stats().unwrap();
    assert_eq!((st.rows, st.bytes, st.dropped_for_age_total), (0, 0, 5));
    assert_eq!(st.oldest_age_ns, None);
    clock.advance(Duration::from_secs(3600));
    assert_eq!(ob.enforce_age().unwrap(), 0);
}

#[test]
fn a_wall_clock_step_of_a_year_drops_nothing_and_real_age_still_does() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let lim = Limits {
        max_age: Duration::from_secs(3600),
        ..limits()
    };
    let clock = sim();
    // An RTC-less board: the clock is wrong until NTP steps it a year forward.
    clock.set_synchronised(false);
    clock.step_wall(-YEAR_NS);
    let mut ob = open_sim(&path, lim, &clock);
    append_seq(&mut ob, "d", 4);
    clock.advance(Duration::from_secs(600));
    append_seq(&mut ob, "d", 2);
    clock.advance(Duration::from_secs(60));
    clock.step_wall(YEAR_NS);
    clock.set_synchronised(true);
    assert_eq!(ob.enforce_age().unwrap(), 0, "a step forward ages nothing");
    assert_eq!(ob.stats().unwrap().oldest_age_ns, Some(660_000_000_000));
    // A step back does not keep rows longer either.
    clock.step_wall(-2 * YEAR_NS);
    clock.advance(Duration::from_secs(3600 - 660) + Duration::from_nanos(1));
    assert_eq!(
        ob.enforce_age().unwrap(),
        4,
        "the first batch is past max_age"
    );
    assert_eq!(seqs_of(&all(&mut ob), "d"), vec![5, 6]);
    clock.advance(Duration::from_secs(600));
    assert_eq!(ob.enforce_age().unwrap(), 2);
    let st = ob.stats().unwrap();
    assert_eq!((st.rows, st.dropped_for_age_total), (0, 6));
}

#[test]
fn across_a_reboot_rows_age_by_the_wall_clock_only_if_both_ends_were_synchronised() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let hour = Duration::from_secs(3600);
    let lim = Limits {
        max_age: 10 * hour,
        ..limits()
    };
    let clock = sim();
    let mut ob = open_sim(&path, lim, &clock);
    append_seq(&mut ob, "synced", 2);
    clock.set_synchronised(false);
    clock.advance(hour);
    append_seq(&mut ob, "unsynced", 3);
    drop(ob);
    // Down for a day; the board comes back with its wall clock 5 years behind.
    clock.reboot(
        2,
        Duration::from_secs(30),
        24 * 3600 * 1_000_000_000 - 5 * YEAR_NS,
    );
    let mut ob = open_sim(&path, lim, &clock);
    append_seq(&mut ob, "now", 1);
    // Unsynchronised now: every earlier-boot row is as old as this boot, not dropped.
    assert_eq!(ob.enforce_age().unwrap(), 0);
    assert_eq!(ob.stats().unwrap().oldest_age_ns, Some(30_000_000_000));
    // NTP sets the clock: the synchronised row is a day old by the wall clock and goes; the
    // row enqueued while unsynchronised counts from this boot's start (kept), and so does
    // everything after it (oldest first).
    clock.step_wall(5 * YEAR_NS);
    clock.set_synchronised(true);
    assert_eq!(ob.enforce_age().unwrap(), 2);
    assert_eq!(seqs_of(&all(&mut ob), "unsynced"), vec![1, 2, 3]);
    // This boot's uptime passes max_age: the earlier boot's rows are at least that old.
    clock.advance(10 * hour);
    assert_eq!(ob.enforce_age().unwrap(), 3);
    assert_eq!(seqs_of(&all(&mut ob), "now"), vec![1]);
    clock.advance(Duration::from_secs(30));
    assert_eq!(ob.enforce_age().unwrap(), 1);
    assert_eq!(ob.stats().unwrap().dropped_for_age_total, 6);
}

#[test]
fn a_batch_keeps_its_age_when_its_rows_go_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let lim = Limits {
        max_age: Duration::from_secs(60),
        ..limits()
    };
    let clock = sim();
    let mut ob = open_sim(&path, lim, &clock);
    let a = append_seq(&mut ob, "d", 4);
    clock.advance(Duration::from_secs(10));
    let b = append_seq(&mut ob, "d", 3);
    clock.advance(Duration::from_secs(10));
    append_seq(&mut ob, "d", 3);
    // The last row of each of the first two batches goes first (acked, set aside), then a
    // middle one.
    ob.delete(&[a.last_id]).unwrap();
    assert_eq!(ob.dead_letter(&[(b.last_id, "refused".into())]).unwrap(), 1);
    ob.delete(&[a.first_id + 1]).unwrap();
    assert_eq!(ob.stats().unwrap().oldest_age_ns, Some(20_000_000_000));
    clock.advance(Duration::from_secs(40) + Duration::from_nanos(1));
    // Batch a (2 rows left) is due, b is not.
    assert_eq!(ob.enforce_age().unwrap(), 2);
    assert_eq!(all(&mut ob)[0].id, b.first_id);
    clock.advance(Duration::from_secs(10));
    // Batch b's two rows and its dead letter.
    assert_eq!(ob.enforce_age().unwrap(), 3);
    let st = ob.stats().unwrap();
    assert_eq!(
        (st.rows, st.dead_letter_rows, st.dropped_for_age_total),
        (3, 0, 5)
    );
}

#[test]
fn open_refuses_garbage_file_naming_the_path_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("short.db", b"hello, not a database".to_vec()),
        (
            "long.db",
            (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect(),
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &content).unwrap();
        let err = Outbox::open(&path, limits()).unwrap_err();
        assert!(matches!(err, StoreError::NotAnOutbox { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(err.path(), path);
        assert_eq!(std::fs::read(&path).unwrap(), content, "file untouched");
        let err = Outbox::open_read_only(&path).unwrap_err();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}

#[test]
fn open_refuses_foreign_sqlite_database_without_touching_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE readings (x); INSERT INTO readings VALUES (1);")
            .unwrap();
    }
    let content = std::fs::read(&path).unwrap();
    let err = Outbox::open(&path, limits()).unwrap_err();
    assert!(matches!(err, StoreError::NotAnOutbox { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete", "journal mode not switched on a foreign db");

    // Another application's id is refused too.
    conn.execute_batch("PRAGMA application_id = 1234;").unwrap();
    drop(conn);
    let err = Outbox::open(&path, limits()).unwrap_err();
    assert!(err.to_string().contains("application_id"), "{err}");
}

#[test]
fn open_refuses_newer_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    drop(Outbox::open(&path, limits()).unwrap());
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let app: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .unwrap();
        let ver: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!((app, ver), (APPLICATION_ID, SCHEMA_VERSION));
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        conn.execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
            .unwrap();
    }
    let err = Outbox::open(&path, limits()).unwrap_err();
    assert!(
        matches!(err, StoreError::UnsupportedSchema { found, .. } if found == SCHEMA_VERSION + 1),
        "{err:?}"
    );
    assert!(err.to_string().contains(&path.display().to_string()));
}

#[test]
fn open_refuses_corrupt_outbox_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    {
        let mut ob = Outbox::open(&path, limits()).unwrap();
        append_seq(&mut ob, "d", 10);
    }
    // Clobber page 1 after the 100-byte header: the schema table (and thus everything) is unreadable.
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[100..4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Outbox::open(&path, limits()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt { .. } | StoreError::NotAnOutbox { .. }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a corrupt outbox is not recreated"
    );
}

#[test]
fn open_does_not_create_parent_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing").join("outbox.db");
    let err = Outbox::open(&path, limits()).unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!dir.path().join("missing").exists());
}

#[test]
fn open_read_only_on_missing_file_is_an_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let err = Outbox::open_read_only(&path).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists());

    // An empty file is not an outbox either, for a reader.
    std::fs::write(&path, b"").unwrap();
    let err = Outbox::open_read_only(&path).unwrap_err();
    assert!(matches!(err, StoreError::NotAnOutbox { .. }), "{err:?}");
    assert_eq!(std::fs::read(&path).unwrap(), b"");
}

#[test]
fn read_only_handle_follows_the_writer_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let lim = Limits {
        max_bytes: 123_456,
        ..limits()
    };
    let mut w = Outbox::open(&path, lim).unwrap();
    append_seq(&mut w, "d", 10);
    let mut r = Outbox::open_read_only(&path).unwrap();
    assert_eq!(stats(&mut r), stats(&mut w));
    assert_eq!(r.stats().unwrap().max_bytes, 123_456);

    // The writer keeps working while the reader is open, and even mid-read.
    let page = r.read_after(0, 5).unwrap();
    append_seq(&mut w, "d", 10);
    let ids: Vec<i64> = page.iter().map(|m| m.id).collect();
    w.delete(&ids).unwrap();
    assert_eq!(stats(&mut r), stats(&mut w), "reader sees the commits");
    assert_eq!(r.read_after(0, 100).unwrap(), all(&mut w));

    for err in [
        r.append(|_| vec![msg("x", b"")]).unwrap_err(),
        r.delete(&[ids[0]]).unwrap_err(),
        r.enforce_age().unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()));
    }
    assert_eq!(r.stats().unwrap().rows, 15);

    // With the writer gone (WAL checkpointed and removed), a reader still opens and changes nothing.
    drop(r);
    drop(w);
    let content = std::fs::read(&path).unwrap();
    let mut r = Outbox::open_read_only(&path).unwrap();
    assert_eq!(r.stats().unwrap().rows, 15);
    assert_eq!(r.read_after(0, 1000).unwrap().len(), 15);
    drop(r);
    assert_eq!(std::fs::read(&path).unwrap(), content);
    let mut w = Outbox::open(&path, lim).unwrap();
    assert_eq!(w.stats().unwrap().rows, 15);
}

#[test]
fn a_second_writer_is_refused_naming_the_lock_until_the_first_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut a = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut a, "d", 3);
    let err = Outbox::open(&path, limits()).unwrap_err();
    let lock = weir_store::lock_path(&path);
    assert_eq!(lock, dir.path().join("outbox.db.lock"));
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&lock.display().to_string()) && text.contains("another weir"),
        "{text}"
    );
    // A reader is not held back by the writer's lock.
    let mut r = Outbox::open_read_only(&path).unwrap();
    assert_eq!(r.stats().unwrap().rows, 3);
    // Dropping the writer releases the lock (so does the death of its process).
    drop(a);
    let mut b = Outbox::open(&path, limits()).unwrap();
    assert_eq!(append_seq(&mut b, "d", 1).first_id, 4);
    assert!(lock.exists());
}

#[test]
fn a_writer_that_bypassed_the_lock_is_detected_and_ids_and_seqs_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut a = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut a, "d", 7);
    // Another writer (say an older Weir without the lock) commits behind this handle's back,
    // the way an Outbox does: rows, the device's sequence and the counters in one transaction.
    let foreign = |from_id: i64, seqs: std::ops::RangeInclusive<u64>| {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        let tx = c.transaction().unwrap();
        let mut id = from_id;
        let mut bytes = 0u64;
        for s in seqs.clone() {
            let topic = format!("d/{s}");
            let payload = s.to_string();
            bytes += size(&topic, payload.as_bytes());
            tx.execute(
                "INSERT INTO outbox (id, topic, payload, qos, retain, enqueued_ns) \
                 VALUES (?1, ?2, ?3, 1, 0, 0)",
                rusqlite::params![id, topic, payload.as_bytes()],
            )
            .unwrap();
            id += 1;
        }
        tx.execute(
            "UPDATE state SET last_seq = ?1 WHERE ns = 1 AND key = 'd'",
            [*seqs.end() as i64],
        )
        .unwrap();
        tx.execute(
            "UPDATE state SET write_gen = write_gen + 1, last_id = ?1, rows = rows + ?2, \
             bytes = bytes + ?3 WHERE ns = 0",
            rusqlite::params![id - 1, seqs.count() as i64, bytes as i64],
        )
        .unwrap();
        tx.commit().unwrap();
    };
    foreign(8, 8..=14);
    let rep = append_seq(&mut a, "d", 7);
    assert_eq!(rep.first_id, 15);
    let first = all(&mut a)[0].id;
    a.delete(&[first]).unwrap();
    foreign(22, 22..=28);
    append_seq(&mut a, "d", 7);
    let rows = all(&mut a);
    assert_eq!(seqs_of(&rows, "d"), (2..=35).collect::<Vec<u64>>());
    let st = a.stats().unwrap();
    assert_eq!(st.rows, 34);
    assert_eq!(
        st.bytes,
        rows.iter().map(|r| size(&r.topic, &r.payload)).sum::<u64>()
    );
}

#[test]
fn dead_letters_are_set_aside_counted_listed_and_requeued() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut ob, "d", 5);
    let rows = all(&mut ob);
    let moved = ob
        .dead_letter(&[
            (rows[1].id, "refused: NotAuthorized".into()),
            (rows[3].id, "ended the connection 3 times".into()),
            (999, "gone already".into()),
        ])
        .unwrap();
    assert_eq!(moved, 2);
    // The queue no longer holds them; stats count them apart.
    let left = all(&mut ob);
    assert_eq!(
        left,
        vec![rows[0].clone(), rows[2].clone(), rows[4].clone()]
    );
    let st = ob.stats().unwrap();
    assert_eq!(st.rows, 3);
    assert_eq!(st.dead_letter_rows, 2);
    assert_eq!(
        st.dead_letter_bytes,
        size(&rows[1].topic, &rows[1].payload) + size(&rows[3].topic, &rows[3].payload)
    );
    let dead = ob.dead_letters(10).unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].message, rows[1]);
    assert_eq!(dead[0].reason, "refused: NotAuthorized");
    assert_eq!(dead[1].message, rows[3]);
    assert!(dead[1].dead_ns >= rows[3].enqueued_ns);
    // Seen by a reader too, and they survive a reopen.
    assert_eq!(
        Outbox::open_read_only(&path)
            .unwrap()
            .stats()
            .unwrap()
            .dead_letter_rows,
        2
    );
    drop(ob);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    assert_eq!(ob.stats().unwrap().dead_letter_rows, 2);
    // Delivering the rest leaves the dead letters alone.
    ob.delete(&[rows[0].id, rows[2].id, rows[4].id]).unwrap();
    assert_eq!(ob.stats().unwrap().rows, 0);
    // Requeued at the end of the queue, in their order, with new ids.
    assert_eq!(ob.requeue_dead_letters().unwrap(), 2);
    let back = all(&mut ob);
    assert_eq!(
        back.iter()
            .map(|m| (m.topic.as_str(), m.payload.as_slice()))
            .collect::<Vec<_>>(),
        vec![
            (rows[1].topic.as_str(), rows[1].payload.as_slice()),
            (rows[3].topic.as_str(), rows[3].payload.as_slice())
        ]
    );
    assert!(back[0].id > rows[4].id && back[1].id == back[0].id + 1);
    let st = ob.stats().unwrap();
    assert_eq!(
        (st.rows, st.dead_letter_rows, st.dead_letter_bytes),
        (2, 0, 0)
    );
    assert_eq!(
        st.bytes,
        back.iter().map(|m| size(&m.topic, &m.payload)).sum::<u64>()
    );
    assert_eq!(ob.requeue_dead_letters().unwrap(), 0);
    // A read-only handle can neither set aside nor requeue.
    let mut r = Outbox::open_read_only(&path).unwrap();
    assert!(matches!(
        r.dead_letter(&[(back[0].id, "x".into())]).unwrap_err(),
        StoreError::ReadOnly { .. }
    ));
    assert!(matches!(
        r.requeue_dead_letters().unwrap_err(),
        StoreError::ReadOnly { .. }
    ));
}

#[test]
fn dead_letters_are_bounded_by_age_and_count() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let clock = sim();
    let mut ob = open_sim(&path, limits(), &clock);
    append_seq(&mut ob, "d", 3);
    let rows = all(&mut ob);
    ob.dead_letter(&[(rows[0].id, "x".into())]).unwrap();
    // Not yet due.
    clock.advance(Duration::from_nanos(1));
    assert_eq!(ob.enforce_age().unwrap(), 0);
    clock.advance(limits().max_age);
    assert_eq!(ob.enforce_age().unwrap(), 3);
    let st = ob.stats().unwrap();
    assert_eq!((st.rows, st.dead_letter_rows), (0, 0));
    assert_eq!(st.dropped_for_age_total, 3);

    // Beyond DEAD_LETTER_MAX_ROWS the oldest go, counted as dropped for space.
    let n = weir_store::DEAD_LETTER_MAX_ROWS as usize + 5;
    append_seq(&mut ob, "e", n);
    let ids: Vec<(i64, String)> = all(&mut ob)
        .iter()
        .map(|m| (m.id, "refused".to_string()))
        .collect();
    assert_eq!(ob.dead_letter(&ids).unwrap(), n as u64);
    let st = ob.stats().unwrap();
    assert_eq!(st.dead_letter_rows, weir_store::DEAD_LETTER_MAX_ROWS);
    assert_eq!(st.dropped_for_space_total, 5);
    assert_eq!(ob.dead_letters(1).unwrap()[0].message.id, ids[5].0);
}

/// The version 1 schema, as the builds before dead letters created it.
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
INSERT INTO meta VALUES (0, 4, 3, 3, 0, 7, 1, 1000000);
INSERT INTO device_seq VALUES ('d', 3);
INSERT INTO outbox VALUES (1, 'd/1', X'31', 1, 0, 1000), (2, 'd/2', X'32', 1, 0, 1000),
    (3, 'd/3', X'33', 1, 0, 1000);
INSERT INTO batch VALUES (1, 3, 1000);
UPDATE meta SET bytes = 3 * (4 + 32);
PRAGMA application_id = 1464158546;
PRAGMA user_version = 1;
";

#[test]
fn a_version_1_outbox_is_upgraded_in_place_and_keeps_its_rows() {
    assert_eq!(SCHEMA_VERSION, 4);
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(SCHEMA_V1)
        .unwrap();
    // A reader (`weir buffer stats` during an upgrade) sees it as it is and changes nothing.
    let before = std::fs::read(&path).unwrap();
    let mut r = Outbox::open_read_only(&path).unwrap();
    let st = r.stats().unwrap();
    assert_eq!(
        (st.rows, st.dead_letter_rows, st.dropped_for_space_total),
        (3, 0, 7)
    );
    assert!(r.dead_letters(10).unwrap().is_empty());
    drop(r);
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let mut ob = Outbox::open(&path, limits()).unwrap();
    let rows = all(&mut ob);
    assert_eq!(
        rows.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        ["d/1", "d/2", "d/3"]
    );
    let st = ob.stats().unwrap();
    assert_eq!((st.rows, st.bytes, st.dropped_for_space_total), (3, 108, 7));
    // Ids and sequence numbers continue; dead letters work.
    let rep = append_seq(&mut ob, "d", 1);
    assert_eq!(rep.first_id, 4);
    assert_eq!(seqs_of(&all(&mut ob), "d"), [1, 2, 3, 4]);
    assert_eq!(ob.dead_letter(&[(2, "refused".into())]).unwrap(), 1);
    drop(ob);
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i32 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    drop(c);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    assert_eq!(ob.stats().unwrap().dead_letter_rows, 1);
    assert_eq!(ob.stats().unwrap().rows, 3);
}

#[test]
fn outbox_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send + 'static>() {}
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_send::<Outbox>();
    assert_error::<StoreError>();
}

/// Random operations against a simple in-memory model, with reopens in between.
#[test]
fn randomized_operations_match_a_model() {
    for seed in 1..=4u64 {
        run_model(seed);
    }
}

fn run_model(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let lim = Limits {
        max_bytes: rng.random_range(2_000..20_000),
        max_age: Duration::from_millis(rng.random_range(0..5)),
        synchronous_full: false,
        min_free_bytes: 0,
    };
    let clock = sim();
    let mut ob = open_sim(&path, lim, &clock);
    // id -> (topic, payload, retain)
    let mut model: BTreeMap<i64, (String, Vec<u8>, bool)> = BTreeMap::new();
    // id -> boot clock at enqueue, of stored rows and of dead letters
    let mut enqueued: BTreeMap<i64, i64> = BTreeMap::new();
    let mut dead: BTreeMap<i64, i64> = BTreeMap::new();
    let mut seqs: BTreeMap<String, u64> = BTreeMap::new();
    let (mut last_id, mut dropped_space, mut dropped_age) = (0i64, 0u64, 0u64);
    let devices = ["a", "b", "c", "ü/7"];

    for step in 0..300 {
        clock.advance(Duration::from_micros(rng.random_range(0..300)));
        match rng.random_range(0..100) {
            0..=49 => {
                let n = rng.random_range(0..20);
                let msgs: Vec<(String, Vec<u8>, bool, &str)> = (0..n)
                    .map(|_| {
                        let dev = devices[rng.random_range(0..devices.len())];
                        let plen = rng.random_range(0..300);
                        let payload: Vec<u8> = (0..plen).map(|_| rng.random()).collect();
                        (format!("t/{dev}"), payload, rng.random_bool(0.2), dev)
                    })
                    .collect();
                let mut got_seqs = Vec::new();
                let rep = ob
                    .append(|seq| {
                        msgs.iter()
                            .map(|(t, p, r, dev)| {
                                got_seqs.push((dev.to_string(), seq.next(dev)));
                                NewMessage {
                                    topic: t.clone(),
                                    payload: p.clone(),
                                    qos: 1,
                                    retain: *r,
                                }
                            })
                            .collect()
                    })
                    .unwrap();
                for (dev, s) in got_seqs {
                    let e = seqs.entry(dev).or_insert(0);
                    assert_eq!(s, *e + 1, "seed {seed} step {step}");
                    *e = s;
                }
                assert_eq!(rep.appended, n);
                assert_eq!(rep.first_id, last_id + 1);
                for (t, p, r, _) in msgs {
                    last_id += 1;
                    model.insert(last_id, (t, p, r));
                    enqueued.insert(last_id, clock.now().boottime_ns);
                }
                assert_eq!(rep.last_id, last_id);
                // Model of the byte bound: drop from the front.
                let mut total: u64 = model.values().map(|(t, p, _)| size(t, p)).sum();
                let mut dropped = 0;
                while total > lim.max_bytes {
                    let (_, (t, p, _)) = model.pop_first().unwrap();
                    total -= size(&t, &p);
                    dropped += 1;
                }
                assert_eq!(rep.dropped_for_space, dropped, "seed {seed} step {step}");
                dropped_space += dropped;
            }
            50..=59 => {
                let ids: Vec<i64> = (0..rng.random_range(0..30))
                    .map(|_| rng.random_range(last_id - 40..=last_id + 2))
                    .collect();
                ob.delete(&ids).unwrap();
                for id in ids {
                    model.remove(&id);
                }
            }
            60..=64 => {
                let ids: Vec<(i64, String)> = (0..rng.random_range(0..4))
                    .map(|_| (rng.random_range(last_id - 40..=last_id), "x".to_owned()))
                    .collect();
                let moved = ob.dead_letter(&ids).unwrap();
                let mut n = 0;
                for (id, _) in ids {
                    if model.remove(&id).is_some() {
                        dead.insert(id, enqueued[&id]);
                        n += 1;
                    }
                }
                assert_eq!(moved, n, "seed {seed} step {step}");
            }
            65..=79 => {
                let after = rng.random_range(last_id - 50..=last_id);
                let limit = rng.random_range(0..40);
                let got = ob.read_after(after, limit).unwrap();
                let want: Vec<i64> = model
                    .range(after + 1..)
                    .take(limit)
                    .map(|(id, _)| *id)
                    .collect();
                assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), want);
                for r in got {
                    let (t, p, ret) = &model[&r.id];
                    assert_eq!((&r.topic, &r.payload, r.retain, r.qos), (t, p, *ret, 1));
                }
            }
            80..=87 => {
                // Every row (and dead letter) enqueued more than max_age ago on the boot clock
                // goes, whatever was deleted around it.
                let cutoff = clock.now().boottime_ns - lim.max_age.as_nanos() as i64;
                let old: Vec<i64> = model
                    .keys()
                    .copied()
                    .filter(|id| enqueued[id] < cutoff)
                    .collect();
                let old_dead: Vec<i64> = dead
                    .iter()
                    .filter(|(_, t)| **t < cutoff)
                    .map(|(id, _)| *id)
                    .collect();
                let n = ob.enforce_age().unwrap();
                assert_eq!(
                    n as usize,
                    old.len() + old_dead.len(),
                    "seed {seed} step {step}"
                );
                for id in &old {
                    model.remove(id);
                }
                for id in &old_dead {
                    dead.remove(id);
                }
                let ids: Vec<i64> = all(&mut ob).iter().map(|r| r.id).collect();
                assert_eq!(ids, model.keys().copied().collect::<Vec<_>>());
                dropped_age += n;
            }
            88..=93 => {
                drop(ob);
                ob = open_sim(&path, lim, &clock);
            }
            _ => {
                let st = ob.stats().unwrap();
                assert_eq!(st.rows as usize, model.len());
                assert_eq!(st.newest_id, model.last_key_value().map(|(k, _)| *k));
            }
        }
        let st = ob.stats().unwrap();
        assert_eq!(st.rows as usize, model.len(), "seed {seed} step {step}");
        assert_eq!(
            st.bytes,
            model.values().map(|(t, p, _)| size(t, p)).sum::<u64>()
        );
        assert_eq!(st.dropped_for_space_total, dropped_space);
        assert_eq!(st.dropped_for_age_total, dropped_age);
        assert_eq!(st.dead_letter_rows as usize, dead.len());
        assert!(st.bytes <= lim.max_bytes);
    }
    let rows = all(&mut ob);
    assert_eq!(
        rows.iter().map(|r| r.id).collect::<Vec<_>>(),
        model.keys().copied().collect::<Vec<_>>()
    );
}

#[test]
fn a_reserve_larger_than_the_free_space_refuses_appends_and_keeps_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    let mut ob = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut ob, "d", 3);
    drop(ob);
    // No filesystem has u64::MAX bytes free: every append is refused, whole.
    let full = Limits {
        min_free_bytes: u64::MAX,
        ..limits()
    };
    let mut ob = Outbox::open(&path, full).unwrap();
    let err = ob
        .append(|seq| vec![msg("d/x", seq.next("d").to_string().as_bytes())])
        .unwrap_err();
    match &err {
        StoreError::DiskFull {
            path: p,
            min_free_bytes,
            available_bytes,
        } => {
            assert_eq!(p, &path);
            assert_eq!(*min_free_bytes, u64::MAX);
            assert!(*available_bytes < u64::MAX);
        }
        other => panic!("expected DiskFull, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("the disk is full") && text.contains(&path.display().to_string()),
        "{text}"
    );
    assert_eq!(
        ob.stats().unwrap().rows,
        3,
        "nothing of the refused batch is stored"
    );
    // Deleting delivered rows is never refused: it is how space comes back.
    let ids: Vec<i64> = all(&mut ob).iter().map(|r| r.id).take(2).collect();
    ob.delete(&ids).unwrap();
    assert_eq!(ob.stats().unwrap().rows, 1);
    drop(ob);
    // With room again the next batch continues the sequence: the refused one consumed nothing.
    let mut ob = Outbox::open(&path, limits()).unwrap();
    append_seq(&mut ob, "d", 1);
    assert_eq!(seqs_of(&all(&mut ob), "d"), vec![3, 4]);
}

/// Version 2 (today's message rows plus dead letters), as the builds before typed rows created it.
const SCHEMA_V2_TAIL: &str = "
CREATE TABLE dead_letter (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, enqueued_ns INTEGER NOT NULL,
    dead_ns INTEGER NOT NULL, reason TEXT NOT NULL);
INSERT INTO dead_letter VALUES (9, 'd/old', X'39', 1, 0, 1000, 2000, 'refused');
PRAGMA user_version = 2;
";

#[test]
fn a_version_2_outbox_keeps_its_message_rows_ahead_of_typed_rows() {
    use weir_store::record::{self, QualityRef, ReadingRef, ValueRef};
    use weir_store::{NewRow, RowKind};
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("{SCHEMA_V1}{SCHEMA_V2_TAIL}"))
        .unwrap();
    // A reader of the old file sees its rows as messages and changes nothing.
    let before = std::fs::read(&path).unwrap();
    let mut r = Outbox::open_read_only(&path).unwrap();
    let old = r.read_after(0, 10).unwrap();
    assert_eq!(old.len(), 3);
    assert!(old
        .iter()
        .all(|m| m.kind == RowKind::Message as u8 && m.seq == 0));
    assert_eq!(r.dead_letters(10).unwrap()[0].message.kind, 0);
    drop(r);
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let mut ob = Outbox::open(&path, limits()).unwrap();
    let mut body = Vec::new();
    record::encode_reading(
        &mut body,
        &ReadingRef {
            point: "t",
            value: ValueRef::F64(1.5),
            unit: Some("°C"),
            ts_ns: 5,
            quality: QualityRef::Good,
        },
    );
    let rep = ob
        .append_rows(|seq| {
            vec![NewRow {
                kind: RowKind::Reading,
                key: "d".into(),
                body: body.clone(),
                seq: seq.next("d"),
                qos: 1,
                retain: false,
            }]
        })
        .unwrap();
    assert_eq!(rep.first_id, 4);
    let rows = all(&mut ob);
    // Old rows first, as stored; then the typed row with its seq continuing the device's series.
    assert_eq!(
        rows.iter()
            .map(|m| (m.id, m.kind, m.seq, m.topic.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, 0, 0, "d/1"),
            (2, 0, 0, "d/2"),
            (3, 0, 0, "d/3"),
            (4, 1, 4, "d")
        ]
    );
    let got: Vec<_> = record::readings(&rows[3].payload)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got[0].unit, Some("°C"));
    // A typed row set aside and requeued keeps its kind, seq and body (replay is identical).
    assert_eq!(ob.dead_letter(&[(4, "refused".into())]).unwrap(), 1);
    let dead = ob.dead_letters(10).unwrap();
    assert_eq!(
        dead.iter()
            .map(|d| (d.message.id, d.message.kind, d.message.seq))
            .collect::<Vec<_>>(),
        [(4, RowKind::Reading as u8, 4), (9, 0, 0)]
    );
    assert_eq!(ob.requeue_dead_letters().unwrap(), 2);
    let rows = all(&mut ob);
    let back = &rows[rows.len() - 2];
    assert_eq!((back.kind, back.seq, &back.payload), (1, 4, &body));
    assert_eq!(rows[rows.len() - 1].topic, "d/old");
    let st = ob.stats().unwrap();
    assert_eq!(
        st.bytes,
        rows.iter().map(|m| size(&m.topic, &m.payload)).sum::<u64>()
    );
}

/// What version 3 (typed rows) added to a version 2 file, as that build ran it.
const SCHEMA_V3_TAIL: &str = "
ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN sent_topic TEXT;
PRAGMA user_version = 3;
";

#[test]
fn a_version_3_outbox_is_upgraded_and_its_rows_age_from_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(&dir);
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("{SCHEMA_V1}{SCHEMA_V2_TAIL}{SCHEMA_V3_TAIL}"))
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let mut r = Outbox::open_read_only(&path).unwrap();
    assert_eq!(
        (r.stats().unwrap().rows, r.read_after(0, 9).unwrap().len()),
        (3, 3)
    );
    drop(r);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "a reader changes nothing"
    );

    let lim = Limits {
        max_age: Duration::from_secs(3600),
        ..limits()
    };
    let clock = sim();
    let mut ob = open_sim(&path, lim, &clock);
    // Stored in 1970 by the wall clock (an RTC-less board): not a reason to drop them.
    assert_eq!(ob.enforce_age().unwrap(), 0);
    let st = ob.stats().unwrap();
    assert_eq!(
        (st.rows, st.dead_letter_rows, st.oldest_age_ns),
        (3, 1, Some(0))
    );
    assert_eq!(
        (st.dropped_for_space_total, st.dropped_for_age_total),
        (7, 1)
    );
    clock.advance(Duration::from_secs(1));
    let rep = append_seq(&mut ob, "d", 1);
    assert_eq!(rep.first_id, 4);
    assert_eq!(seqs_of(&all(&mut ob), "d"), [1, 2, 3, 4]);
    drop(ob);
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i32 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        (version, tables),
        (
            4,
            vec!["dead_letter".into(), "outbox".into(), "state".into()]
        )
    );
    drop(c);
    // Their age counts from the upgrade: due max_age later, every one counted.
    let mut ob = open_sim(&path, lim, &clock);
    clock.advance(Duration::from_secs(3599) + Duration::from_nanos(1));
    assert_eq!(ob.enforce_age().unwrap(), 4, "3 rows and the dead letter");
    let st = ob.stats().unwrap();
    assert_eq!(
        (st.rows, st.dead_letter_rows, st.dropped_for_age_total),
        (1, 0, 5)
    );
    assert_eq!(seqs_of(&all(&mut ob), "d"), [4]);
}
