//! `${VAR}` substitution in string values, and secrets.
//!
//! Every string scalar may contain `${NAME}` (the environment variable, an error if unset),
//! `${NAME:-default}` (the default when unset or empty) and `$$` (a literal `$`). Substitution
//! happens on parsed values, never on the raw text, so a variable's content cannot change the
//! structure of the document and line numbers stay true.
//!
//! Invariants:
//! * substituted text stays a string in the parsed tree (`password: ${PW}` with `PW=0042` is the
//!   text `0042`, never the number 42). Typed parsing ([`crate::Diagnostics::parse`]) reads it as
//!   a number or boolean only where the target field is one (`port: ${PORT:-1883}`);
//! * a mapping value that substitutes to the empty string counts as not given: an optional key
//!   falls back to its default (`port: ${WEIR_MQTT_PORT:-}`);
//! * no error message shows a substituted value or the text around a reference: errors name the
//!   variables and the YAML path only, since any of them may be a secret.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Deserializer};

use crate::diag::Diagnostics;
use crate::index::join;

/// Substitute in every string of `v`, recording unset variables at their path and every
/// substituted value's path (see [`Diagnostics::parse`]).
pub fn substitute(
    v: &mut serde_yaml::Value,
    path: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    diags: &mut Diagnostics,
) {
    match v {
        serde_yaml::Value::String(s) if s.contains('$') => match expand_refs(s, lookup) {
            Ok((n, refs)) => {
                if !refs.is_empty() {
                    diags.mark_substituted(path, &refs);
                }
                *s = n;
            }
            Err(e) => diags.error(path, e),
        },
        serde_yaml::Value::Sequence(seq) => {
            for (i, item) in seq.iter_mut().enumerate() {
                substitute(item, &format!("{path}[{i}]"), lookup, diags);
            }
        }
        serde_yaml::Value::Mapping(m) => {
            let mut emptied = Vec::new();
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_string();
                let at = join(path, &key);
                let templated = matches!(item, serde_yaml::Value::String(s) if s.contains('$'));
                substitute(item, &at, lookup, diags);
                if templated && item.as_str() == Some("") && diags.is_substituted(&at) {
                    emptied.push(k.clone());
                }
            }
            for k in emptied {
                m.remove(&k);
            }
        }
        serde_yaml::Value::Tagged(t) => substitute(&mut t.value, path, lookup, diags),
        _ => {}
    }
}

/// Expand one string.
pub fn expand(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    expand_refs(s, lookup).map(|(out, _)| out)
}

/// Expand one string; also return the names of the variables referenced (empty when `s` only
/// had `$$` escapes). Errors never quote `s`, which may hold a secret.
fn expand_refs(
    s: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<String>), String> {
    let mut out = String::with_capacity(s.len());
    let mut refs = Vec::new();
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
                .ok_or("unterminated `${` (write `$$` for a literal `$`)")?;
            let expr = &r[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(
                    "a `${…}` reference needs a variable name of letters, digits and `_` \
                            (write `$$` for a literal `$`)"
                        .into(),
                );
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
            refs.push(name.to_string());
            rest = &r[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok((out, refs))
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

/// Accepts a string only; anything else is refused with a message that does not show it (a
/// password written unquoted as `123456` is a YAML number, and serde's own message would print it).
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret(v.to_string()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
                Ok(Secret(v))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_text())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_text())
            }
        }
        fn not_text<E: serde::de::Error>() -> E {
            E::custom(
                "a secret must be a string: quote it (unquoted, YAML reads it as a number or \
                 boolean); the value is not shown",
            )
        }
        d.deserialize_any(V)
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
    fn substituted_text_stays_text_and_is_marked() {
        let mut v: serde_yaml::Value = serde_yaml::from_str(
            "{port: '${P:-1883}', id: '${P:-x}y', cost: '$$5', gone: '${P:-}', list: ['${P:-}']}",
        )
        .unwrap();
        let mut d = Diagnostics::new(Path::new("f"), Default::default());
        substitute(&mut v, "", &env, &mut d);
        assert!(d.is_empty());
        assert_eq!(v["port"], serde_yaml::Value::from("1883"));
        assert_eq!(v["id"], serde_yaml::Value::from("xy"));
        assert_eq!(v["cost"], serde_yaml::Value::from("$5"));
        // an empty mapping value counts as not given; a sequence item keeps its place
        assert!(v.get("gone").is_none(), "{v:?}");
        assert_eq!(v["list"][0], serde_yaml::Value::from(""));
        assert!(d.is_substituted("port") && d.is_substituted("id"));
        assert!(d.is_substituted("list[0]"));
        assert!(!d.is_substituted("cost"));
    }

    #[test]
    fn expansion_errors_do_not_quote_the_text() {
        for bad in ["hunter2${x", "hunter2${a b}"] {
            let e = expand(bad, &env).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "Secret(***) ***");
        assert_eq!(s.expose(), "hunter2");
    }
}
