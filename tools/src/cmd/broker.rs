//! `drover broker [--config F] [--listen ADDR]`: the embedded MQTT broker (rumqttd).

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::broker::{BrokerConfig, run as run_broker};

/// Arguments of `drover broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerCmdArgs {
    /// A broker configuration (TOML: listen, max_packet, [tls], [users]).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Plain MQTT listener (overrides the file's).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Runs until killed.
pub fn run(args: &BrokerCmdArgs) -> anyhow::Result<()> {
    let mut cfg = match &args.config {
        Some(p) => BrokerConfig::load(p)?,
        None => BrokerConfig::default(),
    };
    if let Some(l) = args.listen {
        cfg.listen = Some(l);
    }
    let tls = cfg.tls.as_ref().map(|t| format!(", TLS on {}", t.listen)).unwrap_or_default();
    let plain = cfg.listen.map(|l| format!("MQTT on {l}")).unwrap_or_else(|| "no plain listener".into());
    let auth = if cfg.users.is_empty() { "anonymous" } else { "password" };
    eprintln!("drover broker: {plain}{tls}, max packet {} bytes, {auth} clients", cfg.max_packet);
    run_broker(&cfg)
}
