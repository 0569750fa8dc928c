//! Running the real binaries from tests, and the trust set-up most end-to-end tests start from.

use std::path::Path;
use std::process::{Command, Output};

use crate::manifest::models_dir;
use crate::tools::workspace_bin;

/// Runs a workspace binary (`drover`, `drover-agent`) in `dir`.
pub fn run(bin: &str, dir: &Path, args: &[&str]) -> Output {
    run_with(&workspace_bin(bin), dir, args)
}

/// [`run`] for a binary given by its path.
pub fn run_with(bin: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin).current_dir(dir).args(args).env("RUST_BACKTRACE", "0").output().expect("spawn")
}

/// Runs and asserts success; returns stdout.
pub fn ok(bin: &str, dir: &Path, args: &[&str]) -> String {
    ok_with(&workspace_bin(bin), dir, args)
}

/// [`ok`] for a binary given by its path (a release agent, a cross-built one).
pub fn ok_with(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let o = run_with(bin, dir, args);
    assert!(
        o.status.success(),
        "{} {args:?} failed:\n{}{}",
        bin.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs and asserts failure; returns stdout and stderr together.
pub fn fails(bin: &str, dir: &Path, args: &[&str]) -> String {
    let o = run(bin, dir, args);
    assert!(!o.status.success(), "{bin} {args:?} should fail");
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Absolute path of a reference model, as a string argument.
pub fn model(name: &str) -> String {
    models_dir().join(name).to_string_lossy().into_owned()
}

/// A fleet's trust set-up in a fresh temporary directory: `keys/root.*` and `keys/release.*`,
/// `root.json` (v1), and `release.delegation.json` letting the release key sign `iris`.
pub fn trust_setup() -> tempfile::TempDir {
    trust_setup_with(&workspace_bin("drover"))
}

/// [`trust_setup`] with a given `drover` binary (benches run the dev one beside release agents).
pub fn trust_setup_with(drover: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    ok_with(drover, d, &["keygen", "--role", "root", "--out", "keys"]);
    ok_with(drover, d, &["keygen", "--role", "release", "--out", "keys"]);
    ok_with(drover, d, &["root", "init", "--key", "keys/root.key", "--out", "root.json"]);
    let base = ["delegate", "--root", "root.json", "--root-key", "keys/root.key"];
    let release = ["--release", "keys/release.pub", "--models", "iris", "--out", "release.delegation.json"];
    ok_with(drover, d, &[&base[..], &release[..]].concat());
    dir
}

/// Runs `drover bundle MODEL --name NAME --version VERSION EXTRA… --out OUT` in `dir`, signed
/// with the release key and delegation of [`trust_setup`]; returns stdout.
pub fn signed_bundle(dir: &Path, model: &str, name: &str, version: &str, extra: &[&str], out: &str) -> String {
    signed_bundle_with(&workspace_bin("drover"), dir, model, name, version, extra, out)
}

/// [`signed_bundle`] with a given `drover` binary.
pub fn signed_bundle_with(
    drover: &Path,
    dir: &Path,
    model: &str,
    name: &str,
    version: &str,
    extra: &[&str],
    out: &str,
) -> String {
    let mut args = vec!["bundle", model, "--name", name, "--version", version];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--key", "keys/release.key", "--delegation", "release.delegation.json", "--out", out]);
    ok_with(drover, dir, &args)
}

/// `drover delegate` from the root of [`trust_setup`]: lets the key in `public` (`--release` or
/// `--operator` per `flag`) sign for `names`, writing the delegation to `out`.
pub fn delegate(dir: &Path, flag: &str, public: &str, names: &str, out: &str) -> String {
    let base = ["delegate", "--root", "root.json", "--root-key", "keys/root.key"];
    ok("drover", dir, &[&base[..], &[flag, public, "--models", names, "--out", out]].concat())
}

/// `drover root revoke` of the release key of [`trust_setup`], writing root v2 to `out`.
pub fn revoke_release(dir: &Path, out: &str) -> String {
    let base = ["root", "revoke", "--current", "root.json", "--key", "keys/root.key"];
    ok("drover", dir, &[&base[..], &["--release", "keys/release.pub", "--out", out]].concat())
}

/// The reference iris model signed into `iris-v{version}.drv` in `dir` (see [`trust_setup`]),
/// with its self-test; with `reference`, also the training data's statistics and feature names,
/// which drift monitoring compares live inputs against. Returns the bundle's path.
pub fn iris_bundle(dir: &Path, version: &str, reference: bool) -> String {
    let models = models_dir();
    let m = |p: &str| models.join(p).to_string_lossy().into_owned();
    let names = std::fs::read_to_string(models.join("data/iris.features.txt")).expect("feature names");
    let mut extra = vec!["--selftest".to_string(), m("reference/iris_logreg.input.jsonl")];
    if reference {
        extra.extend(["--reference".into(), m("data/iris.train.jsonl"), "--feature-names".into(), names.trim().into()]);
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let out = format!("iris-v{version}.drv");
    signed_bundle(dir, &m("iris_logreg.onnx"), "iris", version, &extra, &out);
    dir.join(out).to_string_lossy().into_owned()
}
