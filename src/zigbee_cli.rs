//! `weir zigbee …`: the paired devices of a `zigbee` source, and opening its network for joining.
//!
//! * `devices` reads the source's device database (`<state_dir>/sources/<name>/devices.sqlite`)
//!   read-only: it works with or without the daemon running and never disturbs it.
//! * `permit-join` goes through the running daemon the way every other command does: it publishes
//!   the seconds on `<prefix>/<coordinator>/permit_join/set` with the configured broker (address,
//!   credentials, TLS from gateway.yaml; its own client id `<client_id>-cli-<pid>`), waits for the
//!   daemon's answer on `…/permit_join/set/result` and prints it. The daemon must be connected
//!   with `mqtt.commands` on (the default); the same topic works from `mosquitto_pub` or a rule.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use weir_mqtt::conn::{Ev, Session};

use super::ConfigArg;

#[derive(Subcommand, Debug)]
pub enum ZigbeeCmd {
    /// List the paired devices from the device database (IEEE address, network address, name,
    /// model, power source, link quality, last seen). Read-only: safe while the daemon runs.
    Devices {
        #[command(flatten)]
        config: ConfigArg,
        /// The `zigbee` source to list (all of them when absent).
        #[arg(long)]
        source: Option<String>,
        /// Print JSON (an array of devices) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Open the network for joining, through the running daemon: publishes the seconds on
    /// `<prefix>/<coordinator>/permit_join/set` with the configured broker and prints the
    /// daemon's result (0 closes the network).
    PermitJoin {
        #[command(flatten)]
        config: ConfigArg,
        /// How long to keep the network open (0–254 s, Z-Stack's limit; 0 closes it).
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u8).range(0..=254))]
        seconds: u8,
        /// The `zigbee` source (needed only when the configuration has more than one).
        #[arg(long)]
        source: Option<String>,
        /// How long to wait for the daemon's answer.
        #[arg(long, default_value_t = 20)]
        timeout_s: u64,
    },
}

/// The `zigbee` sources of `loaded` (name, settings), narrowed to `only` when given.
fn sources(
    loaded: &weir::Loaded,
    only: Option<&str>,
) -> anyhow::Result<Vec<(String, weir_zigbee::ZigbeeConfig)>> {
    let mut out = Vec::new();
    for s in loaded.sources.iter().filter(|s| s.kind == "zigbee") {
        if only.is_some_and(|o| o != s.name) {
            continue;
        }
        let cfg: weir_zigbee::ZigbeeConfig =
            serde_yaml::from_value(s.body.clone()).with_context(|| format!("source {}", s.name))?;
        out.push((s.name.clone(), cfg));
    }
    if out.is_empty() {
        match only {
            Some(o) => anyhow::bail!(
                "{}: no zigbee source named `{o}`",
                loaded.cfg.file.display()
            ),
            None => anyhow::bail!("{}: no zigbee source", loaded.cfg.file.display()),
        }
    }
    Ok(out)
}

pub fn run(cmd: ZigbeeCmd) -> anyhow::Result<()> {
    match cmd {
        ZigbeeCmd::Devices {
            config,
            source,
            json,
        } => {
            let loaded = weir::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            devices(&loaded, source.as_deref(), json)
        }
        ZigbeeCmd::PermitJoin {
            config,
            seconds,
            source,
            timeout_s,
        } => {
            let loaded = weir::load(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
            let rt = super::runtime()?;
            rt.block_on(permit_join(
                &loaded,
                source.as_deref(),
                seconds,
                Duration::from_secs(timeout_s),
            ))
        }
    }
}

fn devices(loaded: &weir::Loaded, only: Option<&str>, json: bool) -> anyhow::Result<()> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut all = Vec::new();
    let srcs = sources(loaded, only)?;
    let many = srcs.len() > 1;
    for (name, cfg) in srcs {
        let dir = weir::supervisor::source_state_dir(&loaded.cfg.gateway.state_dir, &name);
        let list = weir_zigbee::cli::list(&dir, &cfg)?;
        if json {
            all.extend(list);
            continue;
        }
        if many {
            println!("source {name}:");
        }
        print!("{}", weir_zigbee::cli::table(&list, now_ms));
        println!(
            "{} device{}",
            list.len(),
            if list.len() == 1 { "" } else { "s" }
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(())
}

async fn permit_join(
    loaded: &weir::Loaded,
    only: Option<&str>,
    seconds: u8,
    timeout: Duration,
) -> anyhow::Result<()> {
    let srcs = sources(loaded, only)?;
    if srcs.len() > 1 {
        anyhow::bail!(
            "more than one zigbee source ({}): name one with --source",
            srcs.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let cfg = &loaded.cfg;
    if !cfg.mqtt.commands {
        anyhow::bail!(
            "{}: mqtt.commands is off, so the daemon takes no commands over MQTT; publish nothing \
             and turn it on, or open the network at start with the source's permit_join_s",
            cfg.file.display()
        );
    }
    let coordinator = &srcs[0].1.coordinator_id;
    let prefix = cfg.topic_prefix();
    let set = format!("{prefix}/{coordinator}/permit_join/set");
    let result = format!(
        "{}/set/result",
        weir_mqtt::format::TopicTemplate::new(&cfg.mqtt.telemetry_topic, &prefix)
            .render(coordinator, "permit_join")
    );
    let mut connect = weir_mqtt::forwarder_config(cfg)?.connect;
    connect.client_id = format!("{}-cli-{}", connect.client_id, std::process::id());
    // Only the daemon's session owns the status topic: this one's will, should it die, is an
    // empty retained message on a topic of its own, which stores nothing.
    connect.will = (format!("{prefix}/cli/{}", connect.client_id), Vec::new());
    let broker = format!("{}:{}", connect.host, connect.port);
    let mut session = Session::new(&connect);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut published = false;
    loop {
        let ev =
            tokio::time::timeout_at(deadline, session.poll())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                    "no answer on {result} within {} s{}: is `weir run` running and connected to \
                     {broker}?",
                    timeout.as_secs(),
                    if published { "" } else { " (not even connected)" }
                )
                })?
                .map_err(|e| anyhow::anyhow!("MQTT broker {broker}: {e}"))?;
        match ev {
            Ev::Connected if !published => {
                // The broker handles one connection's packets in order: the subscription is in
                // place before the command reaches the daemon.
                session
                    .subscribe(&result)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                session
                    .publish(&set, 1, false, seconds.to_string().into_bytes())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                published = true;
            }
            Ev::Message { topic, payload } if topic == result => {
                session.disconnect();
                let doc: serde_json::Value = serde_json::from_slice(&payload)
                    .with_context(|| format!("the answer on {result} is not JSON"))?;
                if doc["ok"] == true {
                    if seconds == 0 {
                        println!("zigbee network closed for joining");
                    } else {
                        println!(
                            "zigbee network open for joining for {seconds} s; `weir zigbee \
                             devices` lists the devices as they are interviewed"
                        );
                    }
                    return Ok(());
                }
                anyhow::bail!(
                    "the daemon refused: {}",
                    doc["error"].as_str().unwrap_or("no reason given")
                );
            }
            _ => {}
        }
    }
}
