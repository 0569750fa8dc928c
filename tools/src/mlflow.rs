//! Importing an MLflow model directory (`MLmodel` + files) into a bundle.
//!
//! Only the `onnx` flavor is accepted: the agent runs ONNX models and nothing else. A directory
//! whose model is stored as Python objects (scikit-learn's default skops format since MLflow 3,
//! `pickle`/`cloudpickle`, joblib) is refused without the file ever being opened, and the refusal
//! says which flavor and format it found and how to convert the model to ONNX: loading a pickle
//! runs code, and Drover never needs to, since skl2onnx (or onnxmltools, torch.onnx) converts
//! such models once, on the machine that trained them.

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
    /// The model is stored as Python objects (skops, pickle, cloudpickle, joblib): refused
    /// unopened, with the conversion to ONNX.
    #[error(
        "{dir}: an MLflow model of flavor '{flavor}' serialized with {format} ({file}): {why}, and the Drover \
         agent runs ONNX models only. {convert}",
        why = format.why(),
        convert = conversion(flavor)
    )]
    Python {
        /// The model directory.
        dir: PathBuf,
        /// The flavor that stored it (`sklearn`, or `python_function` for a custom model).
        flavor: String,
        /// How it is serialized.
        format: PythonFormat,
        /// The model file the flavor names (never opened).
        file: String,
    },
    /// No onnx flavor, and none stored as Python objects that we recognise.
    #[error(
        "{dir}: no onnx flavor (flavors: {flavors}); the Drover agent runs ONNX models only. {convert}",
        convert = conversion("")
    )]
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

/// How a non-ONNX flavor stored its model: each is Python objects that only a Python process
/// with the training libraries can rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PythonFormat {
    /// skops, scikit-learn's default in MLflow 3: rebuilt from an allow-list of types, no code run.
    Skops,
    /// Python's pickle.
    Pickle,
    /// cloudpickle (custom `python_function` models, or `serialization_format="cloudpickle"`).
    Cloudpickle,
    /// joblib (pickle with numpy arrays beside it).
    Joblib,
}

impl PythonFormat {
    /// The format a flavor's `serialization_format` names, else the one its file's extension says.
    fn detect(serialization_format: &str, file: &str) -> Option<PythonFormat> {
        let ext = Path::new(file).extension().and_then(|e| e.to_str()).unwrap_or("");
        match (serialization_format, ext) {
            ("skops", _) | ("", "skops") => Some(PythonFormat::Skops),
            ("pickle", _) | ("", "pkl" | "pickle") => Some(PythonFormat::Pickle),
            ("cloudpickle", _) | ("", "cloudpickle") => Some(PythonFormat::Cloudpickle),
            ("", "joblib") => Some(PythonFormat::Joblib),
            _ => None,
        }
    }

    /// Why Drover cannot use a model stored this way.
    fn why(self) -> &'static str {
        match self {
            PythonFormat::Skops => {
                "scikit-learn Python objects that only a Python process with scikit-learn can rebuild and run"
            }
            PythonFormat::Pickle | PythonFormat::Cloudpickle | PythonFormat::Joblib => {
                "a Python pickle, which runs code when loaded (Drover never opens it) and needs the \
                 training libraries in a Python process to run"
            }
        }
    }
}

impl std::fmt::Display for PythonFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PythonFormat::Skops => "skops",
            PythonFormat::Pickle => "pickle",
            PythonFormat::Cloudpickle => "cloudpickle",
            PythonFormat::Joblib => "joblib",
        })
    }
}

/// What to run to turn a `flavor` model into a directory `drover bundle --mlflow` takes: the
/// flavor's ONNX converter, then the onnx flavor.
fn conversion(flavor: &str) -> String {
    let convert = match flavor {
        "sklearn" => {
            "Convert it where it was trained: `from skl2onnx import to_onnx; onnx_model = to_onnx(model, \
             X[:1].astype(numpy.float32))`"
        }
        "xgboost" | "lightgbm" => {
            "Convert it where it was trained with onnxmltools (`onnxmltools.convert_xgboost` / `convert_lightgbm`)"
        }
        "pytorch" => "Convert it where it was trained with `torch.onnx.export(model, example_input, \"model.onnx\")`",
        _ => {
            "Convert it to ONNX where it was trained (scikit-learn: skl2onnx `to_onnx(model, X[:1])`; \
             XGBoost/LightGBM: onnxmltools; PyTorch: torch.onnx.export)"
        }
    };
    format!(
        "{convert}, then log it with `mlflow.onnx.log_model(onnx_model, name=\"model\")` (or write a directory with \
         `mlflow.onnx.save_model(onnx_model, DIR)`) and run `drover bundle --mlflow DIR`"
    )
}

/// The flavor that stored the model as Python objects, if one did: the framework's own flavor
/// (`sklearn`, …) before `python_function`, which MLflow adds to every model and which names the
/// same file.
fn python_model(flavors: &BTreeMap<String, serde_json::Value>) -> Option<(String, PythonFormat, String)> {
    let framework_first = flavors
        .iter()
        .filter(|(name, _)| name.as_str() != "python_function")
        .chain(flavors.iter().filter(|(name, _)| name.as_str() == "python_function"));
    for (name, flavor) in framework_first {
        let format = flavor.get("serialization_format").and_then(|v| v.as_str()).unwrap_or("");
        let file = ["pickled_model", "model_path", "python_model"]
            .iter()
            .find_map(|k| flavor.get(*k).and_then(|v| v.as_str()))
            .unwrap_or("");
        if let Some(format) = PythonFormat::detect(format, file) {
            let file = if file.is_empty() { "no file named".to_string() } else { file.to_string() };
            return Some((name.clone(), format, file));
        }
    }
    None
}

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
        // Say what the model is (flavor, format), so the user knows what to convert and how.
        if let Some((flavor, format, file)) = python_model(&ml.flavors) {
            return Err(MlflowError::Python { dir: dir.into(), flavor, format, file });
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
            // `infer_signature(ndarray, …)` (what most users call) writes tensors without names:
            // they stand for the model's tensors in order.
            let unnamed = declared.iter().any(|(name, _, _)| name.is_empty());
            if unnamed && declared.len() != actual.len() {
                return Err(MlflowError::Signature(format!(
                    "{} unnamed {role}(s) in MLflow, {} in the ONNX model",
                    declared.len(),
                    actual.len()
                )));
            }
            for (i, (name, dtype, shape)) in declared.iter().enumerate() {
                let spec = if unnamed { actual.get(i) } else { actual.iter().find(|s| s.name.as_str() == name) }
                    .ok_or_else(|| MlflowError::Signature(format!("{role} '{name}' is not in the ONNX model")))?;
                let name = if name.is_empty() { format!("#{} ({})", i + 1, spec.name) } else { name.clone() };
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

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::DimRef;

    fn spec(name: &str) -> TensorSpec {
        TensorSpec::new(name, DType::F32, [DimRef::Symbolic("batch"), DimRef::Fixed(16)]).expect("spec")
    }

    fn model(inputs: &[&str]) -> MlflowModel {
        MlflowModel {
            onnx: PathBuf::from("model.onnx"),
            inputs: inputs.iter().map(|n| (n.to_string(), "float32".to_string(), vec![-1, 16])).collect(),
            outputs: Vec::new(),
        }
    }

    #[test]
    fn unnamed_signature_tensors_stand_for_the_models_in_order() {
        // infer_signature(ndarray, …): no names.
        assert!(model(&[""]).check(&[spec("x")], &[]).is_ok());
        let e = model(&["", ""]).check(&[spec("x")], &[]).expect_err("two for one");
        assert!(e.to_string().contains("2 unnamed input(s) in MLflow, 1 in the ONNX model"), "{e}");
        let mut wrong = model(&[""]);
        wrong.inputs[0].2 = vec![-1, 8];
        let e = wrong.check(&[spec("x")], &[]).expect_err("shape");
        assert!(e.to_string().contains("input '#1 (x)'"), "{e}");
        // Named ones still match by name.
        assert!(model(&["x"]).check(&[spec("x")], &[]).is_ok());
        assert!(model(&["y"]).check(&[spec("x")], &[]).is_err());
    }
}
