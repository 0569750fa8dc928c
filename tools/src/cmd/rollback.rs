//! `drover rollback (--device ID | --group G)`: sign a rollback command with an operator key,
//! send it over MQTT, and wait for each device's report.

use std::path::PathBuf;
use std::time::Duration;

use drover_wire::command::Operation;

use super::broker_args::BrokerArgs;
use super::push::{SETTLE, drive, report};
use crate::push::{Campaign, Tracker, Work};

/// Arguments of `drover rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
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
    /// How long to wait for the devices' reports.
    #[arg(long, default_value = "2m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Sends the command; true when every device rolled back.
pub fn run(args: &RollbackArgs, now_ms: u64) -> anyhow::Result<bool> {
    let (target, audience) = super::command::target(args.device.as_deref(), args.group.as_deref())?;
    // The command outlives the wait a little, so a device that reconnects at the last moment
    // still takes it from its persistent session.
    let expires = args.timeout + Duration::from_secs(60);
    let (signed, key_id) =
        super::command::sign(target, Operation::Rollback, &args.key, &args.delegation, expires, now_ms)?;
    let settings = args.broker.settings()?;
    eprintln!("rollback for {} signed by operator key {key_id}, via {}", audience.describe(), settings.address());
    let tracker = Tracker::new(audience, 0, SETTLE.as_millis() as u64, args.timeout.as_millis() as u64);
    let mut campaign = Campaign::new(Work::Command(Box::new(signed)), tracker, args.broker.payload);
    let outcome = drive(&mut campaign, &[], None, &settings)?;
    Ok(report(&campaign, &outcome, &settings.address()))
}
