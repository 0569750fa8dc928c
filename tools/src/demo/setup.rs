//! What the demo makes before anything runs, exactly as an operator would with `drover keygen`,
//! `root init`, `delegate` and `bundle`: a key set, the fleet's root of trust, delegations, and
//! two signed releases of the committed iris classifier. The model files are compiled into the
//! binary, so the demo runs from any directory and from an installed `drover`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use drover_wire::Arch;
use drover_wire::manifest::{AgentVersion, RuntimeSettings};
use drover_wire::trust::{DelegatedRole, SignedRoot};

use crate::bundle_build::{BundleSpec, Signer, build};
use crate::keys::{Role, generate, write_pair};
use crate::trust_docs::{delegate, root_init, save};

/// v1: `models/iris_logreg.onnx` (scikit-learn LogisticRegression through skl2onnx).
pub const IRIS_V1: &[u8] = include_bytes!("../../../models/iris_logreg.onnx");
/// v2: `models/iris_v2.onnx`, retrained with stronger regularisation (`models/make_iris_v2.py`).
pub const IRIS_V2: &[u8] = include_bytes!("../../../models/iris_v2.onnx");
/// The self-test samples of both releases.
pub const SELFTEST: &str = include_str!("../../../models/reference/iris_logreg.input.jsonl");
/// The feature names, comma-separated.
pub const FEATURES: &str = include_str!("../../../models/data/iris.features.txt");

/// The demo's devices are `{DEVICE_PREFIX}-00`, `-01`, …
pub const DEVICE_PREFIX: &str = "pi";

/// The demo's files, under one directory.
#[derive(Debug)]
pub struct Prepared {
    /// The fleet's root of trust (devices are provisioned with it).
    pub root: SignedRoot,
    /// `root.json`.
    pub root_json: PathBuf,
    /// The signed bundles, v1 then v2.
    pub bundles: [PathBuf; 2],
    /// The directory holding them (the fleet server's `--bundles`).
    pub bundle_dir: PathBuf,
    /// The operator key and its delegation, for the fleet server's rollouts.
    pub operator: crate::fleet::rollouts::Signer,
    /// Bytes of the v1 model file.
    pub model_bytes: usize,
    /// Signs further releases (the soak pushes a new one every few minutes).
    pub releases: Releases,
}

/// The release key and the files a release of iris is made from. Odd versions carry the v1
/// model and even ones the retrained v2, so that consecutive releases really differ.
pub struct Releases {
    signer: Signer,
    models: [PathBuf; 2],
    selftest: PathBuf,
    train: PathBuf,
    dir: PathBuf,
    now: u64,
}

impl std::fmt::Debug for Releases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Releases").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Releases {
    /// Builds and signs iris `version` into `bundles/iris-v{version}.drv`.
    pub fn build(&self, version: u64) -> anyhow::Result<PathBuf> {
        let retrained = version.is_multiple_of(2);
        let label = if retrained { "logreg C=0.3, retrained" } else { "logreg C=1" };
        let spec = BundleSpec {
            model: self.models[usize::from(retrained)].clone(),
            name: "iris".into(),
            version,
            label: label.into(),
            targets: vec![Arch::Aarch64, Arch::Armv7, Arch::X86_64],
            created_at: self.now,
            expires_at: self.now + 90 * 24 * 3600,
            min_agent: AgentVersion::parse(env!("CARGO_PKG_VERSION")).context("the agent's own version")?,
            selftest_from: Some(self.selftest.clone()),
            selftest_count: 8,
            reference_from: Some(self.train.clone()),
            reference_bins: 10,
            feature_names: Some(FEATURES.trim().split(',').map(String::from).collect()),
            settings: RuntimeSettings::default(),
        };
        let mut bundle = build(&spec).with_context(|| format!("bundle iris v{version}"))?;
        bundle.sign(&self.signer)?;
        let out = self.dir.join(format!("iris-v{version}.drv"));
        bundle.write(&out)?;
        Ok(out)
    }
}

/// Makes everything in `dir` (which must be empty or new): keys (secrets 0600), `root.json`,
/// delegations for the release key (model `iris`) and the operator key (group `group` and its
/// devices), the
/// model and data files, and the two bundles.
pub fn prepare(dir: &Path, group: &str, now: u64) -> anyhow::Result<Prepared> {
    let keys = dir.join("keys");
    let year = 365 * 24 * 3600;
    let root_key = generate()?;
    let release_key = generate()?;
    let operator_key = generate()?;
    write_pair(&keys, "root", Role::Root, &root_key)?;
    write_pair(&keys, "release", Role::Release, &release_key)?;
    let (operator_secret, _) = write_pair(&keys, "operator", Role::Operator, &operator_key)?;
    let root = root_init(&root_key, now + year);
    let root_json = dir.join("root.json");
    save(&root_json, &root)?;
    let names = |s: &str| vec![s.to_string()];
    let release =
        delegate(&root, &root_key, DelegatedRole::Release, release_key.public(), &names("iris"), now, now + year)?;
    save(&dir.join("release.delegation.json"), &release)?;
    // A rollout signs a command per device as well as per group.
    let targets = [group.to_string(), format!("{DEVICE_PREFIX}-*")];
    let operator =
        delegate(&root, &root_key, DelegatedRole::Operator, operator_key.public(), &targets, now, now + year)?;
    let operator_delegation = dir.join("operator.delegation.json");
    save(&operator_delegation, &operator)?;

    let models = dir.join("models");
    std::fs::create_dir_all(&models).with_context(|| format!("create {}", models.display()))?;
    let write = |name: &str, bytes: &[u8]| -> anyhow::Result<PathBuf> {
        let p = models.join(name);
        std::fs::write(&p, bytes).with_context(|| format!("write {}", p.display()))?;
        Ok(p)
    };
    let v1 = write("iris_logreg.onnx", IRIS_V1)?;
    let v2 = write("iris_v2.onnx", IRIS_V2)?;
    let selftest = write("iris.selftest.jsonl", SELFTEST.as_bytes())?;
    let train = write("iris.train.jsonl", crate::sim::traffic::IRIS_TRAIN.as_bytes())?;

    let bundle_dir = dir.join("bundles");
    std::fs::create_dir_all(&bundle_dir).with_context(|| format!("create {}", bundle_dir.display()))?;
    let releases = Releases {
        signer: Signer { key: release_key, delegation: release, roots: Vec::new() },
        models: [v1, v2],
        selftest,
        train,
        dir: bundle_dir.clone(),
        now,
    };
    let b1 = releases.build(1)?;
    let b2 = releases.build(2)?;
    Ok(Prepared {
        root,
        root_json,
        bundles: [b1, b2],
        bundle_dir,
        releases,
        operator: crate::fleet::rollouts::Signer { key: operator_secret, delegation: operator_delegation },
        model_bytes: IRIS_V1.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundles_verify_against_the_root_it_made_and_secrets_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = prepare(dir.path(), "demo", 1_700_000_000).unwrap();
        for (i, b) in p.bundles.iter().enumerate() {
            let bundle = crate::bundle_build::Bundle::read(b, &Default::default()).unwrap();
            assert!(bundle.is_signed());
            assert_eq!(bundle.header.manifest.version, i as u64 + 1);
            assert!(bundle.header.manifest.files.len() >= 3, "model, self-test, reference");
        }
        use std::os::unix::fs::PermissionsExt;
        for k in ["root", "release", "operator"] {
            let mode = std::fs::metadata(dir.path().join(format!("keys/{k}.key"))).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{k}");
        }
        let (catalog, skipped) = crate::fleet::drift::Catalog::load_dir(&p.bundle_dir).unwrap();
        assert!(skipped.is_empty() && catalog.knows("iris", 1) && catalog.knows("iris", 2));
        assert!(prepare(dir.path(), "demo", 1_700_000_000).is_err(), "never overwrites keys");
    }
}
