//! Importing an MLflow model directory (`MLmodel` + files) into a bundle.
//!
//! Only the `onnx` flavor is accepted. A directory whose model is a pickle (scikit-learn's
//! `pickle`/`cloudpickle`, joblib) is refused without the pickle ever being opened: loading a
//! pickle runs code, and Drover never needs to, since skl2onnx converts such models to ONNX.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use drover_wire::{DType, Dim, TensorSpec};
use serde::Deserialize;

/// Why an MLflow directory cannot be bundled.
#[derive(Debug, thiserror::Error)]
pub enum MlflowError {
    /// No readable MLmodel file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// MLmodel is not valid YAML of the expected shape.
    #[error("{path}: not a valid MLmodel file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model is a pickle: refused unopened.
    #[error(
        "{dir}: the model is a Python pickle ({what}); Drover never loads pickles (they run code when loaded). \
         Convert it to ONNX with skl2onnx (to_onnx(model, X[:1].astype(numpy.float32))) and log it with mlflow.onnx"
    )]
    Pickle {
        /// The model directory.
        dir: PathBuf,
        /// What gave it away.
        what: String,
    },
    /// No onnx flavor.
    #[error("{dir}: no onnx flavor (flavors: {flavors}); log the model with mlflow.onnx")]
    NoOnnx {
        /// The model directory.
        dir: PathBuf,
        /// The flavors found.
        flavors: String,
    },
    /// The onnx flavor names a file outside the directory.
    #[error("{dir}: the onnx flavor's data '{data}' is not a file name inside the model directory")]
    UnsafePath {
        /// The model directory.
        dir: PathBuf,
        /// The offending value.
        data: String,
    },
    /// The MLflow signature disagrees with the ONNX model.
    #[error("the MLflow signature does not match the ONNX model: {0}")]
    Signature(String),
}

#[derive(Deserialize)]
struct MlModel {
    #[serde(default)]
    flavors: BTreeMap<String, serde_json::Value>,
    signature: Option<SignatureText>,
}

#[derive(Deserialize)]
struct SignatureText {
    inputs: Option<String>,
    outputs: Option<String>,
}

#[derive(Deserialize)]
struct ColSpec {
    name: Option<String>,
    #[serde(rename = "tensor-spec")]
    tensor_spec: Option<TensorSpecText>,
}

#[derive(Deserialize)]
struct TensorSpecText {
    dtype: String,
    shape: Vec<i64>,
}

/// An MLflow model ready to bundle.
#[derive(Debug, Clone)]
pub struct MlflowModel {
    /// The ONNX file inside the directory.
    pub onnx: PathBuf,
    /// Tensor inputs of the MLflow signature (name, numpy dtype, shape with -1 for free axes).
    inputs: Vec<(String, String, Vec<i64>)>,
    /// Tensor outputs of the MLflow signature.
    outputs: Vec<(String, String, Vec<i64>)>,
}

const PICKLE_EXTENSIONS: [&str; 4] = ["pkl", "pickle", "joblib", "cloudpickle"];

/// Reads `dir/MLmodel` and finds the ONNX model, refusing pickles unopened.
pub fn read(dir: &Path) -> Result<MlflowModel, MlflowError> {
    let path = dir.join("MLmodel");
    let meta = std::fs::metadata(&path).map_err(|error| MlflowError::Io { path: path.clone(), error })?;
    if meta.len() > 1 << 20 {
        return Err(MlflowError::Format { path, reason: "larger than 1 MiB".into() });
    }
    let text = std::fs::read_to_string(&path).map_err(|error| MlflowError::Io { path: path.clone(), error })?;
    let ml: MlModel =
        serde_saphyr::from_str(&text).map_err(|e| MlflowError::Format { path: path.clone(), reason: e.to_string() })?;

    let Some(onnx) = ml.flavors.get("onnx") else {
        // Name the pickle, if that is what the model is, so the user knows what to do.
        for (name, flavor) in &ml.flavors {
            let format = flavor.get("serialization_format").and_then(|v| v.as_str()).unwrap_or("");
            let file = flavor.get("pickled_model").or(flavor.get("model_path")).and_then(|v| v.as_str()).unwrap_or("");
            let ext = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(format, "pickle" | "cloudpickle") || PICKLE_EXTENSIONS.contains(&ext) {
                let what = format!("flavor '{name}', {}", if file.is_empty() { format } else { file });
                return Err(MlflowError::Pickle { dir: dir.into(), what });
            }
        }
        let flavors = ml.flavors.keys().cloned().collect::<Vec<_>>().join(", ");
        return Err(MlflowError::NoOnnx { dir: dir.into(), flavors });
    };
    let data = onnx.get("data").and_then(|v| v.as_str()).unwrap_or("model.onnx").to_string();
    let safe = Path::new(&data).components().count() == 1 && drover_wire::manifest::is_valid_name(&data);
    if !safe {
        return Err(MlflowError::UnsafePath { dir: dir.into(), data });
    }
    let parse = |text: &Option<String>| -> Result<Vec<(String, String, Vec<i64>)>, MlflowError> {
        let Some(t) = text else { return Ok(Vec::new()) };
        let cols: Vec<ColSpec> = serde_json::from_str(t)
            .map_err(|e| MlflowError::Format { path: path.clone(), reason: format!("signature: {e}") })?;
        Ok(cols
            .into_iter()
            .filter_map(|c| c.tensor_spec.map(|s| (c.name.unwrap_or_default(), s.dtype, s.shape)))
            .collect())
    };
    let (inputs, outputs) = match &ml.signature {
        Some(s) => (parse(&s.inputs)?, parse(&s.outputs)?),
        None => (Vec::new(), Vec::new()),
    };
    Ok(MlflowModel { onnx: dir.join(data), inputs, outputs })
}

impl MlflowModel {
    /// Checks the MLflow signature (when there is one) against the loaded model's: same names,
    /// element types and fixed axes. A mismatch means the directory does not describe this model.
    pub fn check(&self, inputs: &[TensorSpec], outputs: &[TensorSpec]) -> Result<(), MlflowError> {
        let pairs = [("input", &self.inputs, inputs), ("output", &self.outputs, outputs)];
        for (role, declared, actual) in pairs {
            for (name, dtype, shape) in declared.iter() {
                let spec = actual
                    .iter()
                    .find(|s| s.name.as_str() == name)
                    .ok_or_else(|| MlflowError::Signature(format!("{role} '{name}' is not in the ONNX model")))?;
                let expected = numpy_dtype(spec.dtype);
                if dtype != expected {
                    return Err(MlflowError::Signature(format!(
                        "{role} '{name}' is {dtype} in MLflow, {expected} in ONNX"
                    )));
                }
                let fits = shape.len() == spec.shape.len()
                    && shape.iter().zip(&spec.shape).all(|(m, d)| match d {
                        Dim::Fixed(n) => *m == -1 || u64::try_from(*m).ok() == Some(*n),
                        Dim::Symbolic(_) => *m == -1,
                    });
                if !fits {
                    return Err(MlflowError::Signature(format!(
                        "{role} '{name}' has shape {shape:?} in MLflow, {spec} in ONNX"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn numpy_dtype(d: DType) -> &'static str {
    d.name()
}
