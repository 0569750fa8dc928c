//! The model zoo: files written by the real exporters' current releases (torch.onnx, skl2onnx,
//! onnxmltools, onnxruntime's quantizers, MLflow), run through the agent as a user runs them, and
//! compared with onnxruntime's answers, on x86_64 and on the boards' aarch64 and armv7 builds
//! under qemu-user.
//!
//! The zoo is ~290 MB, so it is not committed: `models/zoo/make_zoo.py` writes it into
//! `target/zoo` (or `$DROVER_ZOO_DIR`) and does nothing when its cache key (the script and its
//! pinned requirements) is unchanged. `models/zoo/check_zoo.py` does the per-model work:
//! `drover-agent infer` one sample per run and `--batch N`, parity under each output's tolerance,
//! and on the host `drover bundle` (or `--mlflow`) of every model. Both scripts need Python 3
//! with `models/zoo/requirements.txt`, which `tests/run` installs; elsewhere a machine without
//! them skips these tests and says what to install.

use std::path::{Path, PathBuf};
use std::process::Command;

use drover_tests::tools::{in_ci, require_tool, workspace_bin};
use drover_tests::zoo::{generated as zoo, model_names as manifest_models, repo, target_dir};
use serde_json::Value;

/// The 224x224 networks every board run keeps: one per exporter (TorchScript fp32, dynamo fp32
/// with external data and HardSwish), the detector, and the width-0.35 MobileNetV2 in fp32 and
/// int8 (per-tensor and per-channel QDQ, uint8 weights, QOperator): the boards' own integer
/// kernels (tract-linalg's NEON) on a real network. The full-width int8 MobileNetV2s are left to
/// `DROVER_ZOO_QEMU=all`: the same layers, 6x the work.
const BIG_ON_BOARDS: [&str; 8] = [
    "tv_mobilenet_v2_ts",
    "tv_mobilenet_v3_small_dynamo",
    "tv_ssdlite320_ts",
    "tv_mobilenet_v2_035_ts",
    "q_tv_mobilenet_v2_035_qdq_u8s8_pt",
    "q_tv_mobilenet_v2_035_qdq_s8s8_pc",
    "q_tv_mobilenet_v2_035_qdq_u8u8_pt",
    "q_tv_mobilenet_v2_035_qop",
];

/// The models a board run (under qemu) checks: every model but the 224x224 networks outside
/// [`BIG_ON_BOARDS`], as a 224x224 network takes 10-60 s per run under qemu with the test
/// profile. `DROVER_ZOO_QEMU=all` checks every one (about 30 minutes per board).
fn board_selection(zoo: &Path, arch: &str) -> Vec<String> {
    let all = manifest_models(zoo);
    if std::env::var("DROVER_ZOO_QEMU").is_ok_and(|v| v == "all") {
        return all;
    }
    let big = |m: &str| m.starts_with("tv_") || m.starts_with("q_tv_");
    // The detector runs on armv7 only: its own code (If, NonMaxSuppression, Slice bounds) is the
    // same Rust on both boards, and its load under qemu-aarch64 still takes 12 s (2026-12-08; it
    // was 155 s while tract's dropped errors captured backtraces, docs/boards.md "Ready").
    let skip_here = |m: &str| arch == "aarch64" && m == "tv_ssdlite320_ts";
    all.into_iter().filter(|m| (!big(m) || BIG_ON_BOARDS.contains(&m.as_str())) && !skip_here(m)).collect()
}

/// Runs check_zoo.py with `agent` (under `runner`, if any) on `models` (every model when `None`)
/// and asserts that each was checked and passed. `drover` also bundles every model (host only).
/// The results stay in `target/zoo-results/<arch>.json` for `models/zoo/table.py`.
fn check(arch: &str, zoo: &Path, agent: &Path, runner: &str, drover: Option<&Path>, models: Option<&[String]>) {
    let results_dir = target_dir().join("zoo-results");
    std::fs::create_dir_all(&results_dir).expect("zoo-results");
    let json = results_dir.join(format!("{arch}.json"));
    let _ = std::fs::remove_file(&json);
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("models/zoo/check_zoo.py"))
        .arg("--zoo")
        .arg(zoo)
        .arg("--agent")
        .arg(agent)
        .arg("--json")
        .arg(&json)
        .arg("--no-timing");
    if !runner.is_empty() {
        cmd.args(["--runner", runner]);
    }
    if let Some(drover) = drover {
        cmd.arg("--drover").arg(drover);
    }
    if let Some(models) = models {
        cmd.arg("--only").arg(format!("^({})$", models.join("|")));
    }
    let out = cmd.output().expect("run check_zoo.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let results: Value = match std::fs::read_to_string(&json) {
        Ok(text) => serde_json::from_str(&text).expect("results are JSON"),
        Err(e) => panic!("check_zoo.py wrote no results ({e}); it said:\n{stderr}\n{stdout}"),
    };
    let results = results["results"].as_array().expect("results");
    let mut failed = Vec::new();
    let mut seen = Vec::new();
    for r in results {
        let model = r["model"].as_str().expect("model").to_string();
        let status = r["status"].as_str().expect("status");
        // Without `drover`, the MLflow directory that must be refused by `drover bundle --mlflow`
        // has nothing else to check: the only model allowed to be skipped.
        let skipped_ok = status == "skipped" && drover.is_none();
        if status != "pass" && !skipped_ok {
            failed.push(format!("{model}: {status}: {}", r["error"].as_str().unwrap_or("")));
        }
        seen.push(model);
    }
    let expected = models.map(<[String]>::to_vec).unwrap_or_else(|| manifest_models(zoo));
    let missing: Vec<_> = expected.into_iter().filter(|m| !seen.contains(m)).collect();
    assert!(missing.is_empty(), "check_zoo.py did not check {missing:?}");
    assert!(failed.is_empty(), "{} zoo model(s) failed:\n{}\n\n{stdout}", failed.len(), failed.join("\n"));
    assert!(out.status.success(), "check_zoo.py exited with {}:\n{stderr}\n{stdout}", out.status);
    eprintln!("{stdout}");
}

/// The agent `tests/run` cross-builds for `triple` before the host tests.
fn cross_agent(triple: &str) -> Option<PathBuf> {
    let found = ["debug", "release"]
        .iter()
        .map(|p| target_dir().join(triple).join(p).join("drover-agent"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(!in_ci(), "tests/run cross-builds the {triple} agent before the host tests; it is missing");
        eprintln!("SKIPPED: no {triple} agent (cargo build --target {triple} -p drover-runtime --bin drover-agent)");
    }
    found
}

#[test]
fn every_zoo_model_loads_runs_and_bundles_with_onnxruntimes_answers_on_x86_64() {
    let Some(zoo) = zoo() else { return };
    check("x86_64", &zoo, &workspace_bin("drover-agent"), "", Some(&workspace_bin("drover")), None);
}

#[test]
fn every_zoo_model_runs_with_onnxruntimes_answers_on_aarch64_under_qemu() {
    let Some(_) = require_tool("qemu-aarch64-static", "qemu-user-static") else { return };
    let Some(agent) = cross_agent("aarch64-unknown-linux-musl") else { return };
    let Some(zoo) = zoo() else { return };
    // A Raspberry Pi 4's core. qemu's default (`max`) emulates newer extensions and ran tract's
    // NEON code 9x slower.
    check(
        "aarch64",
        &zoo,
        &agent,
        "qemu-aarch64-static -cpu cortex-a72",
        None,
        Some(&board_selection(&zoo, "aarch64")),
    );
}

#[test]
fn every_zoo_model_runs_with_onnxruntimes_answers_on_armv7_under_qemu() {
    let Some(_) = require_tool("qemu-arm-static", "qemu-user-static") else { return };
    let Some(agent) = cross_agent("armv7-unknown-linux-gnueabihf") else { return };
    let Some(zoo) = zoo() else { return };
    check(
        "armv7",
        &zoo,
        &agent,
        "qemu-arm-static -L /usr/arm-linux-gnueabihf",
        None,
        Some(&board_selection(&zoo, "armv7")),
    );
}
