//! The shared store: PostgreSQL, for several fleet-server instances splitting the device reports
//! between them. Each batch is one transaction that locks its devices' rows (in id order, so two
//! servers never wait on each other in a circle), applies the records to the devices as stored,
//! and writes the outcome in a handful of array statements. A report that reached two servers
//! (a redelivery after one was killed) is recognised by the stored marks and counts once.
//!
//! The sync client runs on a thread of its own: its calls block, and the server calls the store
//! from inside its async runtime, where the client's own runtime may not be entered. The same
//! thread holds the rollout lease: a session advisory lock on a second connection, held as long
//! as that connection lives, so a killed driver's lease is free as soon as PostgreSQL sees the
//! connection close.
//!
//! TLS: with a CA file ([`Postgres::connect`]'s `ca`), connections go through rustls and the
//! server's certificate must chain to it (`sslmode=require` in the URL refuses a server without
//! TLS; the default, `prefer`, still verifies a server that offers it).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use std::path::Path;

use postgres::config::SslMode;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls, Transaction};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::sqlite::{json, ms, read_device};
use super::{Arrived, Ingested, Pruned, ROLLUP_MS, Retention, Storage, StorageError, apply_batch, downsample};
use crate::fleet::registry::{Change, Device, Drift, FleetEvent, Period};
use crate::rollout::Rollout;

/// The schema, one step per version; a step is never edited once released, only added to.
const MIGRATIONS: &[&str] = &[
    // 1: devices (their whole state as JSON, `tx` the transaction that last wrote it), the raw
    // periods, five-minute roll-ups, drift windows, events and rollouts.
    "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        online BOOLEAN NOT NULL DEFAULT false,
        last_seen_ms BIGINT NOT NULL DEFAULT 0,
        doc TEXT,
        tx BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX devices_by_tx ON devices (tx);
    CREATE TABLE points (
        device TEXT NOT NULL,
        end_ms BIGINT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (device, end_ms)
    );
    CREATE INDEX points_by_age ON points (end_ms);
    CREATE TABLE rollups (
        device TEXT NOT NULL,
        bucket_ms BIGINT NOT NULL,
        periods BIGINT NOT NULL,
        length_ms BIGINT NOT NULL,
        inferences BIGINT NOT NULL,
        errors BIGINT NOT NULL,
        p50_us BIGINT,
        p90_us BIGINT,
        p99_us BIGINT,
        cpu_sum DOUBLE PRECISION NOT NULL,
        cpu_n BIGINT NOT NULL,
        temp_max DOUBLE PRECISION,
        mem_used_kib BIGINT NOT NULL,
        rss_kib BIGINT NOT NULL,
        version BIGINT,
        PRIMARY KEY (device, bucket_ms)
    );
    CREATE TABLE drift (
        device TEXT NOT NULL,
        end_ms BIGINT NOT NULL,
        doc TEXT NOT NULL,
        PRIMARY KEY (device, end_ms)
    );
    CREATE TABLE events (
        id BIGSERIAL PRIMARY KEY,
        device TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        kind TEXT NOT NULL,
        text TEXT NOT NULL
    );
    CREATE INDEX events_by_device ON events (device, id);
    CREATE INDEX events_by_age ON events (at_ms);
    CREATE TABLE rollouts (
        id TEXT PRIMARY KEY,
        created_ms BIGINT NOT NULL,
        doc TEXT NOT NULL,
        bundle BYTEA NOT NULL
    );
    CREATE TABLE rollout_driver (
        one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
        holder TEXT NOT NULL,
        since_ms BIGINT NOT NULL
    );",
];

/// The advisory lock keys: schema changes, and the rollout lease (arbitrary, Drover's own).
const MIGRATION_LOCK: i64 = 0x6472_6f76_0001;
const LEASE_LOCK: i64 = 0x6472_6f76_0002;

/// How often a batch is tried again when PostgreSQL broke a deadlock by aborting it.
const DEADLOCK_RETRIES: usize = 5;

type Job = Box<dyn FnOnce(&mut Session) + Send>;

/// The PostgreSQL store: a handle on the thread that owns the connections.
pub struct Postgres {
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Option<JoinHandle<()>>,
}

/// How connections are made: plain, or TLS verified against the given CA.
#[derive(Clone)]
enum Tls {
    Plain,
    Rustls(MakeRustlsConnect),
}

impl Tls {
    /// From `--db-ca`; `sslmode=require` without one is refused here rather than failing at the
    /// first connection with a less clear error.
    fn new(config: &Config, ca: Option<&Path>) -> Result<Tls, StorageError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let Some(ca) = ca else {
            if config.get_ssl_mode() == SslMode::Require {
                return Err(StorageError::Tls("sslmode=require needs the server's CA (--db-ca FILE)".into()));
            }
            return Ok(Tls::Plain);
        };
        let bad = |e: String| StorageError::Tls(format!("{}: {e}", ca.display()));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots.add(c).map_err(|e| bad(e.to_string()))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StorageError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls::Rustls(MakeRustlsConnect::new(tls)))
    }

    fn connect(&self, config: &Config) -> Result<Client, postgres::Error> {
        match self {
            Tls::Plain => config.connect(NoTls),
            Tls::Rustls(tls) => config.connect(tls.clone()),
        }
    }
}

/// The connections, on their thread.
struct Session {
    config: Config,
    tls: Tls,
    client: Option<Client>,
    /// The rollout lease's connection, while this server holds the lease.
    lease: Option<Client>,
    /// Devices written by transactions older than this were read by the last refresh.
    cursor: i64,
}

impl Session {
    /// The connection, opened again if it broke (PostgreSQL restarted, a network cut).
    fn client(&mut self) -> Result<&mut Client, StorageError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = Some(self.tls.connect(&self.config)?);
        }
        // Set just above.
        self.client.as_mut().ok_or(StorageError::Gone)
    }
}

impl Postgres {
    /// Connects to `url` (`postgres://user@host:port/db`), over TLS verified against `ca` when
    /// given, and brings the schema up to date; several servers may start at once (the migration
    /// holds an advisory lock).
    pub fn connect(url: &str, ca: Option<&Path>) -> Result<Postgres, StorageError> {
        let mut config: Config = url.parse()?;
        config.connect_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(30));
        config.application_name("drover-fleet");
        let tls = Tls::new(&config, ca)?;
        let (jobs, queue) = channel::<Job>();
        let (ready, started) = sync_channel(1);
        // Connected on its thread too: the caller may be inside an async runtime.
        let thread = std::thread::Builder::new()
            .name("fleet-postgres".into())
            .spawn(move || {
                let opened = tls.connect(&config).map_err(StorageError::from).and_then(|mut client| {
                    migrate(&mut client)?;
                    Ok(client)
                });
                let mut session = match opened {
                    Ok(client) => {
                        let _ = ready.send(Ok(()));
                        Session { config, tls, client: Some(client), lease: None, cursor: 0 }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    job(&mut session);
                }
            })
            .map_err(|_| StorageError::Gone)?;
        started.recv().map_err(|_| StorageError::Gone)??;
        Ok(Postgres { jobs: Mutex::new(Some(jobs)), thread: Some(thread) })
    }

    /// Runs `f` on the connections' thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Session) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        let (tell, answer) = sync_channel(1);
        let job: Job = Box::new(move |s| {
            let _ = tell.send(f(s));
        });
        {
            let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.as_ref().ok_or(StorageError::Gone)?.send(job).map_err(|_| StorageError::Gone)?;
        }
        answer.recv().map_err(|_| StorageError::Gone)?
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Applies the schema steps not yet applied, under an advisory lock held to the commit.
fn migrate(client: &mut Client) -> Result<(), StorageError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS drover_schema (version BIGINT NOT NULL)")?;
    let found: Option<i64> = tx.query_opt("SELECT version FROM drover_schema", &[])?.map(|r| r.get(0));
    let known = MIGRATIONS.len() as i64;
    let found = found.unwrap_or(0);
    if found > known {
        return Err(StorageError::Newer { found, known });
    }
    for step in &MIGRATIONS[found as usize..] {
        tx.batch_execute(step)?;
    }
    tx.execute("DELETE FROM drover_schema", &[])?;
    tx.execute("INSERT INTO drover_schema (version) VALUES ($1)", &[&known])?;
    tx.commit()?;
    Ok(())
}

/// Whether PostgreSQL aborted the transaction to break a deadlock or a serialization conflict
/// (then it is simply tried again).
fn retryable(e: &StorageError) -> bool {
    matches!(e, StorageError::Postgres(e)
        if e.code().is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE))
}

/// The transaction id stamped on a device row: [`Storage::changed`] reads rows written by
/// transactions its previous snapshot may not have seen.
const TX_ID: &str = "pg_current_xact_id()::text::bigint";

fn ingest(client: &mut Client, batch: &[Arrived]) -> Result<Ingested, StorageError> {
    let mut ids: Vec<String> = batch.iter().map(|a| a.device.clone()).collect();
    ids.sort();
    ids.dedup();
    let mut tx = client.transaction()?;
    // New devices get an empty row first, so that they can be locked like the others.
    tx.execute("INSERT INTO devices (id) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING", &[&ids])?;
    let rows = tx.query("SELECT id, doc FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE", &[&ids])?;
    let mut stored = Vec::with_capacity(rows.len());
    for row in rows {
        let (id, doc): (String, Option<String>) = (row.get(0), row.get(1));
        if let Some(doc) = doc {
            stored.push(read_device(&id, &doc)?);
        }
    }
    let (changes, out) = apply_batch(stored, batch);
    write(&mut tx, &changes)?;
    tx.commit()?;
    Ok(out)
}

/// A roll-up bucket's share of one batch.
#[derive(Default)]
struct Rollup {
    periods: i64,
    length_ms: i64,
    inferences: i64,
    errors: i64,
    p50_us: Option<i64>,
    p90_us: Option<i64>,
    p99_us: Option<i64>,
    cpu_sum: f64,
    cpu_n: i64,
    temp_max: Option<f64>,
    mem_used_kib: i64,
    rss_kib: i64,
    version: Option<i64>,
}

impl Rollup {
    fn add(&mut self, p: &Period) {
        self.periods += 1;
        self.length_ms += ms(p.length_ms);
        self.inferences += ms(p.inferences);
        self.errors += ms(p.errors);
        self.p50_us = self.p50_us.max(p.p50_us.map(i64::from));
        self.p90_us = self.p90_us.max(p.p90_us.map(i64::from));
        self.p99_us = self.p99_us.max(p.p99_us.map(i64::from));
        self.cpu_sum += f64::from(p.cpu_pct.unwrap_or(0.0));
        self.cpu_n += i64::from(p.cpu_pct.is_some());
        self.temp_max = match (self.temp_max, p.temp_c.map(f64::from)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.mem_used_kib = self.mem_used_kib.max(ms(p.mem_used_kib));
        self.rss_kib = self.rss_kib.max(ms(p.rss_kib));
        if p.version.is_some() {
            self.version = p.version.map(ms);
        }
    }
}

/// Writes a batch's rows inside `tx`: a statement per kind, the rows as arrays.
fn write(tx: &mut Transaction<'_>, changes: &[Change]) -> Result<(), StorageError> {
    let mut devices: BTreeMap<&str, &Device> = BTreeMap::new();
    let (mut point_dev, mut point_end, mut point_doc) = (Vec::new(), Vec::new(), Vec::new());
    let mut periods: BTreeMap<(&str, i64), &Period> = BTreeMap::new();
    let (mut drift_dev, mut drift_end, mut drift_doc) = (Vec::new(), Vec::new(), Vec::new());
    let (mut ev_dev, mut ev_at, mut ev_kind, mut ev_text) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for change in changes {
        match change {
            // The newest row of a device wins (later in the batch).
            Change::Device(d) => {
                devices.insert(&d.id, d);
            }
            Change::Point(id, p) => {
                if periods.insert((id, ms(p.end_ms)), p).is_none() {
                    point_dev.push(id.as_str());
                    point_end.push(ms(p.end_ms));
                    point_doc.push(json(p));
                }
            }
            Change::Drift(id, w) => {
                drift_dev.push(id.as_str());
                drift_end.push(ms(w.end_ms));
                drift_doc.push(json(w));
            }
            Change::Event(e) => {
                ev_dev.push(e.device.as_str());
                ev_at.push(ms(e.at_ms));
                ev_kind.push(e.kind.as_str());
                ev_text.push(e.text.as_str());
            }
        }
    }
    if !devices.is_empty() {
        let ids: Vec<&str> = devices.keys().copied().collect();
        let online: Vec<bool> = devices.values().map(|d| d.online).collect();
        let seen: Vec<i64> = devices.values().map(|d| ms(d.last_seen_ms)).collect();
        let docs: Vec<String> = devices.values().map(|d| json(*d)).collect();
        tx.execute(
            &format!(
                "INSERT INTO devices (id, online, last_seen_ms, doc, tx)
                 SELECT u.id, u.online, u.seen, u.doc, {TX_ID}
                 FROM unnest($1::text[], $2::bool[], $3::int8[], $4::text[]) AS u(id, online, seen, doc)
                 ON CONFLICT (id) DO UPDATE SET online = EXCLUDED.online, last_seen_ms = EXCLUDED.last_seen_ms,
                    doc = EXCLUDED.doc, tx = EXCLUDED.tx"
            ),
            &[&ids, &online, &seen, &docs],
        )?;
    }
    if !point_dev.is_empty() {
        // Only the periods not stored before are rolled up.
        let new = tx.query(
            "INSERT INTO points (device, end_ms, doc)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
             ON CONFLICT (device, end_ms) DO NOTHING RETURNING device, end_ms",
            &[&point_dev, &point_end, &point_doc],
        )?;
        let mut buckets: BTreeMap<(String, i64), Rollup> = BTreeMap::new();
        for row in new {
            let (device, end): (String, i64) = (row.get(0), row.get(1));
            if let Some(&p) = periods.get(&(device.as_str(), end)) {
                let bucket = end - end.rem_euclid(ROLLUP_MS as i64);
                buckets.entry((device, bucket)).or_default().add(p);
            }
        }
        if !buckets.is_empty() {
            upsert_rollups(tx, &buckets)?;
        }
    }
    if !drift_dev.is_empty() {
        tx.execute(
            "INSERT INTO drift (device, end_ms, doc) SELECT * FROM unnest($1::text[], $2::int8[], $3::text[])
             ON CONFLICT (device, end_ms) DO NOTHING",
            &[&drift_dev, &drift_end, &drift_doc],
        )?;
    }
    if !ev_dev.is_empty() {
        tx.execute(
            "INSERT INTO events (device, at_ms, kind, text)
             SELECT d, a, k, t FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[])
                WITH ORDINALITY AS u(d, a, k, t, n)
             ORDER BY n",
            &[&ev_dev, &ev_at, &ev_kind, &ev_text],
        )?;
    }
    Ok(())
}

fn upsert_rollups(tx: &mut Transaction<'_>, buckets: &BTreeMap<(String, i64), Rollup>) -> Result<(), StorageError> {
    let col = |f: fn(&Rollup) -> i64| buckets.values().map(f).collect::<Vec<i64>>();
    let opt = |f: fn(&Rollup) -> Option<i64>| buckets.values().map(f).collect::<Vec<Option<i64>>>();
    let devices: Vec<&str> = buckets.keys().map(|(d, _)| d.as_str()).collect();
    let bucket: Vec<i64> = buckets.keys().map(|(_, b)| *b).collect();
    let cpu_sum: Vec<f64> = buckets.values().map(|r| r.cpu_sum).collect();
    let temp: Vec<Option<f64>> = buckets.values().map(|r| r.temp_max).collect();
    tx.execute(
        "INSERT INTO rollups (device, bucket_ms, periods, length_ms, inferences, errors, p50_us, p90_us, p99_us,
            cpu_sum, cpu_n, temp_max, mem_used_kib, rss_kib, version)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
            $8::int8[], $9::int8[], $10::float8[], $11::int8[], $12::float8[], $13::int8[], $14::int8[], $15::int8[])
         ON CONFLICT (device, bucket_ms) DO UPDATE SET
            periods = rollups.periods + EXCLUDED.periods, length_ms = rollups.length_ms + EXCLUDED.length_ms,
            inferences = rollups.inferences + EXCLUDED.inferences, errors = rollups.errors + EXCLUDED.errors,
            p50_us = GREATEST(rollups.p50_us, EXCLUDED.p50_us), p90_us = GREATEST(rollups.p90_us, EXCLUDED.p90_us),
            p99_us = GREATEST(rollups.p99_us, EXCLUDED.p99_us), cpu_sum = rollups.cpu_sum + EXCLUDED.cpu_sum,
            cpu_n = rollups.cpu_n + EXCLUDED.cpu_n, temp_max = GREATEST(rollups.temp_max, EXCLUDED.temp_max),
            mem_used_kib = GREATEST(rollups.mem_used_kib, EXCLUDED.mem_used_kib),
            rss_kib = GREATEST(rollups.rss_kib, EXCLUDED.rss_kib),
            version = COALESCE(EXCLUDED.version, rollups.version)",
        &[
            &devices,
            &bucket,
            &col(|r| r.periods),
            &col(|r| r.length_ms),
            &col(|r| r.inferences),
            &col(|r| r.errors),
            &opt(|r| r.p50_us),
            &opt(|r| r.p90_us),
            &opt(|r| r.p99_us),
            &cpu_sum,
            &col(|r| r.cpu_n),
            &temp,
            &col(|r| r.mem_used_kib),
            &col(|r| r.rss_kib),
            &opt(|r| r.version),
        ],
    )?;
    Ok(())
}

fn period_of_rollup(row: &postgres::Row) -> Period {
    let cpu_n: i64 = row.get(8);
    let cpu_sum: f64 = row.get(7);
    let us = |i: usize| row.get::<_, Option<i64>>(i).and_then(|v| u32::try_from(v).ok());
    Period {
        end_ms: row.get::<_, i64>(0) as u64 + ROLLUP_MS,
        length_ms: row.get::<_, i64>(1) as u64,
        inferences: row.get::<_, i64>(2) as u64,
        errors: row.get::<_, i64>(3) as u64,
        p50_us: us(4),
        p90_us: us(5),
        p99_us: us(6),
        cpu_pct: (cpu_n > 0).then(|| (cpu_sum / cpu_n as f64) as f32),
        temp_c: row.get::<_, Option<f64>>(9).map(|t| t as f32),
        mem_used_kib: row.get::<_, i64>(10) as u64,
        rss_kib: row.get::<_, i64>(11) as u64,
        version: row.get::<_, Option<i64>>(12).map(|v| v as u64),
        ..Period::default()
    }
}

impl Storage for Postgres {
    fn shared(&self) -> bool {
        true
    }

    fn ingest(&mut self, batch: &[Arrived]) -> Result<Ingested, StorageError> {
        let batch = batch.to_vec();
        self.call(move |s| {
            let mut tries = 0;
            loop {
                match ingest(s.client()?, &batch) {
                    Err(e) if retryable(&e) && tries < DEADLOCK_RETRIES => {
                        tries += 1;
                        log::debug!("fleet database: {e}; trying the batch again");
                    }
                    result => return result,
                }
            }
        })
    }

    fn write(&mut self, changes: &[Change]) -> Result<(), StorageError> {
        let changes = changes.to_vec();
        self.call(move |s| {
            let mut tx = s.client()?.transaction()?;
            write(&mut tx, &changes)?;
            tx.commit()?;
            Ok(())
        })
    }

    fn load(&self, ids: &[String]) -> Result<Vec<Device>, StorageError> {
        let ids = ids.to_vec();
        self.call(move |s| {
            let rows =
                s.client()?.query("SELECT id, doc FROM devices WHERE id = ANY($1) AND doc IS NOT NULL", &[&ids])?;
            rows.iter().map(|r| read_device(r.get(0), r.get(1))).collect()
        })
    }

    fn devices(&self) -> Result<Vec<Device>, StorageError> {
        self.call(|s| {
            let rows = s.client()?.query("SELECT id, doc FROM devices WHERE doc IS NOT NULL ORDER BY id", &[])?;
            rows.iter().map(|r| read_device(r.get(0), r.get(1))).collect()
        })
    }

    fn changed(&mut self) -> Result<Vec<Device>, StorageError> {
        self.call(|s| {
            let since = s.cursor;
            let client = s.client()?;
            // One snapshot for both: the rows it shows, and the oldest transaction it did not.
            let mut tx =
                client.build_transaction().isolation_level(postgres::IsolationLevel::RepeatableRead).start()?;
            let next: i64 = tx.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint", &[])?.get(0);
            let rows = tx.query("SELECT id, doc FROM devices WHERE tx >= $1 AND doc IS NOT NULL", &[&since])?;
            let devices = rows.iter().map(|r| read_device(r.get(0), r.get(1))).collect::<Result<Vec<_>, _>>()?;
            tx.commit()?;
            s.cursor = next;
            Ok(devices)
        })
    }

    fn lead(&mut self, holder: &str, now_ms: u64) -> Result<bool, StorageError> {
        let holder = holder.to_string();
        self.call(move |s| {
            if let Some(lease) = &mut s.lease {
                // Held as long as its connection lives: check that it does.
                if lease.is_closed() || lease.simple_query("SELECT 1").is_err() {
                    log::warn!("fleet database: the rollout lease's connection broke; no longer driving rollouts");
                    s.lease = None;
                }
                return Ok(s.lease.is_some());
            }
            let mut lease = s.tls.connect(&s.config)?;
            let got: bool = lease.query_one("SELECT pg_try_advisory_lock($1)", &[&LEASE_LOCK])?.get(0);
            if !got {
                return Ok(false);
            }
            lease.execute(
                "INSERT INTO rollout_driver (holder, since_ms) VALUES ($1, $2)
                 ON CONFLICT (one) DO UPDATE SET holder = EXCLUDED.holder, since_ms = EXCLUDED.since_ms",
                &[&holder, &ms(now_ms)],
            )?;
            s.lease = Some(lease);
            Ok(true)
        })
    }

    fn leader(&self) -> Result<Option<String>, StorageError> {
        self.call(|s| {
            let client = s.client()?;
            // Whoever wrote the row holds the lock only while some session holds it.
            let held: bool = client
                .query_one(
                    "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted
                     AND ((classid::bigint << 32) | objid::bigint) = $1",
                    &[&LEASE_LOCK],
                )?
                .get(0);
            if !held {
                return Ok(None);
            }
            Ok(client.query_opt("SELECT holder FROM rollout_driver", &[])?.map(|r| r.get(0)))
        })
    }

    fn series(
        &self,
        device: &str,
        since_ms: u64,
        until_ms: u64,
        max_points: usize,
    ) -> Result<Vec<Period>, StorageError> {
        let device = device.to_string();
        self.call(move |s| {
            let client = s.client()?;
            let mut points: Vec<Period> = client
                .query(
                    "SELECT doc FROM points WHERE device = $1 AND end_ms >= $2 AND end_ms <= $3 ORDER BY end_ms",
                    &[&device, &ms(since_ms), &ms(until_ms)],
                )?
                .iter()
                .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
                .collect();
            let first_raw: Option<i64> =
                client.query_one("SELECT min(end_ms) FROM points WHERE device = $1", &[&device])?.get(0);
            let rollups_until = first_raw.map_or(ms(until_ms), |f| f - f.rem_euclid(ROLLUP_MS as i64) - 1);
            if ms(since_ms) < rollups_until {
                let since_bucket = ms(since_ms - since_ms % ROLLUP_MS);
                let older: Vec<Period> = client
                    .query(
                        "SELECT bucket_ms, length_ms, inferences, errors, p50_us, p90_us, p99_us, cpu_sum, cpu_n,
                            temp_max, mem_used_kib, rss_kib, version
                         FROM rollups WHERE device = $1 AND bucket_ms >= $2 AND bucket_ms <= $3 ORDER BY bucket_ms",
                        &[&device, &since_bucket, &rollups_until],
                    )?
                    .iter()
                    .map(period_of_rollup)
                    .collect();
                points.splice(0..0, older);
            }
            Ok(downsample(points, max_points))
        })
    }

    fn drift(&self, device: &str, since_ms: u64, limit: usize) -> Result<Vec<Drift>, StorageError> {
        let device = device.to_string();
        self.call(move |s| {
            let mut out: Vec<Drift> = s
                .client()?
                .query(
                    "SELECT doc FROM drift WHERE device = $1 AND end_ms >= $2 ORDER BY end_ms DESC LIMIT $3",
                    &[&device, &ms(since_ms), &(limit as i64)],
                )?
                .iter()
                .filter_map(|r| serde_json::from_str(r.get::<_, &str>(0)).ok())
                .collect();
            out.reverse();
            Ok(out)
        })
    }

    fn events(&self, device: Option<&str>, limit: usize) -> Result<Vec<FleetEvent>, StorageError> {
        let device = device.map(str::to_string);
        self.call(move |s| {
            let rows = s.client()?.query(
                "SELECT device, at_ms, kind, text FROM events WHERE $1::text IS NULL OR device = $1
                 ORDER BY id DESC LIMIT $2",
                &[&device, &(limit as i64)],
            )?;
            Ok(rows
                .iter()
                .map(|r| FleetEvent {
                    device: r.get(0),
                    at_ms: r.get::<_, i64>(1) as u64,
                    kind: r.get(2),
                    text: r.get(3),
                })
                .collect())
        })
    }

    fn save_rollout(&mut self, rollout: &Rollout, bundle: &[u8]) -> Result<(), StorageError> {
        let created = ms(rollout.log.first().map_or(0, |e| e.at_ms));
        let (id, doc, bundle) = (rollout.plan.id.clone(), json(rollout), bundle.to_vec());
        self.call(move |s| {
            s.client()?.execute(
                "INSERT INTO rollouts (id, created_ms, doc, bundle) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
                &[&id, &created, &doc, &bundle],
            )?;
            Ok(())
        })
    }

    fn rollouts(&self) -> Result<Vec<(Rollout, Vec<u8>)>, StorageError> {
        self.call(|s| {
            let rows = s.client()?.query("SELECT id, doc, bundle FROM rollouts ORDER BY created_ms, id", &[])?;
            rows.iter()
                .map(|r| {
                    let id: String = r.get(0);
                    let rollout = serde_json::from_str(r.get::<_, &str>(1))
                        .map_err(|e| StorageError::Corrupt { id, reason: e.to_string() })?;
                    Ok((rollout, r.get(2)))
                })
                .collect()
        })
    }

    fn rollout_states(&self) -> Result<Vec<Rollout>, StorageError> {
        self.call(|s| {
            let rows = s.client()?.query("SELECT id, doc FROM rollouts ORDER BY created_ms, id", &[])?;
            rows.iter()
                .map(|r| {
                    serde_json::from_str(r.get::<_, &str>(1))
                        .map_err(|e| StorageError::Corrupt { id: r.get(0), reason: e.to_string() })
                })
                .collect()
        })
    }

    fn rollout_bundle(&self, id: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let id = id.to_string();
        self.call(move |s| {
            Ok(s.client()?.query_opt("SELECT bundle FROM rollouts WHERE id = $1", &[&id])?.map(|r| r.get(0)))
        })
    }

    fn prune(&mut self, now_ms: u64, retention: &Retention) -> Result<Pruned, StorageError> {
        let raw_before = ms(now_ms.saturating_sub(retention.raw.as_millis() as u64));
        let old_before = ms(now_ms.saturating_sub(retention.rollup.as_millis() as u64));
        let (max_raw, max_events) = (ms(retention.max_raw_rows), ms(retention.max_events));
        self.call(move |s| {
            let mut tx = s.client()?.transaction()?;
            let mut raw = tx.execute("DELETE FROM points WHERE end_ms < $1", &[&raw_before])?;
            let rows: i64 = tx.query_one("SELECT count(*) FROM points", &[])?.get(0);
            if rows > max_raw {
                raw += tx.execute(
                    "DELETE FROM points WHERE ctid IN (SELECT ctid FROM points ORDER BY end_ms LIMIT $1)",
                    &[&(rows - max_raw)],
                )?;
            }
            let mut old = tx.execute("DELETE FROM rollups WHERE bucket_ms < $1", &[&old_before])?;
            old += tx.execute("DELETE FROM drift WHERE end_ms < $1", &[&old_before])?;
            old += tx.execute("DELETE FROM events WHERE at_ms < $1", &[&old_before])?;
            old += tx.execute("DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - $1", &[&max_events])?;
            let devices = tx.execute("DELETE FROM devices WHERE last_seen_ms < $1", &[&old_before])?;
            tx.commit()?;
            Ok(Pruned { raw, old, devices })
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::fleet::registry::tests::telemetry;
    use crate::fleet::storage::tests::{arrived, servers_sharing_a_store_count_each_report_once};
    use drover_tests::postgres::Postgres as Server;

    fn server() -> Option<Server> {
        Server::start()
    }

    #[test]
    fn postgres_servers_sharing_it_count_each_report_once() {
        let Some(pg) = server() else { return };
        let url = pg.create_database("shared");
        // Three servers starting at once: the schema is made once.
        let stores: Vec<Postgres> = std::thread::scope(|s| {
            let started: Vec<_> = (0..3).map(|_| s.spawn(|| Postgres::connect(&url, None))).collect();
            started.into_iter().map(|h| h.join().expect("thread").expect("connect")).collect()
        });
        let [mut a, mut b, _c] = <[Postgres; 3]>::try_from(stores).ok().expect("three");
        servers_sharing_a_store_count_each_report_once(&mut a, &mut b);
        assert_eq!(pg.psql(&url, "SELECT version FROM drover_schema"), MIGRATIONS.len().to_string());
        assert_eq!(pg.psql(&url, "SELECT count(*), sum(periods), sum(inferences) FROM rollups"), "2|4|65");
    }

    #[test]
    fn postgres_servers_racing_on_the_same_devices_lose_nothing() {
        let Some(pg) = server() else { return };
        let url = pg.create_database("race");
        // Four servers each get every report of 20 devices, in a different order: every batch
        // locks rows another holds, and each report must count once.
        std::thread::scope(|s| {
            for k in 0..4u64 {
                let url = url.clone();
                s.spawn(move || {
                    let mut store = Postgres::connect(&url, None).expect("connect");
                    for seq in 1..=30u64 {
                        let mut batch: Vec<Arrived> = (0..20u64)
                            .map(|d| arrived(seq, &format!("pi-{d}"), telemetry(seq, 10_000 + seq * 1000, 1)))
                            .collect();
                        batch.rotate_left((k * 5) as usize);
                        store.ingest(&batch).expect("ingest");
                    }
                });
            }
        });
        let store = Postgres::connect(&url, None).expect("connect");
        let devices = store.devices().expect("devices");
        assert_eq!(devices.len(), 20);
        assert!(
            devices.iter().all(|d| d.totals.inferences == 30),
            "{:?}",
            devices.iter().map(|d| d.totals.inferences).collect::<Vec<_>>()
        );
        assert_eq!(pg.psql(&url, "SELECT count(*) FROM points"), "600");
        assert_eq!(pg.psql(&url, "SELECT sum(periods) FROM rollups"), "600");
    }

    #[test]
    fn postgres_tells_each_server_what_the_others_wrote() {
        let Some(pg) = server() else { return };
        let url = pg.create_database("news");
        let (mut a, mut b) = (Postgres::connect(&url, None).expect("a"), Postgres::connect(&url, None).expect("b"));
        assert!(b.changed().expect("first").is_empty());
        a.ingest(&[arrived(1, "pi-1", telemetry(1, 10_000, 10))]).expect("a");
        let news = b.changed().expect("news");
        assert_eq!(news.iter().map(|d| (d.id.as_str(), d.totals.inferences)).collect::<Vec<_>>(), [("pi-1", 10)]);
        assert!(b.changed().expect("again").is_empty(), "read once");
        a.ingest(&[arrived(2, "pi-2", telemetry(1, 10_000, 5))]).expect("a");
        assert_eq!(b.changed().expect("news").len(), 1);
    }

    #[test]
    fn postgres_lets_one_server_drive_rollouts_and_the_next_take_over_when_it_dies() {
        let Some(mut pg) = server() else { return };
        let url = pg.create_database("lease");
        let (mut a, mut b) = (Postgres::connect(&url, None).expect("a"), Postgres::connect(&url, None).expect("b"));
        assert_eq!(b.leader().expect("leader"), None);
        assert!(a.lead("a", 1).expect("a leads"));
        assert!(!b.lead("b", 1).expect("b waits"));
        assert!(a.lead("a", 2).expect("a still leads"), "held across calls");
        assert_eq!(b.leader().expect("leader").as_deref(), Some("a"));
        drop(a);
        assert!(b.lead("b", 3).expect("b takes over"));
        assert_eq!(b.leader().expect("leader").as_deref(), Some("b"));
        // The database going away ends the lease: the driver learns it on its next call.
        pg.kill();
        assert!(!b.lead("b", 4).unwrap_or(false));
        pg.restart();
        let mut again = false;
        for _ in 0..50 {
            if b.lead("b", 5).unwrap_or(false) {
                again = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(again, "leads again once PostgreSQL is back");
    }

    #[test]
    fn postgres_over_tls_verifies_the_server_against_the_given_ca() {
        let Some(mut pg) = server() else { return };
        let dir = tempfile::tempdir().expect("tmp");
        let pki = drover_tests::broker::Pki::make(&dir.path().join("pki"));
        let stranger = drover_tests::broker::Pki::make(&dir.path().join("other"));
        pg.require_tls(&pki.server_cert, &pki.server_key);
        let url = format!("{}?sslmode=require", pg.create_database("tls"));
        let mut store = Postgres::connect(&url, Some(&pki.ca)).expect("TLS, verified");
        store.ingest(&[arrived(1, "pi-1", telemetry(1, 10_000, 10))]).expect("ingest over TLS");
        assert!(store.lead("a", 1).expect("the lease's connection uses TLS too"));
        let refused = |ca: Option<&std::path::Path>, url: &str| match Postgres::connect(url, ca) {
            Ok(_) => panic!("connected"),
            Err(e) => e.to_string(),
        };
        let plain = pg.database_url("tls");
        let e = refused(None, &plain);
        assert!(e.contains("no encryption") || e.contains("pg_hba"), "the server wants TLS: {e}");
        let e = refused(Some(&stranger.ca), &url);
        assert!(e.to_lowercase().contains("certificate"), "another CA's server is refused: {e}");
        let e = refused(None, &url);
        assert!(e.contains("--db-ca"), "sslmode=require without a CA: {e}");
    }

    #[test]
    fn postgres_keeps_series_rollups_and_rollouts_like_sqlite() {
        let Some(pg) = server() else { return };
        let url = pg.create_database("series");
        let mut s = Postgres::connect(&url, None).expect("connect");
        let hour = 3_600_000;
        for i in 0..48u64 {
            s.ingest(&[arrived(i * hour, "pi-1", telemetry(i + 1, i * hour + 1000, 10))]).expect("ingest");
        }
        let retention = Retention { raw: Duration::from_secs(12 * 3600), ..Retention::default() };
        assert_eq!(s.prune(48 * hour, &retention).expect("prune").raw, 36);
        let series = s.series("pi-1", 0, u64::MAX, 1000).expect("series");
        assert_eq!(series.len(), 48, "roll-ups stand in for the pruned periods");
        assert_eq!(series.iter().map(|p| p.inferences).sum::<u64>(), 480);
        assert_eq!(series[0].cpu_pct, Some(12.5));
        let mut r = Rollout::new(crate::rollout::plan::tests::plan(), 5);
        s.save_rollout(&r, b"bundle bytes").expect("save");
        r.pause(6);
        s.save_rollout(&r, b"ignored").expect("save again");
        assert_eq!(s.rollouts().expect("rollouts"), vec![(r.clone(), b"bundle bytes".to_vec())]);
        assert_eq!(s.rollout_states().expect("states"), vec![r.clone()]);
        assert_eq!(s.rollout_bundle(&r.plan.id).expect("bundle"), Some(b"bundle bytes".to_vec()));
        drop(s);
        pg.psql(&url, "UPDATE drover_schema SET version = 99");
        assert!(matches!(Postgres::connect(&url, None), Err(StorageError::Newer { found: 99, .. })));
    }
}
