//! The typed record a row of schema version 3 carries in its `payload` column.
//!
//! A row stores what a northbound format needs to encode the message when it is published, not the
//! message: the device is the row's key (`topic` column), the kind and the sequence number are
//! columns, and the body below holds the rest. Encoding is a pure function of the row, so a format
//! that encodes the same row twice (a replay after a lost connection) produces the same bytes.
//!
//! # Wire format (all integers little-endian; part of schema version 3: a change bumps it)
//!
//! ```text
//! str      = len:u32 bytes:[u8; len]            UTF-8
//! opt_str  = 0:u8 | 1:u8 str
//! value    = 0:u8 f64-bits:u64 | 1:u8 i64 | 2:u8 (0|1):u8 | 3:u8 str
//! quality  = 0:u8 (good) | 1:u8 reason:str (uncertain) | 2:u8 reason:str (bad)
//! reading  = point:str value unit:opt_str ts_ns:i64 quality
//! READING, READINGS (kinds 1, 2): reading*          (kind 1 holds exactly one)
//! ALERT (kind 3):  name:str active:u8 severity:str message:str by:str ts_ns:i64
//! RESULT (kind 4): point:str value error:opt_str origin ts_ns:i64
//! origin   = 0:u8 (mqtt) | 1:u8 rule:str | 2:u8 (cli)
//! ```
//!
//! Decoding borrows strings from the body (no allocation per field).

use std::fmt;

/// A reading's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueRef<'a> {
    F64(f64),
    I64(i64),
    Bool(bool),
    Str(&'a str),
}

/// A reading's quality; an uncertain or bad one keeps its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QualityRef<'a> {
    Good,
    Uncertain(&'a str),
    Bad(&'a str),
}

/// One reading of a [`crate::RowKind::Reading`] / [`crate::RowKind::Readings`] row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadingRef<'a> {
    pub point: &'a str,
    pub value: ValueRef<'a>,
    pub unit: Option<&'a str>,
    /// The reading's own time, UTC ns since the Unix epoch.
    pub ts_ns: i64,
    pub quality: QualityRef<'a>,
}

/// An alert of a [`crate::RowKind::Alert`] row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRef<'a> {
    pub name: &'a str,
    pub active: bool,
    pub severity: &'a str,
    pub message: &'a str,
    /// What raised it (a rule's name).
    pub by: &'a str,
    pub ts_ns: i64,
}

/// Who sent a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginRef<'a> {
    Mqtt,
    Rule(&'a str),
    Cli,
}

/// A command result of a [`crate::RowKind::CommandResult`] row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResultRef<'a> {
    pub point: &'a str,
    pub value: ValueRef<'a>,
    /// `None` when the device acknowledged the command.
    pub error: Option<&'a str>,
    pub origin: OriginRef<'a>,
    pub ts_ns: i64,
}

/// A record body that does not decode (a damaged row, or a row of another build).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed outbox record: {what} at byte {at}")]
pub struct RecordError {
    pub what: &'static str,
    pub at: usize,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    // A string longer than 4 GiB cannot be in a reading; clamp rather than wrap.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&s.as_bytes()[..len as usize]);
}

fn put_opt_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put_str(buf, s);
        }
    }
}

fn put_value(buf: &mut Vec<u8>, v: ValueRef<'_>) {
    match v {
        ValueRef::F64(f) => {
            buf.push(0);
            buf.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        ValueRef::I64(i) => {
            buf.push(1);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Bool(b) => {
            buf.push(2);
            buf.push(u8::from(b));
        }
        ValueRef::Str(s) => {
            buf.push(3);
            put_str(buf, s);
        }
    }
}

/// Append one reading to `buf` (a [`crate::RowKind::Readings`] body is several in a row).
pub fn encode_reading(buf: &mut Vec<u8>, r: &ReadingRef<'_>) {
    put_str(buf, r.point);
    put_value(buf, r.value);
    put_opt_str(buf, r.unit);
    buf.extend_from_slice(&r.ts_ns.to_le_bytes());
    match r.quality {
        QualityRef::Good => buf.push(0),
        QualityRef::Uncertain(reason) => {
            buf.push(1);
            put_str(buf, reason);
        }
        QualityRef::Bad(reason) => {
            buf.push(2);
            put_str(buf, reason);
        }
    }
}

/// The body of an alert row.
pub fn encode_alert(buf: &mut Vec<u8>, a: &AlertRef<'_>) {
    put_str(buf, a.name);
    buf.push(u8::from(a.active));
    put_str(buf, a.severity);
    put_str(buf, a.message);
    put_str(buf, a.by);
    buf.extend_from_slice(&a.ts_ns.to_le_bytes());
}

/// The body of a command-result row.
pub fn encode_result(buf: &mut Vec<u8>, r: &ResultRef<'_>) {
    put_str(buf, r.point);
    put_value(buf, r.value);
    put_opt_str(buf, r.error);
    match r.origin {
        OriginRef::Mqtt => buf.push(0),
        OriginRef::Rule(rule) => {
            buf.push(1);
            put_str(buf, rule);
        }
        OriginRef::Cli => buf.push(2),
    }
    buf.extend_from_slice(&r.ts_ns.to_le_bytes());
}

/// A cursor over a body.
struct Cur<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cur<'a> {
    fn err(&self, what: &'static str) -> RecordError {
        RecordError { what, at: self.at }
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        let end = self.at.checked_add(n).ok_or_else(|| self.err(what))?;
        let s = self.b.get(self.at..end).ok_or_else(|| self.err(what))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, RecordError> {
        Ok(self.take(1, what)?[0])
    }
    fn bytes8(&mut self, what: &'static str) -> Result<[u8; 8], RecordError> {
        let s = self.take(8, what)?;
        let mut a = [0; 8];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn i64(&mut self, what: &'static str) -> Result<i64, RecordError> {
        Ok(i64::from_le_bytes(self.bytes8(what)?))
    }
    fn str(&mut self, what: &'static str) -> Result<&'a str, RecordError> {
        let l = self.take(4, what)?;
        let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        let at = self.at;
        let s = self.take(len, what)?;
        std::str::from_utf8(s).map_err(|_| RecordError { what, at })
    }
    fn opt_str(&mut self, what: &'static str) -> Result<Option<&'a str>, RecordError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => Ok(Some(self.str(what)?)),
            _ => Err(self.err(what)),
        }
    }
    fn value(&mut self) -> Result<ValueRef<'a>, RecordError> {
        Ok(match self.u8("value tag")? {
            0 => ValueRef::F64(f64::from_bits(u64::from_le_bytes(self.bytes8("f64")?))),
            1 => ValueRef::I64(self.i64("i64")?),
            2 => ValueRef::Bool(self.u8("bool")? != 0),
            3 => ValueRef::Str(self.str("string value")?),
            _ => return Err(self.err("value tag")),
        })
    }
    fn done(&self) -> bool {
        self.at >= self.b.len()
    }
}

/// The readings of a reading row, in order.
pub fn readings(body: &[u8]) -> Readings<'_> {
    Readings {
        cur: Cur { b: body, at: 0 },
        failed: false,
    }
}

/// Iterator returned by [`readings`]; stops after the first error.
pub struct Readings<'a> {
    cur: Cur<'a>,
    failed: bool,
}

impl fmt::Debug for Readings<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readings")
            .field("at", &self.cur.at)
            .field("len", &self.cur.b.len())
            .finish()
    }
}

impl<'a> Iterator for Readings<'a> {
    type Item = Result<ReadingRef<'a>, RecordError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.cur.done() {
            return None;
        }
        let r = (|| {
            let c = &mut self.cur;
            let point = c.str("point")?;
            let value = c.value()?;
            let unit = c.opt_str("unit")?;
            let ts_ns = c.i64("ts")?;
            let quality = match c.u8("quality")? {
                0 => QualityRef::Good,
                1 => QualityRef::Uncertain(c.str("reason")?),
                2 => QualityRef::Bad(c.str("reason")?),
                _ => return Err(c.err("quality")),
            };
            Ok(ReadingRef {
                point,
                value,
                unit,
                ts_ns,
                quality,
            })
        })();
        self.failed = r.is_err();
        Some(r)
    }
}

/// The alert of an alert row.
pub fn alert(body: &[u8]) -> Result<AlertRef<'_>, RecordError> {
    let mut c = Cur { b: body, at: 0 };
    let a = AlertRef {
        name: c.str("alert name")?,
        active: c.u8("active")? != 0,
        severity: c.str("severity")?,
        message: c.str("message")?,
        by: c.str("by")?,
        ts_ns: c.i64("ts")?,
    };
    if !c.done() {
        return Err(c.err("trailing bytes"));
    }
    Ok(a)
}

/// The result of a command-result row.
pub fn result(body: &[u8]) -> Result<ResultRef<'_>, RecordError> {
    let mut c = Cur { b: body, at: 0 };
    let point = c.str("point")?;
    let value = c.value()?;
    let error = c.opt_str("error")?;
    let origin = match c.u8("origin")? {
        0 => OriginRef::Mqtt,
        1 => OriginRef::Rule(c.str("rule")?),
        2 => OriginRef::Cli,
        _ => return Err(c.err("origin")),
    };
    let ts_ns = c.i64("ts")?;
    if !c.done() {
        return Err(c.err("trailing bytes"));
    }
    Ok(ResultRef {
        point,
        value,
        error,
        origin,
        ts_ns,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_round_trip_bit_exact() {
        let rs = [
            ReadingRef {
                point: "temperature",
                value: ValueRef::F64(-0.0),
                unit: Some("°C"),
                ts_ns: -5,
                quality: QualityRef::Good,
            },
            ReadingRef {
                point: "",
                value: ValueRef::F64(f64::NAN),
                unit: None,
                ts_ns: i64::MAX,
                quality: QualityRef::Bad("timeout"),
            },
            ReadingRef {
                point: "mode",
                value: ValueRef::Str("auto"),
                unit: None,
                ts_ns: 1,
                quality: QualityRef::Uncertain("clock_unsynchronised"),
            },
            ReadingRef {
                point: "on",
                value: ValueRef::Bool(true),
                unit: None,
                ts_ns: 2,
                quality: QualityRef::Good,
            },
            ReadingRef {
                point: "n",
                value: ValueRef::I64(i64::MIN),
                unit: Some(""),
                ts_ns: 3,
                quality: QualityRef::Good,
            },
        ];
        let mut buf = Vec::new();
        for r in &rs {
            encode_reading(&mut buf, r);
        }
        let back: Vec<ReadingRef<'_>> = readings(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(back.len(), rs.len());
        for (a, b) in back.iter().zip(&rs) {
            match (a.value, b.value) {
                (ValueRef::F64(x), ValueRef::F64(y)) => assert_eq!(x.to_bits(), y.to_bits()),
                (x, y) => assert_eq!(x, y),
            }
            assert_eq!(
                (a.point, a.unit, a.ts_ns, a.quality),
                (b.point, b.unit, b.ts_ns, b.quality)
            );
        }
        // Every truncation is an error, never a panic or a wrong reading.
        for n in 0..buf.len() {
            let got: Result<Vec<_>, _> = readings(&buf[..n]).collect();
            let whole = rs
                .iter()
                .scan(Vec::new(), |b, r| {
                    encode_reading(b, r);
                    Some(b.len())
                })
                .any(|l| l == n);
            assert_eq!(got.is_ok(), whole || n == 0, "at {n}");
        }
    }

    #[test]
    fn alert_and_result_round_trip() {
        let a = AlertRef {
            name: "high",
            active: true,
            severity: "warning",
            message: "too hot",
            by: "vent",
            ts_ns: 42,
        };
        let mut buf = Vec::new();
        encode_alert(&mut buf, &a);
        assert_eq!(alert(&buf).unwrap(), a);
        let r = ResultRef {
            point: "relay",
            value: ValueRef::Bool(false),
            error: Some("refused"),
            origin: OriginRef::Rule("vent"),
            ts_ns: 7,
        };
        let mut buf = Vec::new();
        encode_result(&mut buf, &r);
        assert_eq!(result(&buf).unwrap(), r);
        buf.push(0);
        assert!(result(&buf).is_err());
    }
}
