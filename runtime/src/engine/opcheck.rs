//! The operator check that runs before tract: every operator the engine cannot run, at once.
//!
//! tract reports the first unknown operator deep inside typing, with a debug dump; a user who
//! quantized a model with onnxruntime's defaults needs the whole list and what to do about it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;
use tract_onnx::model::OnnxOpRegister;
use tract_onnx::pb::ModelProto;

use super::proto::{all_nodes, domain_of};

/// Domains whose operators tract resolves by name. tract ignores the domain when it looks an
/// operator up, so an operator of any other domain is refused even when its name is known:
/// running a custom `Relu` as the standard one would silently compute the wrong thing.
const DOMAINS_TRACT_KNOWS: [&str; 3] = ["ai.onnx", "ai.onnx.ml", "com.microsoft"];

/// One operator the engine cannot run, with how often the model uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsupportedOp {
    /// Operator domain (`ai.onnx` for the default domain).
    pub domain: String,
    /// Operator name.
    pub op: String,
    /// Number of nodes using it, subgraphs included.
    pub count: usize,
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}::{} ({})", self.domain, self.op, self.count)
    }
}

/// Lists every operator in `model` that `registry` cannot build, sorted by domain and name.
pub fn unsupported_ops(model: &ModelProto, registry: &OnnxOpRegister) -> Vec<UnsupportedOp> {
    let mut missing: BTreeMap<(String, String), usize> = BTreeMap::new();
    for node in all_nodes(model) {
        let domain = domain_of(node);
        let known = DOMAINS_TRACT_KNOWS.contains(&domain) && registry.0.contains_key(&node.op_type);
        if !known {
            *missing.entry((domain.to_string(), node.op_type.clone())).or_insert(0) += 1;
        }
    }
    missing.into_iter().map(|((domain, op), count)| UnsupportedOp { domain, op, count }).collect()
}

/// [`unsupported_ops`] of the model as loading sees it: after the ZipMap rewrite, the naming of
/// unnamed dimensions and the rewrite of onnxruntime's Microsoft-only QOperator operators and
/// DynamicQuantizeLSTM, so that `inspect` reports what loading refuses, not what the file spells
/// differently.
pub fn unsupported_as_loaded(model: &ModelProto, registry: &OnnxOpRegister) -> Vec<UnsupportedOp> {
    match super::model::normalise(model) {
        Some((copy, _)) => unsupported_ops(&copy, registry),
        None => unsupported_ops(model, registry),
    }
}

/// The advice that goes with a list of unsupported operators.
pub fn hint(ops: &[UnsupportedOp]) -> &'static str {
    if ops.iter().any(|o| o.domain == "com.microsoft") {
        "Drover runs onnxruntime's QOperator operators (QGemm, QLinearAdd, QLinearGlobalAveragePool, QLinearMul, \
         QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearAveragePool, QLinearSoftmax) in the form its \
         quantizer writes them (constant per-tensor activation parameters, known attributes), and \
         quantize_dynamic's DynamicQuantizeLSTM with constant weights, direction forward or bidirectional, the \
         default activations and no clip; for other Microsoft-only operators, or these in another form, \
         re-quantize with standard ops only (QuantFormat.QDQ, QOperator with op_types_to_quantize limited to \
         Conv/MatMul, or quantize_dynamic with op_types_to_quantize=['MatMul', 'Gemm'] to keep LSTMs in fp32)"
    } else if ops.iter().any(|o| o.domain == "ai.onnx.ml" && o.op == "ZipMap") {
        "this ZipMap feeds another operator, so it cannot be served as a probability tensor: convert the \
         classifier with skl2onnx's options={id(model): {'zipmap': False}} (the probabilities become a plain tensor)"
    } else if ops.iter().any(|o| o.domain == "ai.onnx.ml") {
        "this ONNX-ML operator is standard, but Drover's engine does not run it yet: convert the model without \
         it (skl2onnx/onnxmltools options), or use an estimator whose converter writes supported operators \
         (linear models, tree ensembles, SVMs); `drover-agent inspect` lists what is supported"
    } else {
        "re-export the model with standard ONNX operators (a lower or higher opset, or without custom ops)"
    }
}

/// Formats the list as `domain::Op (count), …`.
pub fn describe(ops: &[UnsupportedOp]) -> String {
    ops.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{GraphProto, NodeProto};

    fn node(domain: &str, op: &str) -> NodeProto {
        NodeProto { domain: domain.into(), op_type: op.into(), ..Default::default() }
    }

    fn model(nodes: Vec<NodeProto>) -> ModelProto {
        ModelProto { graph: Some(GraphProto { node: nodes, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn lists_every_unknown_op_with_domain_and_count() {
        let reg = crate::engine::onnx().op_register;
        let m = model(vec![
            node("", "Conv"),
            node("com.microsoft", "QGemm"),
            node("com.microsoft", "QGemm"),
            node("com.microsoft", "QLinearAdd"),
            node("ai.onnx", "Relu"),
        ]);
        let ops = unsupported_ops(&m, &reg);
        assert_eq!(describe(&ops), "com.microsoft::QGemm (2), com.microsoft::QLinearAdd (1)");
        assert!(hint(&ops).contains("standard ops"));
    }

    #[test]
    fn a_known_name_in_a_custom_domain_is_refused() {
        let reg = crate::engine::onnx().op_register;
        let ops = unsupported_ops(&model(vec![node("com.acme", "Relu")]), &reg);
        assert_eq!(describe(&ops), "com.acme::Relu (1)");
    }

    #[test]
    fn ops_inside_subgraphs_are_checked() {
        use tract_onnx::pb::AttributeProto;
        let reg = crate::engine::onnx().op_register;
        let body = GraphProto { node: vec![node("", "NoSuchOp")], ..Default::default() };
        let mut if_node = node("", "If");
        if_node.attribute.push(AttributeProto { name: "then_branch".into(), g: Some(body), ..Default::default() });
        let ops = unsupported_ops(&model(vec![if_node]), &reg);
        assert_eq!(describe(&ops), "ai.onnx::NoSuchOp (1)");
    }

    #[test]
    fn drovers_ml_operators_pass_and_its_internal_domain_does_not() {
        let reg = crate::engine::onnx().op_register;
        let ml = [
            "TreeEnsembleRegressor",
            "TreeEnsembleClassifier",
            "Scaler",
            "SVMClassifier",
            "SVMRegressor",
            "LabelEncoder",
        ]
        .map(|op| node("ai.onnx.ml", op));
        assert!(unsupported_ops(&model(ml.to_vec()), &reg).is_empty());
        // The fused int8 layer is registered for the QDQ pass, but no file may contain it.
        let fused = node(crate::engine::int8::DOMAIN, crate::engine::int8::OP_TYPE);
        assert_eq!(unsupported_ops(&model(vec![fused]), &reg).len(), 1);
    }
}
