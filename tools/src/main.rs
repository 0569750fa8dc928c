//! `drover`: the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use drover_tools::cli::{Cli, run};

fn main() -> ExitCode {
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
