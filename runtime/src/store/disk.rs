use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use drover_wire::manifest::{FileRole, Manifest};
use drover_wire::trust::SignedRoot;
use sha2::{Digest, Sha256};

use super::failpoint::FailPoint;
use super::state::{BootDecision, RollbackError, SlotId, StoreState};
use crate::bundle::selftest::{SelfTestError, run_selftest};
use crate::bundle::{ContainerError, Limits, read_header, read_payload};
use crate::engine::{LoadError, Model};
use crate::trust::{
    CommandFacts, CommandRefusal, DeviceFacts, Refusal, TrustState, verify_command, verify_document, verify_header,
};
use drover_wire::command::{Operation, SignedCommand};

/// Where the store lives and how it behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The agent's data directory (one per agent instance).
    pub data_dir: PathBuf,
    /// Starts of a new model without a passed health check before the store rolls back.
    pub max_boot_attempts: u32,
    /// Bounds on bundles.
    pub limits: Limits,
    /// A fail point for crash tests.
    pub failpoint: FailPoint,
}

impl StoreConfig {
    /// Defaults for a data dir: 3 boot attempts, default limits, no fail point.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            data_dir: data_dir.into(),
            max_boot_attempts: 3,
            limits: Limits::default(),
            failpoint: FailPoint::default(),
        }
    }
}

/// Why the store could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// A state file is unreadable: the agent stops rather than guess.
    #[error("{path} is corrupted ({reason}); the agent will not guess which model to serve")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No trust root: the device was never provisioned.
    #[error("no trust root in {0}: provision one with `drover-agent trust --root ROOT.json`")]
    NoTrust(PathBuf),
    /// The offered root is not acceptable.
    #[error("root document refused: {0}")]
    Root(String),
    /// Rollback impossible.
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    /// No slot holds a model that verifies and loads.
    #[error("no servable model: {0}")]
    NothingServable(String),
}

/// Why an install failed. In every case the active model and the anti-rollback floor are as
/// they were before.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The bundle is not authentic, current or meant for this device.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The container is malformed, truncated or does not match its manifest.
    #[error("bad bundle: {0}")]
    Container(#[from] ContainerError),
    /// The model does not load on this device.
    #[error("the new model does not load: {0}")]
    Load(#[from] LoadError),
    /// The model does not pass its self-test here.
    #[error("the new model fails its self-test: {0}")]
    SelfTest(#[from] SelfTestError),
    /// The operator command was refused.
    #[error("command refused: {0}")]
    Command(CommandRefusal),
    /// The bundle does not match the install command.
    #[error("{0}")]
    CommandBundle(String),
    /// The store itself failed (disk full, permissions…).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallReport {
    /// Model name.
    pub name: String,
    /// Installed version.
    pub version: u64,
    /// The slot it now runs from.
    pub slot: SlotId,
    /// Self-test cases passed.
    pub selftest_cases: usize,
}

/// What start-up found.
#[derive(Debug)]
pub struct BootOutcome {
    /// The slot serving, and its loaded model.
    pub serving: Option<(SlotId, Model)>,
    /// The slot given up, when the store rolled back.
    pub rolled_back_from: Option<SlotId>,
    /// Whether a pending slot was committed now.
    pub committed: bool,
}

/// The store: its configuration, current state and trust.
#[derive(Debug)]
pub struct Store {
    cfg: StoreConfig,
    state: StoreState,
    trust: Option<TrustState>,
    /// The model the last install loaded and self-tested, for the agent to serve without
    /// loading it again ([`Store::take_tested`]).
    tested: Option<(SlotId, Model)>,
}

const STATE: &str = "state.json";
const TRUST: &str = "trust.json";
const STAGING: &str = "staging";
const SLOTS: &str = "slots";
const CANDIDATE: &str = "candidate";
const EXPERIMENT: &str = "experiment.json";

mod candidate;
pub use candidate::Experiment;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |error| StoreError::Io { path: path.to_path_buf(), error }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new content:
/// temporary file, fsync, rename, fsync of the directory.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), reason: e.to_string() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(StoreError::Io { path: path.to_path_buf(), error }),
    }
}

/// The store as it stands on disk, read without changing anything: what read-only verbs
/// (`drover-agent status`) show while the agent may be running and installing beside them.
#[derive(Debug, Clone)]
pub struct StoreSnapshot {
    /// The slots' state.
    pub state: StoreState,
    /// The trust root, if provisioned.
    pub trust: Option<TrustState>,
}

impl StoreSnapshot {
    /// Reads the store in `data_dir`. Unlike [`Store::open`] it creates nothing and never
    /// discards a staged install: a running agent's install in progress is left alone.
    pub fn read(data_dir: &Path) -> Result<StoreSnapshot, StoreError> {
        match fs::metadata(data_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::Corrupt { path: data_dir.to_path_buf(), reason: "not a directory".into() });
            }
            Err(error) => return Err(StoreError::Io { path: data_dir.to_path_buf(), error }),
        }
        let state = read_json(&data_dir.join(STATE))?.unwrap_or_default();
        let trust = read_json(&data_dir.join(TRUST))?;
        Ok(StoreSnapshot { state, trust })
    }
}

impl Store {
    /// Opens (or creates) the store in `cfg.data_dir`, discarding any half-staged install: for
    /// the one process that installs (the agent, or an install verb), never for a reader.
    pub fn open(cfg: StoreConfig) -> Result<Store, StoreError> {
        let dir = cfg.data_dir.clone();
        fs::create_dir_all(dir.join(SLOTS)).map_err(io_err(&dir))?;
        let staging = dir.join(STAGING);
        if staging.exists() {
            log::info!("discarding an interrupted install in {}", staging.display());
            fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
        }
        let state = read_json(&dir.join(STATE))?.unwrap_or_default();
        let trust = read_json(&dir.join(TRUST))?;
        Ok(Store { cfg, state, trust, tested: None })
    }

    /// The current state.
    pub fn state(&self) -> &StoreState {
        &self.state
    }

    /// The current trust, if provisioned.
    pub fn trust(&self) -> Option<&TrustState> {
        self.trust.as_ref()
    }

    /// Directory of a slot.
    pub fn slot_dir(&self, id: SlotId) -> PathBuf {
        self.cfg.data_dir.join(SLOTS).join(id.dir_name())
    }

    fn persist(&mut self, next: StoreState) -> Result<(), StoreError> {
        let path = self.cfg.data_dir.join(STATE);
        let bytes = serde_json::to_vec_pretty(&next)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        atomic_write(&path, &bytes)?;
        self.state = next;
        Ok(())
    }

    fn persist_trust(&mut self, trust: TrustState) -> Result<(), StoreError> {
        let path = self.cfg.data_dir.join(TRUST);
        let bytes = serde_json::to_vec_pretty(&trust)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), reason: e.to_string() })?;
        atomic_write(&path, &bytes)?;
        self.trust = Some(trust);
        Ok(())
    }

    /// Provisions (or advances) the trust root. A first root must be self-signed; a later one
    /// must be the next version signed by the current root (the same rule as in bundles).
    pub fn set_trust(&mut self, root: &SignedRoot) -> Result<(), StoreError> {
        use drover_wire::trust::CONTEXT_ROOT;
        let next = match &self.trust {
            None => {
                if !verify_document(&root.doc.key, CONTEXT_ROOT, &root.doc, &root.by_self) {
                    return Err(StoreError::Root("bad self-signature".into()));
                }
                TrustState { root: root.doc.clone() }
            }
            Some(current) => {
                if root.doc.version <= current.root.version {
                    return Err(StoreError::Root(format!(
                        "version {} is not newer than the trusted v{}",
                        root.doc.version, current.root.version
                    )));
                }
                let ok = root.doc.version == current.root.version + 1
                    && verify_document(&current.root.key, CONTEXT_ROOT, &root.doc, &root.by_previous)
                    && verify_document(&root.doc.key, CONTEXT_ROOT, &root.doc, &root.by_self);
                if !ok {
                    return Err(StoreError::Root("not signed by the trusted root as its next version".into()));
                }
                TrustState { root: root.doc.clone() }
            }
        };
        self.persist_trust(next)
    }

    /// Installs a bundle read from `bundle`: verify, stage, write the inactive slot, self-test,
    /// switch, commit. `device` gives the architecture, agent version and time; the
    /// anti-rollback floor comes from the store.
    pub fn install(&mut self, bundle: &mut impl Read, device: &DeviceFacts) -> Result<InstallReport, InstallError> {
        let header = read_header(bundle, &self.cfg.limits)?;
        self.install_from(&mut HeaderThen { header: Some(header), rest: bundle }, device)
    }

    fn install_from<R: Read>(
        &mut self,
        src: &mut HeaderThen<R>,
        device: &DeviceFacts,
    ) -> Result<InstallReport, InstallError> {
        let header = src.header.take().ok_or_else(|| InstallError::CommandBundle("header already consumed".into()))?;
        let (manifest, verified_trust) = self.verify_and_stage(&header, &mut src.rest, device)?;
        let name = manifest.name.to_string();
        self.cfg.failpoint.hit("staged");

        let target = self.state.install_target();
        self.persist(self.state.release_slot(target))?;
        self.cfg.failpoint.hit("slot-released");
        let slot = self.slot_dir(target);
        if slot.exists() {
            fs::remove_dir_all(&slot).map_err(io_err(&slot))?;
        }
        fs::rename(self.cfg.data_dir.join(STAGING), &slot).map_err(io_err(&slot))?;
        sync_dir(&self.cfg.data_dir.join(SLOTS))?;
        self.cfg.failpoint.hit("slot-written");

        self.tested = None;
        let (model, cases) = self.load_and_test(target, &manifest)?;
        self.cfg.failpoint.hit("self-tested");

        self.adopt_trust(verified_trust)?;
        self.persist(self.state.switch_to(target, manifest.clone()))?;
        self.cfg.failpoint.hit("switched");
        self.persist(self.state.commit())?;
        self.cfg.failpoint.hit("committed");
        log::info!("installed {} v{} in slot {target}", manifest.name, manifest.version);
        self.tested = Some((target, model));
        Ok(InstallReport { name, version: manifest.version, slot: target, selftest_cases: cases })
    }

    /// The model the last install loaded and self-tested, and its slot: the agent serves it as
    /// it is instead of loading the file a second time (a model's load is most of the time an
    /// install takes on a board). `None` once taken.
    pub fn take_tested(&mut self) -> Option<(SlotId, Model)> {
        self.tested.take()
    }

    /// Verifies a bundle's header (signatures, device, expiry, newer than what was installed)
    /// and writes its files to the staging directory (removed again on any failure). Returns the
    /// manifest and the trust the header carried, to be adopted once the bundle is accepted.
    fn verify_and_stage(
        &mut self,
        header: &drover_wire::trust::BundleHeader,
        bundle: &mut impl Read,
        device: &DeviceFacts,
    ) -> Result<(Manifest, TrustState), InstallError> {
        let trust = self.trust.clone().ok_or_else(|| StoreError::NoTrust(self.cfg.data_dir.join(TRUST)))?;
        let name = header.manifest.name.to_string();
        let facts = DeviceFacts {
            highest_installed: self.state.highest_installed(&name),
            now: self.state.trusted_now(device.now),
            ..device.clone()
        };
        let verified = verify_header(header, &trust, &facts)?;
        let staging = self.cfg.data_dir.join(STAGING);
        if let Err(e) = self.stage(bundle, &verified.manifest, &staging) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        Ok((verified.manifest, verified.trust))
    }

    /// Keeps a newer trust (a rotated root the bundle brought) once its bundle is accepted.
    fn adopt_trust(&mut self, verified: TrustState) -> Result<(), StoreError> {
        if self.trust.as_ref() != Some(&verified) {
            self.persist_trust(verified)?;
        }
        Ok(())
    }

    fn stage(&self, bundle: &mut impl Read, manifest: &Manifest, staging: &Path) -> Result<(), InstallError> {
        fs::create_dir_all(staging).map_err(io_err(staging)).map_err(InstallError::Store)?;
        let mut written: Vec<PathBuf> = Vec::new();
        read_payload(bundle, manifest, &self.cfg.limits, |entry| {
            // Names were validated with the manifest: no separators, no `..`.
            let path = staging.join(entry.name.as_str());
            written.push(path.clone());
            File::create(&path).map(BufWriter::new)
        })?;
        for path in &written {
            File::open(path).and_then(|f| f.sync_all()).map_err(io_err(path)).map_err(InstallError::Store)?;
        }
        let header = serde_json::to_vec_pretty(manifest)
            .map_err(|e| StoreError::Corrupt { path: staging.into(), reason: e.to_string() })?;
        atomic_write(&staging.join("manifest.json"), &header)?;
        Ok(())
    }

    /// Checks a slot's files against its manifest, loads the model and runs its self-test.
    fn load_and_test(&self, slot: SlotId, manifest: &Manifest) -> Result<(Model, usize), InstallError> {
        self.test_dir(&self.slot_dir(slot), manifest)
    }

    /// Checks the files in `dir` against `manifest`, loads the model and runs its self-test.
    fn test_dir(&self, dir: &Path, manifest: &Manifest) -> Result<(Model, usize), InstallError> {
        verify_files(dir, manifest)?;
        let model_file = manifest.model_file().map(|f| dir.join(f.name.as_str())).unwrap_or_default();
        let mut model = Model::load(&model_file)?;
        let cases = match manifest.files.iter().find(|f| f.role == FileRole::SelfTest) {
            Some(f) => {
                let path = dir.join(f.name.as_str());
                let text = fs::read_to_string(&path).map_err(io_err(&path))?;
                run_selftest(&mut model, &text)?
            }
            None => 0,
        };
        Ok((model, cases))
    }

    /// Start-up: count the attempt of a pending slot, verify and load the active one, commit it
    /// if it passes its health check (load + self-test), else fall back to the previous one.
    pub fn boot(&mut self) -> Result<BootOutcome, StoreError> {
        let (next, decision) = self.state.boot(self.cfg.max_boot_attempts);
        if next != self.state {
            self.persist(next)?;
        }
        let mut rolled_back_from = match decision {
            BootDecision::Empty => return Ok(BootOutcome { serving: None, rolled_back_from: None, committed: false }),
            BootDecision::RolledBack { from, to } => {
                log::warn!("slot {from} never passed its health check: rolled back to slot {to}");
                Some(from)
            }
            BootDecision::Run { .. } => None,
        };
        self.cfg.failpoint.hit("boot-health");
        loop {
            let Some(active) = self.state.active else {
                return Err(StoreError::NothingServable("no active slot".into()));
            };
            let manifest = self
                .state
                .slot(active)
                .cloned()
                .ok_or_else(|| StoreError::NothingServable(format!("slot {active} is empty")))?;
            match self.load_and_test(active, &manifest) {
                Ok((model, _)) => {
                    let committed = self.state.pending;
                    if committed {
                        self.persist(self.state.commit())?;
                    }
                    return Ok(BootOutcome { serving: Some((active, model)), rolled_back_from, committed });
                }
                Err(e) => {
                    log::error!("slot {active} ({} v{}) is not servable: {e}", manifest.name, manifest.version);
                    let Ok(back) = self.state.rollback() else {
                        // Nothing to fall back to: the slot is given up, so that nothing (the
                        // agent's status, its inference service) takes its model for served.
                        self.persist(self.state.give_up(active))?;
                        return Err(StoreError::NothingServable(format!("slot {active}: {e}")));
                    };
                    // A slot that failed verification is no fallback for anything.
                    let back = back.release_slot(active);
                    self.persist(back)?;
                    rolled_back_from = Some(active);
                }
            }
        }
    }

    /// Applies a signed operator command: verified against the trust root, this device's id and
    /// groups, and the replay floor, which is persisted before anything is done. An install
    /// command names the bundle it authorises; `bundle` must be that bundle.
    pub fn apply_command(
        &mut self,
        signed: &SignedCommand,
        device: &str,
        groups: &[String],
        facts: &DeviceFacts,
        bundle: Option<&mut dyn Read>,
    ) -> Result<CommandOutcome, InstallError> {
        let trust = self.trust.clone().ok_or_else(|| StoreError::NoTrust(self.cfg.data_dir.join(TRUST)))?;
        let now = self.state.trusted_now(facts.now);
        let command_facts = CommandFacts { device, groups, now, last_sequence: self.state.last_command };
        let command = verify_command(signed, &trust, &command_facts).map_err(InstallError::Command)?;
        self.persist(self.state.consume_command(command.sequence, command.issued_at))?;
        match &command.op {
            Operation::Rollback => Ok(CommandOutcome::RolledBack(self.rollback()?)),
            Operation::Shadow { name, version, sample_ppm } => {
                let experiment =
                    Experiment::Shadow { name: name.to_string(), version: *version, sample_ppm: *sample_ppm };
                self.start_experiment(experiment.clone())?;
                Ok(CommandOutcome::Experiment(experiment))
            }
            Operation::StopShadow => {
                Ok(CommandOutcome::ShadowStopped(self.end_experiment_if(|e| matches!(e, Experiment::Shadow { .. }))?))
            }
            Operation::Split { a, b, b_ppm } => {
                let name = self.state.active.and_then(|s| self.state.slot(s)).map(|m| m.name.to_string());
                let experiment = Experiment::Split { name: name.unwrap_or_default(), a: *a, b: *b, b_ppm: *b_ppm };
                self.start_experiment(experiment.clone())?;
                Ok(CommandOutcome::Experiment(experiment))
            }
            Operation::StopSplit => {
                Ok(CommandOutcome::SplitStopped(self.end_experiment_if(|e| matches!(e, Experiment::Split { .. }))?))
            }
            Operation::Install { name, version } => {
                let mut bundle = bundle.ok_or(InstallError::CommandBundle("the command needs its bundle".into()))?;
                let header = read_header(&mut bundle, &self.cfg.limits)?;
                if header.manifest.name != *name || header.manifest.version != *version {
                    return Err(InstallError::CommandBundle(format!(
                        "the command authorises {name} v{version}, the bundle is {} v{}",
                        header.manifest.name, header.manifest.version
                    )));
                }
                let mut rest = HeaderThen { header: Some(header), rest: bundle };
                Ok(CommandOutcome::Installed(self.install_from(&mut rest, facts)?))
            }
        }
    }

    /// Switches back to the previous model on the operator's order.
    pub fn rollback(&mut self) -> Result<SlotId, StoreError> {
        let next = self.state.rollback()?;
        let to = next.active.ok_or(StoreError::Rollback(RollbackError::NoPrevious))?;
        self.persist(next)?;
        Ok(to)
    }

    /// Path of the active model file, once installed.
    pub fn active_model(&self) -> Option<PathBuf> {
        let slot = self.state.active?;
        let file = self.state.slot(slot)?.model_file()?;
        Some(self.slot_dir(slot).join(file.name.as_str()))
    }
}

/// A bundle whose header was already read, and the reader positioned at its payload.
struct HeaderThen<R> {
    header: Option<drover_wire::trust::BundleHeader>,
    rest: R,
}

/// What an applied command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Rolled back to this slot.
    RolledBack(SlotId),
    /// Installed.
    Installed(InstallReport),
    /// The candidate's experiment started.
    Experiment(Experiment),
    /// The shadow experiment ended (whether one was running).
    ShadowStopped(bool),
    /// The traffic split ended (whether one was running).
    SplitStopped(bool),
}

/// Checks every file of a slot against the manifest's size and SHA-256.
fn verify_files(dir: &Path, manifest: &Manifest) -> Result<(), InstallError> {
    for f in &manifest.files {
        let path = dir.join(f.name.as_str());
        let mut file = BufReader::new(File::open(&path).map_err(io_err(&path))?);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0u64;
        loop {
            let got = file.read(&mut buf).map_err(io_err(&path))?;
            if got == 0 {
                break;
            }
            hasher.update(&buf[..got]);
            n += got as u64;
        }
        if n != f.size {
            return Err(ContainerError::Truncated { name: f.name.to_string(), got: n, size: f.size }.into());
        }
        if hasher.finalize().as_slice() != f.sha256 {
            return Err(ContainerError::HashMismatch { name: f.name.to_string() }.into());
        }
    }
    Ok(())
}
