//! `drover inspect`: what a bundle or an ONNX model holds, for a person or (`--json`) a script.

use std::io::Read;
use std::path::PathBuf;

use drover_runtime::bundle::{Limits, MAGIC};
use drover_runtime::cmd::inspect::{self as model_inspect, InspectArgs as ModelInspectArgs};
use serde::Serialize;

use crate::bundle_build::Bundle;
use crate::keys::id_of;

/// Arguments of `drover inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A bundle (.drv) or an ONNX model.
    pub file: PathBuf,
    /// Print JSON instead of the human report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct BundleReport {
    kind: &'static str,
    name: String,
    version: u64,
    label: String,
    created_at: String,
    expires_at: String,
    targets: Vec<String>,
    min_agent: String,
    inputs: Vec<String>,
    outputs: Vec<String>,
    files: Vec<FileReport>,
    signed: bool,
    release_key: Option<String>,
    delegated_names: Vec<String>,
    delegation_expires_at: Option<String>,
    delegation_root_version: Option<u64>,
    root_chain: Vec<u64>,
    telemetry_period_s: Option<u32>,
    drift_psi: Option<f64>,
    reference: Option<drover_runtime::reference::ReferenceStats>,
}

#[derive(Serialize)]
struct FileReport {
    role: String,
    name: String,
    size: u64,
    sha256: String,
}

/// Prints the report; returns whether the file is usable (a model the agent can run, or a
/// well-formed bundle).
pub fn run(args: &InspectArgs) -> anyhow::Result<bool> {
    let mut magic = [0u8; 8];
    let is_bundle = std::fs::File::open(&args.file)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == MAGIC)
        .unwrap_or(false);
    if !is_bundle {
        let model_args = ModelInspectArgs { model: args.file.clone(), json: args.json };
        return model_inspect::run(&model_args, &mut std::io::stdout().lock());
    }
    let bundle = Bundle::read(&args.file, &Limits::default())?;
    let h = &bundle.header;
    let m = &h.manifest;
    let signed = bundle.is_signed();
    let report = BundleReport {
        kind: "bundle",
        name: m.name.to_string(),
        version: m.version,
        label: m.label.to_string(),
        created_at: super::rfc3339(m.created_at),
        expires_at: super::rfc3339(m.expires_at),
        targets: m.targets.iter().map(|a| a.to_string()).collect(),
        min_agent: m.min_agent.to_string(),
        inputs: m.inputs.iter().map(|s| s.to_string()).collect(),
        outputs: m.outputs.iter().map(|s| s.to_string()).collect(),
        files: m
            .files
            .iter()
            .map(|f| FileReport {
                role: format!("{:?}", f.role),
                name: f.name.to_string(),
                size: f.size,
                sha256: hex::encode(f.sha256),
            })
            .collect(),
        signed,
        release_key: signed.then(|| id_of(&h.delegation.delegation.key)),
        delegated_names: h.delegation.delegation.names.iter().map(|n| n.to_string()).collect(),
        delegation_expires_at: signed.then(|| super::rfc3339(h.delegation.delegation.expires_at)),
        delegation_root_version: signed.then_some(h.delegation.root_version),
        root_chain: h.roots.iter().map(|r| r.doc.version).collect(),
        telemetry_period_s: m.settings.telemetry_period_s,
        drift_psi: m.settings.drift_psi_milli.map(|m| f64::from(m) / 1000.0),
        reference: bundle
            .file(drover_wire::FileRole::ReferenceStats)
            .map(serde_json::from_slice)
            .transpose()
            .map_err(|e| anyhow::anyhow!("reference.json: {e}"))?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(true);
    }
    println!("bundle       {} ({} bytes of payload)", args.file.display(), m.payload_size());
    println!("model        {} v{} ({})", report.name, report.version, report.label);
    println!("created      {}", report.created_at);
    println!("expires      {}", report.expires_at);
    println!("targets      {}", report.targets.join(", "));
    println!("min agent    {}", report.min_agent);
    println!("inputs       {}", report.inputs.join("; "));
    println!("outputs      {}", report.outputs.join("; "));
    println!("files");
    for f in &report.files {
        println!("  {:<16} {:<10} {:>10} bytes  sha256 {}", f.name, f.role, f.size, &f.sha256[..16]);
    }
    if signed {
        println!(
            "signed by    release key {} (delegated for {} until {}, root v{})",
            report.release_key.as_deref().unwrap_or("?"),
            report.delegated_names.join(", "),
            report.delegation_expires_at.as_deref().unwrap_or("?"),
            report.delegation_root_version.unwrap_or(0)
        );
    } else {
        println!("signed by    nobody: UNSIGNED (drover sign)");
    }
    if !report.root_chain.is_empty() {
        println!("root chain   v{}", report.root_chain.iter().map(u64::to_string).collect::<Vec<_>>().join(", v"));
    }
    if let Some(r) = &report.reference {
        println!(
            "reference    {} samples of '{}', {} feature(s) ({:?})",
            r.samples,
            r.input,
            r.features.len(),
            r.layout
        );
        for (i, f) in r.features.iter().enumerate().take(8) {
            println!(
                "  feature {i:<3} mean {:>10.4} std {:>10.4} range [{:.4}, {:.4}] {} bins",
                f.mean,
                f.std,
                f.min,
                f.max,
                f.counts.len()
            );
        }
        if r.features.len() > 8 {
            println!("  … {} more", r.features.len() - 8);
        }
        for o in &r.outputs {
            let classes: Vec<String> = o.classes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
            println!("  output {} ({}) classes {{{}}}", o.name, o.kind, classes.join(", "));
        }
    }
    if let Some(p) = report.telemetry_period_s {
        println!("settings     telemetry every {p} s");
    }
    if let Some(psi) = report.drift_psi {
        println!("settings     drift alert at PSI {psi}");
    }
    Ok(true)
}
