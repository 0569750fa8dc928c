//! `drover package --target aarch64|armv7|x86_64 --out DIR [--agent PATH]`: the agent as a
//! Debian package for a board (see `board::package`).

use std::path::PathBuf;

use anyhow::Context;

use crate::board::package;
use crate::board::target::Target;

/// Arguments of `drover package`.
#[derive(Debug, clap::Args)]
pub struct PackageArgs {
    /// The board's CPU: aarch64 (Pi OS 64-bit, Jetson; static musl), armv7 (Pi OS 32-bit),
    /// x86_64. Inferred from `--agent` when absent.
    #[arg(long, value_enum)]
    pub target: Option<Target>,
    /// Package this agent binary instead of building one (its architecture must match).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Where the `.deb` goes.
    #[arg(long)]
    pub out: PathBuf,
    /// The package version.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub version: String,
}

/// Builds (or takes) the agent and writes the package; prints its path and sizes.
pub fn run(args: &PackageArgs) -> anyhow::Result<()> {
    let (agent, target) = match (&args.agent, args.target) {
        (Some(agent), t) => {
            let facts = package::check_agent(agent, t)?;
            (agent.clone(), facts.target)
        }
        (None, Some(t)) => (package::build_agent(t)?, t),
        (None, None) => anyhow::bail!("give --target (to build the agent) or --agent (to package one)"),
    };
    let p = package::package(&agent, target, &args.version, &args.out)
        .with_context(|| format!("package {} for {}", agent.display(), target.name()))?;
    if target != Target::Armv7 && !p.agent.is_static {
        log::warn!("{}: dynamically linked; boards need the static musl build", agent.display());
    }
    println!(
        "{} ({} KiB; agent {} KiB, {}, {})",
        p.path.display(),
        p.deb_bytes.div_ceil(1024),
        p.agent_bytes.div_ceil(1024),
        target.deb_arch(),
        if p.agent.is_static { "static" } else { "dynamic" }
    );
    Ok(())
}
