//! `drover verify`: check a bundle exactly as a device would, before pushing it to any.

use std::path::PathBuf;

use drover_runtime::bundle::Limits;
use drover_runtime::bundle::selftest::run_selftest;
use drover_runtime::trust::{DeviceFacts, TrustState, verify_header};
use drover_wire::Arch;
use drover_wire::manifest::{AgentVersion, FileRole};

use crate::bundle_build::Bundle;
use crate::trust_docs::load_root;

/// Arguments of `drover verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The bundle.
    pub bundle: PathBuf,
    /// The root document devices are provisioned with.
    #[arg(long)]
    pub root: PathBuf,
    /// Check as a device of this architecture (default: this machine's).
    #[arg(long, value_parser = super::bundle::parse_arch)]
    pub arch: Option<Arch>,
    /// Check as an agent of this version (default: this tool's version).
    #[arg(long)]
    pub agent_version: Option<String>,
    /// Highest version of this model the device ever installed.
    #[arg(long, default_value_t = 0)]
    pub installed: u64,
}

/// Runs every check; returns whether the bundle passed.
pub fn run(args: &VerifyArgs, now: u64) -> anyhow::Result<bool> {
    let bundle = Bundle::read(&args.bundle, &Limits::default())?;
    println!("ok   container, sizes and SHA-256 of {} file(s)", bundle.files.len());
    if !bundle.is_signed() {
        println!("FAIL not signed: run drover sign");
        return Ok(false);
    }
    let root = load_root(&args.root)?;
    let agent = match &args.agent_version {
        Some(v) => {
            AgentVersion::parse(v).ok_or_else(|| anyhow::anyhow!("--agent-version '{v}' is not MAJOR.MINOR.PATCH"))?
        }
        None => AgentVersion::parse(env!("CARGO_PKG_VERSION")).unwrap_or(AgentVersion { major: 0, minor: 0, patch: 0 }),
    };
    let arch = args.arch.or(Arch::current()).unwrap_or(Arch::X86_64);
    let device = DeviceFacts { arch, agent, now, highest_installed: args.installed };
    match verify_header(&bundle.header, &TrustState { root: root.doc }, &device) {
        Ok(v) => println!(
            "ok   signature chain: root v{}, release key delegated for '{}'",
            v.trust.root.version, v.manifest.name
        ),
        Err(refusal) => {
            println!("FAIL {refusal}");
            return Ok(false);
        }
    }
    if bundle.file(FileRole::Model).is_none() {
        println!("FAIL no model file");
        return Ok(false);
    }
    let mut model = match bundle.load_model() {
        Ok(m) => m,
        Err(e) => {
            println!("FAIL model does not load: {e}");
            return Ok(false);
        }
    };
    println!("ok   model loads in {:.1} ms", model.timings().total_us() as f64 / 1000.0);
    match bundle.file(FileRole::SelfTest) {
        Some(text) => match run_selftest(&mut model, &String::from_utf8_lossy(text)) {
            Ok(n) => println!("ok   self-test: {n} case(s) match"),
            Err(e) => {
                println!("FAIL {e}");
                return Ok(false);
            }
        },
        None => println!("note no self-test vectors in this bundle (drover bundle --selftest SAMPLES)"),
    }
    Ok(true)
}
