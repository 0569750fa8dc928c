//! Inference at a fixed rate through the agent's local API (Open Inference Protocol v2 over
//! HTTP), as an application on the board would call it: the iris rows in turn, with a shift
//! added while the soak makes the inputs drift.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Requests sent so far.
#[derive(Debug, Default)]
pub struct LoadCounts {
    /// Answered with 200.
    pub answered: AtomicU64,
    /// Refused, failed or not answered.
    pub failed: AtomicU64,
    /// Microseconds spent waiting for answers (answered ones).
    pub latency_us: AtomicU64,
    /// The slowest answer, µs.
    pub max_latency_us: AtomicU64,
}

/// The load thread; stops when dropped.
#[derive(Debug)]
pub struct Load {
    /// What was sent.
    pub counts: Arc<LoadCounts>,
    shift: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Sends `rate_hz` requests per second to model `model` of the API at `base`
    /// (`http://HOST:PORT`), whose input is named `input`.
    pub fn start(base: &str, model: &str, input: &str, rate_hz: f64, rows: Vec<[f32; 4]>) -> std::io::Result<Load> {
        let counts = Arc::new(LoadCounts::default());
        let shift = Arc::new(AtomicU32::new(0f32.to_bits()));
        let stop = Arc::new(AtomicBool::new(false));
        let url = format!("{base}/v2/models/{model}/infer");
        let (c, sh, st, input) = (counts.clone(), shift.clone(), stop.clone(), input.to_string());
        let thread = std::thread::Builder::new()
            .name("soak-load".into())
            .spawn(move || drive(&url, &input, rate_hz, &rows, &c, &sh, &st))?;
        Ok(Load { counts, shift, stop, thread: Some(thread) })
    }

    /// What every input gets added from now on (0: none).
    pub fn shift(&self, by: f32) {
        self.shift.store(by.to_bits(), Ordering::Relaxed);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request body for one row.
pub fn request(input: &str, row: [f32; 4]) -> serde_json::Value {
    serde_json::json!({
        "inputs": [{ "name": input, "shape": [1, 4], "datatype": "FP32", "data": row }]
    })
}

fn drive(
    url: &str,
    input: &str,
    rate_hz: f64,
    rows: &[[f32; 4]],
    counts: &LoadCounts,
    shift: &AtomicU32,
    stop: &AtomicBool,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let period = Duration::from_secs_f64(1.0 / rate_hz.max(0.001));
    let mut next = Instant::now();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let by = f32::from_bits(shift.load(Ordering::Relaxed));
        let row = rows.get(i % rows.len().max(1)).copied().unwrap_or_default().map(|x| x + by);
        i += 1;
        let body = request(input, row).to_string();
        let sent = Instant::now();
        let ok = agent
            .post(url)
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .is_ok_and(|mut r| r.status().is_success() && r.body_mut().read_to_vec().is_ok());
        if ok {
            let us = sent.elapsed().as_micros() as u64;
            counts.answered.fetch_add(1, Ordering::Relaxed);
            counts.latency_us.fetch_add(us, Ordering::Relaxed);
            counts.max_latency_us.fetch_max(us, Ordering::Relaxed);
        } else {
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
        // A fixed schedule, not a fixed pause: slow answers do not lower the rate (until they
        // take longer than the period, then it sends back to back and skips the missed slots).
        next += period;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}
