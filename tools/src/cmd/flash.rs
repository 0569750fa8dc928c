//! `drover flash --host USER@HOST --package F.deb --provision DIR` (or `--hosts FILE` for
//! many boards): install over SSH, start, wait until online; a result table, exit 1 if any
//! board is not online (see `board::flash`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::broker_args::BrokerArgs;
use crate::board::flash::{self, Settings};
use crate::board::hosts::{self, Host};
use crate::board::install::Mode;
use crate::board::watch::Watcher;

/// Arguments of `drover flash`.
#[derive(Debug, clap::Args)]
pub struct FlashArgs {
    /// One board, as ssh takes it (USER@HOST or an ssh_config alias).
    #[arg(long, conflicts_with = "hosts", required_unless_present = "hosts", requires = "provision")]
    pub host: Option<String>,
    /// Many boards: a file of `USER@HOST PROVISION_DIR` lines.
    #[arg(long)]
    pub hosts: Option<PathBuf>,
    /// The board's provisioning directory (`drover provision`), with --host.
    #[arg(long)]
    pub provision: Option<PathBuf>,
    /// The package (`drover package`).
    #[arg(long)]
    pub package: PathBuf,
    /// Options for ssh and scp, space-separated (`-p 2222 -i ~/.ssh/fleet`).
    #[arg(long, allow_hyphen_values = true)]
    pub ssh_opts: Option<String>,
    /// Install into this directory on the board (`dpkg --root`) and start the agent without
    /// systemd: for machines without systemd and for tests; the board's system is untouched.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Boards flashed at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// How long a board may take to come online after its install.
    #[arg(long, default_value = "120s", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Do not wait for the devices on the broker.
    #[arg(long)]
    pub no_wait: bool,
    /// The broker, as this machine reaches it (to see the devices come online).
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Flashes and prints the table; true when every board is online (or installed, --no-wait).
pub fn run(args: &FlashArgs) -> anyhow::Result<bool> {
    let list = match (&args.host, &args.hosts, &args.provision) {
        (Some(h), None, Some(p)) => vec![Host { destination: h.clone(), provision: p.clone() }],
        (None, Some(file), None) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("read {}", file.display()))?;
            let base = file.parent().map(PathBuf::from).unwrap_or_default();
            hosts::parse(&text, &base).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
        }
        (None, Some(_), Some(_)) => anyhow::bail!("--provision goes with --host; a hosts file names each board's"),
        _ => anyhow::bail!("give --host USER@HOST with --provision DIR, or --hosts FILE"),
    };
    anyhow::ensure!(
        args.package.is_file(),
        "{}: no such package (make it with `drover package`)",
        args.package.display()
    );
    let root = match &args.root {
        Some(r) if !r.is_absolute() => anyhow::bail!("--root {}: must be an absolute path on the board", r.display()),
        r => r.clone(),
    };
    let mut devices = Vec::new();
    for h in &list {
        devices.push(flash::device_of(&h.provision)?);
    }
    let settings = Settings {
        package: args.package.clone(),
        mode: root.map_or(Mode::Systemd, Mode::Root),
        ssh_opts: args.ssh_opts.as_deref().unwrap_or("").split_whitespace().map(str::to_string).collect(),
        online_timeout: args.timeout,
        parallel: args.parallel,
    };
    let watcher = if args.no_wait {
        None
    } else {
        let b = args.broker.settings()?;
        Some(
            Watcher::start(&b, &devices, Duration::from_secs(10))
                .context("watching the devices come online (or --no-wait)")?,
        )
    };
    eprintln!("flashing {} board(s), {} at a time", list.len(), settings.parallel.max(1));
    let outcomes = flash::flash_all(&list, &settings, watcher.as_ref(), &|o| {
        eprintln!("  {}: {:?} in {:.1} s", o.destination, o.result, o.took.as_secs_f64());
    });
    print!("{}", flash::table(&outcomes));
    let good = |r: &flash::Result| matches!(r, flash::Result::Online | flash::Result::Installed);
    Ok(outcomes.iter().all(|o| good(&o.result)))
}
