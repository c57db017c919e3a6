//! Loading gateway.yaml into what the daemon runs: every source section parsed by the adapter
//! crate that owns its kind, every stage section by its stage crate, and the checks across
//! sections (one owner per device, TLS files, the state directory).
//!
//! Adapter kinds and stages are wired by explicit, feature-gated matches ([`source_builder`],
//! [`stage_builders`]): a build without a feature does not contain the adapter, and a config
//! naming it is rejected by `weir check`.
//!
//! Commands load only what they need ([`Need`]): `weir rules test` and `weir buffer stats` work
//! on a laptop with the production file (no TLS files, no secrets, no Modbus profiles read).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use weir_config::{ConfigErrors, Diagnostics, GatewayConfig, SourceEntry};
use weir_core::{SourceBuilder, StageBuilder};

/// Source kinds compiled into this build.
pub const SOURCE_KINDS: &[&str] = &[
    #[cfg(feature = "sim")]
    "sim",
    #[cfg(feature = "coap")]
    "coap",
    #[cfg(feature = "modbus")]
    "modbus",
    #[cfg(feature = "zigbee")]
    "zigbee",
    #[cfg(feature = "ble")]
    "ble",
];

/// Stage sections compiled into this build.
pub const STAGE_KINDS: &[&str] = &[
    #[cfg(feature = "rules")]
    "rules",
    #[cfg(feature = "tflite")]
    "inference",
];

/// One `sources[i]` entry, parsed.
#[derive(Debug, Clone)]
pub struct SourceDecl {
    pub name: String,
    pub kind: String,
    /// The entry as written (after `${VAR}` expansion): a reload restarts a source whose body
    /// changed and leaves the others running.
    pub body: serde_yaml::Value,
    pub builder: Arc<dyn SourceBuilder>,
}

/// A configuration with every section parsed.
#[derive(Debug)]
pub struct Loaded {
    pub cfg: GatewayConfig,
    pub sources: Vec<SourceDecl>,
    /// Pipeline stages in pipeline order; every stage compiled into this build is present
    /// (empty when its section is absent), so a reload can add its section.
    pub stages: Vec<Arc<dyn StageBuilder>>,
}

impl Loaded {
    /// The inference section: detectors with their files read (`weir rules infer`).
    #[cfg(feature = "tflite")]
    pub fn inference(&self) -> Option<&weir_infer::InferenceBuilder> {
        self.stages
            .iter()
            .find_map(|s| s.as_any().downcast_ref::<weir_infer::InferenceBuilder>())
    }

    /// The rules section, compiled (`weir check`'s summary, `weir rules test`).
    #[cfg(feature = "rules")]
    pub fn rules(&self) -> Option<&weir_rules::RuleSet> {
        self.stages.iter().find_map(|s| {
            s.as_any()
                .downcast_ref::<weir_rules::RulesBuilder>()
                .map(|b| &b.set)
        })
    }
}

/// What a command needs loaded beyond the file itself.
///
/// Whatever the need, the whole file must be YAML with known top-level keys. Sections outside the
/// need are not `${VAR}`-expanded, read or validated ([`weir_config::Sections`]): an unset
/// variable, a missing TLS or secret file, a Modbus profile that is not on this machine, in a
/// section the command does not use, is no error for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Everything `run` loads (`run`, `check`, `buffer drain`).
    All,
    /// `gateway` and `store` (`buffer stats`, `buffer requeue`). No source, stage or `mqtt`.
    Store,
    /// `gateway` and `metrics` (`devices`, which asks the daemon at `metrics.listen`).
    Devices,
    /// `gateway` and the `rules` section, its own `${VAR}`s expanded (`rules test`). No source,
    /// `mqtt` or other stage.
    Rules,
    /// `gateway` and the `inference` section (`rules infer`): its models loaded and checked.
    Inference,
}

fn config_dir(cfg_file: &Path) -> &Path {
    cfg_file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Report an adapter's own validation problems (`key` relative to the source's YAML path `at`,
/// empty for the source itself); true when there were none.
#[cfg(any(
    feature = "sim",
    feature = "modbus",
    feature = "coap",
    feature = "zigbee",
    feature = "ble"
))]
fn report<K: AsRef<str>>(
    d: &mut Diagnostics,
    at: &str,
    problems: impl IntoIterator<Item = (K, String)>,
) -> bool {
    let mut ok = true;
    for (key, msg) in problems {
        let key = key.as_ref();
        d.error(
            &if key.is_empty() {
                at.to_string()
            } else {
                format!("{at}.{key}")
            },
            msg,
        );
        ok = false;
    }
    ok
}

/// Parse one `sources[i]` entry with the adapter crate that owns its kind.
pub fn source_builder(e: &SourceEntry, d: &mut Diagnostics) -> Option<Box<dyn SourceBuilder>> {
    match e.kind.as_str() {
        #[cfg(feature = "sim")]
        "sim" => {
            let c: weir_sim::SimConfig = d.parse(e.body.clone(), &e.path)?;
            let problems = c.validate();
            report(d, &e.path, problems).then(|| Box::new(c) as Box<dyn SourceBuilder>)
        }
        #[cfg(feature = "modbus")]
        "modbus" => {
            let c: weir_modbus::ModbusConfig = d.parse(e.body.clone(), &e.path)?;
            // Profile files are relative to the configuration file.
            let dir = config_dir(d.file()).to_path_buf();
            match c.resolve(&dir) {
                Ok(r) => {
                    Some(Box::new(weir_modbus::ModbusBuilder::new(r)) as Box<dyn SourceBuilder>)
                }
                Err(problems) => {
                    report(d, &e.path, problems);
                    None
                }
            }
        }
        #[cfg(feature = "coap")]
        "coap" => {
            let c: weir_coap::CoapConfig = d.parse(e.body.clone(), &e.path)?;
            let problems = c.validate();
            report(d, &e.path, problems).then(|| Box::new(c) as Box<dyn SourceBuilder>)
        }
        #[cfg(feature = "zigbee")]
        "zigbee" => {
            let c: weir_zigbee::ZigbeeConfig = d.parse(e.body.clone(), &e.path)?;
            let problems = c.validate();
            report(d, &e.path, problems).then(|| Box::new(c) as Box<dyn SourceBuilder>)
        }
        #[cfg(feature = "ble")]
        "ble" => {
            let c: weir_ble::BleConfig = d.parse(e.body.clone(), &e.path)?;
            // Bind key files are relative to the configuration file.
            let dir = config_dir(d.file()).to_path_buf();
            match c.resolve(&dir) {
                Ok(r) => Some(Box::new(r) as Box<dyn SourceBuilder>),
                Err(problems) => {
                    report(d, &e.path, problems);
                    None
                }
            }
        }
        other => {
            d.error(
                &e.path,
                format!(
                    "unknown source kind `{other}`; this build has: {}",
                    SOURCE_KINDS.join(", ")
                ),
            );
            None
        }
    }
}

/// Parse every stage section compiled into this build, in pipeline order; a section this build
/// does not have is an error.
pub fn stage_builders(cfg: &GatewayConfig, d: &mut Diagnostics) -> Vec<Arc<dyn StageBuilder>> {
    let mut out: Vec<Arc<dyn StageBuilder>> = Vec::new();
    for (stage, _) in &cfg.stages {
        if !STAGE_KINDS.contains(&stage.as_str()) {
            d.error(
                stage,
                format!("the `{stage}` stage is not part of this build of weir"),
            );
        }
    }
    #[cfg(feature = "rules")]
    {
        let set = match cfg.stages.iter().find(|(k, _)| k == "rules") {
            Some((path, value)) => {
                weir_rules::parse_section(value.clone(), path, config_dir(&cfg.file), d)
                    .unwrap_or_default()
            }
            None => weir_rules::RuleSet::default(),
        };
        out.push(Arc::new(weir_rules::RulesBuilder { set }));
    }
    // After the rules: detectors see what the rules made of the readings.
    #[cfg(feature = "tflite")]
    {
        let b = match cfg.stages.iter().find(|(k, _)| k == "inference") {
            Some((path, value)) => {
                weir_infer::parse_section(value.clone(), path, config_dir(&cfg.file), d)
                    .unwrap_or_default()
            }
            None => weir_infer::InferenceBuilder::default(),
        };
        out.push(Arc::new(b));
    }
    let _ = (cfg, d);
    out
}

/// `weir check` refuses two sources declaring the same device, naming both places.
fn check_one_owner(sources: &[(SourceDecl, String)], d: &mut Diagnostics) {
    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    for (decl, path) in sources {
        for spec in decl.builder.device_specs() {
            let id = spec.id.to_string();
            if let Err(e) = weir_core::validate_device_id(&id) {
                d.error(path, e.to_string());
                continue;
            }
            match seen.get(&id) {
                Some((other, other_path)) if other != &decl.name => d.error(
                    path,
                    format!(
                        "device `{id}` is already declared by source `{other}` ({other_path}); \
                         a device has exactly one owning source"
                    ),
                ),
                _ => {
                    seen.insert(id, (decl.name.clone(), path.clone()));
                }
            }
        }
    }
}

/// Load and validate everything `run` needs: the file, every source and stage section, TLS files.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    load_for(path, Need::All)
}

/// Load what `need` says (see [`Need`]); the file's own structure is always checked.
pub fn load_for(path: &Path, need: Need) -> Result<Loaded, ConfigErrors> {
    load_with(path, need, None)
}

/// [`load_for`] on a configuration given as text (named `file` in messages; relative paths in it
/// are relative to `file`'s directory), `${VAR}`s from `lookup`: `weir check`'s whole path
/// without the file read. The entry point of the `config_yaml` fuzz target and its corpus replay.
pub fn load_str(
    text: &str,
    file: &Path,
    need: Need,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    load_with(file, need, Some((text, lookup)))
}

type Text<'a> = Option<(&'a str, &'a dyn Fn(&str) -> Option<String>)>;

fn load_with(path: &Path, need: Need, text: Text<'_>) -> Result<Loaded, ConfigErrors> {
    let sections = match need {
        Need::All => weir_config::Sections::All,
        Need::Store => weir_config::Sections::Only(&["gateway", "store"]),
        Need::Devices => weir_config::Sections::Only(&["gateway", "metrics"]),
        Need::Rules => weir_config::Sections::Only(&["gateway", "rules"]),
        Need::Inference => weir_config::Sections::Only(&["gateway", "inference"]),
    };
    let (cfg, mut d) = match text {
        Some((text, lookup)) => weir_config::load_str_for(text, path, lookup, &sections),
        None => weir_config::load_file_for(path, &sections),
    };
    let mut sources = Vec::new();
    let mut stages = Vec::new();
    if let Some(cfg) = &cfg {
        if need == Need::All {
            let mut with_paths = Vec::new();
            for e in &cfg.sources {
                if let Some(b) = source_builder(e, &mut d) {
                    with_paths.push((
                        SourceDecl {
                            name: e.name.clone(),
                            kind: e.kind.clone(),
                            body: e.body.clone(),
                            builder: Arc::from(b),
                        },
                        e.path.clone(),
                    ));
                }
            }
            check_one_owner(&with_paths, &mut d);
            sources = with_paths.into_iter().map(|(s, _)| s).collect();
        }
        if matches!(need, Need::All | Need::Rules | Need::Inference) {
            stages = stage_builders(cfg, &mut d);
        }
        if need == Need::All {
            if let Some(t) = &cfg.mqtt.tls {
                if !d.has_errors() {
                    if let Err(e) = weir_mqtt::tls::client_config(t) {
                        d.error("mqtt.tls", e.to_string());
                    }
                }
            }
        }
        let sd = &cfg.gateway.state_dir;
        if sd.exists() && !sd.is_dir() {
            d.error(
                "gateway.state_dir",
                format!("{} is not a directory", sd.display()),
            );
        }
    }
    d.finish()?;
    Ok(Loaded {
        cfg: cfg.expect("no errors means a config"),
        sources,
        stages,
    })
}
