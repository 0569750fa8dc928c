//! `drover-agent`: the on-device agent's command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use drover_runtime::cmd::infer::{InferArgs, Progress, infer};
use drover_runtime::cmd::inspect::{self, InspectArgs};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Drover's on-device agent: runs ONNX models with tract.
#[derive(Parser)]
#[command(name = "drover-agent", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model over a file of samples (.jsonl or .npy) and write one JSON line per sample.
    Infer(InferArgs),
    /// Show a model's inputs, outputs, operators, quantization and load cost; exits 1 if
    /// Drover cannot run it.
    Inspect(InspectArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Infer(args) => {
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
        Command::Inspect(args) => {
            let runs = inspect::run(&args, &mut std::io::stdout().lock())?;
            Ok(if runs { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
