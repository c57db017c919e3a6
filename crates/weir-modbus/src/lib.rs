//! Weir's Modbus adapter: RTU over RS485/RS232 serial lines and Modbus TCP (and RTU framing over
//! TCP for serial-to-Ethernet gateways).
//!
//! * [`codec`] — registers ⇄ typed values (every type × word/byte order, bits, scale, offset);
//! * [`pdu`] — Modbus PDUs, exceptions, the RTU frame and its CRC;
//! * [`plan`] — merging points into the fewest read requests;
//! * [`config`] — the `modbus:` source section, profiles, validation;
//! * [`transport`] — one transaction at a time over a line;
//! * [`source`] — the running adapter: one task per line, fault isolation, writes, metrics;
//! * [`commission`] — one-off reads and writes for `weir modbus read|write`.
//!
//! Invariant: at most one transaction is in flight on a line (serial port or TCP connection);
//! it is owned by exactly one task.
//!
//! Layering (imports point down only, no cycles): `codec`, `pdu` → `plan`, `transport` →
//! `config` → `source` → `commission`. Opening a serial port (line settings, the emulator/pty
//! fallback) is the `weir-serial` crate's, shared with the other serial adapters; commands are
//! fanned out to the lines with `weir_core::CommandFanout`.

pub mod codec;
pub mod commission;
pub mod config;
pub mod pdu;
pub mod plan;
pub mod source;
pub mod transport;

pub use codec::{Codec, DataType, Order};
pub use config::{ModbusConfig, Resolved};
pub use source::ModbusBuilder;
