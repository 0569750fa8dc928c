//! Local API benchmark: what the OIP v2 REST API costs over calling the inference service in the
//! same process, at 1 and 8 concurrent clients, with dynamic batching off and on. Both sides run
//! in this very run, interleaved in rounds, and the table gives ratios, because the machines are
//! shared and noisy.
//!
//! `cargo bench -p drover-tests --bench local_api` (release profile: LTO, as shipped).

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use drover_runtime::serve::Inference;
use drover_runtime::tensor::{Tensor, TensorData};
use drover_tests::api::{LocalApi, serve_model, service};

const ROUNDS: usize = 5;
const PER_CLIENT: usize = 200;
const FEATURES: usize = 64;

/// Latencies of one side over all rounds, and its total wall time.
#[derive(Default)]
struct Side {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Side {
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn quantile_us(&mut self, q: f64) -> f64 {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i].as_secs_f64() * 1e6
    }
}

fn sample(i: usize) -> Vec<f32> {
    (0..FEATURES).map(|j| ((i * 31 + j * 7) % 97) as f32 / 48.5 - 1.0).collect()
}

/// Runs `clients` threads, each making `PER_CLIENT` calls of `call(client, i)`, started together.
fn run_clients(side: &mut Side, clients: usize, call: impl Fn(usize, usize) + Sync + Send + Clone + 'static) {
    let start = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (start, call) = (start.clone(), call.clone());
            std::thread::spawn(move || {
                start.wait();
                (0..PER_CLIENT)
                    .map(|i| {
                        let t = Instant::now();
                        call(c, i);
                        t.elapsed()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    start.wait();
    let began = Instant::now();
    for t in threads {
        side.latencies.extend(t.join().expect("client thread"));
    }
    side.wall += began.elapsed();
}

fn engine_side(side: &mut Side, inference: &Inference, clients: usize) {
    let inference = inference.clone();
    run_clients(side, clients, move |c, i| {
        let x = Tensor::new(vec![FEATURES], TensorData::F32(sample(c * PER_CLIENT + i))).expect("tensor");
        inference.infer(None, &[x]).expect("engine answer");
    });
}

fn api_side(side: &mut Side, url: &str, clients: usize) {
    let agents: Arc<Vec<ureq::Agent>> = Arc::new((0..clients).map(|_| ureq::Agent::new_with_defaults()).collect());
    let url = url.to_string();
    run_clients(side, clients, move |c, i| {
        let body = serde_json::json!({"inputs": [{"name": "features", "shape": [1, FEATURES], "datatype": "FP32",
            "data": sample(c * PER_CLIENT + i)}]});
        let mut r = agents[c].post(&url).send_json(&body).expect("API answer");
        r.body_mut().read_to_string().expect("body");
    });
}

fn main() {
    println!(
        "Local API benchmark: mlp (64 features, symbolic batch), {ROUNDS} interleaved rounds of {PER_CLIENT} calls per client"
    );
    println!("engine = Inference::infer in this process (tensor built per call; the path the API ends in)");
    println!("API    = POST /v2/models/mlp/infer over loopback HTTP/1.1 keep-alive, one sample per request, OIP JSON");
    println!("rate ratio = API req/s / engine req/s; added = API median - engine median");
    println!();
    println!(
        "{:<9} {:>7} {:>17} {:>17} {:>12} {:>12} {:>7} {:>10} {:>12}",
        "batching",
        "clients",
        "engine med/p99 µs",
        "API med/p99 µs",
        "engine req/s",
        "API req/s",
        "ratio",
        "added µs",
        "engine calls"
    );
    for (label, extra) in [("off", ""), ("on (32)", "[inference]\nbatch = 32\nbatch_delay_us = 200\n")] {
        for clients in [1, 8] {
            let inference = service(extra);
            serve_model(&inference, "mlp.onnx", "mlp", 1);
            let api = LocalApi::start(inference.clone(), 1 << 20);
            let url = api.url("/v2/models/mlp/infer");
            let (mut engine, mut http) = (Side::default(), Side::default());
            engine_side(&mut engine, &inference, clients);
            api_side(&mut http, &url, clients);
            let (engine, http) = (&mut Side::default(), &mut Side::default());
            let calls_before = inference.engine_calls();
            for _ in 0..ROUNDS {
                engine_side(engine, &inference, clients);
                api_side(http, &url, clients);
            }
            let calls = inference.engine_calls() - calls_before;
            let requests = 2 * ROUNDS * PER_CLIENT * clients;
            let (e50, e99, h50, h99) =
                (engine.quantile_us(0.5), engine.quantile_us(0.99), http.quantile_us(0.5), http.quantile_us(0.99));
            println!(
                "{:<9} {:>7} {:>17} {:>17} {:>12.0} {:>12.0} {:>7.2} {:>10.1} {:>12}",
                label,
                clients,
                format!("{e50:.1} / {e99:.1}"),
                format!("{h50:.1} / {h99:.1}"),
                engine.rate(),
                http.rate(),
                http.rate() / engine.rate(),
                h50 - e50,
                format!("{calls}/{requests}")
            );
        }
    }
}
