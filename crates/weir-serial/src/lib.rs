//! Serial ports for Weir's adapters (Modbus RTU lines, a Zigbee coordinator stick): the line
//! settings as they are written in gateway.yaml, their validation, and opening a port as an async
//! byte stream.
//!
//! ```yaml
//! serial: { port: /dev/ttyUSB0, baud: 115200, parity: none, data_bits: 8, stop_bits: 1, flow_control: none }
//! ```
//!
//! Invariants:
//!
//! * [`SerialSettings::open`] either applies every setting to the port, or — only when the kernel
//!   or a user-mode emulator such as qemu does not implement the serial ioctls (`ENOSYS`) — opens
//!   the device as it is, without settings, and logs a warning. A pty (the test line) needs no
//!   settings; a real UART always implements them. [`SerialStream::is_configured`] says which.
//! * Every error names the port ([`OpenError`]).
//! * A [`SerialStream`] is non-blocking and driven by the tokio reactor; it must be used inside a
//!   runtime.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// Flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowControl {
    #[default]
    None,
    /// RTS/CTS.
    Hardware,
    /// XON/XOFF.
    Software,
}

/// A serial port and its line settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSettings {
    /// The device, e.g. `/dev/ttyUSB0` or `/dev/serial/by-id/…`.
    pub port: PathBuf,
    /// Line speed in bits per second (no default: devices differ, and a wrong guess reads noise).
    pub baud: u32,
    #[serde(default)]
    pub parity: Parity,
    /// 5–8.
    #[serde(default = "default_data_bits")]
    pub data_bits: u8,
    /// 1 or 2.
    #[serde(default = "default_stop_bits")]
    pub stop_bits: u8,
    #[serde(default)]
    pub flow_control: FlowControl,
}

fn default_data_bits() -> u8 {
    8
}
fn default_stop_bits() -> u8 {
    1
}

/// A port could not be opened.
///
/// The cause is part of the message (Weir prints errors with `Display` only), so it is not also
/// exposed as `source()`: a chain printer would repeat it.
#[derive(Debug, thiserror::Error)]
#[error("cannot open serial port {}: {error}", port.display())]
pub struct OpenError {
    pub port: PathBuf,
    pub error: io::Error,
}

impl OpenError {
    pub fn kind(&self) -> io::ErrorKind {
        self.error.kind()
    }
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> io::Error {
        io::Error::new(e.kind(), e.to_string())
    }
}

impl SerialSettings {
    /// `port` at `baud`, 8N1, no flow control.
    pub fn new(port: impl Into<PathBuf>, baud: u32) -> Self {
        SerialSettings {
            port: port.into(),
            baud,
            parity: Parity::None,
            data_bits: default_data_bits(),
            stop_bits: default_stop_bits(),
            flow_control: FlowControl::None,
        }
    }

    /// Bits per character on the wire: start + data + parity + stop.
    pub fn bits_per_char(&self) -> u32 {
        1 + self.data_bits as u32 + (self.parity != Parity::None) as u32 + self.stop_bits as u32
    }

    /// Problems, each as (key, message); empty when the settings can be applied.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.port.as_os_str().is_empty() {
            p.push(("port", "must not be empty".to_string()));
        }
        if self.baud == 0 {
            p.push(("baud", "must be positive".to_string()));
        }
        if !(5..=8).contains(&self.data_bits) {
            p.push(("data_bits", "must be 5–8".to_string()));
        }
        if !(1..=2).contains(&self.stop_bits) {
            p.push(("stop_bits", "must be 1 or 2".to_string()));
        }
        p
    }

    /// Open the port with these settings (see the module docs for the emulator fallback).
    pub fn open(&self) -> Result<SerialStream, OpenError> {
        use tokio_serial::SerialPortBuilderExt;
        let err = |error| OpenError {
            port: self.port.clone(),
            error,
        };
        let b = tokio_serial::new(self.port.to_string_lossy(), self.baud)
            .parity(match self.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            })
            .data_bits(match self.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            })
            .stop_bits(if self.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            })
            .flow_control(match self.flow_control {
                FlowControl::None => tokio_serial::FlowControl::None,
                FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
                FlowControl::Software => tokio_serial::FlowControl::Software,
            });
        match b.open_native_async().map_err(io::Error::from) {
            Ok(port) => Ok(SerialStream(Inner::Native(port))),
            Err(e) if is_enosys(&e) => {
                tracing::warn!(
                    port = %self.port.display(),
                    "serial line settings are not supported here ({e}); using the port as it is"
                );
                Ok(SerialStream(Inner::Raw(
                    RawTty::open(&self.port).map_err(err)?,
                )))
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// serialport reports `ENOSYS` as an error of unknown kind carrying nix's description of it.
fn is_enosys(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported
        || e.raw_os_error() == Some(libc::ENOSYS)
        || e.to_string() == "Function not implemented"
}

/// An open serial port: an async byte stream.
#[derive(Debug)]
pub struct SerialStream(Inner);

#[derive(Debug)]
enum Inner {
    Native(tokio_serial::SerialStream),
    Raw(RawTty),
}

impl SerialStream {
    /// Whether the line settings were applied (false: opened as it is, see the module docs).
    pub fn is_configured(&self) -> bool {
        matches!(self.0, Inner::Native(_))
    }
}

impl AsyncRead for SerialStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Inner::Native(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Raw(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SerialStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.0 {
            Inner::Native(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Raw(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Inner::Native(s) => Pin::new(s).poll_flush(cx),
            Inner::Raw(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.0 {
            Inner::Native(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Raw(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A terminal device used without changing its settings: non-blocking reads and writes through
/// the runtime's reactor.
#[derive(Debug)]
pub struct RawTty {
    rx: tokio::net::unix::pipe::Receiver,
    tx: tokio::net::unix::pipe::Sender,
}

impl RawTty {
    /// Open `path`, which must be a character device.
    pub fn open(path: &Path) -> io::Result<RawTty> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        if !file.metadata()?.file_type().is_char_device() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a terminal device",
            ));
        }
        let other = file.try_clone()?;
        Ok(RawTty {
            rx: tokio::net::unix::pipe::Receiver::from_file_unchecked(file)?,
            tx: tokio::net::unix::pipe::Sender::from_file_unchecked(other)?,
        })
    }
}

impl AsyncRead for RawTty {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.rx).poll_read(cx, buf)
    }
}

impl AsyncWrite for RawTty {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tx).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tx).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_with_defaults_and_refuse_unknown_keys() {
        let s: SerialSettings = serde_yaml::from_str("{port: /dev/ttyACM0, baud: 115200}").unwrap();
        assert_eq!(s, SerialSettings::new("/dev/ttyACM0", 115200));
        assert_eq!(s.bits_per_char(), 10);
        let s: SerialSettings = serde_yaml::from_str(
            "{port: /dev/x, baud: 9600, parity: even, stop_bits: 2, flow_control: hardware}",
        )
        .unwrap();
        assert_eq!(
            (s.parity, s.stop_bits, s.flow_control, s.bits_per_char()),
            (Parity::Even, 2, FlowControl::Hardware, 12)
        );
        let e = serde_yaml::from_str::<SerialSettings>("{port: /dev/x, baud: 9600, bauds: 1}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `bauds`"), "{e}");
        let e = serde_yaml::from_str::<SerialSettings>("{port: /dev/x}")
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `baud`"), "{e}");
    }

    #[test]
    fn validation_names_each_bad_key() {
        let mut s = SerialSettings::new("", 0);
        s.data_bits = 9;
        s.stop_bits = 0;
        let keys: Vec<&str> = s.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["port", "baud", "data_bits", "stop_bits"]);
        assert!(SerialSettings::new("/dev/x", 9600).validate().is_empty());
    }

    #[tokio::test]
    async fn open_errors_name_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ttyNOPE");
        let e = SerialSettings::new(&missing, 9600).open().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("cannot open serial port {}: ", missing.display())),
            "{msg}"
        );
        // A regular file is not a serial port, whichever way it is opened.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let msg = SerialSettings::new(&file, 9600)
            .open()
            .unwrap_err()
            .to_string();
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        // Converted for io-based callers, the message keeps the port.
        let io: io::Error = SerialSettings::new(&missing, 9600)
            .open()
            .unwrap_err()
            .into();
        assert!(io.to_string().contains("ttyNOPE"), "{io}");
    }
}
