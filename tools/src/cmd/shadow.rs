//! `drover shadow BUNDLE (--device ID | --group G) [--sample-rate R]`: stage a signed bundle on
//! the devices as their candidate (pushed over MQTT, verified there, the served model untouched),
//! then send a signed command that runs it in shadow on a share of the live inputs. The devices
//! report how it compares in their telemetry. `drover shadow --stop` ends it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use drover_runtime::bundle::{Limits, read_header};
use drover_wire::command::Operation;
use drover_wire::message::Purpose;

use super::broker_args::BrokerArgs;
use super::push::{SETTLE, drive, report};
use crate::push::{Campaign, Tracker, Work};

/// Arguments of `drover shadow`.
#[derive(Debug, clap::Args)]
pub struct ShadowArgs {
    /// The signed bundle (.drv) of the candidate.
    #[arg(required_unless_present = "stop")]
    pub bundle: Option<PathBuf>,
    /// End the shadow test instead (the candidate stays staged).
    #[arg(long, conflicts_with_all = ["bundle", "sample_rate"])]
    pub stop: bool,
    /// One device.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    pub device: Option<String>,
    /// Every device of a group.
    #[arg(long)]
    pub group: Option<String>,
    /// Share of the live inferences the candidate also answers, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    pub sample_rate: f64,
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

/// The rate as parts per million, refusing what is not a share.
pub fn sample_ppm(rate: f64) -> anyhow::Result<u32> {
    anyhow::ensure!(rate > 0.0 && rate <= 1.0, "--sample-rate {rate} must be in (0, 1]");
    Ok(((rate * 1e6).round() as u32).max(1))
}

/// Stages and starts the shadow test (or stops it); true when every device did.
pub fn run(args: &ShadowArgs, now_ms: u64) -> anyhow::Result<bool> {
    let (target, audience) = super::command::target(args.device.as_deref(), args.group.as_deref())?;
    let mut signed_at = now_ms;
    let op = match &args.bundle {
        Some(path) if !args.stop => {
            let sample_ppm = sample_ppm(args.sample_rate)?;
            let Some(staged) = stage(path, &audience, args.chunk_size, args.timeout, &args.broker, now_ms)? else {
                eprintln!("error: not every device staged the candidate; no shadow command sent");
                return Ok(false);
            };
            signed_at = staged.done_ms;
            Operation::Shadow { name: staged.name, version: staged.version, sample_ppm }
        }
        _ => Operation::StopShadow,
    };
    let what = match &op {
        Operation::Shadow { name, version, sample_ppm } => {
            format!("shadow of {name} v{version} on {:.2} % of inferences", f64::from(*sample_ppm) / 1e4)
        }
        _ => "end of the shadow test".to_string(),
    };
    let order = Order { target, audience, key: &args.key, delegation: &args.delegation, timeout: args.timeout };
    order.send(op, &what, &args.broker, signed_at)
}

/// A bundle staged as the devices' candidate.
pub struct Staged {
    /// Its model name.
    pub name: heapless::String<{ drover_wire::manifest::MAX_NAME }>,
    /// Its version.
    pub version: u64,
    /// Unix ms when the staging push ended: commands are numbered by time, so sign after it.
    pub done_ms: u64,
}

/// Pushes the signed bundle at `path` to `audience` as their candidate (verified there, the
/// served model untouched). `None` when not every device staged it.
pub fn stage(
    path: &std::path::Path,
    audience: &crate::push::Audience,
    chunk_size: u32,
    timeout: Duration,
    broker: &BrokerArgs,
    now_ms: u64,
) -> anyhow::Result<Option<Staged>> {
    let settings = broker.settings()?;
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let header = read_header(&mut bytes.as_slice(), &Limits::default())
        .with_context(|| format!("{} is not a Drover bundle", path.display()))?;
    anyhow::ensure!(header.is_signed(), "{} is not signed: `drover sign` it first", path.display());
    let m = &header.manifest;
    let announce = drover_wire::message::Announce {
        purpose: Purpose::Stage,
        ..crate::push::campaign::announce(&bytes, &m.name, m.version, chunk_size, now_ms)?
    };
    eprintln!(
        "staging {} v{} ({} bytes) as the candidate on {} via {}",
        m.name,
        m.version,
        bytes.len(),
        audience.describe(),
        settings.address()
    );
    let tracker = Tracker::new(audience.clone(), 0, SETTLE.as_millis() as u64, timeout.as_millis() as u64);
    let mut stage = Campaign::new(Work::Bundle { announce }, tracker, broker.payload);
    let outcome = drive(&mut stage, &bytes, None, &settings)?;
    if !report(&stage, &outcome, &settings.address()) {
        return Ok(None);
    }
    let done_ms = now_ms + outcome.elapsed.as_millis() as u64;
    Ok(Some(Staged { name: super::command::name(&m.name)?, version: m.version, done_ms }))
}

/// A signed order to send over MQTT and follow until every device answered.
pub struct Order<'a> {
    /// Who it is for.
    pub target: drover_wire::command::Target,
    /// The devices to hear from.
    pub audience: crate::push::Audience,
    /// The operator secret key.
    pub key: &'a std::path::Path,
    /// Its delegation.
    pub delegation: &'a std::path::Path,
    /// How long to wait for the devices.
    pub timeout: Duration,
}

impl Order<'_> {
    /// Signs `op` at `signed_at` (Unix ms), sends it and reports; true when every device applied it.
    pub fn send(self, op: Operation, what: &str, broker: &BrokerArgs, signed_at: u64) -> anyhow::Result<bool> {
        let settings = broker.settings()?;
        let expires = self.timeout + Duration::from_secs(60);
        let (signed, key_id) = super::command::sign(self.target, op, self.key, self.delegation, expires, signed_at)?;
        eprintln!("{what} for {} signed by operator key {key_id}", self.audience.describe());
        let tracker = Tracker::new(self.audience, 0, SETTLE.as_millis() as u64, self.timeout.as_millis() as u64);
        let mut campaign = Campaign::new(Work::Command(Box::new(signed)), tracker, broker.payload);
        let outcome = drive(&mut campaign, &[], None, &settings)?;
        Ok(report(&campaign, &outcome, &settings.address()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_rate_is_a_share() {
        assert_eq!(sample_ppm(1.0).unwrap(), 1_000_000);
        assert_eq!(sample_ppm(0.1).unwrap(), 100_000);
        assert_eq!(sample_ppm(1e-9).unwrap(), 1, "never zero: a shadow that sees nothing is a mistake");
        for bad in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(sample_ppm(bad).is_err(), "{bad}");
        }
    }
}
