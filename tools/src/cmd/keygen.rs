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
    println!("  secret {} (0600: {})", secret.display(), where_to_keep(args.role));
    println!("  public {}", public.display());
    Ok(())
}

/// Where the secret key belongs, which follows from what it signs: the root signs rarely (root
/// documents, delegations) and can take everything, so it stays offline; a release key must be
/// where bundles are built and an operator key where commands are issued, or it signs nothing.
fn where_to_keep(role: Role) -> &'static str {
    match role {
        Role::Root => "keep it offline; bring it out only to sign root documents and delegations",
        Role::Release => "keep it on the build or CI machine that signs bundles, and nowhere else",
        Role::Operator => {
            "keep it on the operator's machine that signs commands, or the fleet server if it runs rollouts"
        }
    }
}
