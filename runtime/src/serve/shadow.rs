//! Shadow testing: a candidate model answers a sample of live inputs beside the served model, on
//! its own thread, so that callers wait only for the served model and the operator learns how
//! the candidate would have done (agreement, output differences, speed) before it serves anyone.
//!
//! The request path only picks samples ([`Sampler`]) and hands copies over a bounded channel; a
//! candidate that falls behind loses samples (counted as skipped), never slows requests down.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use drover_wire::message::ModelRef;
use drover_wire::telemetry::Shadow;

use crate::engine::Model;
use crate::reference::class_of;
use crate::tensor::{Tensor, TensorData};

/// Samples waiting for the candidate before more are skipped.
const BACKLOG: usize = 32;

/// Picks `ppm` samples per million, evenly spread (1 in 10 at 100 000: the 10th, 20th, ...), so
/// a small rate still sees a steady stream rather than random bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    ppm: u32,
    credit: u32,
}

impl Sampler {
    /// A sampler taking `ppm` parts per million (capped at all of them).
    pub fn new(ppm: u32) -> Sampler {
        Sampler { ppm: ppm.min(1_000_000), credit: 0 }
    }

    /// Whether to take the next sample.
    pub fn pick(&mut self) -> bool {
        self.credit += self.ppm;
        if self.credit >= 1_000_000 {
            self.credit -= 1_000_000;
            true
        } else {
            false
        }
    }
}

/// Adds one comparison of the served model's outputs with the candidate's to `stats`: top-1
/// agreement when both name a class, and |difference| over every numeric element of outputs of
/// the same shape. Outputs of different count or shape make the sample a failure: the candidate
/// does not answer the same question.
pub fn compare(served: &[Tensor], candidate: &[Tensor], stats: &mut Shadow) {
    let same_shape =
        served.len() == candidate.len() && served.iter().zip(candidate).all(|(a, b)| a.shape() == b.shape());
    if !same_shape {
        stats.failed += 1;
        return;
    }
    stats.compared += 1;
    if let (Some((_, a)), Some((_, b))) = (served.first().and_then(class_of), candidate.first().and_then(class_of)) {
        stats.classified += 1;
        stats.agreed += u64::from(a == b);
    }
    for (a, b) in served.iter().zip(candidate) {
        if !numeric(a) || !numeric(b) {
            continue;
        }
        for (x, y) in a.to_f64_vec().into_iter().zip(b.to_f64_vec()) {
            let d = (x - y).abs();
            if d.is_finite() {
                stats.abs_diff_sum += d;
                stats.abs_diff_count += 1;
                stats.max_abs_diff = stats.max_abs_diff.max(d);
            }
        }
    }
}

/// Floating-point outputs are compared element by element; labels are compared as classes.
fn numeric(t: &Tensor) -> bool {
    matches!(t.data(), TensorData::F32(_) | TensorData::F64(_))
}

/// Empty counters for `candidate`.
pub fn empty(candidate: &ModelRef, sample_ppm: u32) -> Shadow {
    Shadow {
        candidate: candidate.clone(),
        sample_ppm,
        compared: 0,
        skipped: 0,
        failed: 0,
        classified: 0,
        agreed: 0,
        abs_diff_sum: 0.0,
        abs_diff_count: 0,
        max_abs_diff: 0.0,
        candidate_us: 0,
        served_us: 0,
        served_samples: 0,
    }
}

/// One sample for the candidate: its inputs and what the served model answered.
struct Job {
    sample: Vec<Tensor>,
    served: Vec<Tensor>,
}

/// A candidate running in shadow: its thread, the channel to it and the period's counters.
pub(crate) struct Runner {
    candidate: ModelRef,
    sample_ppm: u32,
    sampler: Sampler,
    jobs: Option<SyncSender<Job>>,
    stats: Arc<Mutex<Shadow>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    /// Starts `model` in shadow as `candidate`, taking `sample_ppm` of the inferences.
    pub(crate) fn start(model: Model, candidate: ModelRef, sample_ppm: u32) -> std::io::Result<Runner> {
        let stats = Arc::new(Mutex::new(empty(&candidate, sample_ppm)));
        let (jobs, queue) = std::sync::mpsc::sync_channel(BACKLOG);
        let worker_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("drover-shadow".into())
            .spawn(move || work(model, &queue, &worker_stats))?;
        Ok(Runner {
            candidate,
            sample_ppm,
            sampler: Sampler::new(sample_ppm),
            jobs: Some(jobs),
            stats,
            thread: Some(thread),
        })
    }

    /// The candidate.
    pub(crate) fn candidate(&self) -> &ModelRef {
        &self.candidate
    }

    /// Share of inferences taken, parts per million.
    pub(crate) fn sample_ppm(&self) -> u32 {
        self.sample_ppm
    }

    /// Whether the next sample goes to the candidate too.
    pub(crate) fn pick(&mut self) -> bool {
        self.sampler.pick()
    }

    /// Samples the candidate has dealt with this period (compared, failed or skipped).
    #[cfg(test)]
    pub(crate) fn handled(&self) -> u64 {
        let s = lock(&self.stats);
        s.compared + s.failed + s.skipped
    }

    /// Hands a picked sample to the candidate, or counts it skipped when the candidate is behind.
    pub(crate) fn offer(&self, sample: Vec<Tensor>, served: Vec<Tensor>) {
        let Some(jobs) = &self.jobs else { return };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = jobs.try_send(Job { sample, served }) {
            lock(&self.stats).skipped += 1;
        }
    }

    /// The period's counters, with the served model's engine time; the next period starts empty.
    pub(crate) fn take(&self, served_us: u64, served_samples: u64) -> Shadow {
        let mut stats = lock(&self.stats);
        let mut out = std::mem::replace(&mut *stats, empty(&self.candidate, self.sample_ppm));
        out.served_us = served_us;
        out.served_samples = served_samples;
        out
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.jobs = None; // the worker's loop ends with the channel
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<Shadow>) -> std::sync::MutexGuard<'_, Shadow> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn work(mut model: Model, queue: &Receiver<Job>, stats: &Mutex<Shadow>) {
    let mut outputs = Vec::new();
    while let Ok(job) = queue.recv() {
        let start = Instant::now();
        let result = model.run_one(&job.sample, &mut outputs);
        let micros = start.elapsed().as_micros() as u64;
        let mut s = lock(stats);
        match result {
            Ok(()) => {
                s.candidate_us += micros;
                compare(&job.served, &outputs, &mut s);
            }
            Err(e) => {
                log::debug!("shadow candidate failed on a sample: {e}");
                s.failed += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: Vec<usize>, data: TensorData) -> Tensor {
        Tensor::new(shape, data).expect("tensor")
    }

    fn model_ref() -> ModelRef {
        ModelRef { name: "m".try_into().expect("name"), version: 2 }
    }

    #[test]
    fn the_sampler_spreads_its_picks_evenly() {
        let mut s = Sampler::new(250_000);
        let picks: Vec<bool> = (0..8).map(|_| s.pick()).collect();
        assert_eq!(picks, [false, false, false, true, false, false, false, true]);
        let mut all = Sampler::new(5_000_000);
        assert!((0..10).all(|_| all.pick()), "capped at every sample");
        let mut none = Sampler::new(0);
        assert!((0..10).all(|_| !none.pick()));
        let mut rare = Sampler::new(1_000);
        assert_eq!((0..10_000).filter(|_| rare.pick()).count(), 10);
    }

    #[test]
    fn classes_and_probabilities_are_compared() {
        let mut stats = empty(&model_ref(), 1_000_000);
        let served = [t(vec![], TensorData::I64(vec![1])), t(vec![3], TensorData::F32(vec![0.1, 0.7, 0.2]))];
        let same = [t(vec![], TensorData::I64(vec![1])), t(vec![3], TensorData::F32(vec![0.2, 0.6, 0.2]))];
        let other = [t(vec![], TensorData::I64(vec![2])), t(vec![3], TensorData::F32(vec![0.1, 0.3, 0.6]))];
        compare(&served, &same, &mut stats);
        compare(&served, &other, &mut stats);
        assert_eq!((stats.compared, stats.classified, stats.agreed, stats.failed), (2, 2, 1, 0));
        assert_eq!(stats.top1_agreement(), Some(0.5));
        assert_eq!(stats.abs_diff_count, 6, "probabilities only, labels are classes");
        assert!((stats.max_abs_diff - 0.4).abs() < 1e-6, "{}", stats.max_abs_diff);
        let mean = stats.mean_abs_diff().expect("mean");
        assert!((mean - (0.1 + 0.1 + 0.0 + 0.0 + 0.4 + 0.4) / 6.0).abs() < 1e-6, "{mean}");
    }

    #[test]
    fn a_candidate_answering_another_shape_counts_as_failed() {
        let mut stats = empty(&model_ref(), 1_000_000);
        let served = [t(vec![3], TensorData::F32(vec![0.1, 0.7, 0.2]))];
        compare(&served, &[t(vec![2], TensorData::F32(vec![0.1, 0.7]))], &mut stats);
        compare(&served, &[], &mut stats);
        assert_eq!((stats.compared, stats.failed), (0, 2));
        assert_eq!((stats.top1_agreement(), stats.mean_abs_diff()), (None, None));
    }

    #[test]
    fn the_latency_ratio_compares_per_sample_engine_time() {
        let mut stats = empty(&model_ref(), 1_000_000);
        stats.compared = 10;
        stats.candidate_us = 300;
        stats.served_us = 1_000;
        stats.served_samples = 100;
        assert_eq!(stats.latency_ratio(), Some(3.0));
        stats.served_samples = 0;
        assert_eq!(stats.latency_ratio(), None);
    }
}
