//! The OIP v2 endpoints. Request bodies are parsed, checked and run on a blocking thread (a large
//! JSON tensor must not stall the agent's MQTT loop); errors are the protocol's `{"error": …}`.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::oip::{self, ErrorBody, InferenceRequest, InferenceResponse};
use super::tensors::{self, TensorsError};
use crate::serve::{Arm, InferError, Inference, ServedModel};

/// The API's routes over `inference`, refusing bodies over `max_body` bytes.
pub fn router(inference: Inference, max_body: usize) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed on this endpoint")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(inference)
}

/// An error response: status and the protocol's error object.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &ErrorBody { error: self.message });
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<TensorsError> for ApiError {
    fn from(e: TensorsError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> ApiError {
        let status = match e {
            InferError::Busy(_) | InferError::NoModel => StatusCode::SERVICE_UNAVAILABLE,
            InferError::Input(_) => StatusCode::BAD_REQUEST,
            InferError::Engine(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => json_bytes(status, bytes),
        Err(e) => {
            let body = format!("{{\"error\":{}}}", serde_json::Value::String(format!("response not encodable: {e}")));
            json_bytes(StatusCode::INTERNAL_SERVER_ERROR, body.into_bytes())
        }
    }
}

fn json_bytes(status: StatusCode, bytes: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}

/// `{name}` and the optional `{version}` of a model path.
#[derive(Debug, Deserialize)]
struct ModelPath {
    name: String,
    version: Option<String>,
}

fn path(p: Result<Path<ModelPath>, PathRejection>) -> Result<ModelPath, ApiError> {
    p.map(|Path(p)| p).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))
}

/// The served model if it is the one the path names.
fn find(inference: &Inference, p: &ModelPath) -> Result<ServedModel, ApiError> {
    let served = inference.served().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("model '{}' is not served: no model is installed", p.name))
    })?;
    if served.model.name.as_str() != p.name {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model '{}' is not served (this device serves '{}')", p.name, served.model.name),
        ));
    }
    if let Some(v) = &p.version
        && *v != served.model.version.to_string()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("model '{}' version {v} is not served (serving version {})", p.name, served.model.version),
        ));
    }
    Ok(served)
}

async fn server_metadata() -> Response {
    json(
        StatusCode::OK,
        &oip::ServerMetadata { name: "drover-agent", version: env!("CARGO_PKG_VERSION"), extensions: Vec::new() },
    )
}

async fn live() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "live": true }))
}

async fn ready(State(inference): State<Inference>) -> Response {
    let ready = inference.served().is_some();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(status, &serde_json::json!({ "ready": ready }))
}

async fn model_metadata(
    State(inference): State<Inference>,
    p: Result<Path<ModelPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let served = find(&inference, &path(p)?)?;
    let labels = &served.signature.class_labels;
    let describe = |specs: &[drover_wire::TensorSpec]| {
        specs
            .iter()
            .map(|s| oip::MetadataTensor {
                name: s.name.to_string(),
                datatype: oip::datatype(s.dtype),
                shape: tensors::metadata_shape(&s.shape),
                parameters: labels
                    .iter()
                    .find(|l| l.output == s.name.as_str())
                    .map(|l| serde_json::json!({ "class_labels": l.labels })),
            })
            .collect()
    };
    Ok(json(
        StatusCode::OK,
        &oip::ModelMetadata {
            name: served.model.name.to_string(),
            versions: vec![served.model.version.to_string()],
            platform: "onnx_onnxv1",
            inputs: describe(&served.signature.inputs),
            outputs: describe(&served.signature.outputs),
        },
    ))
}

async fn model_ready(
    State(inference): State<Inference>,
    p: Result<Path<ModelPath>, PathRejection>,
) -> Result<Response, ApiError> {
    let served = find(&inference, &path(p)?)?;
    Ok(json(StatusCode::OK, &oip::ModelReady { name: served.model.name.to_string(), ready: true }))
}

async fn infer(
    State(inference): State<Inference>,
    p: Result<Path<ModelPath>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let p = path(p)?;
    if headers.contains_key("inference-header-content-length") {
        return Err(TensorsError::Binary.into());
    }
    let body = body.map_err(|e| {
        let message = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            "request body is larger than the configured limit (api.max_body_kib)".to_string()
        } else {
            e.body_text()
        };
        ApiError::new(e.status(), message)
    })?;
    let served = find(&inference, &p)?;
    let task = tokio::task::spawn_blocking(move || answer(&inference, &served, &body));
    let bytes = task
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("inference task failed: {e}")))??;
    Ok(json_bytes(StatusCode::OK, bytes))
}

/// The request parameter that names the key an A/B split routes by (a user, a session, a
/// camera): the same key always meets the same variant. Without it, the request id is the key.
pub const ROUTING_KEY: &str = "routing_key";
/// The response parameter that says which variant of an A/B split answered (`a` or `b`).
pub const VARIANT: &str = "variant";

/// Parse, check, infer and encode one request (on a blocking thread).
fn answer(inference: &Inference, served: &ServedModel, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let request: InferenceRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("invalid inference request: {e}")))?;
    let sig = &served.signature;
    let checked = tensors::wanted(sig, request.outputs.as_deref())
        .and_then(|wanted| Ok((wanted, tensors::samples(sig, request.inputs)?)));
    let (wanted, samples) = checked.inspect_err(|_| inference.count_bad_input())?;
    let key = request.parameters.as_ref().and_then(|p| p.get(ROUTING_KEY)).and_then(|v| v.as_str());
    let (predictions, arm) = inference.infer_routed(request.id.as_deref(), key, samples)?;
    let first = predictions.first().ok_or(InferError::NoModel)?;
    let id = match &request.id {
        Some(id) => id.clone(),
        // Without an id, a batch's predictions are `{id}/{row}`: answer with the request's part.
        None => first.request.split('/').next().unwrap_or_default().to_string(),
    };
    let outputs: Vec<(usize, crate::tensor::Tensor)> = wanted
        .into_iter()
        .map(|i| {
            tensors::stack_outputs(&sig.batch, &predictions, i).map(|t| (i, t)).ok_or_else(|| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the model's outputs could not be stacked")
            })
        })
        .collect::<Result<_, _>>()?;
    let response = InferenceResponse {
        model_name: first.model.name.as_str(),
        model_version: first.model.version.to_string(),
        id: &id,
        parameters: arm.map(|arm| {
            let variant = if arm == Arm::B { "b" } else { "a" };
            oip::Parameters::from_iter([(VARIANT.to_string(), serde_json::Value::from(variant))])
        }),
        outputs: outputs
            .iter()
            .map(|(i, t)| tensors::response_output(sig.outputs.get(*i).map_or("", |s| s.name.as_str()), t))
            .collect(),
    };
    serde_json::to_vec(&response)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("response not encodable: {e}")))
}
