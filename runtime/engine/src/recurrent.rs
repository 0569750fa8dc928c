//! The attributes of ONNX's recurrent operators (`LSTM`, `GRU`, `RNN`) that tract would ignore.
//!
//! tract-onnx 0.23.9's importers build every recurrent node with the default activations
//! (`Sigmoid`/`Tanh`/`Tanh` for LSTM, `Sigmoid`/`Tanh` for GRU, `Tanh` for RNN) and read only
//! `layout` (`ops/rec/common.rs`) and GRU's `linear_before_reset` (`ops/rec/gru.rs`). The number
//! of directions comes from W's shape (`CommonRec::wire`), so `direction="reverse"` runs forward.
//! `activations`, `activation_alpha`, `activation_beta`, `clip` and LSTM's `input_forget` are
//! never read. A model setting any of them to something other than its default loads and answers
//! with no error, and the answer is wrong: the worst failure an inference engine has. This module
//! says which nodes are written that way, so the operator check refuses them by name instead.
//!
//! What is accepted is what tract computes as ONNX defines it: every attribute absent or at its
//! default (exporters write some defaults explicitly: torch writes `activations=["Tanh"]` for
//! every `nn.RNN` and `linear_before_reset=1` for every `nn.GRU`), `direction` forward or
//! bidirectional, `layout` 0 or 1, `linear_before_reset` 0 or 1, and `hidden_size` (tract takes
//! it from R's shape; onnxruntime refuses a file where the two disagree).

use tract_onnx::pb::{AttributeProto, NodeProto};

use super::opcheck::UnsupportedAttribute;

/// One recurrent operator: its name, its default activations for one direction, and the
/// attributes ONNX defines for it.
struct Cell {
    op: &'static str,
    activations: &'static [&'static str],
    attributes: &'static [&'static str],
}

const COMMON: [&str; 7] =
    ["activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size", "layout"];

const CELLS: [Cell; 3] = [
    Cell { op: "LSTM", activations: &["Sigmoid", "Tanh", "Tanh"], attributes: &["input_forget"] },
    Cell { op: "GRU", activations: &["Sigmoid", "Tanh"], attributes: &["linear_before_reset"] },
    Cell { op: "RNN", activations: &["Tanh"], attributes: &[] },
];

/// Longest text of the file's quoted back in a message: a hostile file must not make the error
/// megabytes long.
const SHOWN: usize = 48;

/// Every attribute of `node` (an `ai.onnx` node) that tract would not honour, with why and what
/// to do; empty for any other operator and for a recurrent node tract computes as written.
pub fn unsupported_attributes(node: &NodeProto) -> Vec<UnsupportedAttribute> {
    let Some(cell) = CELLS.iter().find(|c| c.op == node.op_type) else { return Vec::new() };
    let directions = match attribute(node, "direction").map(|a| a.s.as_slice()) {
        Some(b"bidirectional") => 2,
        _ => 1,
    };
    let mut refused = Vec::new();
    for a in &node.attribute {
        let problem = match a.name.as_str() {
            "hidden_size" => None,
            "layout" => (!matches!(a.i, 0 | 1))
                .then(|| (format!("layout={}", a.i), "ONNX defines layout 0 and 1 only: write 0 or 1".to_string())),
            "direction" => direction(cell, a),
            "activations" => activations(cell, a, directions),
            "activation_alpha" | "activation_beta" if !a.floats.is_empty() => Some((
                format!("{}={}", a.name, floats(&a.floats)),
                format!(
                    "only the default activations run ({}), and they take no parameters: export without {}",
                    cell.activations.join(", "),
                    a.name
                ),
            )),
            "activation_alpha" | "activation_beta" => None,
            // onnxruntime's default is f32::MAX, which clips nothing.
            "clip" if a.f >= f32::MAX => None,
            "clip" => Some((
                format!("clip={}", a.f),
                format!("tract's {} has no cell clip and would run unclipped: export without a cell clip", cell.op),
            )),
            "input_forget" if cell.op == "LSTM" => (a.i != 0).then(|| {
                (
                    format!("input_forget={}", a.i),
                    "tract's LSTM keeps separate input and forget gates and would ignore the coupling: \
                     export with input_forget=0 (uncoupled gates)"
                        .to_string(),
                )
            }),
            // tract reads the flag as a boolean, so any other value it silently takes as 0,
            // where ONNX (and onnxruntime) take any non-zero value as 1.
            "linear_before_reset" if cell.op == "GRU" => (!matches!(a.i, 0 | 1)).then(|| {
                (
                    format!("linear_before_reset={}", a.i),
                    "tract reads only 0 and 1 and would take this as 0, where ONNX means 1: write \
                     linear_before_reset=1"
                        .to_string(),
                )
            }),
            _ if !COMMON.contains(&a.name.as_str()) && !cell.attributes.contains(&a.name.as_str()) => Some((
                shown(a.name.as_bytes()),
                format!("this is not an ONNX {} attribute, so the engine would ignore it: remove it", cell.op),
            )),
            _ => None,
        };
        if let Some((value, reason)) = problem {
            refused.push(UnsupportedAttribute {
                op: cell.op.to_string(),
                node: label(node),
                attribute: shown(a.name.as_bytes()),
                value,
                reason,
            });
        }
    }
    refused
}

/// `forward` and `bidirectional` run as ONNX defines them; `reverse` would run forward.
fn direction(cell: &Cell, a: &AttributeProto) -> Option<(String, String)> {
    let value = format!("direction='{}'", shown(&a.s));
    match a.s.as_slice() {
        b"forward" | b"bidirectional" => None,
        b"reverse" => Some((
            value,
            format!(
                "tract takes the direction from the weights' shape and would run this {} forward: \
                 export it forward and reverse the time axis around it (flip the input, then the output)",
                cell.op
            ),
        )),
        _ => Some((value, "ONNX directions are forward, reverse and bidirectional".to_string())),
    }
}

/// The default activations once per direction pass (onnxruntime reads the names
/// case-insensitively); anything else is refused.
fn activations(cell: &Cell, a: &AttributeProto, directions: usize) -> Option<(String, String)> {
    let names = &a.strings;
    let defaults = names.len() == cell.activations.len() * directions
        && names.iter().zip(cell.activations.iter().cycle()).all(|(n, want)| n.eq_ignore_ascii_case(want.as_bytes()));
    if defaults {
        return None;
    }
    let listed: Vec<String> = names.iter().take(6).map(|n| shown(n)).collect();
    let more = if names.len() > listed.len() { ", …" } else { "" };
    let value = format!("activations=[{}{more}]", listed.join(", "));
    let reason = if names.len() != cell.activations.len() * directions {
        format!(
            "ONNX's {} takes {} activation(s) per direction, {} here: export with the default activations",
            cell.op,
            cell.activations.len(),
            directions
        )
    } else {
        let hint = match cell.op {
            "RNN" => {
                "; for torch, nn.RNN(nonlinearity='tanh'), or torch.onnx.export(..., dynamo=True), which \
                 writes the recurrence as standard operators that run"
            }
            _ => "",
        };
        format!(
            "tract's {} always applies {} and would compute a different answer: export with the default \
             activations{hint}",
            cell.op,
            cell.activations.join(", ")
        )
    };
    Some((value, reason))
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The node's name, or what it computes when it has none (names are optional in ONNX).
fn label(node: &NodeProto) -> String {
    if !node.name.is_empty() {
        return shown(node.name.as_bytes());
    }
    match node.output.iter().find(|o| !o.is_empty()) {
        Some(out) => format!("(unnamed, output {})", shown(out.as_bytes())),
        None => "(unnamed)".to_string(),
    }
}

/// A name or string of the file, cut to [`SHOWN`] characters.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= SHOWN {
        text.into_owned()
    } else {
        format!("{}…", text.chars().take(SHOWN).collect::<String>())
    }
}

fn floats(v: &[f32]) -> String {
    let listed: Vec<String> = v.iter().take(6).map(ToString::to_string).collect();
    let more = if v.len() > listed.len() { ", …" } else { "" };
    format!("[{}{more}]", listed.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(name: &str, i: i64) -> AttributeProto {
        AttributeProto { name: name.into(), i, ..Default::default() }
    }

    fn string(name: &str, s: &str) -> AttributeProto {
        AttributeProto { name: name.into(), s: s.into(), ..Default::default() }
    }

    fn strings(name: &str, s: &[&str]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            strings: s.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ..Default::default()
        }
    }

    fn float(name: &str, f: f32) -> AttributeProto {
        AttributeProto { name: name.into(), f, ..Default::default() }
    }

    fn node(op: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto { op_type: op.into(), name: "rec".into(), output: vec!["y".into()], attribute, ..Default::default() }
    }

    /// `(attribute, value)` of every refusal.
    fn refused(op: &str, attribute: Vec<AttributeProto>) -> Vec<(String, String)> {
        unsupported_attributes(&node(op, attribute)).into_iter().map(|r| (r.attribute, r.value)).collect()
    }

    #[test]
    fn defaults_written_out_pass() {
        // What torch writes (TorchScript and dynamo exporters), and every default spelled out.
        let lstm = vec![
            ints("hidden_size", 8),
            string("direction", "forward"),
            ints("input_forget", 0),
            ints("layout", 0),
            strings("activations", &["Sigmoid", "Tanh", "Tanh"]),
        ];
        assert_eq!(refused("LSTM", lstm), []);
        let lstm_bi = vec![
            string("direction", "bidirectional"),
            ints("layout", 1),
            strings("activations", &["sigmoid", "tanh", "tanh", "Sigmoid", "Tanh", "Tanh"]),
            AttributeProto { name: "activation_alpha".into(), ..Default::default() },
            float("clip", f32::MAX),
        ];
        assert_eq!(refused("LSTM", lstm_bi), []);
        let gru =
            vec![ints("hidden_size", 8), ints("linear_before_reset", 1), strings("activations", &["Sigmoid", "Tanh"])];
        assert_eq!(refused("GRU", gru), []);
        assert_eq!(refused("GRU", vec![ints("linear_before_reset", 0)]), []);
        assert_eq!(refused("RNN", vec![ints("hidden_size", 8), strings("activations", &["Tanh"])]), []);
        assert_eq!(
            refused("RNN", vec![string("direction", "bidirectional"), strings("activations", &["Tanh", "Tanh"])]),
            []
        );
        // Not a recurrent operator: its attributes are someone else's business.
        assert_eq!(refused("Conv", vec![float("clip", 0.5)]), []);
    }

    #[test]
    fn each_ignored_attribute_is_refused_naming_the_node() {
        let cases: [(&str, AttributeProto, &str, &str); 9] = [
            ("LSTM", float("clip", 0.5), "clip=0.5", "no cell clip"),
            ("GRU", float("clip", 3.0), "clip=3", "no cell clip"),
            ("LSTM", string("direction", "reverse"), "direction='reverse'", "run this LSTM forward"),
            ("RNN", string("direction", "reverse"), "direction='reverse'", "run this RNN forward"),
            ("LSTM", ints("input_forget", 1), "input_forget=1", "input_forget=0"),
            ("RNN", strings("activations", &["Relu"]), "activations=[Relu]", "always applies Tanh"),
            (
                "GRU",
                strings("activations", &["HardSigmoid", "Tanh"]),
                "activations=[HardSigmoid, Tanh]",
                "Sigmoid, Tanh",
            ),
            (
                "LSTM",
                AttributeProto { name: "activation_beta".into(), floats: vec![0.5], ..Default::default() },
                "activation_beta=[0.5]",
                "no parameters",
            ),
            ("GRU", ints("linear_before_reset", 2), "linear_before_reset=2", "take this as 0"),
        ];
        for (op, attr, value, reason) in cases {
            let name = attr.name.clone();
            let got = unsupported_attributes(&node(op, vec![attr]));
            assert_eq!(got.len(), 1, "{op} {value}");
            assert_eq!((got[0].op.as_str(), got[0].node.as_str()), (op, "rec"));
            assert_eq!((got[0].attribute.as_str(), got[0].value.as_str()), (name.as_str(), value));
            assert!(got[0].reason.contains(reason), "{op} {value}: {}", got[0].reason);
            let text = got[0].to_string();
            assert!(text.contains(&format!("{op} node 'rec'")) && text.contains(value), "{text}");
        }
    }

    #[test]
    fn malformed_forms_are_refused_too() {
        // Activations for one direction on a bidirectional node, a direction ONNX lacks, a layout
        // it lacks and an attribute it does not define: tract would ignore each.
        let got = refused(
            "LSTM",
            vec![
                string("direction", "bidirectional"),
                strings("activations", &["Sigmoid", "Tanh", "Tanh"]),
                ints("layout", 2),
                ints("peephole", 1),
            ],
        );
        assert_eq!(
            got,
            [
                ("activations".to_string(), "activations=[Sigmoid, Tanh, Tanh]".to_string()),
                ("layout".to_string(), "layout=2".to_string()),
                ("peephole".to_string(), "peephole".to_string()),
            ]
        );
        assert_eq!(refused("GRU", vec![string("direction", "sideways")]).len(), 1);
        assert_eq!(refused("RNN", vec![ints("input_forget", 0)]).len(), 1, "input_forget is LSTM's alone");
    }

    #[test]
    fn an_unnamed_node_is_named_by_its_output_and_long_strings_are_cut() {
        let mut n = node("LSTM", vec![string("direction", &"x".repeat(10_000))]);
        n.name.clear();
        let got = unsupported_attributes(&n);
        assert_eq!(got[0].node, "(unnamed, output y)");
        assert!(got[0].value.len() < 100, "{}", got[0].value);
    }
}
