//! Collected configuration errors: every one names the file, the YAML path and the line.
//!
//! Invariants: [`Diagnostics::parse`] reports every error of a section, not only serde's first
//! (see there); no message shows a value that came from `${VAR}` substitution.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;

use crate::de::Node;
use crate::index::{join, PathIndex};

/// Errors collected from one [`Diagnostics::parse`] call at most (a bound on its retries).
const MAX_ERRORS_PER_PARSE: usize = 64;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// YAML path, e.g. `sources[2].modbus.registers[4].type`; empty for the whole document.
    pub path: String,
    /// 1-based line in the file, when the path (or an ancestor) is in the text.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem found in one file, reported together.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: PathBuf,
    pub errors: Vec<Diagnostic>,
}

impl std::error::Error for ConfigErrors {}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        writeln!(
            f,
            "{}: {n} error{} in the configuration",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.errors {
            write!(f, "  {}", self.file.display())?;
            if let Some(l) = d.line {
                write!(f, ":{l}")?;
            }
            if d.path.is_empty() {
                writeln!(f, ": {}", d.message)?;
            } else {
                writeln!(f, ": {}: {}", d.path, d.message)?;
            }
        }
        Ok(())
    }
}

/// A value read by [`Diagnostics::parse_partial`].
#[derive(Debug)]
pub struct Partial<T> {
    pub value: T,
    /// Full YAML paths of the keys removed because they were in error (errors recorded).
    pub skipped: Vec<String>,
}

impl<T> Partial<T> {
    /// Whether the key at `path` (a full YAML path) was removed for an error.
    pub fn skipped(&self, path: &str) -> bool {
        self.skipped.iter().any(|s| s == path)
    }
}

/// Collects diagnostics while a configuration is parsed and validated. Adapter crates use it to
/// parse their own sections, so their errors carry paths and lines like everyone else's.
#[derive(Debug)]
pub struct Diagnostics {
    file: PathBuf,
    index: PathIndex,
    errors: Vec<Diagnostic>,
    /// YAML path of each value produced by `${VAR}` substitution → its variables (`${A}`).
    substituted: HashMap<String, String>,
}

impl Diagnostics {
    pub fn new(file: &Path, index: PathIndex) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            index,
            errors: Vec::new(),
            substituted: HashMap::new(),
        }
    }

    /// Note that the value at `path` came from substituting the variables `names`.
    pub(crate) fn mark_substituted(&mut self, path: &str, names: &[String]) {
        let vars = names
            .iter()
            .map(|n| format!("`${{{n}}}`"))
            .collect::<Vec<_>>()
            .join(", ");
        self.substituted.insert(path.to_string(), vars);
    }

    /// Whether the value at `path` came from `${VAR}` substitution.
    pub fn is_substituted(&self, path: &str) -> bool {
        self.substituted.contains_key(path)
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Record an error at `path`.
    pub fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            path: path.to_string(),
            line: self.index.line_of(path),
            message: message.into(),
        });
    }

    /// Record an error known only by its line (a YAML syntax error).
    pub fn error_at_line(&mut self, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            path: String::new(),
            line,
            message: message.into(),
        });
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// Deserialize `value` (found at `path`) into `T`, recording every error on failure.
    ///
    /// serde stops at the first error, so after each one the offending key is removed (for a
    /// missing field: the mapping that lacks it; for a bad list item: the item) and the value is
    /// read again, until it reads or the error is the section's own. Later errors keep their
    /// paths in the file's coordinates. A "missing field" caused by such a removal is not
    /// reported twice. Returns `Some` only when the value read without any error.
    ///
    /// Values that came from `${VAR}` are read as numbers or booleans where the field is one, as
    /// text everywhere else, and their errors never show them (see [`crate::de`]).
    pub fn parse<T: DeserializeOwned>(
        &mut self,
        value: serde_yaml::Value,
        path: &str,
    ) -> Option<T> {
        match self.parse_partial(value, path) {
            Some(p) if p.skipped.is_empty() => Some(p.value),
            _ => None,
        }
    }

    /// Like [`Diagnostics::parse`], but also returns the value read once the keys in error were
    /// removed (their defaults stand in), so that range checks can still run on the rest. Checks
    /// that involve a key listed in [`Partial::skipped`] should not run.
    pub fn parse_partial<T: DeserializeOwned>(
        &mut self,
        mut value: serde_yaml::Value,
        path: &str,
    ) -> Option<Partial<T>> {
        let mut skipped: Vec<String> = Vec::new();
        // Sequence items removed so far: the sequence's original path → original indices, so
        // that errors in later items keep their place in the file.
        let mut dropped: HashMap<String, Vec<usize>> = HashMap::new();
        for _ in 0..MAX_ERRORS_PER_PARSE {
            let node = Node::new(value.clone(), path, &self.substituted);
            let e = match serde_path_to_error::deserialize::<_, T>(node) {
                Ok(value) => return Some(Partial { value, skipped }),
                Err(e) => e,
            };
            let segments: Vec<Segment> = e.path().iter().cloned().collect();
            let (full, item) = original_path(path, &segments, &dropped);
            let mut message = e.into_inner().to_string();
            let missing = missing_field(&message).map(|field| join(&full, field));
            let consequence = missing.as_ref().is_some_and(|at| skipped.contains(at));
            if let Some(vars) = missing.and_then(|at| self.substituted.get(&at)) {
                message = format!("{message} ({vars} is empty, which counts as not given)");
            }
            // A missing field caused by an earlier removal is stepped over silently.
            if !consequence {
                self.error(&full, message);
            }
            if !remove(&mut value, &segments) {
                return None;
            }
            if let Some((seq, index)) = item {
                dropped.entry(seq).or_default().push(index);
            }
            skipped.push(full);
        }
        None
    }

    /// `Ok(())` when nothing was recorded, else every error at once.
    pub fn finish(mut self) -> Result<(), ConfigErrors> {
        self.errors.sort_by_key(|d| d.line.unwrap_or(usize::MAX));
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors {
                file: self.file,
                errors: self.errors,
            })
        }
    }
}

/// `field` of serde's "missing field `field`".
fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// The full YAML path of `segments` (relative to `base`, in the current value) in the file's
/// coordinates, given the sequence items `dropped` so far; and, when it names a sequence item,
/// that sequence's path and the item's original index.
fn original_path(
    base: &str,
    segments: &[Segment],
    dropped: &HashMap<String, Vec<usize>>,
) -> (String, Option<(String, usize)>) {
    let mut p = base.to_string();
    let mut item = None;
    for s in segments {
        item = None;
        match s {
            Segment::Seq { index } => {
                let mut i = *index;
                if let Some(gone) = dropped.get(&p) {
                    let mut gone = gone.clone();
                    gone.sort_unstable();
                    for g in gone {
                        if g <= i {
                            i += 1;
                        }
                    }
                }
                item = Some((p.clone(), i));
                p = format!("{p}[{i}]");
            }
            Segment::Map { key } => p = join(&p, key),
            Segment::Enum { variant } => p = join(&p, variant),
            Segment::Unknown => p = join(&p, "?"),
        }
    }
    (p, item)
}

/// Remove the mapping entry or sequence item at `segments` (relative to `root`); false when the
/// path is the root itself or is not there.
fn remove(root: &mut serde_yaml::Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut v = root;
    for s in parents {
        let next = match (s, v) {
            (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => m.get_mut(key.as_str()),
            (Segment::Seq { index }, serde_yaml::Value::Sequence(q)) => q.get_mut(*index),
            (Segment::Enum { variant }, serde_yaml::Value::Mapping(m)) => {
                m.get_mut(variant.as_str())
            }
            (Segment::Enum { .. }, serde_yaml::Value::Tagged(t)) => Some(&mut t.value),
            _ => None,
        };
        match next {
            Some(n) => v = n,
            None => return false,
        }
    }
    match (last, v) {
        (Segment::Map { key }, serde_yaml::Value::Mapping(m)) => m.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, serde_yaml::Value::Sequence(q)) if *index < q.len() => {
            q.remove(*index);
            true
        }
        _ => false,
    }
}
