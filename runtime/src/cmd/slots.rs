//! `drover-agent trust | install | boot | rollback | status`: the model store from the command
//! line, so an operator on the board (and the crash tests) can drive it without the daemon.

use std::path::PathBuf;

use anyhow::Context;
use drover_wire::Arch;
use drover_wire::manifest::AgentVersion;
use drover_wire::trust::SignedRoot;

use crate::store::{FailPoint, Store, StoreConfig, StoreSnapshot};
use crate::trust::DeviceFacts;

/// The agent's data directory (slots, state, trust).
#[derive(Debug, Clone, clap::Args)]
pub struct DataDir {
    /// The agent's data directory.
    #[arg(long, default_value = "/var/lib/drover")]
    pub data_dir: PathBuf,
}

impl DataDir {
    /// Opens the store with `failpoint` armed (crash tests only).
    pub fn open(&self, failpoint: FailPoint) -> anyhow::Result<Store> {
        let mut cfg = StoreConfig::new(&self.data_dir);
        cfg.failpoint = failpoint;
        Store::open(cfg).with_context(|| format!("open the store in {}", self.data_dir.display()))
    }
}

/// This agent's facts for bundle checks, at `now`.
pub fn device_facts(now: u64) -> DeviceFacts {
    let agent = AgentVersion::parse(env!("CARGO_PKG_VERSION")).unwrap_or(AgentVersion { major: 0, minor: 0, patch: 0 });
    DeviceFacts { arch: Arch::current().unwrap_or(Arch::X86_64), agent, now, highest_installed: 0 }
}

/// Arguments of `drover-agent trust`.
#[derive(Debug, clap::Args)]
pub struct TrustArgs {
    /// The data directory.
    #[command(flatten)]
    pub dir: DataDir,
    /// A root document: the fleet's first (provisioning) or the next version.
    #[arg(long)]
    pub root: PathBuf,
}

/// Provisions or advances the trust root.
pub fn trust(args: &TrustArgs, failpoint: FailPoint) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.root).with_context(|| format!("read {}", args.root.display()))?;
    let root: SignedRoot =
        serde_json::from_str(&text).with_context(|| format!("{} is not a root document", args.root.display()))?;
    let mut store = args.dir.open(failpoint)?;
    store.set_trust(&root)?;
    println!("trusting root v{} (expires at {})", root.doc.version, crate::rfc3339::rfc3339(root.doc.expires_at));
    Ok(())
}

/// Arguments of `drover-agent install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// The bundle (.drv).
    pub bundle: PathBuf,
    /// The data directory.
    #[command(flatten)]
    pub dir: DataDir,
}

/// Installs a bundle into the inactive slot and switches to it.
pub fn install(args: &InstallArgs, now: u64, failpoint: FailPoint) -> anyhow::Result<()> {
    let mut store = args.dir.open(failpoint)?;
    let file = std::fs::File::open(&args.bundle).with_context(|| format!("open {}", args.bundle.display()))?;
    let report = store
        .install(&mut std::io::BufReader::new(file), &device_facts(now))
        .with_context(|| format!("install {}", args.bundle.display()))?;
    println!(
        "installed {} v{} in slot {} ({} self-test case(s) passed)",
        report.name, report.version, report.slot, report.selftest_cases
    );
    Ok(())
}

/// Verifies a bundle and keeps it as the candidate for a shadow test, slots untouched.
pub fn stage(args: &InstallArgs, now: u64, failpoint: FailPoint) -> anyhow::Result<()> {
    let mut store = args.dir.open(failpoint)?;
    let file = std::fs::File::open(&args.bundle).with_context(|| format!("open {}", args.bundle.display()))?;
    let m = store
        .stage_candidate(&mut std::io::BufReader::new(file), &device_facts(now))
        .with_context(|| format!("stage {}", args.bundle.display()))?;
    println!("staged {} v{} as the candidate", m.name, m.version);
    Ok(())
}

/// Arguments of `drover-agent boot` and `drover-agent rollback`.
#[derive(Debug, clap::Args)]
pub struct SlotArgs {
    /// The data directory.
    #[command(flatten)]
    pub dir: DataDir,
}

/// The start-up check: boot counter, verification, health check, commit or rollback.
pub fn boot(args: &SlotArgs, failpoint: FailPoint) -> anyhow::Result<()> {
    let mut store = args.dir.open(failpoint)?;
    let outcome = store.boot()?;
    if let Some(from) = outcome.rolled_back_from {
        println!("rolled back from slot {from}");
    }
    match (&outcome.serving, store.state().active.and_then(|s| store.state().slot(s))) {
        (Some((slot, _)), Some(m)) => {
            let committed = if outcome.committed { ", committed now" } else { "" };
            println!("serving {} v{} from slot {slot}{committed}", m.name, m.version);
        }
        _ => println!("no model installed"),
    }
    Ok(())
}

/// Switches back to the previous model.
pub fn rollback(args: &SlotArgs, failpoint: FailPoint) -> anyhow::Result<()> {
    let mut store = args.dir.open(failpoint)?;
    let slot = store.rollback()?;
    let m = store.state().slot(slot).map(|m| format!("{} v{}", m.name, m.version)).unwrap_or_default();
    println!("rolled back to {m} in slot {slot}");
    Ok(())
}

/// Arguments of `drover-agent status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The data directory.
    #[command(flatten)]
    pub dir: DataDir,
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Prints the slots, the active one, trust and anti-rollback floors.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    // Read-only: the agent may be installing beside this very command (its staging stays).
    let store = StoreSnapshot::read(&args.dir.data_dir)
        .with_context(|| format!("read the store in {}", args.dir.data_dir.display()))?;
    let s = &store.state;
    if args.json {
        let v = serde_json::json!({
            "active": s.active,
            "pending": s.pending,
            "boot_attempts": s.boot_attempts,
            "previous": s.previous,
            "slots": {
                "a": s.slots[0].as_ref().map(|m| serde_json::json!({"name": m.name.as_str(), "version": m.version})),
                "b": s.slots[1].as_ref().map(|m| serde_json::json!({"name": m.name.as_str(), "version": m.version})),
            },
            "highest": s.highest,
            "trust_root_version": store.trust.as_ref().map(|t| t.root.version),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match &store.trust {
        Some(t) => println!("trust    {t}"),
        None => println!("trust    NOT PROVISIONED (drover-agent trust --root ROOT.json)"),
    }
    for id in [crate::store::SlotId::A, crate::store::SlotId::B] {
        let content =
            s.slot(id).map(|m| format!("{} v{} ({})", m.name, m.version, m.label)).unwrap_or_else(|| "empty".into());
        let mut marks = Vec::new();
        if s.active == Some(id) {
            marks.push(if s.pending { "ACTIVE, pending health check" } else { "ACTIVE" });
        }
        if s.previous == Some(id) {
            marks.push("previous");
        }
        println!(
            "slot {id}   {content}{}",
            if marks.is_empty() { String::new() } else { format!("  [{}]", marks.join(", ")) }
        );
    }
    for (name, v) in &s.highest {
        println!("floor    {name}: versions <= {v} are refused");
    }
    Ok(())
}

/// Arguments of `drover-agent command`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// A signed command (from `drover command`).
    pub command: PathBuf,
    /// The data directory.
    #[command(flatten)]
    pub dir: DataDir,
    /// This device's id.
    #[arg(long)]
    pub device: String,
    /// Groups this device belongs to.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The bundle an install command authorises.
    #[arg(long)]
    pub bundle: Option<PathBuf>,
}

/// Verifies and applies a signed operator command.
pub fn command(args: &CommandArgs, now: u64, failpoint: FailPoint) -> anyhow::Result<()> {
    use crate::store::CommandOutcome;
    let text = std::fs::read_to_string(&args.command).with_context(|| format!("read {}", args.command.display()))?;
    let signed: drover_wire::command::SignedCommand =
        serde_json::from_str(&text).with_context(|| format!("{} is not a signed command", args.command.display()))?;
    let mut store = args.dir.open(failpoint)?;
    let mut file = match &args.bundle {
        Some(p) => {
            Some(std::io::BufReader::new(std::fs::File::open(p).with_context(|| format!("open {}", p.display()))?))
        }
        None => None,
    };
    let bundle = file.as_mut().map(|f| f as &mut dyn std::io::Read);
    let outcome = store
        .apply_command(&signed, &args.device, &args.groups, &device_facts(now), bundle)
        .with_context(|| format!("command {}", args.command.display()))?;
    match outcome {
        CommandOutcome::RolledBack(slot) => println!("rolled back to slot {slot}"),
        CommandOutcome::Installed(r) => println!("installed {} v{} in slot {}", r.name, r.version, r.slot),
        CommandOutcome::Experiment(crate::store::Experiment::Shadow { name, version, sample_ppm }) => {
            println!("{name} v{version} will run in shadow on {sample_ppm} ppm of inferences when the agent runs")
        }
        CommandOutcome::ShadowStopped(true) => println!("shadow stopped"),
        CommandOutcome::ShadowStopped(false) => println!("no shadow was running"),
        CommandOutcome::Experiment(crate::store::Experiment::Split { name, a, b, b_ppm }) => {
            println!("{name} traffic will split v{a} / v{b} ({b_ppm} ppm of request keys to v{b}) when the agent runs")
        }
        CommandOutcome::SplitStopped(true) => println!("traffic split ended"),
        CommandOutcome::SplitStopped(false) => println!("no traffic split was running"),
    }
    Ok(())
}
