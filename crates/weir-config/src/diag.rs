//! Collected configuration errors: every one names the file, the YAML path and the line.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::index::{join, PathIndex};

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

/// Collects diagnostics while a configuration is parsed and validated. Adapter crates use it to
/// parse their own sections, so their errors carry paths and lines like everyone else's.
#[derive(Debug)]
pub struct Diagnostics {
    file: PathBuf,
    index: PathIndex,
    errors: Vec<Diagnostic>,
}

impl Diagnostics {
    pub fn new(file: &Path, index: PathIndex) -> Self {
        Diagnostics {
            file: file.to_path_buf(),
            index,
            errors: Vec::new(),
        }
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

    /// Deserialize `value` (found at `path`) into `T`, recording an error on failure.
    pub fn parse<T: DeserializeOwned>(
        &mut self,
        value: serde_yaml::Value,
        path: &str,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let inner = e.path().to_string();
                let full = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else {
                    join(path, &inner)
                };
                self.error(&full, e.into_inner().to_string());
                None
            }
        }
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
