//! Where the fleet server keeps what it learned, behind a small trait so that another backend
//! (PostgreSQL, for several servers) can follow SQLite, the embedded default.

mod sqlite;

pub use sqlite::Sqlite;

use std::time::Duration;

use super::registry::{Change, Device, Drift, FleetEvent, Period};

/// How long the store keeps what, so its disk use has a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Every telemetry period, as reported.
    pub raw: Duration,
    /// Five-minute roll-ups of the periods, drift windows, events, and devices not heard from.
    pub rollup: Duration,
    /// At most this many raw periods in all (the oldest go first), whatever their age.
    pub max_raw_rows: u64,
    /// At most this many events in all.
    pub max_events: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::from_secs(24 * 3600),
            rollup: Duration::from_secs(30 * 24 * 3600),
            max_raw_rows: 5_000_000,
            max_events: 1_000_000,
        }
    }
}

/// Length of a roll-up bucket.
pub const ROLLUP_MS: u64 = 5 * 60 * 1000;

/// What a prune removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Raw periods.
    pub raw: u64,
    /// Roll-up buckets, drift windows and events.
    pub old: u64,
    /// Devices not heard from within the roll-up retention.
    pub devices: u64,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database refused.
    #[error("fleet database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The schema could not be brought up to date.
    #[error("fleet database schema: {0}")]
    Migration(#[from] rusqlite_migration::Error),
    /// A stored document did not read back.
    #[error("fleet database: stored device '{id}' does not read back: {reason}")]
    Corrupt {
        /// The device.
        id: String,
        /// Why.
        reason: String,
    },
}

/// The fleet server's store.
pub trait Storage: Send {
    /// Writes what a batch of records changed, all or nothing (one transaction). Repeated rows
    /// (the same device and period) are kept once.
    fn write(&mut self, changes: &[Change]) -> Result<(), StorageError>;
    /// Every device, to rebuild the registry at start-up.
    fn devices(&self) -> Result<Vec<Device>, StorageError>;
    /// A device's telemetry periods ending in `[since_ms, until_ms]`, oldest first: the raw
    /// periods where they are still kept, five-minute roll-ups before that, merged down to at most
    /// `max_points` points.
    fn series(
        &self,
        device: &str,
        since_ms: u64,
        until_ms: u64,
        max_points: usize,
    ) -> Result<Vec<Period>, StorageError>;
    /// A device's judged drift windows since `since_ms`, oldest first, at most `limit` (the newest).
    fn drift(&self, device: &str, since_ms: u64, limit: usize) -> Result<Vec<Drift>, StorageError>;
    /// The newest `limit` events (of one device, or all), newest first.
    fn events(&self, device: Option<&str>, limit: usize) -> Result<Vec<FleetEvent>, StorageError>;
    /// Drops what `retention` no longer keeps, as of `now_ms`.
    fn prune(&mut self, now_ms: u64, retention: &Retention) -> Result<Pruned, StorageError>;
    /// Keeps a rollout (its controller as JSON, and its bundle).
    fn save_rollout(&mut self, rollout: &crate::rollout::Rollout, bundle: &[u8]) -> Result<(), StorageError>;
    /// Every rollout kept, with its bundle, oldest first.
    fn rollouts(&self) -> Result<Vec<(crate::rollout::Rollout, Vec<u8>)>, StorageError>;
}

/// Merges consecutive periods into at most `max_points` points: sums of counts, the largest p99
/// and temperature, the mean CPU. Periods come oldest first.
pub fn downsample(points: Vec<Period>, max_points: usize) -> Vec<Period> {
    let max_points = max_points.max(1);
    if points.len() <= max_points {
        return points;
    }
    let per = points.len().div_ceil(max_points);
    points
        .chunks(per)
        .map(|chunk| {
            let mut merged = chunk[chunk.len() - 1].clone();
            merged.length_ms = chunk.iter().map(|p| p.length_ms).sum();
            merged.inferences = chunk.iter().map(|p| p.inferences).sum();
            merged.errors = chunk.iter().map(|p| p.errors).sum();
            merged.p99_us = chunk.iter().filter_map(|p| p.p99_us).max();
            merged.p90_us = chunk.iter().filter_map(|p| p.p90_us).max();
            merged.p50_us = chunk.iter().filter_map(|p| p.p50_us).max();
            merged.temp_c = chunk.iter().filter_map(|p| p.temp_c).reduce(f32::max);
            let cpu: Vec<f32> = chunk.iter().filter_map(|p| p.cpu_pct).collect();
            merged.cpu_pct = (!cpu.is_empty()).then(|| cpu.iter().sum::<f32>() / cpu.len() as f32);
            merged
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downsampling_keeps_totals_and_peaks() {
        let points: Vec<Period> = (0..10u64)
            .map(|i| Period {
                end_ms: i * 1000,
                length_ms: 1000,
                inferences: i,
                p99_us: Some(100 + i as u32),
                cpu_pct: Some(10.0),
                ..Period::default()
            })
            .collect();
        let merged = downsample(points.clone(), 3);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged.iter().map(|p| p.inferences).sum::<u64>(), 45);
        assert_eq!(merged.iter().map(|p| p.length_ms).sum::<u64>(), 10_000);
        assert_eq!(merged[0].p99_us, Some(103));
        assert_eq!(merged[2].end_ms, 9000, "a point is stamped with its last period's end");
        assert_eq!(merged[1].cpu_pct, Some(10.0));
        assert_eq!(downsample(points, 50).len(), 10, "nothing to merge");
    }
}
