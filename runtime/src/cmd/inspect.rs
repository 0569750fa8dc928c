//! `drover-agent inspect`: what a model is, whether Drover can run it, and what loading costs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::engine::opcheck::{UnsupportedAttribute, UnsupportedOp, hint, refusals};
use crate::engine::proto::{
    DeclaredValue, QuantStyle, declared_io, decode, op_histogram, parameter_bytes, quant_style,
};
use crate::engine::{BatchAxis, LoadError, Model, Stage};
use serde::Serialize;

/// What to inspect.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The ONNX model.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Print one JSON object instead of the human report.
    #[arg(long)]
    pub json: bool,
}

/// Everything `inspect` found, as printed with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The model file.
    pub file: PathBuf,
    /// Its size in bytes.
    pub file_bytes: u64,
    /// The exporter that wrote it (`producer_name producer_version`).
    pub producer: String,
    /// ONNX IR version.
    pub ir_version: i64,
    /// Operator sets imported, by domain.
    pub opsets: BTreeMap<String, i64>,
    /// Declared inputs (initializers excluded).
    pub inputs: Vec<DeclaredValue>,
    /// Declared outputs.
    pub outputs: Vec<DeclaredValue>,
    /// How the model is quantized.
    pub quantization: QuantStyle,
    /// Bytes of weights and constants.
    pub parameter_bytes: u64,
    /// Nodes, subgraphs included.
    pub nodes: usize,
    /// Count of each `domain::op`.
    pub ops: BTreeMap<String, usize>,
    /// Operators Drover cannot run (empty when it can run them all).
    pub unsupported: Vec<UnsupportedOp>,
    /// Nodes written with attributes the engine would ignore, so it refuses them (empty when
    /// there are none).
    pub unsupported_attributes: Vec<UnsupportedAttribute>,
    /// What happened when the model was loaded through every stage.
    pub load: LoadOutcome,
}

/// The result of loading the model for real.
#[derive(Debug, Clone, Serialize)]
pub struct LoadOutcome {
    /// Whether the model is ready to serve.
    pub ok: bool,
    /// The first failure, if any.
    pub error: Option<String>,
    /// Stage timings in microseconds, for the stages that completed.
    pub stages_us: Vec<(Stage, u64)>,
    /// How samples are batched, once loaded.
    pub batch: Option<BatchAxis>,
}

/// Why there is nothing to report at all.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be read or is not ONNX.
    #[error("{path}: {error}")]
    Unreadable {
        /// The model file.
        path: PathBuf,
        /// Why.
        error: LoadError,
    },
}

/// Inspects the model at `path`, loading it through every stage.
pub fn inspect(path: &Path) -> Result<InspectReport, InspectError> {
    let unreadable = |error| InspectError::Unreadable { path: path.to_path_buf(), error };
    let bytes = std::fs::read(path).map_err(|error| unreadable(LoadError::Read { path: path.to_path_buf(), error }))?;
    let proto = decode(&bytes).map_err(unreadable)?;
    let (inputs, outputs) = declared_io(&proto).map_err(unreadable)?;
    let refusals = refusals(&proto);
    let ops = op_histogram(&proto);
    let load = match Model::load(path) {
        Ok(model) => LoadOutcome {
            ok: true,
            error: None,
            stages_us: model.timings().stages.clone(),
            batch: Some(model.signature().batch.clone()),
        },
        Err(e) => LoadOutcome { ok: false, error: Some(e.to_string()), stages_us: Vec::new(), batch: None },
    };
    Ok(InspectReport {
        file: path.to_path_buf(),
        file_bytes: bytes.len() as u64,
        producer: format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string(),
        ir_version: proto.ir_version,
        opsets: proto
            .opset_import
            .iter()
            .map(|o| (if o.domain.is_empty() { "ai.onnx".to_string() } else { o.domain.clone() }, o.version))
            .collect(),
        inputs,
        outputs,
        quantization: quant_style(&proto),
        parameter_bytes: parameter_bytes(&proto),
        nodes: ops.values().sum(),
        ops,
        unsupported: refusals.ops,
        unsupported_attributes: refusals.attributes,
        load,
    })
}

impl InspectReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model        {} ({} bytes)", self.file.display(), self.file_bytes);
        let _ = writeln!(s, "producer     {} (IR {})", self.producer, self.ir_version);
        let opsets: Vec<String> = self.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
        let _ = writeln!(s, "opsets       {}", opsets.join(", "));
        let _ = writeln!(s, "quantization {}", self.quantization.label());
        let _ = writeln!(s, "parameters   {} bytes", self.parameter_bytes);
        for (title, values) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            let _ = writeln!(s, "{title}");
            for v in values.iter() {
                let _ = writeln!(s, "  {:<24} {:<8} [{}]", v.name, v.dtype, v.shape.join(","));
            }
        }
        let _ = writeln!(s, "operators    {} nodes", self.nodes);
        for (op, n) in &self.ops {
            let _ = writeln!(s, "  {op:<40} {n:>5}");
        }
        if !self.unsupported.is_empty() {
            let list: Vec<String> = self.unsupported.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "unsupported operators: {}", list.join(", "));
            let _ = writeln!(s, "hint: {}", hint(&self.unsupported));
        }
        if !self.unsupported_attributes.is_empty() {
            let _ = writeln!(s, "unsupported attributes (the engine would ignore them and compute something else):");
            for refused in &self.unsupported_attributes {
                let _ = writeln!(s, "  {refused}");
            }
        }
        if self.load.ok {
            let _ = writeln!(s, "load         ok");
            for (stage, us) in &self.load.stages_us {
                let _ = writeln!(s, "  {:<16} {:>9.3} ms", stage.to_string(), *us as f64 / 1000.0);
            }
            let total: u64 = self.load.stages_us.iter().map(|(_, us)| us).sum();
            let _ = writeln!(s, "  {:<16} {:>9.3} ms", "total", total as f64 / 1000.0);
            if let Some(batch) = &self.load.batch {
                let text = match batch {
                    BatchAxis::Symbolic(sym) => format!("symbolic axis '{sym}': any --batch"),
                    BatchAxis::FixedOne => "fixed to 1: one sample per run".into(),
                    BatchAxis::None => "none: each sample is a full input set".into(),
                };
                let _ = writeln!(s, "batch        {text}");
            }
        } else if !self.unsupported.is_empty() {
            let _ = writeln!(s, "load         FAILED: unsupported operators (above)");
        } else if !self.unsupported_attributes.is_empty() {
            let _ = writeln!(s, "load         FAILED: unsupported attributes (above)");
        } else if let Some(e) = &self.load.error {
            let _ = writeln!(s, "load         FAILED: {e}");
        }
        s
    }
}

/// Inspects `args.model` and writes the report (human or JSON) to `out`; returns whether the
/// agent can run the model, which the binaries turn into their exit code.
pub fn run(args: &InspectArgs, out: &mut dyn std::io::Write) -> anyhow::Result<bool> {
    use anyhow::Context;
    let report = inspect(&args.model).with_context(|| format!("inspect {}", args.model.display()))?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.render())?;
    }
    Ok(report.load.ok)
}
