//! `drover demo`: the whole life cycle on this machine (see [`crate::demo`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::demo::{DemoOptions, run as run_demo};

/// Arguments of `drover demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Simulated devices (real agents in this process).
    #[arg(long, default_value_t = 10)]
    pub devices: usize,
    /// Stop after this long (the steps take about half a minute; the fleet keeps running after
    /// them, for the dashboard).
    #[arg(long, default_value = "120s", value_parser = parse_seconds)]
    pub duration: Duration,
    /// Keep the demo's files (keys, bundles, data dirs, fleet database) in this empty directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// The dashboard's port on 127.0.0.1 (default: a free one).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

/// A duration: plain seconds (`30`) or humantime (`2m`).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => super::parse_duration(s),
    }
}

/// Runs the demo; true when every step ran and worked, or Ctrl-C / the duration cut it short.
pub fn run(args: &DemoArgs, now_ms: u64) -> anyhow::Result<bool> {
    let stop = super::stop_on_ctrl_c()?;
    let opts =
        DemoOptions { devices: args.devices, duration: args.duration, keep: args.keep.clone(), http_port: args.port };
    let outcome = run_demo(&opts, &stop, &mut std::io::stdout(), now_ms / 1000)?;
    if outcome.story_done {
        println!(
            "Done: {} alert(s), rollout {}, {} requests answered.",
            outcome.alerts,
            outcome.rollout.as_deref().unwrap_or("-"),
            outcome.answered
        );
    }
    Ok(true)
}
