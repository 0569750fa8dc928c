//! Small queries over an ONNX graph's wiring, shared by the rewrites.

use std::collections::HashMap;

use tract_onnx::pb::GraphProto;

/// For each value name, the indices of the nodes that read it (once per node).
pub(super) fn consumers(graph: &GraphProto) -> HashMap<&str, Vec<usize>> {
    let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            let users = map.entry(input.as_str()).or_default();
            if users.last() != Some(&i) {
                users.push(i);
            }
        }
    }
    map
}

/// Whether `name` is one of the graph's declared outputs (its name must then survive).
pub(super) fn is_graph_output(graph: &GraphProto, name: &str) -> bool {
    graph.output.iter().any(|o| o.name == name)
}

/// Whether any node output, graph input or initializer already uses `name`.
pub(super) fn name_taken(graph: &GraphProto, name: &str) -> bool {
    graph.node.iter().any(|n| n.output.iter().any(|o| o == name))
        || graph.input.iter().any(|i| i.name == name)
        || graph.initializer.iter().any(|t| t.name == name)
}

/// A fresh value name starting with `base`.
pub(super) fn fresh(graph: &GraphProto, base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 1;
    while name_taken(graph, &name) {
        name = format!("{base}.{n}");
        n += 1;
    }
    name
}

/// Makes every node read `to` where it read `from`.
pub(super) fn rename_uses(graph: &mut GraphProto, from: &str, to: &str) {
    for node in &mut graph.node {
        for input in &mut node.input {
            if input == from {
                *input = to.to_string();
            }
        }
    }
}
