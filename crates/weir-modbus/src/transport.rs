//! Transports: one Modbus transaction at a time over a serial line (RTU framing), a TCP stream
//! with RTU framing (RTU-over-TCP gateways), or Modbus TCP (MBAP framing, through tokio-modbus).
//!
//! Invariants: [`Transport::transact`] sends exactly one request and waits at most the response
//! timeout for its answer; a transport is never used by two tasks (the line task owns it), so a
//! line never carries two transactions at once. On RTU the silence before each request is at least
//! the inter-frame delay (Modbus over Serial Line V1.02 §2.5.1.1), and bytes that arrive between
//! transactions (late answers, noise) are discarded and counted before the next request, which is
//! how the line resynchronises. A frame whose CRC fails is counted and reported as
//! [`TransactError::Crc`]; the connection stays open.
//!
//! The inter-frame wait uses the runtime's timer, whose resolution is 1 ms: the silence before a
//! request is at least t3.5 and may be up to about 1 ms longer (measured by the benchmark).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::pdu::{self, Exception, Request, Response, Table, MAX_RTU_FRAME};

/// Why a transaction did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum TransactError {
    #[error("{0}")]
    Exception(Exception),
    #[error("timeout")]
    Timeout,
    #[error("crc error")]
    Crc,
    #[error("garbled response: {0}")]
    Garbage(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The connection is broken: the caller drops the transport and reopens it.
    #[error("connection lost: {0}")]
    Io(#[from] io::Error),
}

impl TransactError {
    /// The short reason put on readings' quality and command results.
    pub fn reason(&self) -> String {
        match self {
            TransactError::Exception(e) => e.name().to_string(),
            TransactError::Timeout => "timeout".into(),
            TransactError::Crc => "crc_error".into(),
            TransactError::Garbage(_) => "garbled_response".into(),
            TransactError::Invalid(m) => format!("invalid_request: {m}"),
            TransactError::Io(e) => format!("connection_lost: {e}"),
        }
    }
    /// Whether the connection must be reopened.
    pub fn is_fatal(&self) -> bool {
        matches!(self, TransactError::Io(_))
    }
}

/// One Modbus transaction at a time.
#[async_trait]
pub trait Transport: Send {
    async fn transact(
        &mut self,
        unit: u8,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransactError>;
    /// Bytes discarded as noise since the last call (RTU only).
    fn take_garbage_bytes(&mut self) -> u64 {
        0
    }
}

/// Modbus RTU framing over any byte stream (a serial port, a pty, a TCP socket to an RTU gateway).
pub struct RtuTransport<S> {
    io: S,
    inter_frame: Duration,
    last_activity: Option<Instant>,
    garbage: u64,
}

impl<S> std::fmt::Debug for RtuTransport<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RtuTransport")
            .field("inter_frame", &self.inter_frame)
            .finish()
    }
}

/// The RTU inter-frame silence t3.5 for `baud` with `bits_per_char` (start + data + parity + stop)
/// bits: 3.5 character times, or 1.75 ms above 19200 baud (Serial Line V1.02 §2.5.1.1).
pub fn inter_frame_delay(baud: u32, bits_per_char: u32) -> Duration {
    if baud > 19_200 {
        Duration::from_micros(1750)
    } else {
        Duration::from_secs_f64(3.5 * bits_per_char as f64 / baud.max(1) as f64)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> RtuTransport<S> {
    pub fn new(io: S, inter_frame: Duration) -> Self {
        RtuTransport {
            io,
            inter_frame,
            last_activity: None,
            garbage: 0,
        }
    }

    /// Discard whatever is waiting to be read (late answers of timed-out slaves, noise).
    async fn drain(&mut self) -> io::Result<()> {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(Duration::ZERO, self.io.read(&mut buf)).await {
                Ok(Ok(0)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the line was closed",
                    ))
                }
                Ok(Ok(n)) => {
                    self.garbage += n as u64;
                    self.last_activity = Some(Instant::now());
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl<S: AsyncRead + AsyncWrite + Unpin + Send> Transport for RtuTransport<S> {
    async fn transact(
        &mut self,
        unit: u8,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransactError> {
        let pdu = req.encode().map_err(|e| TransactError::Invalid(e.0))?;
        let frame = pdu::rtu_frame(unit, &pdu);
        self.drain().await?;
        if let Some(t) = self.last_activity {
            tokio::time::sleep_until(t + self.inter_frame).await;
        }
        self.io.write_all(&frame).await?;
        self.io.flush().await?;
        let deadline = Instant::now() + timeout;
        let mut buf = Vec::with_capacity(MAX_RTU_FRAME);
        let mut chunk = [0u8; MAX_RTU_FRAME];
        let fc = req.function();
        let result = loop {
            if let Some(len) = pdu::rtu_response_len(fc, &buf) {
                if buf[0] != unit {
                    break Err(TransactError::Garbage(format!(
                        "address {} in answer to {unit}",
                        buf[0]
                    )));
                }
                if len > MAX_RTU_FRAME {
                    break Err(TransactError::Garbage(format!("frame of {len} bytes")));
                }
                if buf.len() >= len {
                    let (body, crc) = buf[..len].split_at(len - 2);
                    if pdu::crc16(body).to_le_bytes() != crc {
                        break Err(TransactError::Crc);
                    }
                    if buf.len() > len {
                        self.garbage += (buf.len() - len) as u64;
                    }
                    break match req.decode_response(&body[1..]) {
                        Ok(r) => Ok(r),
                        Err(Ok(e)) => Err(TransactError::Exception(e)),
                        Err(Err(m)) => Err(TransactError::Garbage(m.0)),
                    };
                }
            }
            match tokio::time::timeout_at(deadline, self.io.read(&mut chunk)).await {
                Err(_) => {
                    self.garbage += buf.len() as u64;
                    break Err(TransactError::Timeout);
                }
                Ok(Ok(0)) => {
                    return Err(TransactError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the line was closed",
                    )))
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(TransactError::Io(e)),
            }
        };
        self.last_activity = Some(Instant::now());
        if let Err(TransactError::Garbage(_) | TransactError::Crc) = &result {
            self.garbage += buf.len() as u64;
        }
        result
    }

    fn take_garbage_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.garbage)
    }
}

/// Open a serial port with its line settings (through [`weir_serial`], which also handles
/// emulators without the serial ioctls), as an RTU transport. The error names the port.
pub fn open_serial(
    s: &weir_serial::SerialSettings,
    inter_frame: Duration,
) -> Result<Box<dyn Transport>, weir_serial::OpenError> {
    Ok(Box::new(RtuTransport::new(s.open()?, inter_frame)))
}

/// Modbus TCP (MBAP header, Modbus Messaging on TCP/IP Implementation Guide V1.0b §3.1.3) through
/// tokio-modbus's client.
pub struct TcpTransport {
    ctx: tokio_modbus::client::Context,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TcpTransport")
    }
}

impl TcpTransport {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Self> {
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timeout"))??;
        stream.set_nodelay(true)?;
        Ok(TcpTransport {
            ctx: tokio_modbus::client::tcp::attach(stream),
        })
    }
}

#[async_trait]
impl Transport for TcpTransport {
    async fn transact(
        &mut self,
        unit: u8,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, TransactError> {
        use tokio_modbus::client::{Reader, Writer};
        use tokio_modbus::slave::SlaveContext;
        req.encode().map_err(|e| TransactError::Invalid(e.0))?;
        self.ctx.set_slave(tokio_modbus::Slave(unit));
        let ctx = &mut self.ctx;
        let fut = async move {
            type R = tokio_modbus::Result<Response>;
            let r: R = match req {
                Request::Read {
                    table,
                    address,
                    count,
                } => match table {
                    Table::Coil => ctx
                        .read_coils(*address, *count)
                        .await
                        .map(|r| r.map(Response::Bits)),
                    Table::DiscreteInput => ctx
                        .read_discrete_inputs(*address, *count)
                        .await
                        .map(|r| r.map(Response::Bits)),
                    Table::Holding => ctx
                        .read_holding_registers(*address, *count)
                        .await
                        .map(|r| r.map(Response::Registers)),
                    Table::Input => ctx
                        .read_input_registers(*address, *count)
                        .await
                        .map(|r| r.map(Response::Registers)),
                },
                Request::WriteCoil { address, value } => ctx
                    .write_single_coil(*address, *value)
                    .await
                    .map(|r| r.map(|_| Response::Written)),
                Request::WriteRegister { address, value } => ctx
                    .write_single_register(*address, *value)
                    .await
                    .map(|r| r.map(|_| Response::Written)),
                Request::WriteCoils { address, values } => ctx
                    .write_multiple_coils(*address, values)
                    .await
                    .map(|r| r.map(|_| Response::Written)),
                Request::WriteRegisters { address, values } => ctx
                    .write_multiple_registers(*address, values)
                    .await
                    .map(|r| r.map(|_| Response::Written)),
            };
            r
        };
        match tokio::time::timeout(timeout, fut).await {
            Err(_) => Err(TransactError::Timeout),
            Ok(Ok(Ok(r))) => Ok(r),
            Ok(Ok(Err(code))) => Err(TransactError::Exception(Exception(u8::from(code)))),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(TransactError::Io(e)),
            Ok(Err(tokio_modbus::Error::Protocol(p))) => Err(TransactError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                p.to_string(),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::rtu_frame;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    const READ2: Request = Request::Read {
        table: Table::Holding,
        address: 0x10,
        count: 2,
    };

    /// Read one request frame (8 bytes for a read) from the slave's end.
    async fn request(slave: &mut DuplexStream) -> Vec<u8> {
        let mut f = vec![0u8; 8];
        slave.read_exact(&mut f).await.unwrap();
        f
    }

    #[tokio::test]
    async fn rtu_frames_crc_errors_exceptions_noise_and_timeouts() {
        let (master, mut slave) = duplex(1024);
        let mut t = RtuTransport::new(master, Duration::from_micros(100));
        let timeout = Duration::from_millis(200);
        let ok = rtu_frame(5, &[3, 4, 0x12, 0x34, 0xAB, 0xCD]);

        // A good answer, written in two pieces.
        let s = tokio::spawn(async move {
            let f = request(&mut slave).await;
            assert_eq!(f, rtu_frame(5, &[3, 0, 0x10, 0, 2]));
            slave.write_all(&ok[..3]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            slave.write_all(&ok[3..]).await.unwrap();
            slave
        });
        let r = t.transact(5, &READ2, timeout).await.unwrap();
        assert_eq!(r, Response::Registers(vec![0x1234, 0xABCD]));
        let mut slave = s.await.unwrap();

        // A corrupted CRC: counted, the frame's bytes discarded.
        let mut bad = rtu_frame(5, &[3, 4, 0, 1, 0, 2]);
        *bad.last_mut().unwrap() ^= 0xFF;
        let s = tokio::spawn(async move {
            request(&mut slave).await;
            slave.write_all(&bad).await.unwrap();
            slave
        });
        assert!(matches!(
            t.transact(5, &READ2, timeout).await,
            Err(TransactError::Crc)
        ));
        assert_eq!(t.take_garbage_bytes(), 9);
        let mut slave = s.await.unwrap();

        // Noise left on the line is drained before the next request; an exception is an answer.
        slave.write_all(&[0xDE, 0xAD, 0xBE]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let s = tokio::spawn(async move {
            let f = request(&mut slave).await;
            assert_eq!(f[0], 5, "the request starts cleanly after the noise");
            slave.write_all(&rtu_frame(5, &[0x83, 0x02])).await.unwrap();
            slave
        });
        match t.transact(5, &READ2, timeout).await {
            Err(TransactError::Exception(e)) => assert_eq!(e.name(), "illegal_data_address"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.take_garbage_bytes(), 3);
        let mut slave = s.await.unwrap();

        // Another slave's address in the answer: garbled.
        let s = tokio::spawn(async move {
            request(&mut slave).await;
            slave
                .write_all(&rtu_frame(6, &[3, 4, 0, 1, 0, 2]))
                .await
                .unwrap();
            slave
        });
        assert!(matches!(
            t.transact(5, &READ2, timeout).await,
            Err(TransactError::Garbage(_))
        ));
        let mut slave = s.await.unwrap();

        // Silence: a timeout after the response timeout, not before.
        let s = tokio::spawn(async move {
            request(&mut slave).await;
            slave
        });
        let t0 = Instant::now();
        assert!(matches!(
            t.transact(5, &READ2, timeout).await,
            Err(TransactError::Timeout)
        ));
        assert!(t0.elapsed() >= timeout);
        let slave = s.await.unwrap();

        // The other end goes away: the connection is lost.
        drop(slave);
        let e = t.transact(5, &READ2, timeout).await.unwrap_err();
        assert!(e.is_fatal(), "{e:?}");
    }
}
