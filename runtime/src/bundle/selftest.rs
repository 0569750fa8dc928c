//! Self-test vectors: inputs with the outputs the model must give, run through the real engine
//! on the device before a new model is activated.
//!
//! Format: JSON Lines, one case per line:
//! `{"inputs": {"<input>": array}, "outputs": {"<output>": array}, "atol": 1e-4, "rtol": 1e-4}`,
//! arrays without the batch axis, as `infer` reads and writes them.

use serde::Serialize;
use serde::ser::SerializeMap;
use serde_json::Value;

use crate::engine::{Model, RunError, Signature};
use crate::samples::{ValueError, tensor_from_json};
use crate::tensor::Tensor;

/// Default absolute tolerance: fp32 results differ across CPUs (x86 vs aarch64 vs armv7) in the
/// last bits; measured differences are below 5e-6.
pub const DEFAULT_ATOL: f64 = 1e-4;
/// Default relative tolerance.
pub const DEFAULT_RTOL: f64 = 1e-4;

/// Why the self-test failed: the candidate model must not be activated.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    /// A line is not a valid case.
    #[error("self-test line {line}: {reason}")]
    Format {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// An input does not fit the model.
    #[error("self-test line {line}: input '{input}': {error}")]
    Input {
        /// 1-based line.
        line: usize,
        /// The input.
        input: String,
        /// Why.
        error: ValueError,
    },
    /// The model failed to run.
    #[error("self-test line {line}: {error}")]
    Run {
        /// 1-based line.
        line: usize,
        /// Why.
        error: RunError,
    },
    /// The model gave a different answer.
    #[error("self-test line {line}: output '{output}' differs by {diff:.3e} (allowed {allowed:.3e})")]
    Mismatch {
        /// 1-based line.
        line: usize,
        /// The output.
        output: String,
        /// Largest difference.
        diff: f64,
        /// Allowed at that element.
        allowed: f64,
    },
    /// No case at all: a self-test that checks nothing is refused.
    #[error("the self-test has no case")]
    Empty,
}

/// One case as written by `drover bundle`.
pub struct SelfTestCase<'a> {
    /// The model's signature (for names).
    pub signature: &'a Signature,
    /// Inputs, without the batch axis.
    pub inputs: &'a [Tensor],
    /// Expected outputs, without the batch axis.
    pub outputs: &'a [Tensor],
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance.
    pub rtol: f64,
}

impl Serialize for SelfTestCase<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Named<'a>(Vec<(&'a str, &'a Tensor)>);
        impl Serialize for Named<'_> {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.0.len()))?;
                for (k, v) in &self.0 {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
        let names = |specs: &'_ [drover_wire::TensorSpec], ts: &'_ [Tensor]| -> Vec<(String, usize)> {
            specs.iter().zip(0..ts.len()).map(|(s, i)| (s.name.to_string(), i)).collect()
        };
        let ins = names(&self.signature.inputs, self.inputs);
        let outs = names(&self.signature.outputs, self.outputs);
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("inputs", &Named(ins.iter().map(|(n, i)| (n.as_str(), &self.inputs[*i])).collect()))?;
        map.serialize_entry("outputs", &Named(outs.iter().map(|(n, i)| (n.as_str(), &self.outputs[*i])).collect()))?;
        map.serialize_entry("atol", &self.atol)?;
        map.serialize_entry("rtol", &self.rtol)?;
        map.end()
    }
}

/// Runs every case of `text` through `model`; returns the number of cases passed.
pub fn run_selftest(model: &mut Model, text: &str) -> Result<usize, SelfTestError> {
    let mut cases = 0;
    let mut outputs = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| SelfTestError::Format { line, reason };
        let case: Value = serde_json::from_str(raw).map_err(|e| fail(e.to_string()))?;
        let inputs =
            case.get("inputs").and_then(Value::as_object).ok_or_else(|| fail("no \"inputs\" object".into()))?;
        let expected =
            case.get("outputs").and_then(Value::as_object).ok_or_else(|| fail("no \"outputs\" object".into()))?;
        let atol = case.get("atol").and_then(Value::as_f64).unwrap_or(DEFAULT_ATOL);
        let rtol = case.get("rtol").and_then(Value::as_f64).unwrap_or(DEFAULT_RTOL);
        let signature = model.signature().clone();
        let mut sample = Vec::with_capacity(signature.inputs.len());
        for (index, spec) in signature.inputs.iter().enumerate() {
            let v = inputs.get(spec.name.as_str()).ok_or_else(|| fail(format!("missing input '{}'", spec.name)))?;
            let t = tensor_from_json(v, spec.dtype, &signature.sample_shape(index))
                .map_err(|error| SelfTestError::Input { line, input: spec.name.to_string(), error })?;
            sample.push(t);
        }
        model.run_one(&sample, &mut outputs).map_err(|error| SelfTestError::Run { line, error })?;
        for (spec, got) in signature.outputs.iter().zip(&outputs) {
            let want =
                expected.get(spec.name.as_str()).ok_or_else(|| fail(format!("missing output '{}'", spec.name)))?;
            let shape: Vec<Option<usize>> = got.shape().iter().map(|&d| Some(d)).collect();
            let want = tensor_from_json(want, spec.dtype, &shape).map_err(|error| SelfTestError::Input {
                line,
                input: format!("expected {}", spec.name),
                error,
            })?;
            let integer = spec.dtype.is_integer();
            for (g, w) in got.to_f64_vec().into_iter().zip(want.to_f64_vec()) {
                let allowed = if integer { 0.0 } else { atol + rtol * w.abs() };
                let diff = (g - w).abs();
                if diff > allowed || diff.is_nan() {
                    return Err(SelfTestError::Mismatch { line, output: spec.name.to_string(), diff, allowed });
                }
            }
        }
        cases += 1;
    }
    if cases == 0 {
        return Err(SelfTestError::Empty);
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::TensorData;

    fn iris() -> Model {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/iris_logreg.onnx");
        Model::load(&path).expect("reference model")
    }

    fn case(model: &mut Model, features: [f32; 4]) -> String {
        let sample = vec![Tensor::new(vec![4], TensorData::F32(features.to_vec())).expect("valid")];
        let mut outputs = Vec::new();
        model.run_one(&sample, &mut outputs).expect("runs");
        let c =
            SelfTestCase { signature: model.signature(), inputs: &sample, outputs: &outputs, atol: 1e-4, rtol: 1e-4 };
        serde_json::to_string(&c).expect("json")
    }

    #[test]
    fn cases_written_from_the_engine_pass_and_altered_ones_fail() {
        let mut m = iris();
        let text = [case(&mut m, [5.1, 3.5, 1.4, 0.2]), case(&mut m, [6.7, 3.0, 5.2, 2.3])].join("\n");
        assert_eq!(run_selftest(&mut m, &text).expect("passes"), 2);

        let mut v: Value = serde_json::from_str(&case(&mut m, [5.1, 3.5, 1.4, 0.2])).expect("json");
        v["outputs"]["label"] = Value::from(2);
        let err = run_selftest(&mut m, &v.to_string()).unwrap_err();
        assert!(matches!(&err, SelfTestError::Mismatch { output, .. } if output == "label"), "{err}");

        let mut v: Value = serde_json::from_str(&case(&mut m, [5.1, 3.5, 1.4, 0.2])).expect("json");
        let p = v["outputs"]["probabilities"][0].as_f64().expect("number");
        v["outputs"]["probabilities"][0] = Value::from(p + 0.01);
        assert!(matches!(run_selftest(&mut m, &v.to_string()), Err(SelfTestError::Mismatch { .. })));
    }

    #[test]
    fn malformed_or_empty_self_tests_are_refused() {
        let mut m = iris();
        assert!(matches!(run_selftest(&mut m, ""), Err(SelfTestError::Empty)));
        assert!(matches!(run_selftest(&mut m, "{not json"), Err(SelfTestError::Format { line: 1, .. })));
        let wrong_shape = r#"{"inputs":{"float_input":[1,2]},"outputs":{}}"#;
        assert!(matches!(run_selftest(&mut m, wrong_shape), Err(SelfTestError::Input { .. })));
    }
}
