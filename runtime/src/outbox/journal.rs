//! The outbox on disk: append-only segment files of checksummed records and a cursor naming the
//! last delivered record. Bounded by bytes: when a new record would pass the quota, the oldest
//! segment goes, and the undelivered records in it are counted as dropped (the count survives
//! restarts and is reported in telemetry).
//!
//! Record layout: `len u32 LE | crc32 u32 LE | seq u64 LE | stream u8 | payload[len]`, the CRC
//! over everything after it. A record is synced before it counts as queued; a torn or corrupt
//! tail (power cut mid-write) is cut off at recovery.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Record, Stream};

const CURSOR: &str = "cursor.json";
const SUFFIX: &str = "seg";
const HEADER: usize = 4 + 4 + 8 + 1;

/// How much disk the outbox may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Largest total size of the segment files, bytes.
    pub max_bytes: u64,
    /// A segment is closed (and becomes droppable) at this size.
    pub segment_bytes: u64,
}

impl Quota {
    /// A quota of `max_bytes`, in eight segments (so a drop loses about an eighth).
    pub fn new(max_bytes: u64) -> Quota {
        let max_bytes = max_bytes.max(16 * 1024);
        Quota { max_bytes, segment_bytes: (max_bytes / 8).clamp(4096, 4 * 1024 * 1024) }
    }
}

/// Why the outbox could not be used.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// A file operation failed (disk full, permissions).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// A record would not fit in a segment.
    #[error("a {size}-byte report does not fit in the outbox's {limit}-byte segments")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The segment size.
        limit: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |error| JournalError::Io { path: path.to_path_buf(), error }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cursor {
    /// Every record up to this one reached the broker.
    delivered: u64,
    /// Undelivered records dropped for the quota or lost to a failed write, ever.
    dropped: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first: u64,
    last: u64,
    bytes: u64,
}

/// The outbox's files.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    quota: Quota,
    segments: VecDeque<Segment>,
    active: Option<File>,
    next: u64,
    cursor: Cursor,
}

/// What an append did besides queueing the record.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Appended {
    /// Records up to this sequence number were dropped for the quota.
    pub dropped_through: Option<u64>,
    /// How many of them were undelivered.
    pub dropped: u64,
}

impl Journal {
    /// Opens (or creates) the outbox in `dir` and returns the records not yet delivered, oldest
    /// first. A corrupt or torn record ends its segment; everything before it is kept.
    pub fn open(dir: &Path, quota: Quota) -> Result<(Journal, Vec<Record>), JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let cursor_path = dir.join(CURSOR);
        let cursor = match fs::read(&cursor_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                log::warn!("{}: unreadable ({e}); resending everything on disk", cursor_path.display());
                Cursor::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Cursor::default(),
            Err(e) => return Err(JournalError::Io { path: cursor_path, error: e }),
        };
        let mut paths: Vec<(u64, PathBuf)> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == SUFFIX))
            .filter_map(|p| Some((p.file_stem()?.to_str()?.parse().ok()?, p)))
            .collect();
        paths.sort();
        let mut segments = VecDeque::new();
        let mut pending = Vec::new();
        let mut next = cursor.delivered + 1;
        let count = paths.len();
        for (i, (first, path)) in paths.into_iter().enumerate() {
            let (records, good) = read_segment(&path)?;
            let bytes = fs::metadata(&path).map_err(io_err(&path))?.len();
            if good < bytes {
                log::warn!("{}: cutting a damaged tail at byte {good} of {bytes}", path.display());
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(good).and_then(|()| f.sync_all()).map_err(io_err(&path))?;
            }
            let last = records.last().map_or(first.saturating_sub(1), |r| r.seq);
            next = next.max(last + 1);
            pending.extend(records.into_iter().filter(|r| r.seq > cursor.delivered));
            if good == 0 && i + 1 < count {
                let _ = fs::remove_file(&path);
                continue;
            }
            segments.push_back(Segment { path, first, last, bytes: good });
        }
        let mut journal = Journal { dir: dir.to_path_buf(), quota, segments, active: None, next, cursor };
        journal.remove_delivered()?;
        Ok((journal, pending))
    }

    /// The sequence number the next record gets (it goes inside the payload too).
    pub fn next_seq(&self) -> u64 {
        self.next
    }

    /// Queues a record on disk (synced); drops the oldest segments if the quota is passed.
    pub fn append(&mut self, stream: Stream, payload: Vec<u8>) -> Result<(Record, Appended), JournalError> {
        let size = HEADER + payload.len();
        if size as u64 > self.quota.segment_bytes {
            return Err(JournalError::TooLarge { size, limit: self.quota.segment_bytes });
        }
        let seq = self.next;
        let record = Record { seq, stream, payload };
        let rotate = self.segments.back().is_none_or(|s| s.bytes + size as u64 > self.quota.segment_bytes);
        if (rotate || self.active.is_none())
            && let Err(e) = self.open_active(rotate)
        {
            self.lost();
            return Err(e);
        }
        let bytes = encode(&record);
        let (Some(file), Some(segment)) = (self.active.as_mut(), self.segments.back_mut()) else {
            unreachable!("open_active leaves an active segment");
        };
        let written = file.write_all(&bytes).and_then(|()| file.sync_data());
        if let Err(error) = written {
            // Disk full (or failing) mid-record. A partial record left in place would end this
            // segment at recovery and hide every record appended after it, so it is taken back
            // now, or, if that fails too, when the segment is next opened (`open_active`).
            let _ = file.set_len(segment.bytes).and_then(|()| file.sync_data());
            let path = segment.path.clone();
            self.active = None;
            self.lost();
            return Err(JournalError::Io { path, error });
        }
        segment.bytes += bytes.len() as u64;
        segment.last = seq;
        self.next += 1;
        let appended = self.enforce_quota()?;
        Ok((record, appended))
    }

    /// Everything up to `through` reached the broker: persists the cursor and removes segments
    /// that hold nothing undelivered.
    pub fn delivered(&mut self, through: u64) -> Result<(), JournalError> {
        if through <= self.cursor.delivered {
            return Ok(());
        }
        self.cursor.delivered = through;
        self.save_cursor()?;
        self.remove_delivered()
    }

    /// Undelivered records dropped for the quota, or lost to a failed write (disk full), since
    /// the outbox was created.
    pub fn dropped(&self) -> u64 {
        self.cursor.dropped
    }

    /// Bytes of segment files on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// A report could not be written: counted with the dropped ones (the count reaches telemetry
    /// once the disk has room again; saving it now may fail on the same full disk).
    fn lost(&mut self) {
        self.cursor.dropped += 1;
        let _ = self.save_cursor();
    }

    fn open_active(&mut self, new_segment: bool) -> Result<(), JournalError> {
        if new_segment || self.segments.is_empty() {
            let path = self.dir.join(format!("{:020}.{SUFFIX}", self.next));
            self.segments.push_back(Segment { path, first: self.next, last: self.next - 1, bytes: 0 });
        }
        let Some(segment) = self.segments.back() else { unreachable!("a segment was just pushed") };
        let file = OpenOptions::new().create(true).append(true).open(&segment.path).map_err(io_err(&segment.path))?;
        // What a failed append left past the last good record goes before anything follows it.
        if file.metadata().map_err(io_err(&segment.path))?.len() > segment.bytes {
            file.set_len(segment.bytes).and_then(|()| file.sync_data()).map_err(io_err(&segment.path))?;
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
        self.active = Some(file);
        Ok(())
    }

    fn enforce_quota(&mut self) -> Result<Appended, JournalError> {
        let mut appended = Appended::default();
        while self.disk_bytes() > self.quota.max_bytes && self.segments.len() > 1 {
            let Some(oldest) = self.segments.pop_front() else { break };
            let undelivered = oldest.last.saturating_sub(self.cursor.delivered.max(oldest.first.saturating_sub(1)));
            appended.dropped += undelivered;
            appended.dropped_through = Some(oldest.last);
            fs::remove_file(&oldest.path).map_err(io_err(&oldest.path))?;
        }
        if let Some(through) = appended.dropped_through {
            self.cursor.dropped += appended.dropped;
            self.cursor.delivered = self.cursor.delivered.max(through);
            log::warn!("outbox full: dropped {} undelivered reports (up to #{through})", appended.dropped);
            self.save_cursor()?;
        }
        Ok(appended)
    }

    fn remove_delivered(&mut self) -> Result<(), JournalError> {
        // The newest segment stays (it is the one being appended to).
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.last <= self.cursor.delivered) {
            if let Some(s) = self.segments.pop_front() {
                fs::remove_file(&s.path).map_err(io_err(&s.path))?;
            }
        }
        Ok(())
    }

    fn save_cursor(&self) -> Result<(), JournalError> {
        let path = self.dir.join(CURSOR);
        let bytes = serde_json::to_vec(&self.cursor).unwrap_or_default();
        crate::store::atomic_write(&path, &bytes).map_err(|e| JournalError::Io { path, error: io::Error::other(e) })
    }
}

fn encode(r: &Record) -> Vec<u8> {
    let mut body = Vec::with_capacity(9 + r.payload.len());
    body.extend_from_slice(&r.seq.to_le_bytes());
    body.push(r.stream.code());
    body.extend_from_slice(&r.payload);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// The intact records of a segment and the length of its intact prefix.
fn read_segment(path: &Path) -> Result<(Vec<Record>, u64), JournalError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io_err(path))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = bytes.get(at + 8..at + 8 + 9 + len) else { break };
        if crc32fast::hash(body) != crc {
            break;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&body[..8]);
        let Some(stream) = Stream::from_code(body[8]) else { break };
        records.push(Record { seq: u64::from_le_bytes(seq), stream, payload: body[9..].to_vec() });
        at += 8 + body.len();
    }
    Ok((records, at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota() -> Quota {
        Quota { max_bytes: 400, segment_bytes: 100 }
    }

    fn payload(seq: u64) -> Vec<u8> {
        format!("record {seq:04}").into_bytes() // 11 bytes: 28 on disk, 3 per segment
    }

    #[test]
    fn records_survive_a_restart_and_delivered_ones_do_not_come_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, pending) = Journal::open(dir.path(), quota()).expect("open");
        assert!(pending.is_empty());
        for s in 1..=7 {
            let (r, a) = j.append(Stream::Telemetry, payload(s)).expect("append");
            assert_eq!((r.seq, a), (s, Appended::default()));
        }
        j.delivered(4).expect("delivered");
        drop(j);
        let (j, pending) = Journal::open(dir.path(), quota()).expect("reopen");
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert_eq!(pending[0].payload, payload(5));
        assert_eq!(j.next_seq(), 8);
        assert_eq!(j.segments.len(), 2, "the segment holding 1-3 is gone");
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_segment_and_counts_what_was_undelivered() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, _) = Journal::open(dir.path(), quota()).expect("open");
        let mut drops = vec![];
        for s in 1..=20 {
            let (_, a) = j.append(Stream::Events, payload(s)).expect("append");
            if a.dropped_through.is_some() {
                drops.push((s, a.dropped_through, a.dropped));
            }
        }
        // Segments hold 3 records (84 bytes): the 15th record makes 420 bytes, past the quota.
        assert!(j.disk_bytes() <= 400);
        assert_eq!(drops.first(), Some(&(15, Some(3), 3)));
        let dropped: u64 = drops.iter().map(|d| d.2).sum();
        assert_eq!(j.dropped(), dropped);
        drop(j);
        let (j, pending) = Journal::open(dir.path(), quota()).expect("reopen");
        assert_eq!(j.dropped(), dropped, "the drop count survives a restart");
        assert_eq!(pending.first().map(|r| r.seq), Some(dropped + 1));
        assert_eq!(pending.last().map(|r| r.seq), Some(20));
    }

    #[test]
    fn a_torn_tail_is_cut_and_appending_goes_on_after_the_last_good_record() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, _) = Journal::open(dir.path(), quota()).expect("open");
        for s in 1..=2 {
            j.append(Stream::Drift, payload(s)).expect("append");
        }
        let path = j.segments[0].path.clone();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&path).expect("segment");
        f.write_all(&encode(&Record { seq: 3, stream: Stream::Drift, payload: payload(3) })[..20]).expect("torn");
        drop(f);
        let (mut j, pending) = Journal::open(dir.path(), quota()).expect("reopen");
        assert_eq!(pending.len(), 2);
        let (r, _) = j.append(Stream::Drift, payload(3)).expect("append");
        assert_eq!(r.seq, 3);
        drop(j);
        let (_, pending) = Journal::open(dir.path(), quota()).expect("reopen");
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn a_partial_record_left_by_a_failed_write_is_cut_before_the_next_append() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, _) = Journal::open(dir.path(), quota()).expect("open");
        for s in 1..=2 {
            j.append(Stream::Telemetry, payload(s)).expect("append");
        }
        // What a disk that filled mid-record leaves when even the truncation failed: part of a
        // record after the good ones, the segment closed, the report counted as lost.
        let segment = j.segments.back().expect("segment").path.clone();
        let torn = encode(&Record { seq: 3, stream: Stream::Telemetry, payload: payload(3) });
        OpenOptions::new().append(true).open(&segment).unwrap().write_all(&torn[..10]).unwrap();
        j.active = None;
        j.lost();
        // Room again: the next reports follow the good ones, not the torn bytes.
        for s in 3..=4 {
            assert_eq!(j.append(Stream::Telemetry, payload(s)).expect("append").0.seq, s);
        }
        drop(j);
        let (j, pending) = Journal::open(dir.path(), quota()).expect("reopen");
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "nothing hidden");
        assert_eq!(j.dropped(), 1, "the lost report is counted");
    }

    #[test]
    fn a_flipped_byte_ends_the_segment_there() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, _) = Journal::open(dir.path(), quota()).expect("open");
        for s in 1..=3 {
            j.append(Stream::Telemetry, payload(s)).expect("append");
        }
        let path = j.segments[0].path.clone();
        drop(j);
        let mut bytes = fs::read(&path).expect("read");
        bytes[28 + 20] ^= 0x10; // inside record 2's payload
        fs::write(&path, bytes).expect("write");
        let (_, pending) = Journal::open(dir.path(), quota()).expect("reopen");
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn an_oversized_record_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut j, _) = Journal::open(dir.path(), quota()).expect("open");
        assert!(matches!(j.append(Stream::Events, vec![0; 200]), Err(JournalError::TooLarge { .. })));
        assert_eq!(j.next_seq(), 1);
        assert_eq!(j.disk_bytes(), 0);
    }
}
