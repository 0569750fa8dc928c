//! Static post-training int8 quantization of ONNX models, so that an operator can ship an int8
//! model to a board without a Python toolchain.
//!
//! The steps, one module each:
//! * [`plan`]: normalize the graph for the format and decide which nodes become int8;
//! * [`calibrate`]: run the calibration samples through tract (the agent's engine) and measure
//!   the activation ranges;
//! * [`scale`]: turn ranges and weights into scales and zero points (onnxruntime's conventions);
//! * [`qdq`] or [`qoperator`]: write the int8 graph with standard ONNX operators only;
//! * [`evaluate`]: compare fp32 and int8 outputs on held-out samples, both through tract.
//!
//! The output is a pure function of the model bytes, the samples and the options: same inputs,
//! byte-identical file.

pub mod calibrate;
pub mod evaluate;
pub mod graph;
pub mod plan;
pub mod qdq;
pub mod qoperator;
pub mod scale;
mod weights;

#[cfg(test)]
mod reference_tests;

use std::collections::BTreeMap;
use std::path::Path;

use drover_runtime::engine::Signature;
use drover_runtime::samples::{Sample, SampleError, SampleFile};
use prost::Message;
use tract_onnx::pb::{ModelProto, StringStringEntryProto};

pub use evaluate::{Accuracy, OutputDelta, compare};

/// Where the int8 arithmetic is spelled out in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// QuantizeLinear/DequantizeLinear pairs around the fp32 operators: every runtime can run
    /// it, and the runtime decides what to fuse.
    Qdq,
    /// Integer operators (QLinearConv, QLinearMatMul) between QuantizeLinear and
    /// DequantizeLinear.
    #[value(name = "qoperator")]
    QOperator,
}

impl Format {
    /// The name used on the command line and in the model's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Format::Qdq => "qdq",
            Format::QOperator => "qoperator",
        }
    }
}

/// How a measured activation distribution becomes a range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    /// The smallest and largest values seen: nothing clips on calibration data.
    MinMax,
    /// The bounds holding this percentage of the values on each side: rare outliers clip, the
    /// bulk of the values get finer steps.
    Percentile(f64),
}

impl Method {
    fn describe(self) -> String {
        match self {
            Method::MinMax => "minmax".into(),
            Method::Percentile(p) => format!("percentile {p}"),
        }
    }
}

/// What to produce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// QDQ or QOperator.
    pub format: Format,
    /// One weight scale per output channel for Conv (axis 0) instead of one per tensor.
    pub per_channel: bool,
    /// How activation ranges are taken from the calibration samples.
    pub method: Method,
}

/// Why a model could not be quantized.
#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The model uses an opset too old for per-axis QuantizeLinear/DequantizeLinear.
    #[error("default-domain opset {0}: the quantizer needs opset 13 or later (convert with onnx.version_converter)")]
    Opset(i64),
    /// The graph is malformed or uses a form the quantizer cannot rewrite.
    #[error("{0}")]
    Graph(String),
    /// No calibration sample.
    #[error("no calibration samples")]
    NoSamples,
    /// A calibration or evaluation run failed in the engine.
    #[error("calibration: {0}")]
    Calibration(String),
    /// Nothing in the model can be quantized.
    #[error("nothing to quantize: no Conv, Gemm or MatMul with constant float32 weights{}", notes_suffix(.0))]
    NothingToQuantize(Vec<String>),
    /// The samples could not be read.
    #[error(transparent)]
    Samples(#[from] SampleError),
    /// The quantized model does not load or run in the engine.
    #[error("the quantized model does not run: {0}")]
    Evaluation(String),
}

fn notes_suffix(notes: &[String]) -> String {
    if notes.is_empty() { String::new() } else { format!(" ({})", notes.join("; ")) }
}

/// A quantized model and what the quantizer left as it was.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// The int8 model file.
    pub bytes: Vec<u8>,
    /// Nodes now int8 (Conv, Gemm, MatMul).
    pub quantized_nodes: usize,
    /// Why some nodes stay fp32, and other remarks (clamped biases).
    pub notes: Vec<String>,
}

/// Reads every sample of a calibration or held-out file (`.jsonl` or `.npy`), with the readers
/// the agent uses for `drover-agent infer`.
pub fn read_samples(path: &Path, signature: &Signature) -> Result<Vec<Sample>, QuantizeError> {
    let mut file = SampleFile::open(path, signature)?;
    Ok(file.next_batch(usize::MAX)?)
}

/// Decodes an ONNX model, rejecting what merely decodes as protobuf.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, QuantizeError> {
    let model = ModelProto::decode(bytes).map_err(|e| QuantizeError::NotOnnx(e.to_string()))?;
    let graph = model.graph.as_ref().ok_or_else(|| QuantizeError::NotOnnx("no graph".into()))?;
    if model.opset_import.is_empty() || graph.output.is_empty() {
        return Err(QuantizeError::NotOnnx("no operator set or no graph output".into()));
    }
    Ok(model)
}

/// Quantizes `model` (ONNX bytes) with ranges measured on `samples`.
pub fn quantize(model: &[u8], samples: &[Sample], options: &Options) -> Result<Quantized, QuantizeError> {
    let mut proto = decode(model)?;
    match graph::default_opset(&proto) {
        Some(v) if v >= 13 => {}
        Some(v) => return Err(QuantizeError::Opset(v)),
        None => return Err(QuantizeError::Opset(0)),
    }
    if samples.is_empty() {
        return Err(QuantizeError::NoSamples);
    }
    let Some(g) = proto.graph.as_mut() else { return Err(QuantizeError::NotOnnx("no graph".into())) };
    graph::check_topological(g)?;
    plan::normalize(g, options.format);
    let plan = plan::plan(g, options.format);
    if plan.compute.is_empty() {
        return Err(QuantizeError::NothingToQuantize(plan.notes));
    }
    for note in &plan.notes {
        log::info!("{note}");
    }
    let ranges = calibrate::calibrate(&proto, &plan.measured, samples, options.method)?;
    let params: BTreeMap<String, scale::ActParams> = ranges
        .iter()
        .map(|(name, r)| (name.clone(), scale::activation(scale::snap_outward(r.min), scale::snap_outward(r.max))))
        .collect();
    let Some(g) = proto.graph.as_mut() else { return Err(QuantizeError::NotOnnx("no graph".into())) };
    let mut notes = plan.notes.clone();
    let (mut new_graph, more) = match options.format {
        Format::Qdq => qdq::emit(g, &plan, &params, options.per_channel)?,
        Format::QOperator => qoperator::emit(g, &plan, &params, options.per_channel)?,
    };
    notes.extend(more);
    graph::drop_unused_initializers(&mut new_graph);
    keep_known_value_info(&mut new_graph);
    *g = new_graph;
    proto.producer_name = "drover quantize".into();
    proto.producer_version = String::new();
    let meta = [
        ("drover.quantize.format", options.format.name().to_string()),
        ("drover.quantize.method", options.method.describe()),
        ("drover.quantize.per_channel", options.per_channel.to_string()),
        ("drover.quantize.calibration_samples", samples.len().to_string()),
    ];
    proto.metadata_props.retain(|p| !p.key.starts_with("drover.quantize."));
    proto.metadata_props.extend(meta.into_iter().map(|(k, v)| StringStringEntryProto { key: k.to_string(), value: v }));
    Ok(Quantized { bytes: proto.encode_to_vec(), quantized_nodes: plan.compute.len(), notes })
}

/// Drops `value_info` entries for tensors the rewrite removed or renamed.
fn keep_known_value_info(g: &mut tract_onnx::pb::GraphProto) {
    let present: std::collections::BTreeSet<String> = g.node.iter().flat_map(|n| n.output.iter().cloned()).collect();
    g.value_info.retain(|v| present.contains(&v.name));
}

#[cfg(test)]
mod robustness {
    use super::*;
    use drover_runtime::engine::Model;
    use proptest::prelude::*;

    fn mlp() -> (Vec<u8>, Vec<Sample>) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let bytes = std::fs::read(dir.join("mlp.onnx")).expect("committed model");
        let signature = Model::from_bytes(&bytes).expect("loads").signature().clone();
        let samples = read_samples(&dir.join("reference/mlp.input.npy"), &signature).expect("samples");
        (bytes, samples[..4].to_vec())
    }

    fn options(qoperator: bool) -> Options {
        let format = if qoperator { Format::QOperator } else { Format::Qdq };
        Options { format, per_channel: false, method: Method::MinMax }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// A corrupted model quantizes or fails with an error; the process survives either way.
        #[test]
        fn a_corrupted_model_quantizes_or_errors(at in any::<prop::sample::Index>(), byte in any::<u8>(), qop in any::<bool>()) {
            let (mut bytes, samples) = mlp();
            let i = at.index(bytes.len());
            bytes[i] = byte;
            let _ = quantize(&bytes, &samples, &options(qop));
        }

        /// So does a truncated one.
        #[test]
        fn a_truncated_model_quantizes_or_errors(cut in any::<prop::sample::Index>(), qop in any::<bool>()) {
            let (bytes, samples) = mlp();
            let cut = cut.index(bytes.len());
            let _ = quantize(&bytes[..cut], &samples, &options(qop));
        }
    }

    #[test]
    fn no_samples_is_an_error() {
        let (bytes, _) = mlp();
        assert!(matches!(quantize(&bytes, &[], &options(false)), Err(QuantizeError::NoSamples)));
    }
}
