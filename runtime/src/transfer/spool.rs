//! The transfer's I/O shell: chunks written in place into `bundle.part`, and a journal of the
//! chunks that reached the disk, so a transfer survives disconnects and agent restarts and
//! resumes with exactly the chunks that are intact.
//!
//! Each chunk is journaled as it is written. A record is trusted at recovery only if the data it
//! names hashes to the recorded digest, so neither the order in which the two reach the disk
//! nor a torn record at the end of the journal can make a damaged chunk count: an agent that
//! crashed resumes with every chunk it wrote (the page cache survives it), and a power cut costs
//! what was written since the last sync.
//!
//! Syncs are few: at most one per [`SYNC_MS`] of downloading. A sync is what an SD card pays for
//! (and what a thousand simulated devices sharing one host disk wait on). The bundle's SHA-256 is
//! computed while the chunks arrive (those in order, at once; the others as the gap before them
//! fills), so the check at the end reads back only what arrived out of order.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use drover_wire::message::{Announce, Digest};
use sha2::{Digest as _, Sha256};

use super::chunkset::ChunkSet;

const ANNOUNCE: &str = "announce.json";
pub(crate) const PART: &str = "bundle.part";
const JOURNAL: &str = "chunks.log";
const RECORD: usize = 4 + 32;
/// Time between two syncs, ms: a power cut costs at most this much of the download, fetched
/// again at resume.
pub const SYNC_MS: u64 = 1_000;

/// Why the spool failed. The transfer is abandoned; the served model is untouched.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file operation failed (disk full, permissions).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        error: io::Error,
    },
    /// Persisting the announcement failed.
    #[error("{0}")]
    Store(String),
    /// The assembled bundle is not the announced one.
    #[error("the assembled bundle's SHA-256 is {got}, the announcement said {want}")]
    Digest {
        /// Computed.
        got: Digest,
        /// Announced.
        want: Digest,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |error| SpoolError::Io { path: path.to_path_buf(), error }
}

/// An open transfer on disk.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    announce: Announce,
    part: File,
    journal: File,
    /// Whether something was written since the last sync.
    unsynced: bool,
    /// When the last sync was (or the first chunk since came), ms.
    synced_at: Option<u64>,
    /// Whether the announcement file is known to be on disk (synced once per transfer).
    announce_synced: bool,
    /// Chunks written (journaled or pending).
    written: ChunkSet,
    /// The bundle's SHA-256 over chunks `0..hashed`.
    hasher: Sha256,
    hashed: u32,
}

impl Spool {
    /// Starts a transfer in `dir`, replacing whatever was there. Nothing is synced yet: until
    /// the first sync, a crash costs only what was downloaded so far.
    pub fn create(dir: &Path, announce: &Announce) -> Result<Spool, SpoolError> {
        let total = u32::try_from(announce.chunk_count())
            .map_err(|_| SpoolError::Store(format!("{} chunks: too many", announce.chunk_count())))?;
        discard(dir)?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let a = serde_json::to_vec(announce).unwrap_or_default();
        // Written whole under another name, then renamed: a crash leaves no half announcement
        // (an unreadable one is discarded at resume anyway).
        let (tmp, path) = (dir.join("announce.tmp"), dir.join(ANNOUNCE));
        fs::write(&tmp, a).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Self::open_files(dir, announce.clone(), ChunkSet::new(total))
    }

    /// Opens the files of the transfer in `dir`, which holds the chunks `written` (none when new).
    fn open_files(dir: &Path, announce: Announce, written: ChunkSet) -> Result<Spool, SpoolError> {
        let part_path = dir.join(PART);
        let part = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&part_path);
        let part = part.map_err(io_err(&part_path))?;
        let journal_path = dir.join(JOURNAL);
        let journal = OpenOptions::new().read(true).append(true).create(true).open(&journal_path);
        let journal = journal.map_err(io_err(&journal_path))?;
        Ok(Spool {
            dir: dir.to_path_buf(),
            announce,
            part,
            journal,
            unsynced: false,
            synced_at: None,
            announce_synced: false,
            written,
            hasher: Sha256::new(),
            hashed: 0,
        })
    }

    /// Resumes the transfer left in `dir`, with the chunks whose data is intact; `None` when
    /// there is none (or its announcement is unreadable: it is then discarded).
    pub fn resume(dir: &Path) -> Result<Option<(Spool, ChunkSet)>, SpoolError> {
        let announce: Announce = match fs::read(dir.join(ANNOUNCE)) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(a) => a,
                Err(e) => {
                    log::warn!("discarding a transfer with an unreadable announcement: {e}");
                    discard(dir)?;
                    return Ok(None);
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                discard(dir)?;
                return Ok(None);
            }
            Err(e) => return Err(io_err(dir)(e)),
        };
        let Ok(total) = u32::try_from(announce.chunk_count()) else {
            discard(dir)?;
            return Ok(None);
        };
        let mut spool = Self::open_files(dir, announce, ChunkSet::new(total))?;
        let mut have = ChunkSet::new(total);
        let mut journal = Vec::new();
        let journal_path = dir.join(JOURNAL);
        File::open(&journal_path).and_then(|mut f| f.read_to_end(&mut journal)).map_err(io_err(&journal_path))?;
        let mut buf = Vec::new();
        for rec in journal.chunks_exact(RECORD) {
            let index = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
            let mut sha = [0u8; 32];
            sha.copy_from_slice(&rec[4..]);
            if u64::from(index) >= spool.announce.chunk_count() || have.contains(index) {
                continue;
            }
            buf.resize(spool.announce.chunk_len(index) as usize, 0);
            let offset = u64::from(index) * u64::from(spool.announce.chunk_size);
            let read = spool.part.read_exact_at(&mut buf, offset);
            if read.is_ok() && Sha256::digest(&buf).as_slice() == sha {
                have.insert(index);
            }
        }
        spool.written = have.clone();
        spool.hash_ahead()?;
        Ok(Some((spool, have)))
    }

    /// The announcement of this transfer.
    pub fn announce(&self) -> &Announce {
        &self.announce
    }

    /// Writes a verified chunk in place and journals it; syncs both when [`SYNC_MS`] have
    /// passed since the last sync (`now_ms` on the agent's monotonic clock).
    pub fn write(&mut self, index: u32, sha256: Digest, data: &[u8], now_ms: u64) -> Result<(), SpoolError> {
        let offset = u64::from(index) * u64::from(self.announce.chunk_size);
        let path = self.dir.join(PART);
        self.part.write_all_at(data, offset).map_err(io_err(&path))?;
        let mut record = [0u8; RECORD];
        record[..4].copy_from_slice(&index.to_le_bytes());
        record[4..].copy_from_slice(&sha256.0);
        self.journal.write_all(&record).map_err(io_err(&self.dir.join(JOURNAL)))?;
        self.unsynced = true;
        if self.written.insert(index) && index == self.hashed {
            self.hasher.update(data);
            self.hashed += 1;
            self.hash_ahead()?;
        }
        let since = *self.synced_at.get_or_insert(now_ms);
        if now_ms.saturating_sub(since) >= SYNC_MS {
            self.sync()?;
            self.synced_at = Some(now_ms);
        }
        Ok(())
    }

    /// Folds into the bundle's digest the chunks written ahead of the hashed prefix that now
    /// follow it, reading them back.
    fn hash_ahead(&mut self) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        while self.written.contains(self.hashed) {
            buf.resize(self.announce.chunk_len(self.hashed) as usize, 0);
            let offset = u64::from(self.hashed) * u64::from(self.announce.chunk_size);
            self.part.read_exact_at(&mut buf, offset).map_err(io_err(&self.dir.join(PART)))?;
            self.hasher.update(&buf);
            self.hashed += 1;
        }
        Ok(())
    }

    /// Makes every written chunk and its record durable.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if !self.unsynced {
            return Ok(());
        }
        let part_path = self.dir.join(PART);
        self.part.sync_data().map_err(io_err(&part_path))?;
        if !self.announce_synced {
            // The journal is worth something only with its announcement.
            let path = self.dir.join(ANNOUNCE);
            File::open(&path).and_then(|f| f.sync_all()).map_err(io_err(&path))?;
            File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))?;
            self.announce_synced = true;
        }
        self.unsynced = false;
        let journal_path = self.dir.join(JOURNAL);
        self.journal.sync_data().map_err(io_err(&journal_path))
    }

    /// Checks the whole bundle against the announced digest and returns its path. Not synced:
    /// the install copies the bundle into a slot and syncs that; a crash before it resumes
    /// from the journal.
    pub fn finish(&mut self) -> Result<PathBuf, SpoolError> {
        let path = self.dir.join(PART);
        self.part.set_len(self.announce.size).map_err(io_err(&path))?;
        let mut hasher = self.hasher.clone();
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let from = (u64::from(self.hashed) * u64::from(self.announce.chunk_size)).min(self.announce.size);
        file.seek(SeekFrom::Start(from)).map_err(io_err(&path))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io_err(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let got = Digest(hasher.finalize().into());
        if got != self.announce.transfer {
            return Err(SpoolError::Digest { got, want: self.announce.transfer });
        }
        Ok(path)
    }
}

/// Removes a transfer directory (nothing there is fine).
pub fn discard(dir: &Path) -> Result<(), SpoolError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(len: usize, chunk: u32) -> (Vec<u8>, Announce) {
        let data: Vec<u8> = (0..len).map(|i| (i * 13 % 256) as u8).collect();
        let a = Announce {
            transfer: Digest(Sha256::digest(&data).into()),
            name: "m".try_into().unwrap(),
            version: 1,
            size: len as u64,
            chunk_size: chunk,
            issued_at: 0,
            purpose: drover_wire::message::Purpose::Install,
        };
        (data, a)
    }

    fn put(s: &mut Spool, data: &[u8], a: &Announce, i: u32) {
        let cs = a.chunk_size as usize;
        let part = &data[i as usize * cs..((i as usize + 1) * cs).min(data.len())];
        s.write(i, Digest(Sha256::digest(part).into()), part, 0).unwrap();
    }

    #[test]
    fn a_restart_resumes_with_the_synced_chunks_and_the_bundle_assembles() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("transfer");
        let (data, a) = setup(40_000, 1000);
        let mut s = Spool::create(&t, &a).unwrap();
        for i in [39, 0, 5] {
            put(&mut s, &data, &a, i);
        }
        s.sync().unwrap();
        put(&mut s, &data, &a, 7);
        drop(s);
        // A power cut took chunk 7's data (its record made it): it is not trusted.
        let part = t.join(PART);
        let mut bytes = fs::read(&part).unwrap();
        bytes[7000..8000].fill(0);
        fs::write(&part, bytes).unwrap();
        let (mut s, have) = Spool::resume(&t).unwrap().unwrap();
        assert_eq!(have.count(), 3);
        assert!(have.contains(39) && have.contains(0) && have.contains(5));
        for i in 0..40 {
            if !have.contains(i) {
                put(&mut s, &data, &a, i);
            }
        }
        let path = s.finish().unwrap();
        assert_eq!(fs::read(path).unwrap(), data);
    }

    #[test]
    fn the_bundle_digest_holds_whatever_order_the_chunks_come_in() {
        let (data, a) = setup(20_500, 1000);
        let interleaved: Vec<u32> = (0..21).map(|i| if i % 2 == 0 { (i + 1).min(20) } else { i - 1 }).collect();
        let orders: [Vec<u32>; 4] = [
            (0..21).collect(),
            (0..21).rev().collect(),
            interleaved,
            [5, 6, 0, 20, 1, 2, 3, 4, 19, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18].to_vec(),
        ];
        for order in orders {
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::create(&dir.path().join("t"), &a).unwrap();
            for &i in &order {
                put(&mut s, &data, &a, i);
            }
            assert_eq!(fs::read(s.finish().unwrap()).unwrap(), data, "{order:?}");
        }
        // Resumed half way, with chunks ahead of the gap on disk.
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        let mut s = Spool::create(&t, &a).unwrap();
        for i in [0, 1, 2, 9, 10] {
            put(&mut s, &data, &a, i);
        }
        s.sync().unwrap();
        drop(s);
        let (mut s, have) = Spool::resume(&t).unwrap().unwrap();
        assert_eq!(have.count(), 5);
        for i in (0..21).filter(|i| !have.contains(*i)) {
            put(&mut s, &data, &a, i);
        }
        assert!(s.finish().is_ok());
    }

    #[test]
    fn every_chunk_is_journaled_at_once_and_synced_on_the_clock() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        let (data, a) = setup(10_000, 1000);
        let mut s = Spool::create(&t, &a).unwrap();
        let chunk = |i: usize| &data[i * 1000..(i + 1) * 1000];
        let sha = |i: usize| Digest(Sha256::digest(chunk(i)).into());
        for (i, now) in [(0, 100), (1, 600), (2, SYNC_MS + 100)] {
            s.write(i as u32, sha(i), chunk(i), now).unwrap();
            assert_eq!(fs::metadata(t.join(JOURNAL)).unwrap().len(), (i as u64 + 1) * RECORD as u64);
            assert_eq!(s.unsynced, now < SYNC_MS + 100, "chunk {i} at {now} ms");
        }
        assert!(s.announce_synced, "the first sync makes the announcement durable too");
        s.write(3, sha(3), chunk(3), SYNC_MS + 200).unwrap();
        assert!(s.unsynced, "the next sync is SYNC_MS after the last one");
        // An agent that crashed (its page cache intact) resumes with every chunk it wrote.
        drop(s);
        let (_, have) = Spool::resume(&t).unwrap().unwrap();
        assert_eq!(have.count(), 4);
    }

    #[test]
    fn damaged_data_and_a_torn_journal_are_not_trusted_at_resume() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("transfer");
        let (data, a) = setup(5000, 1000);
        let mut s = Spool::create(&t, &a).unwrap();
        for i in 0..5 {
            put(&mut s, &data, &a, i);
        }
        s.sync().unwrap();
        drop(s);
        // Flip a byte of chunk 2 on disk, and tear the journal's last record.
        let part = t.join(PART);
        let mut bytes = fs::read(&part).unwrap();
        bytes[2500] ^= 0xff;
        fs::write(&part, bytes).unwrap();
        let j = t.join(JOURNAL);
        let jb = fs::read(&j).unwrap();
        fs::write(&j, &jb[..jb.len() - 5]).unwrap();
        let (_, have) = Spool::resume(&t).unwrap().unwrap();
        assert_eq!((0..5).filter(|i| have.contains(*i)).collect::<Vec<_>>(), vec![0, 1, 3]);
    }

    #[test]
    fn a_wrong_bundle_is_refused_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("transfer");
        let (data, mut a) = setup(3000, 1000);
        a.transfer = Digest([0; 32]);
        let mut s = Spool::create(&t, &a).unwrap();
        for i in 0..3 {
            put(&mut s, &data, &a, i);
        }
        assert!(matches!(s.finish(), Err(SpoolError::Digest { .. })));
    }

    #[test]
    fn no_or_unreadable_transfer_resumes_as_none() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("transfer");
        assert!(Spool::resume(&t).unwrap().is_none());
        fs::create_dir_all(&t).unwrap();
        fs::write(t.join(ANNOUNCE), "garbage").unwrap();
        assert!(Spool::resume(&t).unwrap().is_none());
        assert!(!t.exists(), "an unreadable transfer is discarded");
    }
}
