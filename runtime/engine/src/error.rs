use std::path::PathBuf;

use super::opcheck::{UnsupportedAttribute, UnsupportedOp, describe, describe_attributes, hint};
use super::stage::Stage;

/// Why a model could not be loaded. One variant per stage of the load pipeline, so a caller (and
/// a user reading the message) knows how far the model got.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read model {path}: {error}")]
    Read {
        /// The model file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The bytes are not an ONNX protobuf.
    #[error("not an ONNX model (protobuf decoding failed): {0}")]
    Decode(String),
    /// A protobuf without a graph.
    #[error("the ONNX file has no graph")]
    NoGraph,
    /// Operators tract cannot run; all of them, not just the first.
    #[error("unsupported operators: {}\nhint: {}", describe(.0), hint(.0))]
    UnsupportedOps(Vec<UnsupportedOp>),
    /// Nodes of operators tract runs, written with attributes it would ignore: refused, as the
    /// model would otherwise load and answer wrongly with no error. Checked once every operator
    /// is known; each line names the operator, the node, the attribute and what to do.
    #[error(
        "unsupported operator attributes (the engine would ignore them and compute something else):\n{}",
        describe_attributes(.0)
    )]
    UnsupportedAttributes(Vec<UnsupportedAttribute>),
    /// An initializer's data lives in a side file that is not a plain file name beside the
    /// model (an absolute path, or one leaving the model's directory): refused, as reading it
    /// would let a model file read any file on the device.
    #[error(
        "tensor '{tensor}' keeps its data in '{location}', which is not a file name beside the model: \
         re-save the model with its external data in the same directory (onnx.save_model(..., \
         save_as_external_data=True, location=\"model.onnx.data\"))"
    )]
    ExternalDataLocation {
        /// The tensor.
        tensor: String,
        /// Where the file says its data is.
        location: String,
    },
    /// A model with external data given as bytes alone: its side files are not at hand.
    #[error(
        "the model keeps its weights in side files ({}): load it from its file, with them beside it \
         (`drover bundle` carries them into the bundle)",
        .0.join(", ")
    )]
    ExternalDataMissing(Vec<String>),
    /// A graph input or output of a type Drover does not carry.
    #[error("{role} '{name}' has element type {dtype}; Drover carries float32, float64, int64, int32, uint8 and int8")]
    UnsupportedType {
        /// "input" or "output".
        role: &'static str,
        /// Value name.
        name: String,
        /// The declared type.
        dtype: String,
    },
    /// A graph input or output that does not fit Drover's wire bounds.
    #[error("{role} '{name}' cannot be described on the wire: {reason}")]
    Schema {
        /// "input" or "output".
        role: &'static str,
        /// Value name.
        name: String,
        /// What exceeded the bounds.
        reason: String,
    },
    /// A stage of tract's pipeline failed.
    #[error("{stage} failed: {message}")]
    Stage {
        /// The failing stage.
        stage: Stage,
        /// tract's explanation, with its causes.
        message: String,
    },
    /// tract panicked on this model; the panic was contained.
    #[error("{stage} crashed inside tract (contained): {message}")]
    Panicked {
        /// The stage that panicked.
        stage: Stage,
        /// The panic payload.
        message: String,
    },
}

/// Why one inference call failed. The model stays loaded and usable after any of these.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Wrong number of input tensors.
    #[error("model takes {expected} inputs, got {actual}")]
    InputCount {
        /// Inputs the model declares.
        expected: usize,
        /// Tensors supplied.
        actual: usize,
    },
    /// An input tensor of the wrong element type.
    #[error("input '{name}' must be {expected}, got {actual}")]
    InputType {
        /// Input name.
        name: String,
        /// Declared type.
        expected: String,
        /// Supplied type.
        actual: String,
    },
    /// An input tensor of the wrong shape.
    #[error("input '{name}' must have shape [{expected}], got {actual:?}")]
    InputShape {
        /// Input name.
        name: String,
        /// Declared shape.
        expected: String,
        /// Supplied shape.
        actual: Vec<usize>,
    },
    /// Samples that cannot form one batch.
    #[error("cannot batch the samples: {0}")]
    Batch(String),
    /// tract refused or failed during evaluation.
    #[error("inference failed: {0}")]
    Engine(String),
    /// tract panicked during evaluation; the panic was contained and the state rebuilt.
    #[error("inference crashed inside tract (contained): {0}")]
    Panicked(String),
}
