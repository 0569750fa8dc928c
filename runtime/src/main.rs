//! `drover-agent`: the on-device agent's command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drover_runtime::backtraces::{self, restart_without_library_backtraces};
use drover_runtime::cmd::infer::{InferArgs, Progress, infer};
use drover_runtime::cmd::inspect::{self, InspectArgs};
use drover_runtime::cmd::slots;
use drover_runtime::store::FailPoint;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The static agent (musl) allocates through mimalloc. musl's own malloc maps and unmaps every
/// large buffer and serialises small ones behind one lock: the same agent ran 1.3–1.5× slower per
/// MobileNetV2 inference and 1.7× per reference-CNN inference than its glibc build, and loaded
/// models 1.5–1.8× slower; with mimalloc, 0.98–1.06× (`benches/footprint.rs`, docs/boards.md).
/// The `system-allocator` feature keeps musl's, to measure that again.
#[cfg(all(target_env = "musl", not(feature = "system-allocator")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Drover's on-device agent: runs ONNX models with tract.
#[derive(Parser)]
#[command(name = "drover-agent", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run a model over a file of samples (.jsonl or .npy) and write one JSON line per sample.
    Infer(InferArgs),
    /// Show a model's inputs, outputs, operators, quantization and load cost; exits 1 if
    /// Drover cannot run it.
    Inspect(InspectArgs),
    /// Provision the fleet's root of trust (or advance it to the next version).
    Trust(slots::TrustArgs),
    /// Verify a bundle, install it into the inactive slot, self-test it and switch to it.
    Install(slots::InstallArgs),
    /// Verify a bundle and keep it as the candidate for a shadow test (the slots stay as they are).
    Stage(slots::InstallArgs),
    /// The start-up check: boot counter, file verification, health check, commit or rollback.
    Boot(slots::SlotArgs),
    /// Switch back to the previous model.
    Rollback(slots::SlotArgs),
    /// Show the slots, the active model, the trust root and the anti-rollback floors.
    Status(slots::StatusArgs),
    /// Verify and apply a signed operator command (rollback, install, shadow, split, stop).
    Command(slots::CommandArgs),
    /// Run as a service: keep the model store, report presence, take bundles and commands
    /// over MQTT (stops on SIGTERM or Ctrl-C).
    Run(RunArgs),
}

/// Arguments of `drover-agent run`.
#[derive(clap::Args)]
struct RunArgs {
    /// The agent's configuration (TOML).
    #[arg(long, default_value = "/etc/drover/agent.toml")]
    config: std::path::PathBuf,
}

fn run_agent(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let cfg = drover_runtime::agent::AgentConfig::load(&args.config)
        .with_context(|| format!("configuration {}", args.config.display()))?;
    log::info!(
        "drover-agent {} starting: device {}, data dir {}, broker {}",
        env!("CARGO_PKG_VERSION"),
        cfg.device,
        cfg.data_dir.display(),
        cfg.broker.address()
    );
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the runtime")?;
    rt.block_on(async {
        let clock = std::sync::Arc::new(drover_runtime::agent::SystemClock::default());
        drover_runtime::agent::run_service(cfg, clock, stop_signal()).await
    })
    .with_context(|| format!("agent with {}", args.config.display()))?;
    log::info!("drover-agent stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (systemd's stop) or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() -> ExitCode {
    // First of all: with RUST_BACKTRACE set, every error tract's optimiser drops would capture a
    // backtrace (int8 loads up to 7x the ARM instructions on the static aarch64 agent); returns
    // only if it cannot restart.
    let restart = restart_without_library_backtraces();
    let cli = Cli::parse();
    // A service (`run`, under systemd) says at info level what it does: start, connection,
    // installs, refusals, stop; the one-shot verbs print their result and log only warnings.
    // RUST_LOG overrides both.
    let default = if matches!(cli.command, Verb::Run(_)) { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
    backtraces::report(&restart, "the agent");
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", drover_runtime::cmd::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    // Crash tests arm a fail point through the environment; nothing else reads it.
    let failpoint = FailPoint(std::env::var("DROVER_FAILPOINT").ok());
    match cli.command {
        Verb::Infer(args) => {
            let bar = if std::io::stderr().is_terminal() {
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
            } else {
                ProgressBar::hidden()
            };
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} samples {per_sec} eta {eta}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let summary = infer(&args, &mut |p| match p {
                Progress::Total(Some(n)) => bar.set_length(n),
                Progress::Total(None) => {}
                Progress::Done(n) => bar.set_position(n),
            })
            .with_context(|| format!("infer {} on {}", args.model.display(), args.input.display()))?;
            bar.finish_and_clear();
            eprintln!(
                "{} samples in {:.1} ms (load {:.1} ms, inference {:.1} ms, {:.1} µs/sample, batch {}) -> {}",
                summary.samples,
                summary.wall.as_secs_f64() * 1e3,
                summary.load.as_secs_f64() * 1e3,
                summary.inference.as_secs_f64() * 1e3,
                summary.us_per_sample(),
                summary.batch,
                args.output.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Verb::Inspect(args) => {
            let runs = inspect::run(&args, &mut std::io::stdout().lock())?;
            Ok(if runs { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Verb::Trust(args) => slots::trust(&args, failpoint).map(|_| ExitCode::SUCCESS),
        Verb::Install(args) => slots::install(&args, now, failpoint).map(|_| ExitCode::SUCCESS),
        Verb::Stage(args) => slots::stage(&args, now, failpoint).map(|_| ExitCode::SUCCESS),
        Verb::Boot(args) => slots::boot(&args, failpoint).map(|_| ExitCode::SUCCESS),
        Verb::Rollback(args) => slots::rollback(&args, failpoint).map(|_| ExitCode::SUCCESS),
        Verb::Status(args) => slots::status(&args).map(|_| ExitCode::SUCCESS),
        Verb::Command(args) => slots::command(&args, now, failpoint).map(|_| ExitCode::SUCCESS),
        Verb::Run(args) => run_agent(&args),
    }
}
