//! What watching a model costs: drift monitoring and telemetry per inference, as a fraction of
//! the inference itself, measured in the same run (goal: ≤ 2 % on the MLP).
//!
//! - `model`   = `Model::run_one`, the bare engine call;
//! - `observe all` = what each inference adds for drift and telemetry when every inference is
//!   observed (`[drift] budget_pct = 0`): every monitored input feature and the output class into
//!   the drift monitor (window closes included, amortised), the latency into the histogram;
//! - `observe @0.5%` = the same with the agent's default cost budget (0.5 % of the engine's time):
//!   one inference in `every` is observed, the stride set from running averages of both costs;
//! - `service` = `Inference::infer` end to end (queue bound, locks, request id, the prediction
//!   remembered for its label, outputs copied to the caller) minus `model`.
//!
//! `cargo bench -p drover-tests --bench telemetry` (release profile: LTO, as shipped).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use drover_runtime::agent::{Clock, SystemClock};
use drover_runtime::reference::profile;
use drover_runtime::samples::SampleFile;
use drover_runtime::serve::{Inference, Observer};
use drover_runtime::{Model, Tensor};
use drover_tests::manifest::models_dir;
use drover_wire::drift::{LatencyHistogram, Thresholds, WindowPolicy};

const ROUNDS: usize = 40;
const PER_ROUND: usize = 500;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Row {
    model: f64,
    observe_all: f64,
    observe_budget: f64,
    every: u32,
    service: f64,
    features: usize,
}

fn measure(name: &str, reference_data: &str) -> Row {
    let path = models_dir().join(name);
    let mut model = Model::load(&path).expect("model");
    let mut data = SampleFile::open(&models_dir().join(reference_data), model.signature()).expect("data");
    let reference = profile(&mut model, &mut data, 10).expect("reference profile");
    let mut data = SampleFile::open(&models_dir().join(reference_data), model.signature()).expect("data");
    let samples = data.next_batch(64).expect("samples");

    let clock: Arc<dyn Clock> = Arc::new(SystemClock::default());
    let policy = WindowPolicy { samples: 500, millis: 300_000, min_samples: 100 };
    let new_observer = |budget: f64| {
        Observer::new(&reference, model.signature(), policy, Thresholds::default(), 3, budget, clock.unix_ms())
            .expect("observer")
    };
    let mut all = new_observer(0.0);
    let mut budgeted = new_observer(0.005);
    let features = all.names().len();
    let settings = drover_runtime::agent::AgentConfig::parse("device = \"bench\"\ndata_dir = \"/tmp\"")
        .expect("config")
        .serve_settings(None);
    let inference = Inference::new(settings, clock.clone());
    let served = Model::load(&path).expect("model");
    let model_ref = drover_wire::message::ModelRef { name: "bench".try_into().expect("name"), version: 1 };
    let watch = inference.observer(&served, &model_ref, &reference, Thresholds::default());
    inference.serve(served, model_ref, watch);

    let mut outputs: Vec<Tensor> = Vec::new();
    let mut histogram = LatencyHistogram::new();
    // Four kinds of blocks of PER_ROUND inferences, interleaved round after round so that noise
    // hits them alike; each block is timed as a whole (no clock read per call in the loop, the
    // agent's own reads excepted), and a kind's figure is the median of its rounds.

    let mut rounds: [Vec<f64>; 4] = Default::default();
    let mut i = 0usize;
    for round in 0..ROUNDS + 2 {
        for (kind, times) in rounds.iter_mut().enumerate() {
            let t = Instant::now();
            for _ in 0..PER_ROUND {
                let sample = &samples[i % samples.len()];
                i += 1;
                match kind {
                    0 => model.run_one(sample, &mut outputs).expect("run"),
                    1 | 2 => {
                        // What Inference::infer adds around the engine for telemetry and drift.
                        let o = if kind == 1 { &mut all } else { &mut budgeted };
                        let start = Instant::now();
                        let engine = o.take_turn().then(Instant::now);
                        model.run_one(sample, &mut outputs).expect("run");
                        if let Some(engine) = engine {
                            o.observe(&sample[0], &outputs, engine.elapsed().as_nanos() as u64);
                            if o.due(clock.unix_ms()) {
                                black_box(o.close(clock.unix_ms()));
                            }
                        }
                        histogram.record(start.elapsed().as_micros() as u32);
                    }
                    _ => {
                        black_box(inference.infer(None, sample).expect("infer"));
                    }
                }
                black_box(&outputs);
            }
            if round >= 2 {
                times.push(t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64);
            }
        }
    }
    // Drain what the service accumulated, as the agent's report tick does.
    black_box(inference.take_reports());
    black_box(histogram.quantile(0.99));
    let [model_t, all_t, budget_t, service_t] = rounds.map(median);
    Row {
        model: model_t,
        observe_all: all_t - model_t,
        observe_budget: budget_t - model_t,
        every: budgeted.every(),
        service: service_t - model_t,
        features,
    }
}

fn main() {
    println!(
        "Drift and telemetry cost per inference: {ROUNDS} rounds of {PER_ROUND} inferences per kind, interleaved, after 2 warm-up rounds"
    );
    println!("model = Model::run_one per call; the others are what a call costs on top of it:");
    println!(
        "observe all = latency timing and histogram, and the drift monitor on every inference ([drift] budget_pct = 0)"
    );
    println!("observe @0.5% = the same with the agent's default budget: one inference in `every` observed");
    println!(
        "service = Inference::infer end to end (queue, locks, request id, label memory, outputs copied), default budget"
    );
    println!("goal: drift + telemetry (observe @0.5%) <= 2 % of the MLP's inference");
    println!();
    println!(
        "{:<18} {:>8} {:>9} {:>14} {:>8} {:>14} {:>6} {:>8} {:>10} {:>8}",
        "model", "features", "model µs", "observe all µs", "%", "observe @0.5% µs", "every", "%", "service µs", "%"
    );
    for (name, data) in [
        ("mlp.onnx", "reference/mlp.input.jsonl"),
        ("iris_logreg.onnx", "data/iris.train.jsonl"),
        ("cnn.onnx", "reference/cnn.input.jsonl"),
    ] {
        let r = measure(name, data);
        println!(
            "{:<18} {:>8} {:>9.2} {:>14.3} {:>7.2}% {:>14.3} {:>6} {:>7.2}% {:>10.3} {:>7.2}%",
            name,
            r.features,
            r.model,
            r.observe_all,
            100.0 * r.observe_all / r.model,
            r.observe_budget,
            r.every,
            100.0 * r.observe_budget / r.model,
            r.service,
            100.0 * r.service / r.model
        );
    }
}
