//! The fleet server's database writer, on its own thread: the MQTT loop keeps decoding while a
//! transaction commits. Batches queue in order; whatever queued while one transaction was being
//! written goes into the next one (group commit: the busier the server, the larger and cheaper
//! per message its transactions), a device's rows coalesced to the newest. Each batch carries a
//! ticket; the loop learns the highest ticket written and acknowledges exactly the messages
//! behind it, so a server killed mid-stream gets every unwritten message again.
//!
//! A failed write is retried (the batch stays queued, its messages unacknowledged) until it
//! goes through or the writer is closed.
//!
//! Over a store shared with other servers, a batch carries the records themselves: the store
//! applies them to the devices as stored, and the writer puts the outcome into the registry,
//! which it also refreshes every second with what the other servers wrote.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, watch};

use super::metrics::Ingest;
use super::registry::{Change, Registry};
use super::storage::{Arrived, Ingested, Storage, StorageError};

/// Most changes merged into one transaction: a bound on the time the store is locked away from
/// the API's queries.
const MAX_GROUP_CHANGES: usize = 20_000;

/// How long a failed write waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// How often the registry takes in what other servers wrote to a shared store.
pub const REFRESH: Duration = Duration::from_secs(1);

/// What one submission asks the writer to store.
#[derive(Debug)]
pub struct Batch {
    /// Increasing per submission, from 1.
    pub ticket: u64,
    /// The rows.
    pub changes: Vec<Change>,
    /// Records for a shared store to apply ([`Storage::ingest`]).
    pub records: Vec<Arrived>,
    /// How many messages the rows came from.
    pub messages: u64,
}

/// Why [`Writer::wait`] returned without the ticket written.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The store keeps refusing.
    #[error("not written within {patience:?}: {last_error}")]
    Failing {
        /// How long it was given.
        patience: Duration,
        /// The store's latest refusal.
        last_error: String,
    },
    /// Nothing refused, it just took longer.
    #[error("not written within {0:?}")]
    Slow(Duration),
}

/// What the writer thread shares with its callers.
struct Shared {
    /// The highest ticket written.
    written: u64,
    /// The latest write failure, until a write succeeds.
    failing: Option<String>,
}

/// The store as the hub and the writer share it.
pub type SharedStorage = Arc<Mutex<Box<dyn Storage>>>;

/// The shared parts of the hub the writer updates.
pub struct Sinks {
    /// The store.
    pub storage: SharedStorage,
    /// The ingest counters (`written`).
    pub ingest: Arc<Mutex<Ingest>>,
    /// Woken after each transaction, for the live views.
    pub updates: broadcast::Sender<()>,
    /// The registry, which a shared store's outcomes and news go into.
    pub registry: Arc<Mutex<Registry>>,
}

/// The writer: a queue into its thread, and what it has written.
pub struct Writer {
    queue: Mutex<Option<Sender<Batch>>>,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    written: watch::Receiver<u64>,
    closing: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these half-updated in a way a reader could not use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Writer {
    /// Starts the thread.
    pub fn start(sinks: Sinks) -> Writer {
        let (queue, batches) = channel();
        let shared = Arc::new((Mutex::new(Shared { written: 0, failing: None }), Condvar::new()));
        let (tell, written) = watch::channel(0);
        let closing = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, closing) = (shared.clone(), closing.clone());
            std::thread::Builder::new()
                .name("fleet-writer".into())
                .spawn(move || run(batches, sinks, &shared, &tell, &closing))
                .ok()
        };
        if thread.is_none() {
            log::error!("fleet database: no writer thread; nothing will be written or acknowledged");
        }
        Writer { queue: Mutex::new(Some(queue)), shared, written, closing, thread: Mutex::new(thread) }
    }

    /// Queues a batch (in ticket order).
    pub fn submit(&self, batch: Batch) {
        if let Some(q) = lock(&self.queue).as_ref() {
            let _ = q.send(batch);
        }
    }

    /// The highest ticket written, as a watch for the server's loop.
    pub fn written(&self) -> watch::Receiver<u64> {
        self.written.clone()
    }

    /// Blocks until `ticket` is written, for at most `patience`.
    pub fn wait(&self, ticket: u64, patience: Duration) -> Result<(), WaitError> {
        let deadline = Instant::now() + patience;
        let (state, cv) = &*self.shared;
        let mut s = lock(state);
        while s.written < ticket {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(match &s.failing {
                    Some(e) => WaitError::Failing { patience, last_error: e.clone() },
                    None => WaitError::Slow(patience),
                });
            }
            s = cv.wait_timeout(s, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(())
    }
}

impl Drop for Writer {
    /// Writes what is queued (unless the store refuses: those messages were never acknowledged).
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        lock(&self.queue).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn run(
    batches: Receiver<Batch>,
    sinks: Sinks,
    shared: &(Mutex<Shared>, Condvar),
    tell: &watch::Sender<u64>,
    closing: &AtomicBool,
) {
    let is_shared = lock(&sinks.storage).shared();
    let mut refreshed = Instant::now();
    loop {
        let first = match batches.recv_timeout(REFRESH) {
            Ok(b) => Some(b),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if is_shared && refreshed.elapsed() >= REFRESH {
            refresh(&sinks);
            refreshed = Instant::now();
        }
        let Some(first) = first else { continue };
        let mut group = vec![first];
        let mut size = group[0].changes.len() + group[0].records.len();
        while size < MAX_GROUP_CHANGES {
            let Ok(next) = batches.try_recv() else { break };
            size += next.changes.len() + next.records.len();
            group.push(next);
        }
        let ticket = group.last().map_or(0, |b| b.ticket);
        let messages: u64 = group.iter().map(|b| b.messages).sum();
        let mut records = Vec::new();
        let changes = coalesce(group.into_iter().flat_map(|b| {
            records.extend(b.records);
            b.changes
        }));
        let started = Instant::now();
        let outcome = loop {
            match store(&sinks, &changes, &records) {
                Ok(outcome) => break outcome,
                Err(e) => {
                    log::error!("fleet database: {e}; {messages} messages stay unacknowledged, retrying");
                    lock(&shared.0).failing = Some(e.to_string());
                    shared.1.notify_all();
                    if closing.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        };
        log::trace!("wrote {messages} messages ({} rows) in {:?}", changes.len() + records.len(), started.elapsed());
        // Everything a waiter may look at once `wait` returns is updated before it is woken.
        if let Some(outcome) = outcome {
            let mut ingest = lock(&sinks.ingest);
            ingest.stored += outcome.stored;
            ingest.repeated += outcome.repeated;
            drop(ingest);
            lock(&sinks.registry).refresh(outcome.devices);
        }
        lock(&sinks.ingest).written += messages;
        tell.send_replace(ticket);
        let _ = sinks.updates.send(());
        {
            let mut s = lock(&shared.0);
            s.written = ticket;
            s.failing = None;
        }
        shared.1.notify_all();
    }
}

/// Writes a group's rows, then has the store apply its records; the outcome of those.
fn store(sinks: &Sinks, changes: &[Change], records: &[Arrived]) -> Result<Option<Ingested>, StorageError> {
    let mut storage = lock(&sinks.storage);
    if !changes.is_empty() {
        storage.write(changes)?;
    }
    if records.is_empty() {
        return Ok(None);
    }
    storage.ingest(records).map(Some)
}

/// Takes in what other servers wrote to the shared store.
fn refresh(sinks: &Sinks) {
    let news = lock(&sinks.storage).changed();
    match news {
        Ok(devices) if devices.is_empty() => {}
        Ok(devices) => {
            lock(&sinks.registry).refresh(devices);
            let _ = sinks.updates.send(());
        }
        Err(e) => log::warn!("fleet database: reading what other servers wrote: {e}"),
    }
}

/// The changes of several batches as one: in order, but each device's row only once, its
/// newest, where its last row stood.
pub fn coalesce(changes: impl IntoIterator<Item = Change>) -> Vec<Change> {
    let changes: Vec<Change> = changes.into_iter().collect();
    let mut newest: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, c) in changes.iter().enumerate() {
        if let Change::Device(d) = c {
            newest.insert(d.id.as_str(), i);
        }
    }
    let keep: Vec<bool> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Change::Device(d) => newest.get(d.id.as_str()) == Some(&i),
            _ => true,
        })
        .collect();
    changes.into_iter().zip(keep).filter_map(|(c, k)| k.then_some(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::registry::{Device, FleetEvent};
    use crate::fleet::storage::{Pruned, Retention, Sqlite, StorageError};

    fn row(id: &str, last_seen_ms: u64) -> Change {
        Change::Device(Box::new(Device { id: id.into(), last_seen_ms, ..Device::default() }))
    }

    fn event(device: &str, at_ms: u64) -> Change {
        Change::Event(FleetEvent { device: device.into(), at_ms, kind: "online".into(), text: String::new() })
    }

    #[test]
    fn coalescing_keeps_each_devices_newest_row_and_every_other_change_in_order() {
        let merged = coalesce([row("a", 1), event("a", 1), row("b", 1), row("a", 2), event("b", 2), row("a", 3)]);
        assert_eq!(merged, vec![event("a", 1), row("b", 1), event("b", 2), row("a", 3)]);
    }

    /// A store that refuses a number of writes, then takes them into SQLite.
    struct Flaky {
        refusals: usize,
        inner: Sqlite,
    }

    impl Storage for Flaky {
        fn write(&mut self, changes: &[Change]) -> Result<(), StorageError> {
            if self.refusals > 0 {
                self.refusals -= 1;
                return Err(StorageError::Corrupt { id: "disk".into(), reason: "full".into() });
            }
            self.inner.write(changes)
        }
        fn devices(&self) -> Result<Vec<Device>, StorageError> {
            self.inner.devices()
        }
        fn load(&self, ids: &[String]) -> Result<Vec<Device>, StorageError> {
            self.inner.load(ids)
        }
        fn rollout_states(&self) -> Result<Vec<crate::rollout::Rollout>, StorageError> {
            self.inner.rollout_states()
        }
        fn rollout_bundle(&self, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
            self.inner.rollout_bundle(id)
        }
        fn series(
            &self,
            d: &str,
            s: u64,
            u: u64,
            m: usize,
        ) -> Result<Vec<crate::fleet::registry::Period>, StorageError> {
            self.inner.series(d, s, u, m)
        }
        fn drift(&self, d: &str, s: u64, l: usize) -> Result<Vec<crate::fleet::registry::Drift>, StorageError> {
            self.inner.drift(d, s, l)
        }
        fn events(&self, d: Option<&str>, l: usize) -> Result<Vec<FleetEvent>, StorageError> {
            self.inner.events(d, l)
        }
        fn prune(&mut self, n: u64, r: &Retention) -> Result<Pruned, StorageError> {
            self.inner.prune(n, r)
        }
        fn save_rollout(&mut self, r: &crate::rollout::Rollout, b: &[u8]) -> Result<(), StorageError> {
            self.inner.save_rollout(r, b)
        }
        fn rollouts(&self) -> Result<Vec<(crate::rollout::Rollout, Vec<u8>)>, StorageError> {
            self.inner.rollouts()
        }
    }

    fn writer(refusals: usize) -> (Writer, SharedStorage, Arc<Mutex<Ingest>>) {
        let inner = Sqlite::in_memory().expect("db");
        let storage: SharedStorage = Arc::new(Mutex::new(Box::new(Flaky { refusals, inner })));
        let ingest = Arc::new(Mutex::new(Ingest::default()));
        let sinks = Sinks {
            storage: storage.clone(),
            ingest: ingest.clone(),
            updates: broadcast::channel(4).0,
            registry: Arc::default(),
        };
        (Writer::start(sinks), storage, ingest)
    }

    #[test]
    fn batches_are_written_in_order_and_their_tickets_told() {
        let (w, storage, ingest) = writer(0);
        let mut told = w.written();
        for ticket in 1..=5 {
            w.submit(Batch {
                ticket,
                changes: vec![row("a", ticket), event("a", ticket)],
                records: vec![],
                messages: 2,
            });
        }
        w.wait(5, Duration::from_secs(10)).expect("written");
        assert_eq!(*told.borrow_and_update(), 5);
        assert_eq!(lock(&ingest).written, 10);
        let s = lock(&storage);
        assert_eq!(s.devices().expect("devices")[0].last_seen_ms, 5, "the newest row wins");
        assert_eq!(s.events(None, 10).expect("events").len(), 5);
    }

    #[test]
    fn a_refused_write_is_retried_and_nothing_counts_as_written_before() {
        let (w, storage, ingest) = writer(1);
        w.submit(Batch { ticket: 1, changes: vec![row("a", 1)], records: vec![], messages: 1 });
        let early = w.wait(1, Duration::from_millis(300));
        assert!(
            matches!(early, Err(WaitError::Failing { ref last_error, .. }) if last_error.contains("full")),
            "{early:?}"
        );
        assert_eq!(lock(&ingest).written, 0, "unwritten, so unacknowledged");
        w.wait(1, RETRY * 5).expect("written on the retry");
        assert_eq!(lock(&ingest).written, 1);
        assert_eq!(lock(&storage).devices().expect("devices").len(), 1);
    }

    #[test]
    fn dropping_the_writer_writes_what_is_queued() {
        let (w, storage, _) = writer(0);
        for ticket in 1..=50 {
            w.submit(Batch { ticket, changes: vec![event("a", ticket)], records: vec![], messages: 1 });
        }
        drop(w);
        assert_eq!(lock(&storage).events(None, 100).expect("events").len(), 50);
    }
}
