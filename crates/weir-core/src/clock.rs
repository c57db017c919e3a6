//! Is the system clock to be trusted? A Raspberry Pi has no real-time clock: until NTP has
//! synchronised it, the wall clock can be hours or years behind (a reading stamped 1970 is worse
//! than none).
//!
//! * [`ClockSource`] says whether the clock is synchronised; [`KernelClock`] asks the system,
//!   [`SimulatedClock`] is set by tests.
//! * [`ClockMonitor`] keeps the last answer and marks readings: while the clock is
//!   [`ClockSync::Unsynchronised`], every reading that is `Good` becomes
//!   `Uncertain("clock_unsynchronised")` ([`REASON`]); `Bad` and already `Uncertain` readings keep
//!   their own reason. When the clock becomes synchronised this is logged once (with the number of
//!   readings marked meanwhile); losing synchronisation is logged once too.
//! * The pipeline calls [`mark_unsynchronised`] on every batch right after registry admission: the
//!   process-wide monitor on the [`KernelClock`].
//!
//! # What "synchronised" means
//!
//! The kernel's NTP state (`adjtimex(2)`): the clock is synchronised when `STA_UNSYNC` is clear
//! and the maximum error is below 16 s, the test `timedatectl` applies (systemd's `ntp_synced()`).
//! The workspace forbids `unsafe` and neither `rustix` nor `nix` wraps `adjtimex`, so
//! [`KernelClock`] reads the same answer from the system's time services instead:
//! 1. `/run/systemd/timesync/synchronized` exists: systemd-timesyncd has synchronised the clock
//!    since boot (the file is on a tmpfs, so a reboot forgets it) → synchronised;
//! 2. otherwise `timedatectl show --property=NTPSynchronized --value`, i.e. timedated's
//!    `adjtimex` test above (it covers chrony and ntpd too) → `yes` / `no`;
//! 3. neither available (a container, no systemd) → [`ClockSync::Unknown`], which marks nothing:
//!    the gateway cannot tell, and marking every reading of a machine whose clock is fine would
//!    be worse.
//!
//! # Invariants
//!
//! * Marking never blocks the pipeline on the system: the first use of the process-wide monitor
//!   asks once inline; later answers are refreshed on a short-lived thread at most every
//!   [`RECHECK_UNSYNCED`] while unsynchronised, every [`RECHECK_UNKNOWN`] while no time service
//!   answers and every [`RECHECK_SYNCED`] once synchronised, and only when batches flow (an idle
//!   gateway asks nothing).
//! * A reading's timestamp is never changed: the mark says "this time may be wrong", the data is
//!   kept.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::reading::{Quality, Reading};

/// The reason of a reading marked uncertain because the clock was not synchronised.
pub const REASON: &str = "clock_unsynchronised";
/// How often an unsynchronised clock is asked again.
pub const RECHECK_UNSYNCED: Duration = Duration::from_secs(10);
/// How often a clock whose state is unknown (no time service answered) is asked again.
pub const RECHECK_UNKNOWN: Duration = Duration::from_secs(60);
/// How often a synchronised clock is asked again (it can lose synchronisation: 16 s of maximum
/// error without an NTP update, ~9 hours at the kernel's 500 ppm).
pub const RECHECK_SYNCED: Duration = Duration::from_secs(300);

/// What a [`ClockSource`] says about the wall clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockSync {
    Synchronised,
    Unsynchronised,
    /// The system cannot tell (no time service to ask): readings are not marked.
    Unknown,
}

impl ClockSync {
    fn to_u8(self) -> u8 {
        match self {
            ClockSync::Unknown => 0,
            ClockSync::Synchronised => 1,
            ClockSync::Unsynchronised => 2,
        }
    }
    fn from_u8(v: u8) -> ClockSync {
        match v {
            1 => ClockSync::Synchronised,
            2 => ClockSync::Unsynchronised,
            _ => ClockSync::Unknown,
        }
    }
}

/// Where the synchronisation state comes from.
pub trait ClockSource: Send + Sync + fmt::Debug {
    /// Ask now (may take a few milliseconds: a file check, a subprocess).
    fn sync_state(&self) -> ClockSync;
}

/// The system's answer (see the module docs for the order in which it is asked).
#[derive(Debug, Clone)]
pub struct KernelClock {
    /// systemd-timesyncd's flag file.
    pub timesyncd_flag: PathBuf,
    /// The `timedatectl` to run (a name looked up in `PATH`, or a path).
    pub timedatectl: PathBuf,
}

impl Default for KernelClock {
    fn default() -> Self {
        KernelClock {
            timesyncd_flag: PathBuf::from("/run/systemd/timesync/synchronized"),
            timedatectl: PathBuf::from("timedatectl"),
        }
    }
}

impl ClockSource for KernelClock {
    fn sync_state(&self) -> ClockSync {
        if self.timesyncd_flag.exists() {
            return ClockSync::Synchronised;
        }
        let out = std::process::Command::new(&self.timedatectl)
            .args(["show", "--property=NTPSynchronized", "--value"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => parse_ntp_synchronized(&o.stdout),
            _ => ClockSync::Unknown,
        }
    }
}

/// `timedatectl show --property=NTPSynchronized --value` prints `yes` or `no`.
fn parse_ntp_synchronized(out: &[u8]) -> ClockSync {
    match std::str::from_utf8(out).map(str::trim) {
        Ok("yes") => ClockSync::Synchronised,
        Ok("no") => ClockSync::Unsynchronised,
        _ => ClockSync::Unknown,
    }
}

/// A clock source tests set by hand; clones share the state.
#[derive(Debug, Clone)]
pub struct SimulatedClock(Arc<Mutex<ClockSync>>);

impl SimulatedClock {
    pub fn new(state: ClockSync) -> Self {
        SimulatedClock(Arc::new(Mutex::new(state)))
    }
    pub fn set(&self, state: ClockSync) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }
}

impl ClockSource for SimulatedClock {
    fn sync_state(&self) -> ClockSync {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A change of state seen by [`ClockMonitor::poll`] (each is logged once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The clock became synchronised; `marked` readings were marked uncertain meanwhile.
    Synchronised { marked: u64 },
    /// The clock is (or became) unsynchronised.
    Unsynchronised,
}

/// The last known state of a [`ClockSource`], and the marking of readings.
pub struct ClockMonitor {
    source: Box<dyn ClockSource>,
    state: AtomicU8,
    /// Readings marked since the clock was last seen synchronised.
    marked: AtomicU64,
    reason: Arc<str>,
    start: Instant,
    /// When the source was last asked (nanoseconds since `start`; 0: never).
    asked_at: AtomicU64,
    asking: AtomicBool,
}

impl fmt::Debug for ClockMonitor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClockMonitor")
            .field("source", &self.source)
            .field("state", &self.state())
            .finish()
    }
}

impl ClockMonitor {
    /// A monitor that has not asked yet (state [`ClockSync::Unknown`]: nothing is marked until
    /// the first [`poll`](Self::poll)).
    pub fn new(source: Box<dyn ClockSource>) -> Self {
        ClockMonitor {
            source,
            state: AtomicU8::new(ClockSync::Unknown.to_u8()),
            marked: AtomicU64::new(0),
            reason: Arc::from(REASON),
            start: Instant::now(),
            asked_at: AtomicU64::new(0),
            asking: AtomicBool::new(false),
        }
    }

    /// The last answer.
    pub fn state(&self) -> ClockSync {
        ClockSync::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Ask the source now; log and return a change of state.
    pub fn poll(&self) -> Option<Transition> {
        let now = self.source.sync_state();
        self.asked_at.store(
            (self.start.elapsed().as_nanos() as u64).max(1),
            Ordering::Release,
        );
        let before = ClockSync::from_u8(self.state.swap(now.to_u8(), Ordering::AcqRel));
        let t = match (before, now) {
            (ClockSync::Unsynchronised, ClockSync::Synchronised) => Transition::Synchronised {
                marked: self.marked.swap(0, Ordering::AcqRel),
            },
            (b, ClockSync::Unsynchronised) if b != ClockSync::Unsynchronised => {
                Transition::Unsynchronised
            }
            _ => return None,
        };
        match t {
            Transition::Synchronised { marked } => tracing::info!(
                marked,
                "system clock synchronised: readings are no longer marked uncertain \
                 ({marked} were marked `{REASON}`)"
            ),
            Transition::Unsynchronised => tracing::warn!(
                "system clock not synchronised (no RTC, NTP not synced yet): readings are marked \
                 uncertain (`{REASON}`) until it is"
            ),
        }
        Some(t)
    }

    /// Mark the `Good` readings of `batch` uncertain when the clock is unsynchronised; returns
    /// how many were marked. Refreshes the state in the background when it is due.
    pub fn mark(self: &Arc<Self>, batch: &mut [Reading]) -> usize {
        self.refresh_if_due();
        self.mark_now(batch)
    }

    /// [`mark`](Self::mark) on the last answer, without refreshing it.
    pub fn mark_now(&self, batch: &mut [Reading]) -> usize {
        if self.state() != ClockSync::Unsynchronised {
            return 0;
        }
        let mut n = 0;
        for r in batch.iter_mut().filter(|r| r.quality == Quality::Good) {
            r.quality = Quality::Uncertain(self.reason.clone());
            n += 1;
        }
        self.marked.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    fn refresh_if_due(self: &Arc<Self>) {
        let every = match self.state() {
            ClockSync::Synchronised => RECHECK_SYNCED,
            ClockSync::Unknown if self.asked_at.load(Ordering::Acquire) > 0 => RECHECK_UNKNOWN,
            _ => RECHECK_UNSYNCED,
        };
        let asked_at = self.asked_at.load(Ordering::Acquire);
        let since =
            Duration::from_nanos((self.start.elapsed().as_nanos() as u64).saturating_sub(asked_at));
        if (asked_at != 0 && since < every) || self.asking.swap(true, Ordering::AcqRel) {
            return;
        }
        let m = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("weir-clock".into())
            .spawn(move || {
                m.poll();
                m.asking.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.asking.store(false, Ordering::Release);
        }
    }
}

/// The process-wide monitor on the [`KernelClock`]; the first call asks the system once inline.
pub fn global() -> &'static Arc<ClockMonitor> {
    static GLOBAL: OnceLock<Arc<ClockMonitor>> = OnceLock::new();
    GLOBAL.get_or_init(|| {
        let m = Arc::new(ClockMonitor::new(Box::new(KernelClock::default())));
        m.poll();
        m
    })
}

/// The pipeline's hook: mark `batch` with the process-wide monitor (see the module docs).
pub fn mark_unsynchronised(batch: &mut [Reading]) -> usize {
    global().mark(batch)
}

/// A reading of the clocks the outbox ages rows on (see [`MonotonicSource`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonotonicStamp {
    /// This boot: the first 64 bits of `/proc/sys/kernel/random/boot_id` (0 when unreadable).
    pub boot: u64,
    /// `CLOCK_BOOTTIME`: nanoseconds since this boot, suspend included; never steps.
    pub boottime_ns: i64,
    /// UTC wall clock, nanoseconds since the Unix epoch; steps when NTP sets it.
    pub wall_ns: i64,
    /// Whether the wall clock was known to be synchronised ([`ClockSync::Synchronised`]);
    /// `Unknown` counts as not synchronised.
    pub wall_synchronised: bool,
}

/// Where an age that must not jump with the wall clock is measured from: a boot id, a clock
/// that does not step within a boot (`CLOCK_BOOTTIME`), and the wall clock with its sync state.
/// [`SystemMonotonic`] reads the system; [`SimulatedMonotonic`] is set by tests.
pub trait MonotonicSource: Send + Sync + fmt::Debug {
    fn now(&self) -> MonotonicStamp;
}

/// The system's clocks: the boot id (read once), `clock_gettime(CLOCK_BOOTTIME)`, the wall
/// clock, and the process-wide [`global`] monitor's last answer for the sync state (its first
/// use asks the system once inline; it is refreshed as batches flow through the pipeline).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemMonotonic;

/// The first 64 bits of a boot id as the kernel prints it (`8-4-4-4-12` hex digits).
pub fn parse_boot_id(text: &str) -> Option<u64> {
    let hex: String = text.trim().chars().filter(|c| *c != '-').take(16).collect();
    if hex.len() < 16 {
        return None;
    }
    u64::from_str_radix(&hex, 16).ok()
}

/// This boot's id (see [`MonotonicStamp::boot`]); read once per process.
pub fn boot_id() -> u64 {
    static BOOT: OnceLock<u64> = OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|t| parse_boot_id(&t))
            .unwrap_or(0)
    })
}

/// `CLOCK_BOOTTIME` in nanoseconds.
pub fn boottime_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

fn wall_ns() -> i64 {
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

impl MonotonicSource for SystemMonotonic {
    fn now(&self) -> MonotonicStamp {
        MonotonicStamp {
            boot: boot_id(),
            boottime_ns: boottime_ns(),
            wall_ns: wall_ns(),
            wall_synchronised: global().state() == ClockSync::Synchronised,
        }
    }
}

/// A [`MonotonicSource`] tests move by hand; clones share the state.
#[derive(Debug, Clone)]
pub struct SimulatedMonotonic(Arc<Mutex<MonotonicStamp>>);

impl SimulatedMonotonic {
    pub fn new(start: MonotonicStamp) -> Self {
        SimulatedMonotonic(Arc::new(Mutex::new(start)))
    }
    fn with(&self, f: impl FnOnce(&mut MonotonicStamp)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }
    /// Time passes: both clocks advance.
    pub fn advance(&self, d: Duration) {
        let ns = i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        self.with(|s| {
            s.boottime_ns = s.boottime_ns.saturating_add(ns);
            s.wall_ns = s.wall_ns.saturating_add(ns);
        });
    }
    /// The wall clock is set (NTP, a user): it jumps by `delta_ns`, boottime does not move.
    pub fn step_wall(&self, delta_ns: i64) {
        self.with(|s| s.wall_ns = s.wall_ns.saturating_add(delta_ns));
    }
    /// Whether the wall clock counts as synchronised from now on.
    pub fn set_synchronised(&self, synced: bool) {
        self.with(|s| s.wall_synchronised = synced);
    }
    /// A reboot `down` long: a new boot id, boottime starts again at `up_after_boot`, the wall
    /// clock moves by `wall_delta_ns` (what an RTC-less board shows after a reboot is anyone's
    /// guess) and is not synchronised.
    pub fn reboot(&self, new_boot: u64, up_after_boot: Duration, wall_delta_ns: i64) {
        self.with(|s| {
            s.boot = new_boot;
            s.boottime_ns = i64::try_from(up_after_boot.as_nanos()).unwrap_or(i64::MAX);
            s.wall_ns = s.wall_ns.saturating_add(wall_delta_ns);
            s.wall_synchronised = false;
        });
    }
}

impl MonotonicSource for SimulatedMonotonic {
    fn now(&self) -> MonotonicStamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::{Timestamp, Value};

    fn reading(q: Quality) -> Reading {
        Reading {
            device: "d".into(),
            point: "p".into(),
            value: Value::F64(1.0),
            unit: None,
            ts: Timestamp(0),
            quality: q,
            source: Arc::from("sim"),
        }
    }

    fn batch() -> Vec<Reading> {
        vec![
            reading(Quality::Good),
            reading(Quality::Bad(Arc::from("timeout"))),
            reading(Quality::Uncertain(Arc::from("rule"))),
            reading(Quality::Good),
        ]
    }

    #[test]
    fn unsynchronised_clock_marks_good_readings_uncertain_with_the_reason() {
        let sim = SimulatedClock::new(ClockSync::Unsynchronised);
        let m = Arc::new(ClockMonitor::new(Box::new(sim.clone())));
        assert_eq!(m.poll(), Some(Transition::Unsynchronised));
        let mut b = batch();
        assert_eq!(m.mark_now(&mut b), 2);
        let q: Vec<_> = b
            .iter()
            .map(|r| (r.quality.as_str(), r.quality.reason()))
            .collect();
        assert_eq!(
            q,
            [
                ("uncertain", Some(REASON)),
                ("bad", Some("timeout")),
                ("uncertain", Some("rule")),
                ("uncertain", Some(REASON)),
            ]
        );
        // Timestamps and values are kept.
        assert!(b
            .iter()
            .all(|r| r.ts == Timestamp(0) && r.value == Value::F64(1.0)));
    }

    #[test]
    fn synchronisation_is_reported_once_with_the_count_and_stops_marking() {
        let sim = SimulatedClock::new(ClockSync::Unsynchronised);
        let m = Arc::new(ClockMonitor::new(Box::new(sim.clone())));
        assert_eq!(m.poll(), Some(Transition::Unsynchronised));
        assert_eq!(
            m.poll(),
            None,
            "no second report while still unsynchronised"
        );
        let mut b = batch();
        m.mark_now(&mut b);
        m.mark_now(&mut batch());
        sim.set(ClockSync::Synchronised);
        assert_eq!(m.poll(), Some(Transition::Synchronised { marked: 4 }));
        assert_eq!(m.poll(), None, "logged once");
        let mut b = batch();
        assert_eq!(m.mark_now(&mut b), 0);
        assert_eq!(b, batch());
        // Losing synchronisation is reported, and marking starts again from zero.
        sim.set(ClockSync::Unsynchronised);
        assert_eq!(m.poll(), Some(Transition::Unsynchronised));
        m.mark_now(&mut batch());
        sim.set(ClockSync::Synchronised);
        assert_eq!(m.poll(), Some(Transition::Synchronised { marked: 2 }));
    }

    #[test]
    fn unknown_state_marks_nothing() {
        let sim = SimulatedClock::new(ClockSync::Unknown);
        let m = Arc::new(ClockMonitor::new(Box::new(sim)));
        assert_eq!(m.poll(), None);
        let mut b = batch();
        assert_eq!(m.mark(&mut b), 0);
        assert_eq!(b, batch());
    }

    #[test]
    fn a_new_monitor_asks_in_the_background_once_batches_flow() {
        let sim = SimulatedClock::new(ClockSync::Unsynchronised);
        let m = Arc::new(ClockMonitor::new(Box::new(sim)));
        // Never asked: due at once; the first batch is not marked (state unknown), and the
        // answer arrives from the background thread.
        assert_eq!(m.mark(&mut batch()), 0);
        let deadline = Instant::now() + Duration::from_secs(10);
        while m.state() != ClockSync::Unsynchronised {
            assert!(Instant::now() < deadline, "the background poll never ran");
            std::thread::yield_now();
        }
        assert_eq!(m.mark(&mut batch()), 2);
    }

    #[test]
    fn kernel_clock_reads_the_timesyncd_flag_then_timedatectl() {
        let dir = std::env::temp_dir().join(format!("weir-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flag = dir.join("synchronized");
        let fake = dir.join("timedatectl");
        let missing = KernelClock {
            timesyncd_flag: flag.clone(),
            timedatectl: dir.join("no-such-timedatectl"),
        };
        assert_eq!(missing.sync_state(), ClockSync::Unknown);
        // A timedatectl that answers as timedated does; its arguments are checked.
        std::fs::write(
            &fake,
            "#!/bin/sh\n[ \"$*\" = \"show --property=NTPSynchronized --value\" ] || exit 2\n\
             cat \"$(dirname \"$0\")/answer\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("answer"), "no\n").unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let k = KernelClock {
            timesyncd_flag: flag.clone(),
            timedatectl: fake.clone(),
        };
        assert_eq!(k.sync_state(), ClockSync::Unsynchronised);
        std::fs::write(dir.join("answer"), "yes\n").unwrap();
        assert_eq!(k.sync_state(), ClockSync::Synchronised);
        std::fs::write(dir.join("answer"), "no\n").unwrap();
        std::fs::write(&flag, "").unwrap();
        assert_eq!(
            k.sync_state(),
            ClockSync::Synchronised,
            "the flag file wins"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn boot_id_and_boottime_come_from_the_kernel() {
        assert_eq!(
            parse_boot_id("0f6e1c9a-3b2d-4c5e-8f70-123456789abc\n"),
            Some(0x0f6e_1c9a_3b2d_4c5e)
        );
        assert_eq!(parse_boot_id("0f6e1c9a-3b2d"), None);
        assert_eq!(parse_boot_id("zz6e1c9a-3b2d-4c5e-8f70-123456789abc"), None);
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
        assert_eq!(boot_id(), parse_boot_id(&text).unwrap());
        let a = SystemMonotonic.now();
        let b = SystemMonotonic.now();
        assert!(a.boottime_ns > 0 && b.boottime_ns >= a.boottime_ns);
        assert_eq!(a.boot, b.boot);
    }

    #[test]
    fn simulated_monotonic_clock_steps_the_wall_clock_only() {
        let sim = SimulatedMonotonic::new(MonotonicStamp {
            boot: 7,
            boottime_ns: 1_000,
            wall_ns: 5_000,
            wall_synchronised: false,
        });
        sim.advance(Duration::from_nanos(10));
        sim.step_wall(1_000_000);
        let s = sim.now();
        assert_eq!((s.boottime_ns, s.wall_ns), (1_010, 1_005_010));
        sim.reboot(8, Duration::from_secs(1), -5);
        let s = sim.now();
        assert_eq!(
            (s.boot, s.boottime_ns, s.wall_ns),
            (8, 1_000_000_000, 1_005_005)
        );
    }

    #[test]
    fn timedatectl_output_is_parsed_strictly() {
        assert_eq!(parse_ntp_synchronized(b"yes\n"), ClockSync::Synchronised);
        assert_eq!(parse_ntp_synchronized(b"no"), ClockSync::Unsynchronised);
        assert_eq!(parse_ntp_synchronized(b""), ClockSync::Unknown);
        assert_eq!(parse_ntp_synchronized(b"\xff"), ClockSync::Unknown);
    }
}
