//! `drover delegate`: let a release key sign bundles of some models.

use std::path::PathBuf;

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
    /// The release key's public key file.
    #[arg(long)]
    pub release: PathBuf,
    /// Model names it may sign, comma-separated; a trailing `*` matches a prefix.
    #[arg(long, value_delimiter = ',', required = true)]
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
    let release = read_public(&args.release, Role::Release)?;
    let d = delegate(&root, &root_key, release, &args.models, now, now + args.expires.as_secs())?;
    save(&args.out, &d)?;
    println!(
        "release key {} may sign [{}] until {} (root v{})",
        id_of(&release),
        args.models.join(", "),
        super::rfc3339(d.delegation.expires_at),
        d.root_version
    );
    Ok(())
}
