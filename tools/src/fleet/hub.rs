//! The fleet server's shared state: the registry, the store, the ingest counters, and a channel
//! that tells live views (the dashboard's event stream, `drover fleet watch`) that something
//! changed. Messages go in one at a time; their changes are written in batches, one transaction
//! each, and only a written batch is acknowledged to the broker.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::metrics::{self, Ingest};
use super::record::{self, RecordError};
use super::registry::{Change, Registry};
use super::storage::{Pruned, Retention, Storage, StorageError};

/// What became of one message.
#[derive(Debug, PartialEq)]
pub enum Taken {
    /// Its changes wait for the next write.
    Pending,
    /// A repeated delivery, or a cleared retained message: nothing to store.
    Nothing,
}

/// The state behind the server.
pub struct Hub {
    registry: Mutex<Registry>,
    storage: Mutex<Box<dyn Storage>>,
    /// The changes waiting for the next write, and how many stored messages they came from.
    pending: Mutex<(Vec<Change>, u64)>,
    ingest: Mutex<Ingest>,
    updates: broadcast::Sender<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these half-updated in a way a reader could not use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub over `storage`, its registry rebuilt from what the store kept.
    pub fn new(storage: Box<dyn Storage>) -> Result<Arc<Hub>, StorageError> {
        let registry = Registry::from_devices(storage.devices()?);
        Ok(Arc::new(Hub {
            registry: Mutex::new(registry),
            storage: Mutex::new(storage),
            pending: Mutex::new((Vec::new(), 0)),
            ingest: Mutex::new(Ingest::default()),
            updates: broadcast::channel(16).0,
        }))
    }

    /// Takes one message from the broker, received at `now_ms`.
    pub fn take(&self, now_ms: u64, topic: &str, payload: &[u8]) -> Result<Taken, RecordError> {
        let decoded = match record::decode(topic, payload) {
            Ok(d) => d,
            Err(e) => {
                lock(&self.ingest).rejected += 1;
                return Err(e);
            }
        };
        let Some((device, rec)) = decoded else { return Ok(Taken::Nothing) };
        let changes = lock(&self.registry).apply(now_ms, &device, &rec);
        let mut ingest = lock(&self.ingest);
        if changes.is_empty() {
            ingest.repeated += 1;
            return Ok(Taken::Nothing);
        }
        ingest.stored += 1;
        let mut pending = lock(&self.pending);
        pending.0.extend(changes);
        pending.1 += 1;
        Ok(Taken::Pending)
    }

    /// Writes the pending changes in one transaction and tells the live views. On error the
    /// changes stay pending (and the messages unacknowledged) for the next attempt.
    pub fn flush(&self) -> Result<usize, StorageError> {
        let (changes, messages) = std::mem::take(&mut *lock(&self.pending));
        if changes.is_empty() {
            return Ok(0);
        }
        if let Err(e) = lock(&self.storage).write(&changes) {
            let mut pending = lock(&self.pending);
            let (later, later_messages) = std::mem::replace(&mut *pending, (changes, messages));
            pending.0.extend(later);
            pending.1 += later_messages;
            return Err(e);
        }
        lock(&self.ingest).written += messages;
        let _ = self.updates.send(());
        Ok(changes.len())
    }

    /// Drops what the retention no longer keeps.
    pub fn prune(&self, now_ms: u64, retention: &Retention) -> Result<Pruned, StorageError> {
        lock(&self.storage).prune(now_ms, retention)
    }

    /// Runs `f` on the registry.
    pub fn registry<T>(&self, f: impl FnOnce(&Registry) -> T) -> T {
        f(&lock(&self.registry))
    }

    /// Runs `f` on the store (queries for the API).
    pub fn storage<T>(&self, f: impl FnOnce(&dyn Storage) -> T) -> T {
        f(lock(&self.storage).as_ref())
    }

    /// A receiver that wakes on every written batch.
    pub fn subscribe(&self) -> broadcast::Receiver<()> {
        self.updates.subscribe()
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let ingest = *lock(&self.ingest);
        let registry = lock(&self.registry);
        metrics::render(registry.devices(), ingest, &[])
    }

    /// The ingest counters.
    pub fn ingest(&self) -> Ingest {
        *lock(&self.ingest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::storage::Sqlite;
    use drover_runtime::link::codec::{self, PayloadFormat};

    #[test]
    fn messages_are_stored_in_batches_and_bad_ones_are_counted_and_change_nothing() {
        let hub = Hub::new(Box::new(Sqlite::in_memory().expect("db"))).expect("hub");
        let mut woken = hub.subscribe();
        let crate::fleet::record::Record::Status(s) = crate::fleet::registry::tests::status(true, Some(1)) else {
            unreachable!()
        };
        let payload = codec::encode(PayloadFormat::Postcard, &s);
        assert_eq!(hub.take(1, "drover/v1/dev/pi-1/status", &payload).expect("taken"), Taken::Pending);
        assert!(hub.take(2, "drover/v1/dev/pi-1/telemetry", b"\xd1\x00").is_err());
        assert!(hub.take(2, "drover/v1/dev/pi-2/status", b"{not json").is_err());
        assert_eq!(hub.storage(|s| s.devices().expect("devices").len()), 0, "nothing written before the flush");
        assert_eq!(hub.ingest().written, 0);
        assert!(hub.flush().expect("flush") > 0);
        assert!(woken.try_recv().is_ok(), "live views are told");
        assert_eq!(hub.storage(|s| s.devices().expect("devices").len()), 1);
        assert_eq!(hub.registry(|r| r.devices().count()), 1, "the garbled messages made no device");
        assert_eq!(hub.ingest(), Ingest { stored: 1, written: 1, rejected: 2, repeated: 0 });
        assert_eq!(hub.flush().expect("flush"), 0);
    }
}
