//! The real `drover-agent` binary, driven as a user would: reference models, real files, and
//! every kind of bad input, which must give a clear error and leave the output untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use drover_runtime::Tensor;
use drover_runtime::samples::read_npy;
use drover_tests::manifest::{self, resolve};
use drover_tests::parity::max_abs_diff;
use drover_tests::tools::{in_ci, require_tool, workspace_bin};

fn agent() -> Command {
    Command::new(workspace_bin("drover-agent"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.env("RUST_BACKTRACE", "0").output().expect("spawn drover-agent")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn model(name: &str) -> PathBuf {
    manifest::models_dir().join(name)
}

fn infer(model_file: &str, input: &Path, output: &Path, batch: usize) -> Output {
    run(agent()
        .args(["infer", "--model"])
        .arg(model(model_file))
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--batch")
        .arg(batch.to_string()))
}

/// Parses an output file into, per output name, the list of per-sample values.
fn outputs_of(path: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    std::fs::read_to_string(path)
        .expect("output written")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("each line is JSON");
            v.get("outputs").and_then(|o| o.as_object()).cloned().expect("an outputs object")
        })
        .collect()
}

/// Compares an output file with onnxruntime's reference for one model.
fn assert_matches_reference(name: &str, output: &Path) {
    let m = manifest::load().models.into_iter().find(|m| m.name == name).expect("model in manifest");
    let reference = m.reference.expect("reference");
    let lines = outputs_of(output);
    assert_eq!(lines.len(), reference.samples);
    for out in &reference.outputs {
        let want = read_npy(&resolve(&out.npy)).expect("reference npy");
        let got: Vec<f64> = lines.iter().flat_map(|l| flatten(&l[&out.name])).collect();
        let got = Tensor::new(want.shape().to_vec(), drover_runtime::TensorData::F64(got)).expect("same element count");
        let want = Tensor::new(want.shape().to_vec(), drover_runtime::TensorData::F64(want.to_f64_vec())).expect("f64");
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= out.tolerance, "{name}/{}: {diff} > {}", out.name, out.tolerance);
    }
}

fn flatten(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        other => vec![other.as_f64().expect("numbers only")],
    }
}

#[test]
fn infer_on_jsonl_matches_onnxruntime_for_every_runnable_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    for m in manifest::load().models.into_iter().filter(|m| !m.refused) {
        let reference = m.reference.as_ref().expect("reference");
        let out = dir.path().join(format!("{}.jsonl", m.name));
        let o = infer(&m.file, &resolve(&reference.input_jsonl), &out, 1);
        assert!(o.status.success(), "{}: {}", m.name, stderr(&o));
        assert!(stderr(&o).contains("16 samples in"), "summary line: {}", stderr(&o));
        assert_matches_reference(&m.name, &out);
    }
}

#[test]
fn infer_on_npy_in_batches_matches_onnxruntime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("mlp.jsonl");
    let o = infer("mlp.onnx", &resolve("reference/mlp.input.npy"), &out, 5);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("batch 5"));
    assert_matches_reference("mlp", &out);
}

/// `--output` a FIFO or a symlink (or /dev/null, which must not be tested here: run as root, the
/// bug this guards against replaced the machine's /dev/null with a regular file) is written
/// through, never renamed over.
#[test]
fn an_output_that_is_not_a_regular_file_is_written_through_not_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = resolve("reference/mlp.input.npy");

    let fifo = dir.path().join("out.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo");
    assert!(made.success());
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).expect("read the fifo"))
    };
    let o = infer("mlp.onnx", &input, &fifo, 5);
    assert!(o.status.success(), "{}", stderr(&o));
    // Before joining: a replaced FIFO is never opened for writing, and its reader would wait forever.
    assert!(std::fs::symlink_metadata(&fifo).expect("fifo").file_type().is_fifo(), "the FIFO was replaced");
    let text = reader.join().expect("reader");
    assert_eq!(text.lines().count(), 16, "{text}");

    let real = dir.path().join("real.jsonl");
    std::fs::write(&real, "").expect("write");
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let o = infer("mlp.onnx", &input, &link, 5);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::symlink_metadata(&link).expect("link").file_type().is_symlink(), "the link was replaced");
    assert_matches_reference("mlp", &real);
}

#[test]
fn sklearn_classifier_writes_integer_labels_and_probabilities() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("iris.jsonl");
    let o = infer("iris_logreg.onnx", &resolve("reference/iris_logreg.input.jsonl"), &out, 16);
    assert!(o.status.success(), "{}", stderr(&o));
    let first = &outputs_of(&out)[0];
    assert!(first["label"].is_i64(), "label is an integer: {first:?}");
    assert_eq!(first["probabilities"].as_array().map(Vec::len), Some(3));
}

/// Runs infer on bad input and checks the error text and that a pre-existing output survives.
fn assert_refused(model_file: &str, input: &Path, batch: usize, expected: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    std::fs::write(&out, "previous results\n").expect("seed output");
    let o = infer(model_file, input, &out, batch);
    let err = stderr(&o);
    assert!(!o.status.success(), "{model_file} on {}: expected failure", input.display());
    for needle in expected {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(!err.contains("panicked"), "no panic: {err}");
    assert_eq!(std::fs::read_to_string(&out).expect("output kept"), "previous results\n", "output untouched");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert_eq!(leftovers.len(), 1, "no partial file left behind");
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write input");
    p
}

#[test]
fn wrong_shape_names_line_input_and_expected_shape() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(resolve("reference/mlp.input.jsonl")).expect("jsonl");
    let mut lines: Vec<&str> = good.lines().take(2).collect();
    lines.push("[1.0, 2.0, 3.0]");
    let input = write(dir.path(), "bad.jsonl", lines.join("\n").as_bytes());
    assert_refused("mlp.onnx", &input, 1, &["line 3", "input 'features'", "expected shape [64], got [3]"]);
}

#[test]
fn non_numeric_and_malformed_json_are_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = write(dir.path(), "nan.jsonl", b"[5.1, 3.5, \"x\", 0.2]\n");
    assert_refused("iris_logreg.onnx", &input, 1, &["line 1", "non-numeric value \"x\" at [2]"]);
    let input = write(dir.path(), "broken.jsonl", b"[5.1, 3.5, 1.4, 0.2]\n[5.1, 3.5,\n");
    assert_refused("iris_logreg.onnx", &input, 1, &["line 2", "not valid JSON"]);
}

#[test]
fn integer_inputs_are_range_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = r#"{"x_f32":[0,0,0],"x_f64":[0,0,0],"x_i64":[0,0,0],"x_i32":[0,0,0],"x_u8":[0,300,0],"x_i8":[0,0,0]}"#;
    let input = write(dir.path(), "range.jsonl", line.as_bytes());
    assert_refused("dtypes.onnx", &input, 1, &["input 'x_u8'", "300 at [1] does not fit uint8"]);
    let input = write(dir.path(), "missing.jsonl", br#"{"x_f32":[0,0,0]}"#);
    assert_refused("dtypes.onnx", &input, 1, &["missing input 'x_f64'"]);
    let input = write(dir.path(), "array.jsonl", b"[0,0,0]");
    assert_refused("dtypes.onnx", &input, 1, &["the model takes 6 inputs"]);
}

#[test]
fn truncated_and_mistyped_npy_files_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = std::fs::read(resolve("reference/cnn.input.npy")).expect("npy");
    let input = write(dir.path(), "cut.npy", &bytes[..bytes.len() - 100]);
    assert_refused("cnn.onnx", &input, 1, &["truncated", "sample 15"]);
    let input = write(dir.path(), "header.npy", &bytes[..40]);
    assert_refused("cnn.onnx", &input, 1, &["not a valid .npy file"]);
    // The iris input as float64: numpy's default type, a common mistake.
    let input = write(dir.path(), "f64.npy", &npy_f64(&[2, 4], &[0.0; 8]));
    assert_refused("iris_logreg.onnx", &input, 1, &["float32", "astype"]);
    let input = write(dir.path(), "shape.npy", &npy_f64(&[2, 3], &[0.0; 6]));
    assert_refused("iris_logreg.onnx", &input, 1, &["does not match input 'float_input'"]);
}

/// A minimal version-1.0 `.npy` of little-endian float64 values.
fn npy_f64(shape: &[usize], values: &[f64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({},), }}", dims.join(", "));
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[test]
fn batch_larger_than_a_fixed_batch_model_allows_is_refused() {
    assert_refused("cnn.onnx", &resolve("reference/cnn.input.jsonl"), 2, &["--batch 2", "fixed to 1"]);
}

#[test]
fn microsoft_op_model_is_refused_naming_every_op_and_the_fix() {
    // onnxruntime's quantize_dynamic on an LSTM with a cell clip: tract's LSTM has no clip, so
    // DynamicQuantizeLSTM stays as written and is refused.
    assert_refused(
        "qop/qd_lstm_clip_refused.onnx",
        &resolve("qop/qd_lstm_clip_refused.input.jsonl"),
        1,
        &["unsupported operators: com.microsoft::DynamicQuantizeLSTM (1)", "standard ops"],
    );
    let o = run(agent().args(["inspect", "--json", "--model"]).arg(model("qop/qd_lstm_clip_refused.onnx")));
    assert_eq!(o.status.code(), Some(1), "inspect exits 1 for a model Drover cannot run");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(report["unsupported"][0]["op"], "DynamicQuantizeLSTM");
    assert_eq!(report["unsupported"][0]["count"], 1);
    assert_eq!(report["load"]["ok"], false);
}

/// torch's TorchScript export of `nn.RNN(nonlinearity='relu')` is an ONNX RNN with
/// `activations=["Relu"]`, which tract would run with Tanh (a wrong answer, no error): `infer` and
/// `inspect` refuse it, naming the operator, the node, the attribute and what to export instead.
#[test]
fn a_recurrent_node_tract_would_run_wrongly_is_refused_naming_node_and_attribute() {
    const FILE: &str = "exported/torch_rnn_relu_refused.onnx";
    let named = ["RNN node '/rnn/RNN' sets activations=[Relu]", "always applies Tanh", "nonlinearity='tanh'"];
    let mut expected = vec!["unsupported operator attributes"];
    expected.extend(named);
    assert_refused(FILE, &resolve("exported/torch_rnn_relu_refused.input.jsonl"), 1, &expected);
    let o = run(agent().args(["inspect", "--json", "--model"]).arg(model(FILE)));
    assert_eq!(o.status.code(), Some(1), "inspect exits 1 for a model Drover cannot run");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(report["unsupported"], serde_json::json!([]), "RNN itself runs: {report}");
    let refused = &report["unsupported_attributes"][0];
    assert_eq!(
        (&refused["op"], &refused["node"], &refused["attribute"]),
        (&"RNN".into(), &"/rnn/RNN".into(), &"activations".into())
    );
    assert_eq!(report["load"]["ok"], false);
    let o = run(agent().args(["inspect", "--model"]).arg(model(FILE)));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("load         FAILED: unsupported attributes (above)"), "{text}");
    for needle in named {
        assert!(text.contains(needle), "inspect lacks {needle:?}: {text}");
    }
}

/// onnxruntime's default QOperator output (com.microsoft QGemm, QLinearAdd) loads, and `inspect`
/// lists nothing unsupported for it.
#[test]
fn onnxruntime_qoperator_models_load_and_inspect_clean() {
    let o = run(agent().args(["inspect", "--json", "--model"]).arg(model("mlp_int8_qop_msft.onnx")));
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(report["unsupported"], serde_json::json!([]));
    assert_eq!(report["load"]["ok"], true);
}

/// onnxruntime's `quantize_dynamic` on an LSTM (com.microsoft::DynamicQuantizeLSTM): `inspect` sees
/// the standard LSTM loading makes of it, and `infer` runs its samples in one batch.
#[test]
fn quantize_dynamic_lstm_inspects_clean_and_runs() {
    let o = run(agent().args(["inspect", "--json", "--model"]).arg(model("qop/qd_lstm.onnx")));
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(report["unsupported"], serde_json::json!([]), "{report}");
    assert_eq!(report["load"]["ok"], true, "{report}");
    assert_eq!(report["quantization"], "dynamic", "{report}");
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.jsonl");
    let o = infer("qop/qd_lstm.onnx", &resolve("qop/qd_lstm.input.jsonl"), &out, 16);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).expect("output").lines().count(), 16);
}

/// skl2onnx's default classifier (a ZipMap, an unnamed batch axis): `inspect` says what loading
/// does, no "unsupported ZipMap" beside "load ok".
#[test]
fn a_default_skl2onnx_classifier_inspects_clean() {
    let o = run(agent().args(["inspect", "--json", "--model"]).arg(model("exported/skl_forest_zipmap.onnx")));
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert_eq!(report["unsupported"], serde_json::json!([]), "{report}");
    assert_eq!(report["load"]["ok"], true, "{report}");
}

#[test]
fn garbage_and_missing_model_files_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage = write(dir.path(), "garbage.onnx", b"this is not a protobuf \xff\xfe\x00\x01");
    let input = resolve("reference/iris_logreg.input.jsonl");
    let o = run(agent()
        .args(["infer", "--model"])
        .arg(&garbage)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o.jsonl")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not an ONNX model"), "{}", stderr(&o));
    let o = run(agent()
        .args(["infer", "--model", "/nonexistent/m.onnx", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o.jsonl")));
    assert!(stderr(&o).contains("cannot read model /nonexistent/m.onnx"), "{}", stderr(&o));
    // A valid protobuf that is a truncated model.
    let bytes = std::fs::read(model("cnn.onnx")).expect("model");
    let cut = write(dir.path(), "cut.onnx", &bytes[..bytes.len() / 2]);
    let o = run(agent()
        .args(["infer", "--model"])
        .arg(&cut)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o.jsonl")));
    assert!(!o.status.success());
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn inspect_reports_io_quantization_ops_and_load_stages() {
    let o = run(agent().args(["inspect", "--json", "--model"]).arg(model("cnn_int8_qdq.onnx")));
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(r["quantization"], "qdq");
    assert_eq!(r["inputs"][0]["name"], "image");
    assert_eq!(r["inputs"][0]["shape"], serde_json::json!(["1", "1", "28", "28"]));
    assert!(r["ops"]["ai.onnx::QuantizeLinear"].as_u64().unwrap_or(0) > 0);
    assert!(r["parameter_bytes"].as_u64().unwrap_or(0) > 10_000);
    let stages: Vec<&str> =
        r["load"]["stages_us"].as_array().expect("stages").iter().filter_map(|s| s[0].as_str()).collect();
    // A QDQ model is rewritten for speed before tract parses it (engine/qdq, docs/int8.md).
    assert_eq!(stages, ["read", "check", "rewrite", "parse", "type", "optimise", "plan"]);
    let human = run(agent().args(["inspect", "--model"]).arg(model("mlp.onnx")));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("features") && text.contains("symbolic axis 'N'"), "{text}");
}

#[test]
fn every_verb_has_help() {
    for verb in [&["--help"][..], &["infer", "--help"], &["inspect", "--help"]] {
        let o = run(agent().args(verb));
        assert!(o.status.success(), "{verb:?}");
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage"), "{verb:?}");
    }
}

/// The cross-built agents (static aarch64 musl, armv7 gnueabihf) run under qemu-user on a
/// committed model and give onnxruntime's answers, the static one on mimalloc. `tests/run` builds
/// them first; run alone, the test needs `cargo build --target <triple> -p drover-runtime --bin
/// drover-agent`.
#[test]
fn cross_built_agents_match_onnxruntime_under_qemu() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let targets = [
        ("aarch64-unknown-linux-musl", "qemu-aarch64-static", None),
        ("armv7-unknown-linux-gnueabihf", "qemu-arm-static", Some("/usr/arm-linux-gnueabihf")),
    ];
    for (triple, qemu, sysroot) in targets {
        let Some(qemu) = require_tool(qemu, "qemu-user-static") else {
            return;
        };
        let bin = target_dir.join(triple).join("debug").join("drover-agent");
        if !bin.exists() {
            assert!(!in_ci(), "{} missing: tests/run builds it", bin.display());
            eprintln!("SKIPPED: {} not built", bin.display());
            continue;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // The binary itself on the board's architecture; every model's numbers under qemu are the
        // parity suite's job (cross-built, run by tests/run), so one small model is enough here.
        let name = "iris_logreg";
        let out = dir.path().join(format!("{name}.jsonl"));
        let mut cmd = Command::new(&qemu);
        if let Some(s) = sysroot {
            cmd.args(["-L", s]);
        }
        cmd.arg(&bin).args(["infer", "--model"]).arg(model(&format!("{name}.onnx")));
        cmd.arg("--input").arg(resolve(&format!("reference/{name}.input.jsonl"))).arg("--output").arg(&out);
        // mimalloc says so at start-up when asked: the static agent must allocate through it
        // (musl's malloc made inference 1.3-1.7x slower), the glibc one through glibc's.
        cmd.env("MIMALLOC_VERBOSE", "1");
        let o = run(&mut cmd);
        assert!(o.status.success(), "{triple} {name}: {}", stderr(&o));
        assert_matches_reference(name, &out);
        let mimalloc = stderr(&o).contains("mimalloc: process init");
        assert_eq!(mimalloc, triple.ends_with("-musl"), "{triple}: mimalloc in use: {mimalloc}");
    }
}

#[test]
fn operator_cli_inspects_models_like_the_agent() {
    let drover = workspace_bin("drover");
    let ok = run(Command::new(&drover).args(["inspect", "--json"]).arg(model("iris_logreg.onnx")));
    assert!(ok.status.success(), "{}", stderr(&ok));
    let r: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("JSON");
    assert_eq!(r["outputs"][0]["name"], "label");
    assert_eq!(r["outputs"][0]["dtype"], "int64");
    assert_eq!(r["load"]["batch"]["kind"], "symbolic");
    let refused = run(Command::new(&drover).arg("inspect").arg(model("qop/qd_lstm_clip_refused.onnx")));
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stdout).contains("com.microsoft::DynamicQuantizeLSTM (1)"));
    let help = run(Command::new(&drover).arg("--help"));
    assert!(String::from_utf8_lossy(&help.stdout).contains("inspect"));
}

/// With RUST_BACKTRACE set, the agent and the operator's `drover` start themselves again with
/// library backtraces off (each error tract's optimiser drops would capture one: up to 7x the ARM
/// instructions per int8 load on the static aarch64 agent), and say so at debug level; a user's
/// explicit RUST_LIB_BACKTRACE is left alone.
#[test]
fn both_binaries_turn_library_backtraces_off_under_rust_backtrace() {
    for bin in ["drover-agent", "drover"] {
        let said = |lib: Option<&str>| said_library_backtraces_off(bin, lib);
        assert!(said(None), "{bin}: restarted with RUST_LIB_BACKTRACE=0");
        assert!(!said(Some("1")), "{bin}: the user's RUST_LIB_BACKTRACE=1 stands");
    }
}

/// Whether `bin`, inspecting the reference CNN under RUST_BACKTRACE=1 and the given
/// RUST_LIB_BACKTRACE, says at debug level that library backtraces are off.
fn said_library_backtraces_off(bin: &str, lib: Option<&str>) -> bool {
    let mut cmd = Command::new(workspace_bin(bin));
    cmd.arg("inspect");
    if bin == "drover-agent" {
        cmd.arg("--model");
    }
    cmd.arg(model("cnn.onnx"));
    cmd.env("RUST_BACKTRACE", "1").env("RUST_LOG", "debug");
    match lib {
        Some(v) => cmd.env("RUST_LIB_BACKTRACE", v),
        None => cmd.env_remove("RUST_LIB_BACKTRACE"),
    };
    let o = cmd.output().expect("spawn");
    assert!(o.status.success(), "{bin}: {}", stderr(&o));
    assert!(!stderr(&o).contains("could not start itself again"), "{bin}: {}", stderr(&o));
    stderr(&o).contains("library backtraces off")
}
