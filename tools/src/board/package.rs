//! `drover package`: the agent for a board as a Debian package. The tree is staged in a
//! temporary directory (agent, unit, sysusers declaration, default config, maintainer
//! scripts) and `dpkg-deb --build --root-owner-group` makes the `.deb` of it, so the archive
//! format is Debian's own tool's. Without `--agent`, the agent is cross-built with cargo.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::elf::{self, ElfFacts};
use super::target::Target;
use super::unit;

/// Why no package was made.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The agent binary is not one for this package.
    #[error("{path}: {reason}")]
    Agent {
        /// The binary.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tool (cargo, dpkg-deb) failed or is missing.
    #[error("{tool}: {reason}")]
    Tool {
        /// The tool.
        tool: String,
        /// What happened.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |error| PackageError::Io { path: path.to_path_buf(), error }
}

/// What was packaged.
#[derive(Debug, Clone)]
pub struct Package {
    /// The `.deb`.
    pub path: PathBuf,
    /// The agent's facts (architecture, static or not).
    pub agent: ElfFacts,
    /// The agent's size, bytes.
    pub agent_bytes: u64,
    /// The package's size, bytes.
    pub deb_bytes: u64,
}

/// Checks that `agent` is an executable for `target` (or infers the target from it).
pub fn check_agent(agent: &Path, target: Option<Target>) -> Result<ElfFacts, PackageError> {
    let bytes = std::fs::read(agent).map_err(io(agent))?;
    let facts =
        elf::inspect(&bytes).map_err(|e| PackageError::Agent { path: agent.to_path_buf(), reason: e.to_string() })?;
    if let Some(t) = target
        && t != facts.target
    {
        return Err(PackageError::Agent {
            path: agent.to_path_buf(),
            reason: format!("built for {}, not {} (--target)", facts.target.name(), t.name()),
        });
    }
    Ok(facts)
}

/// Cross-builds the agent for `target` with cargo (release profile) from the workspace in
/// the current directory, and returns the binary's path (from cargo's own report).
pub fn build_agent(target: Target) -> Result<PathBuf, PackageError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tool =
        |reason: String| PackageError::Tool { tool: format!("{cargo} build --target {}", target.triple()), reason };
    log::info!("building drover-agent for {}", target.triple());
    let out = Command::new(&cargo)
        .args(["build", "--release", "--target", target.triple(), "-p", "drover-runtime", "--bin", "drover-agent"])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| tool(format!("{e} (is this the Drover checkout, with Rust installed?)")))?;
    if !out.status.success() {
        return Err(tool(format!("{} (see the messages above)", out.status)));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "drover-agent")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| tool("cargo reported no drover-agent executable".into()))
}

fn put(root: &Path, path: &str, bytes: &[u8], mode: u32) -> Result<u64, PackageError> {
    let p = root.join(path.trim_start_matches('/'));
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::write(&p, bytes).map_err(io(&p))?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(io(&p))?;
    Ok(bytes.len() as u64)
}

/// Stages the package tree of `agent` for `target` in `root` (empty directory).
pub fn stage(root: &Path, agent: &Path, target: Target, version: &str) -> Result<(), PackageError> {
    let binary = std::fs::read(agent).map_err(io(agent))?;
    let mut bytes = put(root, unit::AGENT, &binary, 0o755)?;
    bytes += put(root, unit::UNIT_PATH, unit::service().as_bytes(), 0o644)?;
    bytes += put(root, unit::SYSUSERS_PATH, unit::sysusers().as_bytes(), 0o644)?;
    bytes += put(root, unit::CONFIG, unit::default_config().as_bytes(), 0o644)?;
    let readme = format!(
        "drover-agent {version} for {} ({}).\nProvision with `drover provision`, install with `drover flash`; \
         see docs/boards.md in the Drover sources.\n",
        target.name(),
        target.triple()
    );
    bytes += put(root, "/usr/share/doc/drover-agent/README", readme.as_bytes(), 0o644)?;
    put(root, "DEBIAN/control", unit::control(version, target.deb_arch(), bytes.div_ceil(1024)).as_bytes(), 0o644)?;
    put(root, "DEBIAN/conffiles", format!("{}\n", unit::CONFIG).as_bytes(), 0o644)?;
    put(root, "DEBIAN/postinst", unit::postinst().as_bytes(), 0o755)?;
    put(root, "DEBIAN/prerm", unit::prerm().as_bytes(), 0o755)?;
    put(root, "DEBIAN/postrm", unit::postrm().as_bytes(), 0o755)?;
    Ok(())
}

/// The package's file name, Debian's way: `drover-agent_0.1.0_arm64.deb`.
pub fn file_name(version: &str, target: Target) -> String {
    format!("drover-agent_{version}_{}.deb", target.deb_arch())
}

/// Packages `agent` (already checked for `target`) into `out_dir`.
pub fn package(agent: &Path, target: Target, version: &str, out_dir: &Path) -> Result<Package, PackageError> {
    let facts = check_agent(agent, Some(target))?;
    let staging = tempfile::tempdir().map_err(io(Path::new("temporary directory")))?;
    // dpkg-deb wants the tree's directories 0755 whatever the umask.
    let tree = staging.path().join("tree");
    std::fs::create_dir(&tree).map_err(io(&tree))?;
    stage(&tree, agent, target, version)?;
    for entry in walk(&tree)? {
        if entry.is_dir() {
            std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o755)).map_err(io(&entry))?;
        }
    }
    std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
    let path = out_dir.join(file_name(version, target));
    let out = Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group", "-Zxz"])
        .arg(&tree)
        .arg(&path)
        .output()
        .map_err(|e| PackageError::Tool {
        tool: "dpkg-deb".into(),
        reason: format!("{e} (apt-get install dpkg)"),
    })?;
    if !out.status.success() {
        return Err(PackageError::Tool {
            tool: "dpkg-deb --build".into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).map_err(io(p));
    Ok(Package { agent: facts, agent_bytes: size(agent)?, deb_bytes: size(&path)?, path })
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>, PackageError> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if all[i].is_dir() {
            for e in std::fs::read_dir(&all[i]).map_err(io(&all[i]))? {
                all.push(e.map_err(io(dir))?.path());
            }
        }
        i += 1;
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_holds_agent_unit_config_and_scripts() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::env::current_exe().unwrap();
        let facts = check_agent(&me, None).unwrap();
        stage(dir.path(), &me, facts.target, "1.2.3").unwrap();
        let mode = |p: &str| std::fs::metadata(dir.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("usr/bin/drover-agent"), 0o755);
        assert_eq!(mode("DEBIAN/postinst"), 0o755);
        assert_eq!(mode("etc/drover/agent.toml"), 0o644);
        let control = std::fs::read_to_string(dir.path().join("DEBIAN/control")).unwrap();
        assert!(control.contains("Version: 1.2.3\n"), "{control}");
        assert!(control.contains(&format!("Architecture: {}\n", facts.target.deb_arch())));
        let conffiles = std::fs::read_to_string(dir.path().join("DEBIAN/conffiles")).unwrap();
        assert_eq!(conffiles, "/etc/drover/agent.toml\n");
        assert!(dir.path().join("lib/systemd/system/drover-agent.service").is_file());
    }

    #[test]
    fn an_agent_for_another_board_is_refused() {
        let me = std::env::current_exe().unwrap();
        let other = if cfg!(target_arch = "aarch64") { Target::X86_64 } else { Target::Aarch64 };
        let e = check_agent(&me, Some(other)).unwrap_err().to_string();
        assert!(e.contains(&format!("not {} (--target)", other.name())), "{e}");
        assert!(check_agent(Path::new("Cargo.toml"), None).unwrap_err().to_string().contains("not an ELF"));
        assert_eq!(file_name("0.1.0", Target::Armv7), "drover-agent_0.1.0_armhf.deb");
    }
}
