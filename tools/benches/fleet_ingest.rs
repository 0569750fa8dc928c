//! Fleet ingest benchmark: the messages per second the fleet server stores against the broker's
//! raw throughput of the same messages, in the same run, on the embedded broker (rumqttd, in
//! process). Goal: ratio ≥ 0.5.
//!
//! The load: `--devices` simulated agents (default 200), each first announcing itself with a
//! retained status, then `--messages` telemetry reports in all (default 20 000; 4 000 with
//! `--quick`), round-robin over the devices with increasing sequence numbers and periods. Every
//! payload is a real `Telemetry` (or `Status`) encoded by the agent's own `codec::encode`: even
//! devices are configured for postcard, odd ones for JSON. One connection (`--publishers N`: N) sends them at QoS 1
//! (the agents' QoS), as fast as the broker takes them.
//!
//! raw     = a plain rumqttc subscriber on the server's topic filters (QoS 1, acknowledging each
//!           message): time from the first publish until it received the last.
//! server  = the fleet server (`drover fleet serve`'s batching, its own thread and runtime as the
//!           CLI runs it) with its SQLite file in WAL mode, and again with an in-memory database:
//!           time until `stored` reaches every message (decoded, applied to the registry), and
//!           until `written` does (in the database, acknowledged to the broker).
//!
//! The clock starts once the consumer is subscribed: the raw subscriber has its SubAcks, the
//! server has taken (and written) the retained statuses the broker forwards on subscribing, and
//! gone quiet. Rounds interleave the three and report medians. Timing never fails the bench; a
//! lost, rejected or misfiled report does (non-zero exit).
//!
//! `--links N` runs the server with N ingest connections (a `$share/` subscription when N > 1)
//! beside the single-connection server; `--mosquitto` runs it all against Debian's Mosquitto
//! (its own process: its CPU is not in the per-thread table) instead of the embedded broker.
//!
//! `--postgres` adds the server over PostgreSQL (Debian's, started by the bench in a temporary
//! directory, as the tests do): one instance, and `--instances N` (default 3) sharing the
//! report streams through one `$share/` group, each in its own thread and runtime as separate
//! `drover fleet serve` processes would be. PostgreSQL's own CPU (its processes, read from
//! `/proc`) is listed beside the server's threads.
//!
//! `cargo bench -p drover-tools --bench fleet_ingest [-- --quick] [-- --messages N --devices D
//! --rounds R --links N --publishers N --mosquitto --postgres --instances N]` (or `DROVER_BENCH_MESSAGES`, `DROVER_BENCH_DEVICES`,
//! `DROVER_BENCH_ROUNDS`).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_runtime::link::BrokerSettings;
use drover_runtime::link::codec::{self, PayloadFormat};
use drover_tests::broker::{Broker, Kind, Options, free_port};
use drover_tools::fleet::hub::Hub;
use drover_tools::fleet::record;
use drover_tools::fleet::registry::{Change, Registry};
use drover_tools::fleet::server::{self, DEFAULT_BATCH_DELAY, DEFAULT_BATCH_MAX, DEFAULT_INGEST_LINKS, ServeConfig};
use drover_tools::fleet::storage::{Retention, Sqlite, Storage};
use drover_tools::fleet::writer::coalesce;
use drover_wire::Arch;
use drover_wire::drift::LatencyHistogram;
use drover_wire::manifest::AgentVersion;
use drover_wire::message::{ModelRef, Slot, Status};
use drover_wire::telemetry::{Errors, Outbox, System, Telemetry};
use drover_wire::topic::{self, DeviceLeaf, Name};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

/// The agents' default telemetry period.
const PERIOD_MS: u64 = 60_000;
/// How long a measurement may take before the bench calls the messages lost.
const PATIENCE: Duration = Duration::from_secs(120);

/// The run's size.
struct Setup {
    messages: usize,
    devices: usize,
    rounds: usize,
    /// Ingest connections of the server.
    links: usize,
    /// Connections the telemetry is published on.
    publishers: usize,
    /// Against Mosquitto (a process of its own) rather than the embedded broker.
    mosquitto: bool,
    /// Also over PostgreSQL.
    postgres: bool,
    /// Server instances sharing PostgreSQL in its scale-out variant.
    instances: usize,
}

impl Setup {
    /// From the arguments (`cargo bench` adds `--bench`, which is ignored) and the environment.
    fn parse() -> Setup {
        let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<usize>().ok());
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let arg = |name: &str| {
            args.iter().position(|a| a == name).map(|i| {
                args.get(i + 1).and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| panic!("{name} wants a number"))
            })
        };
        let setup = Setup {
            messages: arg("--messages").or(env("DROVER_BENCH_MESSAGES")).unwrap_or(if quick { 4_000 } else { 20_000 }),
            devices: arg("--devices").or(env("DROVER_BENCH_DEVICES")).unwrap_or(200),
            rounds: arg("--rounds").or(env("DROVER_BENCH_ROUNDS")).unwrap_or(if quick { 1 } else { 3 }),
            links: arg("--links").unwrap_or(DEFAULT_INGEST_LINKS),
            mosquitto: args.iter().any(|a| a == "--mosquitto"),
            publishers: arg("--publishers").unwrap_or(1).max(1),
            postgres: args.iter().any(|a| a == "--postgres"),
            instances: arg("--instances").unwrap_or(3).max(1),
        };
        assert!(setup.messages > 0 && setup.devices > 0 && setup.rounds > 0, "nothing to measure");
        setup
    }
}

/// Small deterministic noise, so that reports differ the way real ones do.
struct Noise(u64);

impl Noise {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below.max(1)
    }
}

/// A message as published: topic, payload, retained.
struct Message {
    topic: String,
    payload: Vec<u8>,
}

/// What the devices publish, encoded once before any clock runs.
struct Load {
    /// One retained status per device.
    statuses: Vec<Message>,
    /// The telemetry reports, in publishing order.
    telemetry: Vec<Message>,
    /// Reports per device (the first `messages % devices` devices have one more).
    per_device: Vec<u64>,
    /// Inferences over every report, to check what the registry summed.
    inferences: u64,
}

fn device_name(i: usize) -> Name {
    Name::new(&format!("bench-{i:04}")).expect("a valid device id")
}

/// Even devices speak postcard, odd ones JSON (each agent has one `payload` setting).
fn format_of(device: usize) -> PayloadFormat {
    if device.is_multiple_of(2) { PayloadFormat::Postcard } else { PayloadFormat::Json }
}

fn model() -> ModelRef {
    ModelRef { name: "iris".try_into().expect("model name"), version: 3 }
}

fn load(setup: &Setup, now_ms: u64) -> Load {
    let devices: Vec<Name> = (0..setup.devices).map(device_name).collect();
    let statuses = devices
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let status = Status {
                online: true,
                agent: AgentVersion { major: 0, minor: 1, patch: 0 },
                arch: Arch::ALL[i % Arch::ALL.len()],
                groups: heapless::Vec::from_slice(&["bench".try_into().expect("group")]).expect("one group"),
                model: Some(model()),
                slot: Some(Slot::A),
                uptime_s: 5,
                at: now_ms / 1000,
                labels: heapless::Vec::new(),
                presence_only: false,
            };
            Message {
                topic: topic::device(d, DeviceLeaf::Status).to_string(),
                payload: codec::encode(format_of(i), &status),
            }
        })
        .collect();
    let rounds = setup.messages.div_ceil(setup.devices) as u64;
    let first_end = now_ms - rounds * PERIOD_MS;
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let mut per_device = vec![0u64; setup.devices];
    let mut inferences = 0;
    let telemetry = (0..setup.messages)
        .map(|j| {
            let i = j % setup.devices;
            per_device[i] += 1;
            let seq = per_device[i];
            let end_ms = first_end + seq * PERIOD_MS;
            let answered = 200 + noise.next(800);
            let mut latency = LatencyHistogram::default();
            for _ in 0..answered {
                latency.record(400 + noise.next(1_600) as u32 + noise.next(20).pow(3) as u32);
            }
            inferences += answered;
            let t = Telemetry {
                seq,
                start_ms: end_ms - PERIOD_MS,
                end_ms,
                model: Some(model()),
                slot: Some(Slot::A),
                inferences: answered,
                errors: Errors { input: noise.next(3) as u32, engine: 0, busy: noise.next(2) as u32, no_model: 0 },
                latency,
                queue_max: 1 + noise.next(8) as u32,
                queue_capacity: 64,
                system: System {
                    cpu_pct: Some(5.0 + noise.next(600) as f32 / 10.0),
                    mem_used_kib: 900_000 + noise.next(50_000),
                    mem_total_kib: 3_900_000,
                    rss_kib: 14_000 + noise.next(2_000),
                    disk_used_kib: 6_100_000,
                    disk_total_kib: 29_000_000,
                    temp_c: Some(45.0 + noise.next(150) as f32 / 10.0),
                    boot_uptime_s: 86_400 + seq * PERIOD_MS / 1000,
                },
                uptime_s: seq * PERIOD_MS / 1000,
                outbox: Outbox { queued: 1, bytes: 300, dropped: 0 },
                quality: None,
                shadow: None,
                split: None,
                inputs: heapless::Vec::new(),
            };
            Message {
                topic: topic::device(&devices[i], DeviceLeaf::Telemetry).to_string(),
                payload: codec::encode(format_of(i), &t),
            }
        })
        .collect();
    Load { statuses, telemetry, per_device, inferences }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn settings(port: u16) -> BrokerSettings {
    BrokerSettings { port, ..BrokerSettings::default() }
}

/// Publishes `messages` at QoS 1 from one connection (the agents' client options); returns when
/// the broker acknowledged every one, and the instant the first went out.
async fn publish(port: u16, id: &str, messages: &[Message], retain: bool) -> Instant {
    let options = settings(port).mqtt_options(id, true).expect("options");
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let acked = Arc::new(AtomicU64::new(0));
    let (connected_tx, connected) = tokio::sync::oneshot::channel();
    let pump = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut connected_tx = Some(connected_tx);
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if let Some(tx) = connected_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => panic!("publisher: {e}"),
                }
            }
        })
    };
    // The clock starts on a connected publisher.
    connected.await.expect("publisher connected");
    let start = Instant::now();
    for m in messages {
        client.publish(m.topic.as_str(), QoS::AtLeastOnce, retain, m.payload.clone()).await.expect("publish");
    }
    let deadline = Instant::now() + PATIENCE;
    while acked.load(Ordering::Relaxed) < messages.len() as u64 {
        assert!(Instant::now() < deadline, "the broker acknowledged only {acked:?} of {} publishes", messages.len());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    start
}

/// The load goes out on `publishers` connections at once, each with the devices `d` where
/// `d % publishers` is its number (so a device's reports keep their order), each holding the
/// agents' window of 32 unacknowledged publishes.
async fn publish_telemetry(port: u16, id: &str, load: &Load, publishers: usize) -> Instant {
    let devices = load.per_device.len();
    let parts: Vec<Vec<Message>> = (0..publishers)
        .map(|p| {
            load.telemetry
                .iter()
                .enumerate()
                .filter(|(j, _)| (j % devices) % publishers == p)
                .map(|(_, m)| Message { topic: m.topic.clone(), payload: m.payload.clone() })
                .collect()
        })
        .collect();
    let ids: Vec<String> = (0..publishers).map(|p| format!("{id}-{p}")).collect();
    let starts = futures_util::future::join_all(
        parts.iter().zip(&ids).filter(|(m, _)| !m.is_empty()).map(|(m, id)| publish(port, id, m, false)),
    )
    .await;
    starts.into_iter().min().expect("a publisher")
}

/// The raw figure: a plain subscriber on the server's filters. Returns messages per second.
fn raw(port: u16, load: &Load, publishers: usize, round: usize) -> f64 {
    let (ready_tx, ready) = std::sync::mpsc::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel::<Instant>();
    let telemetry = load.telemetry.len();
    let id = format!("bench-raw-{round}");
    let subscriber = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let options = settings(port).mqtt_options(&id, true).expect("options");
            let (client, mut eventloop) = AsyncClient::new(options, 64);
            let (mut subscribed, mut seen_telemetry) = (0, 0);
            loop {
                match eventloop.poll().await.expect("subscriber") {
                    Event::Incoming(Packet::ConnAck(_)) => {
                        for filter in record::filters() {
                            client.subscribe(filter, QoS::AtLeastOnce).await.expect("subscribe");
                        }
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        subscribed += 1;
                        if subscribed == record::filters().len() {
                            let _ = ready_tx.send(());
                        }
                    }
                    // The retained statuses come first; only the telemetry is timed.
                    Event::Incoming(Packet::Publish(p)) if p.topic.ends_with("/telemetry") => {
                        seen_telemetry += 1;
                        if seen_telemetry == telemetry {
                            let _ = done_tx.send(Instant::now());
                            let _ = client.disconnect().await;
                        }
                    }
                    Event::Outgoing(Outgoing::Disconnect) => break,
                    _ => {}
                }
            }
        });
    });
    ready.recv_timeout(PATIENCE).expect("the subscriber subscribed");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let start = rt.block_on(publish_telemetry(port, &format!("bench-pub-raw-{round}"), load, publishers));
    let end = done.recv_timeout(PATIENCE).unwrap_or_else(|_| panic!("raw subscriber: telemetry lost"));
    subscriber.join().expect("subscriber");
    telemetry as f64 / (end - start).as_secs_f64()
}

/// One server measurement: messages per second taken and written, and the CPU time each of the
/// process's threads spent from the first publish until the last message was written.
struct Served {
    stored: f64,
    written: f64,
    cpu: ThreadCpu,
}

/// CPU time per thread name (µs), summed over the threads of that name.
type ThreadCpu = std::collections::BTreeMap<String, f64>;

/// This process's threads' CPU time so far (utime + stime from `/proc/self/task/*/stat`, in
/// clock ticks of 10 ms): where a message's time goes when the server is the bottleneck.
fn thread_cpu() -> ThreadCpu {
    let mut out = ThreadCpu::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
        *out.entry(name).or_default() += ticks * 10_000.0;
    }
    let pg = postgres_cpu();
    if pg > 0.0 {
        out.insert("postgres (processes)".into(), pg);
    }
    out
}

/// PostgreSQL's processes' CPU time so far (every process named `postgres`: the bench's own
/// server is the only one), µs.
fn postgres_cpu() -> f64 {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0.0 };
    let mut us = 0.0;
    for p in procs.flatten() {
        let Ok(stat) = std::fs::read_to_string(p.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] != "postgres" {
            continue;
        }
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
        us += ticks * 10_000.0;
    }
    us
}

/// `after - before`, per thread name.
fn cpu_delta(before: &ThreadCpu, after: &ThreadCpu) -> ThreadCpu {
    after.iter().map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0))).collect()
}

/// Where a measured server keeps what it learns.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Store {
    File,
    Memory,
    Postgres,
}

/// One server set-up the bench measures.
struct Variant {
    name: String,
    store: Store,
    links: usize,
    /// Server instances sharing the store (PostgreSQL only).
    instances: usize,
}

/// Runs the fleet server `variant.instances` times, each on its own thread and runtime (as
/// `drover fleet serve` does), publishes the load, and checks what they kept.
fn served(port: u16, load: &Load, variant: &Variant, db: &server::Database, publishers: usize, round: usize) -> Served {
    let tag = format!("{round}-{:?}-{}-{}", variant.store, variant.links, variant.instances).to_lowercase();
    let mut hubs = Vec::new();
    let mut stops = Vec::new();
    let mut threads = Vec::new();
    for k in 0..variant.instances {
        let cfg = ServeConfig {
            broker: settings(port),
            client_id: format!("bench-fleet-{tag}-{k}"),
            db: db.clone(),
            http: ([127, 0, 0, 1], 0).into(),
            token: None,
            retention: Retention::default(),
            batch_max: DEFAULT_BATCH_MAX,
            batch_delay: DEFAULT_BATCH_DELAY,
            ingest_links: variant.links,
            // Each measured server is a fleet of its own: the persistent sessions of an earlier
            // one stay in their group, and Mosquitto keeps dealing them their share.
            share_group: format!("bench-{tag}"),
            catalog: Default::default(),
            signer: None,
        };
        let (hub_tx, hub) = std::sync::mpsc::channel::<Arc<Hub>>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("fleet-server".into()).spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let (running, listener) = server::start(&cfg).await.expect("fleet server");
                hub_tx.send(running.hub.clone()).expect("bench");
                let shutdown = async {
                    let _ = stopped.await;
                };
                server::serve(cfg, &running, listener, Arc::new(unix_ms), shutdown).await.expect("fleet server");
            });
        });
        threads.push(thread.expect("fleet server thread"));
        hubs.push(hub.recv().expect("fleet server started"));
        stops.push(stop);
    }
    let sum = |f: &dyn Fn(&Hub) -> u64| hubs.iter().map(|h| f(h)).sum::<u64>();
    let wait_for = |what: &str, target: u64, count: &dyn Fn() -> u64| {
        let deadline = Instant::now() + PATIENCE;
        while count() < target {
            if Instant::now() > deadline {
                let counters: Vec<_> = hubs.iter().map(|h| h.ingest()).collect();
                eprintln!("fleet server: {what}: {counters:?} of {target} messages");
                std::process::exit(1);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Instant::now()
    };
    // Subscribed once the retained statuses came in (rumqttd forwards at most its 100 inflight
    // slots of them on a subscription) and were written: nothing more arrives until the clock runs.
    wait_for("the retained statuses", variant.instances as u64, &|| {
        hubs.iter().map(|h| h.ingest().written.min(1)).sum()
    });
    let mut before: Vec<_> = hubs.iter().map(|h| h.ingest()).collect();
    loop {
        std::thread::sleep(DEFAULT_BATCH_DELAY * 4);
        let now: Vec<_> = hubs.iter().map(|h| h.ingest()).collect();
        if now == before && now.iter().all(|c| c.stored == c.written) {
            break;
        }
        before = now;
    }
    let total = before.iter().map(|c| c.written).sum::<u64>() + load.telemetry.len() as u64;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cpu_before = thread_cpu();
    let start = rt.block_on(publish_telemetry(port, &format!("bench-pub-fleet-{round}"), load, publishers));
    let stored = wait_for("stored", total, &|| sum(&|h| h.ingest().stored));
    let written = wait_for("written", total, &|| sum(&|h| h.ingest().written));
    let cpu = cpu_delta(&cpu_before, &thread_cpu());
    check(&hubs, load, total, variant.store == Store::Postgres);
    for stop in stops {
        let _ = stop.send(());
    }
    for thread in threads {
        thread.join().expect("fleet server thread");
    }
    let n = load.telemetry.len() as f64;
    Served { stored: n / (stored - start).as_secs_f64(), written: n / (written - start).as_secs_f64(), cpu }
}

/// Fails the bench (exit 1) unless the servers kept exactly what was sent. Over a shared store
/// the first server's registry is checked once it took in what the others wrote.
fn check(hubs: &[Arc<Hub>], load: &Load, total: u64, shared: bool) {
    let mut wrong = Vec::new();
    let counters: Vec<_> = hubs.iter().map(|h| h.ingest()).collect();
    let (rejected, stored, written) = counters.iter().fold((0, 0, 0), |(r, s, w), c| {
        (r + c.rejected, s + c.stored + if shared { c.repeated } else { 0 }, w + c.written)
    });
    if rejected > 0 || stored != total || written != total {
        wrong.push(format!("ingest counters {counters:?}, expected {total} stored and written, none rejected"));
    }
    let hub = &hubs[0];
    let registry = || {
        hub.registry(|r| {
            let marks_ok = (0..load.per_device.len())
                .all(|i| r.device(device_name(i).as_str()).is_some_and(|d| d.telemetry_mark.seq == load.per_device[i]));
            (r.devices().count(), r.devices().map(|d| d.totals.inferences).sum::<u64>(), marks_ok)
        })
    };
    let deadline = Instant::now() + if shared { drover_tools::fleet::writer::REFRESH * 5 } else { Duration::ZERO };
    let mut seen = registry();
    while seen != (load.per_device.len(), load.inferences, true) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        seen = registry();
    }
    let (devices, inferences, marks_ok) = seen;
    if devices != load.per_device.len() || inferences != load.inferences || !marks_ok {
        wrong.push(format!(
            "registry: {devices} devices, {inferences} inferences, newest reports {}; expected {}, {}",
            if marks_ok { "right" } else { "wrong" },
            load.per_device.len(),
            load.inferences
        ));
    }
    hub.storage(|s| {
        let stored = s.devices().expect("devices");
        if stored.len() != load.per_device.len()
            || stored.iter().map(|d| d.totals.inferences).sum::<u64>() != inferences
        {
            wrong.push(format!("database: {} devices, expected {}", stored.len(), load.per_device.len()));
        }
        for (i, want) in load.per_device.iter().enumerate() {
            let points = s.series(device_name(i).as_str(), 0, u64::MAX, usize::MAX).expect("series").len() as u64;
            if points != *want {
                wrong.push(format!("database: {} has {points} periods, expected {want}", device_name(i).as_str()));
                break;
            }
        }
    });
    if !wrong.is_empty() {
        for w in wrong {
            eprintln!("FAIL: {w}");
        }
        std::process::exit(1);
    }
}

/// Where a report's time goes without MQTT (one thread, µs per report): decoding by format,
/// the registry (with the device's row), and the database write at a few batch sizes.
struct Costs {
    decode_postcard: f64,
    decode_json: f64,
    apply: f64,
    /// (batch size, SQLite file, SQLite memory).
    write: Vec<(usize, f64, f64)>,
}

const COST_BATCHES: [usize; 4] = [1, 16, 100, DEFAULT_BATCH_MAX];

fn costs(load: &Load, devices: usize, dir: &Path) -> Costs {
    let micros = |start: Instant, n: usize| start.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let decode_as = |format: PayloadFormat| {
        let of_format: Vec<&Message> = load
            .telemetry
            .iter()
            .enumerate()
            .filter(|(j, _)| format_of(j % devices) == format)
            .map(|(_, m)| m)
            .collect();
        let start = Instant::now();
        for m in &of_format {
            std::hint::black_box(record::decode(&m.topic, &m.payload).expect("decodes"));
        }
        micros(start, of_format.len())
    };
    let (decode_postcard, decode_json) = (decode_as(PayloadFormat::Postcard), decode_as(PayloadFormat::Json));
    let decoded: Vec<_> = load
        .telemetry
        .iter()
        .map(|m| record::decode(&m.topic, &m.payload).expect("decodes").expect("a record"))
        .collect();
    let mut registry = Registry::default();
    let now = unix_ms();
    let start = Instant::now();
    let changes: Vec<Vec<Change>> = decoded
        .iter()
        .map(|(device, rec)| {
            let mut c = registry.apply(now, device, rec).unwrap_or_default();
            c.extend(registry.touched());
            c
        })
        .collect();
    let apply = micros(start, changes.len());
    let write = COST_BATCHES
        .iter()
        .map(|&batch| {
            // As the writer merges a group: each device's row once.
            let batches: Vec<Vec<Change>> = changes.chunks(batch).map(|c| coalesce(c.concat())).collect();
            let time = |mut storage: Sqlite| {
                let start = Instant::now();
                for b in &batches {
                    storage.write(b).expect("write");
                }
                micros(start, changes.len())
            };
            let file = time(Sqlite::open(&dir.join(format!("costs-{batch}.db"))).expect("db"));
            (batch, file, time(Sqlite::in_memory().expect("db")))
        })
        .collect();
    Costs { decode_postcard, decode_json, apply, write }
}

/// The resident set now, bytes (`/proc/self/statm`, pages of 4 KiB).
fn resident_bytes() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|p| p.parse::<f64>().ok()))
        .map_or(0.0, |pages| pages * 4096.0)
}

/// What each fleet server instance holds per device: a registry of 50,000 devices, each given one
/// of the load's statuses and one of its reports under its own name. Returns the device count
/// and the bytes per device, from the resident set before and after (the load itself is already
/// resident).
fn registry_memory(load: &Load) -> (usize, f64) {
    const DEVICES: usize = 50_000;
    let statuses: Vec<_> =
        load.statuses.iter().filter_map(|m| record::decode(&m.topic, &m.payload).ok().flatten()).collect();
    let reports: Vec<_> =
        load.telemetry.iter().take(1000).filter_map(|m| record::decode(&m.topic, &m.payload).ok().flatten()).collect();
    let before = resident_bytes();
    let mut registry = Registry::default();
    let now = unix_ms();
    for i in 0..DEVICES {
        let id = format!("bench-mem-{i:06}");
        for (_, rec) in [&statuses[i % statuses.len()], &reports[i % reports.len()]] {
            let _ = registry.apply(now, &id, rec);
        }
        // The rows a batch writes, dropped as the writer drops them.
        drop(registry.touched());
    }
    let after = resident_bytes();
    std::hint::black_box(&registry);
    (DEVICES, (after - before) / DEVICES as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // The server's warnings; rumqttd logs every packet's tracing span at error level, so it is
    // off unless RUST_LOG says otherwise.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,rumqttd=off")).init();
    let setup = Setup::parse();
    // Mosquitto as a fleet runs it: a window of 100 unacknowledged messages per client (its
    // default of 20 is documented as the first thing to raise), queues deep enough for the load.
    let _mosquitto = setup.mosquitto.then(|| {
        let opts = Options {
            extra: format!("max_inflight_messages 100\nmax_queued_messages {}\n", setup.messages * 2),
            ..Options::default()
        };
        Broker::start(Kind::Mosquitto, opts).expect("mosquitto (Debian's package) for --mosquitto")
    });
    let port = match &_mosquitto {
        Some(b) => b.port,
        None => {
            let port = free_port();
            let broker = drover_tools::broker::BrokerConfig {
                listen: Some(([127, 0, 0, 1], port).into()),
                ..Default::default()
            };
            std::thread::spawn(move || drover_tools::broker::run(&broker));
            std::thread::sleep(Duration::from_millis(300));
            port
        }
    };

    let load = load(&setup, unix_ms());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(publish(port, "bench-presence", &load.statuses, true));

    let size = |format: PayloadFormat| {
        let sizes: Vec<usize> = load
            .telemetry
            .iter()
            .enumerate()
            .filter(|(j, _)| format_of(j % setup.devices) == format)
            .map(|(_, m)| m.payload.len())
            .collect();
        sizes.iter().sum::<usize>() / sizes.len().max(1)
    };
    println!(
        "Fleet ingest benchmark: {} telemetry reports from {} devices (postcard ~{} B, JSON ~{} B), QoS 1, {} publishers,",
        setup.messages,
        setup.devices,
        size(PayloadFormat::Postcard),
        size(PayloadFormat::Json),
        setup.publishers
    );
    println!(
        "{}; server group commits of up to {DEFAULT_BATCH_MAX} / {} ms as `drover fleet serve`; medians of {} rounds",
        if setup.mosquitto {
            "Mosquitto (its own process, max_inflight_messages 100)"
        } else {
            "embedded broker (rumqttd) in process"
        },
        DEFAULT_BATCH_DELAY.as_millis(),
        setup.rounds
    );
    println!("raw     = a plain rumqttc subscriber on the server's filters: first publish -> last message received");
    println!("stored  = the fleet server decoded every report and applied it to its registry");
    println!("written = ... and wrote it to the database in its batch transactions, acknowledging the broker");
    println!();

    let dir = tempfile::tempdir().expect("tmp");
    // The server as `drover fleet serve` runs it, with its file and in memory, and with a single
    // ingest connection (one broker window) to show what the shared subscription brings.
    let links = setup.links;
    let variant = |name: String, store, links, instances| Variant { name, store, links, instances };
    let mut variants = vec![
        variant(format!("fleet server, SQLite file, {links} links"), Store::File, links, 1),
        variant(format!("fleet server, memory, {links} links"), Store::Memory, links, 1),
    ];
    if links != 1 {
        variants.push(variant("fleet server, SQLite file, 1 link".into(), Store::File, 1, 1));
    }
    let postgres = setup
        .postgres
        .then(|| drover_tests::postgres::Postgres::start().expect("PostgreSQL (Debian's postgresql) for --postgres"));
    if postgres.is_some() {
        variants.push(variant(format!("PostgreSQL, 1 server, {links} links"), Store::Postgres, links, 1));
        let n = setup.instances;
        if n > 1 {
            variants.push(variant(format!("PostgreSQL, {n} servers, {links} links"), Store::Postgres, links, n));
        }
    }
    let mut raws = Vec::new();
    let mut runs: Vec<Vec<Served>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..setup.rounds {
        raws.push(raw(port, &load, setup.publishers, round));
        for (i, v) in variants.iter().enumerate() {
            let db = match (v.store, &postgres) {
                (Store::File, _) => server::Database::Sqlite(dir.path().join(format!("fleet-{round}-{i}.db"))),
                (Store::Memory, _) => server::Database::Memory,
                (Store::Postgres, Some(pg)) => {
                    server::Database::Postgres { url: pg.create_database(&format!("bench_{round}_{i}")), ca: None }
                }
                (Store::Postgres, None) => unreachable!("PostgreSQL variants only with a server"),
            };
            runs[i].push(served(port, &load, v, &db, setup.publishers, round));
        }
    }
    let raw_rate = median(raws.clone());
    let spread = |v: &[f64]| {
        let (lo, hi) = v.iter().fold((f64::MAX, 0f64), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        format!("{lo:.0}-{hi:.0}")
    };
    println!("{:<32} {:>10} {:>15} {:>7} {:>10} {:>15}", "", "msgs/s", "(min-max)", "ratio", "stored/s", "(min-max)");
    println!("{:<32} {:>10.0} {:>15} {:>7.2}", "raw: broker -> subscriber", raw_rate, spread(&raws), 1.0);
    let mut file_ratio = 0.0;
    for (i, (Variant { name, .. }, runs)) in variants.iter().zip(&runs).enumerate() {
        let stored: Vec<f64> = runs.iter().map(|r| r.stored).collect();
        let written: Vec<f64> = runs.iter().map(|r| r.written).collect();
        let ratio = median(written.clone()) / raw_rate;
        if i == 0 {
            file_ratio = ratio;
        }
        println!(
            "{:<32} {:>10.0} {:>15} {:>7.2} {:>10.0} {:>15}",
            name,
            median(written.clone()),
            spread(&written),
            ratio,
            median(stored.clone()),
            spread(&stored),
        );
    }
    println!();
    println!("CPU µs per message by thread (all rounds; 10 ms ticks):");
    for (Variant { name, .. }, runs) in variants.iter().zip(&runs) {
        let n = (load.telemetry.len() * runs.len()) as f64;
        let mut by_thread = ThreadCpu::new();
        for f in runs {
            for (thread, us) in &f.cpu {
                *by_thread.entry(thread.clone()).or_default() += us;
            }
        }
        let mut threads: Vec<(String, f64)> = by_thread.into_iter().filter(|(_, us)| *us / n >= 0.05).collect();
        threads.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = threads.iter().map(|(_, us)| us / n).sum();
        println!(
            "{name}: {}; all {total:.1}",
            threads.iter().map(|(thread, us)| format!("{thread} {:.1}", us / n)).collect::<Vec<_>>().join(", ")
        );
    }
    println!();
    println!(
        "msgs/s = received (raw) or written (server); ratio = server msgs/s / raw msgs/s (medians). Goal for the server ({links} links, SQLite file) >= 0.50: {}",
        if file_ratio >= 0.5 { "met" } else { "NOT met" }
    );
    println!(
        "checked: every report stored and written once, none rejected, {} devices with their newest report and every period in the database",
        setup.devices
    );

    if let (Some(pg), Some(i)) = (&postgres, variants.iter().position(|v| v.store == Store::Postgres)) {
        // What the store holds per row, tables with their indexes: the disk a fleet needs.
        let db = format!("bench_{}_{i}", setup.rounds - 1);
        println!();
        println!("PostgreSQL disk per row (table and indexes, after VACUUM ANALYZE, {db}):");
        pg.psql(&db, "VACUUM ANALYZE");
        for table in ["points", "rollups", "devices"] {
            let row = pg.psql(&db, &format!("SELECT pg_total_relation_size('{table}'), count(*) FROM {table}"));
            let (bytes, rows) = row.split_once('|').expect("size|count");
            let (bytes, rows): (f64, f64) = (bytes.parse().expect("size"), rows.parse().expect("count"));
            println!("{table:>10}: {:>6.0} B per row ({rows} rows)", bytes / rows.max(1.0));
        }
    }

    let (devices, per_device) = registry_memory(&load);
    println!();
    println!(
        "Registry memory: {:.1} KiB per device ({devices} devices, each with its status and newest report applied; resident set before and after)",
        per_device / 1024.0
    );

    let c = costs(&load, setup.devices, dir.path());
    println!();
    println!("Per report without MQTT, one thread, µs:");
    println!(
        "decode postcard {:.2}, decode JSON {:.2}, registry {:.2}; database write:",
        c.decode_postcard, c.decode_json, c.apply
    );
    println!("{:>10} {:>12} {:>12}", "batch", "SQLite file", "memory");
    for (batch, file, memory) in c.write {
        println!("{batch:>10} {file:>12.2} {memory:>12.2}");
    }
}
