//! Test harness: real mosquitto brokers, the real `weir` binary, a real MQTT subscriber.
//! Every process gets a free loopback port and a temp dir, and is stopped by PID on drop.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How much longer waits may take: `WEIR_TEST_TIME_SCALE` if set, else 4 when the binary runs
/// under an emulator (`WEIR_TEST_EXEC_PREFIX`, see [`weir_cmd`]), else 1. A debug build under
/// qemu-aarch64 forwards a backlog several times slower than natively; the checks stay the same.
pub fn time_scale() -> u32 {
    if let Some(n) = std::env::var("WEIR_TEST_TIME_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    match std::env::var("WEIR_TEST_EXEC_PREFIX") {
        Ok(p) if !p.is_empty() => 4,
        _ => 1,
    }
}

/// Poll `f` every 50 ms until it holds; panic naming `what` after `timeout` × [`time_scale`].
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let timeout = timeout * time_scale();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// A mosquitto broker on a free loopback port, configured from the test.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
}

impl Mosquitto {
    /// `extra` is appended to the config (listeners for TLS and so on).
    pub fn start_with(extra: &str, persistent: bool) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("mosquitto.conf");
        let mut text = String::new();
        text.push_str("user root\nlog_dest stderr\nlog_type error\nlog_type warning\n");
        text.push_str("max_queued_messages 0\nmax_inflight_messages 100\n");
        if persistent {
            text.push_str(&format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            ));
        } else {
            text.push_str("persistence false\n");
        }
        if extra.contains("per_listener_settings") {
            text.push_str(extra);
            text.push_str(&format!(
                "\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
            ));
        } else {
            text.push_str(&format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\n"
            ));
            text.push_str(extra);
        }
        std::fs::write(&conf, text).unwrap();
        let mut m = Mosquitto {
            port,
            dir,
            conf,
            child: None,
        };
        m.start_again();
        m
    }

    pub fn start() -> Mosquitto {
        Self::start_with("", false)
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)");
        self.child = Some(child);
        let port = self.port;
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGTERM and wait: mosquitto saves its persistence file on the way out.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "-TERM");
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A message seen by the subscriber.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A real MQTT subscriber (rumqttc, QoS 1, persistent session so broker restarts lose nothing),
/// collecting every message it receives, running on its own thread.
pub struct Subscriber {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    client: rumqttc::Client,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Subscriber {
    pub fn connect(port: u16, filter: &str) -> Subscriber {
        let id = format!("test-sub-{}", free_port());
        let mut o = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = rumqttc::Client::new(o, 10_000);
        client.subscribe(filter, rumqttc::QoS::AtLeastOnce).unwrap();
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m2, s2) = (msgs.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let mut tx = Some(tx);
        std::thread::spawn(move || {
            for ev in conn.iter() {
                if s2.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        m2.lock().unwrap().push(Msg {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("subscription acknowledged");
        Subscriber { msgs, client, stop }
    }

    pub fn snapshot(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    /// The JSON payload of the newest message on `topic` so far.
    pub fn last_json(&self, topic: &str) -> Option<serde_json::Value> {
        self.msgs
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|m| m.topic == topic)
            .map(Msg::json)
    }

    pub fn count(&self, f: impl Fn(&Msg) -> bool) -> usize {
        self.msgs.lock().unwrap().iter().filter(|m| f(m)).count()
    }

    pub fn publish(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_vec())
            .unwrap();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.client.disconnect();
    }
}

/// Telemetry seen per device: `device -> [seq in arrival order]`, from per-reading messages under
/// `prefix`. Status topics are skipped.
pub fn seqs_by_device(msgs: &[Msg], prefix: &str) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for m in msgs {
        let Some(rest) = m
            .topic
            .strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('/'))
        else {
            continue;
        };
        if rest.starts_with("status") || rest.ends_with("/set") || rest.ends_with("/result") {
            continue;
        }
        let Some((device, _point)) = rest.rsplit_once('/') else {
            continue;
        };
        if let Some(seq) = m.json().get("seq").and_then(|s| s.as_u64()) {
            out.entry(device.to_string()).or_default().push(seq);
        }
    }
    out
}

/// The `weir` binary under test.
pub struct Gateway {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

pub fn weir_bin() -> &'static str {
    env!("CARGO_BIN_EXE_weir")
}

/// A command that runs the weir binary. When the tests run for another architecture under an
/// emulator (`scripts/cross-aarch64 --test`), `WEIR_TEST_EXEC_PREFIX=qemu-aarch64` names it: the
/// binary is started through it, since binfmt is not set up on build machines.
pub fn weir_cmd() -> Command {
    match std::env::var("WEIR_TEST_EXEC_PREFIX") {
        Ok(prefix) if !prefix.is_empty() => {
            let mut c = Command::new(prefix);
            c.arg(weir_bin());
            c
        }
        _ => Command::new(weir_bin()),
    }
}

impl Gateway {
    /// Write `config` (with `{state}` replaced by the state dir) and start `weir run`.
    pub fn start(dir: &Path, config: &str) -> Gateway {
        let cfg_path = dir.join("gateway.yaml");
        let state = dir.join("state");
        std::fs::write(
            &cfg_path,
            config.replace("{state}", &state.display().to_string()),
        )
        .unwrap();
        let mut g = Gateway {
            dir: dir.to_path_buf(),
            config: cfg_path,
            child: None,
            log: dir.join("weir.log"),
        };
        g.start_again();
        g
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(log, "---- start ----").unwrap();
        let child = weir_cmd()
            .args(["run", "-c"])
            .arg(&self.config)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn outbox_path(&self) -> PathBuf {
        self.dir.join("state").join("outbox.db")
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap(); // SIGKILL
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        signal(c.id(), "-TERM");
        c.wait().unwrap()
    }

    /// SIGHUP: reload the configuration file.
    pub fn hup(&self) {
        signal(self.child.as_ref().expect("running").id(), "-HUP");
    }

    /// Rewrite the configuration file (with `{state}` replaced as in [`Gateway::start`]).
    pub fn rewrite(&self, config: &str) {
        let state = self.dir.join("state");
        std::fs::write(
            &self.config,
            config.replace("{state}", &state.display().to_string()),
        )
        .unwrap();
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `weir <args> -c <config>` to completion: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = weir_cmd()
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- weir log ----\n{}", self.log());
        }
    }
}

/// A gateway config for tests: broker on `port` (topic prefix `t`), state under `{state}`
/// (see [`Gateway::start`]), `extra_mqtt` / `store` lines appended to those sections, then
/// `rest`: the `sources:` section and anything after it.
pub fn config_with(port: u16, extra_mqtt: &str, store: &str, rest: &str) -> String {
    format!(
        "gateway:\n  id: test\n  state_dir: {{state}}\n  shutdown_timeout_ms: 5000\n\
mqtt:\n  host: 127.0.0.1\n  port: {port}\n  topic_prefix: t\n  reconnect_min_ms: 100\n  reconnect_max_ms: 1000\n  status_interval_s: 1\n{extra_mqtt}\
store:\n  synchronous: normal\n{store}{rest}"
    )
}

/// A gateway config for tests: sim source + broker on `port`.
pub fn config(port: u16, sim: &str, extra_mqtt: &str, store: &str) -> String {
    config_with(
        port,
        extra_mqtt,
        store,
        &format!("sources:\n  - sim:\n      name: sim\n      seed: 7\n{sim}"),
    )
}

/// Rows in an outbox file: (topic, seq) as the JSON format publishes them with [`config`]'s
/// topics (prefix `t`), in id order. Rows are typed since outbox schema version 3: they are
/// encoded here by the gateway's own JSON format, read through a read-only handle.
pub fn outbox_rows(path: &Path) -> Vec<(String, u64)> {
    let mut o = weir_store::Outbox::open_read_only(path).unwrap();
    let json = weir_mqtt::Encoder::new(
        "t",
        "{prefix}/{device}/{point}",
        "{prefix}/{device}",
        weir_config::PublishMode::PerReading,
        1,
    )
    .json_format();
    o.read_after(0, usize::MAX)
        .unwrap()
        .iter()
        .map(|row| {
            let m = json.encode_row(row).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            (m.topic, v["seq"].as_u64().unwrap())
        })
        .collect()
}

/// `GET <path>` from the daemon's metrics listener: the body, or `None` while it is not up.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

/// One device of the `/devices` document (`null` when absent or the listener is not up).
pub fn device_doc(mport: u16, id: &str) -> serde_json::Value {
    http_get(mport, "/devices")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|doc| {
            doc["devices"]
                .as_array()?
                .iter()
                .find(|d| d["id"] == id)
                .cloned()
        })
        .unwrap_or_default()
}

/// The point `name` of a device document.
pub fn point_doc<'a>(dev: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    dev["points"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
}

/// The value of the unlabelled gauge `name` on `/metrics`.
pub fn gauge(mport: u16, name: &str) -> Option<i64> {
    http_get(mport, "/metrics")?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The pymodbus server of crates/weir-modbus/tests/peer, commanded over stdin.
pub struct ModbusPeer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

pub fn modbus_python() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_MODBUS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/modbus-venv/bin/python");
    if venv.exists() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

impl ModbusPeer {
    pub fn tcp(port: u16, devices: &str) -> ModbusPeer {
        ModbusPeer::tcp_with(port, devices, &[])
    }

    /// With more options of the peer script, e.g. `--quiet-gateway`.
    pub fn tcp_with(port: u16, devices: &str, extra: &[&str]) -> ModbusPeer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("crates/weir-modbus/tests/peer/modbus_peer.py");
        let mut child = Command::new(modbus_python())
            .arg(script)
            .args(["tcp", &port.to_string(), "--devices", devices])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python with pymodbus (scripts/test installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        ModbusPeer {
            child,
            stdin,
            stdout,
        }
    }

    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.starts_with("err"), "peer: {c} -> {line}");
        line.trim().trim_start_matches("val ").to_string()
    }
}

impl Drop for ModbusPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publish `payload` on `device`/`point`'s `set` topic until a result arrives (the forwarder
/// subscribes to a device's command topics once the registry has it); the newest result.
pub fn set_until_result(
    sub: &Subscriber,
    device: &str,
    point: &str,
    payload: &[u8],
) -> serde_json::Value {
    let topic = format!("t/{device}/{point}/set/result");
    let before = sub.count(|m| m.topic == topic);
    for _ in 0..30 {
        sub.publish(&format!("t/{device}/{point}/set"), payload);
        let got = (0..20).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            sub.count(|m| m.topic == topic) > before
        });
        if got {
            return sub.last_json(&topic).unwrap();
        }
    }
    panic!("no result on {topic}");
}
