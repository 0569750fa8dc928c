//! Engine benchmark: Drover's inference path against bare tract in the same process, load time,
//! peak RSS, onnxruntime on the same models in the same run (when Python has it), and the size of
//! the cross-built agents. Prints one table; figures are ratios against baselines measured in this
//! very run, because the machines are shared and noisy.
//!
//! `cargo bench -p drover-tests --bench engine` (release profile: LTO, as shipped).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover_runtime::Model;
use drover_runtime::engine::LoadOptions;
use drover_runtime::samples::{Sample, SampleFile};
use drover_tests::manifest::{self, ReferenceModel, resolve};
use tract_onnx::prelude::{Framework, InferenceModelExt, IntoRunnable, TValue, TVec};

const WARMUP: usize = 200;
const ROUNDS: usize = 20;
const PER_ROUND: usize = 100;
const RSS_PROBE: &str = "DROVER_BENCH_RSS_PROBE";
/// Set to print only the per-operator profiles (quick look while working on the engine): "1"
/// for every variant, else the variant's title as printed ("cnn_int8_qdq"), or its start and `*`
/// ("cnn*").
const PROFILE_ONLY: &str = "DROVER_BENCH_PROFILE_ONLY";
const PROFILE_RUNS: usize = 2000;

fn main() {
    if let Ok(model) = std::env::var(RSS_PROBE) {
        rss_probe(&model);
        return;
    }
    let models: Vec<ReferenceModel> = manifest::load().models.into_iter().filter(|m| !m.refused).collect();
    if let Ok(only) = std::env::var(PROFILE_ONLY) {
        report_profiles(&models, &only);
        return;
    }
    let ort = onnxruntime_figures();
    let empty_rss = probe_rss("");
    println!(
        "Drover engine benchmark: {} timed calls per side after {WARMUP} warm-up, interleaved in {ROUNDS} rounds",
        ROUNDS * PER_ROUND
    );
    println!("drover = Model::run_one, what `infer` calls per sample: input checks, copies in and out");
    println!("tract  = bare tract per call: tensors built from the same data, state.run, outputs copied out");
    println!("ratio  = drover median / tract median (goal <= 1.02); ORT = onnxruntime, 1 thread, models/bench_ort.py");
    println!("         (below 1 for QDQ models: Drover's load-time QDQ rewrite, engine/qdq, which bare tract lacks)");
    println!();
    println!(
        "{:<14} {:>17} {:>17} {:>7} {:>17} {:>9} {:>9} {:>9} {:>9}",
        "model",
        "drover med/p99 µs",
        "tract med/p99 µs",
        "ratio",
        "ORT med/p99 µs",
        "drover/ORT",
        "load ms",
        "RSS+ MB",
        "size KB"
    );
    for m in &models {
        let (drover, tract) = time_both(m);
        let ratio = drover.median / tract.median;
        let (ort_cell, ort_ratio) = match ort.as_ref().and_then(|o| o["models"].get(&m.name)) {
            Some(fig) => {
                let med = fig["median_us"].as_f64().unwrap_or(f64::NAN);
                let p99 = fig["p99_us"].as_f64().unwrap_or(f64::NAN);
                (format!("{med:.1} / {p99:.1}"), format!("{:.2}", drover.median / med))
            }
            None => ("n/a".to_string(), "n/a".to_string()),
        };
        let load_ms = median_load_ms(&m.path());
        let rss =
            probe_rss(&m.path().to_string_lossy()).zip(empty_rss).map(|(with, without)| with.saturating_sub(without));
        println!(
            "{:<14} {:>17} {:>17} {:>7.3} {:>17} {:>9} {:>9.2} {:>9} {:>9.1}",
            m.name,
            format!("{:.1} / {:.1}", drover.median, drover.p99),
            format!("{:.1} / {:.1}", tract.median, tract.p99),
            ratio,
            ort_cell,
            ort_ratio,
            load_ms,
            rss.map_or("n/a".to_string(), |kb| format!("{:.1}", kb as f64 / 1024.0)),
            model_kb(m)
        );
    }
    println!();
    report_int8(&models, empty_rss);
    if let Some(o) = &ort {
        println!();
        println!(
            "onnxruntime {} (a Python sess.run alone costs {:.1} µs)",
            o["onnxruntime"].as_str().unwrap_or("?"),
            o["call_overhead_us"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "peak RSS of the bench process without a model: {}",
        empty_rss.map_or("n/a".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0))
    );
    println!();
    report_binary_sizes();
    println!();
    report_profiles(&models, "1");
}

/// Per-operator profile of Drover's optimised plan for the CNN and MLP families: where each call
/// spends its time (tract's `run_plan_with_eval` with a clock around every node).
fn report_profiles(models: &[ReferenceModel], only: &str) {
    println!("per-operator profile of Drover's plan, {PROFILE_RUNS} runs on sample 0 (µs per call, % of the call)");
    let variants = models.iter().filter(|m| m.name.starts_with("cnn") || m.name.starts_with("mlp")).flat_map(|m| {
        let before = (m.kind == "qdq").then_some((
            m,
            LoadOptions { qdq_rewrite: false, ..LoadOptions::default() },
            " (no rewrite)",
        ));
        before.into_iter().chain(std::iter::once((m, LoadOptions::default(), "")))
    });
    let wanted = |title: &str| match only.strip_suffix('*') {
        _ if only == "1" || only.is_empty() => true,
        Some(prefix) => title.starts_with(prefix),
        None => title == only,
    };
    for (m, options, label) in variants.filter(|(m, _, label)| wanted(&format!("{}{label}", m.name))) {
        let mut model = Model::load_with(&m.path(), options).expect("drover loads");
        let sample = first_sample(&model, m);
        for _ in 0..WARMUP {
            model.profile(&sample, 1).expect("profiles");
        }
        let profile = model.profile(&sample, PROFILE_RUNS).expect("profiles");
        let per_run = micros(profile.per_run());
        println!();
        println!("{}{label} ({} nodes, {per_run:.1} µs per profiled call)", m.name, profile.nodes.len());
        for (op, t) in profile.by_op() {
            let us = micros(t);
            println!("  {op:<40} {us:>8.1} {:>5.1} %", 100.0 * us / per_run);
        }
        println!("  nodes:");
        for n in &profile.nodes {
            let us = micros(n.total) / PROFILE_RUNS as f64;
            println!("    {:<44} {:<32} {us:>8.2}", n.name, n.op);
        }
    }
}

fn model_kb(m: &ReferenceModel) -> f64 {
    std::fs::metadata(m.path()).map_or(f64::NAN, |meta| meta.len() as f64 / 1024.0)
}

/// int8 against fp32 (issue 12's goal: int8 latency <= 0.6x fp32, same run): each family's fp32,
/// QDQ and QOperator models, plus QDQ with Drover's load-time rewrite off, timed interleaved.
fn report_int8(models: &[ReferenceModel], empty_rss: Option<u64>) {
    println!("int8 vs fp32, Drover run_one, interleaved in {ROUNDS} rounds of {PER_ROUND} calls per variant");
    println!("ratio = variant median / fp32 median of the same family in this run (goal for int8 <= 0.60)");
    println!("{:<26} {:>17} {:>7} {:>9} {:>9}", "variant", "median/p99 µs", "ratio", "size KB", "RSS+ MB");
    for family in ["cnn", "mlp"] {
        let find = |name: String| models.iter().find(|m| m.name == name);
        let (Some(fp32), Some(qdq), Some(qop)) =
            (find(family.to_string()), find(format!("{family}_int8_qdq")), find(format!("{family}_int8_qop")))
        else {
            continue;
        };
        let off = LoadOptions { qdq_rewrite: false, ..LoadOptions::default() };
        let variants: Vec<(String, &ReferenceModel, LoadOptions)> = vec![
            (fp32.name.clone(), fp32, LoadOptions::default()),
            (format!("{} (no rewrite)", qdq.name), qdq, off),
            (qdq.name.clone(), qdq, LoadOptions::default()),
            (qop.name.clone(), qop, LoadOptions::default()),
        ];
        let stats = time_interleaved(&variants);
        let base = stats[0].median;
        for ((label, m, options), st) in variants.iter().zip(&stats) {
            let rss = if options.qdq_rewrite {
                probe_rss(&m.path().to_string_lossy())
                    .zip(empty_rss)
                    .map_or("n/a".to_string(), |(w, wo)| format!("{:.1}", w.saturating_sub(wo) as f64 / 1024.0))
            } else {
                "-".to_string()
            };
            println!(
                "{label:<26} {:>17} {:>7.2} {:>9.1} {:>9}",
                format!("{:.1} / {:.1}", st.median, st.p99),
                st.median / base,
                model_kb(m),
                rss
            );
        }
    }
}

fn time_interleaved(variants: &[(String, &ReferenceModel, LoadOptions)]) -> Vec<Stats> {
    let mut loaded: Vec<(Model, Sample, Vec<drover_runtime::Tensor>, Vec<f64>)> = variants
        .iter()
        .map(|(_, m, options)| {
            let model = Model::load_with(&m.path(), *options).expect("drover loads");
            let sample = first_sample(&model, m);
            (model, sample, Vec::new(), Vec::with_capacity(ROUNDS * PER_ROUND))
        })
        .collect();
    for (model, sample, outputs, _) in loaded.iter_mut() {
        for _ in 0..WARMUP {
            model.run_one(sample, outputs).expect("drover runs");
        }
    }
    for _ in 0..ROUNDS {
        for (model, sample, outputs, us) in loaded.iter_mut() {
            for _ in 0..PER_ROUND {
                let t = Instant::now();
                model.run_one(sample, outputs).expect("drover runs");
                black_box(&*outputs);
                us.push(micros(t.elapsed()));
            }
        }
    }
    loaded.into_iter().map(|(_, _, _, us)| stats(us)).collect()
}

struct Stats {
    median: f64,
    p99: f64,
}

fn stats(mut us: Vec<f64>) -> Stats {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 - 1.0) * q).round() as usize];
    Stats { median: at(0.5), p99: at(0.99) }
}

fn first_sample(model: &Model, m: &ReferenceModel) -> Sample {
    let reference = m.reference.as_ref().expect("reference");
    let mut file = SampleFile::open(&resolve(&reference.input_jsonl), model.signature()).expect("samples");
    file.next_batch(1).expect("one sample").remove(0)
}

/// Times Drover's `run_samples` (what `infer` calls per batch) and bare tract's `state.run` on the
/// same sample, interleaving the two so drifts in machine load hit both alike.
fn time_both(m: &ReferenceModel) -> (Stats, Stats) {
    let mut model = Model::load(&m.path()).expect("drover loads");
    let sample = first_sample(&model, m);

    let plan = tract_onnx::onnx()
        .model_for_path(m.path())
        .and_then(|p| p.into_optimized())
        .and_then(|p| p.into_runnable())
        .expect("tract loads");
    let mut state = plan.spawn().expect("state");
    // Bare tract does what a minimal hand-written integration must do per call: build tract
    // tensors from the caller's data, run the state, copy the outputs out.
    let strip = model.signature().batch.strips_leading_axis();
    let shapes: Vec<Vec<usize>> = sample
        .iter()
        .map(|t| {
            let mut shape = t.shape().to_vec();
            if strip {
                shape.insert(0, 1);
            }
            shape
        })
        .collect();
    let mut bare = || {
        let inputs: TVec<TValue> = sample.iter().zip(&shapes).map(|(t, s)| tract_tensor(t, s).into()).collect();
        let outputs = state.run(inputs).expect("tract runs");
        outputs.iter().map(copy_out).sum::<usize>()
    };

    let mut outputs = Vec::new();
    let mut drover_us = Vec::with_capacity(ROUNDS * PER_ROUND);
    let mut tract_us = Vec::with_capacity(ROUNDS * PER_ROUND);
    for _ in 0..WARMUP {
        model.run_one(&sample, &mut outputs).expect("drover runs");
        black_box(&outputs);
        black_box(bare());
    }
    for _ in 0..ROUNDS {
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            model.run_one(&sample, &mut outputs).expect("drover runs");
            black_box(&outputs);
            drover_us.push(micros(t.elapsed()));
        }
        for _ in 0..PER_ROUND {
            let t = Instant::now();
            black_box(bare());
            tract_us.push(micros(t.elapsed()));
        }
    }
    (stats(drover_us), stats(tract_us))
}

fn tract_tensor(t: &drover_runtime::Tensor, s: &[usize]) -> tract_onnx::prelude::Tensor {
    use drover_runtime::TensorData as D;
    use tract_onnx::prelude::Tensor as T;
    match t.data() {
        D::F32(v) => T::from_shape(s, v),
        D::F64(v) => T::from_shape(s, v),
        D::I64(v) => T::from_shape(s, v),
        D::I32(v) => T::from_shape(s, v),
        D::U8(v) => T::from_shape(s, v),
        D::I8(v) => T::from_shape(s, v),
    }
    .expect("tensor")
}

/// Copies one output into a Vec of its element type, as a caller of bare tract would.
fn copy_out(t: &TValue) -> usize {
    use tract_onnx::prelude::DatumType as Dt;
    let plain = t.try_as_plain_ram().expect("plain tensor");
    match t.datum_type() {
        Dt::F32 => plain.as_slice::<f32>().map(|s| s.to_vec().len()),
        Dt::F64 => plain.as_slice::<f64>().map(|s| s.to_vec().len()),
        Dt::I64 => plain.as_slice::<i64>().map(|s| s.to_vec().len()),
        Dt::I32 => plain.as_slice::<i32>().map(|s| s.to_vec().len()),
        Dt::U8 => plain.as_slice::<u8>().map(|s| s.to_vec().len()),
        Dt::I8 => plain.as_slice::<i8>().map(|s| s.to_vec().len()),
        other => panic!("unexpected output type {other:?}"),
    }
    .expect("typed slice")
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median_load_ms(path: &Path) -> f64 {
    let mut ms: Vec<f64> =
        (0..5).map(|_| Model::load(path).expect("loads").timings().total_us() as f64 / 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    ms[2]
}

/// Runs this bench binary again as a probe that loads one model (or none), runs it, and prints
/// its peak RSS: a fresh process per model, so figures do not bleed into each other.
fn probe_rss(model: &str) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe).env(RSS_PROBE, model).env("RUST_BACKTRACE", "0").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn rss_probe(model: &str) {
    if !model.is_empty() {
        let path = PathBuf::from(model);
        let m = manifest::load().models.into_iter().find(|m| m.path() == path).expect("model in manifest");
        let mut loaded = Model::load(&path).expect("loads");
        let sample = first_sample(&loaded, &m);
        for _ in 0..1000 {
            black_box(loaded.run_samples(std::slice::from_ref(&sample)).expect("runs"));
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    println!("{}", hwm.unwrap_or(0));
}

/// onnxruntime's figures from `models/bench_ort.py`, when Python has onnxruntime.
fn onnxruntime_figures() -> Option<serde_json::Value> {
    let script = manifest::models_dir().join("bench_ort.py");
    let out = Command::new("python3").arg(script).output().ok()?;
    if !out.status.success() {
        eprintln!("onnxruntime not available: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn report_binary_sizes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    println!(
        "agent binary sizes (release profile, stripped; goal for aarch64 static <= 8 MB once MQTT and TLS are in):"
    );
    for triple in ["aarch64-unknown-linux-musl", "armv7-unknown-linux-gnueabihf", "."] {
        let path = if triple == "." {
            target.join("release").join("drover-agent")
        } else {
            target.join(triple).join("release").join("drover-agent")
        };
        let name = if triple == "." { "host" } else { triple };
        match std::fs::metadata(&path) {
            Ok(meta) => println!("  {name:<32} {:>6.2} MB  {}", meta.len() as f64 / 1e6, path.display()),
            Err(_) => println!(
                "  {name:<32} not built: cargo build --release --target {name} -p drover-runtime --bin drover-agent"
            ),
        }
    }
}
