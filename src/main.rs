//! `weir` — the edge gateway daemon and its command-line tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use weir_core::CancellationToken;

#[cfg(feature = "zigbee")]
mod zigbee_cli;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Edge gateway: field devices → durable outbox → MQTT"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// `-c/--config`, shared by every subcommand that reads gateway.yaml.
#[derive(clap::Args, Debug)]
struct ConfigArg {
    /// The gateway configuration.
    #[arg(
        short,
        long,
        default_value = "/etc/weir/gateway.yaml",
        env = "WEIR_CONFIG"
    )]
    config: PathBuf,
}

impl std::ops::Deref for ConfigArg {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.config
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Validate everything `run` would load; exit 1 with every error (file:line: path: message).
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the devices of the running daemon (owner, points, availability), read from its local
    /// endpoint (`metrics.listen`); `--json` prints the document as served at `/devices`.
    Devices {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Inspect or empty the store-and-forward outbox.
    Buffer {
        #[command(subcommand)]
        cmd: BufferCmd,
    },
    /// Commission Modbus devices: read or write one value without a configuration, e.g.
    /// `weir modbus read --tcp 192.0.2.10 --unit 1 --table input --address 0 --type f32`.
    #[cfg(feature = "modbus")]
    Modbus {
        #[command(subcommand)]
        cmd: weir_modbus::commission::ModbusCmd,
    },
    /// Zigbee: list the paired devices, open the network for joining.
    #[cfg(feature = "zigbee")]
    Zigbee {
        #[command(subcommand)]
        cmd: zigbee_cli::ZigbeeCmd,
    },
    /// Work with the rules of a configuration.
    #[cfg(feature = "rules")]
    Rules {
        #[command(subcommand)]
        cmd: RulesCmd,
    },
}

#[cfg(feature = "rules")]
#[derive(Subcommand, Debug)]
enum RulesCmd {
    /// Run the configured rules over recorded readings (JSON Lines) and print what they would
    /// change, drop, emit, alert and command. Nothing is sent anywhere.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        /// One reading per line: {"device":…,"point":…,"value":…,"unit":…,"ts":…}; `-` for stdin.
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Run the configured anomaly detectors (`inference:`) over recorded readings (the JSON Lines
    /// of `rules test`) and print every score and alert, to tune thresholds offline.
    #[cfg(feature = "tflite")]
    Infer {
        #[command(flatten)]
        config: ConfigArg,
        /// One reading per line, as for `rules test`; `-` for stdin.
        #[arg(short, long)]
        input: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum BufferCmd {
    /// Print the outbox's rows, bytes, oldest age, drop counts and dead letters (rows the broker
    /// refused or that kept ending the connection) as JSON (safe while running).
    Stats {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Publish everything in the outbox to the configured broker and exit when it is empty.
    /// Refused while `weir run` holds the outbox (they would fight over the MQTT session).
    Drain {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Move every dead letter back to the end of the outbox, to be sent again (after fixing
    /// what made the broker refuse them, e.g. its ACL). Run it with the daemon stopped.
    Requeue {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Under systemd, journald adds its own timestamps.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    // Colours only on a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    // `init` also installs the `log` → `tracing` bridge, so rumqttc's records show up.
    if under_journald {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn load(config: &std::path::Path) -> Result<weir::Loaded, ExitCode> {
    load_for(config, weir::Need::All)
}

fn load_for(config: &std::path::Path, need: weir::Need) -> Result<weir::Loaded, ExitCode> {
    weir::load_for(config, need).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    weir_mqtt::tls::install_crypto_provider();
    match cli.cmd {
        Cmd::Check { config } => match load(&config) {
            Ok(l) => {
                #[cfg(feature = "rules")]
                let rules = match l.rules().filter(|s| !s.is_empty()) {
                    Some(set) => format!(
                        "; {} rule{}: {}",
                        set.len(),
                        if set.len() == 1 { "" } else { "s" },
                        set.names().join(", ")
                    ),
                    None => String::new(),
                };
                #[cfg(not(feature = "rules"))]
                let rules = String::new();
                println!(
                    "{}: OK ({} source{}: {}){rules}",
                    config.display(),
                    l.sources.len(),
                    if l.sources.len() == 1 { "" } else { "s" },
                    l.sources
                        .iter()
                        .map(|s| format!("{} ({})", s.name, s.kind))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(c) => c,
        },
        Cmd::Devices { config, json } => {
            let loaded = match load_for(&config, weir::Need::Devices) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(devices(&loaded.cfg, json))
        }
        Cmd::Run { config } => {
            let loaded = match load(&config) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(runtime().and_then(|rt| rt.block_on(run(loaded))))
        }
        Cmd::Buffer {
            cmd: BufferCmd::Stats { config },
        } => {
            let loaded = match load_for(&config, weir::Need::Store) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(stats(&loaded.cfg))
        }
        #[cfg(feature = "rules")]
        Cmd::Rules {
            cmd: RulesCmd::Test { config, input },
        } => {
            let loaded = match load_for(&config, weir::Need::Rules) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(rules_test(loaded, &input))
        }
        #[cfg(all(feature = "rules", feature = "tflite"))]
        Cmd::Rules {
            cmd: RulesCmd::Infer { config, input },
        } => {
            let loaded = match load_for(&config, weir::Need::Inference) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(rules_infer(loaded, &input))
        }
        #[cfg(feature = "modbus")]
        Cmd::Modbus { cmd } => report(runtime().and_then(|rt| {
            let out = rt
                .block_on(weir_modbus::commission::run_cli(cmd))
                .map_err(|e| anyhow::anyhow!(e))?;
            print!("{out}");
            Ok(())
        })),
        #[cfg(feature = "zigbee")]
        Cmd::Zigbee { cmd } => report(zigbee_cli::run(cmd)),
        Cmd::Buffer {
            cmd: BufferCmd::Drain { config },
        } => {
            let loaded = match load(&config) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(runtime().and_then(|rt| rt.block_on(drain(loaded.cfg))))
        }
        Cmd::Buffer {
            cmd: BufferCmd::Requeue { config },
        } => {
            let loaded = match load_for(&config, weir::Need::Store) {
                Ok(l) => l,
                Err(c) => return c,
            };
            report(requeue(&loaded.cfg))
        }
    }
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(feature = "rules")]
fn rules_test(loaded: weir::Loaded, input: &std::path::Path) -> anyhow::Result<()> {
    let Some(set) = loaded.rules().filter(|s| !s.is_empty()).cloned() else {
        anyhow::bail!("{}: no `rules:` section", loaded.cfg.file.display());
    };
    let reader: Box<dyn std::io::BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = std::io::stdout().lock();
    weir_rules::replay::replay(set, reader, &mut out)
        .with_context(|| format!("{}", input.display()))?;
    Ok(())
}

#[cfg(all(feature = "rules", feature = "tflite"))]
fn rules_infer(loaded: weir::Loaded, input: &std::path::Path) -> anyhow::Result<()> {
    let Some(b) = loaded.inference().filter(|b| !b.detectors.is_empty()) else {
        anyhow::bail!("{}: no `inference:` detectors", loaded.cfg.file.display());
    };
    let reader: Box<dyn std::io::BufRead> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(input)
            .with_context(|| format!("cannot open {}", input.display()))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = std::io::stdout().lock();
    weir_infer::replay::replay(b, reader, weir_rules::replay::parse_line, &mut out)
        .with_context(|| format!("{}", input.display()))?;
    Ok(())
}

/// `weir devices`: the running daemon's registry from its local endpoint.
fn devices(cfg: &weir_config::GatewayConfig, json: bool) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let Some(addr) = cfg.metrics.listen else {
        anyhow::bail!(
            "{}: `metrics.listen` is not set, so the daemon serves no device list; set it \
             (e.g. 127.0.0.1:9898) and restart",
            cfg.file.display()
        );
    };
    let mut sock = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(3))
        .with_context(|| {
        format!("cannot reach the daemon at {addr} (metrics.listen): is it running?")
    })?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        sock,
        "GET /devices HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    sock.read_to_string(&mut resp)
        .with_context(|| format!("reading the answer from {addr}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .context("the daemon's answer has no body")?;
    if !resp.starts_with("HTTP/1.1 200") {
        anyhow::bail!(
            "{addr}/devices: {}",
            resp.lines().next().unwrap_or_default()
        );
    }
    if json {
        print!("{body}");
        return Ok(());
    }
    let doc: serde_json::Value =
        serde_json::from_str(body).context("the device list is not JSON")?;
    let now = weir_core::Timestamp::now().as_nanos();
    let empty = Vec::new();
    let list = doc["devices"].as_array().unwrap_or(&empty);
    println!(
        "{:<28} {:<12} {:<8} {:>9}  points",
        "DEVICE", "OWNER", "STATE", "LAST SEEN"
    );
    for d in list {
        let seen = d["last_seen_ns"]
            .as_i64()
            .map(|t| format!("{:.1}s ago", (now - t).max(0) as f64 / 1e9))
            .unwrap_or_else(|| "never".into());
        let points: Vec<String> = d["points"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|p| {
                let mut s = p["name"].as_str().unwrap_or_default().to_string();
                if p["writable"].as_bool() == Some(true) {
                    s.push_str(" (w)");
                }
                if p["stale"].as_bool() == Some(true) {
                    s.push_str(" (stale)");
                }
                s
            })
            .collect();
        println!(
            "{:<28} {:<12} {:<8} {:>9}  {}",
            d["id"].as_str().unwrap_or_default(),
            d["owner"].as_str().unwrap_or_default(),
            d["availability"].as_str().unwrap_or_default(),
            seen,
            points.join(", ")
        );
    }
    println!("{} devices", list.len());
    Ok(())
}

fn stats(cfg: &weir_config::GatewayConfig) -> anyhow::Result<()> {
    let path = cfg.store_path();
    if !path.exists() {
        anyhow::bail!(
            "no outbox yet at {}: `weir run` creates it (gateway.state_dir, store.path)",
            path.display()
        );
    }
    let mut o = weir_store::Outbox::open_read_only(&path)?;
    let s = o.stats()?;
    let now = weir_core::Timestamp::now().as_nanos();
    let doc = serde_json::json!({
        "path": path.display().to_string(),
        "rows": s.rows,
        "bytes": s.bytes,
        "max_bytes": s.max_bytes,
        "oldest_age_s": s.oldest_age_ns.map(|a| a as f64 / 1e9),
        "dropped_for_space_total": s.dropped_for_space_total,
        "dropped_for_age_total": s.dropped_for_age_total,
        "fs_available_bytes": o.fs_available_bytes().ok(),
        "dead_letter_rows": s.dead_letter_rows,
        "dead_letter_bytes": s.dead_letter_bytes,
        "dead_letters": o.dead_letters(DEAD_LETTERS_SHOWN)?
            .iter()
            .map(|d| serde_json::json!({
                "id": d.message.id,
                "topic": d.sent_topic.as_deref().unwrap_or(&d.message.topic),
                "reason": d.reason,
                "age_s": (now - d.message.enqueued_ns).max(0) as f64 / 1e9,
            }))
            .collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(())
}

/// Dead letters listed by `weir buffer stats` (the oldest; the count covers all of them).
const DEAD_LETTERS_SHOWN: usize = 20;

fn requeue(cfg: &weir_config::GatewayConfig) -> anyhow::Result<()> {
    let mut o = weir::open_outbox(cfg)?;
    let n = o.requeue_dead_letters()?;
    println!(
        "requeued {n} dead letter{}; `weir run` or `weir buffer drain` sends them",
        if n == 1 { "" } else { "s" }
    );
    Ok(())
}

async fn drain(cfg: weir_config::GatewayConfig) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    let outbox = Arc::new(Mutex::new(weir::open_outbox(&cfg)?));
    let before = outbox
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .stats()?;
    let mut fc = weir_mqtt::forwarder_config(&cfg)?;
    fc.exit_when_empty = true;
    fc.commands = false;
    let token = CancellationToken::new();
    let t2 = token.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        t2.cancel();
    });
    let f = weir_mqtt::Forwarder::new(
        fc,
        outbox.clone(),
        Arc::new(tokio::sync::Notify::new()),
        weir_core::CommandRouter::new(),
        weir_core::Metrics::new(),
    );
    f.run(token).await;
    let after = outbox
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .stats()?;
    let set_aside = after
        .dead_letter_rows
        .saturating_sub(before.dead_letter_rows);
    print!(
        "drained {} rows; {} left",
        (before.rows - after.rows).saturating_sub(set_aside),
        after.rows
    );
    if set_aside > 0 {
        print!("; {set_aside} set aside as dead letters (see `weir buffer stats`)");
    }
    println!();
    Ok(())
}

async fn run(loaded: weir::Loaded) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let reload = std::sync::Arc::new(tokio::sync::Notify::new());
    let reload_tx = reload.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reload_tx.notify_one();
                }
            }
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        token.cancel();
    });
    // systemd watchdog: ping at half the interval for as long as the runtime is alive.
    if let Some(interval) = sd_notify::watchdog_enabled() {
        let t = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval / 2);
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tick.tick() => { let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]); }
                }
            }
        });
    }
    weir::run_with_reload(loaded, shutdown, reload, || {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    })
    .await
}
