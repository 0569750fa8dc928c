//! The bundle workflow with the real `drover` binary, as an operator runs it: keys, root,
//! delegation, bundle with self-test vectors from a real model, verify, inspect, and the
//! refusals a device would give.

use std::path::{Path, PathBuf};

use drover_tests::cli::{self, model, revoke_release, signed_bundle};
use drover_tests::manifest::{models_dir, resolve};

fn ok(dir: &Path, args: &[&str]) -> String {
    cli::ok("drover", dir, args)
}

fn fails(dir: &Path, args: &[&str]) -> String {
    cli::fails("drover", dir, args)
}

fn fleet() -> tempfile::TempDir {
    cli::trust_setup()
}

fn iris_selftest() -> String {
    resolve("reference/iris_logreg.input.jsonl").to_string_lossy().into_owned()
}

fn signed_iris(d: &Path, version: &str, out: &str) {
    signed_bundle(d, &model("iris_logreg.onnx"), "iris", version, &["--selftest", &iris_selftest()], out);
}

#[test]
fn secret_keys_are_private_and_never_overwritten() {
    let dir = fleet();
    let d = dir.path();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("keys/root.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = fails(d, &["keygen", "--role", "root", "--out", "keys"]);
    assert!(err.contains("exists"), "{err}");
}

#[test]
fn keygen_gives_each_role_advice_that_is_true_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let root = ok(d, &["keygen", "--role", "root", "--out", "keys"]);
    assert!(root.contains("keep it offline"), "{root}");
    let release = ok(d, &["keygen", "--role", "release", "--out", "keys"]);
    assert!(release.contains("on the build or CI machine that signs bundles"), "{release}");
    let operator = ok(d, &["keygen", "--role", "operator", "--out", "keys"]);
    assert!(operator.contains("on the operator's machine that signs commands"), "{operator}");
    // The root's advice is the root's alone: a release or operator key kept offline could sign nothing.
    for out in [&release, &operator] {
        assert!(!out.contains("offline"), "{out}");
        assert!(!out.contains("root key"), "{out}");
    }
}

#[test]
fn signed_bundle_verifies_and_runs_its_self_test() {
    let dir = fleet();
    let d = dir.path();
    signed_iris(d, "1", "iris-v1.drv");
    let out = ok(d, &["verify", "iris-v1.drv", "--root", "root.json", "--arch", "aarch64"]);
    assert!(out.contains("self-test: 8 case(s) match"), "{out}");
    assert!(out.contains("root v1"), "{out}");

    let report: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "iris-v1.drv", "--json"])).expect("JSON");
    assert_eq!(report["name"], "iris");
    assert_eq!(report["version"], 1);
    assert_eq!(report["signed"], true);
    assert_eq!(report["files"][0]["name"], "model.onnx");
    assert_eq!(report["files"][1]["role"], "SelfTest");
    assert_eq!(report["inputs"][0], "float_input: float32[N,4]");
    let human = ok(d, &["inspect", "iris-v1.drv"]);
    assert!(human.contains("signed by    release key"), "{human}");
}

#[test]
fn device_refusals_are_reported_by_verify() {
    let dir = fleet();
    let d = dir.path();
    signed_iris(d, "3", "iris.drv");
    // Anti-rollback: the device already ran version 3.
    let out = fails(d, &["verify", "iris.drv", "--root", "root.json", "--installed", "3"]);
    assert!(out.contains("version 3 of 'iris' is not newer than 3"), "{out}");
    // A board the bundle does not target.
    signed_bundle(d, &model("iris_logreg.onnx"), "iris", "4", &["--targets", "armv7"], "armv7.drv");
    let out = fails(d, &["verify", "armv7.drv", "--root", "root.json", "--arch", "aarch64"]);
    assert!(out.contains("targets armv7 but this device is aarch64"), "{out}");
    // A newer agent needed.
    signed_bundle(d, &model("iris_logreg.onnx"), "iris", "5", &["--min-agent", "9.0.0"], "new-agent.drv");
    let out = fails(d, &["verify", "new-agent.drv", "--root", "root.json"]);
    assert!(out.contains("needs agent 9.0.0"), "{out}");
}

#[test]
fn tampered_payload_is_refused_with_the_file_named() {
    let dir = fleet();
    let d = dir.path();
    signed_iris(d, "1", "iris.drv");
    let mut bytes = std::fs::read(d.join("iris.drv")).expect("bundle");
    let n = bytes.len();
    bytes[n - 10] ^= 0x01; // inside the self-test file, the last one
    std::fs::write(d.join("tampered.drv"), &bytes).expect("write");
    let out = fails(d, &["verify", "tampered.drv", "--root", "root.json"]);
    assert!(out.contains("file 'selftest.jsonl' does not match the manifest's SHA-256"), "{out}");
    bytes.truncate(n - 100);
    std::fs::write(d.join("truncated.drv"), &bytes).expect("write");
    let out = fails(d, &["verify", "truncated.drv", "--root", "root.json"]);
    assert!(out.contains("truncated"), "{out}");
}

#[test]
fn unsigned_bundles_are_refused_until_signed() {
    let dir = fleet();
    let d = dir.path();
    let out = ok(d, &["bundle", &model("iris_logreg.onnx"), "--name", "iris", "--version", "1", "--out", "u.drv"]);
    assert!(out.contains("UNSIGNED"), "{out}");
    let out = fails(d, &["verify", "u.drv", "--root", "root.json"]);
    assert!(out.contains("not signed"), "{out}");
    ok(d, &["sign", "u.drv", "--key", "keys/release.key", "--delegation", "release.delegation.json"]);
    ok(d, &["verify", "u.drv", "--root", "root.json"]);
}

#[test]
fn a_key_outside_its_delegation_or_revoked_is_refused() {
    let dir = fleet();
    let d = dir.path();
    // The release key is delegated for "iris" only.
    signed_bundle(d, &model("mlp.onnx"), "mlp", "1", &[], "mlp.drv");
    let out = fails(d, &["verify", "mlp.drv", "--root", "root.json"]);
    assert!(out.contains("is not delegated to sign model 'mlp'"), "{out}");

    // The root revokes the release key; a bundle carrying the new root is refused by a device
    // that still has root v1.
    revoke_release(d, "root-v2.json");
    signed_bundle(d, &model("iris_logreg.onnx"), "iris", "2", &["--with-root", "root-v2.json"], "revoked.drv");
    let out = fails(d, &["verify", "revoked.drv", "--root", "root.json"]);
    assert!(out.contains("is revoked"), "{out}");
}

#[test]
fn root_rotation_carries_devices_to_the_new_root() {
    let dir = fleet();
    let d = dir.path();
    ok(d, &["keygen", "--role", "root", "--out", "keys", "--name", "root2"]);
    ok(
        d,
        &[
            "root",
            "rotate",
            "--current",
            "root.json",
            "--key",
            "keys/root.key",
            "--new-key",
            "keys/root2.key",
            "--out",
            "root-v2.json",
        ],
    );
    ok(
        d,
        &[
            "delegate",
            "--root",
            "root-v2.json",
            "--root-key",
            "keys/root2.key",
            "--release",
            "keys/release.pub",
            "--models",
            "iris",
            "--out",
            "d2.json",
        ],
    );
    ok(
        d,
        &[
            "bundle",
            &model("iris_logreg.onnx"),
            "--name",
            "iris",
            "--version",
            "2",
            "--with-root",
            "root-v2.json",
            "--key",
            "keys/release.key",
            "--delegation",
            "d2.json",
            "--out",
            "rotated.drv",
        ],
    );
    // A device provisioned with root v1 follows the chain.
    let out = ok(d, &["verify", "rotated.drv", "--root", "root.json"]);
    assert!(out.contains("root v2"), "{out}");
    // The old root key cannot delegate any more once the rotation is known.
    let out = fails(
        d,
        &[
            "root",
            "rotate",
            "--current",
            "root-v2.json",
            "--key",
            "keys/root.key",
            "--new-key",
            "keys/root.key",
            "--out",
            "evil.json",
        ],
    );
    assert!(out.contains("not the current root key"), "{out}");
}

#[test]
fn a_model_the_agent_cannot_run_is_never_bundled() {
    let dir = fleet();
    let out = fails(
        dir.path(),
        &["bundle", &model("qop/qd_lstm_clip_refused.onnx"), "--name", "lstm", "--version", "1", "--out", "x.drv"],
    );
    assert!(out.contains("unsupported operators: com.microsoft::DynamicQuantizeLSTM (1)"), "{out}");
    assert!(!PathBuf::from(dir.path()).join("x.drv").exists());
}

#[test]
fn a_model_the_agent_would_run_wrongly_is_never_bundled() {
    let dir = fleet();
    let file = model("exported/torch_rnn_relu_refused.onnx");
    let out = fails(dir.path(), &["bundle", &file, "--name", "rnn", "--version", "1", "--out", "x.drv"]);
    assert!(out.contains("RNN node '/rnn/RNN' sets activations=[Relu]"), "{out}");
    assert!(out.contains("export with the default activations"), "{out}");
    assert!(!PathBuf::from(dir.path()).join("x.drv").exists());
}

/// Without self-test samples, `drover bundle` still runs the model once, on zeros: a model that
/// loads and fails only on data is refused here, not on the devices.
#[cfg(feature = "mqtt")]
#[test]
fn a_model_that_loads_but_cannot_run_is_refused_by_its_trial_run() {
    let dir = fleet();
    let file = dir.path().join("divide.onnx");
    drover_tests::onnx_gen::write_divide_by_input_model(&file);
    let out =
        fails(dir.path(), &["bundle", &file.to_string_lossy(), "--name", "div", "--version", "1", "--out", "x.drv"]);
    assert!(out.contains("the model loads, but a trial run on a sample of zeros failed"), "{out}");
    assert!(out.contains("give --selftest samples"), "{out}");
    assert!(!dir.path().join("x.drv").exists());
}

fn mlflow_dir(name: &str) -> PathBuf {
    models_dir().join("mlflow").join(name)
}

/// Copies an MLflow model directory so a test can alter it.
fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), dst.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn mlflow_onnx_model_directory_becomes_a_verified_bundle() {
    let dir = fleet();
    let d = dir.path();
    let mlflow = mlflow_dir("iris_logreg").to_string_lossy().into_owned();
    let args = ["bundle", "--mlflow", &mlflow, "--name", "iris", "--version", "1", "--selftest", &iris_selftest()];
    let signer = ["--key", "keys/release.key", "--delegation", "release.delegation.json", "--out", "mlflow.drv"];
    ok(d, &[&args[..], &signer[..]].concat());
    let out = ok(d, &["verify", "mlflow.drv", "--root", "root.json"]);
    assert!(out.contains("self-test: 8 case(s) match"), "{out}");
}

/// MLflow 3's own ONNX directory keeps the weights in a UUID-named side file (external data):
/// the bundle carries it, `verify` loads the model with it, and a device installs both and serves.
#[test]
fn an_mlflow_directory_with_external_data_is_bundled_installed_and_served() {
    let dir = fleet();
    let d = dir.path();
    let mlflow = mlflow_dir("torch_mlp_external");
    let side = std::fs::read_dir(&mlflow)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.ends_with(".data"))
        .expect("MLflow wrote external data");
    let samples = resolve("exported/mlflow_mlp_external.input.jsonl").to_string_lossy().into_owned();
    let m = mlflow.to_string_lossy().into_owned();
    let args = ["bundle", "--mlflow", &m, "--name", "iris", "--version", "1", "--selftest", &samples];
    let signer = ["--key", "keys/release.key", "--delegation", "release.delegation.json", "--out", "ext.drv"];
    ok(d, &[&args[..], &signer[..]].concat());
    let report: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "ext.drv", "--json"])).expect("json");
    let files = report["files"].as_array().expect("files");
    assert!(
        files.iter().any(|f| f["name"] == side.as_str() && f["role"] == "ModelData"),
        "the side file travels in the bundle: {report}"
    );
    let out = ok(d, &["verify", "ext.drv", "--root", "root.json"]);
    assert!(out.contains("self-test: 8 case(s) match"), "{out}");
    let data = d.join("dev").to_string_lossy().into_owned();
    cli::ok("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", &data]);
    let out = cli::ok("drover-agent", d, &["install", "ext.drv", "--data-dir", &data]);
    assert!(out.contains("8 self-test case(s) passed"), "{out}");
    let out = cli::ok("drover-agent", d, &["boot", "--data-dir", &data]);
    assert!(out.contains("serving iris v1"), "{out}");
}

/// A model whose external data points outside its directory is refused before anything is read.
#[test]
fn external_data_outside_the_model_directory_is_refused() {
    let dir = fleet();
    let d = dir.path();
    let src = mlflow_dir("torch_mlp_external").join("model.onnx");
    let mut bytes = std::fs::read(&src).expect("model");
    let side = std::fs::read_dir(mlflow_dir("torch_mlp_external"))
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.ends_with(".data"))
        .expect("side file");
    // Same length, so the protobuf stays well-formed: `../` plus the name's last characters.
    let evil = format!("../{}", &side[3..]);
    let at = bytes.windows(side.len()).position(|w| w == side.as_bytes()).expect("location in the file");
    bytes[at..at + side.len()].copy_from_slice(evil.as_bytes());
    std::fs::write(d.join("evil.onnx"), &bytes).expect("write");
    std::fs::write(d.join("x.jsonl"), format!("[{}]\n", vec!["0.5"; 16].join(","))).expect("write");
    let out = fails(d, &["bundle", "evil.onnx", "--name", "iris", "--version", "1", "--out", "e.drv"]);
    assert!(out.contains("not a file name beside the model"), "{out}");
    let out =
        cli::fails("drover-agent", d, &["infer", "--model", "evil.onnx", "--input", "x.jsonl", "--output", "o.jsonl"]);
    assert!(out.contains("not a file name beside the model"), "{out}");
}

#[test]
fn mlflow_pickle_models_are_refused_without_being_opened() {
    let dir = fleet();
    let d = dir.path();
    // Only the MLmodel file: the refusal is decided from it alone, the pickle is never read.
    let only_meta = d.join("pickle-meta");
    std::fs::create_dir_all(&only_meta).expect("mkdir");
    std::fs::copy(mlflow_dir("iris_sklearn_pickle").join("MLmodel"), only_meta.join("MLmodel")).expect("copy");
    let out = fails(d, &["bundle", "--mlflow", "pickle-meta", "--name", "iris", "--version", "1", "--out", "p.drv"]);
    assert!(out.contains("Python pickle") && out.contains("skl2onnx"), "{out}");
    let full = mlflow_dir("iris_sklearn_pickle").to_string_lossy().into_owned();
    let out = fails(d, &["bundle", "--mlflow", &full, "--name", "iris", "--version", "1", "--out", "p.drv"]);
    assert!(out.contains("model.pkl"), "{out}");
    assert!(!d.join("p.drv").exists());
}

#[test]
fn mlflow_sklearn_directories_are_refused_saying_what_they_are_and_how_to_convert_them() {
    let dir = fleet();
    let d = dir.path();
    let bundle = |name: &str| {
        let dir = mlflow_dir(name).to_string_lossy().into_owned();
        fails(d, &["bundle", "--mlflow", &dir, "--name", "iris", "--version", "1", "--out", "x.drv"])
    };
    // MLflow 3's default for scikit-learn (no serialization_format given): skops.
    let skops = bundle("iris_sklearn_skops");
    for what in [
        "flavor 'sklearn'",
        "serialized with skops (model.skops)",
        "runs ONNX models only",
        "skl2onnx",
        "to_onnx(model, X[:1].astype(numpy.float32))",
        "mlflow.onnx.log_model",
        "mlflow.onnx.save_model",
        "drover bundle --mlflow DIR",
    ] {
        assert!(skops.contains(what), "{what}: {skops}");
    }
    assert!(!skops.contains("no onnx flavor"), "{skops}");
    // A pickle is named by its own flavor, not by python_function (which every flavor adds).
    let pickle = bundle("iris_sklearn_pickle");
    for what in ["flavor 'sklearn'", "serialized with pickle (model.pkl)", "runs code when loaded", "skl2onnx"] {
        assert!(pickle.contains(what), "{what}: {pickle}");
    }
    assert!(!pickle.contains("python_function"), "{pickle}");
    assert!(!d.join("x.drv").exists());
}

#[test]
fn mlflow_directories_that_lie_are_refused() {
    let dir = fleet();
    let d = dir.path();
    // The signature describes iris, the ONNX file is the MLP.
    let swapped = d.join("swapped");
    copy_dir(&mlflow_dir("iris_logreg"), &swapped);
    std::fs::copy(models_dir().join("mlp.onnx"), swapped.join("model.onnx")).expect("swap");
    let out = fails(d, &["bundle", "--mlflow", "swapped", "--name", "iris", "--version", "1", "--out", "s.drv"]);
    assert!(out.contains("signature does not match") && out.contains("float_input"), "{out}");
    // The flavor points outside the directory.
    let escape = d.join("escape");
    copy_dir(&mlflow_dir("iris_logreg"), &escape);
    let meta = std::fs::read_to_string(escape.join("MLmodel"))
        .expect("MLmodel")
        .replace("data: model.onnx", "data: ../../etc/passwd");
    std::fs::write(escape.join("MLmodel"), meta).expect("write");
    let out = fails(d, &["bundle", "--mlflow", "escape", "--name", "iris", "--version", "1", "--out", "e.drv"]);
    assert!(out.contains("is not a file name inside the model directory"), "{out}");
}

#[test]
fn reference_statistics_travel_in_the_bundle() {
    let dir = fleet();
    let d = dir.path();
    signed_bundle(
        d,
        &model("iris_logreg.onnx"),
        "iris",
        "1",
        &["--reference", &iris_selftest(), "--reference-bins", "4", "--drift-psi", "0.25", "--telemetry-period", "30"],
        "r.drv",
    );
    ok(d, &["verify", "r.drv", "--root", "root.json"]);
    let r: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "r.drv", "--json"])).expect("JSON");
    let reference = &r["reference"];
    assert_eq!(reference["samples"], 16);
    assert_eq!(reference["layout"], "elements");
    assert_eq!(reference["features"].as_array().map(Vec::len), Some(4));
    assert_eq!(
        reference["features"][0]["counts"].as_array().map(|c| c.iter().filter_map(|x| x.as_u64()).sum::<u64>()),
        Some(16)
    );
    assert_eq!(r["files"][1]["role"], "ReferenceStats");
    assert_eq!((r["drift_psi"].as_f64(), r["telemetry_period_s"].as_u64()), (Some(0.25), Some(30)));
    // Images are profiled per channel.
    let cnn = resolve("reference/cnn.input.npy").to_string_lossy().into_owned();
    ok(d, &["bundle", &model("cnn.onnx"), "--name", "cnn", "--version", "1", "--reference", &cnn, "--out", "cnn.drv"]);
    let r: serde_json::Value = serde_json::from_str(&ok(d, &["inspect", "cnn.drv", "--json"])).expect("JSON");
    assert_eq!(r["reference"]["layout"], "channels");
    assert_eq!(r["reference"]["features"][0]["count"], 16 * 28 * 28);
    assert_eq!(r["reference"]["outputs"][0]["kind"], "argmax");
    let human = ok(d, &["inspect", "cnn.drv"]);
    assert!(human.contains("reference    16 samples of 'image', 1 feature(s) (Channels)"), "{human}");
}
