//! Where the fleet server keeps what it learned, behind a small trait: SQLite, the embedded
//! default for one server, and PostgreSQL, which several server instances share.
//!
//! One server's registry is the truth and the store its copy ([`Storage::write`]). Servers
//! sharing a store each see part of the reports (a shared subscription deals them out), so there
//! the store is the truth: a batch's records are applied to the devices as stored, under their
//! rows' locks ([`Storage::ingest`]), and each server's registry is a cache refreshed from it
//! ([`Storage::changed`]).

mod postgres;
mod sqlite;

pub use postgres::Postgres;
pub use sqlite::Sqlite;

use std::time::Duration;

use super::record::Record;
use super::registry::{Change, Device, Drift, FleetEvent, Period, Registry};

/// What PostgreSQL said, in full: the client's own text for a server error is only "db error",
/// and the cause of a connection failure sits in its source.
fn postgres_reason(e: &::postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

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
    /// PostgreSQL refused, or the connection failed.
    #[error("fleet database (PostgreSQL): {}", postgres_reason(.0))]
    Postgres(#[from] ::postgres::Error),
    /// The schema in PostgreSQL is newer than this server knows.
    #[error("fleet database schema version {found} is newer than this server's {known}: upgrade the server")]
    Newer {
        /// In the database.
        found: i64,
        /// The newest this server knows.
        known: i64,
    },
    /// TLS to PostgreSQL could not be set up.
    #[error("fleet database TLS: {0}")]
    Tls(String),
    /// The store's connection thread is gone.
    #[error("fleet database: the connection thread stopped")]
    Gone,
    /// A stored document did not read back.
    #[error("fleet database: stored device '{id}' does not read back: {reason}")]
    Corrupt {
        /// The device.
        id: String,
        /// Why.
        reason: String,
    },
}

/// A device's record as it reached one server, for a shared store to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrived {
    /// Unix ms when the server took it.
    pub now_ms: u64,
    /// The device.
    pub device: String,
    /// What it said.
    pub record: Record,
}

/// What [`Storage::ingest`] made of a batch.
#[derive(Debug, Default)]
pub struct Ingested {
    /// The batch's devices as now stored, for the server's registry.
    pub devices: Vec<Device>,
    /// Records that changed something.
    pub stored: u64,
    /// Repeated deliveries (seen before, by this server or another).
    pub repeated: u64,
}

/// Applies `batch` to the devices as `stored` (new devices start empty); returns the rows to
/// write and the outcome. The same pure registry logic as one server's, so a report counts once
/// whichever server it reached.
pub fn apply_batch(stored: Vec<Device>, batch: &[Arrived]) -> (Vec<Change>, Ingested) {
    let mut registry = Registry::from_devices(stored);
    let mut changes = Vec::new();
    let mut out = Ingested::default();
    for a in batch {
        match registry.apply(a.now_ms, &a.device, &a.record) {
            Some(c) => {
                changes.extend(c);
                out.stored += 1;
            }
            None => out.repeated += 1,
        }
    }
    let rows = registry.touched();
    out.devices = rows
        .iter()
        .filter_map(|c| match c {
            Change::Device(d) => Some(d.as_ref().clone()),
            _ => None,
        })
        .collect();
    changes.extend(rows);
    (changes, out)
}

/// The fleet server's store.
pub trait Storage: Send {
    /// Whether several servers may share it: then records go through [`Storage::ingest`].
    fn shared(&self) -> bool {
        false
    }
    /// Applies a batch of records to the devices as stored and writes the outcome, all or
    /// nothing. Stores shared by several servers lock the batch's device rows for it.
    fn ingest(&mut self, batch: &[Arrived]) -> Result<Ingested, StorageError> {
        let mut ids: Vec<String> = batch.iter().map(|a| a.device.clone()).collect();
        ids.sort();
        ids.dedup();
        let (changes, out) = apply_batch(self.load(&ids)?, batch);
        self.write(&changes)?;
        Ok(out)
    }
    /// The devices among `ids` that are stored.
    fn load(&self, ids: &[String]) -> Result<Vec<Device>, StorageError>;
    /// The devices other servers changed since the last call (all of them the first time): a
    /// shared store's news for this server's registry.
    fn changed(&mut self) -> Result<Vec<Device>, StorageError> {
        Ok(Vec::new())
    }
    /// Whether this server drives the rollouts: of the servers sharing a store, exactly one at a
    /// time (`holder` names this one to the others). Always so for a store of its own.
    fn lead(&mut self, _holder: &str, _now_ms: u64) -> Result<bool, StorageError> {
        Ok(true)
    }
    /// Who drives the rollouts, as they named themselves to [`Storage::lead`].
    fn leader(&self) -> Result<Option<String>, StorageError> {
        Ok(None)
    }
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
    /// Every rollout's state without its bundle, oldest first: what the servers that do not
    /// drive them show, read every second.
    fn rollout_states(&self) -> Result<Vec<crate::rollout::Rollout>, StorageError>;
    /// One rollout's bundle.
    fn rollout_bundle(&self, id: &str) -> Result<Option<Vec<u8>>, StorageError>;
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
pub(crate) mod tests {
    use super::*;
    use crate::fleet::registry::tests::{status, telemetry};

    pub(crate) fn arrived(now_ms: u64, device: &str, record: Record) -> Arrived {
        Arrived { now_ms, device: device.into(), record }
    }

    /// What every shared store must do: servers that each saw part of a device's reports, some
    /// twice and some late, leave the totals every report counted in once, and one "online".
    pub(crate) fn servers_sharing_a_store_count_each_report_once(a: &mut dyn Storage, b: &mut dyn Storage) {
        let first =
            a.ingest(&[arrived(1, "pi-1", status(true, Some(3))), arrived(2, "pi-1", telemetry(1, 10_000, 10))]);
        assert_eq!(first.expect("a").stored, 2);
        // The same status reached b (presence is read by every server), then reports 3 and 1
        // again (a redelivery after a kill), then the late report 2.
        let second = b
            .ingest(&[
                arrived(3, "pi-1", status(true, Some(3))),
                arrived(3, "pi-1", telemetry(3, 12_000, 30)),
                arrived(3, "pi-1", telemetry(1, 10_000, 10)),
                arrived(4, "pi-2", telemetry(1, 10_000, 5)),
            ])
            .expect("b");
        assert_eq!((second.stored, second.repeated), (3, 1));
        let late = a.ingest(&[arrived(5, "pi-1", telemetry(2, 11_000, 20))]).expect("a again");
        assert_eq!((late.stored, late.devices.len()), (1, 1));
        assert_eq!(late.devices[0].totals.inferences, 60, "a's outcome has b's reports in");
        let devices = b.devices().expect("devices");
        assert_eq!(devices.len(), 2);
        let pi1 = &devices[0];
        assert_eq!((pi1.totals.inferences, pi1.telemetry_mark.seq), (60, 3));
        assert_eq!(pi1.last.as_ref().map(|p| p.end_ms), Some(12_000), "the newest report says what it is now");
        let online = a.events(Some("pi-1"), 10).expect("events").iter().filter(|e| e.kind == "online").count();
        assert_eq!(online, 1, "the second server saw the device online already");
        let series = a.series("pi-1", 0, u64::MAX, 100).expect("series");
        assert_eq!(series.iter().map(|p| p.end_ms).collect::<Vec<_>>(), [10_000, 11_000, 12_000]);
        assert_eq!(series.iter().map(|p| p.inferences).sum::<u64>(), 60);
    }

    #[test]
    fn the_shared_path_counts_each_report_once_over_sqlite_too() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("fleet.db");
        let (mut a, mut b) = (Sqlite::open(&path).expect("a"), Sqlite::open(&path).expect("b"));
        servers_sharing_a_store_count_each_report_once(&mut a, &mut b);
    }

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
