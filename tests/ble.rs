//! End-to-end tests of the BLE adapter: BlueZ's D-Bus API served by python-dbusmock's bluez5
//! template on a private system bus (tests/peers/ble_mock.py) → the real `weir` binary (btleplug)
//! → a real mosquitto and subscriber.
//!
//! Needs dbus-daemon and python3-dbusmock (`scripts/test` installs them with `need_ble_peers`);
//! the Python is `$WEIR_DBUSMOCK_PYTHON`, else /usr/bin/python3.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const MOCK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/ble_mock.py");

const THERMO: &str = "A4:C1:38:11:22:33";
const RUUVI: &str = "C7:11:22:33:44:55";
const DOOR: &str = "54:48:E6:8F:80:A5";
const TANK: &str = "C0:FF:EE:00:00:01";
const STRANGER: &str = "66:66:66:66:66:66";
/// The published BTHome encryption example (bthome.io/encryption): this key, this MAC.
const DOOR_KEY: &str = "231d39c1d7cc1ab1aee224cd096db932";

fn python() -> String {
    std::env::var("WEIR_DBUSMOCK_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

/// The mock BlueZ: commands in, `ok`/`err` answers out (collected on a thread).
struct Bluez {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<String>>>,
    answered: usize,
    address: String,
}

impl Bluez {
    fn start(dir: &Path) -> Bluez {
        let mut child = Command::new(python())
            .arg(MOCK)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the BlueZ mock (run scripts/test or set WEIR_DBUSMOCK_PYTHON)");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        wait_until("the BlueZ mock ready", Duration::from_secs(30), || {
            lines.lock().unwrap().iter().any(|l| l == "ready")
        });
        let address = lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.strip_prefix("bus ").map(str::to_string))
            .unwrap();
        Bluez {
            child,
            stdin,
            lines,
            answered: 0,
            address,
        }
    }

    /// Send one command and wait for its answer; panics on `err`.
    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        wait_until(
            &format!("the mock's answer to `{line}`"),
            Duration::from_secs(60),
            || {
                let l = self.lines.lock().unwrap();
                let answers: Vec<&String> = l
                    .iter()
                    .filter(|x| x.starts_with("ok") || x.starts_with("err"))
                    .collect();
                if answers.len() > self.answered {
                    answer = answers[self.answered].clone();
                    true
                } else {
                    false
                }
            },
        );
        self.answered += 1;
        assert!(answer.starts_with("ok"), "`{line}`: {answer}");
        answer
    }
}

impl Drop for Bluez {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `weir run` with the private bus as its system bus.
struct Weir {
    child: Child,
    log: std::path::PathBuf,
}

impl Weir {
    fn start(dir: &Path, config: &str, bus: &str) -> Weir {
        let cfg = dir.join("gateway.yaml");
        std::fs::write(
            &cfg,
            config.replace("{state}", &dir.join("state").display().to_string()),
        )
        .unwrap();
        let log = dir.join("weir.log");
        let child = weir_cmd()
            .args(["run", "-c"])
            .arg(&cfg)
            .env(
                "WEIR_LOG",
                std::env::var("WEIR_BLE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("DBUS_SYSTEM_BUS_ADDRESS", bus)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Weir { child, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Weir {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- weir log ----\n{}", self.log());
        }
    }
}

/// `name{source="ble"…}` on `/metrics` (0 when absent).
fn counter(mport: u16, name_and_labels: &str) -> u64 {
    http_get(mport, "/metrics")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

fn ble(name: &str) -> String {
    format!("weir_ble_{name}_total{{source=\"ble\"}}")
}

fn ble_config(mqtt: u16, mport: u16, extra: &str, devices: &str) -> String {
    config_with(
        mqtt,
        "",
        "",
        &format!(
            "metrics:\n  listen: 127.0.0.1:{mport}\nsources:\n  - ble:\n      name: ble\n      health_interval_ms: 200\n{extra}      devices:\n{devices}"
        ),
    )
}

fn values(sub: &Subscriber, topic: &str) -> Vec<serde_json::Value> {
    sub.snapshot()
        .iter()
        .filter(|m| m.topic == topic)
        .map(|m| m.json()["value"].clone())
        .collect()
}

fn wait_values(sub: &Subscriber, topic: &str, n: usize) -> Vec<serde_json::Value> {
    wait_until(
        &format!("{n} values on {topic}"),
        Duration::from_secs(20),
        || values(sub, topic).len() >= n,
    );
    values(sub, topic)
}

/// BTHome v2 plain: packet id, temperature (0.01 °C).
fn bthome(pid: u8, centi: i16) -> String {
    let t = centi.to_le_bytes();
    format!("4000{pid:02x}02{:02x}{:02x}", t[0], t[1])
}

#[test]
fn adverts_become_readings_once_with_rssi_presence_allowlist_and_raw() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut bz = Bluez::start(dir.path());
    bz.cmd("adapter hci0");
    for mac in [THERMO, RUUVI, TANK, STRANGER] {
        bz.cmd(&format!("device {mac}"));
    }
    let mport = free_port();
    let devices = format!(
        "        \"{THERMO}\": gh1/bed-north\n        \"{RUUVI}\": gh1/ruuvi\n        \"{TANK}\": {{ id: gh1/tank, raw: true }}\n"
    );
    let weir = Weir::start(
        dir.path(),
        &ble_config(
            broker.port,
            mport,
            "      away_after_s: 2\n      min_interval_ms: 60000\n      silence_restart_s: 0\n",
            &devices,
        ),
        &bz.address,
    );
    wait_until("a scanning session", Duration::from_secs(20), || {
        counter(mport, &ble("sessions")) >= 1
    });

    // The same advert three times (BlueZ repeats them), then a new packet id.
    bz.cmd(&format!("rssi {THERMO} -61"));
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(1, 2150)));
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(1, 2150)));
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(1, 2150)));
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(2, 2175)));
    let t = wait_values(&sub, "t/gh1/bed-north/temperature", 2);
    assert_eq!(t, [serde_json::json!(21.5), serde_json::json!(21.75)]);
    let rssi = wait_values(&sub, "t/gh1/bed-north/rssi", 2);
    assert_eq!(rssi[0], serde_json::json!(-61));
    assert_eq!(
        wait_values(&sub, "t/gh1/bed-north/present", 1)[0],
        serde_json::json!(true)
    );
    // The registry learns the format as the model and the firmware a BTHome device announces
    // (object 0xF2: 1.2.3; packet id 0x63, no measurement), and the point with its unit.
    bz.cmd(&format!("svc {THERMO} fcd2 400063f2030201"));
    wait_until(
        "the device's model and firmware",
        Duration::from_secs(20),
        || {
            let d = device_doc(mport, "gh1/bed-north");
            d["meta"]["model"] == "BTHome v2" && d["meta"]["firmware"] == "1.2.3"
        },
    );
    let dev = device_doc(mport, "gh1/bed-north");
    assert_eq!(point_doc(&dev, "temperature")["unit"], "°C", "{dev}");
    assert_eq!(dev["availability"], "online", "{dev}");

    // Ruuvi RAWv2: the spec's example; a repeat with the same sequence but other bytes (a
    // second AD copy BlueZ merged) is one reading.
    let ruuvi = "0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F";
    bz.cmd(&format!("mfr {RUUVI} 0x0499 {ruuvi}"));
    let mut moved = ruuvi.to_string();
    moved.replace_range(30..32, "43"); // movement counter 0x43, same sequence 205
    bz.cmd(&format!("mfr {RUUVI} 0x0499 {moved}"));
    assert_eq!(
        wait_values(&sub, "t/gh1/ruuvi/pressure", 1)[0],
        serde_json::json!(1000.44)
    );
    assert_eq!(
        values(&sub, "t/gh1/ruuvi/humidity"),
        [serde_json::json!(53.49)]
    );

    // Raw data of a format no decoder knows, for a rhai rule; min_interval_ms holds the next.
    bz.cmd(&format!("mfr {TANK} 0xffff 0102abcd"));
    bz.cmd(&format!("mfr {TANK} 0xffff 0102abce"));
    assert_eq!(
        wait_values(&sub, "t/gh1/tank/manufacturer_ffff", 1)[0],
        serde_json::json!("0102abcd")
    );

    // An address not in the allowlist is no device.
    bz.cmd(&format!("svc {STRANGER} fcd2 {}", bthome(9, 100)));
    wait_until(
        "the stranger's advert counted",
        Duration::from_secs(10),
        || counter(mport, &ble("ignored_adverts")) >= 1,
    );
    assert_eq!(
        sub.count(|m| m.topic.contains("666666")),
        0,
        "no device for an address outside the allowlist"
    );
    assert!(counter(mport, &ble("repeated_adverts")) >= 3);
    assert!(counter(mport, &ble("rate_limited_adverts")) >= 1);

    // Presence: silent for away_after_s → present=false; heard again → true.
    let p = wait_values(&sub, "t/gh1/bed-north/present", 2);
    assert_eq!(p[1], serde_json::json!(false));
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(3, 2200)));
    let p = wait_values(&sub, "t/gh1/bed-north/present", 3);
    assert_eq!(p[2], serde_json::json!(true));
    assert_eq!(
        wait_values(&sub, "t/gh1/bed-north/temperature", 3)[2],
        serde_json::json!(22.0)
    );
    assert_eq!(values(&sub, "t/gh1/bed-north/temperature").len(), 3);
    drop(weir);
}

#[test]
fn encrypted_bthome_right_key_wrong_key_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut bz = Bluez::start(dir.path());
    bz.cmd("adapter hci0");
    bz.cmd(&format!("device {DOOR}"));
    bz.cmd(&format!("device {THERMO}"));
    std::fs::write(dir.path().join("door.key"), format!("{DOOR_KEY}\n")).unwrap();
    let mport = free_port();
    let devices = format!(
        "        \"{DOOR}\": {{ id: gh1/door, bindkey_file: door.key }}\n        \"{THERMO}\": {{ id: gh1/wrong, bindkey: \"00112233445566778899aabbccddeeff\" }}\n"
    );
    let _weir = Weir::start(
        dir.path(),
        &ble_config(broker.port, mport, "      silence_restart_s: 0\n", &devices),
        &bz.address,
    );
    wait_until("a scanning session", Duration::from_secs(20), || {
        counter(mport, &ble("sessions")) >= 1
    });
    // The published example: 25.06 °C, 50.55 %, counter 0x33221100.
    bz.cmd(&format!("svc {DOOR} fcd2 41a47266c95f730011223378237214"));
    assert_eq!(
        wait_values(&sub, "t/gh1/door/temperature", 1)[0],
        serde_json::json!(25.06)
    );
    assert_eq!(
        values(&sub, "t/gh1/door/humidity"),
        [serde_json::json!(50.55)]
    );

    // A newer counter is accepted; an older one (a replay of a captured advert) is not.
    let key: [u8; 16] = (0..16)
        .map(|i| u8::from_str_radix(&DOOR_KEY[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap();
    let mac = [0x54, 0x48, 0xE6, 0x8F, 0x80, 0xA5];
    let enc = |objects: &[u8], counter: u32| {
        weir_ble::decode::hex(&weir_ble::decode::bthome::encrypt(
            objects, mac, &key, counter,
        ))
    };
    let old = enc(&[0x02, 0x10, 0x27], 0x3322_1000); // 100.00 °C, an older counter
    let newer = enc(&[0x02, 0xD2, 0x04], 0x3322_1200); // 12.34 °C
    bz.cmd(&format!("svc {DOOR} fcd2 {newer}"));
    assert_eq!(
        wait_values(&sub, "t/gh1/door/temperature", 2)[1],
        serde_json::json!(12.34)
    );
    bz.cmd(&format!("svc {DOOR} fcd2 {old}"));
    wait_until("the replay counted", Duration::from_secs(10), || {
        counter(
            mport,
            "weir_ble_decode_errors_total{source=\"ble\",kind=\"replay\"}",
        ) >= 1
    });

    // The same advert with a wrong key configured: counted, never a reading.
    bz.cmd(&format!(
        "svc {THERMO} fcd2 {}",
        enc(&[0x02, 0x10, 0x27], 7)
    ));
    wait_until("the wrong key counted", Duration::from_secs(10), || {
        counter(
            mport,
            "weir_ble_decode_errors_total{source=\"ble\",kind=\"wrong_key\"}",
        ) >= 1
    });
    // An unencrypted advert from a device with a key is refused too (no downgrade).
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(5, 9999)));
    wait_until("the downgrade counted", Duration::from_secs(10), || {
        counter(
            mport,
            "weir_ble_decode_errors_total{source=\"ble\",kind=\"downgrade\"}",
        ) >= 1
    });
    assert_eq!(values(&sub, "t/gh1/door/temperature").len(), 2);
    assert!(values(&sub, "t/gh1/wrong/temperature").is_empty());
}

#[test]
fn bluetoothd_restart_adapter_removal_and_silent_discovery_are_survived() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut bz = Bluez::start(dir.path());
    let mport = free_port();
    let devices = format!("        \"{THERMO}\": gh1/bed-north\n");
    let weir = Weir::start(
        dir.path(),
        &ble_config(broker.port, mport, "      silence_restart_s: 2\n", &devices),
        &bz.address,
    );
    let topic = "t/gh1/bed-north/temperature";

    // No adapter yet: one log line, then a wait.
    wait_until("a wait for the adapter", Duration::from_secs(20), || {
        counter(mport, &ble("adapter_waits")) >= 3
    });
    assert_eq!(weir.log().matches("no Bluetooth adapter").count(), 1);
    bz.cmd("adapter hci0");
    bz.cmd(&format!("device {THERMO}"));
    wait_until("a scanning session", Duration::from_secs(20), || {
        counter(mport, &ble("sessions")) >= 1
    });
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(1, 1000)));
    wait_values(&sub, topic, 1);

    // Silence across all allowed devices: discovery is restarted.
    wait_until("a discovery restart", Duration::from_secs(20), || {
        counter(mport, &ble("discovery_restarts")) >= 1
    });
    assert!(weir.log().contains("restarting discovery"));

    // bluetoothd restarts: org.bluez gets a new owner, a new session starts.
    let before = bz.cmd("owner");
    bz.cmd("restart_bluez");
    assert_ne!(before, bz.cmd("owner"));
    wait_until("the restart seen", Duration::from_secs(20), || {
        counter(mport, &ble("bluez_restarts")) >= 1 && counter(mport, &ble("sessions")) >= 2
    });
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(2, 2000)));
    assert_eq!(wait_values(&sub, topic, 2)[1], serde_json::json!(20.0));

    // The adapter is removed (unplugged) and comes back.
    bz.cmd("remove_adapter hci0");
    wait_until("the adapter loss seen", Duration::from_secs(20), || {
        counter(mport, &ble("adapter_lost")) >= 1
    });
    assert!(weir.log().contains("Bluetooth adapter lost"));
    bz.cmd("adapter hci0");
    wait_until(
        "a session on the new adapter",
        Duration::from_secs(20),
        || counter(mport, &ble("sessions")) >= 3,
    );
    bz.cmd(&format!("svc {THERMO} fcd2 {}", bthome(3, 3000)));
    assert_eq!(wait_values(&sub, topic, 3)[2], serde_json::json!(30.0));
    assert_eq!(
        counter(mport, "weir_source_restarts_total{source=\"ble\"}"),
        0,
        "handled inside the source, not by its supervisor"
    );
}

/// `/proc/<pid>/stat` user + system time in clock ticks, and VmRSS in KiB.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Benchmark (ignored; run with `cargo test --release --test ble -- --ignored --nocapture`):
/// adverts/s from the mock through BlueZ's D-Bus API, btleplug, decoding, the pipeline, the
/// outbox and MQTT to a subscriber; weir's CPU per advert; its RSS with 500 known devices.
/// The baseline, measured in the same run, is the mock emitting the same burst with nobody
/// listening: the ratio says how much of the peer's rate the whole pipeline keeps.
#[test]
#[ignore]
fn bench_adverts_through_the_pipeline() {
    const DEVICES: usize = 500;
    let n: usize = std::env::var("WEIR_BLE_BENCH_ADVERTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/bench/#");
    let mut bz = Bluez::start(dir.path());
    bz.cmd("adapter hci0");
    bz.cmd(&format!("many {DEVICES}"));
    let baseline: f64 = bz
        .cmd(&format!("burst {n}"))
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    let mut devices = String::new();
    for i in 0..DEVICES {
        devices.push_str(&format!(
            "        \"10:00:00:{:02X}:{:02X}:{:02X}\": bench/d{i:03}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    let mport = free_port();
    let weir = Weir::start(
        dir.path(),
        &ble_config(
            broker.port,
            mport,
            "      silence_restart_s: 0\n      rssi: false\n",
            &devices,
        )
        .replace("store:\n", "store:\n  max_batch_readings: 2000\n"),
        &bz.address,
    );
    wait_until("a scanning session", Duration::from_secs(30), || {
        counter(mport, &ble("sessions")) >= 1
    });
    // The 500 `present=true` readings come with the first adverts; settle first.
    std::thread::sleep(Duration::from_millis(500));
    let rss_idle = rss_kib(weir.pid());
    let cpu0 = cpu_ticks(weir.pid());
    let got0 = sub.count(|_| true);
    let t0 = Instant::now();
    bz.cmd(&format!("burst {n}"));
    // Two readings per advert (temperature, humidity) plus one `present` per device.
    let want = got0 + 2 * n + DEVICES;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (0, Instant::now());
    loop {
        let got = sub.count(|_| true);
        if got >= want || Instant::now() > deadline {
            break;
        }
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break; // nothing more is coming
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = last.1.duration_since(t0).as_secs_f64().max(1e-3);
    let cpu_s = (cpu_ticks(weir.pid()) - cpu0) as f64 / 100.0;
    let readings = sub.count(|_| true) - got0;
    let adverts_in = counter(mport, &ble("adverts"));
    let repeats = counter(mport, &ble("repeated_adverts"));
    let dropped = counter(mport, "weir_bus_dropped_total{source=\"ble\"}");
    let rate = adverts_in as f64 / secs;
    println!("BLE benchmark: {n} adverts over {DEVICES} known devices");
    println!(
        "  baseline (mock alone, nobody listening): {:.0} adverts/s",
        n as f64 / baseline
    );
    println!(
        "  through weir to MQTT: {adverts_in} adverts seen, {readings} readings published in {secs:.2} s = {rate:.0} adverts/s ({:.2} x baseline)",
        rate / (n as f64 / baseline)
    );
    println!("  repeats {repeats}, bus drops {dropped}");
    println!(
        "  weir CPU: {cpu_s:.2} s = {:.1} µs per advert",
        cpu_s * 1e6 / adverts_in.max(1) as f64
    );
    println!(
        "  weir RSS with {DEVICES} known devices: {:.1} MiB idle, {:.1} MiB after the burst",
        rss_idle as f64 / 1024.0,
        rss_kib(weir.pid()) as f64 / 1024.0
    );
    if (adverts_in as usize) < n {
        println!(
            "  (adverts were lost before weir saw them; weir log:)\n{}",
            weir.log()
        );
        println!("  sessions {}", counter(mport, &ble("sessions")));
    }
    assert!(adverts_in > 0 && readings > 0);
}

#[test]
fn weir_check_names_bad_ble_settings() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(
        &cfg,
        config_with(
            free_port(),
            "",
            "",
            "sources:\n  - ble:\n      name: ble\n      devices:\n        nope: gh1/a\n        \"A4:C1:38:11:22:33\": { id: gh1/door, bindkey_file: missing.key }\n        \"A4:C1:38:11:22:34\": { id: gh1/b, bindkey: \"123\" }\n        \"A4:C1:38:11:22:35\": { id: gh1/c, bind_key: x }\n",
        )
        .replace("{state}", &dir.path().join("state").display().to_string()),
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    // A YAML error stops the section before the semantic checks.
    assert!(text.contains("unknown field `bind_key`"), "{text}");
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("bind_key: x", "raw: true"),
    )
    .unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    for want in [
        "devices.nope: not a MAC address",
        "devices.A4:C1:38:11:22:33.bindkey_file: cannot read",
        "devices.A4:C1:38:11:22:34.bindkey: must be 32 hex digits",
    ] {
        assert!(text.contains(want), "`{want}` in {text}");
    }
    std::fs::write(
        dir.path().join("missing.key"),
        "231d39c1d7cc1ab1aee224cd096db932\n",
    )
    .unwrap();
    let fixed = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("        nope: gh1/a\n", "")
        .replace("bindkey: \"123\"", "raw: false");
    std::fs::write(&cfg, fixed).unwrap();
    let out = weir_cmd().args(["check", "-c"]).arg(&cfg).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The commented-out `ble` example in the reference gateway.yaml, uncommented, passes
/// `weir check`.
#[test]
fn the_reference_ble_example_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/gateway.yaml")).unwrap();
    let start = text
        .find("  # - ble:")
        .expect("a ble example in gateway.yaml");
    let mut out = text[..start].to_string();
    let mut in_block = true;
    for (i, line) in text[start..].lines().enumerate() {
        in_block &= i == 0 || line.starts_with("  #     ");
        match line.strip_prefix("  #") {
            Some(rest) if in_block => {
                out.push_str("  ");
                out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.yaml");
    std::fs::write(&cfg, out).unwrap();
    let out = weir_cmd()
        .args(["check", "-c"])
        .arg(&cfg)
        .env("WEIR_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ble (ble)"));
}

#[test]
fn gatt_read_notify_write_from_mqtt_and_reconnect() {
    const VALVE: &str = "D0:00:00:00:00:01";
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port, "t/#");
    let mut bz = Bluez::start(dir.path());
    bz.cmd("adapter hci0");
    bz.cmd(&format!("device {VALVE}"));
    // Environmental Sensing / Temperature (0x2A6E, sint16 0.01 °C): 21.00 °C.
    bz.cmd(&format!("gatt {VALVE} 181a 2a6e 3408 read,notify"));
    // A vendor characteristic: the valve, uint8, writable.
    bz.cmd(&format!("gatt {VALVE} ffe0 ffe1 00 read,write"));
    let mport = free_port();
    let devices = format!(
        "        \"{VALVE}\":\n          id: gh1/valve\n          gatt:\n            - {{ point: temperature, characteristic: 2a6e, type: i16, scale: 0.01, unit: \"°C\", read_every_s: 1, notify: true }}\n            - {{ point: valve, service: ffe0, characteristic: ffe1, type: u8, writable: true }}\n"
    );
    let _weir = Weir::start(
        dir.path(),
        &ble_config(
            broker.port,
            mport,
            "      silence_restart_s: 0\n      reconnect_backoff_ms: 200\n",
            &devices,
        ),
        &bz.address,
    );
    let topic = "t/gh1/valve/temperature";
    wait_until("a GATT connection", Duration::from_secs(30), || {
        counter(mport, &ble("gatt_connects")) >= 1
    });
    assert_eq!(wait_values(&sub, topic, 1)[0], serde_json::json!(21.0));
    // A notification: 24.00 °C.
    bz.cmd(&format!("notify {VALVE} 2a6e 6009"));
    wait_until("the notified value", Duration::from_secs(20), || {
        values(&sub, topic).contains(&serde_json::json!(24.0))
    });

    // A write from MQTT …/set: the device's value changes, the result is ok.
    let r = set_until_result(&sub, "gh1/valve", "valve", b"1");
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(bz.cmd(&format!("value {VALVE} ffe1")), "ok value 01");
    // 300 does not fit a u8: refused before anything is sent.
    let r = set_until_result(&sub, "gh1/valve", "valve", b"300");
    assert_eq!(r["ok"], false, "{r}");
    // The device refuses writes: the result names the ATT error.
    bz.cmd(&format!(
        "fail_writes {VALVE} ffe1 org.bluez.Error.NotPermitted Write not permitted"
    ));
    let r = set_until_result(&sub, "gh1/valve", "valve", b"0");
    assert_eq!(r["ok"], false, "{r}");
    assert!(r.to_string().contains("WRITE_NOT_PERMITTED"), "{r}");
    assert_eq!(bz.cmd(&format!("value {VALVE} ffe1")), "ok value 01");

    // The device drops the connection: reconnected with backoff, reads go on.
    bz.cmd(&format!("drop {VALVE}"));
    wait_until("a reconnection", Duration::from_secs(30), || {
        counter(mport, &ble("gatt_disconnects")) >= 1 && counter(mport, &ble("gatt_connects")) >= 2
    });
    assert_eq!(bz.cmd(&format!("connected {VALVE}")), "ok connected 1");
    bz.cmd(&format!("notify {VALVE} 2a6e c409"));
    wait_until(
        "a value after the reconnection",
        Duration::from_secs(20),
        || values(&sub, topic).contains(&serde_json::json!(25.0)),
    );
}
