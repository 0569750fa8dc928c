//! Writing provisioning files: secrets (private keys, passwords) with mode 0600 from the
//! moment they exist, and no file of a device's provisioning overwritten unless the operator
//! says `--force` (a second `drover provision` must not silently replace a device's key).

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a provisioning file was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file is there and `--force` was not given.
    #[error("{0} exists (use --force to replace it)")]
    Exists(PathBuf),
    /// Writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 0600: keys and passwords.
    Secret,
    /// 0644: certificates, configuration, the trust root.
    Public,
}

/// Writes `bytes` to `path` (created with its final mode; replaced only with `force`, through
/// a temporary file and a rename, so a reader never sees half a key).
pub fn write(path: &Path, bytes: &[u8], mode: Mode, force: bool) -> Result<(), WriteError> {
    let io = |error| WriteError::Io { path: path.to_path_buf(), error };
    if !force && path.symlink_metadata().is_ok() {
        return Err(WriteError::Exists(path.to_path_buf()));
    }
    let bits = match mode {
        Mode::Secret => 0o600,
        Mode::Public => 0o644,
    };
    let tmp = path.with_extension("tmp-drover");
    let _ = std::fs::remove_file(&tmp);
    let mut f = OpenOptions::new().write(true).create_new(true).mode(bits).open(&tmp).map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    // The umask may have narrowed the mode; set it exactly.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(bits)).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_are_0600_and_never_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("client.key");
        write(&p, b"one", Mode::Secret, false).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(write(&p, b"two", Mode::Secret, false), Err(WriteError::Exists(_))));
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        write(&p, b"two", Mode::Secret, true).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        let c = dir.path().join("ca.pem");
        write(&c, b"cert", Mode::Public, false).unwrap();
        assert_eq!(std::fs::metadata(&c).unwrap().permissions().mode() & 0o777, 0o644);
    }
}
