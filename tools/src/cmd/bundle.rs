//! `drover bundle`: package an ONNX model into a bundle, signed when a key is given.

use std::path::PathBuf;

use anyhow::Context;
use drover_wire::Arch;
use drover_wire::manifest::{AgentVersion, RuntimeSettings};

use super::sign::SignerArgs;
use crate::bundle_build::{BundleSpec, build};

/// Arguments of `drover bundle`.
#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The ONNX model (or give --mlflow).
    #[arg(required_unless_present = "mlflow", conflicts_with = "mlflow")]
    pub model: Option<PathBuf>,
    /// An MLflow model directory (MLmodel with the onnx flavor) instead of an ONNX file.
    #[arg(long)]
    pub mlflow: Option<PathBuf>,
    /// Model name (what delegations, slots and anti-rollback are keyed by).
    #[arg(long)]
    pub name: String,
    /// Version: an integer greater than every version of this model the fleet ran.
    #[arg(long)]
    pub version: u64,
    /// Human label (default: the version).
    #[arg(long)]
    pub label: Option<String>,
    /// Target architectures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "aarch64,armv7,x86_64", value_parser = parse_arch)]
    pub targets: Vec<Arch>,
    /// How long devices accept the bundle.
    #[arg(long, default_value = "90d", value_parser = super::parse_duration)]
    pub expires: std::time::Duration,
    /// Oldest agent version that can run it.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    pub min_agent: String,
    /// Samples (.jsonl or .npy) whose outputs through the engine become self-test vectors.
    #[arg(long)]
    pub selftest: Option<PathBuf>,
    /// How many samples to take for the self-test.
    #[arg(long, default_value_t = 8)]
    pub selftest_count: usize,
    /// Reference data (.jsonl or .npy: training or validation samples) whose statistics, through
    /// the engine, become the drift baseline shipped in the bundle.
    #[arg(long)]
    pub reference: Option<PathBuf>,
    /// Histogram bins per feature in the reference statistics.
    #[arg(long, default_value_t = 10, value_parser = bins)]
    pub reference_bins: usize,
    /// Names of the reference's features, comma-separated (tabular columns, in input order):
    /// drift alerts name features by them.
    #[arg(long, value_delimiter = ',', requires = "reference")]
    pub feature_names: Option<Vec<String>>,
    /// Telemetry period the agent should use, in seconds.
    #[arg(long)]
    pub telemetry_period: Option<u32>,
    /// Data-drift alert threshold (population stability index, e.g. 0.2).
    #[arg(long)]
    pub drift_psi: Option<f64>,
    /// Sign with a release key (else write an unsigned bundle for `drover sign`).
    #[command(flatten)]
    pub signer: SignerArgs,
    /// Where to write the bundle.
    #[arg(long)]
    pub out: PathBuf,
}

/// Parses an architecture name.
pub fn parse_arch(s: &str) -> Result<Arch, String> {
    Arch::parse(s).ok_or_else(|| format!("unknown architecture '{s}' (aarch64, armv7, x86_64)"))
}

/// Builds, optionally signs, and writes the bundle.
pub fn run(args: &BundleArgs, now: u64) -> anyhow::Result<()> {
    let min_agent = AgentVersion::parse(&args.min_agent)
        .with_context(|| format!("--min-agent '{}' is not MAJOR.MINOR.PATCH", args.min_agent))?;
    let (model, mlflow) = match (&args.model, &args.mlflow) {
        (Some(m), None) => (m.clone(), None),
        (None, Some(dir)) => {
            let imported = crate::mlflow::read(dir)?;
            (imported.onnx.clone(), Some(imported))
        }
        _ => anyhow::bail!("give an ONNX model or --mlflow DIR"),
    };
    let spec = BundleSpec {
        model: model.clone(),
        name: args.name.clone(),
        version: args.version,
        label: args.label.clone().unwrap_or_else(|| args.version.to_string()),
        targets: args.targets.clone(),
        created_at: now,
        expires_at: now + args.expires.as_secs(),
        min_agent,
        selftest_from: args.selftest.clone(),
        selftest_count: args.selftest_count,
        reference_from: args.reference.clone(),
        reference_bins: args.reference_bins,
        feature_names: args.feature_names.clone(),
        settings: RuntimeSettings {
            telemetry_period_s: args.telemetry_period,
            drift_psi_milli: match args.drift_psi {
                Some(psi) if psi.is_finite() && psi > 0.0 && psi < 100.0 => Some((psi * 1000.0).round() as u32),
                Some(psi) => anyhow::bail!("--drift-psi {psi}: give a positive number such as 0.2"),
                None => None,
            },
        },
    };
    let mut bundle = build(&spec).with_context(|| format!("bundle {}", model.display()))?;
    if let Some(imported) = &mlflow {
        imported.check(&bundle.header.manifest.inputs, &bundle.header.manifest.outputs)?;
    }
    let signed = match args.signer.load()? {
        Some(signer) => {
            bundle.sign(&signer)?;
            true
        }
        None => false,
    };
    bundle.write(&args.out)?;
    let m = &bundle.header.manifest;
    println!(
        "{} v{} ({}) -> {} [{}; {} file(s), {} bytes]",
        m.name,
        m.version,
        m.label,
        args.out.display(),
        if signed { "signed" } else { "UNSIGNED: run drover sign" },
        m.files.len(),
        m.payload_size()
    );
    Ok(())
}

/// Reference bins: 1 to what the agent's drift monitor holds.
fn bins(s: &str) -> Result<usize, String> {
    let max = drover_runtime::reference::MAX_BINS;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("a whole number from 1 to {max}")),
    }
}
