//! Between OIP tensors and the engine's samples: the request's inputs are matched to the model
//! by name, checked (type, shape, element count) and split along the batch axis; predictions are
//! stacked back into full output tensors. Pure: the conformance rules are unit-tested here.

use drover_wire::Dim;

use super::oip::{self, RequestInput, RequestOutput, ResponseOutput};
use crate::engine::{BatchAxis, Signature};
use crate::serve::Prediction;
use crate::tensor::Tensor;

/// Why a request's tensors do not fit the model (an HTTP 400).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorsError {
    /// An input the model does not have.
    #[error("unexpected input '{0}'")]
    Unknown(String),
    /// An input given twice.
    #[error("input '{0}' is given twice")]
    Duplicate(String),
    /// A model input without a tensor.
    #[error("expected input '{0}' is missing")]
    Missing(String),
    /// Wrong element type.
    #[error("input '{name}': datatype {found} where the model takes {expected}")]
    Datatype {
        /// Input.
        name: String,
        /// What the model takes.
        expected: &'static str,
        /// What was sent.
        found: String,
    },
    /// Shape does not fit the declared one.
    #[error("input '{name}': shape {found:?} does not fit the model's {expected}")]
    Shape {
        /// Input.
        name: String,
        /// Declared shape (`-1` variable).
        expected: String,
        /// Sent shape.
        found: Vec<u64>,
    },
    /// `data` holds a different number of elements than `shape` says.
    #[error("input '{name}': shape {shape:?} needs {expected} elements, data has {found}")]
    Count {
        /// Input.
        name: String,
        /// Sent shape.
        shape: Vec<u64>,
        /// Product of the shape.
        expected: u64,
        /// Elements in data.
        found: usize,
    },
    /// A batched input whose samples hold no elements (an axis of 0 besides the batch axis):
    /// nothing in the request would then bound its number of rows.
    #[error("input '{name}': shape {shape:?} gives samples of no elements")]
    EmptySample {
        /// Input.
        name: String,
        /// Sent shape.
        shape: Vec<u64>,
    },
    /// Inputs disagree on the batch size.
    #[error("inputs disagree on the batch size ({0} and {1})")]
    Batch(usize, usize),
    /// An element does not fit the type.
    #[error("input '{name}': {error}")]
    Element {
        /// Input.
        name: String,
        /// The element.
        error: super::data::ElementError,
    },
    /// An output the model does not have.
    #[error("unexpected output '{0}'")]
    UnknownOutput(String),
    /// Input data in the binary tensor data extension.
    #[error("the binary tensor data extension is not supported: send JSON data")]
    Binary,
}

/// The request's inputs as samples for the engine (one per batch row, or the whole tensors
/// when the model has no batch axis).
pub fn samples(sig: &Signature, inputs: Vec<RequestInput>) -> Result<Vec<Vec<Tensor>>, TensorsError> {
    let mut slots: Vec<Option<RequestInput>> = sig.inputs.iter().map(|_| None).collect();
    for input in inputs {
        let index = sig.input_index(&input.name).ok_or_else(|| TensorsError::Unknown(input.name.clone()))?;
        if slots[index].is_some() {
            return Err(TensorsError::Duplicate(input.name));
        }
        if oip::binary_input(input.parameters.as_ref()) {
            return Err(TensorsError::Binary);
        }
        slots[index] = Some(input);
    }
    let batched = sig.batch.strips_leading_axis();
    let mut rows: Option<usize> = None;
    let mut columns = Vec::with_capacity(slots.len());
    for (spec, slot) in sig.inputs.iter().zip(slots) {
        let input = slot.ok_or_else(|| TensorsError::Missing(spec.name.to_string()))?;
        let expected = oip::datatype(spec.dtype);
        if input.datatype != expected {
            return Err(TensorsError::Datatype { name: input.name, expected, found: input.datatype });
        }
        let fits = input.shape.len() == spec.shape.len()
            && input.shape.iter().zip(&spec.shape).enumerate().all(|(axis, (&sent, dim))| match dim {
                Dim::Fixed(n) if !(batched && axis == 0) => sent == *n,
                _ => !(batched && axis == 0 && sent == 0),
            });
        if !fits {
            return Err(TensorsError::Shape { name: input.name, expected: declared(&spec.shape), found: input.shape });
        }
        let count = input.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).unwrap_or(u64::MAX);
        if count != input.data.0.len() as u64 {
            return Err(TensorsError::Count {
                name: input.name,
                expected: count,
                found: input.data.0.len(),
                shape: input.shape,
            });
        }
        if batched && count == 0 {
            return Err(TensorsError::EmptySample { name: input.name, shape: input.shape });
        }
        let RequestInput { name, shape, data, .. } = input;
        let data = data.into_data(spec.dtype).map_err(|error| TensorsError::Element { name: name.clone(), error })?;
        // Shape × count checked above: every dimension fits in memory already held.
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let n = if batched { shape[0] } else { 1 };
        match rows {
            Some(r) if r != n => return Err(TensorsError::Batch(r, n)),
            _ => rows = Some(n),
        }
        let tensor = Tensor::new(shape, data).map_err(|_| TensorsError::Missing(name.clone()))?;
        columns.push(tensor);
    }
    let n = rows.unwrap_or(1);
    if !batched {
        return Ok(vec![columns]);
    }
    let mut samples: Vec<Vec<Tensor>> = (0..n).map(|_| Vec::with_capacity(columns.len())).collect();
    for column in &columns {
        let parts =
            column.unstack(n).map_err(|_| TensorsError::Batch(n, column.shape().first().copied().unwrap_or(0)))?;
        for (sample, part) in samples.iter_mut().zip(parts) {
            sample.push(part);
        }
    }
    Ok(samples)
}

/// Which outputs (by index) the response carries: those asked for, or all.
pub fn wanted(sig: &Signature, outputs: Option<&[RequestOutput]>) -> Result<Vec<usize>, TensorsError> {
    match outputs {
        None => Ok((0..sig.outputs.len()).collect()),
        Some(list) => list
            .iter()
            .map(|o| {
                sig.outputs
                    .iter()
                    .position(|s| s.name.as_str() == o.name)
                    .ok_or_else(|| TensorsError::UnknownOutput(o.name.clone()))
            })
            .collect(),
    }
}

/// The full output tensors of a request's predictions: stacked along the batch axis again, or
/// the single sample's outputs when the model has none.
pub fn stack_outputs(batch: &BatchAxis, predictions: &[Prediction], index: usize) -> Option<Tensor> {
    if !batch.strips_leading_axis() {
        return predictions.first()?.outputs.get(index).cloned();
    }
    let rows: Option<Vec<&Tensor>> = predictions.iter().map(|p| p.outputs.get(index)).collect();
    Tensor::stack(&rows?).ok()
}

/// A response output for `tensor`.
pub fn response_output<'a>(name: &'a str, tensor: &'a Tensor) -> ResponseOutput<'a> {
    ResponseOutput {
        name,
        shape: tensor.shape().to_vec(),
        datatype: oip::datatype(tensor.dtype()),
        data: super::data::FlatRef(tensor.data()),
    }
}

/// A declared shape as the protocol writes it (`-1` for variable axes).
pub fn metadata_shape(shape: &[Dim]) -> Vec<i64> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => i64::try_from(*n).unwrap_or(-1),
            Dim::Symbolic(_) => -1,
        })
        .collect()
}

fn declared(shape: &[Dim]) -> String {
    format!("{:?}", metadata_shape(shape))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Model;
    use crate::tensor::TensorData;

    fn model(name: &str) -> Model {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        Model::load(&root.join(name)).expect("model")
    }

    fn input(json: serde_json::Value) -> RequestInput {
        serde_json::from_value(json).expect("request input")
    }

    #[test]
    fn a_batch_is_split_into_samples_in_row_order() {
        let m = model("iris_logreg.onnx");
        let sig = m.signature();
        let name = sig.inputs[0].name.to_string();
        let s = samples(
            sig,
            vec![input(serde_json::json!({"name": name, "shape": [2, 4], "datatype": "FP32",
                "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]}))],
        )
        .expect("fits");
        assert_eq!(s.len(), 2);
        assert_eq!(s[1][0].data(), &TensorData::F32(vec![6.7, 3.0, 5.2, 2.3]));
        assert_eq!(s[0][0].shape(), &[4]);
    }

    #[test]
    fn every_misfit_is_named() {
        let m = model("iris_logreg.onnx");
        let sig = m.signature();
        let name = sig.inputs[0].name.to_string();
        let case = |v: serde_json::Value| samples(sig, vec![input(v)]).unwrap_err().to_string();
        let e = case(serde_json::json!({"name": "nope", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}));
        assert_eq!(e, "unexpected input 'nope'");
        let e = case(serde_json::json!({"name": name, "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}));
        assert!(e.contains("datatype FP64 where the model takes FP32"), "{e}");
        let e = case(serde_json::json!({"name": name, "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}));
        assert!(e.contains("shape [1, 3] does not fit the model's [-1, 4]"), "{e}");
        let e = case(serde_json::json!({"name": name, "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}));
        assert!(e.contains("needs 8 elements, data has 4"), "{e}");
        let e = case(serde_json::json!({"name": name, "shape": [0, 4], "datatype": "FP32", "data": []}));
        assert!(e.contains("does not fit"), "an empty batch: {e}");
        let e = case(
            serde_json::json!({"name": name, "shape": [4294967296u64, 4294967296u64], "datatype": "FP32", "data": [1]}),
        );
        assert!(e.contains("does not fit"), "{e}");
        let e = case(serde_json::json!({"name": name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, true]}));
        assert!(e.contains("element 3 (true) is not a valid FP32"), "{e}");
        assert_eq!(samples(sig, vec![]).unwrap_err(), TensorsError::Missing(name.clone()));
        let twice =
            || input(serde_json::json!({"name": name, "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}));
        assert_eq!(samples(sig, vec![twice(), twice()]).unwrap_err(), TensorsError::Duplicate(name.clone()));
        let binary = input(serde_json::json!({"name": name, "shape": [1, 4], "datatype": "FP32", "data": [],
            "parameters": {"binary_data_size": 16}}));
        assert_eq!(samples(sig, vec![binary]).unwrap_err(), TensorsError::Binary);
    }

    #[test]
    fn a_batch_of_empty_samples_is_refused_before_its_rows_are_made() {
        // Found with the oip_request fuzz target (docs/fuzzing.md): with a free second axis, shape [10^12, 0] and no data
        // passed every check and made 10^12 empty samples.
        let spec = drover_wire::TensorSpec::new(
            "x",
            drover_wire::DType::F32,
            [drover_wire::DimRef::Symbolic("N"), drover_wire::DimRef::Symbolic("T")],
        )
        .expect("fits");
        let sig = Signature {
            inputs: vec![spec],
            outputs: vec![],
            batch: BatchAxis::Symbolic("N".into()),
            class_labels: Vec::new(),
        };
        let body = br#"{"inputs":[{"name":"x","shape":[1000000000000,0],"datatype":"FP32","data":[]}]}"#;
        let request: super::oip::InferenceRequest = serde_json::from_slice(body).expect("parses");
        let e = samples(&sig, request.inputs).unwrap_err();
        assert_eq!(e, TensorsError::EmptySample { name: "x".into(), shape: vec![1_000_000_000_000, 0] });
        let ok = input(serde_json::json!({"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1, 2]}));
        assert_eq!(samples(&sig, vec![ok]).expect("fits").len(), 2);
    }

    #[test]
    fn outputs_are_selected_by_name() {
        let m = model("iris_logreg.onnx");
        let sig = m.signature();
        assert_eq!(wanted(sig, None).unwrap().len(), sig.outputs.len());
        let last = sig.outputs.last().unwrap().name.to_string();
        let asked: Vec<RequestOutput> = serde_json::from_value(serde_json::json!([{"name": last}])).unwrap();
        assert_eq!(wanted(sig, Some(&asked)).unwrap(), vec![sig.outputs.len() - 1]);
        let bad: Vec<RequestOutput> = serde_json::from_value(serde_json::json!([{"name": "zzz"}])).unwrap();
        assert_eq!(wanted(sig, Some(&bad)).unwrap_err(), TensorsError::UnknownOutput("zzz".into()));
    }
}
