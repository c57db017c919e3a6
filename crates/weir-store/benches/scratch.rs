use rusqlite::{params, Connection};
use std::time::Instant;
const N: i64 = 300_000;
const B: i64 = 1000;
fn setup(dir: &std::path::Path, name: &str, index: bool) -> Connection {
    let c = Connection::open(dir.join(name)).unwrap();
    c.pragma_update(None, "journal_mode", "WAL").unwrap();
    c.pragma_update(None, "synchronous", "FULL").unwrap();
    c.execute_batch("CREATE TABLE q (id INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, ts INTEGER NOT NULL)").unwrap();
    if index {
        c.execute_batch("CREATE INDEX q_ts ON q(ts)").unwrap();
    }
    c
}
fn fill(c: &mut Connection) -> f64 {
    let topic = "weir/gh1/climate-007/telemetry";
    let payload = br#"{"point":"temperature","value":18.123,"unit":"C","ts":1795318874369314342,"seq":12345}"#;
    let t = Instant::now();
    let mut id = 0;
    for b in 0..N / B {
        let tx = c.transaction().unwrap();
        {
            let mut s = tx
                .prepare_cached("INSERT INTO q VALUES (?1,?2,?3,1,0,?4)")
                .unwrap();
            for _ in 0..B {
                id += 1;
                s.execute(params![
                    id,
                    topic,
                    &payload[..],
                    1_700_000_000_000_000_000i64 + b
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    N as f64 / t.elapsed().as_secs_f64()
}
fn drain(c: &mut Connection, mode: &str) -> f64 {
    let t = Instant::now();
    let mut after = 0i64;
    let mut total = 0i64;
    loop {
        let tx = c.transaction().unwrap();
        let ids: Vec<i64> = {
            let mut s = tx
                .prepare_cached(
                    "SELECT id, topic, payload FROM q WHERE id > ?1 ORDER BY id LIMIT ?2",
                )
                .unwrap();
            s.query_map(params![after, B], |r| {
                let _t: String = r.get(1)?;
                let _p: Vec<u8> = r.get(2)?;
                r.get(0)
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        if ids.is_empty() {
            break;
        }
        match mode {
            "plain" => {
                let mut s = tx.prepare_cached("DELETE FROM q WHERE id = ?1").unwrap();
                for id in &ids {
                    s.execute([id]).unwrap();
                }
            }
            "returning" => {
                let mut s = tx
                    .prepare_cached(
                        "DELETE FROM q WHERE id = ?1 RETURNING octet_length(topic)+length(payload)",
                    )
                    .unwrap();
                for id in &ids {
                    let v: Option<i64> =
                        rusqlite::OptionalExtension::optional(s.query_row([id], |r| r.get(0)))
                            .unwrap();
                    total += v.unwrap_or(0);
                }
            }
            "range_sum" => {
                let (a, b) = (ids[0], *ids.last().unwrap());
                let v: i64 = tx.prepare_cached("SELECT sum(octet_length(topic)+length(payload)) FROM q WHERE id BETWEEN ?1 AND ?2").unwrap().query_row([a,b], |r| r.get(0)).unwrap();
                total += v;
                tx.prepare_cached("DELETE FROM q WHERE id BETWEEN ?1 AND ?2")
                    .unwrap()
                    .execute([a, b])
                    .unwrap();
            }
            "range_returning" => {
                let (a, b) = (ids[0], *ids.last().unwrap());
                let mut s = tx.prepare_cached("DELETE FROM q WHERE id BETWEEN ?1 AND ?2 RETURNING octet_length(topic)+length(payload)").unwrap();
                let mut r = s.query([a, b]).unwrap();
                while let Some(row) = r.next().unwrap() {
                    total += row.get::<_, i64>(0).unwrap();
                }
            }
            _ => unreachable!(),
        }
        after = *ids.last().unwrap();
        tx.commit().unwrap();
    }
    std::hint::black_box(total);
    N as f64 / t.elapsed().as_secs_f64()
}
fn main() {
    let d = tempfile::tempdir().unwrap();
    for (i, (index, mode)) in [
        (false, "plain"),
        (true, "plain"),
        (false, "returning"),
        (true, "returning"),
        (false, "range_sum"),
        (true, "range_sum"),
        (false, "range_returning"),
        (true, "range_returning"),
        (false, "plain"),
    ]
    .iter()
    .enumerate()
    {
        let mut c = setup(d.path(), &format!("{i}.db"), *index);
        let ins = fill(&mut c);
        let del = drain(&mut c, mode);
        println!("index={index:5} delete={mode:16} insert {ins:>8.0}/s read+delete {del:>8.0}/s");
    }
}
