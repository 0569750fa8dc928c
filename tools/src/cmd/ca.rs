//! `drover ca init` (the fleet's certificate authority) and `drover ca server` (the broker's
//! TLS certificate, signed by it). Device certificates come from `drover provision --ca`.

use std::path::PathBuf;

use anyhow::Context;

use crate::board::pki::{self, Ca};
use crate::board::secret::{self, Mode};

/// `drover ca …`.
#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Make the fleet CA: DIR/ca.pem and DIR/ca.key (0600; keep it off the boards).
    Init(InitArgs),
    /// Issue the broker's certificate: DIR/broker.pem and DIR/broker.key (0600).
    Server(ServerArgs),
}

/// Arguments of `drover ca init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The CA directory.
    #[arg(long)]
    pub out: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "Drover fleet CA")]
    pub name: String,
    /// Validity, days.
    #[arg(long, default_value_t = 3650)]
    pub days: u32,
    /// Replace an existing CA (every certificate it issued stops being trusted).
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `drover ca server`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The CA directory.
    #[arg(long)]
    pub ca: PathBuf,
    /// A DNS name or IP address the devices use for the broker (repeat for more).
    #[arg(long = "name", required = true)]
    pub names: Vec<String>,
    /// Where broker.pem and broker.key go.
    #[arg(long)]
    pub out: PathBuf,
    /// Validity, days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}

/// Runs `drover ca`.
pub fn run(cmd: &CaCommand, now: u64) -> anyhow::Result<()> {
    match cmd {
        CaCommand::Init(a) => {
            let cert = pki::init(&a.out, &a.name, now, a.days, a.force).context("drover ca init")?;
            println!("fleet CA: {} (key {} 0600)", cert.display(), a.out.join(pki::CA_KEY).display());
        }
        CaCommand::Server(a) => {
            let ca = Ca::load(&a.ca).with_context(|| format!("CA in {}", a.ca.display()))?;
            let issued = ca.issue_server(&a.names, now, a.days)?;
            std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
            secret::write(&a.out.join("broker.key"), issued.key_pem.as_bytes(), Mode::Secret, a.force)?;
            secret::write(&a.out.join("broker.pem"), issued.cert_pem.as_bytes(), Mode::Public, a.force)?;
            println!("broker certificate for {}: {}", a.names.join(", "), a.out.join("broker.pem").display());
        }
    }
    Ok(())
}
