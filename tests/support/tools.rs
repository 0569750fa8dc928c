//! Locating the binaries and external tools the end-to-end tests drive.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Whether this run is CI, where a missing tool must fail the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The directory holding this profile's binaries (`target/<profile>` or
/// `target/<triple>/<profile>`), derived from the running test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    exe.parent().and_then(|deps| deps.parent()).expect("test binary lives in target/<profile>/deps").to_path_buf()
}

/// Path of a workspace binary for the host, built (once per test process) with the same cargo
/// and profile that built the tests, so a test never runs a stale binary.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = profile_dir();
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = cargo();
        // `--workspace --bins --tests` resolves features exactly as `cargo test --workspace`
        // does, so after the test build this is a no-op instead of a second build of the agent.
        cmd.args(["build", "--quiet", "--workspace", "--bins", "--tests"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let path = profile_dir().join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A `cargo` command for a nested build from a test or bench: the same cargo, without the
/// variables cargo gives a test of its package. Build scripts that watch one (ring watches
/// CARGO_MANIFEST_DIR) would see a change and rebuild half the tree, twice per run.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package = ["CARGO_MANIFEST_", "CARGO_PKG_", "CARGO_BIN_", "CARGO_CRATE_", "CARGO_PRIMARY_"]
            .iter()
            .any(|p| key.starts_with(p));
        if per_package || key == "CARGO_TARGET_TMPDIR" || key == "OUT_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Finds an external tool on PATH. In CI a missing tool fails the test; elsewhere the test is
/// skipped with a message naming the Debian package to install.
pub fn require_tool(tool: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(!in_ci(), "{tool} is required in CI: apt-get install {package}");
        eprintln!("SKIPPED: {tool} not found (apt-get install {package})");
    }
    found
}
