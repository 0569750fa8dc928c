use std::io::{self, Read, Write};

use drover_wire::manifest::{FileEntry, Manifest};
use drover_wire::trust::BundleHeader;
use sha2::{Digest, Sha256};

/// The first bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"DRVBNDL1";

/// Bounds a reader enforces before trusting anything, so a hostile file cannot make the device
/// allocate or write without limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header accepted.
    pub max_header: u32,
    /// Largest single file accepted.
    pub max_file: u64,
    /// Largest total payload accepted.
    pub max_payload: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_header: 256 * 1024, max_file: 512 * 1024 * 1024, max_payload: 1024 * 1024 * 1024 }
    }
}

/// Why a container could not be read. Nothing a caller has written is trusted after any of these.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    /// Not a Drover bundle.
    #[error("not a Drover bundle (bad magic)")]
    BadMagic,
    /// The header length exceeds the limit.
    #[error("header of {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Declared length.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// The header does not decode, or has bytes after it.
    #[error("malformed header: {0}")]
    Header(String),
    /// A declared size exceeds the limits.
    #[error("file '{name}' declares {size} bytes, over the limit of {max}")]
    FileTooLarge {
        /// File name.
        name: String,
        /// Declared size.
        size: u64,
        /// Limit.
        max: u64,
    },
    /// The file ended early.
    #[error("truncated: file '{name}' has {got} of {size} bytes")]
    Truncated {
        /// File name (or "header").
        name: String,
        /// Bytes read.
        got: u64,
        /// Bytes expected.
        size: u64,
    },
    /// A file's content does not match the manifest.
    #[error("file '{name}' does not match the manifest's SHA-256")]
    HashMismatch {
        /// File name.
        name: String,
    },
    /// Data after the last declared file.
    #[error("unexpected data after the last file (more than the manifest declares)")]
    TrailingData,
    /// Reading or writing failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
}

/// Reads and decodes the header; the reader is left at the first payload byte.
pub fn read_header(r: &mut impl Read, limits: &Limits) -> Result<BundleHeader, ContainerError> {
    let mut magic = [0u8; 8];
    read_exact_or(r, &mut magic, "header")?;
    if &magic != MAGIC {
        return Err(ContainerError::BadMagic);
    }
    let mut len = [0u8; 4];
    read_exact_or(r, &mut len, "header")?;
    let len = u32::from_le_bytes(len);
    if len > limits.max_header {
        return Err(ContainerError::HeaderTooLarge { len, max: limits.max_header });
    }
    let mut bytes = vec![0u8; len as usize];
    read_exact_or(r, &mut bytes, "header")?;
    let (header, rest) =
        postcard::take_from_bytes::<BundleHeader>(&bytes).map_err(|e| ContainerError::Header(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ContainerError::Header(format!("{} unknown bytes after the header fields", rest.len())));
    }
    Ok(header)
}

fn read_exact_or(r: &mut impl Read, buf: &mut [u8], name: &str) -> Result<(), ContainerError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(ContainerError::Truncated { name: name.into(), got: got as u64, size: buf.len() as u64 });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Streams every file of `manifest` from `r` into the writer `open` returns for it, checking
/// sizes against the limits before reading, and each file's size and SHA-256 as it goes;
/// then checks that nothing follows the last file.
///
/// The writers receive unverified bytes: the caller must discard everything on any error
/// (the store writes to a staging directory for exactly that reason).
pub fn read_payload<W: Write>(
    r: &mut impl Read,
    manifest: &Manifest,
    limits: &Limits,
    mut open: impl FnMut(&FileEntry) -> io::Result<W>,
) -> Result<(), ContainerError> {
    for f in &manifest.files {
        if f.size > limits.max_file {
            return Err(ContainerError::FileTooLarge { name: f.name.to_string(), size: f.size, max: limits.max_file });
        }
    }
    if manifest.payload_size() > limits.max_payload {
        let name = "all files".to_string();
        return Err(ContainerError::FileTooLarge { name, size: manifest.payload_size(), max: limits.max_payload });
    }
    let mut buf = vec![0u8; 64 * 1024];
    for f in &manifest.files {
        let mut out = open(f)?;
        let mut hasher = Sha256::new();
        let mut left = f.size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match r.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(ContainerError::Truncated {
                        name: f.name.to_string(),
                        got: f.size - left,
                        size: f.size,
                    });
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            left -= n as u64;
        }
        out.flush()?;
        if hasher.finalize().as_slice() != f.sha256 {
            return Err(ContainerError::HashMismatch { name: f.name.to_string() });
        }
    }
    let mut probe = [0u8; 1];
    loop {
        match r.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => return Err(ContainerError::TrailingData),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Writes a bundle: magic, header, then `files` (in manifest order, matching its sizes).
pub fn write_bundle(w: &mut impl Write, header: &BundleHeader, files: &[&[u8]]) -> io::Result<()> {
    let bytes = postcard::to_stdvec(header).map_err(|e| io::Error::other(e.to_string()))?;
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("header over 4 GiB"))?;
    w.write_all(MAGIC)?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(&bytes)?;
    for f in files {
        w.write_all(f)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::Arch;
    use drover_wire::manifest::{AgentVersion, FileRole, MANIFEST_FORMAT, RuntimeSettings};
    use heapless::{String as HString, Vec as HVec};
    use proptest::prelude::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn entry(role: FileRole, name: &str, content: &[u8]) -> FileEntry {
        let sha256: [u8; 32] = Sha256::digest(content).into();
        FileEntry { role, name: HString::try_from(name).unwrap(), size: content.len() as u64, sha256 }
    }

    fn header(files: &[(&str, &[u8])]) -> BundleHeader {
        let mut entries = HVec::new();
        for (i, (name, content)) in files.iter().enumerate() {
            let role = if i == 0 { FileRole::Model } else { FileRole::SelfTest };
            entries.push(entry(role, name, content)).unwrap();
        }
        let mut targets = HVec::new();
        targets.push(Arch::X86_64).unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            name: HString::try_from("m").unwrap(),
            version: 1,
            label: HString::new(),
            created_at: 0,
            expires_at: 1,
            targets,
            min_agent: AgentVersion { major: 0, minor: 0, patch: 0 },
            inputs: HVec::new(),
            outputs: HVec::new(),
            files: entries,
            settings: RuntimeSettings::default(),
        };
        BundleHeader::unsigned(manifest)
    }

    const MODEL: &[u8] = b"pretend this is an onnx model";
    const TESTS: &[u8] = b"[1,2,3]\n";

    fn bundle() -> (BundleHeader, Vec<u8>) {
        let h = header(&[("model.onnx", MODEL), ("selftest.jsonl", TESTS)]);
        let mut out = Vec::new();
        write_bundle(&mut out, &h, &[MODEL, TESTS]).unwrap();
        (h, out)
    }

    fn read_all(bytes: &[u8], limits: &Limits) -> Result<(BundleHeader, Vec<Vec<u8>>), ContainerError> {
        let mut r = bytes;
        let h = read_header(&mut r, limits)?;
        let files = Rc::new(RefCell::new(Vec::new()));
        read_payload(&mut r, &h.manifest, limits, |_| {
            files.borrow_mut().push(Vec::new());
            Ok(Collector(Rc::clone(&files)))
        })?;
        let files = files.borrow().clone();
        Ok((h, files))
    }

    /// Appends to the newest file of the shared list.
    struct Collector(Rc<RefCell<Vec<Vec<u8>>>>);
    impl Write for Collector {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if let Some(last) = self.0.borrow_mut().last_mut() {
                last.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bundle_round_trips() {
        let (h, bytes) = bundle();
        let (back, files) = read_all(&bytes, &Limits::default()).unwrap();
        assert_eq!(back, h);
        assert_eq!(&files[0], MODEL);
        assert_eq!(&files[1], TESTS);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let (_, bytes) = bundle();
        for cut in 0..bytes.len() {
            assert!(read_all(&bytes[..cut], &Limits::default()).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn endless_data_after_the_declared_files_is_refused() {
        let (_, mut bytes) = bundle();
        bytes.extend_from_slice(&vec![0u8; 1 << 20]);
        assert!(matches!(read_all(&bytes, &Limits::default()), Err(ContainerError::TrailingData)));
    }

    #[test]
    fn mix_and_match_header_with_another_payload_is_refused() {
        let (h, _) = bundle();
        let other: &[u8] = b"another model of the same len";
        assert_eq!(other.len(), MODEL.len());
        let mut bytes = Vec::new();
        write_bundle(&mut bytes, &h, &[other, TESTS]).unwrap();
        assert!(
            matches!(read_all(&bytes, &Limits::default()), Err(ContainerError::HashMismatch { name }) if name == "model.onnx")
        );
    }

    #[test]
    fn declared_sizes_over_the_limits_are_refused_before_reading() {
        let (_, bytes) = bundle();
        let limits = Limits { max_file: 10, ..Limits::default() };
        assert!(matches!(read_all(&bytes, &limits), Err(ContainerError::FileTooLarge { .. })));
        let limits = Limits { max_header: 16, ..Limits::default() };
        assert!(matches!(read_all(&bytes, &limits), Err(ContainerError::HeaderTooLarge { .. })));
    }

    #[test]
    fn wrong_magic_and_unknown_header_bytes_are_refused() {
        let (_, mut bytes) = bundle();
        bytes[0] = b'X';
        assert!(matches!(read_all(&bytes, &Limits::default()), Err(ContainerError::BadMagic)));
        // A header with an extra byte that no field accounts for.
        let (h, _) = bundle();
        let mut enc = postcard::to_stdvec(&h).unwrap();
        enc.push(0);
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(enc.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&enc);
        assert!(matches!(read_all(&bytes, &Limits::default()), Err(ContainerError::Header(_))));
    }

    proptest! {
        #[test]
        fn corrupted_bundles_are_errors_or_exact_reads(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (_, mut bytes) = bundle();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok((h, files)) = read_all(&bytes, &Limits::default()) {
                // A flip that still reads must have kept every file equal to its hash.
                for (f, content) in h.manifest.files.iter().zip(&files) {
                    let digest: [u8; 32] = Sha256::digest(content).into();
                    prop_assert_eq!(digest, f.sha256);
                }
            }
        }
    }
}
