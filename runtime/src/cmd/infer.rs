//! `drover-agent infer`: run a model over a file of samples and write one output line each.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::ser::SerializeMap;

use crate::engine::{Int8Kernels, LoadError, LoadOptions, Model, RunError, Signature};
use crate::samples::{Sample, SampleError, SampleFile};
use crate::tensor::Tensor;

/// What to run, on what, and where the results go.
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// The ONNX model.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Samples: `.jsonl` (one per line: a nested array without the batch axis, or an object
    /// `{"<input>": array}` for several inputs) or `.npy` (first axis = samples).
    #[arg(long, short = 'i')]
    pub input: PathBuf,
    /// Where to write one `{"outputs": {...}}` line per sample, in input order; `-` for stdout.
    /// A file is only replaced once every sample succeeded.
    #[arg(long, short = 'o')]
    pub output: PathBuf,
    /// Samples per run; more than 1 needs a model with a symbolic batch axis.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// The kernels of the int8 layers: `native` (this machine's faster family), or `lanes` /
    /// `linalg` to compare Drover's own with tract-linalg's (docs/int8.md).
    #[arg(long, default_value = "native")]
    pub int8_kernels: Int8Kernels,
}

/// What a completed run did, for the summary line and for tests.
#[derive(Debug, Clone, Serialize)]
pub struct InferSummary {
    /// Samples inferred.
    pub samples: u64,
    /// Samples per engine run.
    pub batch: usize,
    /// Load time (all stages).
    pub load: Duration,
    /// Time spent inside the engine.
    pub inference: Duration,
    /// Wall time from start to the output being in place.
    pub wall: Duration,
}

impl InferSummary {
    /// Engine time per sample in microseconds.
    pub fn us_per_sample(&self) -> f64 {
        if self.samples == 0 { 0.0 } else { self.inference.as_secs_f64() * 1e6 / self.samples as f64 }
    }
}

/// Why `infer` stopped. The output file is left as it was in every case.
#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// The model did not load.
    #[error("{path}: {error}")]
    Load {
        /// The model file.
        path: PathBuf,
        /// Why.
        error: LoadError,
    },
    /// The samples could not be read.
    #[error(transparent)]
    Samples(#[from] SampleError),
    /// The model failed on a sample.
    #[error("sample {index}: {error}")]
    Run {
        /// 0-based index of the first sample of the failing batch.
        index: u64,
        /// Why.
        error: RunError,
    },
    /// The batch size is impossible for this model.
    #[error("--batch {requested}: {reason}")]
    Batch {
        /// Requested batch.
        requested: usize,
        /// Why it cannot be used.
        reason: String,
    },
    /// The output could not be written.
    #[error("cannot write {path}: {error}")]
    Write {
        /// The output file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
}

/// Runs `args.model` over `args.input`; `progress` is told how many samples are done after each
/// batch (and the total up front, when known).
pub fn infer(args: &InferArgs, progress: &mut dyn FnMut(Progress)) -> Result<InferSummary, InferError> {
    let start = Instant::now();
    let options = LoadOptions { int8_kernels: args.int8_kernels, ..LoadOptions::default() };
    let mut model =
        Model::load_with(&args.model, options).map_err(|error| InferError::Load { path: args.model.clone(), error })?;
    let load = start.elapsed();
    check_batch(args.batch, model.signature())?;
    let mut samples = SampleFile::open(&args.input, model.signature())?;
    log::debug!("{}: {:?} samples, batch {}", args.input.display(), samples.len_hint(), args.batch);
    progress(Progress::Total(samples.len_hint()));

    let mut sink = Sink::create(&args.output)?;
    let mut done = 0u64;
    let mut inference = Duration::ZERO;
    // Output tensors kept across samples so the one-sample path reuses their buffers.
    let mut reused = Vec::new();
    let write_err = |error| InferError::Write { path: args.output.clone(), error };
    loop {
        let batch: Vec<Sample> = samples.next_batch(args.batch)?;
        if batch.is_empty() {
            break;
        }
        if let [sample] = batch.as_slice() {
            let t = Instant::now();
            model.run_one(sample, &mut reused).map_err(|error| InferError::Run { index: done, error })?;
            inference += t.elapsed();
            sink.write_line(model.signature(), &reused).map_err(write_err)?;
        } else {
            let t = Instant::now();
            let outputs = model.run_samples(&batch).map_err(|error| InferError::Run { index: done, error })?;
            inference += t.elapsed();
            for sample_outputs in &outputs {
                sink.write_line(model.signature(), sample_outputs).map_err(write_err)?;
            }
        }
        done += batch.len() as u64;
        progress(Progress::Done(done));
    }
    sink.commit().map_err(write_err)?;
    Ok(InferSummary { samples: done, batch: args.batch, load, inference, wall: start.elapsed() })
}

/// Progress reports from [`infer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Total number of samples, when known.
    Total(Option<u64>),
    /// Samples completed so far.
    Done(u64),
}

fn check_batch(batch: usize, signature: &Signature) -> Result<(), InferError> {
    if batch == 0 {
        return Err(InferError::Batch { requested: 0, reason: "must be at least 1".into() });
    }
    if batch > signature.batch.max_batch() {
        let reason = match &signature.batch {
            crate::engine::BatchAxis::FixedOne => "the model's batch axis is fixed to 1".to_string(),
            _ => "the model's inputs share no symbolic batch axis".to_string(),
        };
        return Err(InferError::Batch { requested: batch, reason });
    }
    Ok(())
}

/// One output line: `{"outputs": {"<name>": nested array, …}}` in the model's output order.
struct OutputLine<'a> {
    signature: &'a Signature,
    outputs: &'a [Tensor],
}

impl Serialize for OutputLine<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Named<'a>(&'a Signature, &'a [Tensor]);
        impl Serialize for Named<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.1.len()))?;
                for (spec, t) in self.0.outputs.iter().zip(self.1) {
                    map.serialize_entry(spec.name.as_str(), t)?;
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry("outputs", &Named(self.signature, self.outputs))?;
        map.end()
    }
}

/// The output destination: stdout, or a temporary file renamed over the target on success, or,
/// for a target that is not a regular file (`/dev/null`, a FIFO, a symlink), the target itself:
/// renaming over it would replace a device node or a link with a file (run as root,
/// `--output /dev/null` turned the machine's /dev/null into a regular file).
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File { tmp: PathBuf, target: PathBuf, out: BufWriter<File> },
    Direct(BufWriter<File>),
}

impl Sink {
    fn create(target: &Path) -> Result<Sink, InferError> {
        if target == Path::new("-") {
            return Ok(Sink::Stdout(BufWriter::new(std::io::stdout())));
        }
        let regular_or_new = match std::fs::symlink_metadata(target) {
            Ok(meta) => meta.file_type().is_file(),
            Err(error) => error.kind() == std::io::ErrorKind::NotFound,
        };
        if !regular_or_new {
            let file = File::create(target).map_err(|error| InferError::Write { path: target.to_path_buf(), error })?;
            return Ok(Sink::Direct(BufWriter::new(file)));
        }
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = target.with_file_name(format!(".{name}.partial-{}", std::process::id()));
        let file = File::create(&tmp).map_err(|error| InferError::Write { path: target.to_path_buf(), error })?;
        Ok(Sink::File { tmp, target: target.to_path_buf(), out: BufWriter::new(file) })
    }

    fn write_line(&mut self, signature: &Signature, outputs: &[Tensor]) -> std::io::Result<()> {
        let out: &mut dyn Write = match self {
            Sink::Stdout(w) => w,
            Sink::File { out, .. } => out,
            Sink::Direct(w) => w,
        };
        serde_json::to_writer(&mut *out, &OutputLine { signature, outputs })?;
        out.write_all(b"\n")
    }

    fn commit(mut self) -> std::io::Result<()> {
        match &mut self {
            Sink::Stdout(w) => w.flush(),
            Sink::Direct(w) => w.flush(),
            Sink::File { tmp, target, out } => {
                out.flush()?;
                out.get_ref().sync_all()?;
                std::fs::rename(&*tmp, &*target)?;
                // Renamed: nothing left for Drop to clean up.
                tmp.clear();
                Ok(())
            }
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Sink::File { tmp, .. } = self
            && !tmp.as_os_str().is_empty()
        {
            let _ = std::fs::remove_file(&*tmp);
        }
    }
}
