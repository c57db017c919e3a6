//! Commissioning: read or write one value of a device without a configuration
//! (`weir modbus read|write`).

use std::path::PathBuf;
use std::time::Duration;

use weir_core::Value;

use crate::codec::Codec;
use crate::config::Parity;
use crate::pdu::{Request, Response, Table};
use crate::source::{encode_write, WriteError};
use crate::transport::{inter_frame_delay, open_serial, TcpTransport, TransactError, Transport};

/// Where the device is.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp {
        host: String,
        port: u16,
    },
    Rtu {
        port: PathBuf,
        baud: u32,
        parity: Parity,
        stop_bits: u8,
    },
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum CommissionError {
    #[error("cannot open {what}")]
    Open {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Serial(weir_serial::OpenError),
    #[error(transparent)]
    Transact(#[from] TransactError),
    #[error(transparent)]
    Codec(#[from] crate::codec::CodecError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("unexpected response {0:?}")]
    Unexpected(Response),
}

/// Open a transport to `target`.
pub async fn open(
    target: &Target,
    timeout: Duration,
) -> Result<Box<dyn Transport>, CommissionError> {
    match target {
        Target::Tcp { host, port } => {
            let what = format!("{host}:{port}");
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .map_err(|e| CommissionError::Open {
                    what: what.clone(),
                    source: e,
                })?
                .next()
                .ok_or_else(|| CommissionError::Open {
                    what: what.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no address"),
                })?;
            let t = TcpTransport::connect(addr, timeout)
                .await
                .map_err(|e| CommissionError::Open { what, source: e })?;
            Ok(Box::new(t))
        }
        Target::Rtu {
            port,
            baud,
            parity,
            stop_bits,
        } => {
            let settings = weir_serial::SerialSettings {
                parity: *parity,
                stop_bits: *stop_bits,
                ..weir_serial::SerialSettings::new(port, *baud)
            };
            let gap = inter_frame_delay(*baud, settings.bits_per_char());
            open_serial(&settings, gap).map_err(CommissionError::Serial)
        }
    }
}

/// Read `count` values of `codec` from `table` at `address`: the raw registers (or bits) and the
/// decoded values.
pub async fn read(
    t: &mut dyn Transport,
    unit: u8,
    table: Table,
    address: u16,
    codec: &Codec,
    count: u16,
    timeout: Duration,
) -> Result<(Vec<u16>, Vec<Value>), CommissionError> {
    let per = if table.is_bits() {
        1
    } else {
        codec.registers()
    };
    let req = Request::Read {
        table,
        address,
        count: per * count,
    };
    match t.transact(unit, &req, timeout).await? {
        Response::Bits(b) => Ok((
            b.iter().map(|x| *x as u16).collect(),
            b.iter().map(|x| Value::Bool(*x)).collect(),
        )),
        Response::Registers(r) => {
            let vals = r
                .chunks(per as usize)
                .map(|c| codec.decode_registers(c))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((r, vals))
        }
        other => Err(CommissionError::Unexpected(other)),
    }
}

/// Write `value` (encoded with `codec`) to a coil or holding register.
pub async fn write(
    t: &mut dyn Transport,
    unit: u8,
    table: Table,
    address: u16,
    codec: &Codec,
    value: &Value,
    timeout: Duration,
) -> Result<Request, CommissionError> {
    let p = crate::config::Point {
        name: "cli".into(),
        table,
        address,
        codec: codec.clone(),
        unit: None,
        interval: Duration::from_secs(1),
        on_change: false,
        deadband: 0.0,
        writable: true,
    };
    let req = {
        let t2: &mut dyn Transport = &mut *t;
        encode_write(&p, value, async move {
            match t2
                .transact(
                    unit,
                    &Request::Read {
                        table: Table::Holding,
                        address,
                        count: 1,
                    },
                    timeout,
                )
                .await
            {
                Ok(Response::Registers(r)) if r.len() == 1 => Ok(r[0]),
                Ok(_) => Err(WriteError::Transact(TransactError::Garbage(
                    "short read".into(),
                ))),
                Err(e) => Err(WriteError::Transact(e)),
            }
        })
        .await?
    };
    t.transact(unit, &req, timeout).await?;
    Ok(req)
}

/// `weir modbus …`
#[derive(Debug, clap::Subcommand)]
pub enum ModbusCmd {
    /// Read registers (or coils) and print them raw and decoded.
    Read {
        #[command(flatten)]
        at: CliTarget,
        /// How many values of `--type` to read, one after the other.
        #[arg(long, default_value_t = 1)]
        count: u16,
    },
    /// Encode a value with `--type`/`--order`/`--scale` and write it.
    Write {
        #[command(flatten)]
        at: CliTarget,
        /// JSON (`21.5`, `true`, `"text"`); anything else is taken as a string.
        #[arg(long, allow_hyphen_values = true)]
        value: String,
    },
}

/// Where and what, for `weir modbus read|write`.
#[derive(Debug, clap::Args)]
pub struct CliTarget {
    /// Modbus TCP device: HOST or HOST:PORT (port 502 by default).
    #[arg(long, conflicts_with = "rtu", required_unless_present = "rtu")]
    pub tcp: Option<String>,
    /// Serial port of an RTU line, e.g. /dev/ttyUSB0.
    #[arg(long)]
    pub rtu: Option<PathBuf>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// none | even | odd
    #[arg(long, default_value = "none")]
    pub parity: String,
    #[arg(long, default_value_t = 1)]
    pub stop_bits: u8,
    /// Unit id (slave address).
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// coil | discrete_input | holding | input
    #[arg(long, default_value = "holding")]
    pub table: String,
    /// 0-based address.
    #[arg(long)]
    pub address: u16,
    /// bool | u16 | i16 | u32 | i32 | u64 | i64 | f32 | f64 | string (default: bool for coils and
    /// discrete inputs, u16 for registers).
    #[arg(long = "type")]
    pub ty: Option<String>,
    /// ABCD | CDAB | BADC | DCBA
    #[arg(long, default_value = "ABCD")]
    pub order: String,
    /// A bool in bit 0–15 of a register.
    #[arg(long)]
    pub bit: Option<u8>,
    /// Registers of a string.
    #[arg(long, default_value_t = 1)]
    pub length: u16,
    #[arg(long, default_value_t = 1.0, allow_hyphen_values = true)]
    pub scale: f64,
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub offset: f64,
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
}

/// A command-line argument that does not make sense.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Run `weir modbus …`; returns what to print.
pub async fn run_cli(cmd: ModbusCmd) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let (at, write_value, count) = match cmd {
        ModbusCmd::Read { at, count } => (at, None, count),
        ModbusCmd::Write { at, value } => (at, Some(value), 1),
    };
    let table: Table = at.table.parse().map_err(UsageError)?;
    let ty: crate::DataType = match &at.ty {
        Some(t) => t.parse().map_err(UsageError)?,
        None if table.is_bits() => crate::DataType::Bool,
        None => crate::DataType::U16,
    };
    let mut codec = Codec::new(ty, at.order.parse().map_err(UsageError)?);
    codec.bit = at.bit;
    codec.length = at.length;
    codec.scale = at.scale;
    codec.offset = at.offset;
    if let Some(b) = at.bit {
        if b > 15 || ty != crate::DataType::Bool {
            return Err(UsageError("--bit takes 0-15 and --type bool".into()).into());
        }
    }
    let parity = match at.parity.as_str() {
        "none" => Parity::None,
        "even" => Parity::Even,
        "odd" => Parity::Odd,
        p => return Err(UsageError(format!("--parity {p}: none, even or odd")).into()),
    };
    let target = match (&at.tcp, &at.rtu) {
        (Some(t), _) => {
            let (host, port) = match t.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| UsageError(format!("--tcp {t}: bad port")))?,
                ),
                None => (t.clone(), 502),
            };
            Target::Tcp { host, port }
        }
        (None, Some(p)) => Target::Rtu {
            port: p.clone(),
            baud: at.baud,
            parity,
            stop_bits: at.stop_bits,
        },
        (None, None) => return Err(UsageError("give --tcp or --rtu".into()).into()),
    };
    let timeout = Duration::from_millis(at.timeout_ms);
    let mut t = open(&target, timeout).await?;
    match write_value {
        None => {
            let (raw, values) = read(
                t.as_mut(),
                at.unit,
                table,
                at.address,
                &codec,
                count,
                timeout,
            )
            .await?;
            let per = if table.is_bits() {
                1
            } else {
                codec.registers() as usize
            };
            let mut out = String::new();
            for (i, v) in values.iter().enumerate() {
                let regs: Vec<String> = raw[i * per..(i + 1) * per]
                    .iter()
                    .map(|r| format!("{r:#06x}"))
                    .collect();
                out.push_str(&format!(
                    "{table} {} [{}] {}\n",
                    at.address as usize + i * per,
                    regs.join(" "),
                    show(v)
                ));
            }
            Ok(out)
        }
        Some(text) => {
            let v = match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Bool(b)) => Value::Bool(b),
                Ok(serde_json::Value::Number(n)) => match n.as_i64() {
                    Some(i) => Value::I64(i),
                    None => Value::F64(n.as_f64().unwrap_or(f64::NAN)),
                },
                Ok(serde_json::Value::String(s)) => Value::from(s.as_str()),
                _ => Value::from(text.as_str()),
            };
            let req = write(t.as_mut(), at.unit, table, at.address, &codec, &v, timeout).await?;
            Ok(format!("ok: {}\n", written(&req)))
        }
    }
}

/// What a write request wrote, as `weir modbus write` prints it: `holding 4 [0xffd6]`.
fn written(req: &Request) -> String {
    let regs = |a: &u16, v: &[u16]| {
        let v: Vec<String> = v.iter().map(|r| format!("{r:#06x}")).collect();
        format!("holding {a} [{}]", v.join(" "))
    };
    match req {
        Request::WriteCoil { address, value } => format!("coil {address} {value}"),
        Request::WriteCoils { address, values } => format!("coils {address} {values:?}"),
        Request::WriteRegister { address, value } => regs(address, &[*value]),
        Request::WriteRegisters { address, values } => regs(address, values),
        Request::Read { .. } => String::from("nothing (a read)"),
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::F64(f) => f.to_string(),
        Value::I64(i) => i.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Str(s) => format!("{s:?}"),
    }
}
