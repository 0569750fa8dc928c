//! The ARM bench: instructions per inference of the release `drover-agent` for aarch64 and armv7
//! under qemu-user, fp32 against int8 and Drover's own int8 kernels against tract-linalg's, for
//! the reference CNN and MLP and torchvision's MobileNetV2 (width 0.35) from the zoo.
//!
//! `cargo bench -p drover-tests --bench arm`. Builds the two release agents first (a no-op when
//! they are up to date, ~15 minutes the first time); needs qemu-user-static and, for the
//! MobileNetV2, Python with `models/zoo/requirements.txt` (the zoo is generated or found cached).
//!
//! Method (`drover_tests::icount`): each agent runs `infer` on 1 and on 3 samples under qemu with
//! its `in_asm,exec,nochain` log streamed through a FIFO; the difference over 2 is the count per
//! inference, start-up and model load cancelled. Machines: aarch64 as a Cortex-A72 (Raspberry Pi 4:
//! NEON without the dot product) and a Cortex-A76 (Pi 5: with `sdot`), armv7 as qemu's default
//! 32-bit core with NEON (32-bit Pi OS; tract is told it has NEON, as a Pi's /proc/cpuinfo would,
//! since qemu-user shows the host's). An instruction count is not a time: see the module.
//! `DROVER_BENCH_ONLY=a,b` keeps models whose name contains one of the parts;
//! `DROVER_BENCH_MACHINES=a,b` keeps machines whose name does (`A72`, `A76`, `armv7`).

use std::path::{Path, PathBuf};

use drover_tests::icount::{self, Count};
use drover_tests::release::{self, resample_npy};
use drover_tests::zoo::repo;

/// Samples in the long run; the short one has 1.
const LONG: usize = 3;

struct Machine {
    name: &'static str,
    triple: &'static str,
    qemu: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
}

const MACHINES: [Machine; 3] = [
    Machine {
        name: "aarch64 A72",
        triple: "aarch64-unknown-linux-musl",
        qemu: "qemu-aarch64-static",
        args: &["-cpu", "cortex-a72"],
        env: &[],
    },
    Machine {
        name: "aarch64 A76",
        triple: "aarch64-unknown-linux-musl",
        qemu: "qemu-aarch64-static",
        args: &["-cpu", "cortex-a76"],
        env: &[],
    },
    Machine {
        name: "armv7",
        triple: "armv7-unknown-linux-gnueabihf",
        qemu: "qemu-arm-static",
        args: &["-L", "/usr/arm-linux-gnueabihf"],
        // tract reads NEON from /proc/cpuinfo, which qemu-user shows as the x86 host's; a Pi's says
        // neon (see .cargo/config.toml).
        env: &[("TRACT_CPU_ARM32_NEON", "true")],
    },
];

struct Pair {
    name: &'static str,
    fp32: PathBuf,
    int8: PathBuf,
    input: PathBuf,
}

fn main() {
    let only: Vec<String> =
        std::env::var("DROVER_BENCH_ONLY").map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
    let models = repo().join("models");
    let mut pairs = vec![
        Pair {
            name: "reference CNN 1x28x28",
            fp32: models.join("cnn.onnx"),
            int8: models.join("cnn_int8_qdq.onnx"),
            input: models.join("reference/cnn.input.npy"),
        },
        Pair {
            name: "reference MLP 64-...-10",
            fp32: models.join("mlp.onnx"),
            int8: models.join("mlp_int8_qdq.onnx"),
            input: models.join("reference/mlp.input.npy"),
        },
    ];
    if let Some(zoo) = drover_tests::zoo::generated() {
        pairs.push(Pair {
            name: "MobileNetV2 0.35 3x224x224",
            fp32: zoo.join("tv_mobilenet_v2_035_ts/mobilenet_v2_035.onnx"),
            int8: zoo.join("q_tv_mobilenet_v2_035_qdq_u8s8_pt/tv_mobilenet_v2_035_qdq_u8s8_pt.onnx"),
            input: zoo.join("tv_mobilenet_v2_035_ts/input.npy"),
        });
    } else {
        eprintln!("no zoo: the MobileNetV2 rows are left out");
    }
    pairs.retain(|p| only.is_empty() || only.iter().any(|o| p.name.contains(o.as_str())));
    let machines: Vec<String> =
        std::env::var("DROVER_BENCH_MACHINES").map(|v| v.split(',').map(str::to_string).collect()).unwrap_or_default();
    let work = tempfile::tempdir().expect("tempdir");

    println!("ARM instructions per inference (qemu-user, release drover-agent infer, {LONG} samples minus 1)");
    println!("int8 = onnxruntime quantize_static QDQ; lanes = Drover's own int8 kernels; linalg = tract-linalg's");
    println!();
    println!(
        "{:<12} {:<28} {:>12} {:>13} {:>13} {:>11} {:>12}",
        "machine", "model", "fp32", "int8 lanes", "int8 linalg", "int8/fp32", "lanes/linalg"
    );
    for machine in
        MACHINES.iter().filter(|m| machines.is_empty() || machines.iter().any(|n| m.name.contains(n.as_str())))
    {
        let agent = release::agent(machine.triple, None);
        for pair in &pairs {
            let short = work.path().join(format!("{}-1.npy", file_stem(&pair.input)));
            let long = work.path().join(format!("{}-{LONG}.npy", file_stem(&pair.input)));
            resample_npy(&pair.input, 1, &short);
            resample_npy(&pair.input, LONG, &long);
            let per = |model: &Path, kernels: &str| -> Result<f64, String> {
                let run = |input: &Path| -> Result<Count, String> {
                    let args = [
                        "infer",
                        "-m",
                        model.to_str().expect("utf-8 path"),
                        "-i",
                        input.to_str().expect("utf-8 path"),
                        "-o",
                        "/dev/null",
                        "--int8-kernels",
                        kernels,
                    ];
                    icount::count(machine.qemu, machine.args, machine.env, &agent, &args)
                };
                let (one, many) = (run(&short)?, run(&long)?);
                Ok((many.instructions as f64 - one.instructions as f64) / (LONG - 1) as f64)
            };
            let fp32 = per(&pair.fp32, "native");
            let lanes = per(&pair.int8, "lanes");
            let linalg = per(&pair.int8, "linalg");
            let cell = |v: &Result<f64, String>| match v {
                Ok(v) => human(*v),
                Err(_) => "error".to_string(),
            };
            let ratio = |a: &Result<f64, String>, b: &Result<f64, String>| match (a, b) {
                (Ok(a), Ok(b)) if *b > 0.0 => format!("{:.2}", a / b),
                _ => "-".to_string(),
            };
            println!(
                "{:<12} {:<28} {:>12} {:>13} {:>13} {:>11} {:>12}",
                machine.name,
                pair.name,
                cell(&fp32),
                cell(&lanes),
                cell(&linalg),
                ratio(&linalg, &fp32),
                ratio(&lanes, &linalg)
            );
            for e in [&fp32, &lanes, &linalg].into_iter().filter_map(|r| r.as_ref().err()) {
                println!("    error: {}", e.lines().next().unwrap_or(""));
            }
        }
    }
    println!();
    println!("goal (issue 35): int8/fp32 <= 0.60 on every machine for the three models (int8 on this");
    println!("machine's native family, linalg on ARM). Counts, not times: no caches, no issue width, and a");
    println!("NEON instruction does 4-16 lanes of work where a scalar one does 1.");
}

fn file_stem(p: &Path) -> String {
    p.file_stem().and_then(|s| s.to_str()).unwrap_or("input").replace('.', "_")
}

/// `12.3 M` style.
fn human(v: f64) -> String {
    if v >= 1e6 { format!("{:.2} M", v / 1e6) } else { format!("{:.1} k", v / 1e3) }
}
