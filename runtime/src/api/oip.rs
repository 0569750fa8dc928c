//! The Open Inference Protocol v2 REST payloads, field for field as the specification names
//! them (kserve/open-inference-protocol, `inference_rest.md`), so that clients written for
//! Triton, KServe, Seldon MLServer or TorchServe call a Drover device unchanged.

use drover_wire::DType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::data::FlatData;

/// `$parameters`: free key/value pairs.
pub type Parameters = Map<String, Value>;

/// `$inference_request`.
#[derive(Debug, Deserialize)]
pub struct InferenceRequest {
    /// Echoed in the response; also what a feedback label refers to.
    pub id: Option<String>,
    /// Request parameters (the binary data extension's are refused, others ignored).
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// The input tensors, batch axis included.
    pub inputs: Vec<RequestInput>,
    /// The outputs wanted (all when absent).
    #[serde(default)]
    pub outputs: Option<Vec<RequestOutput>>,
}

/// `$request_input`.
#[derive(Debug, Deserialize)]
pub struct RequestInput {
    /// The model input it feeds.
    pub name: String,
    /// Its full shape (batch included).
    pub shape: Vec<u64>,
    /// `FP32`, `INT64`…
    pub datatype: String,
    /// Input parameters.
    #[serde(default)]
    pub parameters: Option<Parameters>,
    /// Row-major elements, flat or nested.
    pub data: FlatData,
}

/// `$request_output`.
#[derive(Debug, Deserialize)]
pub struct RequestOutput {
    /// The model output wanted.
    pub name: String,
    /// Output parameters.
    #[serde(default)]
    pub parameters: Option<Parameters>,
}

/// `$inference_response`.
#[derive(Debug, Serialize)]
pub struct InferenceResponse<'a> {
    /// The model that answered.
    pub model_name: &'a str,
    /// Its version.
    pub model_version: String,
    /// The request's id, or the one the agent gave it.
    pub id: &'a str,
    /// Which variant served the request (A/B tests), when there is a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Parameters>,
    /// The outputs.
    pub outputs: Vec<ResponseOutput<'a>>,
}

/// `$response_output`.
#[derive(Debug, Serialize)]
pub struct ResponseOutput<'a> {
    /// Output name.
    pub name: &'a str,
    /// Full shape (batch included).
    pub shape: Vec<usize>,
    /// `FP32`, `INT64`…
    pub datatype: &'static str,
    /// Row-major elements, flat.
    pub data: super::data::FlatRef<'a>,
}

/// `$metadata_server_response`.
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    /// "drover-agent".
    pub name: &'static str,
    /// The agent's version.
    pub version: &'static str,
    /// Supported extensions (none).
    pub extensions: Vec<String>,
}

/// `$metadata_model_response`.
#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    /// Model name.
    pub name: String,
    /// The versions that may be asked for: the served one.
    pub versions: Vec<String>,
    /// `onnx_onnxv1`, the specification's platform name for ONNX.
    pub platform: &'static str,
    /// Inputs.
    pub inputs: Vec<MetadataTensor>,
    /// Outputs.
    pub outputs: Vec<MetadataTensor>,
}

/// `$metadata_tensor`.
#[derive(Debug, Serialize)]
pub struct MetadataTensor {
    /// Tensor name.
    pub name: String,
    /// `FP32`, `INT64`…
    pub datatype: &'static str,
    /// Shape, -1 for a variable dimension.
    pub shape: Vec<i64>,
    /// `{"class_labels": [...]}` for a classifier's probabilities that the file wrote as a
    /// ZipMap (a map per sample, which OIP v2 cannot carry): column `j` is the `j`-th label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<serde_json::Value>,
}

/// `$ready_model_response`.
#[derive(Debug, Serialize)]
pub struct ModelReady {
    /// Model name.
    pub name: String,
    /// Whether it takes requests.
    pub ready: bool,
}

/// Every error response: `{"error": $string}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: String,
}

/// The protocol's name for a Drover element type.
pub fn datatype(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::U8 => "UINT8",
        DType::I8 => "INT8",
    }
}

/// Whether an input's data is in the binary tensor data extension's part of the body, which
/// Drover does not read (refused, rather than misread). Asking for binary *outputs*
/// (`binary_data_output`, an output's `binary_data`) is only a preference: the response is
/// JSON, which such clients read as well (tritonclient asks for binary whenever it lists no
/// outputs).
pub fn binary_input(parameters: Option<&Parameters>) -> bool {
    parameters.is_some_and(|p| p.contains_key("binary_data_size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_has_a_protocol_name() {
        let names: Vec<&str> = DType::ALL.iter().map(|d| datatype(*d)).collect();
        assert_eq!(names, ["FP32", "FP64", "INT64", "INT32", "UINT8", "INT8"]);
    }

    #[test]
    fn binary_input_data_is_noticed() {
        let p = |v: Value| v.as_object().cloned();
        assert!(binary_input(p(serde_json::json!({"binary_data_size": 16})).as_ref()));
        assert!(!binary_input(p(serde_json::json!({"binary_data": true})).as_ref()), "an output preference");
        assert!(!binary_input(p(serde_json::json!({"priority": 1})).as_ref()));
        assert!(!binary_input(None));
    }
}
