//! `drover acl --fleet fleet.toml --out DIR`: the broker's access rules and password file for
//! a fleet (see `acl`, and docs/security.md).

use std::path::PathBuf;

use anyhow::Context;

use crate::acl;

/// Arguments of `drover acl`.
#[derive(Debug, clap::Args)]
pub struct AclArgs {
    /// The fleet file: groups, devices with their groups, users with a role (docs/security.md).
    #[arg(long)]
    pub fleet: PathBuf,
    /// Where `acl`, `passwd` (0600) and `mosquitto.conf` go.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// Checks the fleet file, then writes the files and lists them (never the hashes).
pub fn run(args: &AclArgs) -> anyhow::Result<()> {
    let fleet = acl::load(&args.fleet).context("drover acl")?;
    let out = std::path::absolute(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let generated = acl::generate(&fleet, &out).context("drover acl")?;
    let written = acl::write(&generated, &out, args.force).context("drover acl")?;
    println!(
        "access rules for {} device(s) and {} user(s) in {}:",
        fleet.devices.len(),
        fleet.users.len(),
        out.display()
    );
    for p in written {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let secret = name == acl::PASSWD_FILE || name == acl::SHARE_GROUP_FILE;
        println!("  {name}{}", if secret { " (secret, 0600)" } else { "" });
    }
    println!(
        "fleet servers: drover fleet serve --share-group-file {} (kept when drover acl runs again)",
        out.join(acl::SHARE_GROUP_FILE).display()
    );
    Ok(())
}
