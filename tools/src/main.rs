//! `drover`: the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use drover_runtime::backtraces::{self, restart_without_library_backtraces};
use drover_tools::cli::{Cli, run};

fn main() -> ExitCode {
    // The demo, the simulator, `bundle` and `quantize` load models through tract too: without
    // library backtraces under RUST_BACKTRACE, as the agent (drover_runtime::backtraces).
    let restart = restart_without_library_backtraces();
    let cli = Cli::parse();
    // rumqttd (the embedded broker) reports through tracing: its events reach the log at levels
    // that mean something, its per-packet spans never (broker_log.rs). The demo tells what its
    // agents' warnings say in its own words, so it shows only errors.
    drover_tools::broker_log::install();
    let default = match cli.command {
        drover_tools::cli::Verb::Demo(_) => "error,rumqttd=off",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default)).init();
    backtraces::report(&restart, "drover");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    match run(cli, now_ms) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", drover_runtime::cmd::error_text(&e));
            ExitCode::FAILURE
        }
    }
}
