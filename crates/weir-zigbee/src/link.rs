//! The coordinator's serial link: the MT codec over an open port, one outstanding SREQ at a time,
//! callbacks (AREQs) queued for whoever waits for them next.
//!
//! Invariants: every method is used by one task (the adapter's); reading the port is cancel-safe
//! (bytes read are kept in the decoder), so [`Link::next_callback`] can sit in a `select!`. A
//! callback that arrives while waiting for something else is kept, in order, not lost. Any I/O
//! error or end of file means the coordinator is gone: the link is dropped and reopened.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use weir_core::Counter;
use weir_serial::SerialStream;

use crate::mt::{self, Cmd, CmdType, Correlator, Decoder, Frame, Routed, SreqError};

/// Why talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("serial I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the port was closed (end of file)")]
    Closed,
    #[error(transparent)]
    Sreq(#[from] SreqError),
    #[error("{cmd}: status 0x{status:02X}")]
    Status { cmd: &'static str, status: u8 },
    #[error("no {what} within {ms} ms")]
    Timeout { what: String, ms: u64 },
    #[error(transparent)]
    TooLong(#[from] mt::TooLong),
    #[error("the coordinator reset itself (SYS_RESET_IND, reason {reason})")]
    Reset { reason: u8 },
}

impl LinkError {
    /// The port itself failed (unplugged, closed), as opposed to one request.
    pub fn is_port_gone(&self) -> bool {
        matches!(self, LinkError::Io(_) | LinkError::Closed)
    }
    /// The coordinator cannot go on as it is: the port failed, it stopped answering SREQs
    /// (wedged) or it reset itself. The adapter reopens the port and runs start-up again; any
    /// other error fails only the request it belongs to (a device that does not answer).
    pub fn is_fatal(&self) -> bool {
        self.is_port_gone()
            || matches!(
                self,
                LinkError::Sreq(SreqError::Timeout { .. }) | LinkError::Reset { .. }
            )
    }
}

/// Counters shared with the adapter's metrics.
#[derive(Debug, Clone)]
pub struct LinkCounters {
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bad_frames: Counter,
    pub stray_bytes: Counter,
    pub sreq_timeouts: Counter,
}

/// The link over a serial port (or, in tests, any byte stream).
#[derive(Debug)]
pub struct Link<S = SerialStream> {
    port: S,
    dec: Decoder,
    corr: Correlator,
    queue: VecDeque<Frame>,
    sreq_timeout: Duration,
    counters: LinkCounters,
    seen: mt::DecodeStats,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Link<S> {
    pub fn new(port: S, sreq_timeout: Duration, counters: LinkCounters) -> Link<S> {
        Link {
            port,
            dec: Decoder::new(),
            corr: Correlator::default(),
            queue: VecDeque::new(),
            sreq_timeout,
            counters,
            seen: mt::DecodeStats::default(),
        }
    }

    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.port.write_all(bytes).await?;
        self.port.flush().await?;
        Ok(())
    }

    async fn write(&mut self, f: &Frame) -> Result<(), LinkError> {
        let bytes = f.encode()?;
        self.write_raw(&bytes).await?;
        self.counters.frames_out.inc();
        Ok(())
    }

    /// Send an AREQ (no answer expected, e.g. `SYS_RESET_REQ`).
    pub async fn areq(&mut self, cmd: Cmd, payload: Vec<u8>) -> Result<(), LinkError> {
        self.write(&Frame::new(CmdType::Areq, cmd, payload)).await
    }

    /// Send an SREQ and return its SRSP payload.
    pub async fn sreq(&mut self, cmd: Cmd, payload: Vec<u8>) -> Result<Vec<u8>, LinkError> {
        self.corr
            .begin(cmd, std::time::Instant::now(), self.sreq_timeout)?;
        let deadline = Instant::now() + self.sreq_timeout;
        if let Err(e) = self.write(&Frame::new(CmdType::Sreq, cmd, payload)).await {
            self.corr.cancel();
            return Err(e);
        }
        loop {
            let f = match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Ok(Ok(f)) => f,
                Ok(Err(e)) => {
                    self.corr.cancel();
                    return Err(e);
                }
                Err(_) => {
                    self.counters.sreq_timeouts.inc();
                    let e = self
                        .corr
                        .poll_timeout(std::time::Instant::now() + self.sreq_timeout)
                        .unwrap_or(SreqError::Timeout {
                            cmd: cmd.name,
                            timeout_ms: self.sreq_timeout.as_millis() as u64,
                        });
                    return Err(e.into());
                }
            };
            match self.corr.on_frame(f) {
                Routed::Response(f) => return Ok(f.payload),
                Routed::Failed(e) => return Err(e.into()),
                Routed::Callback(f) => self.queue.push_back(f),
                Routed::Unexpected(f) => {
                    tracing::debug!(frame = %f.name(), "unexpected MT frame ignored")
                }
            }
        }
    }

    /// An SREQ whose SRSP starts with a status byte that must be SUCCESS (0).
    pub async fn sreq_ok(&mut self, cmd: Cmd, payload: Vec<u8>) -> Result<Vec<u8>, LinkError> {
        let p = self.sreq(cmd, payload).await?;
        match p.first() {
            Some(0) => Ok(p),
            Some(s) => Err(LinkError::Status {
                cmd: cmd.name,
                status: *s,
            }),
            None => Err(LinkError::Status {
                cmd: cmd.name,
                status: 0xFF,
            }),
        }
    }

    /// The first callback (queued or arriving within `timeout`) that `pred` accepts; the others
    /// stay queued in order.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Frame) -> bool,
    ) -> Result<Frame, LinkError> {
        if let Some(i) = self.queue.iter().position(&mut pred) {
            return Ok(self.queue.remove(i).expect("index from position"));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let f = match tokio::time::timeout_at(deadline, self.read_frame()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(LinkError::Timeout {
                        what: what.to_string(),
                        ms: timeout.as_millis() as u64,
                    })
                }
            };
            if f.ty != CmdType::Areq {
                tracing::debug!(frame = %f.name(), "unexpected MT frame ignored");
                continue;
            }
            if pred(&f) {
                return Ok(f);
            }
            self.queue.push_back(f);
        }
    }

    /// The next callback, queued first. Cancel-safe.
    pub async fn next_callback(&mut self) -> Result<Frame, LinkError> {
        if let Some(f) = self.queue.pop_front() {
            return Ok(f);
        }
        loop {
            let f = self.read_frame().await?;
            if f.ty == CmdType::Areq {
                return Ok(f);
            }
            tracing::debug!(frame = %f.name(), "unexpected MT frame ignored");
        }
    }

    /// Drop queued callbacks (after a reset, nothing queued before it still means anything).
    pub fn clear_queue(&mut self) {
        self.queue.clear();
    }

    async fn read_frame(&mut self) -> Result<Frame, LinkError> {
        loop {
            if let Some(f) = self.dec.next_frame() {
                self.sync_counters();
                return Ok(f);
            }
            self.sync_counters();
            let mut buf = [0u8; 256];
            let n = self.port.read(&mut buf).await?;
            if n == 0 {
                return Err(LinkError::Closed);
            }
            self.dec.push(&buf[..n]);
        }
    }

    fn sync_counters(&mut self) {
        let s = self.dec.stats;
        self.counters.frames_in.add(s.frames - self.seen.frames);
        self.counters
            .bad_frames
            .add(s.bad_frames - self.seen.bad_frames);
        self.counters
            .stray_bytes
            .add(s.stray_bytes - self.seen.stray_bytes);
        self.seen = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn counters() -> LinkCounters {
        let m = weir_core::Metrics::new();
        let c = |n: &str| m.counter(n, &[]);
        LinkCounters {
            frames_in: c("in"),
            frames_out: c("out"),
            bad_frames: c("bad"),
            stray_bytes: c("stray"),
            sreq_timeouts: c("timeouts"),
        }
    }

    #[tokio::test]
    async fn callbacks_arriving_before_the_srsp_are_kept_in_order() {
        let (ours, mut peer) = tokio::io::duplex(1024);
        let mut link = Link::new(ours, Duration::from_secs(5), counters());
        let peer_task = tokio::spawn(async move {
            let mut buf = [0u8; 5];
            peer.read_exact(&mut buf).await.unwrap(); // the SYS_PING SREQ
            assert_eq!(buf, [0xFE, 0x00, 0x21, 0x01, 0x20]);
            for f in [
                Frame::new(CmdType::Areq, mt::ZDO_STATE_CHANGE_IND, vec![8]),
                Frame::new(CmdType::Areq, mt::ZDO_STATE_CHANGE_IND, vec![9]),
                Frame::new(CmdType::Srsp, mt::SYS_PING, vec![0x59, 0x06]),
            ] {
                peer.write_all(&f.encode().unwrap()).await.unwrap();
            }
            peer
        });
        assert_eq!(
            link.sreq(mt::SYS_PING, vec![]).await.unwrap(),
            vec![0x59, 0x06]
        );
        let _peer = peer_task.await.unwrap();
        assert_eq!(link.next_callback().await.unwrap().payload, vec![8]);
        assert_eq!(link.next_callback().await.unwrap().payload, vec![9]);
    }

    #[tokio::test]
    async fn a_silent_coordinator_times_out_naming_the_command_and_eof_is_port_gone() {
        let (ours, peer) = tokio::io::duplex(1024);
        let c = counters();
        let mut link = Link::new(ours, Duration::from_millis(300), c.clone());
        let e = link.sreq(mt::SYS_VERSION, vec![]).await.unwrap_err();
        assert_eq!(e.to_string(), "SYS_VERSION: no SRSP within 300 ms");
        assert!(
            !e.is_port_gone() && e.is_fatal(),
            "a wedged coordinator is reopened"
        );
        assert_eq!(c.sreq_timeouts.get(), 1);
        // The next SREQ is not refused as busy: the timed-out one was forgotten.
        drop(peer);
        let e = link.sreq(mt::SYS_PING, vec![]).await.unwrap_err();
        assert!(e.is_port_gone(), "{e}");
    }
}
