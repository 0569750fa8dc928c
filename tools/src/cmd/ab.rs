//! `drover ab --a V1 --b V2 --split 90/10 (--device ID | --group G) [--stage BUNDLE]`: split the
//! live traffic of the devices between the version they serve (A) and another (B: the staged
//! candidate, the previous slot, or the bundle `--stage` pushes first), by request key, with a
//! signed command. The devices report each variant's latency, classes and labelled accuracy in
//! their telemetry; the local API says which variant answered. `drover ab --stop` ends it.

use std::path::PathBuf;
use std::time::Duration;

use drover_wire::command::Operation;

use super::broker_args::BrokerArgs;
use super::shadow::{Order, stage};

/// Arguments of `drover ab`.
#[derive(Debug, clap::Args)]
pub struct AbArgs {
    /// Variant A: the version the devices serve.
    #[arg(long, required_unless_present = "stop")]
    pub a: Option<u64>,
    /// Variant B: the staged candidate's or the previous slot's version.
    #[arg(long, required_unless_present = "stop")]
    pub b: Option<u64>,
    /// Traffic shares of A and B, e.g. `90/10`.
    #[arg(long, default_value = "50/50")]
    pub split: String,
    /// Stage this signed bundle (version B) as the devices' candidate first.
    #[arg(long)]
    pub stage: Option<PathBuf>,
    /// End the split instead: every request goes to the served model again.
    #[arg(long, conflicts_with_all = ["a", "b", "stage"])]
    pub stop: bool,
    /// One device.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    pub device: Option<String>,
    /// Every device of a group.
    #[arg(long)]
    pub group: Option<String>,
    /// The operator secret key.
    #[arg(long)]
    pub key: PathBuf,
    /// The operator key's delegation.
    #[arg(long)]
    pub delegation: PathBuf,
    /// How long to wait for the devices at each step.
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Bytes per chunk of the staging push.
    #[arg(long, default_value_t = 32 * 1024)]
    pub chunk_size: u32,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// B's share of `A/B` (two non-negative numbers, not both zero) in parts per million.
pub fn b_ppm(split: &str) -> anyhow::Result<u32> {
    let bad = || anyhow::anyhow!("--split '{split}' must be two shares A/B such as 90/10");
    let (a, b) = split.split_once('/').ok_or_else(bad)?;
    let a: f64 = a.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
    let b: f64 = b.trim().trim_end_matches('%').parse().map_err(|_| bad())?;
    anyhow::ensure!(a.is_finite() && b.is_finite() && a >= 0.0 && b >= 0.0 && a + b > 0.0, bad());
    Ok((b / (a + b) * 1e6).round() as u32)
}

/// Stages B if asked, then starts (or stops) the split; true when every device did.
pub fn run(args: &AbArgs, now_ms: u64) -> anyhow::Result<bool> {
    let (target, audience) = super::command::target(args.device.as_deref(), args.group.as_deref())?;
    let mut signed_at = now_ms;
    let (op, what) = match (args.a, args.b) {
        (Some(a), Some(b)) if !args.stop => {
            anyhow::ensure!(a != b, "--a and --b are the same version");
            let b_ppm = b_ppm(&args.split)?;
            if let Some(path) = &args.stage {
                let Some(staged) = stage(path, &audience, args.chunk_size, args.timeout, &args.broker, now_ms)? else {
                    eprintln!("error: not every device staged variant B; no split command sent");
                    return Ok(false);
                };
                anyhow::ensure!(
                    staged.version == b,
                    "{} holds version {}, not --b {b}",
                    path.display(),
                    staged.version
                );
                signed_at = staged.done_ms;
            }
            let what = format!("split of {:.2} % of request keys to v{b}, the rest to v{a}", f64::from(b_ppm) / 1e4);
            (Operation::Split { a, b, b_ppm }, what)
        }
        _ => (Operation::StopSplit, "end of the traffic split".to_string()),
    };
    let order = Order { target, audience, key: &args.key, delegation: &args.delegation, timeout: args.timeout };
    order.send(op, &what, &args.broker, signed_at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_split_is_two_shares() {
        assert_eq!(b_ppm("90/10").unwrap(), 100_000);
        assert_eq!(b_ppm("50/50").unwrap(), 500_000);
        assert_eq!(b_ppm("3/1").unwrap(), 250_000);
        assert_eq!(b_ppm("99.5% / 0.5%").unwrap(), 5_000);
        assert_eq!(b_ppm("0/100").unwrap(), 1_000_000);
        assert_eq!(b_ppm("100/0").unwrap(), 0);
        for bad in ["90", "0/0", "-10/110", "a/b", "90/10/0", "inf/1", ""] {
            assert!(b_ppm(bad).is_err(), "{bad}");
        }
    }
}
