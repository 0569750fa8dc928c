//! The `drover` command line: argument types and dispatch, so tests can drive it in-process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd;

/// Drover's operator CLI.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about = "Drover operator CLI: models for a fleet of edge boards")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Verb,
}

/// The verbs that exist today.
#[derive(Debug, Subcommand)]
pub enum Verb {
    /// The whole life cycle on this machine in one process: broker, fleet server, simulated
    /// devices, a push, drift, a staged rollout (prints the dashboard's URL).
    Demo(cmd::demo::DemoArgs),
    /// Run many real agents in this process against a broker, with a traffic and fault profile
    /// (prints the fleet's figures, memory per device among them).
    Simulate(cmd::simulate::SimulateArgs),
    /// Run one real agent process for a long time (an hour by default) under inference,
    /// telemetry, drift and regular updates, and report whether its memory, descriptors or
    /// data dir grow (exit 1 if requests failed).
    Soak(cmd::soak::SoakArgs),
    /// Show what a bundle or an ONNX model holds (exit 1 for a model the agent cannot run).
    Inspect(cmd::inspect::InspectArgs),
    /// Quantize an fp32 ONNX model to int8 (static, calibrated through tract), standard ONNX
    /// operators only; prints the size saved and the accuracy lost on held-out samples.
    Quantize(cmd::quantize::QuantizeArgs),
    /// Make an Ed25519 key pair (root, release or operator).
    Keygen(cmd::keygen::KeygenArgs),
    /// Start, rotate or revoke within the fleet's root of trust.
    #[command(subcommand)]
    Root(cmd::root::RootCommand),
    /// Let a release key sign bundles of some models.
    Delegate(cmd::delegate::DelegateArgs),
    /// Package an ONNX model into a bundle (signed when --key is given).
    Bundle(cmd::bundle::BundleArgs),
    /// Sign a bundle with a release key.
    Sign(cmd::sign::SignArgs),
    /// Check a bundle as a device would: container, signatures, model load, self-test.
    Verify(cmd::verify::VerifyArgs),
    /// Sign an order (rollback, install, shadow, split) for a device or a group, to a file.
    Command(cmd::command::CommandArgs),
    /// Push a signed bundle to devices over MQTT and follow each one to the end (exit 1 if any
    /// device did not install it).
    Push(cmd::push::PushArgs),
    /// Send a signed rollback command over MQTT and wait for the devices' reports.
    Rollback(cmd::rollback::RollbackArgs),
    /// Stage a candidate bundle and run it in shadow of the served model (signed command).
    Shadow(cmd::shadow::ShadowArgs),
    /// Split live traffic between two model versions by request key, an A/B test (signed
    /// command).
    Ab(cmd::ab::AbArgs),
    /// Run the embedded MQTT broker.
    Broker(cmd::broker::BrokerCmdArgs),
    /// Print a Drover MQTT payload as JSON.
    Decode(cmd::decode::DecodeArgs),
    /// Print every Drover message on the broker as JSON lines.
    Watch(cmd::decode::WatchArgs),
    /// Show the fleet's alerts (drift, degradation, retrain) and run a hook for each (exit 1 if
    /// a hook failed).
    Alerts(cmd::alerts::AlertsArgs),
    /// Send the true labels of earlier predictions to a device.
    Feedback(cmd::feedback::FeedbackArgs),
    /// The fleet server (`serve`) and its views: `status`, `watch`, `device`.
    #[command(subcommand)]
    Fleet(cmd::fleet::FleetCommand),
    /// The agent as a Debian package for a board (static aarch64, armv7, x86_64), with its
    /// systemd unit.
    Package(cmd::package::PackageArgs),
    /// The fleet's certificate authority: `init`, `server` (the broker's certificate).
    #[command(subcommand)]
    Ca(cmd::ca::CaCommand),
    /// One device's configuration, credentials and trust root, to a directory.
    Provision(cmd::provision::ProvisionArgs),
    /// The broker's access rules for a fleet (Mosquitto `acl_file`, `password_file`): each
    /// device publishes only as itself and reads only its own and its groups' topics.
    Acl(cmd::acl::AclArgs),
    /// Install the package and a device's provisioning on boards over SSH, start the agent and
    /// wait until it is online (exit 1 if any board is not).
    Flash(cmd::flash::FlashArgs),
    /// Staged rollouts run by the fleet server: `create`, `status`, `pause`, `resume`, `abort`.
    #[command(subcommand)]
    Rollout(cmd::rollout::RolloutCommand),
}

/// Runs a parsed command line at time `now_ms` (Unix milliseconds: the clock is read by the
/// binary).
pub fn run(cli: Cli, now_ms: u64) -> anyhow::Result<ExitCode> {
    let now = now_ms / 1000;
    let ok = match cli.command {
        Verb::Demo(args) => cmd::demo::run(&args, now_ms)?,
        Verb::Simulate(args) => cmd::simulate::run(&args)?,
        Verb::Soak(args) => cmd::soak::run(&args, now_ms)?,
        Verb::Inspect(args) => cmd::inspect::run(&args)?,
        Verb::Quantize(args) => cmd::quantize::run(&args)?,
        Verb::Keygen(args) => cmd::keygen::run(&args).map(|_| true)?,
        Verb::Root(c) => cmd::root::run(&c, now).map(|_| true)?,
        Verb::Delegate(args) => cmd::delegate::run(&args, now).map(|_| true)?,
        Verb::Bundle(args) => cmd::bundle::run(&args, now).map(|_| true)?,
        Verb::Sign(args) => cmd::sign::run(&args).map(|_| true)?,
        Verb::Verify(args) => cmd::verify::run(&args, now)?,
        Verb::Command(args) => cmd::command::run(&args, now_ms).map(|_| true)?,
        Verb::Push(args) => cmd::push::run(&args, now_ms)?,
        Verb::Rollback(args) => cmd::rollback::run(&args, now_ms)?,
        Verb::Shadow(args) => cmd::shadow::run(&args, now_ms)?,
        Verb::Ab(args) => cmd::ab::run(&args, now_ms)?,
        Verb::Broker(args) => cmd::broker::run(&args).map(|_| true)?,
        Verb::Decode(args) => cmd::decode::run(&args).map(|_| true)?,
        Verb::Watch(args) => cmd::decode::watch(&args).map(|_| true)?,
        Verb::Alerts(args) => cmd::alerts::run(&args)?,
        Verb::Fleet(c) => cmd::fleet::run(&c)?,
        Verb::Rollout(c) => cmd::rollout::run(&c)?,
        Verb::Package(args) => cmd::package::run(&args).map(|_| true)?,
        Verb::Ca(c) => cmd::ca::run(&c, now).map(|_| true)?,
        Verb::Provision(args) => cmd::provision::run(&args, now).map(|_| true)?,
        Verb::Acl(args) => cmd::acl::run(&args).map(|_| true)?,
        Verb::Flash(args) => cmd::flash::run(&args)?,
        Verb::Feedback(args) => {
            let n = cmd::feedback::run(&args)?;
            eprintln!("sent {n} labels to {}", args.device);
            true
        }
    };
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
