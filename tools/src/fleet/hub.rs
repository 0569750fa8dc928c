//! The fleet server's shared state: the registry, the store, the ingest counters, and a channel
//! that tells live views (the dashboard's event stream, `drover fleet watch`) that something
//! changed. Messages go in one at a time; their changes are submitted in batches to the
//! [`Writer`]'s thread, and only a written batch is acknowledged to the broker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::broadcast;

use drover_wire::drift::Thresholds;

use super::drift::{self, Catalog, MergedDrift};
use super::metrics::{self, Ingest};
use super::record::{self, RecordError};
use super::registry::{Change, Registry};
use super::rollouts::{CreateError, CreateRequest, Entry, Rollouts, Work};
use super::storage::{Arrived, Pruned, Retention, Storage, StorageError};
use super::writer::{Batch, SharedStorage, Sinks, WaitError, Writer};
use crate::rollout::Rollout;

/// What became of one message, and the outbox record it was, if any (to say it is stored once
/// its batch is written: a repeat too, as its sender missed the first word).
#[derive(Debug, PartialEq)]
pub enum Taken {
    /// Its changes wait for the next write.
    Pending(Option<Receipt>),
    /// A repeated delivery, or a cleared retained message: nothing to store.
    Nothing(Option<Receipt>),
}

impl Taken {
    /// The outbox record to acknowledge once written.
    pub fn receipt(self) -> Option<Receipt> {
        match self {
            Taken::Pending(r) | Taken::Nothing(r) => r,
        }
    }
}

/// One device's outbox record, by sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The device.
    pub device: String,
    /// Its outbox sequence number.
    pub seq: u64,
}

/// Why a rollout request failed.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The request.
    #[error(transparent)]
    Create(#[from] CreateError),
    /// The store.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// No such rollout.
    #[error("no rollout '{0}'")]
    Unknown(String),
    /// Not pause, resume or abort.
    #[error("'{0}' is not pause, resume or abort")]
    Verb(String),
    /// Another server of those sharing the store drives the rollouts.
    #[error("this fleet server does not drive rollouts; send it to {}", .0.as_deref().unwrap_or("the one that does (none holds the lease right now; try again in a few seconds)"))]
    NotDriver(Option<String>),
    /// Not in a state where the verb applies.
    #[error("rollout {id} cannot {verb} now")]
    State {
        /// Which.
        id: String,
        /// The verb.
        verb: String,
    },
}

/// The changes taken since the last submission.
#[derive(Default)]
struct Pending {
    changes: Vec<Change>,
    /// Over a shared store: the records themselves, which the store applies.
    records: Vec<Arrived>,
    /// How many stored messages they came from.
    messages: u64,
    /// The latest submission's ticket.
    ticket: u64,
}

/// The state behind the server.
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    /// The store is shared with other servers: it applies the records, and one server of them
    /// drives the rollouts.
    shared: bool,
    /// This server drives the rollouts (always, over a store of its own).
    driving: AtomicBool,
    storage: SharedStorage,
    pending: Mutex<Pending>,
    writer: Writer,
    ingest: Arc<Mutex<Ingest>>,
    updates: broadcast::Sender<()>,
    catalog: Mutex<Catalog>,
    rollouts: Mutex<Rollouts>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these half-updated in a way a reader could not use.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// A hub over `storage`, its registry rebuilt from what the store kept; `catalog` holds the
    /// references fleet-wide drift is judged against.
    pub fn new(storage: Box<dyn Storage>, catalog: Catalog) -> Result<Arc<Hub>, StorageError> {
        let registry = Arc::new(Mutex::new(Registry::from_devices(storage.devices()?)));
        let shared = storage.shared();
        let mut catalog = catalog;
        let mut entries = Vec::new();
        for (rollout, bundle) in storage.rollouts()? {
            // Its reference judges the fleet's drift on that version too.
            let _ = catalog.add_bundle(&bundle);
            entries.push(Entry { rollout, bundle: Arc::new(bundle), busy: false });
        }
        let storage = Arc::new(Mutex::new(storage));
        let ingest = Arc::new(Mutex::new(Ingest::default()));
        let updates = broadcast::channel(16).0;
        let writer = Writer::start(Sinks {
            storage: storage.clone(),
            ingest: ingest.clone(),
            updates: updates.clone(),
            registry: registry.clone(),
        });
        Ok(Arc::new(Hub {
            registry,
            shared,
            driving: AtomicBool::new(!shared),
            storage,
            pending: Mutex::new(Pending::default()),
            writer,
            ingest,
            updates,
            catalog: Mutex::new(catalog),
            rollouts: Mutex::new(Rollouts::from_entries(entries)),
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
        let Some((device, rec)) = decoded else { return Ok(Taken::Nothing(None)) };
        let receipt = rec.outbox_seq().map(|seq| Receipt { device: device.clone(), seq });
        if self.shared {
            // The store tells repeats apart, against what every server stored.
            let mut pending = lock(&self.pending);
            pending.records.push(Arrived { now_ms, device, record: rec });
            pending.messages += 1;
            return Ok(Taken::Pending(receipt));
        }
        // Under the registry's lock to the end: a submission sees a device's row and the
        // message's other changes together.
        let mut registry = lock(&self.registry);
        let Some(changes) = registry.apply(now_ms, &device, &rec) else {
            lock(&self.ingest).repeated += 1;
            return Ok(Taken::Nothing(receipt));
        };
        lock(&self.ingest).stored += 1;
        let mut pending = lock(&self.pending);
        pending.changes.extend(changes);
        pending.messages += 1;
        Ok(Taken::Pending(receipt))
    }

    /// Hands what was taken since the last call to the writer; returns the ticket that is written
    /// once it is (the previous ticket when there was nothing to hand over).
    pub fn submit(&self) -> u64 {
        let mut registry = lock(&self.registry);
        let mut pending = lock(&self.pending);
        let rows = registry.touched();
        if pending.changes.is_empty() && rows.is_empty() && pending.records.is_empty() {
            return pending.ticket;
        }
        pending.ticket += 1;
        // The rows go last: coalesced with a later batch's, the newest is the one kept.
        let mut changes = std::mem::take(&mut pending.changes);
        changes.extend(rows);
        let batch = Batch {
            ticket: pending.ticket,
            changes,
            records: std::mem::take(&mut pending.records),
            messages: std::mem::take(&mut pending.messages),
        };
        self.writer.submit(batch);
        pending.ticket
    }

    /// The highest ticket written, as a watch: the messages behind it can be acknowledged.
    pub fn written(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writer.written()
    }

    /// Submits what is pending and waits until it is written, for at most `patience`.
    pub fn flush(&self, patience: Duration) -> Result<(), WaitError> {
        let ticket = self.submit();
        self.writer.wait(ticket, patience)
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

    /// Starts a rollout (stored before it first acts); its bundle's reference joins the catalog.
    pub fn create_rollout(&self, req: CreateRequest, now_ms: u64) -> Result<Rollout, RolloutError> {
        self.check_driving()?;
        let entry = lock(&self.rollouts).create(req, now_ms)?;
        let _ = lock(&self.catalog).add_bundle(&entry.bundle);
        if let Err(e) = lock(&self.storage).save_rollout(&entry.rollout, &entry.bundle) {
            lock(&self.rollouts).remove(&entry.rollout.plan.id);
            return Err(e.into());
        }
        let _ = self.updates.send(());
        Ok(entry.rollout)
    }

    /// Rollouts change on one server only (so two never overwrite each other's steps): the
    /// one that drives them.
    fn check_driving(&self) -> Result<(), RolloutError> {
        if self.driving.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(RolloutError::NotDriver(lock(&self.storage).leader()?))
    }

    /// Whether this server drives the rollouts, asked every second by the server's loop (over a
    /// store of its own, always): `None` when another server does; else what to send again
    /// because the previous driver may have died while sending it ([`Rollout::redo`]). One that
    /// takes over reads the rollouts as the last driver stored them; one that does not drive
    /// follows their stored states.
    pub fn drive(&self, holder: &str, now_ms: u64) -> Option<Vec<Work>> {
        if !self.shared {
            return Some(Vec::new());
        }
        let leading = lock(&self.storage).lead(holder, now_ms).unwrap_or_else(|e| {
            log::warn!("fleet database: the rollout lease: {e}");
            false
        });
        let was = self.driving.swap(leading, Ordering::Relaxed);
        let synced = match (leading, was) {
            (true, false) => {
                log::info!("this fleet server now drives the rollouts");
                self.take_over()
            }
            (true, true) => Ok(Vec::new()),
            (false, was) => {
                if was {
                    log::warn!("this fleet server no longer drives the rollouts");
                }
                self.follow().map(|()| Vec::new())
            }
        };
        let redo = synced.unwrap_or_else(|e| {
            log::warn!("fleet database: reading the rollouts: {e}");
            Vec::new()
        });
        leading.then_some(redo)
    }

    fn take_over(&self) -> Result<Vec<Work>, StorageError> {
        let stored = lock(&self.storage).rollouts()?;
        let mut entries = Vec::new();
        let mut catalog = lock(&self.catalog);
        for (rollout, bundle) in stored {
            let _ = catalog.add_bundle(&bundle);
            entries.push(Entry { rollout, bundle: Arc::new(bundle), busy: false });
        }
        drop(catalog);
        let registry = lock(&self.registry);
        let mut rollouts = Rollouts::from_entries(entries);
        let mut redo = Vec::new();
        let ids: Vec<String> = rollouts.all().map(|e| e.rollout.plan.id.clone()).collect();
        for id in ids {
            let Some(e) = rollouts.get_mut(&id) else { continue };
            let actions = e.rollout.redo(&super::rollouts::views(&registry, &e.rollout.plan));
            if !actions.is_empty() {
                log::info!("rollout {id}: sending again what the previous driver may not have sent: {actions:?}");
                e.busy = true;
                redo.push(Work { rollout: e.rollout.clone(), actions, bundle: e.bundle.clone() });
            }
        }
        drop(registry);
        *lock(&self.rollouts) = rollouts;
        Ok(redo)
    }

    fn follow(&self) -> Result<(), StorageError> {
        let states = lock(&self.storage).rollout_states()?;
        let mut new = Vec::new();
        {
            let mut rollouts = lock(&self.rollouts);
            for rollout in states {
                match rollouts.get_mut(&rollout.plan.id) {
                    Some(e) => e.rollout = rollout,
                    None => new.push(rollout),
                }
            }
        }
        for rollout in new {
            let Some(bundle) = lock(&self.storage).rollout_bundle(&rollout.plan.id)? else { continue };
            let _ = lock(&self.catalog).add_bundle(&bundle);
            lock(&self.rollouts).insert(Entry { rollout, bundle: Arc::new(bundle), busy: false });
        }
        let _ = self.updates.send(());
        Ok(())
    }

    /// Every rollout, oldest first.
    pub fn rollouts(&self) -> Vec<Rollout> {
        lock(&self.rollouts).all().map(|e| e.rollout.clone()).collect()
    }

    /// Pauses, resumes or aborts a rollout; returns it and, for an abort, what to undo.
    pub fn control(&self, id: &str, verb: &str, now_ms: u64) -> Result<Work, RolloutError> {
        self.check_driving()?;
        let mut rollouts = lock(&self.rollouts);
        let e = rollouts.get_mut(id).ok_or_else(|| RolloutError::Unknown(id.to_string()))?;
        let (done, actions) = match verb {
            "pause" => (e.rollout.pause(now_ms), Vec::new()),
            "resume" => (e.rollout.resume(now_ms), Vec::new()),
            "abort" => {
                let was_over = e.rollout.is_over();
                (!was_over, e.rollout.abort(now_ms))
            }
            other => return Err(RolloutError::Verb(other.to_string())),
        };
        if !done {
            return Err(RolloutError::State { id: id.to_string(), verb: verb.to_string() });
        }
        let out = Work { rollout: e.rollout.clone(), actions, bundle: e.bundle.clone() };
        drop(rollouts);
        lock(&self.storage).save_rollout(&out.rollout, &out.bundle)?;
        let _ = self.updates.send(());
        Ok(out)
    }

    /// Ticks the rollouts; returns the actions to carry out, per rollout.
    pub fn tick_rollouts(&self, now_ms: u64) -> Vec<Work> {
        let (work, changed) = {
            let registry = lock(&self.registry);
            lock(&self.rollouts).tick(now_ms, &registry)
        };
        self.save_rollouts(&changed);
        work
    }

    /// Records how a batch of a rollout's actions went and lets it tick again.
    pub fn rollout_done(&self, id: &str, now_ms: u64, notes: Vec<String>) {
        lock(&self.rollouts).done(id, now_ms, notes);
        self.save_rollouts(&[id.to_string()]);
    }

    /// The rollouts' steps not yet told on the alert stream, as (topic, JSON payload).
    pub fn rollout_announcements(&self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut changed = Vec::new();
        {
            let mut rollouts = lock(&self.rollouts);
            let ids: Vec<String> = rollouts.all().map(|e| e.rollout.plan.id.clone()).collect();
            for id in ids {
                let Some(e) = rollouts.get_mut(&id) else { continue };
                let told = e.rollout.announce();
                if told.is_empty() {
                    continue;
                }
                changed.push(id.clone());
                let Ok(name) = drover_wire::topic::Name::new(&id) else { continue };
                let topic = drover_wire::topic::rollout_events(&name).to_string();
                out.extend(told.iter().filter_map(|a| serde_json::to_vec(a).ok()).map(|p| (topic.clone(), p)));
            }
        }
        self.save_rollouts(&changed);
        out
    }

    fn save_rollouts(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let entries: Vec<Entry> = {
            let rollouts = lock(&self.rollouts);
            ids.iter().filter_map(|id| rollouts.get(id).cloned()).collect()
        };
        let mut storage = lock(&self.storage);
        for e in entries {
            if let Err(err) = storage.save_rollout(&e.rollout, &e.bundle) {
                log::error!("fleet database: rollout {}: {err}", e.rollout.plan.id);
            }
        }
        drop(storage);
        let _ = self.updates.send(());
    }

    /// Every device's latest judged window merged per model version, fleet-wide and per group.
    pub fn drift(&self) -> Vec<MergedDrift> {
        let catalog = lock(&self.catalog);
        drift::merge(lock(&self.registry).devices(), &catalog, &Thresholds::default())
    }

    /// The Prometheus exposition.
    pub fn metrics(&self) -> String {
        let ingest = *lock(&self.ingest);
        let merged = self.drift();
        let stages: Vec<metrics::RolloutStage> = lock(&self.rollouts)
            .all()
            .map(|e| metrics::RolloutStage {
                id: e.rollout.plan.id.clone(),
                stage: match e.rollout.state {
                    crate::rollout::State::Halted { .. } | crate::rollout::State::Aborted => -1,
                    _ => e.rollout.stage as i64,
                },
            })
            .collect();
        let registry = lock(&self.registry);
        metrics::render(registry.devices(), ingest, &stages, &merged, self.driving.load(Ordering::Relaxed))
    }

    /// The ingest counters.
    pub fn ingest(&self) -> Ingest {
        *lock(&self.ingest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::drift::Catalog;
    use crate::fleet::storage::Sqlite;
    use drover_runtime::link::codec::{self, PayloadFormat};

    #[test]
    fn messages_are_stored_in_batches_and_bad_ones_are_counted_and_change_nothing() {
        let hub = Hub::new(Box::new(Sqlite::in_memory().expect("db")), Catalog::default()).expect("hub");
        let mut woken = hub.subscribe();
        let crate::fleet::record::Record::Status(s) = crate::fleet::registry::tests::status(true, Some(1)) else {
            unreachable!()
        };
        let payload = codec::encode(PayloadFormat::Postcard, &s);
        assert_eq!(hub.take(1, "drover/v1/dev/pi-1/status", &payload).expect("taken"), Taken::Pending(None));
        assert!(hub.take(2, "drover/v1/dev/pi-1/telemetry", b"\xd1\x00").is_err());
        assert!(hub.take(2, "drover/v1/dev/pi-2/status", b"{not json").is_err());
        assert_eq!(hub.storage(|s| s.devices().expect("devices").len()), 0, "nothing written before the flush");
        assert_eq!(hub.ingest().written, 0);
        hub.flush(Duration::from_secs(10)).expect("flush");
        assert!(woken.try_recv().is_ok(), "live views are told");
        assert_eq!(hub.storage(|s| s.devices().expect("devices").len()), 1);
        assert_eq!(hub.registry(|r| r.devices().count()), 1, "the garbled messages made no device");
        assert_eq!(hub.ingest(), Ingest { stored: 1, written: 1, rejected: 2, repeated: 0 });
        assert_eq!(hub.submit(), 1, "nothing new to submit: the same ticket");
        assert_eq!(hub.take(3, "drover/v1/dev/pi-1/status", &payload).expect("taken"), Taken::Pending(None));
        assert_eq!(hub.submit(), 2);
        let written = hub.written();
        assert!(*written.borrow() >= 1, "the first batch is written; the second may be by now");
        hub.flush(Duration::from_secs(10)).expect("flush");
        assert_eq!(*written.borrow(), 2, "the watch follows what is written");
        assert_eq!(hub.storage(|s| s.devices().expect("devices")[0].last_seen_ms), 3);
    }
}
