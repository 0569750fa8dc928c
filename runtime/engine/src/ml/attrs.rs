//! Reading a node's attributes with errors that name the node, the operator and the attribute.

use tract_onnx::pb::{AttributeProto, NodeProto};

/// What is wrong with an `ai.onnx.ml` node, said so that the user can act on it.
#[derive(Debug, thiserror::Error)]
#[error("node '{node}' ({op}), attribute '{attr}': {reason}; {advice}")]
pub(crate) struct AttrError {
    /// The node's name in the graph.
    pub node: String,
    /// The node's operator.
    pub op: String,
    /// The attribute at fault.
    pub attr: String,
    /// What is wrong with it.
    pub reason: String,
    /// What the user can do.
    pub advice: &'static str,
}

/// The advice for a malformed attribute: the exporter wrote something Drover cannot trust.
pub(crate) const REEXPORT: &str =
    "re-export the model with skl2onnx/onnxmltools, or check it with onnx.checker and onnxruntime";

/// One node's attributes, read with errors that point back at it.
pub(crate) struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    pub fn new(node: &'a NodeProto) -> Self {
        Attrs { node }
    }

    /// An error about `attr` with the default advice.
    pub fn error(&self, attr: &str, reason: impl Into<String>) -> AttrError {
        self.error_with(attr, reason, REEXPORT)
    }

    /// An error about `attr` with specific advice.
    pub fn error_with(&self, attr: &str, reason: impl Into<String>, advice: &'static str) -> AttrError {
        AttrError {
            node: self.node.name.clone(),
            op: self.node.op_type.clone(),
            attr: attr.to_string(),
            reason: reason.into(),
            advice,
        }
    }

    fn get(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    /// Whether the node carries `name` at all.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// An integer list (empty when absent).
    pub fn ints(&self, name: &str) -> Vec<i64> {
        self.get(name).map(|a| a.ints.clone()).unwrap_or_default()
    }

    /// A float list (empty when absent).
    pub fn floats(&self, name: &str) -> Vec<f32> {
        self.get(name).map(|a| a.floats.clone()).unwrap_or_default()
    }

    /// A string list (empty when absent).
    pub fn strings(&self, name: &str) -> Result<Vec<String>, AttrError> {
        let Some(a) = self.get(name) else { return Ok(Vec::new()) };
        a.strings
            .iter()
            .map(|s| String::from_utf8(s.clone()).map_err(|_| self.error(name, "a string that is not UTF-8")))
            .collect()
    }

    /// A string, or `default` when absent.
    pub fn string_or(&self, name: &str, default: &str) -> Result<String, AttrError> {
        match self.get(name) {
            None => Ok(default.to_string()),
            Some(a) => String::from_utf8(a.s.clone()).map_err(|_| self.error(name, "a string that is not UTF-8")),
        }
    }

    /// An integer, or `default` when absent.
    pub fn int_or(&self, name: &str, default: i64) -> i64 {
        self.get(name).map(|a| a.i).unwrap_or(default)
    }

    /// A float, or `default` when absent.
    pub fn float_or(&self, name: &str, default: f32) -> f32 {
        self.get(name).map(|a| a.f).unwrap_or(default)
    }

    /// Non-negative integers that fit `u32` (ids and indices).
    pub fn indices(&self, name: &str) -> Result<Vec<u32>, AttrError> {
        self.ints(name)
            .iter()
            .map(|&v| u32::try_from(v).map_err(|_| self.error(name, format!("{v} is not a valid id or index"))))
            .collect()
    }

    /// Refuses the double-precision `*_as_tensor` forms of ai.onnx.ml opset 3.
    pub fn refuse_tensor_forms(&self, names: &[&str]) -> Result<(), AttrError> {
        match names.iter().find(|n| self.has(n)) {
            Some(n) => Err(self.error_with(
                n,
                "double-precision values (ai.onnx.ml opset 3 tensor attributes) are not supported",
                "convert the model with float32 inputs (FloatTensorType), which writes float attributes",
            )),
            None => Ok(()),
        }
    }

    /// Checks that `values` has `expected` elements.
    pub fn expect_len<T>(&self, name: &str, values: &[T], expected: usize) -> Result<(), AttrError> {
        if values.len() == expected {
            Ok(())
        } else {
            Err(self.error(name, format!("{} values where {expected} are needed", values.len())))
        }
    }
}
