//! Pushing bundles over MQTT, end to end: the real `drover` binary (push, rollback, broker),
//! real agents (in-process, each with its own data dir), and both brokers: the embedded one and
//! Debian's Mosquitto, started by the test on free ports. Every scenario runs on both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use drover_runtime::link::{BrokerSettings, codec};
use drover_tests::broker::{Broker, Kind, Options, Pki, free_port};
use drover_tests::cli::{ok, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::observer::Observer;
use drover_tests::onnx_gen::{write_matmul_model, write_samples};
use drover_tests::tools::workspace_bin;
use drover_wire::message::{Announce, Chunk, Status, Want};

/// A fleet's keys and a bundle of a generated model of about `weight_bytes`.
struct Release {
    dir: tempfile::TempDir,
}

impl Release {
    fn new() -> Release {
        let dir = trust_setup();
        let d = dir.path();
        ok("drover", d, &["keygen", "--role", "operator", "--out", "keys"]);
        let root = ["--root", "root.json", "--root-key", "keys/root.key"];
        ok(
            "drover",
            d,
            &[&["delegate"][..], &root, &["--release", "keys/release.pub", "--models", "big", "--out", "big.json"]]
                .concat(),
        );
        ok(
            "drover",
            d,
            &[&["delegate"][..], &root, &["--operator", "keys/operator.pub", "--models", "lab", "--out", "op.json"]]
                .concat(),
        );
        write_samples(&d.join("samples.jsonl"), 4);
        Release { dir }
    }

    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    /// `big-vVERSION.drv`: a generated model of about `weight_bytes`.
    fn bundle(&self, weight_bytes: usize, version: u64) -> PathBuf {
        let model = self.path(&format!("big-{version}.onnx"));
        write_matmul_model(&model, weight_bytes + version as usize * 4 * 64);
        let out = format!("big-v{version}.drv");
        let m = model.to_string_lossy().into_owned();
        ok(
            "drover",
            self.dir.path(),
            &["bundle", &m, "--name", "big", "--version", &version.to_string(), "--selftest", "samples.jsonl"]
                .into_iter()
                .chain(["--key", "keys/release.key", "--delegation", "big.json", "--out", &out])
                .collect::<Vec<_>>(),
        );
        self.path(&out)
    }
}

fn settings(broker: &Broker) -> BrokerSettings {
    BrokerSettings { port: broker.port, ..BrokerSettings::default() }
}

fn drover(dir: &Path, args: &[&str]) -> Child {
    Command::new(workspace_bin("drover"))
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drover")
}

/// Waits for `drover`: (success, stdout and stderr together, the result table on stdout).
fn finish(child: Child) -> (bool, String) {
    let Output { status, stdout, stderr } = child.wait_with_output().expect("drover");
    (status.success(), format!("{}\n{}", String::from_utf8_lossy(&stdout), String::from_utf8_lossy(&stderr)))
}

/// The rows of the result table (`drover push` and `drover rollback` print it on stdout,
/// progress on stderr): lines ending in a time or `-`.
/// The rows of `drover push`'s final table: a device, its result, and its time (`9.5s`, or `-`);
/// the progress lines before it (`dev-03  downloading 5/77`, `… reconnected mid-transfer, …`)
/// end otherwise.
fn table_rows<'a>(out: &'a str, device_prefix: &str) -> Vec<&'a str> {
    let is_time = |t: &str| t == "-" || t.strip_suffix('s').is_some_and(|n| n.parse::<f64>().is_ok());
    out.lines().filter(|l| l.starts_with(device_prefix) && l.split_whitespace().last().is_some_and(is_time)).collect()
}

fn push(rel: &Release, bundle: &Path, broker: &Broker, extra: &[&str]) -> Child {
    let b = bundle.to_string_lossy().into_owned();
    let addr = broker.address();
    let mut args = vec!["push", b.as_str(), "--broker", addr.as_str(), "--timeout", "120s"];
    args.extend_from_slice(extra);
    drover(rel.dir.path(), &args)
}

/// Waits until every agent of `fleet` has reported itself online.
fn wait_online(obs: &Observer, fleet: &Fleet) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = obs.messages();
        let online = fleet
            .members
            .iter()
            .filter(|m| {
                let topic = format!("drover/v1/dev/{}/status", m.cfg.device);
                seen.iter()
                    .rev()
                    .find(|(t, _)| *t == topic)
                    .is_some_and(|(_, p)| codec::decode::<Status>(p).is_ok_and(|s| s.online))
            })
            .count();
        if online == fleet.members.len() {
            return;
        }
        assert!(Instant::now() < deadline, "only {online}/{} agents came online", fleet.members.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn journal_records(fleet: &Fleet, i: usize) -> u64 {
    std::fs::metadata(fleet.data_dir(i).join("transfer/chunks.log")).map(|m| m.len() / 36).unwrap_or(0)
}

fn serves(version: u64) -> impl Fn(&Fleet, usize) -> bool {
    move |f, i| f.serving(i) == Some(("big".into(), version))
}

/// 20 devices of a group, one of them offline during the push; the broker is killed in the
/// middle of the transfer and restarted; all 20 install the bundle and `drover push` says so.
fn push_to_twenty_through_a_broker_restart(kind: Kind) {
    let Some(mut broker) = Broker::start(kind, Options::default()) else { return };
    let rel = Release::new();
    let bundle = rel.bundle(512 * 1024, 2);
    assert!(std::fs::metadata(&bundle).expect("bundle").len() > 500_000);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "dev", 20, &["lab"], &rel.path("root.json"), &settings(&broker));
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/status");
    fleet.start_all();
    wait_online(&obs, &fleet);
    fleet.stop(19);

    let child = push(&rel, &bundle, &broker, &["--group", "lab", "--chunk-size", "8192", "--max-rate", "250000"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_records(&fleet, 0) == 0 {
        assert!(Instant::now() < deadline, "no chunk reached dev-00");
        std::thread::sleep(Duration::from_millis(10));
    }
    let partial: Vec<u64> = (0..19).map(|i| journal_records(&fleet, i)).collect();
    assert!((0..19).all(|i| fleet.serving(i).is_none()), "killed in the middle: nobody installed yet");
    broker.kill();
    std::thread::sleep(Duration::from_secs(1));
    broker.restart();
    for i in 0..19 {
        fleet.wait_for(i, Duration::from_secs(90), "v2 after the broker restart", serves(2));
    }
    fleet.start(19);
    fleet.wait_for(19, Duration::from_secs(60), "v2 after coming back", serves(2));
    let (success, out) = finish(child);
    assert!(success, "drover push failed:\n{out}");
    let rows = table_rows(&out, "dev-");
    assert_eq!(rows.len(), 20, "{out}");
    assert!(rows.iter().all(|r| r.contains("installed (slot a)")), "{out}");
    assert!(out.contains("20/20 device(s) succeeded"), "{out}");
    // dev-19 came back alone once the others had the bundle: its 64 chunks went to it alone,
    // not to the 19 others again; the requests after the restart shared publications.
    let (sent, direct) = chunk_messages(&out);
    assert!(direct >= 64, "{out}");
    assert!(sent < 8 * 64, "{sent} chunk messages for 64 chunks and 20 devices:\n{out}");
    eprintln!("{kind:?}: journal records at the kill: {partial:?}; {sent} chunk messages, {direct} to one device");
}

/// From `drover push`'s summary: chunk messages sent, and how many of them to a single device.
fn chunk_messages(out: &str) -> (u64, u64) {
    let line = out.lines().find(|l| l.contains("chunk messages sent")).expect("the push's summary line");
    let numbers: Vec<u64> =
        line.split(|c: char| !c.is_ascii_digit()).filter_map(|w| w.parse().ok()).collect::<Vec<_>>();
    // "{done}/{n} device(s) succeeded in {s}.{t}s ({sent} chunk messages sent, {direct} of them …"
    (numbers[4], numbers[5])
}

#[test]
fn embedded_broker_push_to_twenty_through_a_broker_restart() {
    push_to_twenty_through_a_broker_restart(Kind::Embedded);
}

#[test]
fn mosquitto_push_to_twenty_through_a_broker_restart() {
    push_to_twenty_through_a_broker_restart(Kind::Mosquitto);
}

/// A chunk corrupted on the way is refused by every device and fetched again, alone; then a
/// signed rollback over MQTT takes the group back to the previous version.
fn corrupted_chunk_then_rollback(kind: Kind) {
    let Some(broker) = Broker::start(kind, Options::default()) else { return };
    let rel = Release::new();
    let v1 = rel.bundle(64 * 1024, 1);
    let v2 = rel.bundle(512 * 1024, 2);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 3, &["lab"], &rel.path("root.json"), &settings(&broker));
    let obs = Observer::connect(broker.port, "drover/v1/#");
    fleet.start_all();
    wait_online(&obs, &fleet);
    let (success, out) = finish(push(&rel, &v1, &broker, &["--group", "lab"]));
    assert!(success, "{out}");

    let child = push(&rel, &v2, &broker, &["--group", "lab", "--chunk-size", "8192", "--max-rate", "250000"]);
    // Wait for the announcement and every device's first request, then inject a bad last chunk.
    let deadline = Instant::now() + Duration::from_secs(30);
    let announce = loop {
        let found =
            obs.messages().into_iter().rev().find_map(|(t, p)| {
                (t == "drover/v1/grp/lab/bundle").then(|| codec::decode::<Announce>(&p).ok()).flatten()
            });
        if let Some(a) = found.filter(|a| a.version == 2) {
            break a;
        }
        assert!(Instant::now() < deadline, "no announcement");
        std::thread::sleep(Duration::from_millis(10));
    };
    let wants = |from: usize| -> Vec<(String, Want)> {
        obs.messages()[from..]
            .iter()
            .filter(|(t, _)| t.ends_with("/want"))
            .filter_map(|(t, p)| codec::decode::<Want>(p).ok().map(|w| (t.clone(), w)))
            .filter(|(_, w)| w.transfer == announce.transfer)
            .collect()
    };
    while wants(0).len() < 3 {
        assert!(Instant::now() < deadline, "devices did not ask for the chunks");
        std::thread::sleep(Duration::from_millis(10));
    }
    let last = (announce.chunk_count() - 1) as u32;
    let junk = vec![0x5a; announce.chunk_len(last) as usize];
    let bad = Chunk { transfer: announce.transfer, index: last, sha256: announce.transfer, data: &junk };
    let mark = obs.messages().len();
    obs.publish(&drover_wire::topic::chunks(&announce.transfer), codec::encode(Default::default(), &bad), false);

    let (success, out) = finish(child);
    assert!(success, "{out}");
    for i in 0..3 {
        assert_eq!(fleet.serving(i), Some(("big".into(), 2)));
    }
    let refetch = wants(mark);
    for m in &fleet.members {
        let topic = format!("drover/v1/dev/{}/want", m.cfg.device);
        assert!(
            refetch.iter().any(|(t, w)| *t == topic
                && w.ranges.len() == 1
                && w.ranges[0].start == last
                && w.ranges[0].end == last + 1),
            "{} did not ask for chunk {last} alone: {refetch:?}",
            m.cfg.device
        );
    }

    let addr = broker.address();
    let rollback =
        ["rollback", "--group", "lab", "--key", "keys/operator.key", "--delegation", "op.json", "--broker", &addr];
    let (success, out) = finish(drover(rel.dir.path(), &rollback));
    assert!(success, "{out}");
    let rows = table_rows(&out, "pi-");
    assert_eq!(rows.len(), 3, "{out}");
    assert!(rows.iter().all(|r| r.contains("rolled back (slot a)")), "{out}");
    for i in 0..3 {
        assert_eq!(fleet.serving(i), Some(("big".into(), 1)));
    }
    // The same group may not be commanded by a key delegated for another one.
    let other =
        ["rollback", "--device", "pi-00", "--key", "keys/operator.key", "--delegation", "op.json", "--broker", &addr];
    let (success, out) = finish(drover(rel.dir.path(), &[&other[..], &["--timeout", "10s"]].concat()));
    assert!(!success);
    assert!(out.contains("may not command 'pi-00'"), "{out}");
    assert_eq!(fleet.serving(0), Some(("big".into(), 1)), "a refused command changes nothing");
}

#[test]
fn embedded_broker_corrupted_chunk_then_rollback() {
    corrupted_chunk_then_rollback(Kind::Embedded);
}

#[test]
fn mosquitto_corrupted_chunk_then_rollback() {
    corrupted_chunk_then_rollback(Kind::Mosquitto);
}

/// An agent killed in the middle of a transfer resumes from the chunks on its disk and asks
/// only for the rest.
fn agent_restart_resumes(kind: Kind) {
    let Some(broker) = Broker::start(kind, Options::default()) else { return };
    let rel = Release::new();
    let bundle = rel.bundle(512 * 1024, 1);
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 1, &["lab"], &rel.path("root.json"), &settings(&broker));
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/want");
    fleet.start_all();
    std::thread::sleep(Duration::from_millis(500));
    let child = push(&rel, &bundle, &broker, &["--device", "pi-00", "--chunk-size", "8192", "--max-rate", "150000"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_records(&fleet, 0) < 32 {
        assert!(Instant::now() < deadline, "the transfer did not progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    fleet.kill(0);
    let kept = journal_records(&fleet, 0);
    let mark = obs.messages().len();
    fleet.start(0);
    let (success, out) = finish(child);
    assert!(success, "{out}");
    assert_eq!(fleet.serving(0), Some(("big".into(), 1)));
    let first_after = obs.messages()[mark..]
        .iter()
        .find_map(|(_, p)| codec::decode::<Want>(p).ok())
        .expect("a request after the restart");
    assert!(first_after.ranges[0].start > 0, "resumed with {kept} chunks on disk, asked for {first_after:?}");
    // The log (no terminal here) says so: a count that merely stops moving would not. The killed
    // agent's connection may end with its Last Will (offline) or be handed to the new one
    // without it (reconnected).
    assert!(out.contains("offline mid-transfer") || out.contains("reconnected mid-transfer"), "{out}");
    let resumed = format!("resumed at chunk {}/", first_after.ranges[0].start + 1);
    assert!(out.contains(&resumed), "{resumed}: {out}");
}

#[test]
fn embedded_broker_agent_restart_resumes() {
    agent_restart_resumes(Kind::Embedded);
}

#[test]
fn mosquitto_agent_restart_resumes() {
    agent_restart_resumes(Kind::Mosquitto);
}

/// A 20 MB model through Mosquitto at its default settings.
#[test]
fn twenty_megabytes_through_mosquitto_defaults() {
    let _ = env_logger::builder().is_test(true).try_init();
    let Some(broker) = Broker::start(Kind::Mosquitto, Options::default()) else { return };
    let rel = Release::new();
    let bundle = rel.bundle(20 * 1024 * 1024, 1);
    let size = std::fs::metadata(&bundle).expect("bundle").len();
    assert!(size > 20_000_000, "{size}");
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 2, &["lab"], &rel.path("root.json"), &settings(&broker));
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/status");
    fleet.start_all();
    wait_online(&obs, &fleet);
    let t = Instant::now();
    let (success, out) = finish(push(&rel, &bundle, &broker, &["--group", "lab"]));
    assert!(success, "{out}");
    eprintln!("{size} bytes to 2 devices through Mosquitto in {:.1} s", t.elapsed().as_secs_f64());
    for i in 0..2 {
        assert_eq!(fleet.serving(i), Some(("big".into(), 1)));
    }
}

/// TLS (server-authenticated, and with client certificates on Mosquitto) and passwords; a wrong
/// password is a clear failure.
fn tls_and_passwords(kind: Kind) {
    let pki_dir = tempfile::tempdir().expect("tmp");
    let pki = Pki::make(&pki_dir.path().join("pki"));
    let tls_port = free_port();
    let opts = Options {
        users: vec![("pi-00".into(), "s3cret".into()), ("operator".into(), "op-pass".into())],
        tls: Some((pki.clone(), tls_port)),
        require_client_cert: kind == Kind::Mosquitto,
        ..Options::default()
    };
    let Some(broker) = Broker::start(kind, opts) else { return };
    let rel = Release::new();
    let bundle = rel.bundle(64 * 1024, 1);
    std::fs::write(rel.path("agent.pass"), "s3cret\n").expect("pass");
    std::fs::write(rel.path("op.pass"), "op-pass\n").expect("pass");
    std::fs::write(rel.path("wrong.pass"), "nope\n").expect("pass");
    let client_cert = (kind == Kind::Mosquitto).then(|| (pki.client_cert.clone(), pki.client_key.clone()));
    let agent_broker = BrokerSettings {
        port: tls_port,
        username: Some("pi-00".into()),
        password_file: Some(rel.path("agent.pass")),
        ca: Some(pki.ca.clone()),
        client_cert: client_cert.as_ref().map(|c| c.0.clone()),
        client_key: client_cert.as_ref().map(|c| c.1.clone()),
        ..BrokerSettings::default()
    };
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 1, &["lab"], &rel.path("root.json"), &agent_broker);
    fleet.start_all();
    let b = bundle.to_string_lossy().into_owned();
    let addr = format!("127.0.0.1:{tls_port}");
    let ca = pki.ca.to_string_lossy().into_owned();
    let (cc, ck) = (pki.client_cert.to_string_lossy().into_owned(), pki.client_key.to_string_lossy().into_owned());
    let mut args = vec!["push", &b, "--device", "pi-00", "--broker", &addr, "--ca", &ca, "--username", "operator"];
    if kind == Kind::Mosquitto {
        args.extend_from_slice(&["--client-cert", &cc, "--client-key", &ck]);
    }
    let (success, out) =
        finish(drover(rel.dir.path(), &[&args[..], &["--password-file", "op.pass", "--timeout", "60s"]].concat()));
    assert!(success, "{out}\n{}", broker.log());
    assert_eq!(fleet.serving(0), Some(("big".into(), 1)));
    let (success, out) =
        finish(drover(rel.dir.path(), &[&args[..], &["--password-file", "wrong.pass", "--timeout", "5s"]].concat()));
    assert!(!success);
    assert!(out.contains("could not reach the broker"), "{out}");
}

#[test]
fn embedded_broker_tls_and_passwords() {
    tls_and_passwords(Kind::Embedded);
}

#[test]
fn mosquitto_tls_client_certificates_and_passwords() {
    tls_and_passwords(Kind::Mosquitto);
}

/// The other side of TLS: a broker whose certificate comes from another CA, or names another
/// host, is refused (a man in the middle on the device's network gets nothing), and the
/// operator is told why.
#[test]
fn embedded_broker_tls_refuses_a_broker_it_cannot_authenticate() {
    let dir = tempfile::tempdir().expect("tmp");
    let rel = Release::new();
    let bundle = rel.bundle(4 * 1024, 1).to_string_lossy().into_owned();
    let genuine = Pki::make(&dir.path().join("genuine"));
    let stranger = Pki::make(&dir.path().join("stranger"));
    let misnamed = Pki::make_for(&dir.path().join("misnamed"), &["broker.example"], false);
    for (served, trusted, why) in [
        (&stranger, &genuine, "a certificate from another CA"),
        (&misnamed, &misnamed, "a certificate for another name"),
    ] {
        let tls_port = free_port();
        let opts = Options { tls: Some((served.clone(), tls_port)), ..Options::default() };
        let Some(broker) = Broker::start(Kind::Embedded, opts) else { return };
        let addr = format!("127.0.0.1:{tls_port}");
        let ca = trusted.ca.to_string_lossy().into_owned();
        let args = ["push", &bundle, "--device", "pi-00", "--broker", &addr, "--ca", &ca, "--timeout", "4s"];
        let (success, out) = finish(drover(rel.dir.path(), &args));
        assert!(!success, "{why}: {out}");
        assert!(out.contains("could not reach the broker") && out.contains("certificate"), "{why}: {out}");
        // A device configured the same way never comes online.
        let settings = BrokerSettings { port: tls_port, ca: Some(trusted.ca.clone()), ..BrokerSettings::default() };
        let fleet_dir = tempfile::tempdir().expect("tmp");
        let mut fleet = Fleet::new(fleet_dir.path(), "pi", 1, &["lab"], &rel.path("root.json"), &settings);
        let obs = Observer::connect(broker.port, "drover/v1/dev/+/status");
        fleet.start_all();
        std::thread::sleep(Duration::from_secs(3));
        assert!(obs.messages().is_empty(), "{why}: the device published nothing");
    }
}

/// The `drover-agent run` binary as a board runs it: config file, presence, a push, a clean
/// stop on SIGTERM that leaves "offline" retained; a bad config is refused with its reason.
#[test]
fn agent_binary_runs_as_a_service() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = Release::new();
    let bundle = rel.bundle(64 * 1024, 1);
    let d = rel.dir.path();
    ok("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", "board"]);
    let config = format!(
        "device = \"board-1\"\ngroups = [\"lab\"]\ndata_dir = \"{}\"\npayload = \"json\"\n[broker]\nport = {}\n[api]\nlisten = \"off\"\n",
        d.join("board").display(),
        broker.port
    );
    std::fs::write(d.join("agent.toml"), config).expect("config");
    let obs = Observer::connect(broker.port, "drover/v1/dev/board-1/status");
    let mut agent = Command::new(workspace_bin("drover-agent"))
        .current_dir(d)
        .args(["run", "--config", "agent.toml"])
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !obs.messages().iter().any(|(_, p)| codec::decode::<Status>(p).is_ok_and(|s| s.online)) {
        assert!(Instant::now() < deadline, "the agent never came online");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (success, out) = finish(push(&rel, &bundle, &broker, &["--device", "board-1"]));
    assert!(success, "{out}");
    let status = ok("drover-agent", d, &["status", "--data-dir", "board", "--json"]);
    assert!(status.contains("\"version\": 1"), "{status}");

    let term = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let exit = agent.wait().expect("agent exit");
    assert!(exit.success(), "SIGTERM is a clean stop: {exit:?}");
    // With no RUST_LOG (as under its systemd unit) the service's journal tells its story.
    let mut journal = String::new();
    std::io::Read::read_to_string(&mut agent.stderr.take().expect("stderr"), &mut journal).expect("stderr");
    for said in ["drover-agent", "starting: device board-1", "connected to", "installed", "v1", "stopped"] {
        assert!(journal.contains(said), "the log does not say '{said}':\n{journal}");
    }
    // The install loads and self-tests the model; serving takes that model, not a second load.
    assert_eq!(journal.matches("model ready in").count(), 1, "one load per install:\n{journal}");
    // The agent published it before exiting; the broker may still be routing it to us.
    let offline = |m: &Option<(String, Vec<u8>)>| {
        m.as_ref().is_some_and(|(_, p)| codec::decode::<Status>(p).is_ok_and(|s| !s.online))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !offline(&obs.messages().last().cloned()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let last = obs.messages().last().cloned().expect("a status");
    let s: Status = codec::decode(&last.1).expect("status");
    assert!(!s.online, "the last word is offline");
    assert_eq!(s.model.expect("model").version, 1);
    assert!(last.1.starts_with(b"{"), "payload = \"json\" publishes JSON");

    std::fs::write(d.join("bad.toml"), "device = \"board/1\"\ndata_dir = \"x\"\n").expect("bad config");
    let out = drover_tests::cli::fails("drover-agent", d, &["run", "--config", "bad.toml"]);
    assert!(out.contains("device 'board/1'"), "{out}");
}

/// A command sent while a device is offline reaches it when it comes back (persistent session).
fn command_reaches_an_offline_device(kind: Kind) {
    let Some(broker) = Broker::start(kind, Options::default()) else { return };
    let rel = Release::new();
    let fleet_dir = tempfile::tempdir().expect("tmp");
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 1, &["lab"], &rel.path("root.json"), &settings(&broker));
    fleet.start_all();
    for v in [1, 2] {
        let (success, out) = finish(push(&rel, &rel.bundle(64 * 1024, v), &broker, &["--group", "lab"]));
        assert!(success, "{out}");
    }
    fleet.stop(0);
    let addr = broker.address();
    let args =
        ["rollback", "--group", "lab", "--key", "keys/operator.key", "--delegation", "op.json", "--broker", &addr];
    let child = drover(rel.dir.path(), &[&args[..], &["--timeout", "60s"]].concat());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(fleet.serving(0), Some(("big".into(), 2)));
    fleet.start(0);
    let (success, out) = finish(child);
    assert!(success, "{out}");
    assert_eq!(fleet.serving(0), Some(("big".into(), 1)));
}

#[test]
fn embedded_broker_command_reaches_an_offline_device() {
    command_reaches_an_offline_device(Kind::Embedded);
}

#[test]
fn mosquitto_command_reaches_an_offline_device() {
    command_reaches_an_offline_device(Kind::Mosquitto);
}

/// How a start of `drover-agent run` ended.
#[derive(Debug)]
enum Start {
    /// It came online, serving this version (`None`: no model).
    Online(Option<u64>),
    /// It stopped with this message.
    Stopped(String),
}

/// Starts the agent binary as `device` on `data` (under `dir`); what it does within 20 s. An
/// agent that came online runs for `linger` more, then is stopped with SIGTERM and must exit
/// cleanly.
fn start_once(dir: &Path, device: &str, data: &str, broker: &Broker, linger: Duration) -> Start {
    let config = format!(
        "device = \"{device}\"\ngroups = [\"lab\"]\ndata_dir = \"{}\"\n[broker]\nport = {}\n[api]\nlisten = \"off\"\n\
         [telemetry]\nperiod_s = 1\n",
        dir.join(data).display(),
        broker.port
    );
    let cfg = dir.join(format!("{device}.toml"));
    std::fs::write(&cfg, config).expect("config");
    let log = dir.join(format!("{device}.log"));
    let obs = Observer::connect(broker.port, &format!("drover/v1/dev/{device}/status"));
    let mut agent = Command::new(workspace_bin("drover-agent"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn the agent");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = agent.try_wait().expect("wait") {
            assert!(!status.success(), "{device}: exited 0 without being asked to");
            return Start::Stopped(std::fs::read_to_string(&log).unwrap_or_default());
        }
        let online = obs.messages().iter().find_map(|(_, p)| codec::decode::<Status>(p).ok().filter(|s| s.online));
        if let Some(s) = online {
            std::thread::sleep(linger);
            let term = Command::new("kill").args(["-TERM", &agent.id().to_string()]).status().expect("kill");
            assert!(term.success());
            let exit = agent.wait().expect("agent exit");
            assert!(exit.success(), "{device}: SIGTERM is a clean stop: {exit:?}");
            return Start::Online(s.model.map(|m| m.version));
        }
        assert!(Instant::now() < deadline, "{device}: neither online nor stopped within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir").flatten() {
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).expect("copy");
        }
    }
}

/// Every file of `dir` (recursively) whose path contains `part`.
fn files_named(dir: &Path, part: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(files_named(&p, part));
        } else if p.to_string_lossy().contains(part) {
            found.push(p);
        }
    }
    found
}

/// Damaged files in the data dir at start-up (a bad SD card, a power cut, a careless hand): for
/// each one the real agent either recovers and serves the verified model, or stops with a
/// message that names the file; it never serves a model it cannot verify.
#[test]
fn damaged_data_dir_files_at_start_up_are_recovered_or_named_never_served() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = Release::new();
    let d = rel.dir.path();
    let bundle = rel.bundle(16 * 1024, 1).to_string_lossy().into_owned();
    ok("drover-agent", d, &["trust", "--root", "root.json", "--data-dir", "pristine"]);
    ok("drover-agent", d, &["install", &bundle, "--data-dir", "pristine"]);
    // A first run leaves the rest of a working data dir (the outbox, the ledger).
    let first = start_once(d, "first", "pristine", &broker, Duration::from_millis(2_500));
    assert!(matches!(first, Start::Online(Some(1))), "{first:?}");
    let pristine = d.join("pristine");
    assert!(!files_named(&pristine, "outbox").is_empty(), "the first run made an outbox");

    let garble = |p: &Path| std::fs::write(p, b"\x00\xffnot what was written\n").expect("garble");
    let flip = |p: &Path| {
        let mut b = std::fs::read(p).expect("read");
        let mid = b.len() / 2;
        b[mid] ^= 0x5a;
        std::fs::write(p, b).expect("write");
    };
    type Damage<'a> = Box<dyn Fn(&Path) + 'a>;
    let cases: Vec<(&str, Damage<'_>, Result<u64, &str>)> = vec![
        ("state.json garbled", Box::new(|dd: &Path| garble(&dd.join("state.json"))), Err("state.json is corrupted")),
        ("trust.json garbled", Box::new(|dd: &Path| garble(&dd.join("trust.json"))), Err("trust.json")),
        // Serving goes on from the verified slot; installs wait for `drover-agent trust`.
        ("trust.json deleted", Box::new(|dd: &Path| std::fs::remove_file(dd.join("trust.json")).expect("rm")), Ok(1)),
        (
            "the active model file changed",
            Box::new(|dd: &Path| {
                for p in files_named(&dd.join("slots"), ".onnx") {
                    flip(&p);
                }
            }),
            Err(""),
        ),
        (
            "an outbox segment with a garbled tail",
            Box::new(|dd: &Path| {
                for p in files_named(&dd.join("outbox"), ".seg") {
                    let mut f = std::fs::OpenOptions::new().append(true).open(p).expect("open");
                    std::io::Write::write_all(&mut f, b"\x13\x00\x00\x00torn").expect("append");
                }
            }),
            Ok(1),
        ),
        ("the outbox cursor garbled", Box::new(|dd: &Path| garble(&dd.join("outbox/cursor.json"))), Ok(1)),
        ("the push ledger garbled", Box::new(|dd: &Path| garble(&dd.join("link.json"))), Ok(1)),
        (
            "a half-written transfer",
            Box::new(|dd: &Path| {
                std::fs::create_dir_all(dd.join("transfer")).expect("mkdir");
                garble(&dd.join("transfer/announce.json"));
                garble(&dd.join("transfer/00000.chunk"));
            }),
            Ok(1),
        ),
        (
            "an interrupted install's staging",
            Box::new(|dd: &Path| {
                std::fs::create_dir_all(dd.join("staging")).expect("mkdir");
                garble(&dd.join("staging/manifest.json"));
            }),
            Ok(1),
        ),
        ("the experiment garbled", Box::new(|dd: &Path| garble(&dd.join("experiment.json"))), Ok(1)),
    ];
    for (i, (what, damage, expected)) in cases.into_iter().enumerate() {
        let data = format!("case-{i}");
        copy_tree(&pristine, &d.join(&data));
        damage(&d.join(&data));
        let outcome = start_once(d, &format!("case-{i}"), &data, &broker, Duration::ZERO);
        match (expected, &outcome) {
            (Ok(v), Start::Online(Some(served))) => assert_eq!(*served, v, "{what}"),
            (Err(message), Start::Stopped(log)) => assert!(log.contains(message), "{what}: {log}"),
            // Refusing the damaged model but staying online to take a new one is fine too.
            (Err(""), Start::Online(served)) => assert_ne!(*served, Some(1), "{what}: a damaged model is never served"),
            _ => panic!("{what}: expected {expected:?}, got {outcome:?}"),
        }
    }
}
