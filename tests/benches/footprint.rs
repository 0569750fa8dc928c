//! The footprint bench (issue 36): what a board downloads, what the static build's allocator
//! costs, and what the running agent keeps in memory.
//!
//! `cargo bench -p drover-tests --bench footprint`. Builds the release agents it measures first
//! (a no-op when they are up to date; ~10–15 minutes each the first time), which needs
//! `rustup target add x86_64-unknown-linux-musl` besides the board targets `tests/run` adds; the
//! MobileNetV2 rows need the zoo (Python with `models/zoo/requirements.txt`).
//!
//! 1. **Size**: the stripped release agents as `drover package` ships them, against the goals.
//! 2. **Allocator**: the same agent built for x86_64 glibc and for x86_64 musl (the libc of the
//!    static aarch64 agent), and musl with musl's own malloc (`drover-runtime/system-allocator`),
//!    each running `infer` on the same models and samples; the three are run one after the other
//!    in every round, so the shared machine's load hits them alike. Medians over the rounds of the
//!    load time and of the time per inference; ratios to glibc.
//! 3. **Memory**: `drover-agent run` serving the reference CNN from an installed, signed bundle,
//!    its local API ready: resident memory now and at its peak (`VmRSS`, `VmHWM`).
//!
//! `DROVER_BENCH_ROUNDS` (default 5) sets the rounds of part 2; `DROVER_BENCH_PARTS=size,alloc,memory`
//! (the default) chooses the parts to run.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use drover_tests::api::agent_config_with_api;
use drover_tests::cli::{ok_with, signed_bundle_with, trust_setup_with};
use drover_tests::release::{self, resample_npy};
use drover_tests::zoo::repo;

/// The sizes the issue sets, bytes (MB = 10^6, as the issue and `ls` round them).
const SIZE_GOALS: [(&str, u64); 2] =
    [("aarch64-unknown-linux-musl", 8_000_000), ("armv7-unknown-linux-gnueabihf", 7_000_000)];

/// One build of the agent in the allocator comparison.
struct Build {
    name: &'static str,
    agent: PathBuf,
}

/// A model and the samples part 2 runs it on.
struct Workload {
    name: &'static str,
    model: PathBuf,
    input: PathBuf,
}

fn main() {
    let rounds: usize = std::env::var("DROVER_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let parts = std::env::var("DROVER_BENCH_PARTS").unwrap_or_else(|_| "size,alloc,memory".into());
    let part = |name: &str| parts.split(',').any(|p| p.trim() == name);
    let work = tempfile::tempdir().expect("tempdir");
    let work = work.path();
    if part("size") {
        sizes();
    }
    if part("alloc") || part("memory") {
        let builds = [
            Build { name: "x86_64 glibc", agent: release::agent("x86_64-unknown-linux-gnu", None) },
            Build { name: "x86_64 musl (shipped)", agent: release::agent("x86_64-unknown-linux-musl", None) },
            Build {
                name: "x86_64 musl, musl's malloc",
                agent: release::agent(
                    "x86_64-unknown-linux-musl",
                    Some(("system-allocator", "drover-runtime/system-allocator")),
                ),
            },
        ];
        if part("alloc") {
            allocators(&builds, rounds, work);
        }
        if part("memory") {
            memory(&builds);
        }
    }
}

/// Part 1.
fn sizes() {
    println!("1. Size of the stripped release agent (release profile, as `drover package` ships it)");
    println!("{:<32} {:>12} {:>10}", "target", "bytes", "goal");
    for (triple, goal) in SIZE_GOALS {
        let agent = release::agent(triple, None);
        let size = std::fs::metadata(&agent).expect("agent").len();
        let verdict = if size <= goal { "met" } else { "over" };
        println!("{triple:<32} {size:>12} {:>7} MB {verdict}", goal / 1_000_000);
    }
    println!();
}

/// Part 2.
fn allocators(builds: &[Build], rounds: usize, work: &Path) {
    let models = repo().join("models");
    let mut workloads = vec![Workload {
        name: "reference CNN, 400 samples",
        model: models.join("cnn.onnx"),
        input: sized(&models.join("reference/cnn.input.npy"), 400, work),
    }];
    match drover_tests::zoo::generated() {
        Some(zoo) => {
            for (name, dir, file, n) in [
                ("MobileNetV2 0.35, 20 samples", "tv_mobilenet_v2_035_ts", "mobilenet_v2_035.onnx", 20),
                ("MobileNetV2 1.0, 10 samples", "tv_mobilenet_v2_ts", "mobilenet_v2.onnx", 10),
            ] {
                let dir = zoo.join(dir);
                workloads.push(Workload { name, model: dir.join(file), input: sized(&dir.join("input.npy"), n, work) });
            }
        }
        None => eprintln!("no zoo: the MobileNetV2 rows are left out"),
    }
    println!("2. Allocator: `drover-agent infer`, medians of {rounds} rounds, ratio = build / glibc");
    println!("{:<30} {:<28} {:>10} {:>7} {:>14} {:>7}", "model", "build", "load ms", "ratio", "µs/inference", "ratio");
    for w in &workloads {
        let mut runs: Vec<Vec<Infer>> = builds.iter().map(|_| Vec::new()).collect();
        for _ in 0..rounds {
            for (b, build) in builds.iter().enumerate() {
                runs[b].push(infer(&build.agent, w, work));
            }
        }
        let base = median(&runs[0]);
        for (build, runs) in builds.iter().zip(&runs) {
            let m = median(runs);
            println!(
                "{:<30} {:<28} {:>10.1} {:>7.2} {:>14.1} {:>7.2}",
                w.name,
                build.name,
                m.load_ms,
                m.load_ms / base.load_ms,
                m.us,
                m.us / base.us
            );
        }
    }
    println!("goal (issue 36): the shipped musl build within 5 % of glibc per inference");
    println!();
}

/// Part 3.
fn memory(builds: &[Build]) {
    let drover = release::operator_tool();
    println!("3. Memory of `drover-agent run` serving the reference CNN, API ready (goal: <= 20 MB)");
    println!("{:<30} {:>12} {:>12}", "build", "VmRSS KiB", "VmHWM KiB");
    for build in builds {
        let (rss, peak) = resident(&build.agent, &drover);
        println!("{:<30} {rss:>12} {peak:>12}", build.name);
    }
}

/// `src`'s samples repeated to `n`, written into `dir`.
fn sized(src: &Path, n: usize, dir: &Path) -> PathBuf {
    let stem = src.parent().and_then(|p| p.file_name()).and_then(|s| s.to_str()).unwrap_or("input");
    let dst = dir.join(format!("{stem}-{}-{n}.npy", src.file_stem().and_then(|s| s.to_str()).unwrap_or("x")));
    resample_npy(src, n, &dst);
    dst
}

/// What one `infer` run reported.
#[derive(Clone, Copy)]
struct Infer {
    load_ms: f64,
    us: f64,
}

/// Runs `agent infer` on the workload and reads its summary line
/// (`N samples in … ms (load L ms, inference … ms, U µs/sample, batch 1) -> …`).
fn infer(agent: &Path, w: &Workload, dir: &Path) -> Infer {
    let out = Command::new(agent)
        .args(["infer", "-m"])
        .arg(&w.model)
        .arg("-i")
        .arg(&w.input)
        .arg("-o")
        .arg(dir.join("out.jsonl"))
        .output()
        .expect("run the agent");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{} infer {}: {text}", agent.display(), w.model.display());
    let line = text.lines().find(|l| l.contains("µs/sample")).unwrap_or_else(|| panic!("no summary line in: {text}"));
    let number_before = |unit: &str| -> f64 {
        let end = line.find(unit).unwrap_or_else(|| panic!("no '{unit}' in: {line}"));
        let start = line[..end].trim_end().rfind(' ').map_or(0, |i| i + 1);
        line[start..end].trim().parse().unwrap_or_else(|_| panic!("no number before '{unit}' in: {line}"))
    };
    let load_ms = number_before(" ms, inference");
    Infer { load_ms, us: number_before(" µs/sample") }
}

/// Per-field medians.
fn median(runs: &[Infer]) -> Infer {
    let pick = |f: fn(&Infer) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Infer { load_ms: pick(|r| r.load_ms), us: pick(|r| r.us) }
}

/// A child process stopped when dropped, so a failed assertion does not leave an agent running.
struct Stopped(Child);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agent run` with the reference CNN installed from a signed bundle: (VmRSS, VmHWM) in KiB once
/// its API answers ready and has served one request.
fn resident(agent: &Path, drover: &Path) -> (u64, u64) {
    let dir = trust_setup_with(drover);
    let d = dir.path();
    let cnn = repo().join("models/cnn.onnx");
    // `trust_setup` delegates the name `iris` to the release key: the CNN is served under it.
    signed_bundle_with(drover, d, cnn.to_str().expect("utf-8 path"), "iris", "1", &[], "cnn.drv");
    ok_with(agent, d, &["trust", "--root", "root.json", "--data-dir", "board"]);
    ok_with(agent, d, &["install", "cnn.drv", "--data-dir", "board"]);
    let port = agent_config_with_api(d);
    let child = Stopped(
        Command::new(agent)
            .current_dir(d)
            .args(["run", "--config", "agent.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the agent"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{base}/v2/health/ready")).call().is_err() {
        assert!(Instant::now() < deadline, "the agent's API never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let sample = vec![0.5f32; 28 * 28];
    let request =
        serde_json::json!({"inputs": [{"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": sample}]});
    let answer = ureq::post(&format!("{base}/v2/models/iris/infer")).send_json(&request);
    assert!(answer.is_ok(), "the agent did not answer an inference: {answer:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.0.id())).expect("/proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
