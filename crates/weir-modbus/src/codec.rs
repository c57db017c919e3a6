//! The value codec: Modbus registers ⇄ typed values. No I/O.
//!
//! # Wire format
//!
//! A Modbus register is 16 bits, sent high byte first (Modbus Application Protocol V1.1b3, §4.2
//! "big-endian representation for addresses and data items"). Wider values span consecutive
//! registers; the protocol does not say in which order, so devices differ. A value's bytes written
//! most significant first are called `A B C D` (`A B C D E F G H` for 64 bits) and the four
//! orders say how they are laid out across the registers, first register first:
//!
//! | order  | 32-bit registers | meaning                                             |
//! |--------|------------------|-----------------------------------------------------|
//! | `ABCD` | `AB` `CD`        | big-endian words, big-endian bytes (the default)    |
//! | `CDAB` | `CD` `AB`        | word order reversed (low word first)                |
//! | `BADC` | `BA` `DC`        | bytes swapped within each word                      |
//! | `DCBA` | `DC` `BA`        | fully little-endian                                 |
//!
//! For 64-bit values the same two operations (reverse the word order; swap the bytes of each
//! word) apply to four registers. A 16-bit value is affected by the byte swap only. A string of
//! `n` registers is the byte sequence `r0.hi r0.lo r1.hi …` under `ABCD`, with the same two
//! operations for the other orders; trailing NULs and spaces are trimmed on decode and padded with
//! NULs on encode.
//!
//! Invariants: both operations are involutions and commute, so encoding applies exactly the same
//! transformation as decoding ([`reorder`]); `decode(encode(v)) == v` for every value the type can
//! hold (checked by property tests for every type × order).
//!
//! Engineering value = raw × `scale` + `offset`. A point with neither (scale 1, offset 0) of an
//! integer type reads as an integer; anything scaled, and the float types, read as `f64`.
//!
//! # Decimals
//!
//! Values are published as the shortest decimal that means what the device sent, never as the
//! binary expansion of an intermediate `f64`:
//!
//! * an `f32` reads as the shortest decimal that round-trips the `f32` ([`Value::from_f32`]):
//!   231.7 is published as `231.7`, not `231.6999969482422`;
//! * a scaled `f32` is computed in `f64` and then given the same treatment at `f32` precision
//!   (the device's value has no more digits than that): 2317.0 × 0.1 is `231.7`;
//! * a scaled integer is exact in decimal: its decimals are those of `scale` and `offset` as
//!   written (at most 15), and the result is rounded to them: 216 × 0.1 is `21.6` and 3 × 0.1 is
//!   `0.3`, not `0.30000000000000004`. A scale without a short decimal form (1/3) is not rounded;
//! * an `f64` is published as it is (its shortest round-trip form is already what it prints).
//!
//! Writes take the value as the user sent it, and a value the point cannot hold is refused with
//! that value and the point's range in the same (engineering) units.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Deserialize;
use weir_core::Value;

/// The type of a point's raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    Bool,
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    String,
}

impl DataType {
    /// Registers the value spans (`string`: given by its `length`; `bool`: one register, or none
    /// when it is a coil or discrete input).
    pub fn registers(self, string_len: u16) -> u16 {
        match self {
            DataType::Bool | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::String => string_len,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U16
                | DataType::I16
                | DataType::U32
                | DataType::I32
                | DataType::U64
                | DataType::I64
        )
    }

    pub const ALL: [DataType; 10] = [
        DataType::Bool,
        DataType::U16,
        DataType::I16,
        DataType::U32,
        DataType::I32,
        DataType::U64,
        DataType::I64,
        DataType::F32,
        DataType::F64,
        DataType::String,
    ];
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DataType::Bool => "bool",
            DataType::U16 => "u16",
            DataType::I16 => "i16",
            DataType::U32 => "u32",
            DataType::I32 => "i32",
            DataType::U64 => "u64",
            DataType::I64 => "i64",
            DataType::F32 => "f32",
            DataType::F64 => "f64",
            DataType::String => "string",
        };
        f.write_str(s)
    }
}

impl FromStr for DataType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DataType::ALL
            .into_iter()
            .find(|t| t.to_string() == s.to_ascii_lowercase())
            .ok_or_else(|| {
                format!("unknown type `{s}`: bool, u16, i16, u32, i32, u64, i64, f32, f64, string")
            })
    }
}

/// Word and byte order of a multi-register value (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
pub enum Order {
    #[default]
    ABCD,
    CDAB,
    BADC,
    DCBA,
}

impl Order {
    pub const ALL: [Order; 4] = [Order::ABCD, Order::CDAB, Order::BADC, Order::DCBA];
    fn reverse_words(self) -> bool {
        matches!(self, Order::CDAB | Order::DCBA)
    }
    fn swap_bytes(self) -> bool {
        matches!(self, Order::BADC | Order::DCBA)
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

impl FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Order::ALL
            .into_iter()
            .find(|o| o.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown order `{s}`: ABCD, CDAB, BADC, DCBA"))
    }
}

/// How one point's registers become a value.
#[derive(Debug, Clone, PartialEq)]
pub struct Codec {
    pub ty: DataType,
    pub order: Order,
    /// Bit 0–15 of a register (0 = least significant) for a `bool` held in a register.
    pub bit: Option<u8>,
    /// Registers of a `string`.
    pub length: u16,
    pub scale: f64,
    pub offset: f64,
}

impl Codec {
    pub fn new(ty: DataType, order: Order) -> Self {
        Codec {
            ty,
            order,
            bit: None,
            length: 1,
            scale: 1.0,
            offset: 0.0,
        }
    }

    pub fn registers(&self) -> u16 {
        self.ty.registers(self.length)
    }

    fn scaled(&self) -> bool {
        self.scale != 1.0 || self.offset != 0.0
    }
}

/// A value could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("expected {expected} registers for {ty}, got {got}")]
    Length {
        ty: DataType,
        expected: usize,
        got: usize,
    },
    /// `value` as the user sent it; `min`/`max` in engineering units (after scale and offset).
    #[error("{value} is out of range: {what} holds {min} to {max}")]
    OutOfRange {
        value: Value,
        what: String,
        min: Value,
        max: Value,
    },
    #[error("{ty} takes {expected}, got {got}")]
    WrongType {
        ty: DataType,
        expected: &'static str,
        got: Value,
    },
    #[error("string of {bytes} bytes does not fit in {registers} registers")]
    StringTooLong { bytes: usize, registers: u16 },
}

/// Apply `order` to registers in place: reverse the word order and/or swap the bytes of each word.
/// An involution: applying it twice gives back the input.
pub fn reorder(regs: &mut [u16], order: Order, is_string: bool) {
    if order.reverse_words() && !is_string {
        regs.reverse();
    }
    if order.swap_bytes() {
        for r in regs.iter_mut() {
            *r = r.swap_bytes();
        }
    }
}

/// Registers → the value's big-endian bytes (the `ABCD…` form).
fn to_be_bytes(regs: &[u16], order: Order, is_string: bool) -> Vec<u8> {
    let mut r = regs.to_vec();
    reorder(&mut r, order, is_string);
    r.iter().flat_map(|w| w.to_be_bytes()).collect()
}

fn from_be_bytes(bytes: &[u8], order: Order, is_string: bool) -> Vec<u16> {
    let mut r: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
        .collect();
    reorder(&mut r, order, is_string);
    r
}

/// The raw number before scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    U(u64),
    I(i64),
    F32(f32),
    F(f64),
}

/// Powers of ten, exact as `f64`, for the decimals of scale and offset.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The decimals of `x` as written: the smallest `k` ≤ 15 with `x` a multiple of 10⁻ᵏ, if any.
fn decimals(x: f64) -> Option<usize> {
    (0..POW10.len()).find(|&k| (x * POW10[k]).round() / POW10[k] == x)
}

/// `v` rounded to `d` decimals: the `f64` nearest to that decimal (an integer divided by a power
/// of ten is rounded once, correctly). Values too large to carry the decimals are left as they are.
fn round_to(v: f64, d: usize) -> f64 {
    let p = POW10[d.min(POW10.len() - 1)];
    let r = (v * p).round() / p;
    if r.is_finite() && (v * p).abs() < 9.0e15 {
        r
    } else {
        v
    }
}

impl Codec {
    /// Decode a point from its registers (exactly [`Codec::registers`] of them).
    pub fn decode_registers(&self, regs: &[u16]) -> Result<Value, CodecError> {
        let n = self.registers() as usize;
        if regs.len() != n {
            return Err(CodecError::Length {
                ty: self.ty,
                expected: n,
                got: regs.len(),
            });
        }
        let is_string = self.ty == DataType::String;
        // Numbers span at most 4 registers: their bytes are put together on the stack.
        let mut b = [0u8; 8];
        if !is_string {
            let mut r = [0u16; 4];
            let r = &mut r[..n.min(4)];
            r.copy_from_slice(&regs[..r.len()]);
            reorder(r, self.order, false);
            for (i, w) in r.iter().enumerate() {
                b[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
            }
        }
        let raw = match self.ty {
            DataType::U16 => Raw::U(u16::from_be_bytes([b[0], b[1]]) as u64),
            DataType::I16 => Raw::I(i16::from_be_bytes([b[0], b[1]]) as i64),
            DataType::U32 => Raw::U(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64),
            DataType::I32 => Raw::I(i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64),
            DataType::F32 => Raw::F32(f32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            DataType::U64 => Raw::U(u64::from_be_bytes(b)),
            DataType::I64 => Raw::I(i64::from_be_bytes(b)),
            DataType::F64 => Raw::F(f64::from_be_bytes(b)),
            DataType::String => {
                let b = to_be_bytes(regs, self.order, is_string);
                let end = b
                    .iter()
                    .rposition(|c| *c != 0 && *c != b' ')
                    .map_or(0, |i| i + 1);
                let s = String::from_utf8_lossy(&b[..end]);
                return Ok(Value::Str(Arc::from(s.as_ref())));
            }
            DataType::Bool => {
                // A bit is numbered in the register as read, independent of the byte order.
                let w = regs[0];
                return Ok(Value::Bool(match self.bit {
                    Some(b) => (w >> b) & 1 == 1,
                    None => w != 0,
                }));
            }
        };
        Ok(self.scale_raw(raw))
    }

    fn scale_raw(&self, raw: Raw) -> Value {
        if !self.scaled() {
            return match raw {
                Raw::U(u) => i64::try_from(u).map_or(Value::F64(u as f64), Value::I64),
                Raw::I(i) => Value::I64(i),
                Raw::F32(f) => Value::from_f32(f),
                Raw::F(f) => Value::F64(f),
            };
        }
        match raw {
            Raw::F32(f) => Value::from_f32((f as f64 * self.scale + self.offset) as f32),
            Raw::F(f) => Value::F64(f * self.scale + self.offset),
            Raw::U(_) | Raw::I(_) => Value::F64(self.engineering(as_f64(raw))),
        }
    }

    /// `raw × scale + offset` for an integer raw value, rounded to the decimals of `scale` and
    /// `offset` (see the module docs).
    fn engineering(&self, raw: f64) -> f64 {
        let v = raw * self.scale + self.offset;
        match (decimals(self.scale), decimals(self.offset)) {
            (Some(a), Some(b)) => round_to(v, a.max(b)),
            _ => v,
        }
    }

    /// What a point of this codec is, for messages: `u16`, `i32 with scale 0.1 and offset -40`.
    fn describe(&self) -> String {
        let mut s = self.ty.to_string();
        if self.scale != 1.0 {
            s.push_str(&format!(" with scale {}", self.scale));
        }
        if self.offset != 0.0 {
            s.push_str(&format!(
                "{} offset {}",
                if self.scale != 1.0 { " and" } else { " with" },
                self.offset
            ));
        }
        s
    }

    /// The out-of-range error for `v`, with the range of raw values `lo..=hi` in engineering
    /// units.
    fn out_of_range(&self, v: &Value, lo: f64, hi: f64) -> CodecError {
        let (min, max) = if !self.scaled() {
            let int = |x: f64| {
                if self.ty.is_integer() && x.abs() < 9.2e18 {
                    Value::I64(x as i64)
                } else {
                    Value::F64(x)
                }
            };
            if self.ty == DataType::F32 {
                (Value::from_f32(lo as f32), Value::from_f32(hi as f32))
            } else {
                (int(lo), int(hi))
            }
        } else {
            let (a, b) = (self.engineering(lo), self.engineering(hi));
            (Value::F64(a.min(b)), Value::F64(a.max(b)))
        };
        CodecError::OutOfRange {
            value: v.clone(),
            what: self.describe(),
            min,
            max,
        }
    }

    /// Decode a bit (coil or discrete input).
    pub fn decode_bit(&self, bit: bool) -> Value {
        Value::Bool(bit)
    }

    /// Encode `v` into registers for a write. A `bool` with a `bit` is encoded into `current`
    /// (the register as last read) so the other bits are kept.
    pub fn encode_registers(
        &self,
        v: &Value,
        current: Option<u16>,
    ) -> Result<Vec<u16>, CodecError> {
        let is_string = self.ty == DataType::String;
        let wrong = |expected| CodecError::WrongType {
            ty: self.ty,
            expected,
            got: v.clone(),
        };
        match self.ty {
            DataType::Bool => {
                let b = match v {
                    Value::Bool(b) => *b,
                    Value::I64(0) => false,
                    Value::I64(1) => true,
                    _ => return Err(wrong("true/false")),
                };
                return Ok(vec![match self.bit {
                    Some(bit) => {
                        let cur = current.unwrap_or(0);
                        if b {
                            cur | (1 << bit)
                        } else {
                            cur & !(1 << bit)
                        }
                    }
                    None => b as u16,
                }]);
            }
            DataType::String => {
                let Value::Str(s) = v else {
                    return Err(wrong("a string"));
                };
                let cap = self.length as usize * 2;
                if s.len() > cap {
                    return Err(CodecError::StringTooLong {
                        bytes: s.len(),
                        registers: self.length,
                    });
                }
                let mut bytes = s.as_bytes().to_vec();
                bytes.resize(cap, 0);
                return Ok(from_be_bytes(&bytes, self.order, is_string));
            }
            _ => {}
        }
        let x = match v {
            Value::Bool(_) | Value::Str(_) => return Err(wrong("a number")),
            Value::I64(i) if !self.scaled() => Raw::I(*i),
            other => {
                let f = other.as_f64().ok_or_else(|| wrong("a number"))?;
                Raw::F((f - self.offset) / self.scale)
            }
        };
        let raw = x;
        let bytes: Vec<u8> = match self.ty {
            DataType::F32 => {
                let f = as_f64(raw);
                let narrow = f as f32;
                if f.is_finite() && !narrow.is_finite() {
                    return Err(self.out_of_range(v, f32::MIN as f64, f32::MAX as f64));
                }
                narrow.to_be_bytes().to_vec()
            }
            DataType::F64 => as_f64(raw).to_be_bytes().to_vec(),
            t => {
                let (lo, hi): (i128, i128) = match t {
                    DataType::U16 => (0, u16::MAX as i128),
                    DataType::I16 => (i16::MIN as i128, i16::MAX as i128),
                    DataType::U32 => (0, u32::MAX as i128),
                    DataType::I32 => (i32::MIN as i128, i32::MAX as i128),
                    DataType::U64 => (0, u64::MAX as i128),
                    _ => (i64::MIN as i128, i64::MAX as i128),
                };
                let range = || self.out_of_range(v, lo as f64, hi as f64);
                let i: i128 = match raw {
                    Raw::I(i) => i as i128,
                    Raw::U(u) => u as i128,
                    Raw::F32(f) => f.round() as i128,
                    Raw::F(f) => {
                        let r = f.round();
                        if !r.is_finite() || r.abs() > 1.9e19 {
                            return Err(range());
                        }
                        r as i128
                    }
                };
                if i < lo || i > hi {
                    return Err(range());
                }
                let be = (i as u64).to_be_bytes();
                let n = self.registers() as usize * 2;
                be[8 - n..].to_vec()
            }
        };
        Ok(from_be_bytes(&bytes, self.order, is_string))
    }
}

fn as_f64(r: Raw) -> f64 {
    match r {
        Raw::U(u) => u as f64,
        Raw::I(i) => i as f64,
        Raw::F32(f) => f as f64,
        Raw::F(f) => f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(ty: DataType, order: Order) -> Codec {
        Codec::new(ty, order)
    }

    #[test]
    fn known_layouts_of_a_float_in_every_order() {
        // 123.456f32 = 0x42F6E979: A=42 B=F6 C=E9 D=79
        let cases = [
            (Order::ABCD, [0x42F6, 0xE979]),
            (Order::CDAB, [0xE979, 0x42F6]),
            (Order::BADC, [0xF642, 0x79E9]),
            (Order::DCBA, [0x79E9, 0xF642]),
        ];
        for (o, regs) in cases {
            let v = c(DataType::F32, o).decode_registers(&regs).unwrap();
            assert_eq!(
                v,
                Value::F64(123.456),
                "{o}: the shortest decimal of the f32"
            );
            assert_eq!(
                c(DataType::F32, o)
                    .encode_registers(&Value::F64(123.456f32 as f64), None)
                    .unwrap(),
                regs.to_vec()
            );
        }
    }

    #[test]
    fn u64_cdab_reverses_all_four_words() {
        let v = 0x0102_0304_0506_0708u64;
        let regs = [0x0708, 0x0506, 0x0304, 0x0102];
        assert_eq!(
            c(DataType::U64, Order::CDAB)
                .decode_registers(&regs)
                .unwrap(),
            Value::I64(v as i64)
        );
    }

    #[test]
    fn scale_offset_and_signed() {
        let mut k = c(DataType::I16, Order::ABCD);
        k.scale = 0.1;
        k.offset = -40.0;
        let v = k.decode_registers(&[0xFFF6]).unwrap(); // -10 * 0.1 - 40
        assert_eq!(v, Value::F64(-41.0));
        assert_eq!(
            k.encode_registers(&Value::F64(-41.0), None).unwrap(),
            vec![0xFFF6]
        );
        assert!(matches!(
            k.encode_registers(&Value::F64(1e9), None),
            Err(CodecError::OutOfRange { .. })
        ));
    }

    #[test]
    fn published_values_are_short_decimals() {
        // 231.7 as f32 (0x4367B333), as meters send it.
        let f = c(DataType::F32, Order::ABCD);
        let v = f.decode_registers(&[0x4367, 0xB333]).unwrap();
        assert_eq!(v, Value::F64(231.7));
        assert_eq!(serde_json::to_string(&v.as_f64()).unwrap(), "231.7");
        // A scaled f32: 2317.0 × 0.1, at f32 precision.
        let mut k = f.clone();
        k.scale = 0.1;
        let regs = k.encode_registers(&Value::F64(231.7), None).unwrap();
        assert_eq!(regs, vec![0x4510, 0xD000], "2317.0f32");
        assert_eq!(k.decode_registers(&regs).unwrap(), Value::F64(231.7));
        // Scaled integers carry the decimals of scale and offset, exactly.
        let mut k = c(DataType::U16, Order::ABCD);
        k.scale = 0.1;
        assert_eq!(k.decode_registers(&[3]).unwrap(), Value::F64(0.3));
        assert_ne!(3.0 * 0.1, 0.3, "what the plain product would publish");
        assert_eq!(k.decode_registers(&[2317]).unwrap(), Value::F64(231.7));
        k.scale = 0.01;
        k.offset = -40.5;
        assert_eq!(k.decode_registers(&[6153]).unwrap(), Value::F64(21.03));
        // No short decimal form: not rounded.
        k.scale = 1.0 / 3.0;
        k.offset = 0.0;
        assert_eq!(k.decode_registers(&[1]).unwrap(), Value::F64(1.0 / 3.0));
        // f64 is published as it is.
        let d = c(DataType::F64, Order::ABCD);
        let regs = d.encode_registers(&Value::F64(0.1 + 0.2), None).unwrap();
        assert_eq!(d.decode_registers(&regs).unwrap(), Value::F64(0.1 + 0.2));
    }

    #[test]
    fn refusals_name_the_value_sent_and_the_range_in_user_units() {
        let msg = |k: &Codec, v: Value| k.encode_registers(&v, None).unwrap_err().to_string();
        let mut k = c(DataType::U16, Order::ABCD);
        assert_eq!(
            msg(&k, Value::I64(70_000)),
            "70000 is out of range: u16 holds 0 to 65535"
        );
        k.scale = 0.1;
        assert_eq!(
            msg(&k, Value::I64(99_999)),
            "99999 is out of range: u16 with scale 0.1 holds 0 to 6553.5"
        );
        let mut t = c(DataType::I16, Order::ABCD);
        t.scale = 0.1;
        t.offset = -40.0;
        assert_eq!(
            msg(&t, Value::F64(5000.5)),
            "5000.5 is out of range: i16 with scale 0.1 and offset -40 holds -3316.8 to 3236.7"
        );
        t.scale = -0.5;
        t.offset = 0.0;
        assert_eq!(
            msg(&t, Value::I64(-20_000)),
            "-20000 is out of range: i16 with scale -0.5 holds -16383.5 to 16384"
        );
        let f = c(DataType::F32, Order::ABCD);
        assert!(
            msg(&f, Value::F64(1e39)).starts_with("1000000000000000000000000000000000000000 is out of range: f32 holds -340282350000000000000000000000000000000 to 3402823"),
            "{}",
            msg(&f, Value::F64(1e39))
        );
        assert_eq!(
            msg(&k, Value::from("abc")),
            "u16 takes a number, got \"abc\""
        );
        assert_eq!(
            msg(&c(DataType::Bool, Order::ABCD), Value::I64(7)),
            "bool takes true/false, got 7"
        );
    }

    #[test]
    fn bit_in_register_keeps_other_bits() {
        let mut k = c(DataType::Bool, Order::ABCD);
        k.bit = Some(3);
        assert_eq!(k.decode_registers(&[0b1000]).unwrap(), Value::Bool(true));
        assert_eq!(k.decode_registers(&[0b0111]).unwrap(), Value::Bool(false));
        assert_eq!(
            k.encode_registers(&Value::Bool(true), Some(0b0001))
                .unwrap(),
            vec![0b1001]
        );
        assert_eq!(
            k.encode_registers(&Value::Bool(false), Some(0xFFFF))
                .unwrap(),
            vec![0xFFF7]
        );
    }

    #[test]
    fn strings_trim_and_swap() {
        let mut k = c(DataType::String, Order::ABCD);
        k.length = 3;
        assert_eq!(
            k.decode_registers(&[0x4142, 0x4300, 0x0000]).unwrap(),
            Value::from("ABC")
        );
        k.order = Order::BADC;
        assert_eq!(
            k.decode_registers(&[0x4241, 0x0043, 0x0000]).unwrap(),
            Value::from("ABC")
        );
        assert!(matches!(
            k.encode_registers(&Value::from("ABCDEFG"), None),
            Err(CodecError::StringTooLong { .. })
        ));
    }

    #[test]
    fn wrong_types_are_errors() {
        assert!(matches!(
            c(DataType::U16, Order::ABCD).encode_registers(&Value::from("x"), None),
            Err(CodecError::WrongType { .. })
        ));
        assert!(matches!(
            c(DataType::U16, Order::ABCD).encode_registers(&Value::I64(-1), None),
            Err(CodecError::OutOfRange { .. })
        ));
        assert!(matches!(
            c(DataType::U32, Order::ABCD).decode_registers(&[1]),
            Err(CodecError::Length { .. })
        ));
    }

    fn order() -> impl Strategy<Value = Order> {
        prop::sample::select(Order::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn integers_round_trip(o in order(), u in any::<u64>(), i in any::<i64>()) {
            for (ty, v) in [
                (DataType::U16, Value::I64((u & 0xFFFF) as i64)),
                (DataType::I16, Value::I64(i as i16 as i64)),
                (DataType::U32, Value::I64((u & 0xFFFF_FFFF) as i64)),
                (DataType::I32, Value::I64(i as i32 as i64)),
                (DataType::I64, Value::I64(i)),
                (DataType::U64, i64::try_from(u).map_or(Value::F64(u as f64), Value::I64)),
            ] {
                let k = c(ty, o);
                let regs = k.encode_registers(&v, None).unwrap();
                prop_assert_eq!(regs.len(), ty.registers(1) as usize);
                prop_assert_eq!(k.decode_registers(&regs).unwrap(), v.clone(), "{} {}", ty, o);
            }
        }

        #[test]
        fn u64_above_i64_round_trips_through_raw_registers(o in order(), regs in prop::collection::vec(any::<u16>(), 4)) {
            // Registers → value → registers is the identity for every bit pattern of the integer
            // types (the values above i64::MAX read as f64 lose precision, so they are excluded).
            for ty in [DataType::I64, DataType::I32, DataType::I16, DataType::U32, DataType::U16] {
                let k = c(ty, o);
                let n = ty.registers(1) as usize;
                let v = k.decode_registers(&regs[..n]).unwrap();
                prop_assert_eq!(k.encode_registers(&v, None).unwrap(), regs[..n].to_vec());
            }
        }

        #[test]
        fn floats_round_trip(o in order(), f in any::<f64>(), g in any::<f32>()) {
            prop_assume!(f.is_finite() && g.is_finite());
            let k = c(DataType::F64, o);
            prop_assert_eq!(k.decode_registers(&k.encode_registers(&Value::F64(f), None).unwrap()).unwrap(), Value::F64(f));
            let k = c(DataType::F32, o);
            let regs = k.encode_registers(&Value::F64(g as f64), None).unwrap();
            let v = k.decode_registers(&regs).unwrap();
            prop_assert_eq!(&v, &Value::from_f32(g));
            // What is published writes back as the very same registers.
            prop_assert_eq!(k.encode_registers(&v, None).unwrap(), regs);
        }

        #[test]
        fn bools_and_strings_round_trip(o in order(), b in any::<bool>(), bit in 0u8..16, cur in any::<u16>(), s in "[ -~]{0,12}") {
            let mut k = c(DataType::Bool, o);
            k.bit = Some(bit);
            let regs = k.encode_registers(&Value::Bool(b), Some(cur)).unwrap();
            prop_assert_eq!(k.decode_registers(&regs).unwrap(), Value::Bool(b));
            prop_assert_eq!(regs[0] & !(1 << bit), cur & !(1 << bit));
            let mut k = c(DataType::String, o);
            k.length = 6;
            let regs = k.encode_registers(&Value::from(s.as_str()), None).unwrap();
            prop_assert_eq!(k.decode_registers(&regs).unwrap(), Value::from(s.trim_end_matches(' ')));
        }

        #[test]
        fn scaled_values_round_trip(o in order(), regs in prop::collection::vec(any::<u16>(), 2), scale in prop::sample::select(vec![0.1, 0.01, 2.0, 0.5]), offset in -100.0f64..100.0) {
            for ty in [DataType::I32, DataType::U32, DataType::I16, DataType::U16] {
                let mut k = c(ty, o);
                k.scale = scale;
                k.offset = offset;
                let n = ty.registers(1) as usize;
                let v = k.decode_registers(&regs[..n]).unwrap();
                prop_assert!(matches!(v, Value::F64(_)));
                prop_assert_eq!(k.encode_registers(&v, None).unwrap(), regs[..n].to_vec());
            }
        }
    }
}
