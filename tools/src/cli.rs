//! The `drover` command line: argument types and dispatch, so tests can drive it in-process.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use drover_runtime::cmd::inspect::{self, InspectArgs};

/// Drover's operator CLI.
#[derive(Debug, Parser)]
#[command(name = "drover", version, about = "Drover operator CLI: models for a fleet of edge boards")]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs that exist today.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show an ONNX model's inputs, outputs, operators and quantization, and whether the agent
    /// can run it (exit 1 when it cannot).
    Inspect(InspectArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Inspect(args) => {
            let runs = inspect::run(&args, &mut std::io::stdout().lock())?;
            Ok(if runs { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}
