//! Typed reading of a parsed section that knows which values came from `${VAR}` substitution.
//!
//! [`Node`] is a serde `Deserializer` over a `serde_yaml::Value` that tracks the YAML path of
//! every node it hands out. Where a node's value was substituted (its path is in the map given by
//! [`crate::Diagnostics`]):
//! * a number or boolean field reads the substituted text as a YAML plain scalar (`port:
//!   ${PORT:-1883}` is the number 1883), every other field gets the text unchanged (`password:
//!   ${PW}` with `PW=0042` is `"0042"`);
//! * any error names the variables and what was expected, never the value, since it may be a
//!   secret.
//!
//! Values that were not substituted behave exactly as with `serde_yaml::Value` itself.

use std::collections::HashMap;

use serde::de::{self, DeserializeSeed, Deserializer, Expected, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

use crate::index::join;

type Error = serde_yaml::Error;

/// One node of a section being deserialised, with its YAML path.
pub(crate) struct Node<'a> {
    value: Value,
    path: String,
    /// Path of a substituted value → the variables it referenced (`${A}, ${B}`).
    subst: &'a HashMap<String, String>,
}

impl<'a> Node<'a> {
    pub(crate) fn new(value: Value, path: &str, subst: &'a HashMap<String, String>) -> Self {
        Node {
            value,
            path: path.to_string(),
            subst,
        }
    }

    fn vars(&self) -> Option<&'a str> {
        self.subst.get(&self.path).map(String::as_str)
    }

    /// Hand the value to `f` (serde_yaml's own deserializer), retyped first when `retype` and the
    /// value was substituted; the error of a substituted value is replaced by one without it.
    fn delegate<'de, V, F>(self, visitor: V, retype: bool, f: F) -> Result<V::Value, Error>
    where
        V: Visitor<'de>,
        F: FnOnce(Value, V) -> Result<V::Value, Error>,
    {
        match self.vars() {
            None => f(self.value, visitor),
            Some(vars) => {
                let expected = format!("{}", &visitor as &dyn Expected);
                let value = if retype {
                    retyped(self.value)
                } else {
                    self.value
                };
                f(value, visitor).map_err(|_| hidden(vars, &expected))
            }
        }
    }
}

/// The error for a substituted value that does not fit: the variables and what was expected.
fn hidden(vars: &str, expected: &str) -> Error {
    de::Error::custom(format!(
        "the value of {vars} does not fit here, expected {expected} (substituted values are not shown)"
    ))
}

/// Substituted text read where a number or boolean is expected: the YAML plain scalar it spells.
fn retyped(v: Value) -> Value {
    match v {
        Value::String(s) => match serde_yaml::from_str::<Value>(&s) {
            Ok(x @ (Value::Number(_) | Value::Bool(_))) => x,
            _ => Value::String(s),
        },
        other => other,
    }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => "~".into(),
        _ => "?".into(),
    }
}

macro_rules! scalars {
    ($retype:expr => $($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.delegate(visitor, $retype, |v, visitor| v.$method(visitor))
        }
    )*};
}

impl<'de> Deserializer<'de> for Node<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Sequence(_) => self.deserialize_seq(visitor),
            Value::Mapping(_) => self.deserialize_map(visitor),
            _ => self.delegate(visitor, false, |v, visitor| v.deserialize_any(visitor)),
        }
    }

    scalars!(true => deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64);
    scalars!(false => deserialize_char deserialize_str deserialize_string deserialize_bytes
        deserialize_byte_buf deserialize_unit deserialize_identifier);

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.delegate(visitor, false, |v, visitor| {
            v.deserialize_unit_struct(name, visitor)
        })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Sequence(seq) => {
                let len = seq.len();
                let mut access = SeqNodes {
                    iter: seq.into_iter(),
                    next: 0,
                    path: self.path,
                    subst: self.subst,
                };
                let out = visitor.visit_seq(&mut access)?;
                if access.iter.len() == 0 {
                    Ok(out)
                } else {
                    Err(de::Error::invalid_length(
                        len,
                        &"fewer elements in sequence",
                    ))
                }
            }
            _ => self.delegate(visitor, false, |v, visitor| v.deserialize_seq(visitor)),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Mapping(map) => {
                let len = map.len();
                let mut access = MapNodes {
                    iter: map.into_iter(),
                    value: None,
                    path: self.path,
                    subst: self.subst,
                };
                let out = visitor.visit_map(&mut access)?;
                if access.iter.len() == 0 {
                    Ok(out)
                } else {
                    Err(de::Error::invalid_length(len, &"fewer elements in map"))
                }
            }
            _ => self.delegate(visitor, false, |v, visitor| v.deserialize_map(visitor)),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.delegate(visitor, false, |v, visitor| {
            v.deserialize_enum(name, variants, visitor)
        })
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }
}

struct SeqNodes<'a> {
    iter: std::vec::IntoIter<Value>,
    next: usize,
    path: String,
    subst: &'a HashMap<String, String>,
}

impl<'de> SeqAccess<'de> for SeqNodes<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        let Some(value) = self.iter.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.next);
        self.next += 1;
        seed.deserialize(Node {
            value,
            path,
            subst: self.subst,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct MapNodes<'a> {
    iter: serde_yaml::mapping::IntoIter,
    value: Option<(Value, String)>,
    path: String,
    subst: &'a HashMap<String, String>,
}

impl<'de> MapAccess<'de> for MapNodes<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((k, v)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some((v, join(&self.path, &key_text(&k))));
        seed.deserialize(k).map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (value, path) = self
            .value
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("value without a key"))?;
        seed.deserialize(Node {
            value,
            path,
            subst: self.subst,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}
