//! The reading: the unit of data on the bus.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A device identifier, e.g. `gh1/climate`. Interned: cloning is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(Arc<str>);

/// A point (measurement or setpoint) of a device, e.g. `temperature`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PointId(Arc<str>);

macro_rules! id_impls {
    ($t:ident) => {
        impl $t {
            pub fn new(s: &str) -> Self {
                Self(Arc::from(s))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl From<&str> for $t {
            fn from(s: &str) -> Self {
                Self::new(s)
            }
        }
        impl From<String> for $t {
            fn from(s: String) -> Self {
                Self(Arc::from(s))
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}
id_impls!(DeviceId);
id_impls!(PointId);

/// UTC time in nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(d.as_nanos() as i64)
    }
    pub fn as_nanos(self) -> i64 {
        self.0
    }
    pub fn to_system_time(self) -> SystemTime {
        if self.0 >= 0 {
            UNIX_EPOCH + std::time::Duration::from_nanos(self.0 as u64)
        } else {
            UNIX_EPOCH - std::time::Duration::from_nanos(self.0.unsigned_abs())
        }
    }
}

/// A reading's value.
#[derive(Clone, PartialEq, Debug)]
pub enum Value {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(Arc<str>),
}

impl Value {
    /// The value as a float where that makes sense (booleans are 0/1; strings are `None`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::I64(v) => Some(*v as f64),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Str(_) => None,
        }
    }

    /// A float read as 32 bits (most Modbus meters, many sensors), as the `f64` nearest to the
    /// shortest decimal that reads back as the same `f32`: 231.7f32 becomes `231.7`, not its
    /// exact expansion `231.6999969482422`, so it prints and compares as the device meant it.
    /// `Value::from_f32(x).as_f64() as f32 == x` for every finite `x`; NaN and infinities pass
    /// through unchanged.
    pub fn from_f32(x: f32) -> Value {
        Value::F64(f32_shortest(x))
    }
}

/// Powers of ten exactly representable as `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// The `f64` nearest to the shortest decimal that round-trips `x`.
///
/// Fast path (|x| from 1e-12 to 1e13, every value a meter sends): for 1, 2, … significant digits,
/// the decimal with that many digits nearest to `x` (and, at a power of two where the rounding
/// interval is lopsided, its neighbours) is tried until one narrows back to `x`. Each
/// candidate is an integer times or divided by an exact power of ten, so it is the `f64` nearest
/// to that decimal, as parsing its text would give. Outside that range, the decimal Rust's
/// `Display` prints (the shortest, without exponent) is parsed. Both give the same value (tested
/// across the whole range).
fn f32_shortest(x: f32) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x as f64;
    }
    let v = x as f64;
    let a = v.abs();
    if !(1e-12..1e13).contains(&a) {
        return f32_shortest_by_text(x);
    }
    // An upper bound of the decimal exponent: 10^e > a / 10 (floor(log10 a) is e or e - 1).
    let e2 = ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    let e = (e2 as f64 * std::f64::consts::LOG10_2).floor() as i32 + 1;
    // Only at a power of two (mantissa 0) is the interval that rounds to `x` lopsided, so that a
    // decimal farther away than the nearest one can still round to `x`.
    let lopsided = x.to_bits() & 0x007f_ffff == 0;
    for digits in 1..=10 {
        let k = digits - 1 - e; // decimals after the point
        let (scaled, p) = if k >= 0 {
            let p = POW10[k as usize];
            (v * p, p)
        } else {
            let p = POW10[(-k) as usize];
            (v / p, p)
        };
        // Nearest integer (|scaled| < 1e11 here); a cast, not libm's `round`, on the hot path.
        let m = (scaled + 0.5f64.copysign(scaled)) as i64 as f64;
        let cand = |m: f64| if k >= 0 { m / p } else { m * p };
        let c = cand(m);
        if c as f32 == x {
            return c;
        }
        if lopsided {
            for c in [cand(m + 1.0), cand(m - 1.0)] {
                if c as f32 == x {
                    return c;
                }
            }
        }
    }
    f32_shortest_by_text(x)
}

/// The same through text: Rust's `Display` for `f32` prints the shortest round-tripping decimal
/// without an exponent (at most 48 bytes), formatted on the stack and parsed.
fn f32_shortest_by_text(x: f32) -> f64 {
    struct Buf {
        b: [u8; 64],
        n: usize,
    }
    impl fmt::Write for Buf {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let end = self.n + s.len();
            self.b
                .get_mut(self.n..end)
                .ok_or(fmt::Error)?
                .copy_from_slice(s.as_bytes());
            self.n = end;
            Ok(())
        }
    }
    let mut buf = Buf { b: [0; 64], n: 0 };
    if fmt::Write::write_fmt(&mut buf, format_args!("{x}")).is_err() {
        return x as f64;
    }
    std::str::from_utf8(&buf.b[..buf.n])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(x as f64)
}

/// As a user would write it: `21.5`, `3`, `true`, `"auto"` (strings quoted, so `"3"` and `3`
/// differ in a log line). Used in logs and command results instead of Rust's `Debug` form.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::F64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Value::F64(v)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::I64(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Str(Arc::from(v))
    }
}

/// How far a reading can be trusted. A device's own error (a Modbus exception, a timeout, a NACK)
/// becomes `Bad(reason)` on its points rather than an error of the gateway. `Uncertain(reason)`
/// is a value that is probably right but cannot be vouched for: its time was taken while the
/// system clock was not synchronised (`clock_unsynchronised`, see [`crate::clock`]), or a rule
/// said so.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub enum Quality {
    #[default]
    Good,
    Uncertain(Arc<str>),
    Bad(Arc<str>),
}

impl Quality {
    /// `good`, `uncertain` or `bad` — the wire name used in payloads.
    pub fn as_str(&self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Uncertain(_) => "uncertain",
            Quality::Bad(_) => "bad",
        }
    }
    /// Why a reading is bad or uncertain.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Quality::Bad(r) | Quality::Uncertain(r) => Some(r),
            _ => None,
        }
    }
}

/// One value of one point of one device at one instant.
#[derive(Clone, PartialEq, Debug)]
pub struct Reading {
    pub device: DeviceId,
    pub point: PointId,
    pub value: Value,
    /// Engineering unit (`°C`, `%`, `lx`), if known.
    pub unit: Option<Arc<str>>,
    /// Device time if the device gives one, else receive time.
    pub ts: Timestamp,
    pub quality: Quality,
    /// The adapter instance (source name from gateway.yaml) that produced it.
    pub source: Arc<str>,
}

/// Readings move through the gateway in batches.
pub type Batch = Vec<Reading>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_through_system_time() {
        let t = Timestamp(1_700_000_000_123_456_789);
        let st = t.to_system_time();
        let back = st.duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64;
        assert_eq!(back, t.0);
        assert!(Timestamp::now() > t);
    }

    #[test]
    fn values_display_as_a_user_writes_them() {
        let shown: Vec<String> = [
            Value::Bool(true),
            Value::F64(21.5),
            Value::I64(-3),
            Value::from("auto"),
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        assert_eq!(shown, ["true", "21.5", "-3", "\"auto\""]);
    }

    #[test]
    fn f32_values_keep_their_shortest_decimal() {
        assert_eq!(Value::from_f32(231.7), Value::F64(231.7));
        assert_eq!(Value::from_f32(231.7).to_string(), "231.7");
        assert_ne!(
            231.7f32 as f64, 231.7,
            "the plain widening is the long expansion"
        );
        for (x, shown) in [
            (0.1f32, "0.1"),
            (-40.25, "-40.25"),
            (1e-45, "0.000000000000000000000000000000000000000000001"),
            (f32::MAX, "340282350000000000000000000000000000000"),
            (16777217.0, "16777216"),
            (0.0, "0"),
        ] {
            assert_eq!(Value::from_f32(x).to_string(), shown);
            assert_eq!(Value::from_f32(x).as_f64().unwrap() as f32, x);
        }
        assert!(Value::from_f32(f32::NAN).as_f64().unwrap().is_nan());
        assert_eq!(
            Value::from_f32(f32::NEG_INFINITY),
            Value::F64(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn f32_values_round_trip_across_the_whole_range() {
        // Every 4099th bit pattern (a prime stride, so every exponent and many mantissas): the
        // published value narrows back to exactly the f32 the device sent.
        let mut checked = 0u32;
        for bits in (0..=u32::MAX).step_by(4099) {
            let x = f32::from_bits(bits);
            if x.is_finite() {
                let v = Value::from_f32(x).as_f64().unwrap();
                assert_eq!((v as f32).to_bits(), x.to_bits(), "{x:e}");
                // The fast path gives what parsing the shortest text gives.
                assert_eq!(v.to_bits(), f32_shortest_by_text(x).to_bits(), "{x:e}");
                checked += 1;
            }
        }
        assert!(checked > 1_000_000);
    }

    #[test]
    fn value_as_f64() {
        assert_eq!(Value::from(true).as_f64(), Some(1.0));
        assert_eq!(Value::from(3i64).as_f64(), Some(3.0));
        assert_eq!(Value::from("x").as_f64(), None);
    }

    #[test]
    fn ids_intern_and_compare_as_str() {
        let a = DeviceId::from("gh1/climate");
        let b = a.clone();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), "gh1/climate");
        assert_eq!(format!("{a}"), "gh1/climate");
    }
}
