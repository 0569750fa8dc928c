//! The candidate: a bundle verified and kept beside the two slots, for a shadow test or an A/B
//! split before anyone decides to install it. Staging a candidate never touches the
//! slots, the served model or the anti-rollback floor, so the device keeps its fallback; the
//! experiment that puts it to work is persisted, so it resumes after a restart.

use std::fs;
use std::io::Read;

use drover_wire::manifest::Manifest;
use serde::{Deserialize, Serialize};

use super::{
    CANDIDATE, EXPERIMENT, InstallError, STAGING, Store, StoreError, atomic_write, io_err, read_json, sync_dir,
};
use crate::bundle::read_header;
use crate::engine::Model;
use crate::trust::DeviceFacts;

/// What the candidate is doing, as the last signed command ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Experiment {
    /// Answering a share of the live inputs beside the served model.
    Shadow {
        /// Model name.
        name: String,
        /// Version.
        version: u64,
        /// Share of inferences copied to it, in parts per million.
        sample_ppm: u32,
    },
    /// Splitting live traffic between the served version (A) and another version of the same
    /// model (B: the candidate or the previous slot).
    Split {
        /// Model name (the served model's).
        name: String,
        /// Variant A: the served version.
        a: u64,
        /// Variant B.
        b: u64,
        /// Share of request keys routed to B, in parts per million.
        b_ppm: u32,
    },
}

impl Store {
    /// Verifies a bundle as an install would (signatures, device, expiry, newer than what was
    /// installed) and keeps it as the candidate, replacing the previous candidate and ending its
    /// experiment. Returns the candidate's manifest.
    pub fn stage_candidate(&mut self, bundle: &mut impl Read, device: &DeviceFacts) -> Result<Manifest, InstallError> {
        let header = read_header(bundle, &self.cfg.limits)?;
        let (manifest, verified_trust) = self.verify_and_stage(&header, bundle, device)?;
        let staging = self.cfg.data_dir.join(STAGING);
        if let Err(e) = self.test_dir(&staging, &manifest) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
        self.end_experiment()?;
        let dir = self.cfg.data_dir.join(CANDIDATE);
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        }
        fs::rename(&staging, &dir).map_err(io_err(&dir))?;
        sync_dir(&self.cfg.data_dir)?;
        self.adopt_trust(verified_trust)?;
        log::info!("staged {} v{} as the candidate", manifest.name, manifest.version);
        Ok(manifest)
    }

    /// The candidate's manifest, if one is staged.
    pub fn candidate(&self) -> Result<Option<Manifest>, StoreError> {
        read_json(&self.cfg.data_dir.join(CANDIDATE).join("manifest.json"))
    }

    /// Checks the candidate's files, loads its model and runs its self-test.
    pub fn load_candidate(&self) -> Result<(Model, Manifest), InstallError> {
        let manifest = self.candidate()?.ok_or_else(|| InstallError::CommandBundle("no candidate is staged".into()))?;
        let (model, _) = self.test_dir(&self.cfg.data_dir.join(CANDIDATE), &manifest)?;
        Ok((model, manifest))
    }

    /// The experiment in progress, if any.
    pub fn experiment(&self) -> Result<Option<Experiment>, StoreError> {
        read_json(&self.cfg.data_dir.join(EXPERIMENT))
    }

    /// Starts `experiment`: a shadow on the staged candidate, which must be the model it names;
    /// a split between the served version and the candidate or the previous slot.
    pub(super) fn start_experiment(&mut self, experiment: Experiment) -> Result<(), InstallError> {
        match &experiment {
            Experiment::Shadow { name, version, .. } => self.check_candidate(name, *version)?,
            Experiment::Split { name, a, b, b_ppm } => {
                if *b_ppm > 1_000_000 {
                    return Err(InstallError::CommandBundle(format!("B's share {b_ppm} ppm is over 100 %")));
                }
                let active = self.state.active.and_then(|s| self.state.slot(s));
                match active {
                    Some(m) if m.name.as_str() == name && m.version == *a => {}
                    _ => {
                        return Err(InstallError::CommandBundle(format!(
                            "variant A must be the served model: this device serves {}",
                            active.map_or("nothing".into(), |m| format!("{} v{}", m.name, m.version))
                        )));
                    }
                }
                if a == b {
                    return Err(InstallError::CommandBundle("variants A and B are the same version".into()));
                }
                self.variant_dir(name, *b)?;
            }
        }
        let bytes = serde_json::to_vec_pretty(&experiment)
            .map_err(|e| StoreError::Corrupt { path: self.cfg.data_dir.join(EXPERIMENT), reason: e.to_string() })?;
        atomic_write(&self.cfg.data_dir.join(EXPERIMENT), &bytes)?;
        Ok(())
    }

    /// Where version `version` of `name` is kept outside the active slot (the candidate, or
    /// the previous slot), with its manifest.
    fn variant_dir(&self, name: &str, version: u64) -> Result<(std::path::PathBuf, Manifest), InstallError> {
        if let Some(m) = self.candidate()?
            && m.name.as_str() == name
            && m.version == version
        {
            return Ok((self.cfg.data_dir.join(CANDIDATE), m));
        }
        if let Some(other) = self.state.active.map(|s| s.other())
            && let Some(m) = self.state.slot(other)
            && m.name.as_str() == name
            && m.version == version
        {
            return Ok((self.slot_dir(other), m.clone()));
        }
        Err(InstallError::CommandBundle(format!(
            "{name} v{version} is neither the staged candidate nor the previous slot: stage it first"
        )))
    }

    /// Checks the files of version `version` of `name` (the candidate's or the previous slot's),
    /// loads its model and runs its self-test: variant B of a split.
    pub fn load_variant(&self, name: &str, version: u64) -> Result<(Model, Manifest), InstallError> {
        let (dir, manifest) = self.variant_dir(name, version)?;
        let (model, _) = self.test_dir(&dir, &manifest)?;
        Ok((model, manifest))
    }

    /// Checks that the staged candidate is `name` v`version`.
    fn check_candidate(&self, name: &str, version: u64) -> Result<(), InstallError> {
        match self.candidate()? {
            Some(m) if m.name.as_str() == name && m.version == version => {}
            Some(m) => {
                return Err(InstallError::CommandBundle(format!(
                    "the candidate is {} v{}, not {name} v{version}: stage that bundle first",
                    m.name, m.version
                )));
            }
            None => {
                return Err(InstallError::CommandBundle(format!(
                    "no candidate is staged: push {name} v{version} to stage it first"
                )));
            }
        }
        Ok(())
    }

    /// Ends the experiment if it is one `stops` accepts; returns whether one ended.
    pub(super) fn end_experiment_if(&mut self, stops: impl Fn(&Experiment) -> bool) -> Result<bool, StoreError> {
        match self.experiment()? {
            Some(e) if stops(&e) => self.end_experiment(),
            _ => Ok(false),
        }
    }

    /// Ends the experiment; returns whether one was in progress.
    pub(super) fn end_experiment(&mut self) -> Result<bool, StoreError> {
        let path = self.cfg.data_dir.join(EXPERIMENT);
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.cfg.data_dir).map(|_| true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err(&path)(e)),
        }
    }
}
