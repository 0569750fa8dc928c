//! The transfer's I/O shell: chunks written in place into `bundle.part`, and a journal of the
//! chunks that reached the disk, so a transfer survives disconnects and agent restarts and
//! resumes with exactly the chunks that are intact.
//!
//! Order on disk: chunk data is synced before its journal record is appended, and a record is
//! trusted at recovery only if the data it names still hashes to the recorded digest. A torn
//! record at the end of the journal is ignored.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use drover_wire::message::{Announce, Digest};
use sha2::{Digest as _, Sha256};

use super::chunkset::ChunkSet;

const ANNOUNCE: &str = "announce.json";
pub(crate) const PART: &str = "bundle.part";
const JOURNAL: &str = "chunks.log";
const RECORD: usize = 4 + 32;
/// Chunks written between two syncs: a crash loses at most this many (they are fetched again).
const SYNC_EVERY: usize = 16;

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
    pending: Vec<(u32, Digest)>,
}

impl Spool {
    /// Starts a transfer in `dir`, replacing whatever was there.
    pub fn create(dir: &Path, announce: &Announce) -> Result<Spool, SpoolError> {
        discard(dir)?;
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let a = serde_json::to_vec(announce).unwrap_or_default();
        crate::store::atomic_write(&dir.join(ANNOUNCE), &a).map_err(|e| SpoolError::Store(e.to_string()))?;
        Self::open_files(dir, announce.clone())
    }

    fn open_files(dir: &Path, announce: Announce) -> Result<Spool, SpoolError> {
        let part_path = dir.join(PART);
        let part = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&part_path);
        let part = part.map_err(io_err(&part_path))?;
        let journal_path = dir.join(JOURNAL);
        let journal = OpenOptions::new().read(true).append(true).create(true).open(&journal_path);
        let journal = journal.map_err(io_err(&journal_path))?;
        Ok(Spool { dir: dir.to_path_buf(), announce, part, journal, pending: Vec::new() })
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
        let spool = Self::open_files(dir, announce)?;
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
        Ok(Some((spool, have)))
    }

    /// The announcement of this transfer.
    pub fn announce(&self) -> &Announce {
        &self.announce
    }

    /// Writes a verified chunk in place; it is journaled at the next sync.
    pub fn write(&mut self, index: u32, sha256: Digest, data: &[u8]) -> Result<(), SpoolError> {
        let offset = u64::from(index) * u64::from(self.announce.chunk_size);
        let path = self.dir.join(PART);
        self.part.write_all_at(data, offset).map_err(io_err(&path))?;
        self.pending.push((index, sha256));
        if self.pending.len() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    /// Makes every written chunk durable and journals it.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let part_path = self.dir.join(PART);
        self.part.sync_data().map_err(io_err(&part_path))?;
        let mut records = Vec::with_capacity(self.pending.len() * RECORD);
        for (index, sha) in self.pending.drain(..) {
            records.extend_from_slice(&index.to_le_bytes());
            records.extend_from_slice(&sha.0);
        }
        let journal_path = self.dir.join(JOURNAL);
        self.journal.write_all(&records).and_then(|_| self.journal.sync_data()).map_err(io_err(&journal_path))
    }

    /// Syncs, checks the whole bundle against the announced digest, and returns its path.
    pub fn finish(&mut self) -> Result<PathBuf, SpoolError> {
        self.sync()?;
        let path = self.dir.join(PART);
        self.part.set_len(self.announce.size).map_err(io_err(&path))?;
        let mut file = File::open(&path).map_err(io_err(&path))?;
        let mut hasher = Sha256::new();
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
        s.write(i, Digest(Sha256::digest(part).into()), part).unwrap();
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
        put(&mut s, &data, &a, 7); // written, never synced: "lost" in the crash
        drop(s);
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
