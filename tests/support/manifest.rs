//! The reference-model manifest (`models/reference/manifest.json`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole manifest.
#[derive(Debug, Deserialize)]
pub struct Manifest {
    /// Versions of the tools that made the models and outputs.
    pub versions: std::collections::BTreeMap<String, String>,
    /// Every reference model.
    pub models: Vec<ReferenceModel>,
}

/// One model with its reference data.
#[derive(Debug, Deserialize)]
pub struct ReferenceModel {
    /// Short name (`cnn`, `mlp_int8_qdq`…).
    pub name: String,
    /// File name under `models/`.
    pub file: String,
    /// fp32, qdq, qoperator, sklearn or dtypes.
    pub kind: String,
    /// `fixed1` or `symbolic`.
    pub batch: String,
    /// Whether Drover must refuse the model.
    pub refused: bool,
    /// The operators that make it refused.
    pub unsupported: Vec<ExpectedOp>,
    /// The node attributes that make it refused (operators the engine runs, written in a form
    /// it would ignore).
    #[serde(default)]
    pub refused_attributes: Vec<ExpectedAttribute>,
    /// Inputs and onnxruntime's outputs, for models Drover runs.
    pub reference: Option<Reference>,
}

/// An operator a refused model uses.
#[derive(Debug, Deserialize)]
pub struct ExpectedOp {
    /// Operator domain.
    pub domain: String,
    /// Operator name.
    pub op: String,
    /// Nodes using it.
    pub count: usize,
}

/// A node attribute a refused model sets.
#[derive(Debug, Deserialize)]
pub struct ExpectedAttribute {
    /// Operator name.
    pub op: String,
    /// Node name.
    pub node: String,
    /// Attribute name.
    pub attribute: String,
}

/// Reference inputs and outputs.
#[derive(Debug, Deserialize)]
pub struct Reference {
    /// Number of samples.
    pub samples: usize,
    /// JSON Lines inputs.
    pub input_jsonl: String,
    /// `.npy` inputs (single-input models).
    pub input_npy: Option<String>,
    /// onnxruntime's outputs.
    pub outputs: Vec<ReferenceOutput>,
}

/// One output as onnxruntime computed it.
#[derive(Debug, Deserialize)]
pub struct ReferenceOutput {
    /// Output name.
    pub name: String,
    /// numpy dtype name.
    pub dtype: String,
    /// `.npy` of all samples (first axis = samples).
    pub npy: String,
    /// Largest absolute difference allowed.
    pub tolerance: f64,
    /// For an output the file wrote as a ZipMap (maps per sample): the class label of each
    /// column of the tensor Drover serves instead.
    #[serde(default)]
    pub class_labels: Option<Vec<String>>,
    /// For an output onnxruntime computes with a quantization of its own on the fly (a dynamic
    /// int8 LSTM): onnxruntime's answers on the operator's float definition, which Drover runs.
    #[serde(default)]
    pub definition: Option<Definition>,
}

/// onnxruntime's outputs on a model's float definition, and how close Drover must be to them.
#[derive(Debug, Deserialize)]
pub struct Definition {
    /// `.npy` of all samples (first axis = samples).
    pub npy: String,
    /// Largest absolute difference allowed.
    pub tolerance: f64,
    /// What the definition is.
    pub what: String,
}

/// The `models/` directory of this checkout.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("models")
}

/// Loads the manifest; panics with the path if it is missing or malformed (a broken checkout).
pub fn load() -> Manifest {
    let path = models_dir().join("reference").join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The models real exporters wrote with their default calls (`models/exported/manifest.json`,
/// written by `models/exported/make_exported.py`), in the same schema.
pub fn load_exported() -> Manifest {
    let path = models_dir().join("exported").join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// onnxruntime's QOperator int8 models as its quantizer writes them (`models/qop/manifest.json`,
/// written by `models/qop/make_qop.py`), in the same schema.
pub fn load_qop() -> Manifest {
    let path = models_dir().join("qop").join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl ReferenceModel {
    /// Absolute path of the model file.
    pub fn path(&self) -> PathBuf {
        models_dir().join(&self.file)
    }
}

/// Absolute path of a manifest-relative file.
pub fn resolve(relative: &str) -> PathBuf {
    models_dir().join(relative)
}

/// The int8 models `drover quantize` made, with onnxruntime's outputs on them
/// (`models/reference/quantize.json`, written by `models/make_quantize_reference.py`).
#[derive(Debug, Deserialize)]
pub struct Quantized {
    /// Every quantized model.
    pub models: Vec<QuantizedModel>,
}

/// One model `drover quantize` wrote.
#[derive(Debug, Deserialize)]
pub struct QuantizedModel {
    /// Short name (`cnn_int8_drover_qdq`…).
    pub name: String,
    /// File name under `models/`.
    pub file: String,
    /// The inputs onnxruntime ran, relative to `models/`.
    pub holdout: String,
    /// onnxruntime's `logits` for them, relative to `models/`.
    pub output_npy: String,
    /// One quantization step of the output: what rounding on another CPU may move a value by.
    pub output_step: f64,
}

/// Loads `quantize.json`; panics with the path if it is missing or malformed (a broken checkout).
pub fn load_quantized() -> Quantized {
    let path = models_dir().join("reference").join("quantize.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The scikit-learn/XGBoost/LightGBM models and onnxruntime's outputs on them
/// (`models/ml/manifest.json`, written by `models/ml/make_ml_models.py`).
#[derive(Debug, Deserialize)]
pub struct MlManifest {
    /// Versions of the trainers, exporters and onnxruntime.
    pub versions: std::collections::BTreeMap<String, String>,
    /// Every model.
    pub models: Vec<MlModel>,
}

/// One exported model.
#[derive(Debug, Deserialize)]
pub struct MlModel {
    /// Short name (`xgb_binary_classifier`…).
    pub name: String,
    /// File name under `models/ml/`.
    pub file: String,
    /// The exporter and the exact call that wrote the file.
    pub producer: MlProducer,
    /// The inputs onnxruntime ran (one tensor per model input, batch axis first).
    pub inputs: Vec<MlTensor>,
    /// onnxruntime's outputs, in the model's output order.
    pub outputs: Vec<MlTensor>,
}

/// Who wrote a model file.
#[derive(Debug, Deserialize)]
pub struct MlProducer {
    /// `skl2onnx` or `onnxmltools`.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The conversion call.
    pub call: String,
}

/// One input or output tensor of the reference run.
#[derive(Debug, Deserialize)]
pub struct MlTensor {
    /// Value name in the model.
    pub name: String,
    /// numpy dtype name.
    pub dtype: String,
    /// `.npy` file, relative to `models/ml/`.
    pub npy: String,
    /// How far Drover may be from onnxruntime (outputs only; integers exact).
    #[serde(default)]
    pub tolerance: Option<MlTolerance>,
}

/// An allowance of `abs` or `rel` · |expected|, whichever is larger.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct MlTolerance {
    /// Absolute allowance.
    pub abs: f64,
    /// Relative allowance.
    pub rel: f64,
}

/// `models/ml/`.
pub fn ml_dir() -> PathBuf {
    models_dir().join("ml")
}

/// Loads `models/ml/manifest.json`; panics with the path if it is missing or malformed.
pub fn load_ml() -> MlManifest {
    let path = ml_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
