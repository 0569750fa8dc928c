//! scikit-learn classifiers as skl2onnx writes them by default: their probabilities behind an
//! `ai.onnx.ml::ZipMap`, served as a plain `[N, classes]` tensor.
//!
//! ZipMap turns a `[N, C]` probability tensor into a sequence of N maps `{class label: p}`.
//! A sequence of maps is not a tensor: neither tract nor the OIP v2 protocol Drover serves can
//! carry one. What the maps hold is the tensor plus the class labels, so the load-time rewrite
//! here replaces the ZipMap by an `Identity` (the output keeps its name and now holds the
//! probabilities, column `j` for the `j`-th class label) and hands the labels to the model's
//! signature, from where the local API's model metadata publishes them. Values are unchanged:
//! onnxruntime's maps hold exactly these floats.
//!
//! Only a ZipMap whose result is a graph output and feeds nothing else is rewritten (the form
//! every converter writes); any other stays and is refused by the operator check, with the
//! converter option that avoids it.

use tract_onnx::pb::{ModelProto, NodeProto, TypeProto, type_proto};

/// The class labels of one output whose ZipMap was taken out.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClassLabels {
    /// The output (the former ZipMap's output name).
    pub output: String,
    /// The label of each column, in order, as text (`0`, `1`, … for integer labels).
    pub labels: Vec<String>,
}

/// ONNX's element type code for `float`.
const FLOAT: i32 = 1;

/// Rewrites every ZipMap that can be served as a tensor (see the module doc); returns the
/// labels of each rewritten output.
pub fn rewrite(model: &mut ModelProto) -> Vec<ClassLabels> {
    let Some(graph) = model.graph.as_mut() else { return Vec::new() };
    let mut done = Vec::new();
    for i in 0..graph.node.len() {
        let node = &graph.node[i];
        if !(node.op_type == "ZipMap" && node.domain == "ai.onnx.ml" && node.input.len() == 1 && node.output.len() == 1)
        {
            continue;
        }
        let output = node.output[0].clone();
        let is_graph_output = graph.output.iter().any(|o| o.name == output);
        let consumed = graph.node.iter().any(|n| n.input.contains(&output));
        let Some(labels) = labels(node) else { continue };
        if !is_graph_output || consumed {
            continue;
        }
        let input = node.input[0].clone();
        graph.node[i] = NodeProto {
            name: graph.node[i].name.clone(),
            op_type: "Identity".into(),
            domain: String::new(),
            input: vec![input],
            output: vec![output.clone()],
            ..NodeProto::default()
        };
        if let Some(o) = graph.output.iter_mut().find(|o| o.name == output) {
            // A float tensor of a shape tract infers from the probabilities.
            o.r#type = Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: FLOAT, shape: None })),
                ..TypeProto::default()
            });
        }
        done.push(ClassLabels { output, labels });
    }
    done
}

/// The node's class labels as text, or `None` when it has neither kind (or both).
fn labels(node: &NodeProto) -> Option<Vec<String>> {
    let ints = node.attribute.iter().find(|a| a.name == "classlabels_int64s").map(|a| &a.ints);
    let strings = node.attribute.iter().find(|a| a.name == "classlabels_strings").map(|a| &a.strings);
    match (ints, strings) {
        (Some(i), None) => Some(i.iter().map(i64::to_string).collect()),
        (None, Some(s)) => Some(s.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::{AttributeProto, GraphProto, ValueInfoProto};

    fn zipmap(attr: AttributeProto) -> NodeProto {
        NodeProto {
            name: "ZipMap".into(),
            op_type: "ZipMap".into(),
            domain: "ai.onnx.ml".into(),
            input: vec!["probabilities".into()],
            output: vec!["output_probability".into()],
            attribute: vec![attr],
            ..NodeProto::default()
        }
    }

    fn model(nodes: Vec<NodeProto>) -> ModelProto {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                output: vec![ValueInfoProto { name: "output_probability".into(), ..ValueInfoProto::default() }],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
    }

    #[test]
    fn a_zipmap_graph_output_becomes_an_identity_with_its_labels_kept() {
        let attr =
            AttributeProto { name: "classlabels_int64s".into(), ints: vec![0, 1, 2], ..AttributeProto::default() };
        let mut m = model(vec![zipmap(attr)]);
        let labels = rewrite(&mut m);
        assert_eq!(
            labels,
            vec![ClassLabels { output: "output_probability".into(), labels: vec!["0".into(), "1".into(), "2".into()] }]
        );
        let g = m.graph.expect("graph");
        assert_eq!((g.node[0].op_type.as_str(), g.node[0].domain.as_str()), ("Identity", ""));
        assert_eq!(g.node[0].input, vec!["probabilities".to_string()]);
        let Some(type_proto::Value::TensorType(t)) = g.output[0].r#type.as_ref().and_then(|t| t.value.as_ref()) else {
            panic!("a tensor output")
        };
        assert_eq!(t.elem_type, FLOAT);
    }

    #[test]
    fn string_labels_are_kept_and_a_zipmap_feeding_another_node_is_left_alone() {
        let attr = AttributeProto {
            name: "classlabels_strings".into(),
            strings: vec![b"setosa".to_vec(), b"virginica".to_vec()],
            ..AttributeProto::default()
        };
        let mut m = model(vec![zipmap(attr.clone())]);
        assert_eq!(rewrite(&mut m)[0].labels, vec!["setosa".to_string(), "virginica".to_string()]);
        let consumer = NodeProto {
            op_type: "Identity".into(),
            input: vec!["output_probability".into()],
            output: vec!["y".into()],
            ..NodeProto::default()
        };
        let mut m = model(vec![zipmap(attr), consumer]);
        assert!(rewrite(&mut m).is_empty());
        assert_eq!(m.graph.expect("graph").node[0].op_type, "ZipMap");
    }
}
