//! Test harness: the real peers (a pymodbus server driven over stdin, a socat pty pair) started as
//! processes and stopped by PID, and an in-process Modbus source whose readings are collected.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weir_core::{
    bus, CancellationToken, CommandOrigin, CommandRouter, Metrics, Reading, SourceBuilder,
    SourceContext, Value,
};
use weir_modbus::{ModbusBuilder, ModbusConfig};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The python with pymodbus: `WEIR_MODBUS_PYTHON` (set by scripts/test), else the venv
/// scripts/test makes under target/, else `python3`.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("WEIR_MODBUS_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/modbus-venv/bin/python");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("python3")
}

pub fn peer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peer/modbus_peer.py")
}

/// How much slower the machine may be: `WEIR_TEST_TIME_SCALE` if set, else 4 when tests run
/// under an emulator (`WEIR_TEST_EXEC_PREFIX` set, as the workspace's tests/common does), else 1.
/// Waits and the intervals configured by timing-sensitive tests are multiplied by it.
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

/// Poll `f` every 20 ms until it holds; panic naming `what` after `timeout` × [`time_scale`].
pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let timeout = timeout * time_scale();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A pymodbus server (tests/peer/modbus_peer.py), commanded over stdin.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    pub fn tcp(port: u16, devices: &str) -> Peer {
        Self::start(&["tcp", &port.to_string(), "--devices", devices])
    }

    /// Modbus TCP where a silent device gets no answer (not exception 0x0B).
    pub fn tcp_quiet(port: u16, devices: &str) -> Peer {
        Self::start(&[
            "tcp",
            &port.to_string(),
            "--devices",
            devices,
            "--quiet-gateway",
        ])
    }

    /// RTU frames over TCP, as a serial-to-Ethernet gateway in transparent mode.
    pub fn tcp_rtu(port: u16, devices: &str) -> Peer {
        Self::start(&["tcp-rtu", &port.to_string(), "--devices", devices])
    }

    pub fn rtu(pty: &Path, devices: &str) -> Peer {
        Self::start(&["rtu", &pty.display().to_string(), "--devices", devices])
    }

    fn start(args: &[&str]) -> Peer {
        let mut child = Command::new(python())
            .arg(peer_script())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python with pymodbus (scripts/test installs it)");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "peer did not start: {line:?}");
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    /// Send one command, return its one-line answer.
    pub fn cmd(&mut self, c: &str) -> String {
        writeln!(self.stdin, "{c}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let line = line.trim().to_string();
        assert!(!line.starts_with("err"), "peer: {c} -> {line}");
        line
    }

    pub fn ok(&mut self, c: &str) {
        assert_eq!(self.cmd(c), "ok", "{c}");
    }

    /// `get` → the values.
    pub fn get(&mut self, dev: u8, table: &str, addr: u16, count: u16) -> Vec<i64> {
        let r = self.cmd(&format!("get {dev} {table} {addr} {count}"));
        r.strip_prefix("val ")
            .unwrap()
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    }

    pub fn value(&mut self, c: &str) -> String {
        self.cmd(c).strip_prefix("val ").unwrap().to_string()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `socat pty,link=A pty,link=B`: a null-modem cable between two ptys (the RS485 line).
pub struct Socat {
    pub a: PathBuf,
    pub b: PathBuf,
    child: Option<Child>,
}

impl Socat {
    pub fn start(dir: &Path) -> Socat {
        let mut s = Socat {
            a: dir.join("ttyA"),
            b: dir.join("ttyB"),
            child: None,
        };
        s.start_again();
        s
    }

    pub fn start_again(&mut self) {
        assert!(self.child.is_none());
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", self.a.display()))
            .arg(format!("pty,raw,echo=0,link={}", self.b.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("socat must be installed (apt-get install socat)");
        self.child = Some(child);
        let (a, b) = (self.a.clone(), self.b.clone());
        wait_until("socat's ptys", Duration::from_secs(10), || {
            a.exists() && b.exists()
        });
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        let (a, b) = (self.a.clone(), self.b.clone());
        wait_until("the ptys to vanish", Duration::from_secs(5), || {
            !a.exists() && !b.exists()
        });
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A reading and when the test saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub at: Instant,
    pub r: Reading,
}

/// A Modbus source running in-process, its readings collected.
pub struct Running {
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub router: CommandRouter,
    pub metrics: Metrics,
    token: CancellationToken,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn start(yaml: &str) -> Running {
        let cfg: ModbusConfig = serde_yaml::from_str(yaml).unwrap();
        let resolved = cfg
            .resolve(Path::new(env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|p| panic!("config problems: {p:?}"));
        let metrics = Metrics::new();
        let builder = ModbusBuilder::new(resolved);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let router = CommandRouter::new();
        // Every point is declared, as the daemon does, so the router tells read-only from unknown.
        for spec in builder.device_specs() {
            router.registry().claim("mb", spec).unwrap();
        }
        let inbox = router.inbox("mb", 16);
        let (tx, mut rx) = bus(1024, &metrics);
        let token = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut src = builder.build("mb", &metrics).unwrap();
        let ctx = SourceContext::new(tx.for_source("mb"), token.clone(), inbox);
        let s2 = seen.clone();
        let task = rt.spawn(async move {
            let run = tokio::spawn(async move { src.run(ctx).await });
            while let Some(b) = rx.recv().await {
                let at = Instant::now();
                s2.lock()
                    .unwrap()
                    .extend(b.into_iter().map(|r| Seen { at, r }));
            }
            run.await.unwrap().unwrap();
        });
        Running {
            seen,
            router,
            metrics,
            token,
            rt,
            task: Some(task),
        }
    }

    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The latest reading of device/point.
    pub fn latest(&self, device: &str, point: &str) -> Option<Reading> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.r.device.as_str() == device && s.r.point.as_str() == point)
            .map(|s| s.r.clone())
    }

    pub fn of(&self, device: &str) -> Vec<Seen> {
        self.snapshot()
            .into_iter()
            .filter(|s| s.r.device.as_str() == device)
            .collect()
    }

    /// Write through the router, as MQTT `…/set` would; the adapter's answer.
    pub fn write(&self, device: &str, point: &str, v: Value) -> Result<(), String> {
        let r = self.router.clone();
        let (d, p) = (device.into(), point.into());
        self.rt
            .block_on(async move { r.execute(d, p, v, CommandOrigin::Cli).await })
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.metrics.counter(name, labels).get()
    }

    pub fn stop(mut self) {
        self.token.cancel();
        if let Some(t) = self.task.take() {
            self.rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), t).await })
                .expect("the source stops promptly on shutdown")
                .unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
