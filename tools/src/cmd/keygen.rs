//! `drover keygen`: a new Ed25519 key pair for a role.

use std::path::PathBuf;

use anyhow::Context;

use crate::keys::{Role, generate, id_of, write_pair};

/// Arguments of `drover keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// What the key is for.
    #[arg(long, value_enum)]
    pub role: Role,
    /// Directory to write `<name>.key` (mode 0600) and `<name>.pub` into.
    #[arg(long)]
    pub out: PathBuf,
    /// Base name of the files (default: the role).
    #[arg(long)]
    pub name: Option<String>,
}

/// Generates and writes the pair; never overwrites an existing secret key.
pub fn run(args: &KeygenArgs) -> anyhow::Result<()> {
    let name = args.name.clone().unwrap_or_else(|| format!("{:?}", args.role).to_lowercase());
    let key = generate()?;
    let (secret, public) = write_pair(&args.out, &name, args.role, &key).context("keygen")?;
    println!("{:?} key {}", args.role, id_of(&key.public()));
    println!("  secret {} (0600: keep it offline for a root key)", secret.display());
    println!("  public {}", public.display());
    Ok(())
}
