//! The `rules:` section of gateway.yaml and its compilation.
//!
//! ```yaml
//! rules:
//!   - name: vent
//!     match: { device: "gh*/climate", point: temperature }   # globs; `source:` optional
//!     file: rules/vent.rhai                                 # relative to gateway.yaml's directory
//!   - name: fahrenheit
//!     match: { point: temperature }
//!     script: |
//!       emit("temperature_f", r.value * 9.0 / 5.0 + 32.0, "°F");
//! ```
//!
//! Invariants: every rule has a unique name and exactly one of `script` / `file`; every script is
//! compiled once, here, with strict variables (an undeclared variable is a compile error, so
//! typos surface in `weir check`); a [`RuleSet`] only exists when every rule compiled.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use weir_config::Diagnostics;

use crate::glob::Pattern;

/// One entry of `rules:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Unique; letters, digits, `-`, `_`, `.`. Used in metrics labels and logs.
    pub name: String,
    /// Which readings run the script; absent: every reading.
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    /// The script, inline.
    pub script: Option<String>,
    /// The script in a file, relative to the configuration file's directory.
    pub file: Option<PathBuf>,
}

/// `match:` — all given patterns must match.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// Device id glob, e.g. `gh*/climate`.
    pub device: Option<String>,
    /// Point glob, e.g. `temperature` or `*moisture*`.
    pub point: Option<String>,
    /// Source (adapter instance name) glob.
    pub source: Option<String>,
}

/// Why a rule could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule name `{0}` must be non-empty letters, digits, `-`, `_` or `.`")]
    BadName(String),
    #[error("duplicate rule name `{0}`")]
    Duplicate(String),
    #[error("rule `{0}` needs exactly one of `script:` or `file:`")]
    ScriptSource(String),
    #[error("rule `{rule}`: cannot read {}: {source}", path.display())]
    Read {
        rule: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("rule `{rule}`: {origin}{}: {message}", line.map(|l| format!(":{l}:{}", col.unwrap_or(0))).unwrap_or_default())]
    Compile {
        rule: String,
        /// The script file, or `inline script`.
        origin: String,
        line: Option<usize>,
        col: Option<usize>,
        message: String,
    },
}

/// A rule ready to run: its patterns and compiled script.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: Arc<str>,
    pub device: Pattern,
    pub point: Pattern,
    pub source: Option<Pattern>,
    pub ast: Arc<rhai::AST>,
    /// The script calls `every(…)`: it also runs on the pipeline tick with `r` = `()`.
    pub uses_timers: bool,
    /// The script calls `latest(…)`: the stage keeps the last value of every point only while
    /// some rule does.
    pub uses_latest: bool,
    /// Where the script came from (file path or `inline script`), for messages.
    pub origin: String,
    /// The script's text: a reload keeps a rule's memory only when this and `match:` are unchanged.
    pub text: Arc<str>,
    /// `match:` as written, for the same comparison.
    pub match_key: String,
}

impl CompiledRule {
    /// Whether this rule runs for a reading of `device`/`point` from `source`.
    pub fn matches(&self, device: &str, point: &str, source: &str) -> bool {
        self.device.matches(device)
            && self.point.matches(point)
            && self.source.as_ref().is_none_or(|s| s.matches(source))
    }
}

/// Every rule of a configuration, compiled, in order.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<CompiledRule>,
}

impl RuleSet {
    pub fn len(&self) -> usize {
        self.rules.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
    pub fn names(&self) -> Vec<&str> {
        self.rules.iter().map(|r| &*r.name).collect()
    }

    /// Build from parsed entries; `base_dir` resolves `file:`. Every failing rule is reported,
    /// each with its index in `configs`.
    pub fn build(
        configs: &[RuleConfig],
        base_dir: &Path,
    ) -> Result<RuleSet, Vec<(usize, RuleError)>> {
        let engine = crate::engine::compile_engine();
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            if configs[..i].iter().any(|p| p.name == c.name) {
                errors.push((i, RuleError::Duplicate(c.name.clone())));
                continue;
            }
            match compile_one(&engine, c, base_dir) {
                Ok(r) => rules.push(r),
                Err(e) => errors.push((i, e)),
            }
        }
        if errors.is_empty() {
            Ok(RuleSet { rules })
        } else {
            Err(errors)
        }
    }
}

fn compile_one(
    engine: &rhai::Engine,
    c: &RuleConfig,
    base_dir: &Path,
) -> Result<CompiledRule, RuleError> {
    if c.name.is_empty()
        || !c
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        return Err(RuleError::BadName(c.name.clone()));
    }
    let (text, origin) = match (&c.script, &c.file) {
        (Some(s), None) => (s.clone(), "inline script".to_string()),
        (None, Some(f)) => {
            let path = if f.is_absolute() {
                f.clone()
            } else {
                base_dir.join(f)
            };
            let text = std::fs::read_to_string(&path).map_err(|e| RuleError::Read {
                rule: c.name.clone(),
                path: path.clone(),
                source: e,
            })?;
            (text, path.display().to_string())
        }
        _ => return Err(RuleError::ScriptSource(c.name.clone())),
    };
    let ast = crate::engine::compile(engine, &text).map_err(|e| {
        let pos = e.position();
        RuleError::Compile {
            rule: c.name.clone(),
            origin: origin.clone(),
            line: pos.line(),
            col: pos.position(),
            message: e.err_type().to_string(),
        }
    })?;
    let uses_timers = crate::engine::calls_function(&ast, "every");
    let uses_latest = crate::engine::calls_function(&ast, "latest");
    let m = &c.matches;
    let match_key = format!("{:?}/{:?}/{:?}", m.device, m.point, m.source);
    Ok(CompiledRule {
        text: Arc::from(text.as_str()),
        match_key,
        name: Arc::from(c.name.as_str()),
        device: Pattern::new(m.device.as_deref().unwrap_or("*")),
        point: Pattern::new(m.point.as_deref().unwrap_or("*")),
        source: m.source.as_deref().map(Pattern::new),
        ast: Arc::new(ast),
        uses_timers,
        uses_latest,
        origin,
    })
}

/// Parse and compile the `rules:` section found at `path` (normally `rules`), recording every
/// problem in `d` with its YAML path: `rules[2].file` for a missing file, `rules[2].script` /
/// `rules[2].file` with the script's own line and column for a compile error. `base_dir` is the
/// configuration file's directory. Returns the rule set only when nothing was wrong.
pub fn parse_section(
    value: serde_yaml::Value,
    path: &str,
    base_dir: &Path,
    d: &mut Diagnostics,
) -> Option<RuleSet> {
    let items = match value {
        serde_yaml::Value::Null => return Some(RuleSet::default()),
        serde_yaml::Value::Sequence(s) => s,
        _ => {
            d.error(path, "must be a list of rules (`- name: …`)");
            return None;
        }
    };
    let before = d.len();
    let mut configs = Vec::new();
    let mut at = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let p = format!("{path}[{i}]");
        if let Some(c) = d.parse::<RuleConfig>(item, &p) {
            configs.push(c);
            at.push(p);
        }
    }
    match RuleSet::build(&configs, base_dir) {
        Ok(set) if d.len() == before => Some(set),
        Ok(_) => None,
        Err(errors) => {
            for (i, e) in errors {
                let key = match &e {
                    RuleError::BadName(_) | RuleError::Duplicate(_) => "name",
                    RuleError::ScriptSource(_) => "",
                    RuleError::Read { .. } => "file",
                    RuleError::Compile { .. } if configs[i].file.is_some() => "file",
                    RuleError::Compile { .. } => "script",
                };
                let p = if key.is_empty() {
                    at[i].clone()
                } else {
                    format!("{}.{key}", at[i])
                };
                d.error(&p, e.to_string());
            }
            None
        }
    }
}

/// The `rules:` section re-read for a reload: every entry compiled on its own, so one that fails
/// can keep its previous version running while the others are replaced.
#[derive(Debug, Default)]
pub struct Reload {
    /// In configuration order: the rule's name and its compiled form or why not.
    pub rules: Vec<(String, Result<CompiledRule, String>)>,
}

/// Parse and compile `value` (the `rules:` section, `None` when absent) entry by entry; see
/// [`Reload`]. An entry without a usable name is reported under `rules[i]`.
pub fn reload_section(value: Option<serde_yaml::Value>, base_dir: &Path) -> Reload {
    let items = match value {
        None | Some(serde_yaml::Value::Null) => Vec::new(),
        Some(serde_yaml::Value::Sequence(s)) => s,
        Some(_) => {
            return Reload {
                rules: vec![(
                    "rules".into(),
                    Err("must be a list of rules (`- name: …`)".into()),
                )],
            }
        }
    };
    let engine = crate::engine::compile_engine();
    let mut out: Vec<(String, Result<CompiledRule, String>)> = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let name = item
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| format!("rules[{i}]"));
        let result = match serde_yaml::from_value::<RuleConfig>(item) {
            Err(e) => Err(format!("rules[{i}]: {e}")),
            Ok(_) if out.iter().any(|(n, _)| *n == name) => {
                Err(RuleError::Duplicate(name.clone()).to_string())
            }
            Ok(c) => compile_one(&engine, &c, base_dir).map_err(|e| e.to_string()),
        };
        out.push((name, result));
    }
    Reload { rules: out }
}
