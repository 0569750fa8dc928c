//! The zoo bench: Drover against onnxruntime on the models users bring (`models/zoo`, written by
//! the real exporters), one model at a time, both engines timed one right after the other so the
//! shared machine's load hits both alike. Prints one table and the goals of issue 34.
//!
//! `cargo bench -p drover-tests --bench zoo` (release profile, as shipped). Needs Python with
//! `models/zoo/requirements.txt` (the zoo is generated, or found cached, by `make_zoo.py`).
//!
//! Per model: load time; batch 1 through `Model::run_one` (what `infer` and the local API call
//! per sample); batch 8 through `Model::run_samples` (what the batcher calls) where the model has
//! a batch axis; onnxruntime (1 thread, `models/zoo/bench_ort.py`) on the same file and samples.
//! Figures are medians per sample; ratios are Drover / onnxruntime in this run. For the networks
//! (CNN, recurrent, dense) the bench also times batch 1 on the plan for the file's symbolic batch
//! (`LoadOptions::batch_plans` off, what tract does with the file): "sym/b1" is what the plan
//! optimised for batch 1 gains.
//!
//! Environment: `DROVER_BENCH_ONLY=a,b` times only models whose name contains one of the parts;
//! `DROVER_BENCH_BUDGET_S` (default 1.0) is the timing budget per engine and batch size;
//! `DROVER_BENCH_PROFILE=name` prints Drover's per-operator profile of that model (batch 1) too;
//! `DROVER_BENCH_INT8_KERNELS=lanes|linalg` runs the int8 layers on that kernel family rather than
//! this machine's choice (`LoadOptions::int8_kernels`), to compare the two.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use drover_runtime::Model;
use drover_runtime::engine::{BatchAxis, Int8Kernels, LoadOptions};
use drover_runtime::samples::{Sample, SampleFile};
use serde_json::{Value, json};

const MIN_RUNS: usize = 5;
const BATCH: usize = 8;

fn main() {
    let Some(zoo) = drover_tests::zoo::generated() else {
        eprintln!("no zoo: pip install -r models/zoo/requirements.txt");
        std::process::exit(1);
    };
    let budget = std::env::var("DROVER_BENCH_BUDGET_S").ok().and_then(|v| v.parse().ok()).unwrap_or(1.0);
    let only: Vec<String> =
        std::env::var("DROVER_BENCH_ONLY").map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
    let profile = std::env::var("DROVER_BENCH_PROFILE").ok();
    let int8_kernels = match std::env::var("DROVER_BENCH_INT8_KERNELS").as_deref() {
        Ok("lanes") => Int8Kernels::Lanes,
        Ok("linalg") => Int8Kernels::Linalg,
        Ok("native") | Err(_) => Int8Kernels::Native,
        Ok(other) => {
            eprintln!("DROVER_BENCH_INT8_KERNELS={other}: expected native, lanes or linalg");
            std::process::exit(2);
        }
    };
    let options = LoadOptions { int8_kernels, ..LoadOptions::default() };
    let mut ort = Ort::start();
    println!("Drover vs onnxruntime on the zoo ({}), median µs per sample", zoo.display());
    println!("int8 layers on {int8_kernels:?} kernels");
    println!("drover b1 = Model::run_one; b8 = Model::run_samples of 8, per sample; ort = onnxruntime, 1 thread");
    println!("timed for at least {MIN_RUNS} runs and {budget} s per engine and batch size, after {MIN_RUNS} untimed");
    println!();
    println!(
        "{:<36} {:<10} {:<13} {:>9} {:>11} {:>11} {:>6} {:>11} {:>11} {:>6} {:>7}",
        "model",
        "family",
        "precision",
        "load ms",
        "drover b1",
        "ort b1",
        "ratio",
        "drover b8",
        "ort b8",
        "ratio",
        "sym/b1"
    );
    let mut rows = Vec::new();
    for entry in drover_tests::zoo::entries(&zoo) {
        let name = entry["name"].as_str().unwrap_or("?").to_string();
        if !only.is_empty() && !only.iter().any(|o| name.contains(o.as_str())) {
            continue;
        }
        let (Some(file), Some(input)) = (entry["file"].as_str(), entry["input_file"].as_str()) else {
            continue; // not an ONNX model (the MLflow directory `drover bundle` must refuse)
        };
        if !file.ends_with(".onnx") || !input.ends_with(".npy") {
            continue;
        }
        let row = measure(&entry, &zoo.join(file), &zoo.join(input), budget, &mut ort, options);
        println!("{}", row.line());
        if profile.as_deref() == Some(name.as_str()) {
            print_profile(&zoo.join(file), &zoo.join(input), options);
        }
        rows.push(row);
    }
    println!();
    summary(&rows);
}

/// One model's figures (µs per sample; `None` where not measured).
struct Row {
    name: String,
    family: String,
    precision: String,
    source: Option<String>,
    load_ms: f64,
    drover: [Option<f64>; 2],
    ort: [Option<f64>; 2],
    /// Batch 1 on the plan for the symbolic batch (networks only).
    symbolic: Option<f64>,
    error: Option<String>,
}

impl Row {
    fn ratio(&self, b: usize) -> Option<f64> {
        Some(self.drover[b]? / self.ort[b]?)
    }

    fn line(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".to_string(), fmt_us);
        let ratio = |v: Option<f64>| v.map_or("-".to_string(), |r| format!("{r:.2}"));
        let mut line = format!(
            "{:<36} {:<10} {:<13} {:>9.1} {:>11} {:>11} {:>6} {:>11} {:>11} {:>6} {:>7}",
            self.name,
            self.family,
            self.precision,
            self.load_ms,
            us(self.drover[0]),
            us(self.ort[0]),
            ratio(self.ratio(0)),
            us(self.drover[1]),
            us(self.ort[1]),
            ratio(self.ratio(1)),
            ratio(self.symbolic.zip(self.drover[0]).map(|(s, d)| s / d)),
        );
        if let Some(e) = &self.error {
            line.push_str(&format!("  ({e})"));
        }
        line
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 1000.0 { format!("{:.0}", v) } else { format!("{v:.1}") }
}

fn measure(entry: &Value, file: &Path, input: &Path, budget: f64, ort: &mut Ort, options: LoadOptions) -> Row {
    let text = |k: &str| entry[k].as_str().unwrap_or("?").to_string();
    let mut row = Row {
        name: text("name"),
        family: text("family"),
        precision: text("precision"),
        source: entry["source_model"].as_str().map(str::to_string),
        load_ms: f64::NAN,
        drover: [None, None],
        ort: [None, None],
        symbolic: None,
        error: None,
    };
    let start = Instant::now();
    let mut model = match Model::load_with(file, options) {
        Ok(m) => m,
        Err(e) => {
            row.error = Some(format!("load: {e}").lines().next().unwrap_or("").to_string());
            return row;
        }
    };
    row.load_ms = start.elapsed().as_secs_f64() * 1000.0;
    let samples = match read_samples(&model, input) {
        Ok(s) => s,
        Err(e) => {
            row.error = Some(e);
            return row;
        }
    };
    let batchable = entry["allows_batch_gt1"].as_bool().unwrap_or(false)
        && matches!(model.signature().batch, BatchAxis::Symbolic(_));
    for (b, n) in [(0, 1), (1, BATCH)] {
        if n > 1 && !batchable {
            continue;
        }
        match time_drover(&mut model, &samples[..n], budget) {
            Ok(us) => row.drover[b] = Some(us / n as f64),
            Err(e) => row.error = Some(e),
        }
        match ort.time(file, input, n, budget) {
            Ok(us) => row.ort[b] = Some(us / n as f64),
            Err(e) => row.error = Some(format!("onnxruntime: {e}")),
        }
    }
    if batchable && is_network(&row.family) {
        let symbolic = LoadOptions { batch_plans: false, ..options };
        match Model::load_with(file, symbolic) {
            Ok(mut m) => row.symbolic = time_drover(&mut m, &samples[..1], budget).ok(),
            Err(e) => row.error = Some(format!("load (symbolic batch): {e}")),
        }
    }
    row
}

/// The families issue 34's main goal is about.
fn is_network(family: &str) -> bool {
    matches!(family, "cnn" | "recurrent" | "dense")
}

/// The input file's samples, repeated to at least [`BATCH`].
fn read_samples(model: &Model, input: &Path) -> Result<Vec<Sample>, String> {
    let mut file = SampleFile::open(input, model.signature()).map_err(|e| format!("samples: {e}"))?;
    let mut samples = file.next_batch(usize::MAX >> 1).map_err(|e| format!("samples: {e}"))?;
    if samples.is_empty() {
        return Err("no samples".into());
    }
    let have = samples.len();
    for i in have..BATCH {
        samples.push(samples[i % have].clone());
    }
    Ok(samples)
}

/// Median µs per call of `run_one` (one sample) or `run_samples` (several).
fn time_drover(model: &mut Model, samples: &[Sample], budget: f64) -> Result<f64, String> {
    let mut outputs = Vec::new();
    let mut call = |model: &mut Model| -> Result<(), String> {
        if samples.len() == 1 {
            model.run_one(&samples[0], &mut outputs).map_err(|e| format!("run: {e}"))?;
            black_box(&outputs);
        } else {
            black_box(model.run_samples(samples).map_err(|e| format!("run of {}: {e}", samples.len()))?);
        }
        Ok(())
    };
    for _ in 0..MIN_RUNS {
        call(model)?;
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < MIN_RUNS || start.elapsed() < Duration::from_secs_f64(budget) {
        let t = Instant::now();
        call(model)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(median(times))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_profile(file: &Path, input: &Path, options: LoadOptions) {
    let mut model = Model::load_with(file, options).expect("loads");
    let samples = read_samples(&model, input).expect("samples");
    let runs = 20;
    model.profile(&samples[0], 3).expect("profiles");
    let profile = model.profile(&samples[0], runs).expect("profiles");
    let per_run = profile.per_run().as_secs_f64() * 1e6;
    println!("  per-operator profile, batch 1, {runs} runs: {per_run:.1} µs per profiled call");
    for (op, t) in profile.by_op() {
        let us = t.as_secs_f64() * 1e6;
        println!("    {op:<40} {us:>10.1} µs {:>5.1} %", 100.0 * us / per_run);
    }
}

/// onnxruntime's side: `models/zoo/bench_ort.py`, one request per model and batch size.
struct Ort {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    version: Option<String>,
}

impl Ort {
    fn start() -> Ort {
        let script = drover_tests::zoo::repo().join("models/zoo/bench_ort.py");
        let mut child = Command::new("python3")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 models/zoo/bench_ort.py");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Ort { _child: child, stdin, stdout, version: None }
    }

    /// Median µs per call on the first `batch` samples of `input`.
    fn time(&mut self, file: &Path, input: &Path, batch: usize, budget: f64) -> Result<f64, String> {
        let request = json!({"file": file, "input": input, "batch": batch, "budget_s": budget, "min_runs": MIN_RUNS});
        writeln!(self.stdin, "{request}").map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| e.to_string())?;
        let reply: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
        if let Some(e) = reply["error"].as_str() {
            return Err(e.to_string());
        }
        self.version = reply["onnxruntime"].as_str().map(str::to_string);
        reply["median_us"].as_f64().ok_or_else(|| format!("no median in {line:?}"))
    }
}

fn geomean(v: &[f64]) -> f64 {
    (v.iter().map(|x| x.ln()).sum::<f64>() / v.len() as f64).exp()
}

/// The goals of issue 34, over the rows measured.
fn summary(rows: &[Row]) {
    println!("Drover / onnxruntime by family (batch 1; batch 8 where measured): geometric mean, worst");
    let mut families: BTreeMap<&str, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        families.entry(r.family.as_str()).or_default().push(r);
    }
    for (family, rs) in &families {
        for b in [0, 1] {
            let ratios: Vec<(f64, &str)> = rs.iter().filter_map(|r| Some((r.ratio(b)?, r.name.as_str()))).collect();
            if ratios.is_empty() {
                continue;
            }
            let values: Vec<f64> = ratios.iter().map(|(r, _)| *r).collect();
            let worst = ratios.iter().max_by(|a, b| a.0.total_cmp(&b.0)).expect("one");
            let drover_us: Vec<f64> = rs.iter().filter_map(|r| r.drover[b]).collect();
            println!(
                "  {family:<10} b{:<2} {:>2} models  geomean {:>5.2}  worst {:>5.2} ({})  drover median {} µs",
                [1, BATCH][b],
                values.len(),
                geomean(&values),
                worst.0,
                worst.1,
                fmt_us(median(drover_us))
            );
        }
    }
    let nets: Vec<f64> = rows.iter().filter(|r| is_network(&r.family)).filter_map(|r| r.ratio(0)).collect();
    let gains: Vec<f64> = rows.iter().filter_map(|r| Some(r.symbolic? / r.drover[0]?)).collect();
    if !gains.is_empty() {
        println!();
        println!(
            "plan for batch 1 against the plan for the symbolic batch (networks, batch 1): geomean {:.2}x faster over {} models",
            geomean(&gains),
            gains.len()
        );
    }
    if !nets.is_empty() {
        let over: Vec<String> = rows
            .iter()
            .filter(|r| is_network(&r.family))
            .filter_map(|r| r.ratio(0).filter(|x| *x > 1.5).map(|x| format!("{} {x:.2}", r.name)))
            .collect();
        println!();
        println!(
            "goal: CNN, recurrent and dense geomean <= 1.00 at batch 1: {:.2} over {} models; above 1.5x: {}",
            geomean(&nets),
            nets.len(),
            if over.is_empty() { "none".to_string() } else { over.join(", ") }
        );
    }
    let ml: Vec<String> = rows
        .iter()
        .filter(|r| matches!(r.family.as_str(), "tree" | "linear"))
        .filter_map(|r| r.ratio(0).filter(|x| *x > 2.0).map(|x| format!("{} {x:.2}", r.name)))
        .collect();
    println!(
        "goal: tree and linear models within 2x: above 2x: {}",
        if ml.is_empty() { "none".into() } else { ml.join(", ") }
    );
    println!("goal: int8 below its fp32 source (Drover, batch 1):");
    for r in rows.iter().filter(|r| r.precision.starts_with("int8")) {
        let Some(src) = r.source.as_deref().and_then(|s| rows.iter().find(|f| f.name == s)) else { continue };
        if let (Some(q), Some(f)) = (r.drover[0], src.drover[0]) {
            println!(
                "  {:<36} {:>10} µs vs {:<28} {:>10} µs  int8/fp32 {:.2}",
                r.name,
                fmt_us(q),
                src.name,
                fmt_us(f),
                q / f
            );
        }
    }
}
