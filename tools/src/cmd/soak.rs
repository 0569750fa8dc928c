//! `drover soak`: a long run of one real agent process under steady work, its resources
//! sampled (see [`crate::soak`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::soak::{Report, SoakOptions, run as run_soak};

/// Arguments of `drover soak`.
#[derive(Debug, clap::Args)]
pub struct SoakArgs {
    /// The agent binary (default: `drover-agent` beside this `drover`).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// How long (`1h`, `90m`, plain seconds).
    #[arg(long, default_value = "1h", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// Inference requests per second through the agent's local API.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// A new signed release is pushed this often.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration)]
    pub update_every: Duration,
    /// The agent is measured this often.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration)]
    pub sample_every: Duration,
    /// Seconds between the agent's telemetry reports.
    #[arg(long, default_value_t = 10)]
    pub telemetry_s: u32,
    /// Keep the soak's files (keys, bundles, the agent's data dir and log) in this empty
    /// directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
}

/// Runs the soak and prints its figures; false when requests failed (more than 1 %).
pub fn run(args: &SoakArgs, now_ms: u64) -> anyhow::Result<bool> {
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe().context("where this drover is")?.with_file_name("drover-agent"),
    };
    anyhow::ensure!(agent.is_file(), "no agent binary at {} (give --agent)", agent.display());
    let stop = super::stop_on_ctrl_c()?;
    let opts = SoakOptions {
        agent,
        duration: args.duration,
        rate_hz: args.rate,
        update_every: args.update_every,
        sample_every: args.sample_every,
        telemetry_s: args.telemetry_s,
        keep: args.keep.clone(),
    };
    let report = run_soak(&opts, &stop, &mut std::io::stdout(), now_ms / 1000)?;
    print!("{}", summary(&report));
    let (answered, failed) = report.rows.last().map(|r| (r.answered, r.failed)).unwrap_or_default();
    Ok(failed * 100 <= answered + failed)
}

/// The figures of a soak, in words and numbers.
pub fn summary(r: &Report) -> String {
    let mut s = String::new();
    let (Some(first), Some(last)) = (r.rows.first(), r.rows.last()) else {
        return "No reading was taken.\n".into();
    };
    let line = |s: &mut String, text: String| {
        s.push_str(&text);
        s.push('\n');
    };
    line(
        &mut s,
        format!("\nSoak of {:.1} min{}:", last.at_s / 60.0, if r.interrupted { " (stopped early)" } else { "" }),
    );
    let secs = (last.at_s - first.at_s).max(1e-9);
    line(
        &mut s,
        format!(
            "  requests: {} answered ({:.1}/s), {} failed; mean {} µs, slowest {} µs",
            last.answered,
            last.answered as f64 / secs,
            last.failed,
            r.mean_latency_us,
            r.max_latency_us
        ),
    );
    if !r.updates.is_empty() {
        let mean = r.updates.iter().map(|u| u.took.as_secs_f64()).sum::<f64>() / r.updates.len() as f64;
        let max = r.updates.iter().map(|u| u.took.as_secs_f64()).fold(0.0, f64::max);
        line(
            &mut s,
            format!(
                "  updates: {} installed (v2..v{}), mean {mean:.1} s, slowest {max:.1} s",
                r.updates.len(),
                last.version
            ),
        );
    }
    let range = |f: &dyn Fn(&crate::soak::Row) -> u64| {
        let v: Vec<u64> = r.rows.iter().map(f).collect();
        (v.iter().copied().min().unwrap_or(0), v.iter().copied().max().unwrap_or(0))
    };
    let growth = |f: &dyn Fn(&crate::soak::Row) -> f64| {
        r.growth(f).map(|g| format!("{g:+.1}/h")).unwrap_or_else(|| "n/a".into())
    };
    let (lo, hi) = range(&|x| x.proc.rss_kib);
    line(
        &mut s,
        format!(
            "  RSS: {} → {} KiB (min {lo}, max {hi}, peak {}); growth after the warm-up {} KiB",
            first.proc.rss_kib,
            last.proc.rss_kib,
            last.proc.peak_kib,
            growth(&|x| x.proc.rss_kib as f64)
        ),
    );
    let (lo, hi) = range(&|x| x.proc.fds);
    line(&mut s, format!("  file descriptors: {lo}..{hi}; growth {}", growth(&|x| x.proc.fds as f64)));
    let (lo, hi) = range(&|x| x.proc.threads);
    line(&mut s, format!("  threads: {lo}..{hi}"));
    line(
        &mut s,
        format!(
            "  data dir: {} → {} KiB; growth {} KiB",
            first.data_bytes / 1024,
            last.data_bytes / 1024,
            growth(&|x| x.data_bytes as f64 / 1024.0)
        ),
    );
    s
}
