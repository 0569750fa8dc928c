//! `drover sign`: sign a bundle with a release key and its delegation.

use std::path::PathBuf;

use drover_runtime::bundle::Limits;

use crate::bundle_build::{Bundle, Signer};
use crate::keys::{Role, id_of, read_secret};
use crate::trust_docs::{load_delegation, load_root};

/// The release key, its delegation and the root documents to ship with a bundle.
#[derive(Debug, Clone, clap::Args)]
pub struct SignerArgs {
    /// The release secret key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The release key's delegation (from `drover delegate`).
    #[arg(long, requires = "key")]
    pub delegation: Option<PathBuf>,
    /// Root documents to include, oldest first (after a rotation or revocation).
    #[arg(long = "with-root")]
    pub roots: Vec<PathBuf>,
}

impl SignerArgs {
    /// Loads the signer, or `None` when no key was given.
    pub fn load(&self) -> anyhow::Result<Option<Signer>> {
        let Some(key_path) = &self.key else { return Ok(None) };
        let Some(delegation_path) = &self.delegation else {
            anyhow::bail!("--key needs --delegation (the file drover delegate wrote for this key)");
        };
        let key = read_secret(key_path, Role::Release)?;
        let delegation = load_delegation(delegation_path)?;
        if delegation.delegation.key != key.public() {
            anyhow::bail!(
                "{} delegates key {}, not {}",
                delegation_path.display(),
                id_of(&delegation.delegation.key),
                id_of(&key.public())
            );
        }
        let roots = self.roots.iter().map(|p| load_root(p)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Signer { key, delegation, roots }))
    }
}

/// Arguments of `drover sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The bundle to sign.
    pub bundle: PathBuf,
    /// The signer.
    #[command(flatten)]
    pub signer: SignerArgs,
    /// Where to write the signed bundle (default: in place).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Signs the bundle (its files are hash-checked first).
pub fn run(args: &SignArgs) -> anyhow::Result<()> {
    let Some(signer) = args.signer.load()? else { anyhow::bail!("drover sign needs --key and --delegation") };
    let mut bundle = Bundle::read(&args.bundle, &Limits::default())?;
    bundle.sign(&signer)?;
    let out = args.out.as_ref().unwrap_or(&args.bundle);
    bundle.write(out)?;
    println!(
        "signed {} v{} with release key {} -> {}",
        bundle.header.manifest.name,
        bundle.header.manifest.version,
        id_of(&signer.key.public()),
        out.display()
    );
    Ok(())
}
