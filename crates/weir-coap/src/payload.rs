//! Request bodies → point values.
//!
//! Accepted bodies (the Content-Format option decides; without one the first byte does):
//!
//! | Content-Format (RFC 7252 §12.3, RFC 8428 §12.3) | body | points |
//! |---|---|---|
//! | 0 `text/plain` | `21.5`, `-3`, `true`, `open` | one: the last URI segment |
//! | 50 `application/json`, scalar | `21.5`, `true`, `"open"` | one: the last URI segment |
//! | 50 `application/json`, object | `{"temperature":21.5,"door":false}` | one per member |
//! | 60 `application/cbor` | a CBOR map (as the JSON object) or array (SenML CBOR) | |
//! | 110 `application/senml+json` | a SenML pack (RFC 8428 §4) | one per record |
//! | 112 `application/senml+cbor` | a SenML pack with integer labels (RFC 8428 §6) | one per record |
//!
//! Scalars are typed as written: integers become `I64`, other numbers `F64`, `true`/`false` `Bool`,
//! anything else a string. A member whose value is null, an array or an object is an error: the
//! request is answered 4.00 and nothing of it reaches the bus (a request is taken whole or not at
//! all).
//!
//! SenML resolution (RFC 8428 §4.6): base fields (`bn`, `bt`, `bu`, `bv`, `bs`) apply to every later
//! record of the pack until a record sets them again; the name is `bn + n` (§4.5.1: it must start
//! with a letter or digit and hold only `A-Z a-z 0-9 - : . / _`, else the pack is refused; which
//! device and point a resolved name gives is the server's business, see
//! [`crate::server::locate`]), the value `bv + v` (or
//! `vs`, `vb`, `vd`, or `bs + s` when the record has no other value); the time is `bt + t` seconds,
//! absolute when at least 2^28, else relative to the time the request was received (§4.5.3). A label
//! ending in `_` must be understood (§4.4): an unknown one is an error.

use std::sync::Arc;

use weir_core::{Timestamp, Value};

/// CoAP Content-Format numbers (RFC 7252 §12.3; RFC 8428 §12.3 for SenML).
pub mod cf {
    pub const TEXT_PLAIN: u16 = 0;
    pub const LINK_FORMAT: u16 = 40;
    pub const JSON: u16 = 50;
    pub const CBOR: u16 = 60;
    pub const SENML_JSON: u16 = 110;
    pub const SENML_CBOR: u16 = 112;
}

/// RFC 8428 §4.5.3: times below 2^28 seconds are relative to now.
const SENML_RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;

/// One value decoded from a body. `name` is the point for a body posted to `/<device>`, or the
/// SenML resolved name; `None` for a scalar (the point is the last URI segment).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub name: Option<String>,
    pub value: Value,
    pub unit: Option<Arc<str>>,
    pub ts: Option<Timestamp>,
}

/// Why a body was refused; the text becomes the 4.00 diagnostic payload.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PayloadError {
    #[error("unsupported content format {0}")]
    UnsupportedFormat(u16),
    #[error("empty payload")]
    Empty,
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("invalid CBOR: {0}")]
    Cbor(String),
    #[error("payload is not UTF-8 text")]
    NotUtf8,
    #[error("`{0}`: value must be a number, boolean or string")]
    BadValue(String),
    #[error("SenML record {index}: {message}")]
    Senml { index: usize, message: String },
    #[error("SenML record {index}: resolved name `{name}` must start with a letter or digit and hold only A-Z a-z 0-9 - : . / _ (RFC 8428 §4.5.1)")]
    SenmlName { index: usize, name: String },
    #[error("SenML pack must be an array of records")]
    NotAPack,
}

impl PayloadError {
    /// Unsupported formats answer 4.15 rather than 4.00 (RFC 7252 §5.9.2.9).
    pub fn is_unsupported_format(&self) -> bool {
        matches!(self, PayloadError::UnsupportedFormat(_))
    }

    /// A name that breaks RFC 8428 §4.5.1 (counted with the names that map to no point).
    pub fn is_bad_name(&self) -> bool {
        matches!(self, PayloadError::SenmlName { .. })
    }
}

/// Decode `body` with Content-Format `format` (if given), received at `now`.
pub fn decode(
    format: Option<u16>,
    body: &[u8],
    now: Timestamp,
) -> Result<Vec<Entry>, PayloadError> {
    if body.is_empty() {
        return Err(PayloadError::Empty);
    }
    let format = format.unwrap_or_else(|| sniff(body));
    match format {
        cf::TEXT_PLAIN => {
            let s = std::str::from_utf8(body).map_err(|_| PayloadError::NotUtf8)?;
            Ok(vec![scalar_entry(text_value(s.trim()))])
        }
        cf::JSON => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
            match v {
                serde_json::Value::Object(m) => m
                    .into_iter()
                    .map(|(k, v)| {
                        Ok(Entry {
                            value: json_scalar(&v)
                                .ok_or_else(|| PayloadError::BadValue(k.clone()))?,
                            name: Some(k),
                            unit: None,
                            ts: None,
                        })
                    })
                    .collect(),
                serde_json::Value::Array(_) => senml_json(v, now),
                other => Ok(vec![scalar_entry(
                    json_scalar(&other).ok_or_else(|| PayloadError::BadValue("payload".into()))?,
                )]),
            }
        }
        cf::SENML_JSON => {
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| PayloadError::Json(e.to_string()))?;
            senml_json(v, now)
        }
        cf::CBOR | cf::SENML_CBOR => {
            let v: ciborium::Value =
                ciborium::from_reader(body).map_err(|e| PayloadError::Cbor(e.to_string()))?;
            match v {
                ciborium::Value::Array(records) => senml_cbor(records, now),
                ciborium::Value::Map(m) if format == cf::CBOR => m
                    .into_iter()
                    .map(|(k, v)| {
                        let k = k
                            .as_text()
                            .ok_or_else(|| PayloadError::Cbor("map keys must be text".into()))?
                            .to_string();
                        Ok(Entry {
                            value: cbor_scalar(&v)
                                .ok_or_else(|| PayloadError::BadValue(k.clone()))?,
                            name: Some(k),
                            unit: None,
                            ts: None,
                        })
                    })
                    .collect(),
                ciborium::Value::Map(_) => Err(PayloadError::NotAPack),
                other if format == cf::CBOR => Ok(vec![scalar_entry(
                    cbor_scalar(&other).ok_or_else(|| PayloadError::BadValue("payload".into()))?,
                )]),
                _ => Err(PayloadError::NotAPack),
            }
        }
        other => Err(PayloadError::UnsupportedFormat(other)),
    }
}

fn sniff(body: &[u8]) -> u16 {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => cf::SENML_JSON,
        Some(b'{') => cf::JSON,
        _ => cf::TEXT_PLAIN,
    }
}

fn scalar_entry(value: Value) -> Entry {
    Entry {
        name: None,
        value,
        unit: None,
        ts: None,
    }
}

/// A text/plain value: integer, number, boolean, else the string itself.
pub fn text_value(s: &str) -> Value {
    if let Ok(i) = s.parse::<i64>() {
        return Value::I64(i);
    }
    if let Ok(f) = s.parse::<f64>() {
        if f.is_finite() {
            return Value::F64(f);
        }
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::Str(Arc::from(s)),
    }
}

fn json_scalar(v: &serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        serde_json::Value::Number(n) => n
            .as_i64()
            .map(Value::I64)
            .or_else(|| n.as_f64().map(Value::F64)),
        serde_json::Value::String(s) => Some(Value::Str(Arc::from(s.as_str()))),
        _ => None,
    }
}

fn cbor_scalar(v: &ciborium::Value) -> Option<Value> {
    match v {
        ciborium::Value::Bool(b) => Some(Value::Bool(*b)),
        ciborium::Value::Integer(i) => i64::try_from(i128::from(*i)).ok().map(Value::I64),
        ciborium::Value::Float(f) if f.is_finite() => Some(Value::F64(*f)),
        ciborium::Value::Text(s) => Some(Value::Str(Arc::from(s.as_str()))),
        _ => None,
    }
}

/// One SenML record's fields, whatever the encoding.
#[derive(Default, Debug)]
struct Record {
    bn: Option<String>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    bs: Option<f64>,
    n: Option<String>,
    u: Option<String>,
    v: Option<f64>,
    vs: Option<String>,
    vb: Option<bool>,
    vd: Option<String>,
    s: Option<f64>,
    t: Option<f64>,
}

/// Base fields carried from record to record (RFC 8428 §4.6).
#[derive(Default)]
struct Base {
    bn: String,
    bt: f64,
    bu: Option<String>,
    bv: f64,
    bs: f64,
}

fn resolve(records: Vec<Record>, now: Timestamp) -> Result<Vec<Entry>, PayloadError> {
    let mut base = Base::default();
    let mut out = Vec::with_capacity(records.len());
    for (index, r) in records.into_iter().enumerate() {
        let err = |message: String| PayloadError::Senml { index, message };
        if let Some(bn) = r.bn {
            base.bn = bn;
        }
        if let Some(bt) = r.bt {
            base.bt = bt;
        }
        if let Some(bu) = r.bu {
            base.bu = Some(bu);
        }
        if let Some(bv) = r.bv {
            base.bv = bv;
        }
        if let Some(bs) = r.bs {
            base.bs = bs;
        }
        let has_value =
            r.v.is_some() || r.vs.is_some() || r.vb.is_some() || r.vd.is_some() || r.s.is_some();
        if !has_value {
            if r.n.is_some() || r.t.is_some() || r.u.is_some() {
                return Err(err("has no value (v, vs, vb, vd or s)".into()));
            }
            continue; // a record that only sets base fields
        }
        let name = format!("{}{}", base.bn, r.n.unwrap_or_default());
        if name.is_empty() {
            return Err(err("resolved name is empty (neither bn nor n)".into()));
        }
        if !senml_name_ok(&name) {
            return Err(PayloadError::SenmlName { index, name });
        }
        let value = if let Some(v) = r.v {
            Value::F64(base.bv + v)
        } else if let Some(s) = r.vs {
            Value::Str(Arc::from(s))
        } else if let Some(b) = r.vb {
            Value::Bool(b)
        } else if let Some(d) = r.vd {
            Value::Str(Arc::from(d))
        } else {
            Value::F64(base.bs + r.s.unwrap_or(0.0))
        };
        if let Value::F64(f) = value {
            if !f.is_finite() {
                return Err(err("value is not a finite number".into()));
            }
        }
        let t = base.bt + r.t.unwrap_or(0.0);
        let ts = if !t.is_finite() {
            return Err(err("time is not a finite number".into()));
        } else if t == 0.0 {
            now
        } else if t.abs() >= SENML_RELATIVE_TIME_LIMIT {
            Timestamp((t * 1e9) as i64)
        } else {
            Timestamp(now.as_nanos().saturating_add((t * 1e9) as i64))
        };
        out.push(Entry {
            name: Some(name),
            value,
            unit: r.u.or_else(|| base.bu.clone()).map(Arc::from),
            ts: Some(ts),
        });
    }
    if out.is_empty() {
        return Err(PayloadError::Senml {
            index: 0,
            message: "the pack has no record with a value".into(),
        });
    }
    Ok(out)
}

/// RFC 8428 §4.5.1: a resolved name starts with a letter or digit and holds only
/// `A-Z a-z 0-9 - : . / _`.
fn senml_name_ok(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '/' | '_'))
}

fn senml_json(v: serde_json::Value, now: Timestamp) -> Result<Vec<Entry>, PayloadError> {
    let serde_json::Value::Array(items) = v else {
        return Err(PayloadError::NotAPack);
    };
    let mut records = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let err = |message: String| PayloadError::Senml { index, message };
        let serde_json::Value::Object(m) = item else {
            return Err(err("is not an object".into()));
        };
        let mut r = Record::default();
        for (k, v) in m {
            let num = |v: &serde_json::Value| {
                v.as_f64()
                    .ok_or_else(|| err(format!("`{k}` must be a number")))
            };
            let text = |v: &serde_json::Value| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("`{k}` must be a string")))
            };
            match k.as_str() {
                "bn" => r.bn = Some(text(&v)?),
                "bt" => r.bt = Some(num(&v)?),
                "bu" => r.bu = Some(text(&v)?),
                "bv" => r.bv = Some(num(&v)?),
                "bs" => r.bs = Some(num(&v)?),
                "bver" => {
                    num(&v)?;
                }
                "n" => r.n = Some(text(&v)?),
                "u" => r.u = Some(text(&v)?),
                "v" => r.v = Some(num(&v)?),
                "vs" => r.vs = Some(text(&v)?),
                "vb" => {
                    r.vb = Some(
                        v.as_bool()
                            .ok_or_else(|| err("`vb` must be a boolean".into()))?,
                    )
                }
                "vd" => r.vd = Some(text(&v)?),
                "s" => r.s = Some(num(&v)?),
                "t" => r.t = Some(num(&v)?),
                "ut" => {
                    num(&v)?;
                }
                other if other.ends_with('_') => {
                    return Err(err(format!("unknown must-understand label `{other}`")))
                }
                _ => {}
            }
        }
        records.push(r);
    }
    resolve(records, now)
}

/// SenML CBOR labels (RFC 8428 §6, Table 4).
fn cbor_label(k: &ciborium::Value) -> Option<&'static str> {
    if let Some(s) = k.as_text() {
        return Some(match s {
            "bn" => "bn",
            "bt" => "bt",
            "bu" => "bu",
            "bv" => "bv",
            "bs" => "bs",
            "bver" => "bver",
            "n" => "n",
            "u" => "u",
            "v" => "v",
            "vs" => "vs",
            "vb" => "vb",
            "vd" => "vd",
            "s" => "s",
            "t" => "t",
            "ut" => "ut",
            s if s.ends_with('_') => "must_understand",
            _ => "other",
        });
    }
    let i = i128::from(k.as_integer()?);
    Some(match i {
        -1 => "bver",
        -2 => "bn",
        -3 => "bt",
        -4 => "bu",
        -5 => "bv",
        -6 => "bs",
        0 => "n",
        1 => "u",
        2 => "v",
        3 => "vs",
        4 => "vb",
        5 => "s",
        6 => "t",
        7 => "ut",
        8 => "vd",
        _ => "other",
    })
}

fn senml_cbor(items: Vec<ciborium::Value>, now: Timestamp) -> Result<Vec<Entry>, PayloadError> {
    let mut records = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let err = |message: String| PayloadError::Senml { index, message };
        let ciborium::Value::Map(m) = item else {
            return Err(err("is not a map".into()));
        };
        let mut r = Record::default();
        for (k, v) in m {
            let label = cbor_label(&k).ok_or_else(|| err(format!("bad label {k:?}")))?;
            let num = |v: &ciborium::Value| match v {
                ciborium::Value::Float(f) => Ok(*f),
                ciborium::Value::Integer(i) => Ok(i128::from(*i) as f64),
                _ => Err(err(format!("`{label}` must be a number"))),
            };
            let text = |v: ciborium::Value| match v {
                ciborium::Value::Text(s) => Ok(s),
                _ => Err(err(format!("`{label}` must be a text string"))),
            };
            match label {
                "bn" => r.bn = Some(text(v)?),
                "bt" => r.bt = Some(num(&v)?),
                "bu" => r.bu = Some(text(v)?),
                "bv" => r.bv = Some(num(&v)?),
                "bs" => r.bs = Some(num(&v)?),
                "n" => r.n = Some(text(v)?),
                "u" => r.u = Some(text(v)?),
                "v" => r.v = Some(num(&v)?),
                "vs" => r.vs = Some(text(v)?),
                "vb" => {
                    r.vb = Some(
                        v.as_bool()
                            .ok_or_else(|| err("`vb` must be a boolean".into()))?,
                    )
                }
                // RFC 8428 §6: in CBOR the data value is a byte string; keep it as hex text.
                "vd" => {
                    let bytes = v
                        .as_bytes()
                        .ok_or_else(|| err("`vd` must be a byte string".into()))?;
                    r.vd = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
                }
                "s" => r.s = Some(num(&v)?),
                "t" => r.t = Some(num(&v)?),
                "bver" | "ut" => {
                    num(&v)?;
                }
                "must_understand" => {
                    return Err(err(format!("unknown must-understand label {k:?}")))
                }
                _ => {}
            }
        }
        records.push(r);
    }
    resolve(records, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp(1_800_000_000_000_000_000);

    #[test]
    fn scalars_are_typed_as_written() {
        let d = |b: &str| decode(None, b.as_bytes(), NOW).unwrap()[0].value.clone();
        assert_eq!(d("21.5"), Value::F64(21.5));
        assert_eq!(d("-3"), Value::I64(-3));
        assert_eq!(d("true"), Value::Bool(true));
        assert_eq!(d("open"), Value::Str(Arc::from("open")));
        let j = decode(Some(cf::JSON), b"\"closed\"", NOW).unwrap();
        assert_eq!(j[0].value, Value::Str(Arc::from("closed")));
        assert_eq!(j[0].name, None);
    }

    #[test]
    fn json_object_gives_one_entry_per_member_and_rejects_nested() {
        let e = decode(Some(cf::JSON), br#"{"temp":21.5,"n":3,"on":true}"#, NOW).unwrap();
        assert_eq!(e.len(), 3);
        assert!(e
            .iter()
            .any(|x| x.name.as_deref() == Some("n") && x.value == Value::I64(3)));
        assert_eq!(
            decode(None, br#"{"a":{"b":1}}"#, NOW).unwrap_err(),
            PayloadError::BadValue("a".into())
        );
        assert!(matches!(
            decode(None, br#"{"a":"#, NOW),
            Err(PayloadError::Json(_))
        ));
    }

    /// The example of RFC 8428 §5.1.2 (multiple data points, base name and time).
    #[test]
    fn senml_json_resolves_base_fields_per_rfc8428() {
        let pack = br#"[
          {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e+09,"bu":"%RH","v":20},
          {"u":"lon","v":24.30621},
          {"u":"lat","v":60.07965},
          {"t":60,"v":20.3},
          {"u":"lon","t":60,"v":24.30622},
          {"n":"x","vb":true,"t":120},
          {"n":"y","vs":"hello"}
        ]"#;
        let e = decode(Some(cf::SENML_JSON), pack, NOW).unwrap();
        assert_eq!(e.len(), 7);
        assert_eq!(e[0].name.as_deref(), Some("urn:dev:ow:10e2073a01080063:"));
        assert_eq!(e[0].unit.as_deref(), Some("%RH"));
        assert_eq!(e[0].ts, Some(Timestamp(1_320_067_464_000_000_000)));
        assert_eq!(e[1].unit.as_deref(), Some("lon"));
        assert_eq!(e[3].ts, Some(Timestamp(1_320_067_524_000_000_000)));
        assert_eq!(e[3].value, Value::F64(20.3));
        assert_eq!(e[5].name.as_deref(), Some("urn:dev:ow:10e2073a01080063:x"));
        assert_eq!(e[5].value, Value::Bool(true));
        assert_eq!(e[6].value, Value::Str(Arc::from("hello")));
    }

    #[test]
    fn senml_relative_time_and_base_value() {
        let e = decode(
            Some(cf::SENML_JSON),
            br#"[{"bn":"d/","bv":100,"n":"a","v":1.5,"t":-10}]"#,
            NOW,
        )
        .unwrap();
        assert_eq!(e[0].value, Value::F64(101.5));
        assert_eq!(e[0].ts, Some(Timestamp(NOW.0 - 10_000_000_000)));
    }

    #[test]
    fn senml_errors_name_the_record() {
        let e = decode(Some(cf::SENML_JSON), br#"[{"n":"a","v":1},{"n":"b"}]"#, NOW);
        assert_eq!(
            e.unwrap_err().to_string(),
            "SenML record 1: has no value (v, vs, vb, vd or s)"
        );
        let e = decode(Some(cf::SENML_JSON), br#"[{"n":"a","v":"x"}]"#, NOW);
        assert!(e.unwrap_err().to_string().contains("`v` must be a number"));
        let e = decode(Some(cf::SENML_JSON), br#"[{"n":"a","v":1,"foo_":1}]"#, NOW);
        assert!(e.unwrap_err().to_string().contains("must-understand"));
        assert_eq!(
            decode(Some(cf::SENML_JSON), b"{}", NOW).unwrap_err(),
            PayloadError::NotAPack
        );
    }

    /// RFC 8428 §4.5.1: the name is `bn + n` and must use the allowed characters.
    #[test]
    fn senml_names_are_bn_plus_n_and_checked() {
        let e = decode(
            Some(cf::SENML_JSON),
            br#"[{"bn":"aio/dev2/","n":"pressure","v":1},{"n":"temp","v":2},{"bn":"x:","n":"y","v":3}]"#,
            NOW,
        )
        .unwrap();
        let names: Vec<_> = e.iter().map(|x| x.name.as_deref().unwrap()).collect();
        assert_eq!(names, ["aio/dev2/pressure", "aio/dev2/temp", "x:y"]);
        for bad in [
            r#"[{"n":"temp erature","v":1}]"#,
            r#"[{"n":"/temp","v":1}]"#,
            r#"[{"bn":"_d/","n":"t","v":1}]"#,
            r#"[{"n":"t#","v":1}]"#,
        ] {
            let err = decode(Some(cf::SENML_JSON), bad.as_bytes(), NOW).unwrap_err();
            assert!(err.is_bad_name(), "{bad}: {err}");
            assert!(err.to_string().contains("RFC 8428 §4.5.1"), "{err}");
        }
    }

    #[test]
    fn senml_cbor_uses_integer_labels() {
        use ciborium::Value as C;
        let pack = C::Array(vec![
            C::Map(vec![
                (C::Integer((-2).into()), C::Text("dev/".into())),
                (C::Integer(0.into()), C::Text("temp".into())),
                (C::Integer(1.into()), C::Text("Cel".into())),
                (C::Integer(2.into()), C::Float(23.5)),
            ]),
            C::Map(vec![
                (C::Integer(0.into()), C::Text("door".into())),
                (C::Integer(4.into()), C::Bool(false)),
            ]),
            C::Map(vec![
                (C::Integer(0.into()), C::Text("blob".into())),
                (C::Integer(8.into()), C::Bytes(vec![0xde, 0xad])),
            ]),
        ]);
        let mut buf = Vec::new();
        ciborium::into_writer(&pack, &mut buf).unwrap();
        let e = decode(Some(cf::SENML_CBOR), &buf, NOW).unwrap();
        assert_eq!(e[0].name.as_deref(), Some("dev/temp"));
        assert_eq!(e[0].unit.as_deref(), Some("Cel"));
        assert_eq!(e[0].value, Value::F64(23.5));
        assert_eq!(e[1].value, Value::Bool(false));
        assert_eq!(e[2].value, Value::Str(Arc::from("dead")));
        assert!(matches!(
            decode(Some(cf::SENML_CBOR), &[0xff, 0x00], NOW),
            Err(PayloadError::Cbor(_))
        ));
    }

    #[test]
    fn unsupported_format_is_reported_as_such() {
        let e = decode(Some(cf::LINK_FORMAT), b"</x>", NOW).unwrap_err();
        assert!(e.is_unsupported_format());
        assert_eq!(decode(None, b"", NOW).unwrap_err(), PayloadError::Empty);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Arbitrary bytes under every content format: an error or entries, never a panic.
    #[test]
    fn random_bodies_never_panic() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let formats = [
            None,
            Some(cf::TEXT_PLAIN),
            Some(cf::JSON),
            Some(cf::CBOR),
            Some(cf::SENML_JSON),
            Some(cf::SENML_CBOR),
        ];
        for i in 0..20_000usize {
            let len = i % 64;
            let mut body = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                body.push(x as u8);
            }
            // Make CBOR/JSON structure starts common so the decoders go deep.
            if let Some(b) = body.first_mut() {
                *b = [0x82, 0xa1, b'[', b'{', *b][i % 5];
            }
            let _ = decode(formats[i % formats.len()], &body, Timestamp(0));
        }
    }
}
