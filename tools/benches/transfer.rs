//! Transfer benchmark: pushing a 0.5 MB bundle to 20 agents against the broker's raw fan-out of
//! the same bytes, in the same run, on the embedded broker (rumqttd, in process) and Mosquitto.
//!
//! raw    = one publisher sends the bundle's bytes as QoS 1 messages of one chunk each to a topic
//!          20 plain MQTT subscribers listen on; time until every subscriber has every message.
//! drover = `drover push` to 20 real agents (in process, each its own data dir): announcement,
//!          chunk requests, hash-checked chunks written to disk; time until all 20 hold the whole
//!          bundle (phase Installing), and until all 20 installed it (signature checks, slot
//!          write, model load, self-test).
//!
//! `cargo bench -p drover-tools --bench transfer`. Prints one table; medians of 3 rounds. The
//! scale run of docs/scaling.md sets `DROVER_BENCH_DEVICES=1000 DROVER_BENCH_ROUNDS=1
//! DROVER_BENCH_SIZES=512000 DROVER_BENCH_BROKERS=mosquitto` (rumqttd forwards at most 100
//! retained presences to a subscriber, so a group push there sees only 100 of 1,000 devices).
//! `DROVER_BENCH_LINK_MBIT=1000` holds the broker's outgoing link to that rate (`tc`, as root);
//! `DROVER_BENCH_TIMELINE=1` prints when the devices started, held the bundle and installed it
//! (percentiles); `DROVER_BENCH_DATA_DIR` moves the devices' data dirs (default `/dev/shm`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use drover_runtime::link::{BrokerSettings, PayloadFormat};
use drover_tests::broker::{Broker, Kind, Options, free_port};
use drover_tests::fleet::Fleet;
use drover_tests::onnx_gen::{write_matmul_model, write_samples};
use drover_tools::push::run::{Report, execute};
use drover_tools::push::{Audience, Campaign, Tracker, Work};
use drover_wire::message::Phase;
use drover_wire::topic::Name;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

const CHUNK: u32 = 32 * 1024;

/// A number from the environment, or the default.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Agents (and raw subscribers): `DROVER_BENCH_DEVICES`, default 20.
static DEVICES: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| env_or("DROVER_BENCH_DEVICES", 20));
/// Rounds per size: `DROVER_BENCH_ROUNDS`, default 3.
static ROUNDS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| env_or("DROVER_BENCH_ROUNDS", 3) as u64);

fn drover(args: &[&str]) {
    let cli = drover_tools::cli::Cli::parse_from(std::iter::once("drover").chain(args.iter().copied()));
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    drover_tools::cli::run(cli, now).unwrap_or_else(|e| panic!("drover {args:?}: {e:#}"));
}

/// Keys, root, delegation, and one bundle per round (a new version each time).
fn release(dir: &Path) {
    let d = |s: &str| dir.join(s).to_string_lossy().into_owned();
    drover(&["keygen", "--role", "root", "--out", &d("keys")]);
    drover(&["keygen", "--role", "release", "--out", &d("keys")]);
    drover(&["root", "init", "--key", &d("keys/root.key"), "--out", &d("root.json")]);
    let (root, root_key, rel_pub, deleg) = (d("root.json"), d("keys/root.key"), d("keys/release.pub"), d("rel.json"));
    drover(&[
        "delegate",
        "--root",
        &root,
        "--root-key",
        &root_key,
        "--release",
        &rel_pub,
        "--models",
        "big",
        "--out",
        &deleg,
    ]);
    write_samples(&dir.join("samples.jsonl"), 4);
}

/// Bundles of about `weight_bytes`, one per round, versions `first..first + ROUNDS`.
fn bundles(dir: &Path, weight_bytes: usize, first: u64) -> Vec<std::path::PathBuf> {
    let d = |s: &str| dir.join(s).to_string_lossy().into_owned();
    (first..first + *ROUNDS)
        .map(|v| {
            let model = dir.join(format!("big-{v}.onnx"));
            write_matmul_model(&model, weight_bytes + v as usize * 256);
            let out = dir.join(format!("big-v{v}.drv"));
            let (m, o) = (model.to_string_lossy().into_owned(), out.to_string_lossy().into_owned());
            let (s, k, deleg) = (d("samples.jsonl"), d("keys/release.key"), d("rel.json"));
            let v = v.to_string();
            let args = ["bundle", &m, "--name", "big", "--version", &v, "--selftest", &s, "--key", &k];
            drover(&[&args[..], &["--delegation", &deleg, "--out", &o]].concat());
            out
        })
        .collect()
}

/// The raw fan-out: `size` bytes as QoS 1 messages of `CHUNK` bytes, one publisher, 20 subscribers.
async fn raw_fanout(port: u16, size: usize, round: u64) -> Duration {
    let messages = size.div_ceil(CHUNK as usize);
    let topic = format!("bench/raw/{round}");
    let opts = |id: String| {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(32);
        o
    };
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Instant>(*DEVICES);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(*DEVICES);
    let mut subs = Vec::new();
    for i in 0..*DEVICES {
        let (client, mut el) = AsyncClient::new(opts(format!("raw-sub-{round}-{i}")), 64);
        let (topic, done, ready) = (topic.clone(), done_tx.clone(), ready_tx.clone());
        subs.push(tokio::spawn(async move {
            let mut got = 0;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(topic.as_str(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready.send(()).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(_))) => {
                        got += 1;
                        if got == messages {
                            let _ = done.send(Instant::now()).await;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("subscriber: {e}"),
                }
            }
        }));
    }
    for _ in 0..*DEVICES {
        ready_rx.recv().await.expect("subscriber ready");
    }
    let (publisher, mut el) = AsyncClient::new(opts(format!("raw-pub-{round}")), 64);
    let pumping = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let payload = vec![0xa5u8; CHUNK as usize];
    let start = Instant::now();
    for _ in 0..messages {
        publisher.publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone()).await.expect("publish");
    }
    let mut last = start;
    for _ in 0..*DEVICES {
        last = last.max(done_rx.recv().await.expect("subscriber done"));
    }
    pumping.abort();
    for s in subs {
        s.abort();
    }
    last - start
}

/// The devices' own share of a push with no network: for every device, the work its agent does
/// between the announcement and holding the bundle (a spool created, each chunk decoded,
/// hash-checked, written, journaled and folded into the bundle's digest), on two threads as the agents share two cores
/// here. On real boards each device does this on its own CPU, in parallel.
fn device_floor(bundle: &[u8], version: u64, dir: &Path) -> Duration {
    use drover_runtime::transfer::{ChunkSet, Patience, Receiver, Spool};
    use drover_wire::message::Chunk;
    let now = 1_800_000_000_000;
    let a = drover_tools::push::campaign::announce(bundle, "big", version, CHUNK, now).expect("announce");
    let payloads: Vec<Vec<u8>> =
        (0..a.chunk_count() as u32).map(|i| drover_tools::push::campaign::chunk_payload(&a, bundle, i)).collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for part in 0..2 {
            let (a, payloads) = (&a, &payloads);
            s.spawn(move || {
                for device in (part..*DEVICES).step_by(2) {
                    let spool_dir = dir.join(format!("floor-{device}"));
                    let mut spool = Spool::create(&spool_dir, a).expect("spool");
                    let have = ChunkSet::new(a.chunk_count() as u32);
                    let mut receiver = Receiver::new(a.clone(), have, Patience::default(), 0);
                    for p in payloads {
                        let chunk: Chunk<'_> = drover_runtime::link::codec::decode(p).expect("chunk");
                        receiver.on_chunk(&chunk, 0);
                        let now = start.elapsed().as_millis() as u64;
                        spool.write(chunk.index, chunk.sha256, chunk.data, now).expect("write");
                    }
                    assert!(receiver.is_complete());
                }
            });
        }
    });
    let took = start.elapsed();
    for device in 0..*DEVICES {
        let _ = std::fs::remove_dir_all(dir.join(format!("floor-{device}")));
    }
    took
}

/// A push to the fleet: (all started, all downloaded, all installed, copies per device and chunk).
async fn push(bundle: &[u8], version: u64, port: u16) -> (Duration, Duration, Duration, f64) {
    let devices: BTreeSet<Name> = (0..*DEVICES).map(|i| Name::new(&format!("dev-{i:02}")).expect("name")).collect();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let announce = drover_tools::push::campaign::announce(bundle, "big", version, CHUNK, now).expect("announce");
    let tracker = Tracker::new(Audience::Devices(devices), 0, 0, 120_000);
    let chunks = announce.chunk_count() as f64;
    let mut campaign = Campaign::new(Work::Bundle { announce }, tracker, PayloadFormat::Postcard);
    let start = Instant::now();
    let mut started: BTreeMap<Name, Duration> = BTreeMap::new();
    let mut downloaded: BTreeMap<Name, Duration> = BTreeMap::new();
    let mut installed: BTreeMap<Name, Duration> = BTreeMap::new();
    let settings = BrokerSettings { port, ..BrokerSettings::default() };
    let outcome = execute(&mut campaign, bundle, None, &settings, |report| {
        let Report::Changed(d, v) = report else { return };
        let t = start.elapsed();
        if v.phase.is_some() {
            started.entry(d.clone()).or_insert(t);
        }
        match &v.phase {
            Some(Phase::Installing) => {
                downloaded.entry(d.clone()).or_insert(t);
            }
            Some(Phase::Installed { .. }) => {
                downloaded.entry(d.clone()).or_insert(t);
                installed.entry(d.clone()).or_insert(t);
            }
            Some(Phase::Failed { reason }) => panic!("{d}: {reason}"),
            _ => {}
        }
    })
    .await
    .expect("push");
    assert!(campaign.tracker().all_succeeded(), "push v{version}: {:?}", outcome.end);
    let max = |m: &BTreeMap<Name, Duration>| m.values().max().copied().unwrap_or_default();
    let copies = campaign.copies() as f64 / (chunks * *DEVICES as f64);
    if std::env::var("DROVER_BENCH_TIMELINE").is_ok() {
        for (what, m) in [("started", &started), ("downloaded", &downloaded), ("installed", &installed)] {
            let mut v: Vec<u128> = m.values().map(|d| d.as_millis()).collect();
            v.sort();
            let p = |q: usize| v.get(v.len().saturating_sub(1) * q / 100).copied().unwrap_or(0);
            eprintln!("{what}: p10 {} p50 {} p90 {} p99 {} max {} ms", p(10), p(50), p(90), p(99), p(100));
        }
        eprintln!("publications {} (to one device {})", campaign.chunks_sent(), campaign.chunks_sent_direct());
    }
    (max(&started), max(&downloaded), max(&installed), copies)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Sizes of the generated models' weights: the 0.5 MB, and a bigger one to show how
/// the fixed cost of announcing amortises.
const SIZES: [usize; 2] = [500 * 1024, 4 * 1024 * 1024];

/// `DROVER_BENCH_SIZES` (comma-separated bytes), else [`SIZES`].
fn sizes() -> Vec<usize> {
    match std::env::var("DROVER_BENCH_SIZES") {
        Ok(v) => v.split(',').filter_map(|s| s.trim().parse().ok()).collect(),
        Err(_) => SIZES.to_vec(),
    }
}

/// The broker's outgoing link held to `DROVER_BENCH_LINK_MBIT` (Mbit/s) while it lives: an HTB
/// class on the loopback interface for the packets leaving the broker's port (Linux `tc`, as
/// root), so raw and push both meet a real network's bandwidth instead of the two cores.
/// Removed when dropped.
struct Link {
    mbit: Option<u64>,
}

impl Link {
    fn shape(port: u16) -> Link {
        let Some(mbit) = std::env::var("DROVER_BENCH_LINK_MBIT").ok().and_then(|v| v.parse::<u64>().ok()) else {
            return Link { mbit: None };
        };
        let tc = |args: &str| {
            let out = std::process::Command::new("tc").args(args.split_whitespace()).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => panic!("tc {args}: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => panic!("tc {args}: {e} (DROVER_BENCH_LINK_MBIT needs iproute2's tc, as root)"),
            }
        };
        let _ = std::process::Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"]).output();
        tc("qdisc add dev lo root handle 1: htb r2q 1000");
        tc(&format!(
            "class add dev lo parent 1: classid 1:10 htb rate {mbit}mbit ceil {mbit}mbit burst 256k cburst 256k"
        ));
        tc(&format!("filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport {port} 0xffff flowid 1:10"));
        Link { mbit: Some(mbit) }
    }

    fn label(&self) -> String {
        self.mbit.map_or_else(|| "loopback".to_string(), |m| format!("{m} Mbit/s"))
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if self.mbit.is_some() {
            let _ = std::process::Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"]).output();
        }
    }
}

/// Where the simulated devices keep their data dirs: `DROVER_BENCH_DATA_DIR`, else `/dev/shm`
/// (RAM) when there is one, else the temp dir. A thousand boards write to a thousand SD cards
/// in parallel; a thousand simulated devices on one host disk would measure the host disk
/// (each push writes the bundle a thousand times, then installs it a thousand times).
fn data_root() -> std::path::PathBuf {
    match std::env::var_os("DROVER_BENCH_DATA_DIR") {
        Some(d) => d.into(),
        None if Path::new("/dev/shm").is_dir() => "/dev/shm".into(),
        None => std::env::temp_dir(),
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tmp");
    release(dir.path());
    let sets: Vec<Vec<std::path::PathBuf>> =
        sizes().iter().enumerate().map(|(i, w)| bundles(dir.path(), *w, 1 + i as u64 * *ROUNDS)).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let (devices, rounds) = (*DEVICES, *ROUNDS);
    println!("Transfer benchmark: bundles in {CHUNK}-byte chunks to {devices} agents; medians of {rounds} rounds");
    println!("raw       = the broker fanning the same bytes out to {devices} plain subscribers (QoS 1, one publisher)");
    println!("announced = drover push: connect, announce, until all {devices} agents reported it");
    println!("drover    = ... then requests and hash-checked chunks on disk, until all {devices} hold the bundle");
    println!("installed = ... then digest, signatures, slot write, model load and self-test on all {devices}");
    println!("devices' data dirs under {}", data_root().display());
    println!();
    println!(
        "{:<26} {:>9} {:>8} {:>9} {:>12} {:>10} {:>12} {:>7} {:>12} {:>10}",
        "broker",
        "bytes",
        "raw ms",
        "floor ms",
        "announced ms",
        "drover ms",
        "drover MB/s*",
        "ratio",
        "installed ms",
        "copies**"
    );
    let brokers = std::env::var("DROVER_BENCH_BROKERS").unwrap_or_else(|_| "embedded,mosquitto".into());
    let kinds = [(Kind::Embedded, "embedded"), (Kind::Mosquitto, "mosquitto")];
    for kind in kinds.iter().filter(|(_, n)| brokers.split(',').any(|b| b.trim() == *n)).map(|(k, _)| *k) {
        let (port, _guard): (u16, Option<Broker>) = match kind {
            Kind::Embedded => {
                let port = free_port();
                let cfg = drover_tools::broker::BrokerConfig {
                    listen: Some(([127, 0, 0, 1], port).into()),
                    ..Default::default()
                };
                std::thread::spawn(move || drover_tools::broker::run(&cfg));
                std::thread::sleep(Duration::from_millis(300));
                (port, None)
            }
            // `DROVER_BENCH_MOSQUITTO_CONF`: configuration lines for Mosquitto (its limits).
            Kind::Mosquitto => match Broker::start(
                Kind::Mosquitto,
                Options {
                    extra: std::env::var("DROVER_BENCH_MOSQUITTO_CONF").unwrap_or_default().replace("\\n", "\n"),
                    ..Options::default()
                },
            ) {
                Some(b) => (b.port, Some(b)),
                None => continue,
            },
        };
        let link = Link::shape(port);
        let fleet_dir = tempfile::tempdir_in(data_root()).expect("tmp");
        let settings = BrokerSettings { port, ..BrokerSettings::default() };
        // As `drover simulate` runs them: a runtime per core, the agent's own transfer settings.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut fleet = Fleet::on_threads(
            fleet_dir.path(),
            "dev",
            *DEVICES,
            &["bench"],
            &dir.path().join("root.json"),
            &settings,
            threads,
            drover_runtime::agent::config::TransferSettings::default(),
        );
        fleet.start_all();
        std::thread::sleep(Duration::from_millis(1500 + 10 * devices as u64));
        let name = match kind {
            Kind::Embedded => "embedded",
            Kind::Mosquitto => "Mosquitto",
        };
        let name = format!("{name}, {}", link.label());
        for (set, first) in sets.iter().zip((1..).step_by(*ROUNDS as usize)) {
            let size = std::fs::metadata(&set[0]).expect("bundle").len() as usize;
            let (mut raw, mut start, mut down, mut inst) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let (mut sends, mut floor) = (Vec::new(), Vec::new());
            for (round, bundle) in set.iter().enumerate() {
                let bytes = Arc::new(std::fs::read(bundle).expect("bundle"));
                raw.push(rt.block_on(raw_fanout(port, size, first + round as u64)));
                floor.push(device_floor(&bytes, first + round as u64, fleet_dir.path()));
                let (s, d, i, per_chunk) = rt.block_on(push(&bytes, first + round as u64, port));
                sends.push(per_chunk);
                start.push(s);
                down.push(d);
                inst.push(i);
            }
            let (raw, start, down, inst) = (median(raw), median(start), median(down), median(inst));
            let floor = median(floor);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{:<26} {:>9} {:>8.1} {:>9.1} {:>12.1} {:>10.1} {:>12.1} {:>7.2} {:>12.1} {:>10.2}",
                name,
                size,
                ms(raw),
                ms(floor),
                ms(start),
                ms(down),
                (size * *DEVICES) as f64 / down.as_secs_f64() / 1e6,
                down.as_secs_f64() / raw.as_secs_f64(),
                ms(inst),
                sends.iter().sum::<f64>() / sends.len() as f64
            );
        }
        drop(fleet);
    }
    println!();
    println!("* MB/s delivered: bundle size x {devices} devices / drover ms. ratio = drover ms / raw ms");
    println!("floor ms: the agents' own work with no network (spool, decode, hash, write, bundle digest) on 2 threads");
    println!(
        "** chunk copies delivered per device and chunk, as the sender counts them (1.00: each device got each chunk once)"
    );
}
