//! The Z-Stack Monitor and Test (MT) serial protocol, with no I/O: transport frames, command
//! identifiers, a stream decoder and SREQ/SRSP correlation.
//!
//! Reference: Texas Instruments, *Z-Stack Monitor and Test API* (SWRA198), §2 "Monitor and Test
//! transport protocol" (frame format) and §3 (commands by subsystem). The identifiers below cite
//! its sections.
//!
//! Frame (§2.1.1): `SOF(0xFE) | LEN | CMD0 | CMD1 | DATA[LEN] | FCS`, where `CMD0 = TYPE << 5 |
//! SUBSYSTEM` (§2.1.2: type 0 POLL, 1 SREQ, 2 AREQ, 3 SRSP) and `FCS` is the XOR of `LEN`, `CMD0`,
//! `CMD1` and `DATA`. `LEN` is at most 250 (the ZNP's MT buffer; zigpy-znp enforces the same).
//!
//! Invariants:
//! * [`Decoder`] never loses sync for good: bytes before a SOF are counted as stray and dropped;
//!   a frame with a bad FCS or an impossible length is counted and the search for the next SOF
//!   starts at the byte after the bad frame's SOF, so a frame hidden inside garbage is found.
//! * [`Correlator`] holds at most one outstanding SREQ (the ZNP serves one at a time, §2.2); its
//!   SRSP is the next SRSP with the same subsystem and id, or an RPC error (`RPC_ERROR`, §3.1)
//!   naming it. A timeout names the command.

use std::fmt;
use std::time::{Duration, Instant};

/// Start of frame (§2.1.1).
pub const SOF: u8 = 0xFE;
/// Largest `LEN` (§2.1.1: the MT buffer; 250 in Z-Stack 3.x builds).
pub const MAX_PAYLOAD: usize = 250;

/// Command type, bits 7–5 of CMD0 (§2.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmdType {
    Poll = 0,
    Sreq = 1,
    Areq = 2,
    Srsp = 3,
}

impl CmdType {
    fn from_bits(b: u8) -> Option<CmdType> {
        match b {
            0 => Some(CmdType::Poll),
            1 => Some(CmdType::Sreq),
            2 => Some(CmdType::Areq),
            3 => Some(CmdType::Srsp),
            _ => None,
        }
    }
}

/// Subsystems, bits 4–0 of CMD0 (§2.1.2).
pub mod subsystem {
    pub const RPC_ERROR: u8 = 0x00;
    pub const SYS: u8 = 0x01;
    pub const MAC: u8 = 0x02;
    pub const NWK: u8 = 0x03;
    pub const AF: u8 = 0x04;
    pub const ZDO: u8 = 0x05;
    pub const SAPI: u8 = 0x06;
    pub const UTIL: u8 = 0x07;
    pub const APP: u8 = 0x09;
    pub const APP_CNF: u8 = 0x0F;
}

/// A command: subsystem, CMD1 and its name in the MT API document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cmd {
    pub subsystem: u8,
    pub id: u8,
    pub name: &'static str,
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}

const fn cmd(subsystem: u8, id: u8, name: &'static str) -> Cmd {
    Cmd {
        subsystem,
        id,
        name,
    }
}

use subsystem::*;

// Section numbers are those of SWRA198 (rev. 1.14+); where a command has none it is named as the
// document names it, in its subsystem's chapter (MT_SYS §3.8, MT_AF §3.2, MT_ZDO §3.12, MT_UTIL
// §3.10, MT_APP_CNF §3.13).
// MT_SYS (§3.8).
pub const SYS_RESET_REQ: Cmd = cmd(SYS, 0x00, "SYS_RESET_REQ"); // §3.8.1.1 (AREQ)
pub const SYS_PING: Cmd = cmd(SYS, 0x01, "SYS_PING"); // §3.8.1.2
pub const SYS_VERSION: Cmd = cmd(SYS, 0x02, "SYS_VERSION"); // §3.8.1.3
pub const SYS_OSAL_NV_ITEM_INIT: Cmd = cmd(SYS, 0x07, "SYS_OSAL_NV_ITEM_INIT"); // MT_SYS
pub const SYS_OSAL_NV_READ: Cmd = cmd(SYS, 0x08, "SYS_OSAL_NV_READ"); // §3.8.1.8
pub const SYS_OSAL_NV_WRITE: Cmd = cmd(SYS, 0x09, "SYS_OSAL_NV_WRITE"); // §3.8.1.9
pub const SYS_RESET_IND: Cmd = cmd(SYS, 0x80, "SYS_RESET_IND"); // §3.8.2.1 (AREQ)
                                                                // MT_AF (§3.2).
pub const AF_REGISTER: Cmd = cmd(AF, 0x00, "AF_REGISTER"); // MT_AF
pub const AF_DATA_REQUEST: Cmd = cmd(AF, 0x01, "AF_DATA_REQUEST"); // §3.2.1.2
pub const AF_DATA_CONFIRM: Cmd = cmd(AF, 0x80, "AF_DATA_CONFIRM"); // MT_AF callback (AREQ)
pub const AF_INCOMING_MSG: Cmd = cmd(AF, 0x81, "AF_INCOMING_MSG"); // MT_AF callback (AREQ)
                                                                   // MT_ZDO (§3.12).
pub const ZDO_NODE_DESC_REQ: Cmd = cmd(ZDO, 0x02, "ZDO_NODE_DESC_REQ"); // MT_ZDO
pub const ZDO_SIMPLE_DESC_REQ: Cmd = cmd(ZDO, 0x04, "ZDO_SIMPLE_DESC_REQ"); // §3.12.1.5
pub const ZDO_ACTIVE_EP_REQ: Cmd = cmd(ZDO, 0x05, "ZDO_ACTIVE_EP_REQ"); // §3.12.1.6
pub const ZDO_BIND_REQ: Cmd = cmd(ZDO, 0x21, "ZDO_BIND_REQ"); // §3.12.1.14
pub const ZDO_MGMT_PERMIT_JOIN_REQ: Cmd = cmd(ZDO, 0x36, "ZDO_MGMT_PERMIT_JOIN_REQ"); // §3.12.1.22
pub const ZDO_STARTUP_FROM_APP: Cmd = cmd(ZDO, 0x40, "ZDO_STARTUP_FROM_APP"); // §3.12.1.26
pub const ZDO_NODE_DESC_RSP: Cmd = cmd(ZDO, 0x82, "ZDO_NODE_DESC_RSP"); // §3.12.2.3
pub const ZDO_SIMPLE_DESC_RSP: Cmd = cmd(ZDO, 0x84, "ZDO_SIMPLE_DESC_RSP"); // MT_ZDO callback
pub const ZDO_ACTIVE_EP_RSP: Cmd = cmd(ZDO, 0x85, "ZDO_ACTIVE_EP_RSP"); // §3.12.2.6
pub const ZDO_BIND_RSP: Cmd = cmd(ZDO, 0xA1, "ZDO_BIND_RSP"); // §3.12.2.13
pub const ZDO_MGMT_PERMIT_JOIN_RSP: Cmd = cmd(ZDO, 0xB6, "ZDO_MGMT_PERMIT_JOIN_RSP"); // §3.12.2.21
pub const ZDO_STATE_CHANGE_IND: Cmd = cmd(ZDO, 0xC0, "ZDO_STATE_CHANGE_IND"); // §3.12.2.22
pub const ZDO_END_DEVICE_ANNCE_IND: Cmd = cmd(ZDO, 0xC1, "ZDO_END_DEVICE_ANNCE_IND"); // §3.12.2.23
pub const ZDO_LEAVE_IND: Cmd = cmd(ZDO, 0xC9, "ZDO_LEAVE_IND"); // §3.12.2.30
                                                                // MT_UTIL (§3.10).
pub const UTIL_GET_DEVICE_INFO: Cmd = cmd(UTIL, 0x00, "UTIL_GET_DEVICE_INFO"); // §3.10.1.1
                                                                               // MT_APP_CNF (§3.13, Z-Stack 3.0 BDB commissioning).
pub const APP_CNF_BDB_START_COMMISSIONING: Cmd =
    cmd(APP_CNF, 0x05, "APP_CNF_BDB_START_COMMISSIONING"); // §3.13.1.5
pub const APP_CNF_BDB_SET_CHANNEL: Cmd = cmd(APP_CNF, 0x08, "APP_CNF_BDB_SET_CHANNEL"); // §3.13.1.6
pub const APP_CNF_BDB_COMMISSIONING_NOTIFICATION: Cmd =
    cmd(APP_CNF, 0x80, "APP_CNF_BDB_COMMISSIONING_NOTIFICATION"); // §3.13.2.1
/// RPC error SRSP (§3.1.1.1): the ZNP did not recognise an SREQ.
pub const RPC_ERROR_CMD: Cmd = cmd(RPC_ERROR, 0x00, "RPC_Error");

/// Every command this crate names, to print an unknown frame's name.
pub const KNOWN: &[Cmd] = &[
    SYS_RESET_REQ,
    SYS_PING,
    SYS_VERSION,
    SYS_OSAL_NV_ITEM_INIT,
    SYS_OSAL_NV_READ,
    SYS_OSAL_NV_WRITE,
    SYS_RESET_IND,
    AF_REGISTER,
    AF_DATA_REQUEST,
    AF_DATA_CONFIRM,
    AF_INCOMING_MSG,
    ZDO_NODE_DESC_REQ,
    ZDO_SIMPLE_DESC_REQ,
    ZDO_ACTIVE_EP_REQ,
    ZDO_BIND_REQ,
    ZDO_MGMT_PERMIT_JOIN_REQ,
    ZDO_STARTUP_FROM_APP,
    ZDO_NODE_DESC_RSP,
    ZDO_SIMPLE_DESC_RSP,
    ZDO_ACTIVE_EP_RSP,
    ZDO_BIND_RSP,
    ZDO_MGMT_PERMIT_JOIN_RSP,
    ZDO_STATE_CHANGE_IND,
    ZDO_END_DEVICE_ANNCE_IND,
    ZDO_LEAVE_IND,
    UTIL_GET_DEVICE_INFO,
    APP_CNF_BDB_START_COMMISSIONING,
    APP_CNF_BDB_SET_CHANNEL,
    APP_CNF_BDB_COMMISSIONING_NOTIFICATION,
    RPC_ERROR_CMD,
];

/// One MT frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub ty: CmdType,
    pub subsystem: u8,
    pub id: u8,
    pub payload: Vec<u8>,
}

/// A frame could not be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{cmd}: payload of {len} bytes is longer than the MT limit of {MAX_PAYLOAD}")]
pub struct TooLong {
    pub cmd: String,
    pub len: usize,
}

impl Frame {
    pub fn new(ty: CmdType, c: Cmd, payload: Vec<u8>) -> Frame {
        Frame {
            ty,
            subsystem: c.subsystem,
            id: c.id,
            payload,
        }
    }
    /// From the two command bytes; `None` when CMD0's type bits are not a type (4–7).
    pub fn from_cmd_bytes(cmd0: u8, cmd1: u8, payload: Vec<u8>) -> Option<Frame> {
        Some(Frame {
            ty: CmdType::from_bits(cmd0 >> 5)?,
            subsystem: cmd0 & 0x1F,
            id: cmd1,
            payload,
        })
    }
    pub fn cmd0(&self) -> u8 {
        (self.ty as u8) << 5 | (self.subsystem & 0x1F)
    }
    /// Whether this frame is command `c` (any type).
    pub fn is(&self, c: Cmd) -> bool {
        self.subsystem == c.subsystem && self.id == c.id
    }
    /// The command's name, or `SUBSYS/0xID` when this crate does not name it.
    pub fn name(&self) -> String {
        KNOWN
            .iter()
            .find(|c| self.is(**c))
            .map(|c| c.name.to_string())
            .unwrap_or_else(|| format!("0x{:02X}/0x{:02X}", self.subsystem, self.id))
    }
    /// The whole frame on the wire, SOF to FCS.
    pub fn encode(&self) -> Result<Vec<u8>, TooLong> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(TooLong {
                cmd: self.name(),
                len: self.payload.len(),
            });
        }
        let mut out = Vec::with_capacity(self.payload.len() + 5);
        out.push(SOF);
        out.push(self.payload.len() as u8);
        out.push(self.cmd0());
        out.push(self.id);
        out.extend_from_slice(&self.payload);
        out.push(fcs(&out[1..]));
        Ok(out)
    }
}

/// XOR of every byte (§2.1.1 FCS over LEN, CMD0, CMD1, DATA).
pub fn fcs(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, b| a ^ b)
}

/// Counters of what the decoder threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeStats {
    pub frames: u64,
    /// Bytes outside any frame (before a SOF).
    pub stray_bytes: u64,
    /// Frames whose FCS did not match, or whose length or type was impossible.
    pub bad_frames: u64,
}

/// Turns a byte stream into frames (see the module invariants).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    pub stats: DecodeStats,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
    /// The next complete frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.buf.iter().position(|b| *b == SOF) {
                None => {
                    self.stats.stray_bytes += self.buf.len() as u64;
                    self.buf.clear();
                    return None;
                }
                Some(0) => {}
                Some(n) => {
                    self.stats.stray_bytes += n as u64;
                    self.buf.drain(..n);
                }
            }
            if self.buf.len() < 2 {
                return None;
            }
            let len = self.buf[1] as usize;
            if len > MAX_PAYLOAD {
                self.bad();
                continue;
            }
            let total = len + 5;
            if self.buf.len() < total {
                return None;
            }
            let body = &self.buf[1..total - 1];
            if fcs(body) != self.buf[total - 1] {
                self.bad();
                continue;
            }
            let frame =
                Frame::from_cmd_bytes(self.buf[2], self.buf[3], self.buf[4..4 + len].to_vec());
            match frame {
                Some(f) => {
                    self.buf.drain(..total);
                    self.stats.frames += 1;
                    return Some(f);
                }
                None => {
                    self.bad();
                    continue;
                }
            }
        }
    }
    /// Drop the SOF of a bad frame and count it; the next search starts after it.
    fn bad(&mut self) {
        self.stats.bad_frames += 1;
        self.buf.drain(..1);
    }
    /// Forget a partial frame (the port was closed).
    pub fn reset(&mut self) {
        self.buf.clear();
    }
}

/// Why an SREQ got no usable answer.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SreqError {
    #[error("{cmd}: no SRSP within {timeout_ms} ms")]
    Timeout { cmd: &'static str, timeout_ms: u64 },
    #[error("{cmd}: the coordinator rejected it (RPC error 0x{code:02X})")]
    Rejected { cmd: &'static str, code: u8 },
    #[error("{cmd}: another SREQ ({outstanding}) is still outstanding")]
    Busy {
        cmd: &'static str,
        outstanding: &'static str,
    },
}

#[derive(Debug)]
struct Pending {
    cmd: Cmd,
    deadline: Instant,
    timeout: Duration,
}

/// What [`Correlator::on_frame`] made of a frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed {
    /// The SRSP of the outstanding SREQ.
    Response(Frame),
    /// The outstanding SREQ was refused.
    Failed(SreqError),
    /// An AREQ, for waiters and the adapter.
    Callback(Frame),
    /// An SRSP nobody is waiting for (a late answer after a timeout), or another type.
    Unexpected(Frame),
}

/// SREQ/SRSP correlation with one outstanding SREQ (module invariants).
#[derive(Debug, Default)]
pub struct Correlator {
    pending: Option<Pending>,
}

impl Correlator {
    /// Record that SREQ `cmd` was sent at `now`.
    pub fn begin(&mut self, cmd: Cmd, now: Instant, timeout: Duration) -> Result<(), SreqError> {
        if let Some(p) = &self.pending {
            return Err(SreqError::Busy {
                cmd: cmd.name,
                outstanding: p.cmd.name,
            });
        }
        self.pending = Some(Pending {
            cmd,
            deadline: now + timeout,
            timeout,
        });
        Ok(())
    }
    pub fn outstanding(&self) -> Option<Cmd> {
        self.pending.as_ref().map(|p| p.cmd)
    }
    /// When the outstanding SREQ times out.
    pub fn deadline(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.deadline)
    }
    /// The outstanding SREQ's timeout error if `now` is past its deadline (and forget it).
    pub fn poll_timeout(&mut self, now: Instant) -> Option<SreqError> {
        match &self.pending {
            Some(p) if now >= p.deadline => {
                let e = SreqError::Timeout {
                    cmd: p.cmd.name,
                    timeout_ms: p.timeout.as_millis() as u64,
                };
                self.pending = None;
                Some(e)
            }
            _ => None,
        }
    }
    /// Forget the outstanding SREQ (the port closed).
    pub fn cancel(&mut self) {
        self.pending = None;
    }
    pub fn on_frame(&mut self, f: Frame) -> Routed {
        match f.ty {
            CmdType::Areq => Routed::Callback(f),
            CmdType::Srsp => {
                let Some(p) = &self.pending else {
                    return Routed::Unexpected(f);
                };
                if f.subsystem == p.cmd.subsystem && f.id == p.cmd.id {
                    self.pending = None;
                    return Routed::Response(f);
                }
                // RPC_Error SRSP: ErrCode, Cmd0, Cmd1 of the refused SREQ (§3.1.1.1).
                if f.is(RPC_ERROR_CMD)
                    && f.payload.len() >= 3
                    && f.payload[1] & 0x1F == p.cmd.subsystem
                    && f.payload[2] == p.cmd.id
                {
                    let e = SreqError::Rejected {
                        cmd: p.cmd.name,
                        code: f.payload[0],
                    };
                    self.pending = None;
                    return Routed::Failed(e);
                }
                Routed::Unexpected(f)
            }
            _ => Routed::Unexpected(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_encodes_as_the_document_shows() {
        // §3.8.1.2 SYS_PING: SREQ, subsystem SYS, id 0x01, no data → FE 00 21 01 20.
        let f = Frame::new(CmdType::Sreq, SYS_PING, vec![]);
        assert_eq!(f.encode().unwrap(), vec![0xFE, 0x00, 0x21, 0x01, 0x20]);
    }

    #[test]
    fn stray_bytes_and_bad_fcs_are_counted_and_the_next_frame_is_found() {
        let good = Frame::new(CmdType::Srsp, SYS_PING, vec![0x59, 0x06])
            .encode()
            .unwrap();
        let mut bad = good.clone();
        *bad.last_mut().unwrap() ^= 0xFF;
        let mut d = Decoder::new();
        d.push(&[0x00, 0x13, 0x37]);
        d.push(&bad);
        d.push(&good[..3]);
        assert_eq!(d.next_frame(), None);
        d.push(&good[3..]);
        let f = d.next_frame().unwrap();
        assert!(f.is(SYS_PING));
        assert_eq!(f.payload, vec![0x59, 0x06]);
        assert_eq!(d.stats.stray_bytes, 3 + (bad.len() as u64 - 1));
        assert_eq!(d.stats.bad_frames, 1);
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn a_frame_inside_a_bad_length_is_found() {
        let good = Frame::new(CmdType::Areq, ZDO_STATE_CHANGE_IND, vec![9])
            .encode()
            .unwrap();
        let mut d = Decoder::new();
        d.push(&[SOF, 0xFF]);
        d.push(&good);
        assert_eq!(d.next_frame().unwrap().payload, vec![9]);
        assert_eq!(d.stats.bad_frames, 1);
    }

    #[test]
    fn correlator_matches_its_srsp_passes_callbacks_and_times_out_by_name() {
        let t0 = Instant::now();
        let mut c = Correlator::default();
        c.begin(SYS_VERSION, t0, Duration::from_secs(1)).unwrap();
        assert!(matches!(
            c.begin(SYS_PING, t0, Duration::from_secs(1)),
            Err(SreqError::Busy {
                outstanding: "SYS_VERSION",
                ..
            })
        ));
        let ind = Frame::new(CmdType::Areq, ZDO_STATE_CHANGE_IND, vec![9]);
        assert_eq!(c.on_frame(ind.clone()), Routed::Callback(ind));
        let other = Frame::new(CmdType::Srsp, SYS_PING, vec![0, 0]);
        assert!(matches!(c.on_frame(other), Routed::Unexpected(_)));
        let rsp = Frame::new(CmdType::Srsp, SYS_VERSION, vec![2]);
        assert_eq!(c.on_frame(rsp.clone()), Routed::Response(rsp));
        assert_eq!(c.outstanding(), None);

        c.begin(SYS_PING, t0, Duration::from_millis(500)).unwrap();
        assert_eq!(c.poll_timeout(t0 + Duration::from_millis(499)), None);
        let e = c.poll_timeout(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(e.to_string(), "SYS_PING: no SRSP within 500 ms");
        assert_eq!(c.outstanding(), None);
    }

    #[test]
    fn rpc_error_fails_the_outstanding_sreq() {
        let mut c = Correlator::default();
        c.begin(AF_REGISTER, Instant::now(), Duration::from_secs(1))
            .unwrap();
        let err = Frame::new(CmdType::Srsp, RPC_ERROR_CMD, vec![0x02, 0x24, 0x00]);
        assert_eq!(
            c.on_frame(err),
            Routed::Failed(SreqError::Rejected {
                cmd: "AF_REGISTER",
                code: 2
            })
        );
    }
}
