//! `drover provision --device ID --group G --broker URL --root root.json --out DIR`: one
//! device's configuration, credentials and trust root (see `board::provision`).

use std::path::PathBuf;

use anyhow::Context;

use crate::board::provision::{self, BrokerUrl, Credentials, Spec};

/// Arguments of `drover provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// The device id (unique in the fleet, `[A-Za-z0-9._-]`).
    #[arg(long)]
    pub device: String,
    /// A group the device belongs to (repeat for more).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// A `key=value` label (repeat for more).
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// The broker as the device reaches it: mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS).
    #[arg(long)]
    pub broker: BrokerUrl,
    /// The fleet's root document (the device's trust root for bundles).
    #[arg(long)]
    pub root: PathBuf,
    /// The fleet CA directory (`drover ca init`): issue the device a client certificate.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The CA certificate that authenticates the broker (default: the fleet CA's).
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,
    /// A file whose first line is the device's broker password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// The broker user name (default: the device id).
    #[arg(long, requires = "password_file")]
    pub username: Option<String>,
    /// The local inference API: HOST:PORT, unix:/run/drover/api.sock or off.
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub api: String,
    /// Client certificate validity, days.
    #[arg(long, default_value_t = 825)]
    pub days: u32,
    /// The provisioning directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing provisioning (a new key and certificate).
    #[arg(long)]
    pub force: bool,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("'{s}': expected KEY=VALUE"))
}

/// Writes the provisioning directory and lists its files (never their contents).
pub fn run(args: &ProvisionArgs, now: u64) -> anyhow::Result<()> {
    let spec = Spec {
        device: args.device.clone(),
        groups: args.groups.clone(),
        labels: args.labels.clone(),
        broker: args.broker.clone(),
        broker_ca: args.broker_ca.clone(),
        root: args.root.clone(),
        credentials: Credentials {
            ca: args.ca.clone(),
            username: args.username.clone(),
            password_file: args.password_file.clone(),
        },
        api: args.api.clone(),
        days: args.days,
        force: args.force,
    };
    let written = provision::provision(&spec, &args.out, now)
        .with_context(|| format!("provision {} into {}", args.device, args.out.display()))?;
    println!("provisioned {} in {}:", args.device, args.out.display());
    for p in written {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let secret = provision::SECRETS.contains(&name.as_str());
        println!("  {name}{}", if secret { " (secret, 0600)" } else { "" });
    }
    Ok(())
}
