//! Modbus PDUs and the RTU frame: the bytes on the wire.
//!
//! # Wire formats
//!
//! * PDU (Modbus Application Protocol V1.1b3, §4.1): `function code (1) | data (0–252)`, all
//!   16-bit fields big-endian (§4.2).
//! * Exception response (§7): `function code | 0x80`, then one exception code.
//! * RTU ADU (Modbus over Serial Line V1.02, §2.5.1): `address (1) | PDU | CRC (2)`, the CRC-16
//!   (polynomial 0xA001 reflected, initial 0xFFFF, §6.2.2) sent low byte first. Frames are
//!   separated by at least 3.5 character times of silence (§2.5.1.1); above 19200 baud a fixed
//!   1.75 ms is recommended.
//!
//! Invariants: a request built here respects the per-function quantity limits of the spec, so an
//! [`Request`] that encodes is one a conforming server accepts; a response is checked against the
//! request that caused it (function, byte count, echoed address and quantity) before it is used.

use std::fmt;

/// §6.1 Read Coils.
pub const FC_READ_COILS: u8 = 0x01;
/// §6.2 Read Discrete Inputs.
pub const FC_READ_DISCRETE_INPUTS: u8 = 0x02;
/// §6.3 Read Holding Registers.
pub const FC_READ_HOLDING_REGISTERS: u8 = 0x03;
/// §6.4 Read Input Registers.
pub const FC_READ_INPUT_REGISTERS: u8 = 0x04;
/// §6.5 Write Single Coil.
pub const FC_WRITE_SINGLE_COIL: u8 = 0x05;
/// §6.6 Write Single Register.
pub const FC_WRITE_SINGLE_REGISTER: u8 = 0x06;
/// §6.11 Write Multiple Coils.
pub const FC_WRITE_MULTIPLE_COILS: u8 = 0x0F;
/// §6.12 Write Multiple Registers.
pub const FC_WRITE_MULTIPLE_REGISTERS: u8 = 0x10;

/// §6.3/§6.4: at most 125 registers per read request.
pub const MAX_READ_REGISTERS: u16 = 125;
/// §6.1/§6.2: at most 2000 coils or discrete inputs per read request.
pub const MAX_READ_BITS: u16 = 2000;
/// §6.12: at most 123 registers per write request.
pub const MAX_WRITE_REGISTERS: u16 = 123;
/// §6.11: at most 1968 coils per write request.
pub const MAX_WRITE_COILS: u16 = 1968;
/// §6.5: the value of a coil switched on in Write Single Coil.
pub const COIL_ON: u16 = 0xFF00;
/// Serial Line V1.02 §2.5.1: an RTU frame is at most 256 bytes.
pub const MAX_RTU_FRAME: usize = 256;

/// The four data tables (Modbus Application Protocol §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Coil,
    DiscreteInput,
    Holding,
    Input,
}

impl Table {
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::DiscreteInput)
    }
    pub fn read_fc(self) -> u8 {
        match self {
            Table::Coil => FC_READ_COILS,
            Table::DiscreteInput => FC_READ_DISCRETE_INPUTS,
            Table::Holding => FC_READ_HOLDING_REGISTERS,
            Table::Input => FC_READ_INPUT_REGISTERS,
        }
    }
    pub fn max_read(self) -> u16 {
        if self.is_bits() {
            MAX_READ_BITS
        } else {
            MAX_READ_REGISTERS
        }
    }
    pub fn writable(self) -> bool {
        matches!(self, Table::Coil | Table::Holding)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Table::Coil => "coil",
            Table::DiscreteInput => "discrete_input",
            Table::Holding => "holding",
            Table::Input => "input",
        })
    }
}

impl std::str::FromStr for Table {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "coil" | "coils" => Ok(Table::Coil),
            "discrete_input" | "discrete" => Ok(Table::DiscreteInput),
            "holding" => Ok(Table::Holding),
            "input" => Ok(Table::Input),
            _ => Err(format!(
                "unknown table `{s}`: coil, discrete_input, holding, input"
            )),
        }
    }
}

/// A request this adapter sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Read {
        table: Table,
        address: u16,
        count: u16,
    },
    WriteCoil {
        address: u16,
        value: bool,
    },
    WriteRegister {
        address: u16,
        value: u16,
    },
    WriteCoils {
        address: u16,
        values: Vec<bool>,
    },
    WriteRegisters {
        address: u16,
        values: Vec<u16>,
    },
}

/// A successful response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Bits(Vec<bool>),
    Registers(Vec<u16>),
    Written,
}

/// A Modbus exception (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception(pub u8);

impl Exception {
    /// The spec's name, in snake case: this is the reason on quality and command results.
    pub fn name(self) -> &'static str {
        match self.0 {
            0x01 => "illegal_function",
            0x02 => "illegal_data_address",
            0x03 => "illegal_data_value",
            0x04 => "server_device_failure",
            0x05 => "acknowledge",
            0x06 => "server_device_busy",
            0x08 => "memory_parity_error",
            0x0A => "gateway_path_unavailable",
            0x0B => "gateway_target_failed_to_respond",
            _ => "unknown_exception",
        }
    }
}

impl fmt::Display for Exception {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "modbus exception {:#04x} {}", self.0, self.name())
    }
}

/// A response that does not fit its request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed response: {0}")]
pub struct Malformed(pub String);

/// A request that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {0}")]
pub struct InvalidRequest(pub String);

impl Request {
    pub fn function(&self) -> u8 {
        match self {
            Request::Read { table, .. } => table.read_fc(),
            Request::WriteCoil { .. } => FC_WRITE_SINGLE_COIL,
            Request::WriteRegister { .. } => FC_WRITE_SINGLE_REGISTER,
            Request::WriteCoils { .. } => FC_WRITE_MULTIPLE_COILS,
            Request::WriteRegisters { .. } => FC_WRITE_MULTIPLE_REGISTERS,
        }
    }

    /// The PDU bytes, checked against the spec's quantity limits.
    pub fn encode(&self) -> Result<Vec<u8>, InvalidRequest> {
        let mut p = vec![self.function()];
        let limit = |n: usize, max: u16, what: &str| {
            if n == 0 || n > max as usize {
                Err(InvalidRequest(format!("{n} {what}: must be 1–{max}")))
            } else {
                Ok(())
            }
        };
        match self {
            Request::Read {
                table,
                address,
                count,
            } => {
                limit(*count as usize, table.max_read(), "items to read")?;
                if *address as u32 + *count as u32 > 0x1_0000 {
                    return Err(InvalidRequest("address range beyond 65535".into()));
                }
                p.extend(address.to_be_bytes());
                p.extend(count.to_be_bytes());
            }
            Request::WriteCoil { address, value } => {
                p.extend(address.to_be_bytes());
                p.extend(if *value { COIL_ON } else { 0 }.to_be_bytes());
            }
            Request::WriteRegister { address, value } => {
                p.extend(address.to_be_bytes());
                p.extend(value.to_be_bytes());
            }
            Request::WriteCoils { address, values } => {
                limit(values.len(), MAX_WRITE_COILS, "coils to write")?;
                p.extend(address.to_be_bytes());
                p.extend((values.len() as u16).to_be_bytes());
                let bytes = values.len().div_ceil(8);
                p.push(bytes as u8);
                let mut packed = vec![0u8; bytes];
                for (i, b) in values.iter().enumerate() {
                    if *b {
                        packed[i / 8] |= 1 << (i % 8);
                    }
                }
                p.extend(packed);
            }
            Request::WriteRegisters { address, values } => {
                limit(values.len(), MAX_WRITE_REGISTERS, "registers to write")?;
                p.extend(address.to_be_bytes());
                p.extend((values.len() as u16).to_be_bytes());
                p.push((values.len() * 2) as u8);
                for v in values {
                    p.extend(v.to_be_bytes());
                }
            }
        }
        Ok(p)
    }

    /// Decode the response PDU `pdu` to this request: `Err(Ok(exception))` for an exception
    /// response, `Err(Err(malformed))` when it does not fit.
    pub fn decode_response(&self, pdu: &[u8]) -> Result<Response, Result<Exception, Malformed>> {
        let bad = |m: String| Err(Err(Malformed(m)));
        let Some(&fc) = pdu.first() else {
            return bad("empty PDU".into());
        };
        if fc == self.function() | 0x80 {
            return match pdu.get(1) {
                Some(&code) if pdu.len() == 2 => Err(Ok(Exception(code))),
                _ => bad("exception response of the wrong length".into()),
            };
        }
        if fc != self.function() {
            return bad(format!(
                "function {fc:#04x} in answer to {:#04x}",
                self.function()
            ));
        }
        match self {
            Request::Read { table, count, .. } => {
                let n = pdu.get(1).copied().unwrap_or(0) as usize;
                if pdu.len() != 2 + n {
                    return bad(format!(
                        "byte count {n} but {} data bytes",
                        pdu.len().saturating_sub(2)
                    ));
                }
                let data = &pdu[2..];
                if table.is_bits() {
                    if n != (*count as usize).div_ceil(8) {
                        return bad(format!("{n} bytes for {count} bits"));
                    }
                    Ok(Response::Bits(
                        (0..*count as usize)
                            .map(|i| data[i / 8] >> (i % 8) & 1 == 1)
                            .collect(),
                    ))
                } else {
                    if n != *count as usize * 2 {
                        return bad(format!("{n} bytes for {count} registers"));
                    }
                    Ok(Response::Registers(
                        data.chunks(2)
                            .map(|c| u16::from_be_bytes([c[0], c[1]]))
                            .collect(),
                    ))
                }
            }
            _ => {
                // §6.5/§6.6 echo the request; §6.11/§6.12 echo address and quantity.
                let req = self.encode().map_err(|e| Err(Malformed(e.0)))?;
                if pdu.len() != 5 || pdu[..5] != req[..5] {
                    return bad("write response does not echo the request".into());
                }
                Ok(Response::Written)
            }
        }
    }
}

/// CRC-16/MODBUS (Serial Line V1.02 §6.2.2).
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &b in data {
        crc ^= b as u16;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// An RTU frame: address, PDU, CRC low byte first.
pub fn rtu_frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(pdu.len() + 3);
    f.push(unit);
    f.extend_from_slice(pdu);
    let crc = crc16(&f);
    f.extend(crc.to_le_bytes());
    f
}

/// The full length of the RTU response frame whose first bytes are `head`, once it can be known
/// (after 3 bytes), for a request with function `fc`.
pub fn rtu_response_len(fc: u8, head: &[u8]) -> Option<usize> {
    let got_fc = *head.get(1)?;
    if got_fc & 0x80 != 0 {
        return Some(5); // address, fc|0x80, code, CRC
    }
    match fc {
        FC_READ_COILS
        | FC_READ_DISCRETE_INPUTS
        | FC_READ_HOLDING_REGISTERS
        | FC_READ_INPUT_REGISTERS => Some(3 + *head.get(2)? as usize + 2),
        _ => Some(8), // address, fc, address (2), value/quantity (2), CRC
    }
}

/// Bytes of the RTU response to `req` (for wire-time calculations).
pub fn rtu_response_size(req: &Request) -> usize {
    match req {
        Request::Read { table, count, .. } => {
            let data = if table.is_bits() {
                (*count as usize).div_ceil(8)
            } else {
                *count as usize * 2
            };
            5 + data
        }
        _ => 8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_spec_example() {
        // Serial Line V1.02 §6.2.2 example frame "02 07" has CRC 0x1241, sent 41 12.
        assert_eq!(crc16(&[0x02, 0x07]), 0x1241);
        assert_eq!(rtu_frame(2, &[7]), vec![0x02, 0x07, 0x41, 0x12]);
        // A classic read: 01 03 00 00 00 0A -> C5 CD
        assert_eq!(rtu_frame(1, &[3, 0, 0, 0, 10])[6..], [0xC5, 0xCD]);
    }

    #[test]
    fn reads_and_writes_encode_and_decode() {
        let r = Request::Read {
            table: Table::Holding,
            address: 0x6B,
            count: 3,
        };
        assert_eq!(r.encode().unwrap(), vec![3, 0, 0x6B, 0, 3]);
        assert_eq!(
            r.decode_response(&[3, 6, 0x02, 0x2B, 0, 0, 0, 0x64]),
            Ok(Response::Registers(vec![0x022B, 0, 0x64]))
        );
        assert_eq!(r.decode_response(&[0x83, 2]), Err(Ok(Exception(2))));
        assert!(matches!(
            r.decode_response(&[3, 4, 0, 0, 0, 0]),
            Err(Err(_))
        ));
        let c = Request::Read {
            table: Table::Coil,
            address: 19,
            count: 10,
        };
        // §6.1 example: coils 20-29 -> CD 01
        assert_eq!(
            c.decode_response(&[1, 2, 0xCD, 0x01]),
            Ok(Response::Bits(vec![
                true, false, true, true, false, false, true, true, true, false
            ]))
        );
        let w = Request::WriteCoils {
            address: 19,
            values: vec![
                true, false, true, true, false, false, true, true, true, false,
            ],
        };
        // §6.11 example
        assert_eq!(
            w.encode().unwrap(),
            vec![0x0F, 0, 0x13, 0, 0x0A, 2, 0xCD, 0x01]
        );
        assert_eq!(
            w.decode_response(&[0x0F, 0, 0x13, 0, 0x0A]),
            Ok(Response::Written)
        );
        assert!(Request::Read {
            table: Table::Input,
            address: 0,
            count: 126
        }
        .encode()
        .is_err());
    }

    /// Found by the `modbus_rtu` fuzz target: a read answered by a lone function code made the
    /// error message compute `len - 2` and overflow (a panic in debug builds).
    #[test]
    fn a_read_answered_by_a_lone_function_code_is_malformed() {
        let r = Request::Read {
            table: Table::Holding,
            address: 0,
            count: 1,
        };
        assert_eq!(
            r.decode_response(&[3]),
            Err(Err(Malformed("byte count 0 but 0 data bytes".into())))
        );
    }

    #[test]
    fn rtu_lengths() {
        assert_eq!(rtu_response_len(3, &[1, 3, 6]), Some(11));
        assert_eq!(rtu_response_len(3, &[1, 0x83]), Some(5));
        assert_eq!(rtu_response_len(6, &[1, 6]), Some(8));
        assert_eq!(rtu_response_len(3, &[1]), None);
        assert_eq!(Exception(2).name(), "illegal_data_address");
    }
}
