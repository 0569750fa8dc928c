//! Inference traffic for simulated devices: real requests into each agent's inference service,
//! drawn from the iris training rows, at a rate per device, with a shift added to the inputs of
//! the devices told to drift. A device that is down (or between models) refuses or has no
//! service; that is counted, not hidden.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drover_runtime::serve::Inference;
use drover_runtime::tensor::{Tensor, TensorData};

/// The rows requests are drawn from: the iris training set the reference models were fit on.
pub const IRIS_TRAIN: &str = include_str!("../../../models/data/iris.train.jsonl");

/// Parses JSON Lines of 4 numbers (the iris rows).
pub fn rows(text: &str) -> Result<Vec<[f32; 4]>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str::<[f32; 4]>(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

/// One device's lane: its service while it runs, and the shift of its inputs.
#[derive(Debug, Default)]
pub struct Lane {
    service: Mutex<Option<Inference>>,
    shift: AtomicU32,
}

impl Lane {
    /// The device (re)started with this service, or stopped (`None`).
    pub fn set(&self, service: Option<Inference>) {
        *self.service.lock().unwrap_or_else(|p| p.into_inner()) = service;
    }

    /// What the device's inputs get added from now on (0: none).
    pub fn shift(&self, by: f32) {
        self.shift.store(by.to_bits(), Ordering::Relaxed);
    }

    fn current(&self) -> (Option<Inference>, f32) {
        let s = self.service.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (s, f32::from_bits(self.shift.load(Ordering::Relaxed)))
    }
}

/// Requests sent so far.
#[derive(Debug, Default)]
pub struct Counts {
    /// Answered.
    pub answered: AtomicU64,
    /// Refused or failed by the device.
    pub failed: AtomicU64,
    /// Not sent: the device was down.
    pub skipped: AtomicU64,
}

/// The traffic thread; stops when dropped.
#[derive(Debug)]
pub struct Traffic {
    /// One lane per device, in the fleet's order.
    pub lanes: Arc<Vec<Lane>>,
    /// What was sent.
    pub counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Traffic {
    /// Sends `rate_hz` requests per second to each of `devices` lanes, round the rows.
    pub fn start(devices: usize, rate_hz: f64, rows: Vec<[f32; 4]>) -> std::io::Result<Traffic> {
        let lanes: Arc<Vec<Lane>> = Arc::new((0..devices).map(|_| Lane::default()).collect());
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (l, c, s) = (lanes.clone(), counts.clone(), stop.clone());
        let thread =
            std::thread::Builder::new().name("traffic".into()).spawn(move || drive(&l, &c, &s, rate_hz, &rows))?;
        Ok(Traffic { lanes, counts, stop, thread: Some(thread) })
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The loop: every tick, each lane gets the requests its rate owes it so far.
fn drive(lanes: &[Lane], counts: &Counts, stop: &AtomicBool, rate_hz: f64, rows: &[[f32; 4]]) {
    const TICK: Duration = Duration::from_millis(20);
    if rows.is_empty() {
        return;
    }
    let start = Instant::now();
    let mut sent = vec![0u64; lanes.len()];
    // Each lane walks every row in its own order: a stride co-prime with the row count, from
    // its own offset, so any window of a device's requests is an even sample of the rows.
    let stride = stride(rows.len());
    let mut next_row: Vec<usize> = (0..lanes.len()).map(|i| i.wrapping_mul(13) % rows.len()).collect();
    while !stop.load(Ordering::Relaxed) {
        let owed = (start.elapsed().as_secs_f64() * rate_hz) as u64;
        for ((lane, sent), next_row) in lanes.iter().zip(sent.iter_mut()).zip(next_row.iter_mut()) {
            let (service, shift) = lane.current();
            while *sent < owed {
                *sent += 1;
                let Some(service) = &service else {
                    counts.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let row = rows[*next_row];
                *next_row = (*next_row + stride) % rows.len();
                let x: Vec<f32> = row.iter().map(|v| v + shift).collect();
                let answered = Tensor::new(vec![4], TensorData::F32(x)).ok().map(|t| service.infer(None, &[t]));
                match answered {
                    Some(Ok(_)) => counts.answered.fetch_add(1, Ordering::Relaxed),
                    _ => counts.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        std::thread::sleep(TICK);
    }
}

/// A step through `n` rows that visits each once per `n` steps (co-prime with `n`, so not 1
/// unless it must be: neighbouring rows of a sorted file would otherwise come in runs).
fn stride(n: usize) -> usize {
    (7..n).find(|s| gcd(*s, n) == 1).unwrap_or(1)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_rows_parse_and_bad_lines_are_named() {
        let r = rows(IRIS_TRAIN).unwrap();
        assert_eq!(r.len(), 150);
        assert!(rows("[1,2,3,4]\n[1,2]\n").unwrap_err().starts_with("line 2"));
    }

    #[test]
    fn a_lane_walks_every_row_once_per_round() {
        for n in [1, 2, 7, 14, 120, 150] {
            let step = stride(n);
            let mut seen = vec![false; n];
            let mut at = 3 % n;
            for _ in 0..n {
                assert!(!seen[at], "n={n}: row {at} twice");
                seen[at] = true;
                at = (at + step) % n;
            }
            assert!(seen.iter().all(|s| *s));
        }
    }

    #[test]
    fn lanes_without_a_service_are_skipped_at_the_rate() {
        let t = Traffic::start(3, 50.0, rows(IRIS_TRAIN).unwrap()).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        drop_traffic(t, |c| {
            let skipped = c.skipped.load(Ordering::Relaxed);
            // 3 lanes × 50/s × 0.4 s = 60, give or take the ticks.
            assert!((30..=75).contains(&skipped), "{skipped}");
            assert_eq!(c.answered.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed), 0);
        });
    }

    fn drop_traffic(t: Traffic, check: impl FnOnce(&Counts)) {
        let counts = t.counts.clone();
        drop(t);
        check(&counts);
    }
}
