//! `drover quantize`: static post-training int8 quantization of an ONNX model, with the accuracy
//! it costs measured on held-out samples through tract, as the board will run it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use drover_runtime::engine::Model;
use serde::Serialize;

use crate::quantize::{self, Accuracy, Format, Method, Options};

/// Arguments of `drover quantize`.
#[derive(Debug, clap::Args)]
pub struct QuantizeArgs {
    /// The fp32 ONNX model.
    pub model: PathBuf,
    /// Calibration samples: `.jsonl` (one sample per line) or `.npy` (first axis = samples), as
    /// `drover-agent infer` reads them.
    #[arg(long)]
    pub calibration: PathBuf,
    /// Where to write the int8 model (nothing is written if any step fails).
    #[arg(long)]
    pub out: PathBuf,
    /// QDQ (QuantizeLinear/DequantizeLinear pairs) or QOperator (QLinearConv, QLinearMatMul).
    #[arg(long, value_enum, default_value = "qdq")]
    pub format: Format,
    /// One weight scale per output channel for Conv, instead of one per tensor.
    #[arg(long)]
    pub per_channel: bool,
    /// How activation ranges are taken from the calibration samples.
    #[arg(long, value_enum, default_value = "minmax")]
    pub method: MethodArg,
    /// With `--method percentile`: the percentage of values kept inside the range on each side.
    #[arg(long, default_value_t = 99.999, value_parser = parse_percentile)]
    pub percentile: f64,
    /// Held-out samples for the accuracy check (default: the last fifth of the calibration file,
    /// which is then not used for calibration).
    #[arg(long)]
    pub holdout: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--method` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    /// Smallest and largest value seen.
    Minmax,
    /// Bounds holding `--percentile` % of the values.
    Percentile,
}

fn parse_percentile(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if p > 50.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("'{s}': a percentage above 50 and at most 100 (e.g. 99.999)")),
    }
}

/// What the command reports.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The int8 model written.
    pub out: String,
    /// `qdq` or `qoperator`.
    pub format: &'static str,
    /// fp32 model size, bytes.
    pub fp32_bytes: u64,
    /// int8 model size, bytes.
    pub int8_bytes: u64,
    /// int8 size as a fraction of fp32.
    pub size_ratio: f64,
    /// Conv, Gemm and MatMul nodes now int8.
    pub quantized_nodes: usize,
    /// Calibration samples used.
    pub calibration_samples: usize,
    /// Where the held-out samples came from.
    pub holdout: String,
    /// fp32 vs int8 on the held-out samples.
    pub accuracy: Accuracy,
    /// Nodes left fp32 and why.
    pub notes: Vec<String>,
}

/// Quantizes, checks, then writes the model; prints the report. Returns whether it wrote it.
pub fn run(args: &QuantizeArgs) -> anyhow::Result<bool> {
    let report = quantize_to_file(args)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_report(&mut out, &report)?;
    }
    Ok(true)
}

/// Everything but the printing: the report of a model quantized and written to `args.out`.
pub fn quantize_to_file(args: &QuantizeArgs) -> anyhow::Result<Report> {
    let bytes = std::fs::read(&args.model).with_context(|| format!("reading {}", args.model.display()))?;
    quantize::decode(&bytes).with_context(|| format!("{}", args.model.display()))?;
    let fp32 = Model::from_bytes(&bytes)
        .with_context(|| format!("{}: not a model the agent can run, so not one to quantize", args.model.display()))?;
    let signature = fp32.signature().clone();
    let mut calibration =
        quantize::read_samples(&args.calibration, &signature).context("reading the calibration samples")?;
    if calibration.is_empty() {
        bail!("calibration file {} holds no samples", args.calibration.display());
    }
    let (holdout, from) = match &args.holdout {
        Some(path) => {
            let samples = quantize::read_samples(path, &signature).context("reading the held-out samples")?;
            if samples.is_empty() {
                bail!("held-out file {} holds no samples", path.display());
            }
            (samples, path.display().to_string())
        }
        None if calibration.len() >= 2 => {
            let held = (calibration.len() / 5).max(1);
            let samples = calibration.split_off(calibration.len() - held);
            let from = format!("the last {held} of {} calibration samples", calibration.len() + held);
            (samples, from)
        }
        None => bail!(
            "one calibration sample cannot be split into calibration and held-out sets: give --holdout FILE or more samples"
        ),
    };
    let method = match args.method {
        MethodArg::Minmax => Method::MinMax,
        MethodArg::Percentile => Method::Percentile(args.percentile),
    };
    let options = Options { format: args.format, per_channel: args.per_channel, method };
    log::info!("quantizing {} with {} calibration sample(s)", args.model.display(), calibration.len());
    let q = quantize::quantize(&bytes, &calibration, &options)
        .with_context(|| format!("quantizing {}", args.model.display()))?;
    let accuracy = quantize::compare(&bytes, &q.bytes, &holdout).context("checking the int8 model")?;
    write_atomically(&args.out, &q.bytes)?;
    let (fp32_bytes, int8_bytes) = (bytes.len() as u64, q.bytes.len() as u64);
    Ok(Report {
        out: args.out.display().to_string(),
        format: args.format.name(),
        fp32_bytes,
        int8_bytes,
        size_ratio: int8_bytes as f64 / fp32_bytes.max(1) as f64,
        quantized_nodes: q.quantized_nodes,
        calibration_samples: calibration.len(),
        holdout: from,
        accuracy,
        notes: q.notes,
    })
}

/// Writes through a temporary file in the same directory, so a failure never leaves a partial
/// model at `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing {}", path.display()))?;
    tmp.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    // A model is no secret: readable like any build output (the temporary file starts 0600).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let readable = std::fs::Permissions::from_mode(0o644);
        tmp.as_file().set_permissions(readable).with_context(|| format!("writing {}", path.display()))?;
    }
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn print_report(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(out, "wrote        {} ({}, {} Conv/Gemm/MatMul node(s) int8)", r.out, r.format, r.quantized_nodes)?;
    writeln!(
        out,
        "size         {} -> {} bytes ({:.1} % of fp32, {:.1} % smaller)",
        r.fp32_bytes,
        r.int8_bytes,
        r.size_ratio * 100.0,
        (1.0 - r.size_ratio) * 100.0
    )?;
    writeln!(out, "calibration  {} sample(s)", r.calibration_samples)?;
    writeln!(out, "held out     {} sample(s): {}", r.accuracy.samples, r.holdout)?;
    for o in &r.accuracy.outputs {
        let top1 = match o.top1_agree {
            Some(a) => format!(", top-1 agreement {a}/{} ({:.1} %)", o.rows, 100.0 * a as f64 / o.rows.max(1) as f64),
            None => String::new(),
        };
        writeln!(
            out,
            "  {:<10} max |fp32-int8| {:.4} (mean {:.4}, max |fp32| {:.3}){top1}",
            o.name, o.max_abs_diff, o.mean_abs_diff, o.max_abs_fp32
        )?;
    }
    for note in &r.notes {
        writeln!(out, "note         {note}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    use crate::cli::{Cli, Verb};

    fn models(rel: &str) -> String {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(rel).to_string_lossy().into_owned()
    }

    fn args(argv: &[&str]) -> QuantizeArgs {
        let full: Vec<&str> = ["drover", "quantize"].iter().chain(argv).copied().collect();
        match Cli::try_parse_from(full).expect("parses").command {
            Verb::Quantize(a) => a,
            other => panic!("parsed as {other:?}"),
        }
    }

    /// Runs the command expecting an error; checks that no file was left at `out`.
    fn fails(model: &str, calibration: &str, out: &Path) -> String {
        let a = args(&[model, "--calibration", calibration, "--out", &out.to_string_lossy()]);
        let err = quantize_to_file(&a).expect_err("must fail");
        assert!(!out.exists(), "a failed run wrote {}", out.display());
        format!("{err:#}")
    }

    #[test]
    fn a_file_that_is_not_onnx_is_refused_without_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let junk = dir.path().join("junk.onnx");
        std::fs::write(&junk, b"this is not a protobuf \xff\xff\xff").expect("write");
        let err = fails(&junk.to_string_lossy(), &models("data/cnn.calibration.npy"), &dir.path().join("q.onnx"));
        assert!(err.contains("not an ONNX model"), "{err}");
        let empty = dir.path().join("empty.onnx");
        std::fs::write(&empty, b"").expect("write");
        let err = fails(&empty.to_string_lossy(), &models("data/cnn.calibration.npy"), &dir.path().join("q.onnx"));
        assert!(err.contains("not an ONNX model"), "{err}");
    }

    #[test]
    fn calibration_of_the_wrong_shape_is_refused_without_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("q.onnx");
        let err = fails(&models("cnn.onnx"), &models("data/mlp.calibration.npy"), &out);
        assert!(err.contains("calibration samples") && err.contains("image"), "{err}");
        let err = fails(&models("mlp.onnx"), &models("reference/cnn.input.jsonl"), &out);
        assert!(err.contains("calibration samples") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn an_empty_calibration_file_is_refused_without_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("none.jsonl");
        std::fs::write(&empty, "\n").expect("write");
        let err = fails(&models("mlp.onnx"), &empty.to_string_lossy(), &dir.path().join("q.onnx"));
        assert!(err.contains("holds no samples"), "{err}");
        let one = dir.path().join("one.jsonl");
        let line = std::fs::read_to_string(models("reference/mlp.input.jsonl")).expect("jsonl");
        std::fs::write(&one, line.lines().next().expect("a line")).expect("write");
        let err = fails(&models("mlp.onnx"), &one.to_string_lossy(), &dir.path().join("q.onnx"));
        assert!(err.contains("--holdout"), "{err}");
    }

    #[test]
    fn a_model_with_nothing_to_quantize_is_refused_without_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            fails(&models("iris_logreg.onnx"), &models("reference/iris_logreg.input.jsonl"), &dir.path().join("q"));
        assert!(err.contains("nothing to quantize") || err.contains("opset"), "{err}");
    }

    #[test]
    fn jsonl_calibration_with_a_split_holdout_and_percentile_reports_its_figures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("mlp8.onnx");
        let a = args(&[
            &models("mlp.onnx"),
            "--calibration",
            &models("reference/mlp.input.jsonl"),
            "--method",
            "percentile",
            "--percentile",
            "99.9",
            "--out",
            &out.to_string_lossy(),
        ]);
        let report = quantize_to_file(&a).expect("quantizes");
        assert_eq!((report.calibration_samples, report.accuracy.samples), (13, 3));
        assert!(report.holdout.contains("last 3 of 16"), "{}", report.holdout);
        assert_eq!(report.quantized_nodes, 3);
        assert!(report.int8_bytes < report.fp32_bytes / 3, "{report:?}");
        assert_eq!(report.accuracy.outputs[0].rows, 3);
        let mut text = Vec::new();
        print_report(&mut text, &report).expect("prints");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(text.contains("smaller") && text.contains("top-1 agreement"), "{text}");
        assert!(out.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).expect("written").permissions().mode();
            assert_eq!(mode & 0o644, 0o644, "readable like any model file: {mode:o}");
        }
    }

    #[test]
    fn a_percentile_outside_50_to_100_is_a_usage_error() {
        let parsed = Cli::try_parse_from([
            "drover",
            "quantize",
            "m.onnx",
            "--calibration",
            "c.npy",
            "--out",
            "o",
            "--percentile",
            "120",
        ]);
        assert!(parsed.is_err());
    }
}
