//! End-to-end tests of the `weir` binary against a real mosquitto broker.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;

const PREFIX: &str = "t";

/// Every reading of every device arrived: per device the seqs seen cover 1..=max without a gap.
/// Returns (unique readings, duplicates).
fn check_complete(seqs: &HashMap<String, Vec<u64>>) -> (usize, usize) {
    let mut unique = 0;
    let mut dups = 0;
    for (dev, s) in seqs {
        let set: HashSet<u64> = s.iter().copied().collect();
        let max = *s.iter().max().unwrap();
        for q in 1..=max {
            assert!(
                set.contains(&q),
                "device {dev}: seq {q} missing (max {max})"
            );
        }
        unique += set.len();
        dups += s.len() - set.len();
        // In order per device: the first arrival of each seq comes in increasing order.
        let mut seen = HashSet::new();
        let firsts: Vec<u64> = s.iter().copied().filter(|q| seen.insert(*q)).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] < w[1]),
            "device {dev}: new readings arrived out of order"
        );
    }
    (unique, dups)
}

#[test]
fn readings_reach_a_subscriber_with_topics_payloads_and_order() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let _gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      readings_per_s: 1000\n      total_readings: 700\n",
            "",
            "",
        ),
    );
    wait_until("700 readings", Duration::from_secs(30), || {
        seqs_by_device(&sub.snapshot(), PREFIX)
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= 700
    });
    let msgs = sub.snapshot();
    let seqs = seqs_by_device(&msgs, PREFIX);
    let (unique, dups) = check_complete(&seqs);
    assert_eq!(unique, 700);
    assert_eq!(dups, 0, "no duplicates without an outage");
    // 1 greenhouse x (climate + 4 beds): 100 rounds of 7 points.
    assert_eq!(seqs["gh1/climate"].len(), 300);
    assert_eq!(seqs["gh1/bed3"].len(), 100);
    let topics: HashSet<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
    for t in [
        "t/gh1/climate/temperature",
        "t/gh1/climate/humidity",
        "t/gh1/climate/light",
        "t/gh1/bed4/moisture",
    ] {
        assert!(topics.contains(t), "missing topic {t}: {topics:?}");
    }
    let temp = msgs
        .iter()
        .find(|m| m.topic == "t/gh1/climate/temperature")
        .unwrap()
        .json();
    assert_eq!(temp["unit"], "°C");
    assert_eq!(temp["quality"], "good");
    assert!(temp["value"].as_f64().unwrap() > -20.0 && temp["value"].as_f64().unwrap() < 60.0);
    let ts = temp["ts"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(ts).is_ok(), "ts {ts} is RFC 3339");
    assert!(msgs
        .iter()
        .any(|m| m.topic == "t/status" && m.payload == b"online"));
}

#[test]
fn broker_outage_of_20s_at_2000_readings_per_s_loses_nothing() {
    let mut broker = Mosquitto::start_with("", true);
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let total = 2000 * 30;
    let _gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            &format!(
                "      greenhouses: 4\n      readings_per_s: 2000\n      total_readings: {total}\n"
            ),
            "",
            "",
        ),
    );
    wait_until(
        "readings to flow before the outage",
        Duration::from_secs(30),
        || sub.count(|_| true) > 4000,
    );
    broker.stop();
    std::thread::sleep(Duration::from_secs(20));
    broker.start_again();
    wait_until(
        "every reading after the outage",
        Duration::from_secs(90),
        || {
            let s = seqs_by_device(&sub.snapshot(), PREFIX);
            s.values()
                .map(|v| v.iter().collect::<HashSet<_>>().len())
                .sum::<usize>()
                >= total as usize
        },
    );
    let seqs = seqs_by_device(&sub.snapshot(), PREFIX);
    let (unique, dups) = check_complete(&seqs);
    eprintln!("outage: {unique} unique readings, {dups} duplicates");
    assert_eq!(unique, total as usize);
    assert!(
        dups <= 2 * 256,
        "duplicates only from the in-flight window: {dups}"
    );
}

#[test]
fn kill_9_then_restart_delivers_every_committed_reading() {
    let mut broker = Mosquitto::start_with("", true);
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      greenhouses: 2\n      readings_per_s: 3000\n",
            "",
            "",
        ),
    );
    std::thread::sleep(Duration::from_secs(3));
    broker.stop(); // let rows pile up in the outbox
    std::thread::sleep(Duration::from_secs(2));
    gw.kill9();
    let committed = outbox_rows(&gw.outbox_path());
    assert!(
        committed.len() > 1000,
        "the outbox held rows at the kill: {}",
        committed.len()
    );
    broker.start_again();
    gw.start_again();
    let want: HashSet<(String, u64)> = committed.into_iter().collect();
    wait_until("every committed row", Duration::from_secs(60), || {
        let got: HashSet<(String, u64)> = sub
            .snapshot()
            .iter()
            .filter_map(|m| {
                m.json()
                    .get("seq")
                    .and_then(|s| s.as_u64())
                    .map(|s| (m.topic.clone(), s))
            })
            .collect();
        want.is_subset(&got)
    });
    // Sequence numbers continue across the kill: no gap anywhere.
    std::thread::sleep(Duration::from_secs(1));
    let (unique, dups) = check_complete(&seqs_by_device(&sub.snapshot(), PREFIX));
    eprintln!(
        "kill -9: {} committed rows replayed; {unique} unique, {dups} duplicates",
        want.len()
    );
}

#[test]
fn bounded_outbox_drops_oldest_and_reports_it() {
    // The subscriber's persistent session is registered, then the broker goes away before the
    // gateway starts: nothing can be delivered before the outbox fills, and whatever the gateway
    // replays once the broker is back is queued for the session even if the subscriber has not
    // reconnected yet (subscribing after the restart raced the replay under load).
    let mut broker = Mosquitto::start_with("", true);
    let sub = Subscriber::connect(broker.port, "t/#");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      readings_per_s: 4000\n      total_readings: 20000\n",
            "",
            "  max_bytes: 65536\n",
        ),
    );
    wait_until("the outbox to overflow", Duration::from_secs(30), || {
        let (code, out, _) = gw.cli(&["buffer", "stats"]);
        code == 0
            && serde_json::from_str::<serde_json::Value>(&out).unwrap()["dropped_for_space_total"]
                .as_u64()
                .unwrap_or(0)
                > 1000
    });
    // The simulator has finished once every reading is either kept or counted as dropped.
    let stats_sum = || {
        let (_, out, _) = gw.cli(&["buffer", "stats"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["rows"].as_u64().unwrap_or(0) + v["dropped_for_space_total"].as_u64().unwrap_or(0)
    };
    wait_until("the simulator to finish", Duration::from_secs(60), || {
        stats_sum() >= 20000
    });
    std::thread::sleep(Duration::from_millis(500)); // nothing more arrives
    assert!(
        gw.is_running(),
        "the daemon keeps running when the outbox is full"
    );
    let (code, out, err) = gw.cli(&["buffer", "stats"]);
    let stats: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("weir buffer stats (exit {code}): {e}: {out} {err}"));
    assert!(stats["bytes"].as_u64().unwrap() <= 65536, "{stats}");
    let dropped = stats["dropped_for_space_total"].as_u64().unwrap();
    let kept = stats["rows"].as_u64().unwrap();
    assert_eq!(
        dropped + kept,
        20000,
        "every reading is either kept or counted as dropped: {stats}"
    );
    // Dropping happens on every commit; the log says so at most once per 10 s, with the count.
    let warnings = gw.log().matches("dropped the oldest rows").count();
    let allowed = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&warnings),
        "{warnings} drop warnings in {:?} (at most one per 10 s)",
        started.elapsed()
    );

    broker.start_again();
    wait_until(
        "kept rows and the status document",
        Duration::from_secs(30),
        || {
            let msgs = sub.snapshot();
            let n: usize = seqs_by_device(&msgs, PREFIX).values().map(Vec::len).sum();
            let status = sub.last_json("t/status/metrics");
            n >= kept as usize
                && status.is_some_and(|s| {
                    s["outbox"]["dropped_for_space_total"].as_u64() == Some(dropped)
                })
        },
    );
    // What arrived is the newest data: for each device a contiguous run ending at its last seq.
    for (dev, s) in seqs_by_device(&sub.snapshot(), PREFIX) {
        let min = *s.iter().min().unwrap();
        let max = *s.iter().max().unwrap();
        assert!(min > 1, "device {dev}: the oldest readings were dropped");
        let set: HashSet<u64> = s.iter().copied().collect();
        assert!(
            (min..=max).all(|q| set.contains(&q)),
            "device {dev}: gap in the kept rows"
        );
    }
}

#[test]
fn sigterm_commits_everything_taken_from_the_simulator() {
    // No broker at all: everything stays in the outbox; a clean shutdown keeps every reading.
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            port,
            "      readings_per_s: 5000\n      total_readings: 5000\n",
            "",
            "",
        ),
    );
    wait_until("the simulator to finish", Duration::from_secs(20), || {
        let (_, out, _) = gw.cli(&["buffer", "stats"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .map(|v| v["rows"].as_u64() == Some(5000))
            .unwrap_or(false)
    });
    let status = gw.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert_eq!(outbox_rows(&gw.outbox_path()).len(), 5000);
    assert!(
        gw.log().contains("stopped; rows left in the outbox"),
        "{}",
        gw.log()
    );
}

#[test]
fn commands_over_mqtt_reach_the_simulated_actuators_and_get_results() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    // A greenhouse whose device ids are six levels deep: commands are heard at any depth.
    let _gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      interval_ms: 60000\n  - sim:\n      name: deep\n      seed: 8\n      prefix: site/north/hall/bay/gh\n      interval_ms: 60000\n",
            "",
            "",
        ),
    );
    wait_until("the gateway online", Duration::from_secs(20), || {
        sub.count(|m| m.topic == "t/status" && m.payload == b"online") > 0
    });
    // No pause: the gateway subscribes to the command topics before it publishes `online`.
    sub.publish("t/gh1/actuators/vent/set", b"true");
    sub.publish("t/gh1/actuators/shade/set", br#"{"value": 250}"#);
    sub.publish("t/gh9/pump/speed/set", b"3");
    sub.publish("t/gh1/climate/temperature/set", b"3");
    sub.publish("t/gh1/actuators/speed/set", b"3");
    sub.publish(
        "t/site/north/hall/bay/gh1/actuators/irrigation/set",
        b"true",
    );
    wait_until("five command results", Duration::from_secs(20), || {
        sub.count(|m| m.topic.ends_with("/set/result")) >= 5
    });
    let msgs = sub.snapshot();
    let result = |t: &str| msgs.iter().find(|m| m.topic == t).unwrap().json();
    assert_eq!(result("t/gh1/actuators/vent/set/result")["ok"], true);
    assert_eq!(
        result("t/site/north/hall/bay/gh1/actuators/irrigation/set/result")["ok"],
        true
    );
    let shade = result("t/gh1/actuators/shade/set/result");
    assert_eq!(shade["ok"], false);
    assert!(
        shade["error"].as_str().unwrap().contains("0–100"),
        "{shade}"
    );
    let ro = result("t/gh1/climate/temperature/set/result");
    assert_eq!(
        ro["error"], "point `temperature` of device `gh1/climate` is read-only",
        "{ro}"
    );
    let no_point = result("t/gh1/actuators/speed/set/result");
    assert_eq!(
        no_point["error"],
        "device `gh1/actuators` has no point `speed` (writable: vent, irrigation, shade)",
        "{no_point}"
    );
    // A device the registry does not know is not listened for (only known devices are
    // subscribed, so our own telemetry never echoes back): no answer at all.
    assert_eq!(
        sub.count(|m| m.topic == "t/gh9/pump/speed/set/result"),
        0,
        "the three answered commands were sent after it"
    );
    wait_until(
        "the vent state as telemetry",
        Duration::from_secs(10),
        || {
            sub.snapshot()
                .iter()
                .any(|m| m.topic == "t/gh1/actuators/vent" && m.json()["value"] == true)
        },
    );
}

/// A site with a thousand devices (300 greenhouses of 4): their command topics are subscribed in
/// a few SUBSCRIBE packets, so the last device listens as well as the first and nothing crowds
/// rumqttc's bounded request queue (one request per device used to overflow it: the later
/// devices went unsubscribed and the status publishes were dropped).
#[test]
fn a_thousand_devices_all_listen_for_commands() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let dir = tempfile::tempdir().unwrap();
    let _gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            "      greenhouses: 300\n      beds: 2\n      interval_ms: 60000\n",
            "",
            "",
        ),
    );
    wait_until("the gateway online", Duration::from_secs(30), || {
        sub.count(|m| m.topic == "t/status" && m.payload == b"online") > 0
    });
    for gh in [1, 150, 300] {
        sub.publish(&format!("t/gh{gh}/actuators/vent/set"), b"true");
    }
    wait_until("three command results", Duration::from_secs(30), || {
        sub.count(|m| m.topic.ends_with("/actuators/vent/set/result")) >= 3
    });
    let msgs = sub.snapshot();
    for gh in [1, 150, 300] {
        let t = format!("t/gh{gh}/actuators/vent/set/result");
        let r = msgs.iter().find(|m| m.topic == t).unwrap().json();
        assert_eq!(r["ok"], true, "{t}: {r}");
    }
    wait_until("the status document", Duration::from_secs(10), || {
        sub.count(|m| m.topic == "t/status/metrics") > 0
    });
}

#[test]
fn sigterm_publishes_offline_status() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/status");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(dir.path(), &config(broker.port, "", "", ""));
    wait_until("online", Duration::from_secs(20), || {
        sub.count(|m| m.payload == b"online") > 0
    });
    assert!(gw.terminate().success());
    wait_until("offline", Duration::from_secs(10), || {
        sub.count(|m| m.payload == b"offline") > 0
    });
}

#[test]
fn last_will_marks_a_killed_gateway_offline() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/status");
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(
        dir.path(),
        &config(broker.port, "", "  keepalive_s: 5\n", ""),
    );
    wait_until("online", Duration::from_secs(20), || {
        sub.count(|m| m.payload == b"online") > 0
    });
    gw.kill9();
    wait_until("the will", Duration::from_secs(15), || {
        sub.count(|m| m.payload == b"offline") > 0
    });
}

#[test]
fn metrics_endpoint_serves_prometheus_text() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let cfg = config(broker.port, "      readings_per_s: 100\n", "", "").replace(
        "sources:\n",
        &format!("metrics:\n  listen: 127.0.0.1:{mport}\nsources:\n"),
    );
    let _gw = Gateway::start(dir.path(), &cfg);
    let mut body = String::new();
    wait_until("metrics", Duration::from_secs(20), || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", mport)) else {
            return false;
        };
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        body.clear();
        s.read_to_string(&mut body).unwrap();
        body.contains("weir_mqtt_acked_total ") && !body.contains("weir_mqtt_acked_total 0\n")
    });
    assert!(body.starts_with("HTTP/1.1 200 OK"));
    assert!(
        body.contains("weir_readings_in_total{source=\"sim\"}"),
        "{body}"
    );
}

/// A tmpfs mounted for one test and unmounted (lazily) when dropped, even when the test fails.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounting needs root (CI runs as root) or passwordless sudo.
    fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let mut cmd = if root {
            std::process::Command::new("mount")
        } else {
            let mut c = std::process::Command::new("sudo");
            c.args(["-n", "mount"]);
            c
        };
        let out = cmd
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "weir-test"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a {size} tmpfs at {} needs root or passwordless sudo: {}",
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |prog: &str, args: &[&str]| {
            std::process::Command::new(prog)
                .args(args)
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success())
        };
        if !umount("umount", &["-l"]) {
            umount("sudo", &["-n", "umount", "-l"]);
        }
    }
}

#[test]
fn a_full_disk_holds_readings_and_loses_none() {
    // The outbox lives on a 16 MiB filesystem that must keep 8 MiB free; the broker is away, so
    // the outbox grows until the reserve is reached. Then readings are held (the simulator is
    // slowed by the full bus), the daemon keeps running and says what is full. Once the broker is
    // back, delivered rows are deleted — the reserve is what lets SQLite write those deletes —
    // their space is reused, and every reading arrives: none was dropped for the full disk.
    // Far more than fits: how many rows reach the mark depends on batch sizes and the WAL's
    // size at that moment (from 29,615 to 59,419 in runs so far; all of 40,000 fitted once, under
    // qemu with the machine loaded, and the error never came).
    let total = 100_000u64;
    let mut broker = Mosquitto::start_with("", true);
    let sub = Subscriber::connect(broker.port, "t/#");
    broker.stop();
    let dir = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(&dir.path().join("state"), "16m");
    let started = std::time::Instant::now();
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            broker.port,
            &format!("      readings_per_s: 5000\n      total_readings: {total}\n"),
            "",
            "  min_free_bytes: 8388608\n",
        ),
    );
    let outbox = gw.outbox_path().display().to_string();
    wait_until("the disk-full error", Duration::from_secs(60), || {
        gw.log().contains("the disk is full")
    });
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("the disk is full"))
        .unwrap();
    assert!(
        line.contains(&outbox) && line.contains("min_free_bytes"),
        "the error names the outbox and the setting: {line}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(gw.is_running(), "the daemon keeps running on a full disk");
    let (code, out, err) = gw.cli(&["buffer", "stats"]);
    let stats: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("weir buffer stats (exit {code}) on a full disk: {e}: {err}"));
    let stored = stats["rows"].as_u64().unwrap();
    assert!(
        stored > 1000 && stored < total,
        "the outbox stopped growing short of every reading: {stats}"
    );
    assert_eq!(stats["dropped_for_space_total"], 0, "{stats}");
    assert!(
        stats["fs_available_bytes"]
            .as_u64()
            .is_some_and(|b| b < 8 * 1024 * 1024),
        "the reserve is what is left: {stats}"
    );

    broker.start_again();
    wait_until("every reading", Duration::from_secs(180), || {
        let s = seqs_by_device(&sub.snapshot(), PREFIX);
        s.values()
            .map(|v| v.iter().collect::<HashSet<_>>().len())
            .sum::<usize>()
            >= total as usize
    });
    let (unique, dups) = check_complete(&seqs_by_device(&sub.snapshot(), PREFIX));
    eprintln!("full disk: {stored} rows stored at the full mark; {unique} unique readings, {dups} duplicates");
    assert_eq!(unique, total as usize);
    let log = gw.log();
    assert!(log.contains("outbox writable again"), "recovery is logged");
    assert!(
        !log.contains("delete of acknowledged rows failed"),
        "the reserve kept deletes possible"
    );
    // Each spell of a full disk (there can be several when the forwarder deletes slower than
    // readings arrive) is logged when it starts, once a minute while it lasts, and when it ends;
    // not at every retry.
    let errors = log.matches("the disk is full").count();
    let recoveries = log.matches("outbox writable again").count();
    assert!(
        errors <= recoveries + started.elapsed().as_secs() as usize / 60,
        "{errors} disk-full errors for {recoveries} recoveries in {:?}",
        started.elapsed()
    );
}

/// `weir buffer drain` delivers a backlog to the broker and exits; while a `weir run` holds the
/// outbox, both `drain` and a second `run` are refused naming the lock (they would fight over
/// the MQTT session and publish rows twice), and `buffer stats` still answers.
#[test]
fn buffer_drain_delivers_the_backlog_and_is_refused_while_weir_runs() {
    let broker = Mosquitto::start();
    let dead_port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let total = 500;
    let mut gw = Gateway::start(
        dir.path(),
        &config(
            dead_port,
            &format!("      readings_per_s: 2000\n      total_readings: {total}\n"),
            "",
            "",
        ),
    );
    wait_until("the backlog in the outbox", Duration::from_secs(30), || {
        let (_, out, _) = gw.cli(&["buffer", "stats"]);
        out.contains(&format!("\"rows\": {total}"))
    });
    let lock = gw.outbox_path().with_file_name("outbox.db.lock");

    let (code, _, err) = gw.cli(&["buffer", "drain"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("in use") && err.contains(&lock.display().to_string()),
        "{err}"
    );
    let second = weir_cmd()
        .args(["run", "-c"])
        .arg(&gw.config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("another weir") && err.contains(&lock.display().to_string()),
        "{err}"
    );
    assert!(gw.is_running());
    let (code, out, _) = gw.cli(&["buffer", "stats"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("\"rows\": {total}")), "{out}");

    // Daemon stopped, broker configured: drain delivers every row and exits.
    assert!(gw.terminate().success());
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        text.replace(
            &format!("port: {dead_port}\n"),
            &format!("port: {}\n", broker.port),
        ),
    )
    .unwrap();
    let sub = Subscriber::connect(broker.port, &format!("{PREFIX}/#"));
    let (code, out, err) = gw.cli(&["buffer", "drain"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("drained {total} rows; 0 left")),
        "{out}"
    );
    wait_until("every drained reading", Duration::from_secs(20), || {
        seqs_by_device(&sub.snapshot(), PREFIX)
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= total
    });
    let (unique, _dups) = check_complete(&seqs_by_device(&sub.snapshot(), PREFIX));
    assert_eq!(unique, total);
    let (_, out, _) = gw.cli(&["buffer", "stats"]);
    assert!(out.contains("\"rows\": 0"), "{out}");
}
