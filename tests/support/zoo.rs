//! The model zoo (`models/zoo/make_zoo.py`): files written by the real exporters' current
//! releases, generated into `target/zoo` (or `$DROVER_ZOO_DIR`) and cached by the script's hash.
//! Shared by the zoo's tests (`tests/zoo.rs`) and its bench (`benches/zoo.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::tools::{in_ci, require_tool};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// `target/`, from the running executable (`target/<profile>/deps/<name>-…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("exe");
    exe.ancestors().nth(3).expect("target dir").to_path_buf()
}

/// The zoo, generated (or found up to date) by the committed script; `None` (skip) when Python's
/// packages for it are missing outside CI.
pub fn generated() -> Option<PathBuf> {
    let python = require_tool("python3", "python3")?;
    let flock = require_tool("flock", "util-linux")?;
    let probe = Command::new(&python)
        .args(["-c", "import torch, torchvision, onnxruntime, skl2onnx, onnxmltools, xgboost, lightgbm, mlflow"])
        .output()
        .expect("run python3");
    if !probe.status.success() {
        let why = String::from_utf8_lossy(&probe.stderr);
        assert!(!in_ci(), "the zoo needs `pip install -r models/zoo/requirements.txt` (tests/run does it): {why}");
        eprintln!("SKIPPED: the zoo needs `pip install -r models/zoo/requirements.txt`: {}", why.trim());
        return None;
    }
    let dir = std::env::var_os("DROVER_ZOO_DIR").map(PathBuf::from).unwrap_or_else(|| target_dir().join("zoo"));
    std::fs::create_dir_all(dir.parent().expect("zoo parent")).expect("zoo parent");
    // The zoo's tests run at once in separate processes: one generates, the others wait on the
    // lock and then find the cache up to date.
    let lock = dir.with_extension("lock");
    let status = Command::new(flock)
        .arg(&lock)
        .arg(&python)
        .arg(repo().join("models/zoo/make_zoo.py"))
        .arg("--out")
        .arg(&dir)
        .status()
        .expect("run make_zoo.py");
    assert!(status.success(), "models/zoo/make_zoo.py failed ({status}); its output is above");
    Some(dir)
}

/// The zoo's manifest entries (a complete build: a partial one, `--only`, is refused).
pub fn entries(zoo: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(zoo.join("manifest.json")).expect("manifest.json");
    let manifest: Value = serde_json::from_str(&text).expect("manifest.json is JSON");
    assert_eq!(manifest["partial"], Value::Bool(false), "the zoo in {} is a partial build (--only)", zoo.display());
    manifest["entries"].as_array().expect("entries").clone()
}

/// The model names of the zoo's manifest.
pub fn model_names(zoo: &Path) -> Vec<String> {
    entries(zoo).iter().map(|e| e["name"].as_str().expect("name").to_string()).collect()
}
