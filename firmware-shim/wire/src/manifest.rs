//! Bundle manifests: what a signed bundle promises about the model it carries.

use core::fmt;
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::{Arch, TensorSpec};

/// Version of the manifest layout; a device refuses layouts it does not know.
pub const MANIFEST_FORMAT: u16 = 1;
/// Most inputs or outputs a manifest describes.
pub const MAX_IO: usize = 16;
/// Most files a bundle carries (model, reference statistics, self-test vectors, and room to grow).
pub const MAX_FILES: usize = 8;
/// Longest model or file name.
pub const MAX_NAME: usize = 64;

/// A name that is safe as a file name and an MQTT topic level: `[A-Za-z0-9][A-Za-z0-9._-]*`,
/// at most [`MAX_NAME`] bytes, no `..`. Checked wherever a name enters from outside.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.contains("..")
}

/// The agent version a bundle needs at least, compared field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgentVersion {
    /// Major.
    pub major: u16,
    /// Minor.
    pub minor: u16,
    /// Patch.
    pub patch: u16,
}

impl AgentVersion {
    /// Parses `MAJOR.MINOR.PATCH` (a pre-release suffix after `-` is ignored).
    pub fn parse(s: &str) -> Option<AgentVersion> {
        let core = s.split('-').next()?;
        let mut parts = core.split('.').map(|p| p.parse::<u16>().ok());
        let v = AgentVersion { major: parts.next()??, minor: parts.next()??, patch: parts.next()?? };
        parts.next().is_none().then_some(v)
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What a file in a bundle is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileRole {
    /// The ONNX model (exactly one per bundle).
    Model,
    /// Reference statistics of the training data, for drift detection.
    ReferenceStats,
    /// Inputs with expected outputs, run through the engine before a slot is activated.
    SelfTest,
    /// A side file holding some of the model's weights (ONNX external data, as MLflow 3 and
    /// torch's dynamo exporter write them), named as the model file refers to it and installed
    /// beside it.
    ModelData,
}

/// One file of a bundle: its role, name, exact size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileEntry {
    /// Role.
    pub role: FileRole,
    /// File name inside the bundle (a valid name, see [`is_valid_name`]).
    pub name: String<MAX_NAME>,
    /// Exact size in bytes.
    pub size: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
}

/// Runtime settings a bundle may carry for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct RuntimeSettings {
    /// Telemetry period in seconds.
    pub telemetry_period_s: Option<u32>,
    /// Data-drift alert threshold (population stability index), in thousandths.
    pub drift_psi_milli: Option<u32>,
}

/// What a signed bundle promises: which model, which version, for which devices, until when,
/// and the exact bytes of every file. The release key signs its canonical (postcard) bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version, [`MANIFEST_FORMAT`].
    pub format: u16,
    /// Model name (a valid name): what delegations, slots and anti-rollback are keyed by.
    pub name: String<MAX_NAME>,
    /// Monotonically increasing version; a device never installs one ≤ the highest it had.
    pub version: u64,
    /// Human label, e.g. a semver `1.4.0-rc1`.
    pub label: String<32>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// After this instant (Unix seconds) the bundle is refused (freeze attacks).
    pub expires_at: u64,
    /// Architectures the bundle is for.
    pub targets: Vec<Arch, 3>,
    /// Oldest agent that can run it.
    pub min_agent: AgentVersion,
    /// The model's inputs.
    pub inputs: Vec<TensorSpec, MAX_IO>,
    /// The model's outputs.
    pub outputs: Vec<TensorSpec, MAX_IO>,
    /// The files, in the order they follow the header in the container.
    pub files: Vec<FileEntry, MAX_FILES>,
    /// Optional runtime settings.
    pub settings: RuntimeSettings,
}

/// Why a manifest is malformed (independent of any signature or device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestError {
    /// A layout version this code does not know.
    UnknownFormat(u16),
    /// The model name is not a valid name.
    BadName,
    /// A file name is not a valid name.
    BadFileName,
    /// Two files share a name.
    DuplicateFile,
    /// Not exactly one model file.
    ModelFileCount(usize),
    /// Version 0 is reserved for "nothing installed".
    ZeroVersion,
    /// Expires before it was created.
    ExpiresBeforeCreated,
    /// No target architecture.
    NoTarget,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ManifestError::UnknownFormat(v) => {
                write!(f, "unknown manifest format {v} (this agent reads {MANIFEST_FORMAT})")
            }
            ManifestError::BadName => f.write_str("model name is not [A-Za-z0-9][A-Za-z0-9._-]*"),
            ManifestError::BadFileName => f.write_str("a file name is not [A-Za-z0-9][A-Za-z0-9._-]*"),
            ManifestError::DuplicateFile => f.write_str("two files share a name"),
            ManifestError::ModelFileCount(n) => write!(f, "a bundle holds exactly one model file, this one {n}"),
            ManifestError::ZeroVersion => f.write_str("version 0 is reserved"),
            ManifestError::ExpiresBeforeCreated => f.write_str("expires before it was created"),
            ManifestError::NoTarget => f.write_str("no target architecture"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ManifestError {}

impl Manifest {
    /// Checks the manifest's own consistency.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.format != MANIFEST_FORMAT {
            return Err(ManifestError::UnknownFormat(self.format));
        }
        if !is_valid_name(&self.name) {
            return Err(ManifestError::BadName);
        }
        if self.version == 0 {
            return Err(ManifestError::ZeroVersion);
        }
        if self.expires_at <= self.created_at {
            return Err(ManifestError::ExpiresBeforeCreated);
        }
        if self.targets.is_empty() {
            return Err(ManifestError::NoTarget);
        }
        for (i, f) in self.files.iter().enumerate() {
            if !is_valid_name(&f.name) {
                return Err(ManifestError::BadFileName);
            }
            if self.files[..i].iter().any(|g| g.name == f.name) {
                return Err(ManifestError::DuplicateFile);
            }
        }
        let models = self.files.iter().filter(|f| f.role == FileRole::Model).count();
        if models != 1 {
            return Err(ManifestError::ModelFileCount(models));
        }
        Ok(())
    }

    /// The model file's entry (a validated manifest has exactly one).
    pub fn model_file(&self) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.role == FileRole::Model)
    }

    /// Total declared size of all files, saturating.
    pub fn payload_size(&self) -> u64 {
        self.files.iter().fold(0u64, |acc, f| acc.saturating_add(f.size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let mut files = Vec::new();
        let _ = files.push(FileEntry {
            role: FileRole::Model,
            name: String::try_from("model.onnx").unwrap(),
            size: 10,
            sha256: [1; 32],
        });
        let mut targets = Vec::new();
        let _ = targets.push(Arch::Aarch64);
        Manifest {
            format: MANIFEST_FORMAT,
            name: String::try_from("iris").unwrap(),
            version: 3,
            label: String::try_from("1.0.0").unwrap(),
            created_at: 100,
            expires_at: 200,
            targets,
            min_agent: AgentVersion { major: 0, minor: 1, patch: 0 },
            inputs: Vec::new(),
            outputs: Vec::new(),
            files,
            settings: RuntimeSettings::default(),
        }
    }

    #[test]
    fn names_are_safe_as_paths_and_topics() {
        for ok in ["iris", "model.onnx", "a-b_c.1", "X9"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a..b", "a+b", "a#", "é", "a b", "-x"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert!(!is_valid_name(core::str::from_utf8(&[b'a'; MAX_NAME + 1]).unwrap()));
    }

    #[test]
    fn validate_catches_each_inconsistency() {
        assert_eq!(sample().validate(), Ok(()));
        let mut m = sample();
        m.format = 2;
        assert_eq!(m.validate(), Err(ManifestError::UnknownFormat(2)));
        let mut m = sample();
        m.version = 0;
        assert_eq!(m.validate(), Err(ManifestError::ZeroVersion));
        let mut m = sample();
        m.expires_at = 50;
        assert_eq!(m.validate(), Err(ManifestError::ExpiresBeforeCreated));
        let mut m = sample();
        m.targets.clear();
        assert_eq!(m.validate(), Err(ManifestError::NoTarget));
        let mut m = sample();
        let dup = m.files[0].clone();
        let _ = m.files.push(dup);
        assert_eq!(m.validate(), Err(ManifestError::DuplicateFile));
        let mut m = sample();
        m.files[0].name = String::try_from("../etc").unwrap();
        assert_eq!(m.validate(), Err(ManifestError::BadFileName));
        let mut m = sample();
        m.files[0].role = FileRole::SelfTest;
        assert_eq!(m.validate(), Err(ManifestError::ModelFileCount(0)));
    }

    #[test]
    fn manifest_stays_small_enough_to_pass_by_value() {
        // Bounded storage makes the worst case the every-day size; keep it in check.
        assert!(core::mem::size_of::<Manifest>() <= 16 * 1024, "{}", core::mem::size_of::<Manifest>());
    }

    #[test]
    fn agent_versions_parse_and_order() {
        let v = AgentVersion::parse("1.2.3-rc1").unwrap();
        assert_eq!(v, AgentVersion { major: 1, minor: 2, patch: 3 });
        assert!(AgentVersion::parse("1.2").is_none());
        assert!(AgentVersion::parse("1.2.3.4").is_none());
        assert!(AgentVersion::parse("0.10.0").unwrap() > AgentVersion::parse("0.9.9").unwrap());
    }

    #[test]
    fn manifest_round_trips_and_rejects_trailing_bytes() {
        let m = sample();
        let mut buf = [0u8; 1024];
        let bytes = postcard::to_slice(&m, &mut buf).unwrap();
        let (back, rest) = postcard::take_from_bytes::<Manifest>(bytes).unwrap();
        assert_eq!(back, m);
        assert!(rest.is_empty());
    }
}
