//! The committed int8 models against the quantizer and against onnxruntime
//! (`models/make_quantize_reference.py`, `models/reference/quantize.json`): no Python needed.

use std::path::{Path, PathBuf};

use clap::Parser;
use drover_runtime::engine::Model;
use drover_runtime::samples::read_npy;
use serde::Deserialize;

use super::graph::Index;
use crate::cli::{Cli, Verb};

#[derive(Debug, Deserialize)]
struct Manifest {
    models: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    name: String,
    file: String,
    fp32: String,
    calibration: String,
    holdout: String,
    args: Vec<String>,
    output_npy: String,
}

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(models().join("reference/quantize.json")).expect("quantize.json");
    serde_json::from_str(&text).expect("manifest")
}

fn path(rel: &str) -> String {
    models().join(rel).to_string_lossy().into_owned()
}

/// The documented command for `entry`, writing to `out`, parsed by the real CLI parser.
fn command(entry: &Entry, out: &Path) -> crate::cmd::quantize::QuantizeArgs {
    let mut argv: Vec<String> = ["drover", "quantize"].map(String::from).to_vec();
    argv.push(path(&entry.fp32));
    argv.extend(["--calibration".into(), path(&entry.calibration), "--holdout".into(), path(&entry.holdout)]);
    argv.extend(["--out".into(), out.to_string_lossy().into_owned()]);
    argv.extend(entry.args.iter().cloned());
    match Cli::try_parse_from(argv).expect("documented command parses").command {
        Verb::Quantize(args) => args,
        other => panic!("parsed as {other:?}"),
    }
}

/// One output quantization step: the scale of the DequantizeLinear the output comes from,
/// through a bias Add, Relu or Flatten at most (models/README.md's tolerance rule: the models
/// here end in an int8 layer, so nothing multiplies the step).
fn output_step(model: &[u8]) -> f32 {
    let proto = super::decode(model).expect("decodes");
    let g = proto.graph.as_ref().expect("graph");
    let index = Index::new(g);
    let mut tensor = g.output[0].name.clone();
    loop {
        let producer = g.node.iter().find(|n| n.output.contains(&tensor)).expect("produced");
        match producer.op_type.as_str() {
            "DequantizeLinear" => return index.float(&producer.input[1]).expect("scale").data[0],
            "Add" | "Relu" | "Flatten" | "Identity" => {
                tensor = producer.input.iter().find(|i| !index.is_constant(i)).expect("an activation input").clone()
            }
            op => panic!("output reached through {op}"),
        }
    }
}

#[test]
fn rerunning_the_documented_commands_rebuilds_the_committed_models_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in manifest().models {
        let out = dir.path().join(&entry.file);
        let report = crate::cmd::quantize::quantize_to_file(&command(&entry, &out)).expect("quantizes");
        let made = std::fs::read(&out).expect("written");
        let committed = std::fs::read(models().join(&entry.file)).expect("committed model");
        assert!(
            made == committed,
            "{}: the quantizer no longer reproduces the committed model; regenerate it with the command in \
             models/make_quantize_reference.py, then rerun that script for onnxruntime's outputs",
            entry.name
        );
        assert_eq!(report.int8_bytes, committed.len() as u64);
        assert!(report.size_ratio < 0.3, "{}: {} of fp32", entry.name, report.size_ratio);
    }
}

#[test]
fn tract_matches_onnxruntime_within_one_output_step() {
    for entry in manifest().models {
        let bytes = std::fs::read(models().join(&entry.file)).expect("model");
        let step = output_step(&bytes);
        let mut model = Model::from_bytes(&bytes).expect("tract loads the int8 model");
        let samples = super::read_samples(Path::new(&path(&entry.holdout)), model.signature()).expect("inputs");
        let ort = read_npy(Path::new(&path(&entry.output_npy))).expect("onnxruntime outputs").to_f64_vec();
        let outputs = model.run_samples(&samples).expect("runs");
        let ours: Vec<f64> = outputs.iter().flat_map(|o| o[0].to_f64_vec()).collect();
        assert_eq!(ours.len(), ort.len(), "{}", entry.name);
        let worst = ours.iter().zip(&ort).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let tolerance = f64::from(step).max(1e-4) * 1.0001;
        eprintln!("{}: max |tract - onnxruntime| {worst:.5}, one output step {step:.5}", entry.name);
        assert!(worst <= tolerance, "{}: |tract - onnxruntime| up to {worst}, step {step}", entry.name);
    }
}

#[test]
fn int8_stays_close_to_fp32_on_the_reference_inputs() {
    for entry in manifest().models {
        let fp32 = std::fs::read(models().join(&entry.fp32)).expect("fp32");
        let int8 = std::fs::read(models().join(&entry.file)).expect("int8");
        let signature = Model::from_bytes(&fp32).expect("fp32 loads").signature().clone();
        let samples = super::read_samples(Path::new(&path(&entry.holdout)), &signature).expect("inputs");
        let acc = super::compare(&fp32, &int8, &samples).expect("compares");
        let logits = &acc.outputs[0];
        assert_eq!(logits.rows, 16, "{}", entry.name);
        assert!(logits.top1_agree >= Some(15), "{}: top-1 {:?}/16", entry.name, logits.top1_agree);
        // ≈ 3 % of the largest logit; onnxruntime's own int8 models differ from fp32 by 0.13–0.29.
        assert!(logits.max_abs_diff < 0.35, "{}: max |fp32 - int8| {}", entry.name, logits.max_abs_diff);
    }
}

#[test]
fn committed_models_use_standard_operators_only() {
    for entry in manifest().models {
        let proto = super::decode(&std::fs::read(models().join(&entry.file)).expect("model")).expect("decodes");
        let g = proto.graph.as_ref().expect("graph");
        assert!(g.node.iter().all(|n| n.domain.is_empty()), "{}", entry.name);
        assert!(proto.opset_import.iter().all(|o| o.domain.is_empty()), "{}", entry.name);
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_str()).collect();
        if entry.args.iter().any(|a| a == "qoperator") {
            assert!(ops.contains(&"QLinearMatMul"), "{}: {ops:?}", entry.name);
            assert!(!ops.contains(&"Conv") && !ops.contains(&"MatMul") && !ops.contains(&"Gemm"), "{ops:?}");
        } else {
            assert!(ops.contains(&"QuantizeLinear") && ops.contains(&"DequantizeLinear"), "{ops:?}");
        }
    }
}
