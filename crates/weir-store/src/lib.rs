//! Durable SQLite outbox for Weir's store-and-forward stage.
//!
//! A reading bound northbound is committed here before it is published; the forwarder reads rows in
//! commit (id) order with [`Outbox::read_after`] and deletes them with [`Outbox::delete`] once the broker
//! has acknowledged them. The library is synchronous: the daemon calls it from `spawn_blocking` behind a
//! mutex. One [`Outbox`] owns one SQLite connection.
//!
//! # Invariants
//!
//! 1. **Atomic batches.** Every mutation ([`Outbox::append`], [`Outbox::delete`],
//!    [`Outbox::enforce_age`], [`Outbox::dead_letter`], [`Outbox::requeue_dead_letters`]) is exactly
//!    one `BEGIN IMMEDIATE … COMMIT` transaction: one WAL commit and,
//!    with `synchronous = FULL`, one fsync. After a crash (`kill -9`, abort, power loss with FULL) the
//!    outbox holds exactly the committed batches, never part of one.
//! 2. **Ids are strictly increasing and never reused**, even after the table was emptied and the db
//!    reopened: the highest id ever handed out is persisted in the counters row of `state`
//!    (`last_id`) in the same transaction as
//!    the rows, and ids are assigned explicitly as `last_id + 1, last_id + 2, …`. A forwarder can
//!    therefore page with `read_after(last_seen_id, n)` without ever missing a row.
//! 3. **Per-device sequence numbers are strictly increasing and gap-free across commits.** The
//!    [`SeqAllocator`] handed to the `append` closure issues `last + 1, last + 2, …` per device (the first
//!    number for a new device is 1). The new high-water marks are written to `state` in the same
//!    transaction as the rows, so they keep increasing across restarts and `kill -9`. If the transaction
//!    fails (or the closure panics) nothing of the batch is committed and the in-memory counters are left
//!    untouched, so the next batch reuses the same numbers and no gap appears.
//! 4. **Bounded by bytes.** After every append, while the stored total exceeds `Limits::max_bytes`, the
//!    oldest rows (lowest ids) are deleted in the same transaction; they are counted in
//!    `dropped_for_space_total`. A single batch larger than the limit therefore keeps only its newest
//!    rows. The size of a row is `len(topic) + len(payload) + ROW_OVERHEAD_BYTES` (UTF-8 bytes; see
//!    [`ROW_OVERHEAD_BYTES`]). The limit is enforced on append only: lowering it takes effect at the next
//!    append, opening never deletes data.
//! 5. **Bounded by age, on a clock that does not step.** A Pi has no RTC: its wall clock can be
//!    years behind until NTP steps it, so a row's age is not measured on the wall clock. Each
//!    append stamps its batch — on the batch's **last row**, the other rows carry NULL — with the
//!    boot id (first 64 bits of `/proc/sys/kernel/random/boot_id`), `CLOCK_BOOTTIME` and whether
//!    the wall clock was synchronised then (the [`MonotonicSource`], by default
//!    [`SystemMonotonic`]; see `weir_core::clock`). [`Outbox::enforce_age`] drops a batch whose age
//!    is above `max_age`, counted in `dropped_for_age_total`, where the age is:
//!    * same boot: `BOOTTIME now − BOOTTIME at append` (wall-clock steps change nothing);
//!    * an earlier boot, the wall clock synchronised both at append and now: the larger of the
//!      wall-clock difference and this boot's uptime;
//!    * an earlier boot otherwise: this boot's uptime (`BOOTTIME now`): the row is at least that
//!      old; a difference of unsynchronised wall clocks never drops anything.
//!
//!    Batches are dropped oldest first (ids are in append order): the walk stops at the first
//!    batch not due, reading at most one batch's rows when nothing is due (no index, no write
//!    transaction). So a batch is never dropped before the batches appended before it: in the
//!    rare case of an earlier boot whose clock was unsynchronised followed by one whose clock was
//!    synchronised, the later rows wait for the earlier (kept longer, never dropped early).
//!    Deleting a batch's last row while rows before it survive (an out-of-order ack, a dead
//!    letter) moves the stamp to the surviving row just before it, in the same transaction.
//!    Rows upgraded from a file of version 1–3 (wall-clock time only) are stamped as appended at
//!    the upgrade. `enqueued_ns` (UTC wall clock at append) is still stored on every row for
//!    display and for the forwarder's live/historical split; it plays no part in the bound.
//! 6. **Counters are exact and durable.** `rows`, `bytes`, the two drop counters and `last_id` live in the
//!    single counters row of `state` and are updated in the same transaction as the data they describe, so they are
//!    never out of step with the table and survive restarts. Opening reads them (O(1)) instead of scanning
//!    the table, and [`Outbox::stats`] answers from them plus two look-ups at the ends of the table.
//! 7. **Never recreated.** [`Outbox::open`] creates the schema only in a brand-new (empty) database. A
//!    file that is not SQLite, a SQLite database of another application, an outbox of a newer schema
//!    version, or a corrupt outbox is refused with an error naming the path; such a file is not modified
//!    (the journal mode is switched to WAL only after the file was recognised).
//! 8. **One writer at a time, enforced, and detected otherwise.** [`Outbox::open`] takes an exclusive
//!    `flock` on `<outbox>.lock` beside the database (created if missing, never deleted) and holds it
//!    for as long as the handle lives; a second writer — another `weir run`, or `weir buffer drain`
//!    next to a running daemon, which would fight over the MQTT session and publish rows twice — is
//!    refused with [`StoreError::Locked`] naming that file. The kernel releases the lock when the
//!    process dies, `kill -9` included, so a crash never leaves a stale lock. Read-only handles take
//!    no lock. Should a writer bypass the lock anyway (an older Weir), it is still detected: every
//!    write transaction bumps `write_gen` and starts by reading the counters row; if the generation
//!    is not the one this handle committed last, the cached state (counters, device sequence numbers)
//!    is reloaded inside the transaction before anything is allocated, so ids and sequence numbers stay
//!    strictly increasing even then.
//! 9. **Read-only handles don't disturb the writer.** [`Outbox::open_read_only`] opens with
//!    `SQLITE_OPEN_READONLY`; under WAL its reads neither block nor are blocked by the daemon's writes, it
//!    never checkpoints, and every write method on it fails with [`StoreError::ReadOnly`]. (When no writer
//!    is running, SQLite may leave empty `-wal`/`-shm` files behind; the next writer uses them as usual.)
//!
//! 10. **A full disk refuses new rows and keeps the old ones deletable.** Before an append, the
//!     space available to it — the filesystem's free blocks (`statvfs` `f_bavail`) plus the pages
//!     inside the database that SQLite reuses before growing the file (`freelist_count`) — is
//!     compared with `Limits::min_free_bytes`; below it the append fails with
//!     [`StoreError::DiskFull`] and stores nothing (no sequence number is consumed). The reserve
//!     is what lets [`Outbox::delete`] still write its WAL frames, so the forwarder can delete
//!     delivered rows and free space (pages the next appends reuse) instead of wedging on a disk
//!     at 0 bytes. Deletes are never refused. Nothing stored is dropped for a full disk: choosing
//!     newest-over-oldest is what `max_bytes` is for. (If another program fills the disk to the
//!     last byte anyway, SQLite's own "database or disk is full" error is returned as
//!     [`StoreError::Sqlite`], equally without storing anything.)
//!
//! 11. **Dead letters are set aside, never lost silently.** A row the broker refuses, or whose
//!     publish keeps ending the MQTT connection, is moved by [`Outbox::dead_letter`] — in one
//!     transaction, with its reason — from `outbox` to `dead_letter`, so it no longer blocks the rows
//!     behind it. Dead letters are not counted in `rows`/`bytes` (they are not waiting to be sent);
//!     [`OutboxStats`] reports them separately. [`Outbox::requeue_dead_letters`] moves them back to the
//!     end of the queue as new rows (new ids, enqueued now). The table keeps at most
//!     [`DEAD_LETTER_MAX_ROWS`] rows (the oldest go first, counted in `dropped_for_space_total`), and
//!     [`Outbox::enforce_age`] drops dead letters past `max_age` (counted in `dropped_for_age_total`);
//!     counting them for stats is a scan bounded by that cap.
//!
//! # Connection settings
//!
//! `journal_mode = WAL`, `synchronous = FULL` (or `NORMAL` when `Limits::synchronous_full` is false:
//! then a commit survives a process crash but may be lost on power failure), `busy_timeout = 5 s`,
//! `journal_size_limit = 64 MiB` (the WAL file is truncated back after a checkpoint instead of staying at
//! its high-water size). All statements are prepared once and cached (`prepare_cached`).
//!
//! # Schema (version 4)
//!
//! The database header carries `PRAGMA application_id = 0x57454952` (`"WEIR"`) and
//! `PRAGMA user_version = 4`; both are checked on open. Version 2 added the `dead_letter` table;
//! version 3 made rows typed: a row carries what a northbound format needs to encode the message at
//! publish time (the device as its key, its [`RowKind`], the per-device `seq` assigned at commit,
//! and the [`record`] — point, typed value, unit, reading time, quality and reason — in `payload`),
//! not the encoded message. Version 4 stamps batches on the boot clock (invariant 5) and writes
//! fewer pages per commit (an SD card's wear): the batch's stamp is on its last row instead of a
//! `batch` table with its own time index, and the counters and the device sequence numbers share
//! one small `state` table (one page at a site's scale) instead of `meta` and `device_seq`. A small
//! commit thus writes 2 pages (the outbox's last leaf and the `state` page) instead of 5.
//!
//! A writer opening a version 1, 2 or 3 outbox upgrades it in place in the open transaction
//! (`CREATE TABLE dead_letter`, `ALTER TABLE … ADD COLUMN`, `state` filled from `meta` and
//! `device_seq`, which are dropped with `batch`; no row rewritten), keeping every row: rows of
//! version 1/2 read back as [`RowKind::Message`] and are published as stored, in id order, before
//! any row of the new build (ids keep increasing); rows stored before version 4 count their age
//! from the upgrade. A reader of an older file sees it as it is and changes nothing. A newer file
//! is refused by a build that only knows an older version.
//!
//! ```sql
//! CREATE TABLE outbox (
//!     id          INTEGER PRIMARY KEY,  -- assigned by Outbox: last_id + 1, …; never reused
//!     topic       TEXT    NOT NULL,
//!     payload     BLOB    NOT NULL,
//!     qos         INTEGER NOT NULL,     -- 0..=255 as given by the caller (MQTT uses 0..=2)
//!     retain      INTEGER NOT NULL,     -- 0 / 1
//!     enqueued_ns INTEGER NOT NULL,     -- UTC wall clock at append, ns since the Unix epoch
//!     kind        INTEGER NOT NULL DEFAULT 0,  -- RowKind; 0: topic/payload are the MQTT message
//!     seq         INTEGER NOT NULL DEFAULT 0,  -- per-device seq assigned at commit (typed rows)
//!     boot        INTEGER,              -- last row of a batch: boot id (64 bits); else NULL
//!     boottime_ns INTEGER,              -- last row of a batch: CLOCK_BOOTTIME at append
//!     synced      INTEGER               -- last row of a batch: wall clock synchronised (0/1)
//! );                                    -- typed rows: topic = device id, payload = record
//! CREATE TABLE state (                  -- WITHOUT ROWID
//!     ns       INTEGER NOT NULL,        -- 0: the counters row (key ''); 1: a device (key = id)
//!     key      TEXT    NOT NULL,
//!     last_seq INTEGER,                 -- ns 1: last sequence number handed out and committed
//!     write_gen INTEGER, last_id INTEGER, rows INTEGER, bytes INTEGER,  -- ns 0 only:
//!     dropped_for_space_total INTEGER, dropped_for_age_total INTEGER,   -- see invariants 2, 6, 8
//!     max_bytes INTEGER,                -- byte bound of the last writer, for read-only stats
//!     PRIMARY KEY (ns, key)
//! ) WITHOUT ROWID;
//! CREATE TABLE dead_letter (            -- rows set aside (invariant 11); since version 2
//!     id          INTEGER PRIMARY KEY,  -- the row's outbox id
//!     topic       TEXT    NOT NULL,
//!     payload     BLOB    NOT NULL,
//!     qos         INTEGER NOT NULL,
//!     retain      INTEGER NOT NULL,
//!     enqueued_ns INTEGER NOT NULL,     -- as in outbox
//!     dead_ns     INTEGER NOT NULL,     -- UTC wall clock when it was set aside
//!     reason      TEXT    NOT NULL,     -- why, for `weir buffer stats`
//!     kind        INTEGER NOT NULL DEFAULT 0,  -- as in outbox (since version 3)
//!     seq         INTEGER NOT NULL DEFAULT 0,
//!     sent_topic  TEXT,                 -- the topic it was published on, if the forwarder said
//!     boot INTEGER, boottime_ns INTEGER, synced INTEGER  -- its batch's stamp (since version 4)
//! );
//! ```
//!
//! # Cost
//!
//! An append is one transaction: one cached `INSERT` per row plus a constant number of statements (the
//! counters row, one upsert per device that got sequence numbers). [`Outbox::delete`] removes each run
//! of consecutive ids with one ranged `SELECT count/sum` and one ranged `DELETE`, so acking in id order
//! costs two statements per call, not per row. Opening and [`Outbox::stats`] never scan the table.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use std::sync::Arc;

pub use weir_core::clock::{MonotonicSource, MonotonicStamp, SimulatedMonotonic, SystemMonotonic};

pub mod record;

/// Fixed per-row overhead, in bytes, added to `len(topic) + len(payload)` when sizing a row for the byte
/// bound. It approximates SQLite's record header, the id, qos/retain/timestamp columns and the cell
/// pointer, so `max_bytes` roughly tracks the file's real growth.
pub const ROW_OVERHEAD_BYTES: u64 = 32;

/// `PRAGMA application_id` of a Weir outbox: the ASCII bytes `"WEIR"`.
pub const APPLICATION_ID: i32 = 0x5745_4952;

/// `PRAGMA user_version` of the schema this build reads and writes.
pub const SCHEMA_VERSION: i32 = 4;

/// Dead letters kept at most (invariant 11); beyond it the oldest are dropped.
pub const DEAD_LETTER_MAX_ROWS: u64 = 10_000;

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const JOURNAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
const STATEMENT_CACHE_CAPACITY: usize = 32;

const SCHEMA_SQL: &str = "
CREATE TABLE outbox (
    id          INTEGER PRIMARY KEY,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    enqueued_ns INTEGER NOT NULL
);
CREATE TABLE batch (
    first_id    INTEGER PRIMARY KEY,
    last_id     INTEGER NOT NULL,
    enqueued_ns INTEGER NOT NULL
);
CREATE INDEX batch_enqueued ON batch (enqueued_ns);
CREATE TABLE device_seq (
    device   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE meta (
    singleton               INTEGER PRIMARY KEY CHECK (singleton = 0),
    write_gen               INTEGER NOT NULL,
    last_id                 INTEGER NOT NULL,
    rows                    INTEGER NOT NULL,
    bytes                   INTEGER NOT NULL,
    dropped_for_space_total INTEGER NOT NULL,
    dropped_for_age_total   INTEGER NOT NULL,
    max_bytes               INTEGER NOT NULL
);
INSERT INTO meta VALUES (0, 0, 0, 0, 0, 0, 0, 0);
";

/// Added by version 3 (typed rows, see [`record`]); also run on a version 1 or 2 file opened for
/// writing. `ALTER TABLE … ADD COLUMN` with a constant default rewrites no row: rows already
/// stored read back as kind 0 (a message published as stored) with `seq` 0.
const SCHEMA_V3_SQL: &str = "
ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dead_letter ADD COLUMN sent_topic TEXT;
";

/// Added by version 2; also run on a version 1 file opened for writing.
const SCHEMA_V2_SQL: &str = "
CREATE TABLE dead_letter (
    id          INTEGER PRIMARY KEY,
    topic       TEXT    NOT NULL,
    payload     BLOB    NOT NULL,
    qos         INTEGER NOT NULL,
    retain      INTEGER NOT NULL,
    enqueued_ns INTEGER NOT NULL,
    dead_ns     INTEGER NOT NULL,
    reason      TEXT    NOT NULL
);
";

/// Version 4 (the clock stamp of a batch on its last row; counters and sequence numbers in one
/// `state` table; no `batch` table): run on every file of versions 1–3 opened for writing (and on a
/// new one, after the older steps). Rows are not rewritten; the upgraded rows get their stamp
/// from [`SQL_V4_STAMP_OLD_ROWS`].
const SCHEMA_V4_SQL: &str = "
ALTER TABLE outbox ADD COLUMN boot INTEGER;
ALTER TABLE outbox ADD COLUMN boottime_ns INTEGER;
ALTER TABLE outbox ADD COLUMN synced INTEGER;
ALTER TABLE dead_letter ADD COLUMN boot INTEGER;
ALTER TABLE dead_letter ADD COLUMN boottime_ns INTEGER;
ALTER TABLE dead_letter ADD COLUMN synced INTEGER;
CREATE TABLE state (
    ns                      INTEGER NOT NULL,
    key                     TEXT    NOT NULL,
    last_seq                INTEGER,
    write_gen               INTEGER,
    last_id                 INTEGER,
    rows                    INTEGER,
    bytes                   INTEGER,
    dropped_for_space_total INTEGER,
    dropped_for_age_total   INTEGER,
    max_bytes               INTEGER,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
INSERT INTO state (ns, key, write_gen, last_id, rows, bytes, dropped_for_space_total,
                   dropped_for_age_total, max_bytes)
    SELECT 0, '', write_gen, last_id, rows, bytes, dropped_for_space_total,
           dropped_for_age_total, max_bytes FROM meta WHERE singleton = 0;
INSERT INTO state (ns, key, last_seq) SELECT 1, device, last_seq FROM device_seq;
DROP TABLE meta;
DROP TABLE device_seq;
DROP TABLE batch;
";
/// Rows stored by an older build have only a wall-clock time: they become one batch stamped
/// with the moment of the upgrade (`?1` boot, `?2` boottime), wall clock not synchronised, so
/// their age counts from the upgrade (they are kept, never dropped on a wall-clock difference).
const SQL_V4_STAMP_OLD_ROWS: &str = "UPDATE outbox SET boot = ?1, boottime_ns = ?2, synced = 0 \
     WHERE id = (SELECT max(id) FROM outbox)";
const SQL_V4_STAMP_OLD_DEAD: &str =
    "UPDATE dead_letter SET boot = ?1, boottime_ns = ?2, synced = 0";

const SQL_DEAD_LETTER_MOVE: &str = "INSERT OR REPLACE INTO dead_letter \
     (id, topic, payload, qos, retain, enqueued_ns, dead_ns, reason, kind, seq, sent_topic, boot, \
     boottime_ns, synced) \
     SELECT id, topic, payload, qos, retain, enqueued_ns, ?2, ?3, kind, seq, ?4, ?5, ?6, ?7 \
     FROM outbox WHERE id = ?1";
const SQL_DEAD_LETTER_TRIM: &str = "DELETE FROM dead_letter WHERE id IN \
     (SELECT id FROM dead_letter ORDER BY id DESC LIMIT -1 OFFSET ?1)";
const SQL_DEAD_LETTER_STATS: &str =
    "SELECT count(*), coalesce(sum(octet_length(topic) + length(payload)), 0) FROM dead_letter";
const SQL_DEAD_LETTER_LIST: &str = "SELECT id, topic, payload, qos, retain, enqueued_ns, dead_ns, \
     reason, kind, seq, sent_topic FROM dead_letter ORDER BY id LIMIT ?1";
/// The same for a read-only handle on a version 2 file (no `kind`/`seq` columns yet).
const SQL_DEAD_LETTER_LIST_V2: &str = "SELECT id, topic, payload, qos, retain, enqueued_ns, \
     dead_ns, reason, 0, 0, NULL FROM dead_letter ORDER BY id LIMIT ?1";
const SQL_DEAD_LETTER_ALL: &str =
    "SELECT id, topic, payload, qos, retain, kind, seq FROM dead_letter ORDER BY id";
const SQL_DEAD_LETTER_CLEAR: &str = "DELETE FROM dead_letter";
const SQL_DEAD_LETTER_STAMPS: &str =
    "SELECT id, enqueued_ns, boot, boottime_ns, synced FROM dead_letter ORDER BY id";
const SQL_DEAD_LETTER_DELETE_UP_TO: &str = "DELETE FROM dead_letter WHERE id <= ?1";
const SQL_HAS_DEAD_LETTER: &str =
    "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'dead_letter'";

/// A row that is not the last of its batch (no stamp: the columns stay NULL).
const SQL_INSERT: &str = "INSERT INTO outbox (id, topic, payload, qos, retain, enqueued_ns, kind, \
                          seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
/// The last row of a batch, with the batch's stamp (invariant 5).
const SQL_INSERT_LAST: &str = "INSERT INTO outbox (id, topic, payload, qos, retain, enqueued_ns, \
                          kind, seq, boot, boottime_ns, synced) \
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";
const SQL_UPSERT_SEQ: &str = "INSERT INTO state (ns, key, last_seq) VALUES (1, ?1, ?2) \
                              ON CONFLICT (ns, key) DO UPDATE SET last_seq = excluded.last_seq";
const SQL_SELECT_SEQS: &str = "SELECT key, last_seq FROM state WHERE ns = 1";
const SQL_SELECT_META: &str = "SELECT write_gen, last_id, rows, bytes, dropped_for_space_total, \
                               dropped_for_age_total, max_bytes FROM state WHERE ns = 0 AND key = ''";
/// The same for a read-only handle on a file of version 1 to 3.
const SQL_SELECT_META_V3: &str =
    "SELECT write_gen, last_id, rows, bytes, dropped_for_space_total, \
                               dropped_for_age_total, max_bytes FROM meta WHERE singleton = 0";
const SQL_UPDATE_META: &str = "UPDATE state SET write_gen = ?1, last_id = ?2, rows = ?3, bytes = ?4, \
                               dropped_for_space_total = ?5, dropped_for_age_total = ?6, max_bytes = ?7 \
                               WHERE ns = 0 AND key = ''";
const SQL_MAX_ID: &str = "SELECT max(id) FROM outbox";
const SQL_OLDEST_FIRST: &str =
    "SELECT id, octet_length(topic) + length(payload) FROM outbox ORDER BY id";
const SQL_DELETE_UP_TO: &str = "DELETE FROM outbox WHERE id <= ?1";
const SQL_SIZE_RANGE: &str =
    "SELECT count(*), coalesce(sum(octet_length(topic) + length(payload)), 0) \
                              FROM outbox WHERE id BETWEEN ?1 AND ?2";
const SQL_DELETE_RANGE: &str = "DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2";
/// The stamped rows (each the last row of its batch) from id `?1` on, in id order: the first is
/// the stamp of the row `?1`'s batch. Read lazily, so finding the oldest batch reads at most one
/// batch's rows.
const SQL_STAMPS_FROM: &str = "SELECT id, enqueued_ns, boot, boottime_ns, synced FROM outbox \
                               WHERE id >= ?1 AND boot IS NOT NULL ORDER BY id";
/// The row just before id `?1` and whether it lacks a stamp (is not the last row of its batch).
const SQL_ROW_BEFORE: &str =
    "SELECT id, boot IS NULL FROM outbox WHERE id < ?1 ORDER BY id DESC LIMIT 1";
const SQL_SET_STAMP: &str =
    "UPDATE outbox SET boot = ?2, boottime_ns = ?3, synced = ?4 WHERE id = ?1";
const SQL_READ_AFTER: &str = "SELECT id, topic, payload, qos, retain, enqueued_ns, kind, seq \
                              FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2";
/// The same for a read-only handle on a file of version 1 or 2 (no `kind`/`seq` columns yet).
const SQL_READ_AFTER_V2: &str = "SELECT id, topic, payload, qos, retain, enqueued_ns, 0, 0 \
                                 FROM outbox WHERE id > ?1 ORDER BY id LIMIT ?2";
const SQL_HAS_KIND: &str = "SELECT 1 FROM pragma_table_info('outbox') WHERE name = 'kind'";
const SQL_STATS: &str = "SELECT rows, bytes, \
                         (SELECT enqueued_ns FROM outbox ORDER BY id LIMIT 1), \
                         (SELECT max(id) FROM outbox), dropped_for_space_total, dropped_for_age_total, \
                         max_bytes FROM state WHERE ns = 0 AND key = ''";
/// The same for a read-only handle on a file of version 1 to 3.
const SQL_STATS_V3: &str = "SELECT rows, bytes, \
                         (SELECT b.enqueued_ns FROM batch b WHERE EXISTS (SELECT 1 FROM outbox o \
                          WHERE o.id BETWEEN b.first_id AND b.last_id) ORDER BY b.enqueued_ns LIMIT 1), \
                         (SELECT max(id) FROM outbox), dropped_for_space_total, dropped_for_age_total, \
                         max_bytes FROM meta WHERE singleton = 0";

/// Pages inside the database SQLite reuses before growing the file, and their size (invariant 10).
const SQL_FREE_PAGES: &str =
    "SELECT freelist_count, page_size FROM pragma_freelist_count, pragma_page_size";

/// Bounds and durability of an outbox opened for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Byte bound (row sizes as described at [`ROW_OVERHEAD_BYTES`]); oldest rows go first.
    pub max_bytes: u64,
    /// Rows older than this are dropped by [`Outbox::enforce_age`].
    pub max_age: Duration,
    /// `synchronous = FULL` (fsync per commit) when true, `NORMAL` otherwise.
    pub synchronous_full: bool,
    /// Free space (bytes) an append leaves on the database's filesystem: below it, appends fail
    /// with [`StoreError::DiskFull`] and store nothing. See invariant 10.
    pub min_free_bytes: u64,
}

/// A message to append; built by the closure given to [`Outbox::append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
}

/// What a row holds (the `kind` column). A northbound format encodes a typed row when it is
/// published; a [`RowKind::Message`] row is published as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RowKind {
    /// `topic` and `payload` are the MQTT message, published as stored: every row written before
    /// schema version 3, and messages appended with [`Outbox::append`].
    Message = 0,
    /// One reading of device `topic` ([`record::encode_reading`] in `payload`), to be published as
    /// one message.
    Reading = 1,
    /// Several readings of device `topic` (concatenated records), to be published as one message.
    Readings = 2,
    /// An alert raised or cleared for device `topic` ([`record::encode_alert`]).
    Alert = 3,
    /// The result of a command to device `topic` ([`record::encode_result`]).
    CommandResult = 4,
}

impl RowKind {
    /// The kind stored as `code`; an unknown code (a newer build's row) is `None`.
    pub fn from_code(code: u8) -> Option<RowKind> {
        Some(match code {
            0 => RowKind::Message,
            1 => RowKind::Reading,
            2 => RowKind::Readings,
            3 => RowKind::Alert,
            4 => RowKind::CommandResult,
            _ => return None,
        })
    }
}

/// A typed row to append with [`Outbox::append_rows`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRow {
    pub kind: RowKind,
    /// The device id (the MQTT topic for [`RowKind::Message`]).
    pub key: String,
    /// The record (see [`record`]); the MQTT payload for [`RowKind::Message`].
    pub body: Vec<u8>,
    /// The row's sequence number, taken from the [`SeqAllocator`] (0 when it has none).
    pub seq: u64,
    pub qos: u8,
    pub retain: bool,
}

impl From<NewMessage> for NewRow {
    fn from(m: NewMessage) -> NewRow {
        NewRow {
            kind: RowKind::Message,
            key: m.topic,
            body: m.payload,
            seq: 0,
            qos: m.qos,
            retain: m.retain,
        }
    }
}

/// A committed row as read back by [`Outbox::read_after`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: i64,
    /// The MQTT topic of a [`RowKind::Message`] row; the device id of a typed row.
    pub topic: String,
    /// The MQTT payload of a [`RowKind::Message`] row; the record of a typed row.
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    /// UTC wall clock at append, nanoseconds since the Unix epoch.
    pub enqueued_ns: i64,
    /// The `kind` column as stored (see [`RowKind::from_code`]).
    pub kind: u8,
    /// The sequence number assigned at commit (0 for rows without one).
    pub seq: u64,
}

/// What one [`Outbox::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendReport {
    /// Rows inserted (some of them may already have been dropped again for space).
    pub appended: usize,
    /// Id of the first inserted row. When `appended == 0`, `first_id == last_id + 1` (an empty range).
    pub first_id: i64,
    /// Id of the last inserted row (the outbox's highest id so far when `appended == 0`).
    pub last_id: i64,
    /// Rows (oldest first, possibly including rows of this batch) deleted to respect `max_bytes`.
    pub dropped_for_space: u64,
}

/// A snapshot of the outbox for metrics and `weir buffer stats`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStats {
    /// Rows currently stored.
    pub rows: u64,
    /// Sum of row sizes (see [`ROW_OVERHEAD_BYTES`]).
    pub bytes: u64,
    /// `enqueued_ns` of the oldest row (the lowest id), `None` when empty.
    pub oldest_enqueued_ns: Option<i64>,
    /// Age of the oldest row as the age bound counts it (invariant 5: on the boot clock, not
    /// the wall clock), nanoseconds; `None` when empty.
    pub oldest_age_ns: Option<i64>,
    /// Highest id stored, `None` when empty.
    pub newest_id: Option<i64>,
    /// Rows dropped to respect the byte bound since the outbox was created.
    pub dropped_for_space_total: u64,
    /// Rows dropped for age since the outbox was created.
    pub dropped_for_age_total: u64,
    /// Byte bound of the (last) writer.
    pub max_bytes: u64,
    /// Rows set aside in the dead-letter table (invariant 11); not part of `rows`.
    pub dead_letter_rows: u64,
    /// Their size, counted like `bytes`; not part of `bytes`.
    pub dead_letter_bytes: u64,
}

/// A row set aside by [`Outbox::dead_letter`], as listed by [`Outbox::dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as it was stored (its `id` is the outbox id it had).
    pub message: StoredMessage,
    /// UTC wall clock when it was set aside, ns since the Unix epoch.
    pub dead_ns: i64,
    /// Why it was set aside.
    pub reason: String,
    /// The MQTT topic it was published on, when the forwarder said (typed rows store the device,
    /// not the topic).
    pub sent_topic: Option<String>,
}

/// Errors of the outbox; each names the database file and, where it applies, the operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed while doing `op`.
    #[error("outbox {}: {op}: {cause}", .path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        cause: rusqlite::Error,
    },
    /// SQLite reported the database image as malformed while doing `op`.
    #[error("outbox {}: {op}: the database is corrupt: {cause}", .path.display())]
    Corrupt {
        path: PathBuf,
        op: &'static str,
        cause: rusqlite::Error,
    },
    /// The file is not a Weir outbox (not SQLite at all, or another application's database).
    #[error("{} is not a Weir outbox: {reason}", .path.display())]
    NotAnOutbox { path: PathBuf, reason: String },
    /// The file is a Weir outbox of a schema version this build does not understand.
    #[error("outbox {} has schema version {found}; this build understands version {supported}", .path.display())]
    UnsupportedSchema {
        path: PathBuf,
        found: i32,
        supported: i32,
    },
    /// The file could not be accessed at all.
    #[error("outbox {}: {op}: {cause}", .path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        cause: std::io::Error,
    },
    /// Another process holds the outbox open for writing (invariant 8).
    #[error(
        "outbox {} is in use: another weir (a `weir run` or `weir buffer drain` on the same state \
         directory) holds the lock {}; stop it first",
        .path.display(), .lock_path.display()
    )]
    Locked { path: PathBuf, lock_path: PathBuf },
    /// A write was attempted through a handle from [`Outbox::open_read_only`].
    #[error("outbox {}: {op} is not possible on a read-only handle", .path.display())]
    ReadOnly { path: PathBuf, op: &'static str },
    /// Appending would leave less than [`Limits::min_free_bytes`] free on the database's
    /// filesystem (invariant 10). Nothing was stored; retry once space is freed.
    #[error(
        "outbox {}: the disk is full: {available_bytes} bytes free on its filesystem (counting \
         space inside the database that SQLite reuses), store.min_free_bytes keeps {min_free_bytes} \
         for deleting delivered rows; new readings are held until space is freed",
        .path.display()
    )]
    DiskFull {
        path: PathBuf,
        available_bytes: u64,
        min_free_bytes: u64,
    },
    /// A stored value is out of range (a negative counter, a sequence number past `i64::MAX`, …).
    #[error("outbox {}: {op}: {what}", .path.display())]
    OutOfRange {
        path: PathBuf,
        op: &'static str,
        what: String,
    },
}

impl StoreError {
    /// The database file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Sqlite { path, .. }
            | StoreError::Corrupt { path, .. }
            | StoreError::NotAnOutbox { path, .. }
            | StoreError::UnsupportedSchema { path, .. }
            | StoreError::Io { path, .. }
            | StoreError::ReadOnly { path, .. }
            | StoreError::Locked { path, .. }
            | StoreError::DiskFull { path, .. }
            | StoreError::OutOfRange { path, .. } => path,
        }
    }
}

/// Maps a rusqlite error to a [`StoreError`] with context, classifying "not a database" and corruption.
fn sql_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
    move |cause| match cause.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => StoreError::NotAnOutbox {
            path: path.to_path_buf(),
            reason: format!("{op}: {cause}"),
        },
        Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_path_buf(),
            op,
            cause,
        },
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            op,
            cause,
        },
    }
}

fn out_of_range(path: &Path, op: &'static str, what: String) -> StoreError {
    StoreError::OutOfRange {
        path: path.to_path_buf(),
        op,
        what,
    }
}

/// Hands out per-device sequence numbers inside one [`Outbox::append`].
///
/// Numbers are strictly increasing per device across batches and restarts; the first number of a device
/// never seen before is 1. Numbers issued in a batch become durable only if the batch commits.
pub struct SeqAllocator<'a> {
    committed: &'a HashMap<String, u64>,
    pending: &'a mut HashMap<String, u64>,
}

impl SeqAllocator<'_> {
    /// The next sequence number of `device`.
    pub fn next(&mut self, device: &str) -> u64 {
        if let Some(last) = self.pending.get_mut(device) {
            *last = last.saturating_add(1);
            return *last;
        }
        let next = self
            .committed
            .get(device)
            .copied()
            .unwrap_or(0)
            .saturating_add(1);
        self.pending.insert(device.to_owned(), next);
        next
    }
}

impl fmt::Debug for SeqAllocator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeqAllocator")
            .field("devices_known", &self.committed.len())
            .field("pending", &self.pending)
            .finish()
    }
}

/// The counters row (`state` ns 0; the `meta` table before version 4), cached by a writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    write_gen: i64,
    last_id: i64,
    rows: u64,
    bytes: u64,
    dropped_for_space_total: u64,
    dropped_for_age_total: u64,
    max_bytes: u64,
}

/// The clock stamp of a batch, stored on its last row (invariant 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    /// The batch's last row.
    id: i64,
    wall_ns: i64,
    boot: i64,
    boottime_ns: i64,
    synced: bool,
}

impl Stamp {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stamp> {
        Ok(Stamp {
            id: r.get(0)?,
            wall_ns: r.get(1)?,
            boot: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
            boottime_ns: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
            synced: r.get::<_, Option<bool>>(4)?.unwrap_or(false),
        })
    }
}

/// A boot id as stored (the 64 bits reinterpreted as SQLite's signed integer).
fn boot_column(boot: u64) -> i64 {
    i64::from_ne_bytes(boot.to_ne_bytes())
}

/// The age rule of invariant 5, in nanoseconds (never negative).
fn age_ns(now: &MonotonicStamp, s: &Stamp) -> i64 {
    if s.boot == boot_column(now.boot) && now.boottime_ns >= s.boottime_ns {
        now.boottime_ns - s.boottime_ns
    } else if s.synced && now.wall_synchronised {
        now.boottime_ns
            .max(now.wall_ns.saturating_sub(s.wall_ns))
            .max(0)
    } else {
        now.boottime_ns.max(0)
    }
}

fn to_u64(path: &Path, op: &'static str, name: &str, v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| out_of_range(path, op, format!("{name} is negative ({v})")))
}

fn to_i64(path: &Path, op: &'static str, name: &str, v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| out_of_range(path, op, format!("{name} {v} exceeds i64::MAX")))
}

fn read_meta(conn: &Connection, path: &Path, op: &'static str) -> Result<Meta, StoreError> {
    read_meta_sql(conn, path, op, SQL_SELECT_META)
}

fn read_meta_sql(
    conn: &Connection,
    path: &Path,
    op: &'static str,
    sql: &str,
) -> Result<Meta, StoreError> {
    let raw: [i64; 7] = conn
        .prepare_cached(sql)
        .and_then(|mut s| {
            s.query_row([], |r| {
                Ok([
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ])
            })
        })
        .map_err(sql_err(path, op))?;
    Ok(Meta {
        write_gen: raw[0],
        last_id: raw[1],
        rows: to_u64(path, op, "meta.rows", raw[2])?,
        bytes: to_u64(path, op, "meta.bytes", raw[3])?,
        dropped_for_space_total: to_u64(path, op, "meta.dropped_for_space_total", raw[4])?,
        dropped_for_age_total: to_u64(path, op, "meta.dropped_for_age_total", raw[5])?,
        max_bytes: to_u64(path, op, "meta.max_bytes", raw[6])?,
    })
}

fn write_meta(
    conn: &Connection,
    path: &Path,
    op: &'static str,
    m: &Meta,
) -> Result<(), StoreError> {
    let values = [
        m.write_gen,
        m.last_id,
        to_i64(path, op, "rows", m.rows)?,
        to_i64(path, op, "bytes", m.bytes)?,
        to_i64(
            path,
            op,
            "dropped_for_space_total",
            m.dropped_for_space_total,
        )?,
        to_i64(path, op, "dropped_for_age_total", m.dropped_for_age_total)?,
        // `u64::MAX` means "unbounded"; store it clamped.
        i64::try_from(m.max_bytes).unwrap_or(i64::MAX),
    ];
    let changed = conn
        .prepare_cached(SQL_UPDATE_META)
        .and_then(|mut s| s.execute(values))
        .map_err(sql_err(path, op))?;
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::NotAnOutbox {
            path: path.to_path_buf(),
            reason: format!("{op}: the meta row is missing"),
        })
    }
}

fn load_seqs(
    conn: &Connection,
    path: &Path,
    op: &'static str,
) -> Result<HashMap<String, u64>, StoreError> {
    let mut stmt = conn
        .prepare_cached(SQL_SELECT_SEQS)
        .map_err(sql_err(path, op))?;
    let mut rows = stmt.query([]).map_err(sql_err(path, op))?;
    let mut seqs = HashMap::new();
    while let Some(row) = rows.next().map_err(sql_err(path, op))? {
        let device: String = row.get(0).map_err(sql_err(path, op))?;
        let last: i64 = row.get(1).map_err(sql_err(path, op))?;
        let last = to_u64(path, op, "device_seq.last_seq", last)?;
        seqs.insert(device, last);
    }
    Ok(seqs)
}

fn max_id(conn: &Connection, path: &Path, op: &'static str) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached(SQL_MAX_ID)
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(sql_err(path, op))
}

/// Reads the header fields that identify a Weir outbox.
fn identify(
    conn: &Connection,
    path: &Path,
    op: &'static str,
) -> Result<(i32, i32, i64), StoreError> {
    let err = sql_err(path, op);
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(&err)?;
    let version: i32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(&err)?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .map_err(&err)?;
    Ok((app_id, version, objects))
}

/// What the header says about a file.
enum Kind {
    /// A brand-new, empty database: the schema may be created.
    Empty,
    /// A Weir outbox of our schema version.
    Ours,
    /// A Weir outbox of version 1, before the dead-letter table.
    V1,
    /// A Weir outbox of version 2, before typed rows.
    V2,
    /// A Weir outbox of version 3, before the boot-clock stamps and the `state` table.
    V3,
}

fn classify(path: &Path, (app_id, version, objects): (i32, i32, i64)) -> Result<Kind, StoreError> {
    match app_id {
        0 if version == 0 && objects == 0 => Ok(Kind::Empty),
        0 => Err(StoreError::NotAnOutbox {
            path: path.to_path_buf(),
            reason: format!(
                "SQLite database without the Weir application_id ({objects} schema objects, \
                 user_version {version})"
            ),
        }),
        APPLICATION_ID if version == SCHEMA_VERSION => Ok(Kind::Ours),
        APPLICATION_ID if version == 1 => Ok(Kind::V1),
        APPLICATION_ID if version == 2 => Ok(Kind::V2),
        APPLICATION_ID if version == 3 => Ok(Kind::V3),
        APPLICATION_ID => Err(StoreError::UnsupportedSchema {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        }),
        other => Err(StoreError::NotAnOutbox {
            path: path.to_path_buf(),
            reason: format!(
                "SQLite database with application_id {other:#010x}, expected {APPLICATION_ID:#010x}"
            ),
        }),
    }
}

/// The writer's lock file beside the outbox: `<outbox>.lock`.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the exclusive, non-blocking `flock` of invariant 8.
fn lock_writer(path: &Path) -> Result<std::fs::File, StoreError> {
    const OP: &str = "open: lock";
    let lock_path = lock_path(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|cause| StoreError::Io {
            path: path.to_path_buf(),
            op: OP,
            cause,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StoreError::Locked {
            path: path.to_path_buf(),
            lock_path,
        }),
        Err(e) => Err(StoreError::Io {
            path: path.to_path_buf(),
            op: OP,
            cause: e.into(),
        }),
    }
}

fn row_size(topic_len: usize, payload_len: usize) -> u64 {
    // usize -> u64 is lossless on every target Rust supports.
    topic_len as u64 + payload_len as u64 + ROW_OVERHEAD_BYTES
}

/// The durable outbox. See the [crate documentation](crate) for invariants and schema.
pub struct Outbox {
    conn: Connection,
    path: PathBuf,
    /// `None` for a read-only handle.
    limits: Option<Limits>,
    /// The counters row as this handle last committed (or loaded) it.
    meta: Meta,
    /// Last committed sequence number per device.
    seqs: HashMap<String, u64>,
    /// Sequence numbers issued in the batch being built; reused allocation.
    pending: HashMap<String, u64>,
    /// Whether the file has the dead-letter table (a reader of a version 1 file: no).
    has_dead_letter: bool,
    /// Whether the file has the `kind`/`seq` columns (a reader of a version 1 or 2 file: no).
    has_kind: bool,
    /// A reader of a file older than version 4 (`meta` and `batch` tables, no stamps).
    legacy: bool,
    /// Where the age bound reads time (invariant 5).
    clock: Arc<dyn MonotonicSource>,
    /// The exclusive lock of a writer (invariant 8), released when the handle is dropped.
    _lock: Option<std::fs::File>,
}

impl fmt::Debug for Outbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbox")
            .field("path", &self.path)
            .field("read_only", &self.limits.is_none())
            .field("limits", &self.limits)
            .field("meta", &self.meta)
            .field("devices", &self.seqs.len())
            .finish_non_exhaustive()
    }
}

impl Outbox {
    /// Opens or creates the db (creating parent dirs is NOT its job). WAL, synchronous FULL (or NORMAL
    /// when `!synchronous_full`), busy_timeout 5 s. Never deletes/recreates an existing db; a file that is
    /// not a Weir outbox (or a corrupt one) is an error naming the path.
    ///
    /// Takes the writer's lock first (invariant 8): fails with [`StoreError::Locked`] while another
    /// handle — in this process or another — has the outbox open for writing.
    pub fn open(path: &Path, limits: Limits) -> Result<Outbox, StoreError> {
        Outbox::open_with_clock(path, limits, Arc::new(SystemMonotonic))
    }

    /// [`Outbox::open`] with the clock the age bound reads (a [`SimulatedMonotonic`] in tests).
    pub fn open_with_clock(
        path: &Path,
        limits: Limits,
        clock: Arc<dyn MonotonicSource>,
    ) -> Result<Outbox, StoreError> {
        const OP: &str = "open";
        let lock = lock_writer(path)?;
        let err = sql_err(path, OP);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(&err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);

        // Recognise the file before changing anything in it (switching to WAL rewrites the header).
        classify(path, identify(&conn, path, OP)?)?;

        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(&err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NotAnOutbox {
                path: path.to_path_buf(),
                reason: format!("cannot switch to WAL journal mode (got {mode:?})"),
            });
        }
        let sync = if limits.synchronous_full {
            "FULL"
        } else {
            "NORMAL"
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(&err)?;
        let _: i64 = conn
            .pragma_update_and_check(None, "journal_size_limit", JOURNAL_SIZE_LIMIT, |r| r.get(0))
            .map_err(&err)?;

        // Classify again under the write lock: another process may have created the schema meanwhile.
        let tx = Transaction::new(&mut conn, TransactionBehavior::Immediate).map_err(&err)?;
        let kind = classify(path, identify(&tx, path, OP)?)?;
        let from = match kind {
            Kind::Empty => {
                tx.execute_batch(SCHEMA_SQL).map_err(&err)?;
                tx.pragma_update(None, "application_id", APPLICATION_ID)
                    .map_err(&err)?;
                0
            }
            Kind::V1 => 1,
            Kind::V2 => 2,
            Kind::V3 => 3,
            Kind::Ours => SCHEMA_VERSION,
        };
        if from < SCHEMA_VERSION {
            if from < 2 {
                tx.execute_batch(SCHEMA_V2_SQL).map_err(&err)?;
            }
            if from < 3 {
                tx.execute_batch(SCHEMA_V3_SQL).map_err(&err)?;
            }
            tx.execute_batch(SCHEMA_V4_SQL).map_err(&err)?;
            let now = clock.now();
            let stamp = params![boot_column(now.boot), now.boottime_ns];
            tx.execute(SQL_V4_STAMP_OLD_ROWS, stamp).map_err(&err)?;
            tx.execute(SQL_V4_STAMP_OLD_DEAD, stamp).map_err(&err)?;
            tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                .map_err(&err)?;
            if from == 0 {
                tracing::info!(path = %path.display(), "created outbox");
            } else {
                tracing::info!(path = %path.display(), "outbox upgraded from schema version {from} to {SCHEMA_VERSION} (typed rows, boot-clock ages); stored rows are kept and published first, as stored; their age counts from now");
            }
        }
        let mut meta = read_meta(&tx, path, OP)?;
        // Defensive: never hand out an id that is already present, whatever `last_id` says.
        if let Some(max) = max_id(&tx, path, OP)? {
            meta.last_id = meta.last_id.max(max);
        }
        let seqs = load_seqs(&tx, path, OP)?;
        let stored = Meta {
            max_bytes: limits.max_bytes.min(i64::MAX as u64),
            ..meta
        };
        if stored != meta {
            meta = Meta {
                write_gen: meta.write_gen.wrapping_add(1),
                ..stored
            };
            write_meta(&tx, path, OP, &meta)?;
        }
        tx.commit().map_err(&err)?;
        tracing::debug!(path = %path.display(), rows = meta.rows, bytes = meta.bytes, "opened outbox");
        Ok(Outbox {
            conn,
            path: path.to_path_buf(),
            limits: Some(limits),
            meta,
            seqs,
            pending: HashMap::new(),
            has_dead_letter: true,
            has_kind: true,
            legacy: false,
            clock,
            _lock: Some(lock),
        })
    }

    /// Read-only open for `weir buffer stats` while the daemon runs (must not block or alter the running
    /// daemon's db).
    pub fn open_read_only(path: &Path) -> Result<Outbox, StoreError> {
        const OP: &str = "open_read_only";
        let err = sql_err(path, OP);
        // A clear "no such file" instead of SQLite's generic "unable to open database file".
        std::fs::metadata(path).map_err(|cause| StoreError::Io {
            path: path.to_path_buf(),
            op: OP,
            cause,
        })?;
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(&err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(&err)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        let legacy = match classify(path, identify(&conn, path, OP)?)? {
            Kind::Ours => false,
            Kind::V1 | Kind::V2 | Kind::V3 => true,
            Kind::Empty => {
                return Err(StoreError::NotAnOutbox {
                    path: path.to_path_buf(),
                    reason: "empty database (never opened by a Weir writer)".to_owned(),
                })
            }
        };
        let meta = read_meta_sql(
            &conn,
            path,
            OP,
            if legacy {
                SQL_SELECT_META_V3
            } else {
                SQL_SELECT_META
            },
        )?;
        let has_dead_letter = conn
            .prepare(SQL_HAS_DEAD_LETTER)
            .and_then(|mut s| s.exists([]))
            .map_err(&err)?;
        let has_kind = conn
            .prepare(SQL_HAS_KIND)
            .and_then(|mut s| s.exists([]))
            .map_err(&err)?;
        Ok(Outbox {
            conn,
            path: path.to_path_buf(),
            limits: None,
            meta,
            seqs: HashMap::new(),
            pending: HashMap::new(),
            has_dead_letter,
            has_kind,
            legacy,
            clock: Arc::new(SystemMonotonic),
            _lock: None,
        })
    }

    /// Invariant 10: fail with [`StoreError::DiskFull`] when an append would eat into the reserve.
    /// One `statvfs` per append; the freelist is read only when the filesystem alone is short.
    /// A filesystem that cannot be asked (`statvfs` failing) is not held against the append: the
    /// reserve is a margin, and refusing every reading because it cannot be measured would lose
    /// more than it protects (SQLite's own "disk full" still stops a write that does not fit).
    fn check_free_space(&mut self, op: &'static str, limits: Limits) -> Result<(), StoreError> {
        if limits.min_free_bytes == 0 {
            return Ok(());
        }
        let Ok(mut available) = self.fs_available(op) else {
            return Ok(());
        };
        if available < limits.min_free_bytes {
            let err = sql_err(&self.path, op);
            let (free_pages, page_size): (i64, i64) = self
                .conn
                .prepare_cached(SQL_FREE_PAGES)
                .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(&err)?;
            available = available
                .saturating_add((free_pages.max(0) as u64).saturating_mul(page_size.max(0) as u64));
        }
        if available < limits.min_free_bytes {
            return Err(StoreError::DiskFull {
                path: self.path.clone(),
                available_bytes: available,
                min_free_bytes: limits.min_free_bytes,
            });
        }
        Ok(())
    }

    /// Bytes free on the database's filesystem for this process (`statvfs` `f_bavail`), not
    /// counting free pages inside the database. Not part of [`OutboxStats`]: it moves with every
    /// other writer on the filesystem.
    pub fn fs_available_bytes(&self) -> Result<u64, StoreError> {
        self.fs_available("fs_available_bytes")
    }

    /// Bytes available to this (unprivileged) process on the database's filesystem.
    fn fs_available(&self, op: &'static str) -> Result<u64, StoreError> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let st = rustix::fs::statvfs(dir).map_err(|e| StoreError::Io {
            path: self.path.clone(),
            op,
            cause: e.into(),
        })?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// Change the limits of an open read-write outbox (a configuration reload): the byte bound
    /// applies from the next append, the free-space reserve from the next check. Whether commits
    /// are `synchronous = FULL` is fixed while open (it is a connection setting) and is kept.
    /// Returns false on a read-only outbox.
    pub fn update_limits(&mut self, f: impl FnOnce(&mut Limits)) -> bool {
        match &mut self.limits {
            Some(l) => {
                let sync = l.synchronous_full;
                f(l);
                l.synchronous_full = sync;
                true
            }
            None => false,
        }
    }

    fn limits(&self, op: &'static str) -> Result<Limits, StoreError> {
        self.limits.ok_or_else(|| StoreError::ReadOnly {
            path: self.path.clone(),
            op,
        })
    }

    /// ONE transaction: `build` gets a [`SeqAllocator`] handing out per-device sequence numbers, returns
    /// the messages; they are inserted in order; then the byte bound is enforced (oldest rows deleted first
    /// until total <= max_bytes, counted in `dropped_for_space_total`); commit (one fsync).
    ///
    /// `build` runs inside the write transaction. If anything fails (or `build` panics) nothing of the
    /// batch is stored and no sequence number is consumed. An empty batch that issued no sequence numbers
    /// commits nothing (no fsync).
    pub fn append<F: FnOnce(&mut SeqAllocator<'_>) -> Vec<NewMessage>>(
        &mut self,
        build: F,
    ) -> Result<AppendReport, StoreError> {
        self.append_rows(|seqs| build(seqs).into_iter().map(NewRow::from).collect())
    }

    /// [`Outbox::append`] for typed rows: the same single transaction, the same bounds; each row
    /// keeps its kind and the `seq` the closure gave it.
    pub fn append_rows<F: FnOnce(&mut SeqAllocator<'_>) -> Vec<NewRow>>(
        &mut self,
        build: F,
    ) -> Result<AppendReport, StoreError> {
        const OP: &str = "append";
        let limits = self.limits(OP)?;
        self.check_free_space(OP, limits)?;
        let Outbox {
            conn,
            path,
            meta,
            seqs,
            pending,
            clock,
            ..
        } = self;
        let path: &Path = path;
        let err = sql_err(path, OP);

        let tx = Transaction::new(conn, TransactionBehavior::Immediate).map_err(&err)?;
        let mut m = begin_write(&tx, path, OP, meta, seqs)?;

        pending.clear();
        let messages = build(&mut SeqAllocator {
            committed: seqs,
            pending,
        });
        if messages.is_empty() && pending.is_empty() {
            // Nothing to persist: dropping `tx` ends the (read-only so far) transaction.
            return Ok(AppendReport {
                appended: 0,
                first_id: m.last_id + 1,
                last_id: m.last_id,
                dropped_for_space: 0,
            });
        }

        let now = clock.now();
        let first_id = m.last_id + 1;
        {
            let mut insert = tx.prepare_cached(SQL_INSERT).map_err(&err)?;
            let last = messages.len().saturating_sub(1);
            for (i, row) in messages.iter().enumerate() {
                let id = m.last_id + 1;
                let seq = to_i64(path, OP, "sequence number", row.seq)?;
                if i < last {
                    insert
                        .execute(params![
                            id,
                            row.key,
                            row.body,
                            row.qos,
                            row.retain,
                            now.wall_ns,
                            row.kind as u8,
                            seq,
                        ])
                        .map_err(&err)?;
                } else {
                    // The batch's clock stamp goes on its last row (invariant 5).
                    tx.prepare_cached(SQL_INSERT_LAST)
                        .and_then(|mut s| {
                            s.execute(params![
                                id,
                                row.key,
                                row.body,
                                row.qos,
                                row.retain,
                                now.wall_ns,
                                row.kind as u8,
                                seq,
                                boot_column(now.boot),
                                now.boottime_ns,
                                now.wall_synchronised,
                            ])
                        })
                        .map_err(&err)?;
                }
                m.last_id = id;
                m.rows += 1;
                m.bytes += row_size(row.key.len(), row.body.len());
            }
        }
        {
            let mut upsert = tx.prepare_cached(SQL_UPSERT_SEQ).map_err(&err)?;
            for (device, last) in pending.iter() {
                let last = to_i64(path, OP, "sequence number", *last)?;
                upsert.execute(params![device, last]).map_err(&err)?;
            }
        }

        let dropped_for_space = if m.bytes > limits.max_bytes {
            let excess = m.bytes - limits.max_bytes;
            drop_oldest(&tx, path, &mut m, excess)?
        } else {
            0
        };
        m.dropped_for_space_total += dropped_for_space;
        m.max_bytes = limits.max_bytes;
        m.write_gen = m.write_gen.wrapping_add(1);
        write_meta(&tx, path, OP, &m)?;
        tx.commit().map_err(&err)?;

        *meta = m;
        for (device, last) in pending.drain() {
            seqs.insert(device, last);
        }
        if dropped_for_space > 0 {
            tracing::debug!(path = %path.display(), dropped_for_space, "outbox full: dropped oldest rows");
        }
        Ok(AppendReport {
            appended: messages.len(),
            first_id,
            last_id: m.last_id,
            dropped_for_space,
        })
    }

    /// Rows with id > after_id in id order, at most `limit`.
    pub fn read_after(
        &mut self,
        after_id: i64,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        const OP: &str = "read_after";
        if limit == 0 {
            return Ok(Vec::new());
        }
        let err = sql_err(&self.path, OP);
        let sql = if self.has_kind {
            SQL_READ_AFTER
        } else {
            SQL_READ_AFTER_V2
        };
        let mut stmt = self.conn.prepare_cached(sql).map_err(&err)?;
        let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![after_id, sql_limit]).map_err(&err)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        while let Some(row) = rows.next().map_err(&err)? {
            out.push(StoredMessage {
                id: row.get(0).map_err(&err)?,
                topic: row.get(1).map_err(&err)?,
                payload: row.get(2).map_err(&err)?,
                qos: row.get(3).map_err(&err)?,
                retain: row.get(4).map_err(&err)?,
                enqueued_ns: row.get(5).map_err(&err)?,
                kind: row.get(6).map_err(&err)?,
                seq: to_u64(&self.path, OP, "seq", row.get(7).map_err(&err)?)?,
            });
        }
        Ok(out)
    }

    /// Delete these ids (acked) in one transaction; unknown ids (already dropped) are ignored.
    pub fn delete(&mut self, ids: &[i64]) -> Result<(), StoreError> {
        const OP: &str = "delete";
        let limits = self.limits(OP)?;
        if ids.is_empty() {
            return Ok(());
        }
        // Acks come in id order, so `ids` is normally one ascending run: delete it as ranges of
        // consecutive ids (two statements per range instead of one per id).
        let sorted;
        let ids = if ids.windows(2).all(|w| w[0] < w[1]) {
            ids
        } else {
            let mut v = ids.to_vec();
            v.sort_unstable();
            v.dedup();
            sorted = v;
            &sorted[..]
        };
        self.write(OP, limits, |tx, path, m| {
            let mut start = 0;
            while start < ids.len() {
                let mut end = start;
                while end + 1 < ids.len() && ids[end + 1] == ids[end] + 1 {
                    end += 1;
                }
                delete_range(tx, path, OP, m, ids[start], ids[end])?;
                start = end + 1;
            }
            Ok(())
        })
    }

    /// Drop rows (and dead letters) older than `max_age` by the age rule of invariant 5 (the
    /// boot clock, not the wall clock), oldest first; counted in `dropped_for_age_total`
    /// (persisted). Returns how many. Costs no write transaction when no row is due.
    pub fn enforce_age(&mut self) -> Result<u64, StoreError> {
        const OP: &str = "enforce_age";
        let limits = self.limits(OP)?;
        let max_age_ns = i64::try_from(limits.max_age.as_nanos()).unwrap_or(i64::MAX);
        let now = self.clock.now();
        let due = |s: &Stamp| age_ns(&now, s) > max_age_ns;
        let rows_due = last_due(&self.conn, &self.path, OP, SQL_STAMPS_FROM, &due)?;
        let dead_due = last_due(&self.conn, &self.path, OP, SQL_DEAD_LETTER_STAMPS, &due)?;
        if rows_due.is_none() && dead_due.is_none() {
            return Ok(0);
        }
        let mut dropped = 0;
        self.write(OP, limits, |tx, path, m| {
            let err = sql_err(path, OP);
            let rows_before = m.rows;
            // Batches are dropped oldest first: ids are in enqueue order.
            if let Some(last) = last_due(tx, path, OP, SQL_STAMPS_FROM, &due)? {
                delete_range(tx, path, OP, m, i64::MIN, last)?;
            }
            let mut dead = 0;
            if let Some(last) = last_due(tx, path, OP, SQL_DEAD_LETTER_STAMPS, &due)? {
                dead = tx
                    .prepare_cached(SQL_DEAD_LETTER_DELETE_UP_TO)
                    .and_then(|mut s| s.execute([last]))
                    .map_err(&err)? as u64;
            }
            dropped = rows_before - m.rows + dead;
            m.dropped_for_age_total += dropped;
            Ok(())
        })?;
        if dropped > 0 {
            tracing::debug!(path = %self.path.display(), dropped, "dropped rows past max_age");
        }
        Ok(dropped)
    }

    /// Counters and bounds, read from the database (so a read-only handle sees the daemon's commits).
    pub fn stats(&mut self) -> Result<OutboxStats, StoreError> {
        const OP: &str = "stats";
        let path = &self.path;
        let sql = if self.legacy { SQL_STATS_V3 } else { SQL_STATS };
        let raw: (i64, i64, Option<i64>, Option<i64>, i64, i64, i64) = self
            .conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_row([], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
                })
            })
            .map_err(sql_err(path, OP))?;
        let (dead_rows, dead_size): (i64, i64) = if self.has_dead_letter {
            self.conn
                .prepare_cached(SQL_DEAD_LETTER_STATS)
                .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
                .map_err(sql_err(path, OP))?
        } else {
            (0, 0)
        };
        let dead_letter_rows = to_u64(path, OP, "dead letter count", dead_rows)?;
        let now = self.clock.now();
        let oldest_age_ns = if self.legacy {
            // An older file has no stamps: its age by the wall clock, as that build counted it.
            raw.2.map(|t| now.wall_ns.saturating_sub(t).max(0))
        } else {
            let mut stmt = self
                .conn
                .prepare_cached(SQL_STAMPS_FROM)
                .map_err(sql_err(path, OP))?;
            let mut rows = stmt.query([i64::MIN]).map_err(sql_err(path, OP))?;
            match rows.next().map_err(sql_err(path, OP))? {
                Some(r) => Some(age_ns(&now, &Stamp::read(r).map_err(sql_err(path, OP))?)),
                None => None,
            }
        };
        Ok(OutboxStats {
            rows: to_u64(path, OP, "meta.rows", raw.0)?,
            bytes: to_u64(path, OP, "meta.bytes", raw.1)?,
            oldest_enqueued_ns: raw.2,
            oldest_age_ns,
            newest_id: raw.3,
            dropped_for_space_total: to_u64(path, OP, "meta.dropped_for_space_total", raw.4)?,
            dropped_for_age_total: to_u64(path, OP, "meta.dropped_for_age_total", raw.5)?,
            max_bytes: to_u64(path, OP, "meta.max_bytes", raw.6)?,
            dead_letter_rows,
            dead_letter_bytes: to_u64(path, OP, "dead letter sizes", dead_size)?
                + dead_letter_rows * ROW_OVERHEAD_BYTES,
        })
    }

    /// Move these rows, each with its reason, from the outbox to the dead-letter table in one
    /// transaction (invariant 11). Ids no longer in the outbox are ignored. Returns how many moved.
    /// Beyond [`DEAD_LETTER_MAX_ROWS`] the oldest dead letters are dropped (counted in
    /// `dropped_for_space_total`).
    pub fn dead_letter(&mut self, rows: &[(i64, String)]) -> Result<u64, StoreError> {
        let rows: Vec<(i64, String, Option<String>)> =
            rows.iter().map(|(id, r)| (*id, r.clone(), None)).collect();
        self.dead_letter_sent(&rows)
    }

    /// [`Outbox::dead_letter`] with the topic each row was published on (for `weir buffer
    /// stats`), if known.
    pub fn dead_letter_sent(
        &mut self,
        rows: &[(i64, String, Option<String>)],
    ) -> Result<u64, StoreError> {
        const OP: &str = "dead_letter";
        let limits = self.limits(OP)?;
        if rows.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now().wall_ns;
        let mut moved = 0;
        self.write(OP, limits, |tx, path, m| {
            let err = sql_err(path, OP);
            let rows_before = m.rows;
            for (id, reason, topic) in rows {
                // A dead letter keeps its batch's stamp for the age bound.
                let stamp = stamp_of(tx, path, OP, *id)?;
                let n = tx
                    .prepare_cached(SQL_DEAD_LETTER_MOVE)
                    .and_then(|mut s| {
                        s.execute(params![
                            id,
                            now,
                            reason,
                            topic,
                            stamp.map(|s| s.boot),
                            stamp.map(|s| s.boottime_ns),
                            stamp.map(|s| s.synced),
                        ])
                    })
                    .map_err(&err)?;
                if n > 0 {
                    delete_range(tx, path, OP, m, *id, *id)?;
                }
            }
            moved = rows_before - m.rows;
            let trimmed = tx
                .prepare_cached(SQL_DEAD_LETTER_TRIM)
                .and_then(|mut s| {
                    s.execute([i64::try_from(DEAD_LETTER_MAX_ROWS).unwrap_or(i64::MAX)])
                })
                .map_err(&err)? as u64;
            m.dropped_for_space_total += trimmed;
            Ok(())
        })?;
        Ok(moved)
    }

    /// Move every dead letter back to the end of the outbox, in their old order, as new rows (new
    /// ids, enqueued now: they get a fresh `max_age`). One transaction; the byte bound applies as
    /// for an append. Returns how many were requeued.
    pub fn requeue_dead_letters(&mut self) -> Result<u64, StoreError> {
        const OP: &str = "requeue_dead_letters";
        let limits = self.limits(OP)?;
        let now = self.clock.now();
        let mut requeued = 0;
        self.write(OP, limits, |tx, path, m| {
            let err = sql_err(path, OP);
            type Row = (String, Vec<u8>, u8, bool, u8, i64);
            let rows: Vec<Row> = tx
                .prepare_cached(SQL_DEAD_LETTER_ALL)
                .and_then(|mut s| {
                    s.query_map([], |r| {
                        Ok((
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    })?
                    .collect::<Result<_, _>>()
                })
                .map_err(&err)?;
            if rows.is_empty() {
                return Ok(());
            }
            {
                let mut insert = tx.prepare_cached(SQL_INSERT_LAST).map_err(&err)?;
                let last = rows.len() - 1;
                for (i, (topic, payload, qos, retain, kind, seq)) in rows.iter().enumerate() {
                    let id = m.last_id + 1;
                    // The stamp on the last row only (invariant 5).
                    let stamp = (i == last).then_some((
                        boot_column(now.boot),
                        now.boottime_ns,
                        now.wall_synchronised,
                    ));
                    insert
                        .execute(params![
                            id,
                            topic,
                            payload,
                            qos,
                            retain,
                            now.wall_ns,
                            kind,
                            seq,
                            stamp.map(|s| s.0),
                            stamp.map(|s| s.1),
                            stamp.map(|s| s.2),
                        ])
                        .map_err(&err)?;
                    m.last_id = id;
                    m.rows += 1;
                    m.bytes += row_size(topic.len(), payload.len());
                }
            }
            tx.prepare_cached(SQL_DEAD_LETTER_CLEAR)
                .and_then(|mut s| s.execute([]))
                .map_err(&err)?;
            if m.bytes > limits.max_bytes {
                let excess = m.bytes - limits.max_bytes;
                let dropped = drop_oldest(tx, path, m, excess)?;
                m.dropped_for_space_total += dropped;
            }
            requeued = rows.len() as u64;
            Ok(())
        })?;
        Ok(requeued)
    }

    /// The oldest dead letters, at most `limit`, in id order.
    pub fn dead_letters(&mut self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        const OP: &str = "dead_letters";
        if !self.has_dead_letter || limit == 0 {
            return Ok(Vec::new());
        }
        let err = sql_err(&self.path, OP);
        let sql_limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = if self.has_kind {
            SQL_DEAD_LETTER_LIST
        } else {
            SQL_DEAD_LETTER_LIST_V2
        };
        self.conn
            .prepare_cached(sql)
            .and_then(|mut s| {
                s.query_map([sql_limit], |r| {
                    Ok(DeadLetter {
                        message: StoredMessage {
                            id: r.get(0)?,
                            topic: r.get(1)?,
                            payload: r.get(2)?,
                            qos: r.get(3)?,
                            retain: r.get(4)?,
                            enqueued_ns: r.get(5)?,
                            kind: r.get(8)?,
                            seq: u64::try_from(r.get::<_, i64>(9)?).unwrap_or(0),
                        },
                        dead_ns: r.get(6)?,
                        reason: r.get(7)?,
                        sent_topic: r.get(10)?,
                    })
                })?
                .collect::<Result<_, _>>()
            })
            .map_err(&err)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one write transaction with the up-to-date `meta` row, then persists the row.
    fn write(
        &mut self,
        op: &'static str,
        limits: Limits,
        work: impl FnOnce(&Transaction<'_>, &Path, &mut Meta) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Outbox {
            conn,
            path,
            meta,
            seqs,
            ..
        } = self;
        let path: &Path = path;
        let err = sql_err(path, op);
        let tx = Transaction::new(conn, TransactionBehavior::Immediate).map_err(&err)?;
        let mut m = begin_write(&tx, path, op, meta, seqs)?;
        work(&tx, path, &mut m)?;
        m.max_bytes = limits.max_bytes;
        m.write_gen = m.write_gen.wrapping_add(1);
        write_meta(&tx, path, op, &m)?;
        tx.commit().map_err(&err)?;
        *meta = m;
        Ok(())
    }
}

/// Subtracts deleted rows from the counters. They cannot go below zero unless the database was edited
/// behind Weir's back; then they are clamped (and reported) rather than blocking deletes forever.
fn release(path: &Path, m: &mut Meta, rows: u64, bytes: u64) {
    if m.rows < rows || m.bytes < bytes {
        tracing::warn!(
            path = %path.display(),
            meta_rows = m.rows, meta_bytes = m.bytes, rows, bytes,
            "outbox counters below what was deleted; clamping to zero"
        );
    }
    m.rows = m.rows.saturating_sub(rows);
    m.bytes = m.bytes.saturating_sub(bytes);
}

/// Starts a write: reads the `meta` row inside `tx` and, if another handle committed since this one
/// last did, reloads the cached state. Returns the row to build the new one from.
fn begin_write(
    tx: &Transaction<'_>,
    path: &Path,
    op: &'static str,
    meta: &mut Meta,
    seqs: &mut HashMap<String, u64>,
) -> Result<Meta, StoreError> {
    let mut m = read_meta(tx, path, op)?;
    if m.write_gen != meta.write_gen {
        tracing::warn!(path = %path.display(), op, "outbox was written by another handle; reloading state");
        *seqs = load_seqs(tx, path, op)?;
        if let Some(max) = max_id(tx, path, op)? {
            m.last_id = m.last_id.max(max);
        }
        *meta = m;
    }
    Ok(*meta)
}

/// Deletes the rows with ids in `first..=last` (some may be gone already) and releases their size.
fn delete_range(
    tx: &Transaction<'_>,
    path: &Path,
    op: &'static str,
    m: &mut Meta,
    first: i64,
    last: i64,
) -> Result<(), StoreError> {
    let err = sql_err(path, op);
    let (n, size): (i64, i64) = tx
        .prepare_cached(SQL_SIZE_RANGE)
        .and_then(|mut s| s.query_row([first, last], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(&err)?;
    if n > 0 {
        keep_stamp(tx, path, op, first, last)?;
        tx.prepare_cached(SQL_DELETE_RANGE)
            .and_then(|mut s| s.execute([first, last]))
            .map_err(&err)?;
        let n = to_u64(path, op, "row count", n)?;
        let bytes = to_u64(path, op, "row sizes", size)? + n * ROW_OVERHEAD_BYTES;
        release(path, m, n, bytes);
    }
    Ok(())
}

/// Before the rows `first..=last` are deleted: if the row just before them survives without a
/// stamp, its batch's stamp is the first one in the range (its batch ends there), so it moves to
/// that row, which becomes the batch's last (invariant 5). Deleting from the oldest row on, as
/// acks and both bounds do, costs one look-up.
fn keep_stamp(
    tx: &Transaction<'_>,
    path: &Path,
    op: &'static str,
    first: i64,
    last: i64,
) -> Result<(), StoreError> {
    let err = sql_err(path, op);
    let before: Option<(i64, bool)> = tx
        .prepare_cached(SQL_ROW_BEFORE)
        .and_then(|mut s| {
            let mut rows = s.query([first])?;
            rows.next()?.map(|r| Ok((r.get(0)?, r.get(1)?))).transpose()
        })
        .map_err(&err)?;
    let Some((prev, true)) = before else {
        return Ok(());
    };
    // `prev` has no stamp; its batch's stamp is the next stamped row.
    if let Some(stamp) = stamp_of(tx, path, op, prev)? {
        if stamp.id <= last {
            tx.prepare_cached(SQL_SET_STAMP)
                .and_then(|mut s| {
                    s.execute(params![prev, stamp.boot, stamp.boottime_ns, stamp.synced])
                })
                .map_err(&err)?;
        }
    }
    Ok(())
}

/// The stamp of row `id`'s batch (the first stamped row at or after it).
fn stamp_of(
    conn: &Connection,
    path: &Path,
    op: &'static str,
    id: i64,
) -> Result<Option<Stamp>, StoreError> {
    let err = sql_err(path, op);
    let mut stmt = conn.prepare_cached(SQL_STAMPS_FROM).map_err(&err)?;
    let mut rows = stmt.query([id]).map_err(&err)?;
    match rows.next().map_err(&err)? {
        Some(r) => Ok(Some(Stamp::read(r).map_err(&err)?)),
        None => Ok(None),
    }
}

/// Walks stamps in id order (`sql`: [`SQL_STAMPS_FROM`] or the dead letters') and returns the id
/// of the last of the leading run that is `due`: everything up to it goes, the walk stops at the
/// first batch that is not due (ids are in enqueue order; see invariant 5).
fn last_due(
    conn: &Connection,
    path: &Path,
    op: &'static str,
    sql: &str,
    due: &dyn Fn(&Stamp) -> bool,
) -> Result<Option<i64>, StoreError> {
    let err = sql_err(path, op);
    let mut stmt = conn.prepare_cached(sql).map_err(&err)?;
    let mut rows = if sql == SQL_STAMPS_FROM {
        stmt.query([i64::MIN])
    } else {
        stmt.query([])
    }
    .map_err(&err)?;
    let mut last = None;
    while let Some(r) = rows.next().map_err(&err)? {
        let s = Stamp::read(r).map_err(&err)?;
        if !due(&s) {
            break;
        }
        last = Some(s.id);
    }
    Ok(last)
}

/// Deletes the oldest rows until at least `excess` bytes are freed; returns how many rows went.
fn drop_oldest(
    tx: &Transaction<'_>,
    path: &Path,
    m: &mut Meta,
    excess: u64,
) -> Result<u64, StoreError> {
    const OP: &str = "append: enforce max_bytes";
    let err = sql_err(path, OP);
    let (mut n, mut freed, mut cutoff, mut exhausted) = (0u64, 0u64, None, false);
    {
        let mut stmt = tx.prepare_cached(SQL_OLDEST_FIRST).map_err(&err)?;
        let mut rows = stmt.query([]).map_err(&err)?;
        while freed < excess {
            let Some(row) = rows.next().map_err(&err)? else {
                exhausted = true;
                break;
            };
            let id: i64 = row.get(0).map_err(&err)?;
            let size: i64 = row.get(1).map_err(&err)?;
            n += 1;
            freed += to_u64(path, OP, "row size", size)? + ROW_OVERHEAD_BYTES;
            cutoff = Some(id);
        }
    }
    if let Some(cutoff) = cutoff {
        tx.prepare_cached(SQL_DELETE_UP_TO)
            .and_then(|mut s| s.execute([cutoff]))
            .map_err(&err)?;
    }
    release(path, m, n, freed);
    if exhausted {
        // Only reachable if the counters had drifted: the table is empty now, so they are exactly zero.
        tracing::warn!(path = %path.display(), "outbox byte counter was above the table's contents; reset");
        m.rows = 0;
        m.bytes = 0;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
            synchronous_full: false,
            min_free_bytes: 0,
        }
    }

    #[test]
    fn row_size_counts_utf8_bytes_like_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("o.db"), limits()).unwrap();
        let topic = "gh1/température/\u{0}/東京";
        ob.append(|_| {
            vec![NewMessage {
                topic: topic.to_owned(),
                payload: vec![0, 1, 2, 0, 255],
                qos: 1,
                retain: false,
            }]
        })
        .unwrap();
        let sql: i64 = ob
            .conn
            .query_row(
                "SELECT octet_length(topic) + length(payload) FROM outbox",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sql as u64 + ROW_OVERHEAD_BYTES, row_size(topic.len(), 5));
        let back = ob.read_after(0, 10).unwrap();
        assert_eq!(back[0].topic, topic);
    }

    #[test]
    fn meta_counters_match_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut ob = Outbox::open(&dir.path().join("o.db"), limits()).unwrap();
        for i in 0..5 {
            ob.append(|seq| {
                (0..10)
                    .map(|j| NewMessage {
                        topic: format!("t/{}", seq.next("d")),
                        payload: vec![b'x'; i * 10 + j],
                        qos: 1,
                        retain: false,
                    })
                    .collect()
            })
            .unwrap();
        }
        ob.delete(&[3, 4, 5, 999]).unwrap();
        let (rows, bytes): (i64, i64) = ob
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(octet_length(topic) + length(payload)), 0) FROM outbox",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        let stats = ob.stats().unwrap();
        assert_eq!(stats.rows, rows as u64);
        assert_eq!(stats.bytes, bytes as u64 + rows as u64 * ROW_OVERHEAD_BYTES);
        assert_eq!(ob.meta.rows, stats.rows);
        assert_eq!(ob.meta.bytes, stats.bytes);
    }
}
