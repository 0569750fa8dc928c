//! What happened in one telemetry period: counts, errors by kind, the latency histogram, the
//! deepest the queue got. Reset when the period is reported.

use drover_drift::LatencyHistogram;
use drover_wire::telemetry::Errors;

/// The counters of the current period.
#[derive(Debug, Clone, Default)]
pub struct Period {
    /// Unix ms when it started.
    pub start_ms: u64,
    /// Inferences that returned a result.
    pub inferences: u64,
    /// Requests that did not, by kind.
    pub errors: Errors,
    /// Latency of the successful ones, queueing included.
    pub latency: LatencyHistogram,
    /// Deepest the queue got.
    pub queue_max: u32,
}

impl Period {
    /// A period starting at `start_ms`.
    pub fn new(start_ms: u64) -> Period {
        Period { start_ms, ..Period::default() }
    }

    /// Hands over this period's counters and starts the next at `now_ms`.
    pub fn take(&mut self, now_ms: u64) -> Period {
        std::mem::replace(self, Period::new(now_ms))
    }
}
