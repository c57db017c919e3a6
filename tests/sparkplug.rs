//! `mqtt.format: sparkplug_b` end to end: a pymodbus device → `weir run` → mosquitto → a Sparkplug
//! host application written on pysparkplug (PyPI, `tests/peers/sparkplug_host.py`), which decodes
//! every message itself (aliases through the births it saw) and checks the host's view of the
//! rules: births before data, `seq` continuity, NDEATH `bdSeq` = the NBIRTH's, rebirth on request,
//! a DCMD reaching the pymodbus register, `is_historical` exactly on the backlog after a host
//! outage and after a broker outage.
//!
//! Needs `WEIR_SPARKPLUG_PYTHON` and `WEIR_MODBUS_PYTHON` (scripts/lib.sh `need_sparkplug_peers`,
//! `need_pymodbus`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

const NODE: &str = "weir1";
const SP_DEVICE: &str = "plant%2Fpump";

fn python(var: &str, venv: &str) -> std::path::PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return p.into();
    }
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join(venv);
    assert!(
        v.exists(),
        "{var}: run `. scripts/lib.sh; need_sparkplug_peers; need_pymodbus`"
    );
    v
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The pysparkplug host: its stdin for commands, every decoded message it printed.
struct Host {
    child: Child,
    stdin: ChildStdin,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Host {
    fn start(port: u16) -> Host {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/sparkplug_host.py");
        let mut child = Command::new(python(
            "WEIR_SPARKPLUG_PYTHON",
            "target/sparkplug-venv/bin/python",
        ))
        .arg(script)
        .args([&port.to_string(), "plant", "scada"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python with pysparkplug");
        let stdin = child.stdin.take().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(v) = serde_json::from_str(&line) {
                    s2.lock().unwrap().push(v);
                }
            }
        });
        let h = Host { child, stdin, seen };
        wait_until("the host connected", Duration::from_secs(20), || {
            h.count("ready") == 1
        });
        h
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn count(&self, kind: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == kind)
            .count()
    }

    fn messages(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rows(gw: &Gateway) -> u64 {
    let (_, out, _) = gw.cli(&["buffer", "stats"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| v["rows"].as_u64())
        .unwrap_or(0)
}

/// The DDATA metrics of `point` with (timestamp ms, historical, value).
fn ddata(msgs: &[serde_json::Value], point: &str) -> Vec<(u64, bool, serde_json::Value)> {
    msgs.iter()
        .filter(|m| m["type"] == "DDATA")
        .flat_map(|m| m["metrics"].as_array().unwrap().clone())
        .filter(|x| x["name"] == point)
        .map(|x| {
            (
                x["ts"].as_u64().unwrap(),
                x["historical"].as_bool().unwrap(),
                x["value"].clone(),
            )
        })
        .collect()
}

#[test]
fn a_pysparkplug_host_sees_births_seq_bdseq_rebirth_dcmd_and_historical_backlogs() {
    let mut broker = Mosquitto::start();
    let mut host = Host::start(broker.port);
    let mport = free_port();
    let mut pump = ModbusPeer::tcp(mport, "1");
    pump.cmd("setv 1 h 10 f32 CDAB 12.5");
    let sources = format!(
        r#"sources:
  - modbus:
      name: plant
      poll_ms: 100
      tcp:
        - host: 127.0.0.1
          port: {mport}
          devices:
            - id: plant/pump
              unit: 1
              points:
                - {{ name: flow_sp, table: holding, address: 10, type: f32, order: CDAB, unit: m3/h, writable: true }}
                - {{ name: running, table: coil, address: 0 }}
"#
    );
    let mqtt = format!(
        "  format: sparkplug_b\n  sparkplug:\n    group_id: plant\n    edge_node_id: {NODE}\n    primary_host_id: scada\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(dir.path(), &config_with(broker.port, &mqtt, "", &sources));

    // 1. No host online yet: nothing is born, readings wait in the outbox.
    wait_until("a backlog in the outbox", Duration::from_secs(20), || {
        rows(&gw) >= 5
    });
    assert_eq!(host.count("NBIRTH"), 0, "{}", gw.log());

    // 2. The host comes online: births, then the backlog (historical), then live data.
    let online1 = now_ms();
    host.send("online");
    wait_until(
        "live data after the backlog",
        Duration::from_secs(20),
        || {
            ddata(&host.messages(), "flow_sp")
                .iter()
                .any(|(ts, h, _)| !h && *ts > online1 + 1000)
        },
    );

    // 3. A DCMD write reaches the pymodbus register and shows in a later DDATA.
    host.send(&format!("dcmd {NODE} {SP_DEVICE} flow_sp 42.5"));
    wait_until("the register written", Duration::from_secs(10), || {
        pump.cmd("getv 1 h 10 f32 CDAB 2") == "42.5"
    });
    wait_until("the new value in DDATA", Duration::from_secs(10), || {
        ddata(&host.messages(), "flow_sp")
            .iter()
            .any(|(_, h, v)| !h && v.as_f64() == Some(42.5))
    });
    // Not writable: refused by the router, nothing written.
    host.send(&format!("dcmd {NODE} {SP_DEVICE} running true"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pump.cmd("get 1 c 0 1"), "0");

    // 4. Rebirth on request: NBIRTH (same bdSeq) and DBIRTH again.
    host.send(&format!("rebirth {NODE}"));
    wait_until("a rebirth", Duration::from_secs(10), || {
        host.count("NBIRTH") == 2 && host.count("DBIRTH") >= 2
    });

    // 5. Host outage: the node dies (NDEATH), readings pile up; the host returns: a new session,
    //    the backlog historical.
    host.send("offline");
    wait_until("NDEATH", Duration::from_secs(10), || {
        host.count("NDEATH") == 1
    });
    let offline_at = now_ms();
    wait_until("a backlog", Duration::from_secs(20), || rows(&gw) >= 10);
    let online2 = now_ms();
    host.send("online");
    wait_until(
        "live data after the second backlog",
        Duration::from_secs(20),
        || {
            ddata(&host.messages(), "flow_sp")
                .iter()
                .any(|(ts, h, _)| !h && *ts > online2 + 1000)
        },
    );

    // 6. Broker outage: rows are committed meanwhile and sent historical when it is back.
    broker.stop();
    std::thread::sleep(Duration::from_secs(2));
    let broker_back = now_ms();
    broker.start_again();
    // The host publishes its STATE again once it is reconnected (mosquitto here keeps nothing).
    wait_until("a third session", Duration::from_secs(30), || {
        host.send("online");
        std::thread::sleep(Duration::from_millis(300));
        host.count("NBIRTH") >= 4
    });
    wait_until(
        "live data after the broker outage",
        Duration::from_secs(20),
        || {
            ddata(&host.messages(), "flow_sp")
                .iter()
                .any(|(ts, h, _)| !h && *ts > broker_back + 2000)
        },
    );

    let msgs = host.messages();
    // Births before data; seq continuous from NBIRTH (0), wrapping at 255, within a session;
    // NDEATH carries the bdSeq of the NBIRTH it ends.
    let mut seq: Option<u64> = None;
    let mut bdseq: Option<u64> = None;
    let mut born_devices = std::collections::HashSet::new();
    let mut sessions = Vec::new();
    for m in &msgs {
        let t = m["type"].as_str().unwrap();
        match t {
            "NBIRTH" => {
                assert_eq!(m["seq"], 0, "{m}");
                seq = Some(1);
                let b = m["bdseq"].as_u64().unwrap();
                if bdseq != Some(b) {
                    sessions.push(b);
                }
                bdseq = Some(b);
                born_devices.clear();
            }
            "NDEATH" => {
                assert_eq!(
                    m["bdseq"].as_u64(),
                    bdseq,
                    "NDEATH bdSeq = the NBIRTH's: {m}"
                );
                seq = None;
            }
            "DBIRTH" | "DDATA" | "DDEATH" => {
                let s = m["seq"].as_u64().unwrap();
                assert_eq!(Some(s), seq, "seq continuity: {m}");
                seq = Some((s + 1) % 256);
                let dev = m["device"].as_str().unwrap().to_string();
                assert_eq!(dev, SP_DEVICE);
                if t == "DBIRTH" {
                    born_devices.insert(dev);
                } else {
                    assert!(born_devices.contains(&dev), "{t} before DBIRTH: {m}");
                }
            }
            _ => {}
        }
    }
    // bdSeq moves on with every connection attempt (attempts while the broker was down count:
    // the value is persisted before the connect), so a new session never reuses the last one's.
    assert!(sessions.len() >= 3, "a session per connect: {sessions:?}");
    for w in sessions.windows(2) {
        assert_ne!(w[0], w[1], "a new bdSeq per connect: {sessions:?}");
    }
    // DBIRTH: every point, with datatype and unit.
    let dbirth = msgs.iter().find(|m| m["type"] == "DBIRTH").unwrap();
    let names: Vec<&str> = dbirth["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"flow_sp") && names.contains(&"running"),
        "{dbirth}"
    );
    // is_historical exactly on the backlogs: readings taken while nothing could be published are
    // historical, readings taken once the session was live are not.
    let points = ddata(&msgs, "flow_sp");
    let edge = 500; // a poll in flight while the session opened
    for (ts, historical, _) in &points {
        let backlog = *ts + edge < online1
            || (*ts > offline_at + edge && *ts + edge < online2)
            || (*ts > broker_back - 2000 + edge && *ts + edge < broker_back);
        let live = (*ts > online1 + edge && *ts + edge < offline_at)
            || (*ts > online2 + edge && *ts + edge < broker_back - 2000);
        if backlog {
            assert!(historical, "a backlog reading not historical at {ts}");
        }
        if live {
            assert!(!historical, "a live reading historical at {ts}");
        }
    }
    assert!(points.iter().filter(|p| p.1).count() >= 10);
    assert!(points.iter().filter(|p| !p.1).count() >= 10);
    drop(gw);
}

/// The pysparkplug host checks `seq` itself across a wrap: a backlog of more than 256 rows sent in
/// one session (host offline while the simulator runs, then online) takes `seq` past 255 back to
/// 0; the host counts the wrap and finds no message out of order.
#[test]
fn the_host_sees_seq_wrap_from_255_to_0_without_a_gap() {
    let broker = Mosquitto::start();
    let mut host = Host::start(broker.port);
    let mqtt = format!(
        "  format: sparkplug_b\n  sparkplug:\n    group_id: plant\n    edge_node_id: {NODE}\n    primary_host_id: scada\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(
        dir.path(),
        &config(broker.port, "      interval_ms: 20\n", &mqtt, ""),
    );
    // Host offline: a backlog of more than one seq cycle builds up in the outbox.
    wait_until("a backlog of 300 rows", Duration::from_secs(60), || {
        rows(&gw) >= 300
    });
    assert_eq!(host.count("NBIRTH"), 0, "{}", gw.log());
    host.send("online");
    wait_until("the backlog sent", Duration::from_secs(60), || {
        rows(&gw) < 20 && host.count("DDATA") >= 300
    });
    host.send("seq");
    let seen = host.seen.clone();
    let report = || {
        seen.lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m["type"] == "seq_report")
            .cloned()
    };
    wait_until("the host's seq report", Duration::from_secs(10), || {
        report().is_some()
    });
    let r = report().unwrap();
    let gaps: Vec<_> = host
        .messages()
        .into_iter()
        .filter(|m| m["type"] == "seq_gap")
        .collect();
    assert_eq!(r["gaps"], 0, "{r} {gaps:?}");
    assert!(r["wraps"].as_u64().unwrap() >= 1, "no wrap seen: {r}");
    assert!(r["checked"].as_u64().unwrap() >= 300, "{r}");
    assert_eq!(host.count("NBIRTH"), 1, "one session: {}", gw.log());
}
