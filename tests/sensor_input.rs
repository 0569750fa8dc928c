//! Sensor input end to end on a pseudo-terminal: a host thread plays the microcontroller with
//! drover-shim's own code (windows, the example firmware's feature layout, frames) and writes
//! its frames, one of them corrupted and one sequence number skipped, to the pty's master; a real
//! agent (in process) reads the slave as its `[[input]]` serial port, infers every window with
//! the committed sensor model pushed to it as a signed bundle, and its telemetry and drift
//! windows arrive over MQTT with the windows, the predicted classes and the link's losses.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drover_runtime::input::InputSettings;
use drover_runtime::link::{BrokerSettings, codec};
use drover_shim::wire::frame::{Body, FeatureWindow};
use drover_shim::{FeatureLayout, FeatureSet, FrameWriter, MultiWindow};
use drover_tests::broker::{Broker, Kind, Options};
use drover_tests::cli::{delegate, ok, trust_setup};
use drover_tests::fleet::Fleet;
use drover_tests::manifest::models_dir;
use drover_tests::observer::Observer;
use drover_wire::telemetry::{DriftWindow, InputReport, Telemetry};
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};

/// The example firmware's window and rate (firmware-shim/example-firmware/src/app.rs).
const WINDOW: usize = 128;
const RATE_HZ: f32 = 100.0;
/// Windows the "microcontroller" completes; one is corrupted on the wire.
const WINDOWS: u32 = 30;
const CORRUPTED: u32 = 10;
/// Before this window the sender skips a sequence number (a frame lost to a UART overrun).
const SKIP_BEFORE: u32 = 20;
/// The sensor model's class for vibration (models/make_models.py: idle, walking, vibration).
const VIBRATION: usize = 2;

/// SplitMix64 with Box–Muller normals: the same windows on every run.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }
    fn normal(&mut self, sd: f32) -> f32 {
        let (u1, u2) = (self.uniform(1e-7, 1.0), self.uniform(0.0, 1.0));
        sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}

/// One second and a bit of an MPU-6050 on a running motor, as make_models.py's class 2 recipe:
/// gravity on z, a 15–30 Hz vibration on every axis, sensor noise; pushed sample by sample
/// through the shim's window like the firmware's sampler does.
fn vibration_window(rng: &mut Rng) -> [[f32; WINDOW]; 3] {
    let f = rng.uniform(15.0, 30.0);
    let amp = [rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4)];
    let phase = [
        rng.uniform(0.0, std::f32::consts::TAU),
        rng.uniform(0.0, std::f32::consts::TAU),
        rng.uniform(0.0, std::f32::consts::TAU),
    ];
    let mut window: MultiWindow<3, WINDOW> = MultiWindow::new();
    for i in 0..WINDOW {
        let t = i as f32 / RATE_HZ;
        let sample: [f32; 3] = std::array::from_fn(|a| {
            let gravity = if a == 2 { 1.0 } else { 0.0 };
            gravity + amp[a] * (2.0 * std::f32::consts::PI * f * t + phase[a]).sin() + rng.normal(0.01)
        });
        if let Some(full) = window.push(sample) {
            return *full;
        }
    }
    unreachable!("a window completes every {WINDOW} samples")
}

/// Everything the microcontroller sends: a `Hello`, then the windows' frames, with window
/// `CORRUPTED` damaged in transit and a sequence number skipped before `SKIP_BEFORE`.
fn microcontroller_bytes() -> Vec<u8> {
    let layout = FeatureLayout::new(["ax", "ay", "az"], FeatureSet { bands: 4, ..FeatureSet::TIME }).expect("layout");
    assert_eq!(layout.len(), 24, "the sensor model's input width");
    let mut writer = FrameWriter::new();
    let mut rng = Rng(42);
    let mut bytes = vec![0u8]; // the boot delimiter, as the firmware sends
    bytes.extend(writer.encode(Body::Hello(layout.hello(WINDOW as u16, 10_000))).expect("hello"));
    let mut values = heapless::Vec::new();
    for index in 0..WINDOWS {
        layout.extract(&vibration_window(&mut rng), &mut values).expect("features");
        if index == SKIP_BEFORE {
            writer.skip();
        }
        let mut frame =
            writer.encode(Body::Window(FeatureWindow { index, values: values.clone() })).expect("frame").to_vec();
        if index == CORRUPTED {
            let i = frame.len() / 2;
            frame[i] ^= if frame[i] ^ 0x10 == 0 { 0x20 } else { 0x10 };
        }
        bytes.extend(frame);
    }
    bytes
}

/// A pseudo-terminal: the master (the test's end of the "cable") and the slave's path, opened
/// raw once by the test so nothing written before the agent opens it is line-edited.
fn pty() -> (OwnedFd, OwnedFd, PathBuf) {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let path = PathBuf::from(ptsname(&master, Vec::new()).expect("ptsname").to_string_lossy().into_owned());
    let slave = drover_runtime::input::serial::open(&path, 115_200).expect("raw slave");
    (master, slave, path)
}

fn sensor_bundle(d: &Path) -> String {
    let models = models_dir();
    let m = |p: &str| models.join(p).to_string_lossy().into_owned();
    let names = std::fs::read_to_string(models.join("data/sensor.features.txt")).expect("feature names");
    delegate(d, "--release", "keys/release.pub", "sensor", "sensor.delegation.json");
    ok(
        "drover",
        d,
        &[
            "bundle",
            &m("sensor_logreg.onnx"),
            "--name",
            "sensor",
            "--version",
            "1",
            "--selftest",
            &m("reference/sensor_logreg.input.jsonl"),
            "--reference",
            &m("data/sensor.train.jsonl"),
            "--feature-names",
            names.trim(),
            "--key",
            "keys/release.key",
            "--delegation",
            "sensor.delegation.json",
            "--out",
            "sensor-v1.drv",
        ],
    );
    d.join("sensor-v1.drv").to_string_lossy().into_owned()
}

/// Every report of `device` on `leaf`, first arrival of each sequence number only.
fn reports<T: serde::de::DeserializeOwned>(
    obs: &Observer,
    device: &str,
    leaf: &str,
    seq: impl Fn(&T) -> u64,
) -> Vec<T> {
    let topic = format!("drover/v1/dev/{device}/{leaf}");
    let mut seen = std::collections::HashSet::new();
    obs.messages()
        .into_iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, p)| codec::decode::<T>(&p).expect("decodes"))
        .filter(|r| seen.insert(seq(r)))
        .collect()
}

/// The input's counters summed over every period reported so far.
fn summed(telemetry: &[Telemetry]) -> InputReport {
    let mut sum = InputReport::new("mcu");
    for t in telemetry {
        let Some(r) = t.inputs.iter().find(|r| r.name.as_str() == "mcu") else { continue };
        sum.link.merge(&r.link);
        sum.windows += r.windows;
        sum.inferred += r.inferred;
        sum.mismatched += r.mismatched;
        sum.refused += r.refused;
        for (c, n) in r.classes.iter().enumerate() {
            for _ in 0..*n {
                sum.count_class(c as i64);
            }
        }
        sum.connected = r.connected;
        sum.device = sum.device.or(r.device);
    }
    sum
}

#[test]
fn frames_on_a_pty_are_inferred_and_reach_mqtt_with_the_links_losses() {
    let Some(broker) = Broker::start(Kind::Embedded, Options::default()) else { return };
    let rel = trust_setup();
    let d = rel.path();
    let bundle = sensor_bundle(d);
    let (master, _slave, path) = pty();

    let fleet_dir = tempfile::tempdir().expect("tmp");
    let settings = BrokerSettings { port: broker.port, ..BrokerSettings::default() };
    let mut fleet = Fleet::new(fleet_dir.path(), "pi", 1, &["lab"], &d.join("root.json"), &settings);
    let cfg = &mut fleet.members[0].cfg;
    cfg.input = vec![InputSettings::Serial { name: Some("mcu".into()), path: path.clone(), baud: 115_200 }];
    cfg.telemetry.period_s = Some(1);
    cfg.drift.window_samples = 20;
    cfg.drift.min_samples = 10;
    cfg.drift.budget_pct = 0.0; // every window observed
    fleet.start(0);
    let obs = Observer::connect(broker.port, "drover/v1/dev/+/+");
    ok("drover", d, &["push", &bundle, "--broker", &broker.address(), "--group", "lab", "--timeout", "60s"]);
    fleet.wait_for(0, Duration::from_secs(30), "sensor v1", |f, i| f.inference(i).model().is_some());

    // The microcontroller starts sending once the model is served (as after a power-up of both).
    let bytes = microcontroller_bytes();
    let writer = std::thread::spawn(move || {
        // In UART-sized pieces, as a 115200-baud line delivers them.
        for chunk in bytes.chunks(64) {
            rustix::io::write(&master, chunk).expect("write to the pty");
            std::thread::sleep(Duration::from_millis(2));
        }
        master
    });
    let _master = writer.join().expect("writer");

    let delivered = WINDOWS as u64 - 1; // all but the corrupted one
    let deadline = Instant::now() + Duration::from_secs(60);
    let (telemetry, input) = loop {
        let telemetry: Vec<Telemetry> = reports(&obs, "pi-00", "telemetry", |t: &Telemetry| t.seq);
        let input = summed(&telemetry);
        if input.inferred >= delivered && input.link.rejected() >= 1 {
            break (telemetry, input);
        }
        assert!(Instant::now() < deadline, "telemetry did not count the windows: {input:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(input.connected, "{input:?}");
    assert_eq!(input.windows, delivered, "{input:?}");
    assert_eq!((input.inferred, input.mismatched, input.refused), (delivered, 0, 0), "{input:?}");
    // Hello + 29 windows accepted; the corrupted frame rejected, counted once.
    assert_eq!(input.link.frames, 1 + delivered, "{input:?}");
    assert_eq!(input.link.rejected(), 1, "{input:?}");
    assert_eq!(input.link.crc_errors + input.link.framing_errors, 1, "{input:?}");
    // Two gaps of one frame each: the corrupted frame's number, then the skipped one.
    assert_eq!((input.link.gaps, input.link.lost), (2, 2), "{input:?}");
    // Every window was a running motor, and the model says so.
    assert_eq!(input.classes.get(VIBRATION).copied(), Some(delivered), "predicted classes {:?}", input.classes);
    // The windows are the model's inferences (nothing else feeds this agent).
    let inferences: u64 = telemetry.iter().map(|t| t.inferences).sum();
    assert_eq!(inferences, delivered);
    assert!(telemetry.iter().any(|t| t.model.as_ref().is_some_and(|m| m.name.as_str() == "sensor")));

    // Drift: the windows fill the drift monitor like any other inputs, features named as the
    // shim's layout names them, then the predicted label.
    let deadline = Instant::now() + Duration::from_secs(30);
    let drift = loop {
        let drift: Vec<DriftWindow> = reports(&obs, "pi-00", "drift", |w: &DriftWindow| w.seq);
        if let Some(first) = drift.into_iter().next() {
            break first;
        }
        assert!(Instant::now() < deadline, "no drift window arrived");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(drift.samples, 20);
    let layout = FeatureLayout::new(["ax", "ay", "az"], FeatureSet { bands: 4, ..FeatureSet::TIME }).expect("layout");
    let expected: Vec<String> = layout.names().map(|n| n.to_string()).collect();
    let names: Vec<&str> = drift.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names[..24], expected.iter().map(String::as_str).collect::<Vec<_>>()[..], "{names:?}");
    assert!(names.contains(&"label"), "{names:?}");
}
