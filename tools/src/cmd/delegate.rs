//! `drover delegate`: let a release key sign bundles of some models.

use std::path::PathBuf;

use drover_wire::trust::DelegatedRole;

use crate::keys::{Role, id_of, read_public, read_secret};
use crate::trust_docs::{delegate, load_root, save};

/// Arguments of `drover delegate`.
#[derive(Debug, clap::Args)]
pub struct DelegateArgs {
    /// The current root document.
    #[arg(long)]
    pub root: PathBuf,
    /// The root secret key.
    #[arg(long)]
    pub root_key: PathBuf,
    /// A release key's public key file: it will sign bundles of `--models`.
    #[arg(long, conflicts_with = "operator", required_unless_present = "operator")]
    pub release: Option<PathBuf>,
    /// An operator key's public key file: it will sign commands to the devices and groups
    /// named by `--targets`.
    #[arg(long)]
    pub operator: Option<PathBuf>,
    /// Model names (release) or device/group names (operator), comma-separated; a trailing `*`
    /// matches a prefix.
    #[arg(long, alias = "targets", value_delimiter = ',', required = true)]
    pub models: Vec<String>,
    /// How long the delegation is valid.
    #[arg(long, default_value = "365d", value_parser = super::parse_duration)]
    pub expires: std::time::Duration,
    /// Where to write the delegation.
    #[arg(long)]
    pub out: PathBuf,
}

/// Signs and writes the delegation.
pub fn run(args: &DelegateArgs, now: u64) -> anyhow::Result<()> {
    let root = load_root(&args.root)?;
    let root_key = read_secret(&args.root_key, Role::Root)?;
    let (role, key, what) = match (&args.release, &args.operator) {
        (Some(p), _) => (DelegatedRole::Release, read_public(p, Role::Release)?, "release key"),
        (None, Some(p)) => (DelegatedRole::Operator, read_public(p, Role::Operator)?, "operator key"),
        (None, None) => anyhow::bail!("give --release or --operator"),
    };
    let d = delegate(&root, &root_key, role, key, &args.models, now, now + args.expires.as_secs())?;
    save(&args.out, &d)?;
    println!(
        "{what} {} may sign for [{}] until {} (root v{})",
        id_of(&key),
        args.models.join(", "),
        super::rfc3339(d.delegation.expires_at),
        d.root_version
    );
    Ok(())
}
