//! Making bundles on the operator's machine: manifest from the model, self-test vectors through
//! the real engine, signing, and reading a bundle back for `verify` and `inspect`.

use std::io::Write;
use std::path::{Path, PathBuf};

use drover_runtime::Model;
use drover_runtime::bundle::selftest::{DEFAULT_ATOL, DEFAULT_RTOL, SelfTestCase};
use drover_runtime::bundle::{ContainerError, Limits, read_header, read_payload, write_bundle};
use drover_runtime::samples::SampleFile;
use drover_runtime::tensor::{Tensor, TensorData};
use drover_runtime::trust::{SecretKey, sign_document};
use drover_wire::manifest::{AgentVersion, FileEntry, FileRole, MANIFEST_FORMAT, Manifest, RuntimeSettings};
use drover_wire::trust::{BundleHeader, CONTEXT_MANIFEST, SignedDelegation, SignedRoot};
use drover_wire::{Arch, TensorSpec};
use heapless::{String as HString, Vec as HVec};
use sha2::{Digest, Sha256};

/// Everything `drover bundle` needs to know.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// The ONNX model.
    pub model: PathBuf,
    /// Model name.
    pub name: String,
    /// Version (> every version the fleet ran).
    pub version: u64,
    /// Human label.
    pub label: String,
    /// Target architectures.
    pub targets: Vec<Arch>,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Oldest agent that can run it.
    pub min_agent: AgentVersion,
    /// Samples to turn into self-test vectors.
    pub selftest_from: Option<PathBuf>,
    /// How many samples to take from that file.
    pub selftest_count: usize,
    /// Reference data (training or validation samples) to profile for drift detection.
    pub reference_from: Option<PathBuf>,
    /// Histogram bins per feature in the reference profile.
    pub reference_bins: usize,
    /// Names of the reference's features (tabular columns), so alerts name them.
    pub feature_names: Option<Vec<String>>,
    /// Runtime settings for the agent.
    pub settings: RuntimeSettings,
}

/// A release key with its delegation, and the root documents to ship along.
pub struct Signer {
    /// The release key.
    pub key: SecretKey,
    /// Its delegation from the root.
    pub delegation: SignedDelegation,
    /// Root documents devices may not have yet.
    pub roots: Vec<SignedRoot>,
}

/// Why a bundle could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The model failed to load through the engine.
    #[error("{path}: {error}")]
    Model {
        /// The model.
        path: PathBuf,
        /// Why.
        error: drover_runtime::LoadError,
    },
    /// Reference data could not be read or profiled.
    #[error("reference statistics: {0}")]
    Reference(String),
    /// Self-test samples could not be read or run.
    #[error("self-test vectors: {0}")]
    SelfTest(String),
    /// A value does not fit the manifest's bounds.
    #[error("{0}")]
    Invalid(String),
    /// The container is malformed.
    #[error("{path}: {error}")]
    Container {
        /// The bundle.
        path: PathBuf,
        /// Why.
        error: ContainerError,
    },
    /// Reading or writing failed.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// A bundle in memory.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Header (signed or not).
    pub header: BundleHeader,
    /// File contents, in manifest order.
    pub files: Vec<Vec<u8>>,
}

impl Bundle {
    /// Whether a release key has signed it.
    pub fn is_signed(&self) -> bool {
        self.header.is_signed()
    }

    /// Loads the bundle's model through the engine, with its side files (external data)
    /// beside it in a scratch directory when it has any.
    pub fn load_model(&self) -> Result<Model, BuildError> {
        let manifest = &self.header.manifest;
        let Some(model_at) = manifest.files.iter().position(|f| f.role == FileRole::Model) else {
            return Err(BuildError::Invalid("the bundle holds no model file".into()));
        };
        let bytes = self.files.get(model_at).map(Vec::as_slice).unwrap_or_default();
        let path = std::path::PathBuf::from(manifest.files[model_at].name.as_str());
        if !manifest.files.iter().any(|f| f.role == FileRole::ModelData) {
            return Model::from_bytes(bytes).map_err(|error| BuildError::Model { path, error });
        }
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("drover-bundle-{}-{nanos}", std::process::id()));
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |error| BuildError::Io { path, error }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let loaded = (|| {
            for (f, content) in manifest.files.iter().zip(&self.files) {
                if matches!(f.role, FileRole::Model | FileRole::ModelData) {
                    let p = dir.join(f.name.as_str());
                    std::fs::write(&p, content).map_err(io(&p))?;
                }
            }
            Model::load(&dir.join(&path)).map_err(|error| BuildError::Model { path: path.clone(), error })
        })();
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    /// The content of the file with `role`.
    pub fn file(&self, role: FileRole) -> Option<&[u8]> {
        let i = self.header.manifest.files.iter().position(|f| f.role == role)?;
        self.files.get(i).map(Vec::as_slice)
    }

    /// Signs (or re-signs) the manifest with `signer`.
    pub fn sign(&mut self, signer: &Signer) -> Result<(), BuildError> {
        self.header.manifest_sig = sign_document(&signer.key, CONTEXT_MANIFEST, &self.header.manifest);
        self.header.delegation = signer.delegation.clone();
        let mut roots = HVec::new();
        for r in &signer.roots {
            roots.push(r.clone()).map_err(|_| BuildError::Invalid("too many root documents for one bundle".into()))?;
        }
        self.header.roots = roots;
        Ok(())
    }

    /// Writes the bundle to `path` atomically (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> Result<(), BuildError> {
        let io = |error| BuildError::Io { path: path.to_path_buf(), error };
        let tmp = path.with_extension("drv.partial");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let files: Vec<&[u8]> = self.files.iter().map(Vec::as_slice).collect();
        let result = write_bundle(&mut file, &self.header, &files).and_then(|_| file.sync_all());
        if let Err(e) = result.and_then(|_| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }

    /// Reads a bundle, checking the container, sizes and every file's hash (not signatures).
    pub fn read(path: &Path, limits: &Limits) -> Result<Bundle, BuildError> {
        let container = |error| BuildError::Container { path: path.to_path_buf(), error };
        let file = std::fs::File::open(path).map_err(|error| BuildError::Io { path: path.to_path_buf(), error })?;
        let mut r = std::io::BufReader::new(file);
        let header = read_header(&mut r, limits).map_err(container)?;
        let files = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        read_payload(&mut r, &header.manifest, limits, |_| {
            files.borrow_mut().push(Vec::new());
            Ok(Appender(std::rc::Rc::clone(&files)))
        })
        .map_err(container)?;
        let files = files.take();
        Ok(Bundle { header, files })
    }
}

/// Appends to the newest buffer of a shared list.
struct Appender(std::rc::Rc<std::cell::RefCell<Vec<Vec<u8>>>>);

impl Write for Appender {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(last) = self.0.borrow_mut().last_mut() {
            last.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn hstring<const N: usize>(s: &str, what: &str) -> Result<HString<N>, BuildError> {
    HString::try_from(s).map_err(|_| BuildError::Invalid(format!("{what} '{s}' is longer than {N} bytes")))
}

fn entry(role: FileRole, name: &str, content: &[u8]) -> Result<FileEntry, BuildError> {
    Ok(FileEntry {
        role,
        name: hstring(name, "file name")?,
        size: content.len() as u64,
        sha256: Sha256::digest(content).into(),
    })
}

/// Builds an unsigned bundle: loads the model through the engine (so a model the agent cannot
/// run is refused here, not on ten thousand boards), records its schema, and computes
/// self-test vectors from the given samples.
pub fn build(spec: &BundleSpec) -> Result<Bundle, BuildError> {
    if !drover_wire::manifest::is_valid_name(&spec.name) {
        return Err(BuildError::Invalid(format!("model name '{}' must be [A-Za-z0-9][A-Za-z0-9._-]*", spec.name)));
    }
    let model_bytes = std::fs::read(&spec.model).map_err(|error| BuildError::Io { path: spec.model.clone(), error })?;
    let model_error = |error| BuildError::Model { path: spec.model.clone(), error };
    // Weights kept beside the model (external data) travel in the bundle, under the names the
    // model refers to them by, and the load below reads them from where they are now.
    let side_files = drover_runtime::engine::external_data_of(&model_bytes).map_err(model_error)?;
    let mut model = Model::load(&spec.model).map_err(model_error)?;
    let mut files = vec![model_bytes];
    let mut entries: HVec<FileEntry, { drover_wire::manifest::MAX_FILES }> = HVec::new();
    let too_many = |_| BuildError::Invalid("too many files".into());
    entries.push(entry(FileRole::Model, "model.onnx", &files[0])?).map_err(too_many)?;
    let dir = spec.model.parent().unwrap_or(std::path::Path::new("."));
    for name in &side_files {
        if ["model.onnx", "selftest.jsonl", "reference.json"].contains(&name.as_str()) {
            return Err(BuildError::Invalid(format!(
                "the model's external data file is named '{name}', a name the bundle uses for another file: \
                 re-save it with another location (e.g. model.onnx.data)"
            )));
        }
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(|error| BuildError::Io { path, error })?;
        entries.push(entry(FileRole::ModelData, name, &bytes)?).map_err(too_many)?;
        files.push(bytes);
    }

    if let Some(samples_path) = &spec.selftest_from {
        let text = selftest_vectors(&mut model, samples_path, spec.selftest_count)?;
        entries.push(entry(FileRole::SelfTest, "selftest.jsonl", text.as_bytes())?).map_err(too_many)?;
        files.push(text.into_bytes());
    } else {
        trial_run(&mut model)?;
    }

    if let Some(data_path) = &spec.reference_from {
        let fail = |e: &dyn std::fmt::Display| BuildError::Reference(format!("{}: {e}", data_path.display()));
        let mut data = SampleFile::open(data_path, model.signature()).map_err(|e| fail(&e))?;
        let mut stats =
            drover_runtime::reference::profile(&mut model, &mut data, spec.reference_bins).map_err(|e| fail(&e))?;
        if let Some(names) = &spec.feature_names {
            if names.len() != stats.features.len() {
                return Err(BuildError::Reference(format!(
                    "{} feature names for {} features of '{}'",
                    names.len(),
                    stats.features.len(),
                    stats.input
                )));
            }
            stats.names = Some(names.clone());
        }
        let text = serde_json::to_vec_pretty(&stats).map_err(|e| fail(&e))?;
        entries.push(entry(FileRole::ReferenceStats, "reference.json", &text)?).map_err(too_many)?;
        files.push(text);
    }

    let specs = |list: &[TensorSpec]| -> Result<HVec<TensorSpec, { drover_wire::manifest::MAX_IO }>, BuildError> {
        list.iter().cloned().try_fold(HVec::new(), |mut v, s| {
            v.push(s).map_err(|_| {
                BuildError::Invalid("the model has more inputs or outputs than a manifest holds".into())
            })?;
            Ok(v)
        })
    };
    let mut targets = HVec::new();
    for t in &spec.targets {
        if !targets.contains(t) {
            targets.push(*t).map_err(|_| BuildError::Invalid("too many targets".into()))?;
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        name: hstring(&spec.name, "model name")?,
        version: spec.version,
        label: hstring(&spec.label, "label")?,
        created_at: spec.created_at,
        expires_at: spec.expires_at,
        targets,
        min_agent: spec.min_agent,
        inputs: specs(&model.signature().inputs)?,
        outputs: specs(&model.signature().outputs)?,
        files: entries,
        settings: spec.settings,
    };
    manifest.validate().map_err(|e| BuildError::Invalid(format!("manifest: {e}")))?;
    let header = BundleHeader::unsigned(manifest);
    Ok(Bundle { header, files })
}

/// Without self-test samples, one run on a sample of zeros: a model that loads but cannot run
/// (an operator that fails only on data, a shape that only a run resolves) is refused here rather
/// than on the devices. Skipped, with a log line, when an input has a free axis besides the batch:
/// the size a zero sample would give it (1) may be one the model cannot take (a sequence shorter
/// than a kernel), and refusing a good model would be wrong; `--selftest` covers those.
fn trial_run(model: &mut Model) -> Result<(), BuildError> {
    let signature = model.signature().clone();
    let mut sample = Vec::with_capacity(signature.inputs.len());
    for index in 0..signature.inputs.len() {
        let shape = signature.sample_shape(index);
        let Some(shape) = shape.iter().copied().collect::<Option<Vec<usize>>>() else {
            log::info!(
                "no trial run: input '{}' has a free axis besides the batch; give --selftest samples to run some",
                signature.inputs[index].name.as_str()
            );
            return Ok(());
        };
        let n: usize = shape.iter().product();
        let data = match signature.input_dtype(index) {
            drover_wire::DType::F32 => TensorData::F32(vec![0.0; n]),
            drover_wire::DType::F64 => TensorData::F64(vec![0.0; n]),
            drover_wire::DType::I64 => TensorData::I64(vec![0; n]),
            drover_wire::DType::I32 => TensorData::I32(vec![0; n]),
            drover_wire::DType::U8 => TensorData::U8(vec![0; n]),
            drover_wire::DType::I8 => TensorData::I8(vec![0; n]),
        };
        sample.push(Tensor::new(shape, data).map_err(|e| BuildError::SelfTest(e.to_string()))?);
    }
    let mut outputs = Vec::new();
    model.run_one(&sample, &mut outputs).map_err(|e| {
        BuildError::SelfTest(format!(
            "the model loads, but a trial run on a sample of zeros failed: {e} \
             (the devices would fail the same way: fix the model, or give --selftest samples it can run)"
        ))
    })
}

/// Runs the first `count` samples of `path` through the model and writes them with the outputs
/// as self-test cases.
fn selftest_vectors(model: &mut Model, path: &Path, count: usize) -> Result<String, BuildError> {
    let fail = |e: &dyn std::fmt::Display| BuildError::SelfTest(e.to_string());
    let mut file = SampleFile::open(path, model.signature()).map_err(|e| fail(&e))?;
    let samples = file.next_batch(count).map_err(|e| fail(&e))?;
    if samples.is_empty() {
        return Err(BuildError::SelfTest(format!("{}: no sample", path.display())));
    }
    let mut out = String::new();
    let mut outputs = Vec::new();
    for sample in &samples {
        model.run_one(sample, &mut outputs).map_err(|e| fail(&e))?;
        let case = SelfTestCase {
            signature: model.signature(),
            inputs: sample,
            outputs: &outputs,
            atol: DEFAULT_ATOL,
            rtol: DEFAULT_RTOL,
        };
        out.push_str(&serde_json::to_string(&case).map_err(|e| fail(&e))?);
        out.push('\n');
    }
    Ok(out)
}
