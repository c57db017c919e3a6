//! `${VAR}` substitution in string values, and secrets.
//!
//! Every string scalar may contain `${NAME}` (the environment variable, an error if unset),
//! `${NAME:-default}` (the default when unset or empty) and `$$` (a literal `$`). Substitution
//! happens on parsed values, never on the raw text, so a variable's content cannot change the
//! structure of the document and line numbers stay true.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::diag::Diagnostics;
use crate::index::join;

/// Substitute in every string of `v`, recording unset variables at their path.
pub fn substitute(
    v: &mut serde_yaml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    diags: &mut Diagnostics,
) {
    match v {
        serde_yaml::Value::String(s) if s.contains('$') => {
            match expand(s, lookup) {
                // `port: ${PORT}` must still be a number: a substituted value that reads as a
                // YAML number or boolean becomes one.
                Ok(n) if n != *s => {
                    *v = match serde_yaml::from_str::<serde_yaml::Value>(&n) {
                        Ok(x @ (serde_yaml::Value::Number(_) | serde_yaml::Value::Bool(_))) => x,
                        _ => serde_yaml::Value::String(n),
                    }
                }
                Ok(_) => {}
                Err(e) => diags.error(path, e),
            }
        }
        serde_yaml::Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), lookup, diags);
            }
        }
        serde_yaml::Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_string();
                substitute(item, &join(path, &key), lookup, diags);
            }
        }
        serde_yaml::Value::Tagged(t) => substitute(&mut t.value, path, lookup, diags),
        _ => {}
    }
}

/// Expand one string.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(r) = after.strip_prefix('$') {
            out.push('$');
            rest = r;
        } else if let Some(r) = after.strip_prefix('{') {
            let end = r
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {s:?}"))?;
            let expr = &r[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{expr}}}` is not a valid variable reference"));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (use `${{{name}:-default}}` for a default)"
                    ))
                }
            }
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is handed to the protocol.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

/// Resolve a secret given inline (`password:`) or by file (`password_file:`): exactly one or none.
/// A file's content is used with trailing newlines removed. Errors name the YAML path and the file,
/// never the secret.
pub fn resolve_secret(
    inline: &Option<Secret>,
    file: &Option<std::path::PathBuf>,
    path: &str,
    key: &str,
    diags: &mut Diagnostics,
) -> Option<Secret> {
    match (inline, file) {
        (Some(_), Some(_)) => {
            diags.error(
                &join(path, &format!("{key}_file")),
                format!("give either `{key}` or `{key}_file`, not both"),
            );
            None
        }
        (Some(s), None) => Some(s.clone()),
        (None, Some(f)) => match read_secret_file(f) {
            Ok(s) => Some(s),
            Err(e) => {
                diags.error(&join(path, &format!("{key}_file")), e);
                None
            }
        },
        (None, None) => None,
    }
}

fn read_secret_file(f: &Path) -> Result<Secret, String> {
    std::fs::read_to_string(f)
        .map(|s| Secret(s.trim_end_matches(['\r', '\n']).to_string()))
        .map_err(|e| format!("cannot read secret file {}: {e}", f.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("broker.local".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(
            expand("mqtt://${HOST}:1883", &env).unwrap(),
            "mqtt://broker.local:1883"
        );
        assert_eq!(expand("${NOPE:-x}${EMPTY:-y}", &env).unwrap(), "xy");
        assert_eq!(expand("cost $$5 and $x", &env).unwrap(), "cost $5 and $x");
        assert!(expand("${NOPE}", &env)
            .unwrap_err()
            .contains("`NOPE` is not set"));
        assert!(expand("${HOST", &env).unwrap_err().contains("unterminated"));
        assert!(expand("${a b}", &env).is_err());
    }

    #[test]
    fn substituted_numbers_become_numbers() {
        let mut v: serde_yaml::Value =
            serde_yaml::from_str("{port: '${P:-1883}', id: '${P:-x}y'}").unwrap();
        let mut d = Diagnostics::new(Path::new("f"), Default::default());
        substitute(&mut v, "", &env, &mut d);
        assert!(d.is_empty());
        assert_eq!(v["port"], serde_yaml::Value::from(1883));
        assert_eq!(v["id"], serde_yaml::Value::from("xy"));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
