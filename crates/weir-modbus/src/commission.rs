//! Commissioning: read or write one value of a device without a configuration
//! (`weir modbus read|write`).

use std::path::PathBuf;
use std::time::Duration;

use tokio_serial::SerialPortBuilderExt;
use weir_core::Value;

use crate::codec::Codec;
use crate::config::Parity;
use crate::pdu::{Request, Response, Table};
use crate::source::{encode_write, WriteError};
use crate::transport::{inter_frame_delay, RtuTransport, TcpTransport, TransactError, Transport};

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
    #[error("cannot open {what}: {source}")]
    Open {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Transact(#[from] TransactError),
    #[error("{0}")]
    Codec(#[from] crate::codec::CodecError),
    #[error("{0}")]
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
            let what = port.display().to_string();
            let s = tokio_serial::new(what.clone(), *baud)
                .parity(match parity {
                    Parity::None => tokio_serial::Parity::None,
                    Parity::Even => tokio_serial::Parity::Even,
                    Parity::Odd => tokio_serial::Parity::Odd,
                })
                .stop_bits(if *stop_bits == 2 {
                    tokio_serial::StopBits::Two
                } else {
                    tokio_serial::StopBits::One
                })
                .open_native_async()
                .map_err(|e| CommissionError::Open {
                    what,
                    source: e.into(),
                })?;
            let bits = 1 + 8 + (*parity != Parity::None) as u32 + *stop_bits as u32;
            Ok(Box::new(RtuTransport::new(
                s,
                inter_frame_delay(*baud, bits),
            )))
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
