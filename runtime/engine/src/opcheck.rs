//! The operator check that runs before tract: every operator the engine cannot run, at once,
//! and every node of an operator it runs written in a form it would silently get wrong.
//!
//! tract reports the first unknown operator deep inside typing, with a debug dump; a user who
//! quantized a model with onnxruntime's defaults needs the whole list and what to do about it.
//! Worse, tract's importers skip attributes they do not implement (the recurrent operators'
//! `clip`, `activations`, `direction="reverse"`…): such a model would load and answer wrongly
//! with no error, so those nodes are refused too, each by name ([`unsupported_attributes`]).

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

/// A node of an operator the engine runs, written with an attribute value tract would ignore (or
/// read differently from ONNX), so that it would compute something else without any error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnsupportedAttribute {
    /// Operator name (`LSTM`, `GRU`, `RNN`).
    pub op: String,
    /// The node's name (or its output's, for an unnamed node).
    pub node: String,
    /// The attribute.
    pub attribute: String,
    /// What the file sets, as `attribute=value`.
    pub value: String,
    /// What the engine would do with it instead, and what to export instead.
    pub reason: String,
}

impl fmt::Display for UnsupportedAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} node '{}' sets {}: {}", self.op, self.node, self.value, self.reason)
    }
}

/// Lists every node of `model` (subgraphs included) whose attributes the engine would not
/// honour, in graph order. Only standard-domain nodes are looked at: an operator of another
/// domain is refused by [`unsupported_ops`] whatever its attributes.
pub fn unsupported_attributes(model: &ModelProto) -> Vec<UnsupportedAttribute> {
    all_nodes(model)
        .into_iter()
        .filter(|node| domain_of(node) == "ai.onnx")
        .flat_map(super::recurrent::unsupported_attributes)
        .collect()
}

/// Formats the list one refusal a line, for the error a user reads.
pub fn describe_attributes(refused: &[UnsupportedAttribute]) -> String {
    refused.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n")
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

/// Everything the operator check refuses in one model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Operators the engine cannot run ([`unsupported_ops`]).
    pub ops: Vec<UnsupportedOp>,
    /// Nodes written in a form it would get wrong ([`unsupported_attributes`]).
    pub attributes: Vec<UnsupportedAttribute>,
}

/// [`unsupported_ops`] and [`unsupported_attributes`] of the model as loading sees it: after the
/// ZipMap rewrite, the naming of unnamed dimensions and the rewrite of onnxruntime's
/// Microsoft-only QOperator operators and DynamicQuantizeLSTM, so that `inspect` reports what
/// loading refuses, not what the file spells differently. (A DynamicQuantizeLSTM is rewritten
/// only when tract honours all its attributes, so one with a clip stays an unsupported
/// operator rather than becoming a refused attribute.)
pub fn unsupported_as_loaded(model: &ModelProto, registry: &OnnxOpRegister) -> Refusals {
    let normalised = super::model::normalise(model);
    let model = normalised.as_ref().map_or(model, |(copy, _)| copy);
    Refusals { ops: unsupported_ops(model, registry), attributes: unsupported_attributes(model) }
}

/// What the operator check refuses in one model, against Drover's own operator set (the set
/// loading parses with).
pub fn refusals(model: &ModelProto) -> Refusals {
    unsupported_as_loaded(model, &crate::onnx().op_register)
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
        let reg = crate::onnx().op_register;
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
        let reg = crate::onnx().op_register;
        let ops = unsupported_ops(&model(vec![node("com.acme", "Relu")]), &reg);
        assert_eq!(describe(&ops), "com.acme::Relu (1)");
    }

    #[test]
    fn ops_inside_subgraphs_are_checked() {
        use tract_onnx::pb::AttributeProto;
        let reg = crate::onnx().op_register;
        let body = GraphProto { node: vec![node("", "NoSuchOp")], ..Default::default() };
        let mut if_node = node("", "If");
        if_node.attribute.push(AttributeProto { name: "then_branch".into(), g: Some(body), ..Default::default() });
        let ops = unsupported_ops(&model(vec![if_node]), &reg);
        assert_eq!(describe(&ops), "ai.onnx::NoSuchOp (1)");
    }

    #[test]
    fn drovers_ml_operators_pass_and_its_internal_domain_does_not() {
        let reg = crate::onnx().op_register;
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
        let fused = node(crate::int8::DOMAIN, crate::int8::OP_TYPE);
        assert_eq!(unsupported_ops(&model(vec![fused]), &reg).len(), 1);
    }

    /// A one-node recurrent graph: an LSTM over X [T=2, B=1, I=1] with constant weights
    /// (hidden size 1), writing `y`.
    fn lstm(attribute: Vec<tract_onnx::pb::AttributeProto>) -> ModelProto {
        use tract_onnx::pb::{TensorProto, ValueInfoProto};
        let value = |name: &str, dims: &[i64]| ValueInfoProto {
            name: name.into(),
            r#type: Some(tract_onnx::pb::TypeProto {
                denotation: String::new(),
                value: Some(tract_onnx::pb::type_proto::Value::TensorType(tract_onnx::pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(tract_onnx::pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|d| tract_onnx::pb::tensor_shape_proto::Dimension {
                                value: Some(tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                                denotation: String::new(),
                            })
                            .collect(),
                    }),
                })),
            }),
            ..Default::default()
        };
        let weight = |name: &str| TensorProto {
            name: name.into(),
            dims: vec![1, 4, 1],
            data_type: 1,
            float_data: vec![0.5, -0.25, 0.75, 1.0],
            ..Default::default()
        };
        let node = NodeProto {
            op_type: "LSTM".into(),
            name: "enc".into(),
            input: vec!["x".into(), "w".into(), "r".into()],
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        };
        ModelProto {
            ir_version: 8,
            opset_import: vec![tract_onnx::pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(GraphProto {
                node: vec![node],
                initializer: vec![weight("w"), weight("r")],
                input: vec![value("x", &[2, 1, 1])],
                output: vec![value("y", &[2, 1, 1, 1])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn load(m: &ModelProto) -> Result<crate::Model, crate::LoadError> {
        crate::Model::from_proto_for_test(m, crate::LoadOptions::default())
    }

    #[test]
    fn an_ignored_recurrent_attribute_refuses_the_load_naming_node_and_remedy() {
        use tract_onnx::pb::AttributeProto;
        let clip = AttributeProto { name: "clip".into(), f: 0.5, ..Default::default() };
        let m = lstm(vec![clip]);
        assert!(unsupported_ops(&m, &crate::onnx().op_register).is_empty(), "LSTM itself runs");
        let refused = unsupported_attributes(&m);
        assert_eq!(refused.len(), 1);
        let err = load(&m).expect_err("a clipped LSTM is refused");
        let text = err.to_string();
        assert!(matches!(err, crate::LoadError::UnsupportedAttributes(_)), "{text}");
        for part in ["LSTM node 'enc'", "clip=0.5", "export without a cell clip"] {
            assert!(text.contains(part), "{part}: {text}");
        }
    }

    #[test]
    fn a_recurrent_node_with_defaults_written_out_loads() {
        use tract_onnx::pb::AttributeProto;
        let strings = |v: &[&str]| v.iter().map(|s| s.as_bytes().to_vec()).collect();
        let m = lstm(vec![
            AttributeProto { name: "hidden_size".into(), i: 1, ..Default::default() },
            AttributeProto { name: "direction".into(), s: b"forward".to_vec(), ..Default::default() },
            AttributeProto { name: "input_forget".into(), ..Default::default() },
            AttributeProto {
                name: "activations".into(),
                strings: strings(&["Sigmoid", "Tanh", "Tanh"]),
                ..Default::default()
            },
        ]);
        assert_eq!(unsupported_attributes(&m), []);
        load(&m).unwrap_or_else(|e| panic!("{e}"));
    }

    #[test]
    fn only_standard_domain_nodes_have_their_attributes_checked() {
        use tract_onnx::pb::AttributeProto;
        let mut custom = node("com.acme", "LSTM");
        custom.attribute.push(AttributeProto { name: "clip".into(), f: 0.5, ..Default::default() });
        let m = model(vec![custom]);
        assert_eq!(unsupported_attributes(&m), [], "refused as an unknown operator instead");
        assert_eq!(describe(&unsupported_ops(&m, &crate::onnx().op_register)), "com.acme::LSTM (1)");
    }
}
