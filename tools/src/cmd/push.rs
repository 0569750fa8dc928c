//! `drover push BUNDLE (--device ID… | --group G | --all)`: announce a signed bundle over MQTT,
//! serve its chunks to the devices that ask, show each device's progress, and end with a table
//! and an exit code that tells whether every device installed it.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use drover_runtime::bundle::{Limits, read_header};
use drover_wire::message::Phase;
use drover_wire::topic::Name;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::broker_args::BrokerArgs;
use crate::push::campaign::Interruption;
use crate::push::run::{Outcome, Report, execute};
use crate::push::{Audience, Campaign, DeviceView, End, Tracker, Work};

/// Who an operation is for (exactly one of the three).
#[derive(Debug, Clone, clap::Args)]
#[group(required = true, multiple = false)]
pub struct AudienceArgs {
    /// These devices (repeat the flag).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Every device of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Every device.
    #[arg(long)]
    pub all: bool,
}

impl AudienceArgs {
    /// The checked audience.
    pub fn audience(&self) -> anyhow::Result<Audience> {
        let checked = |s: &str| Name::new(s).map_err(|e| anyhow::anyhow!("'{s}': {e}"));
        if let Some(g) = &self.group {
            return Ok(Audience::Group(checked(g)?));
        }
        if self.all {
            return Ok(Audience::All);
        }
        Ok(Audience::Devices(self.devices.iter().map(|d| checked(d)).collect::<anyhow::Result<_>>()?))
    }
}

/// Arguments of `drover push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The signed bundle (.drv).
    pub bundle: PathBuf,
    /// Who gets it.
    #[command(flatten)]
    pub audience: AudienceArgs,
    /// Give up on devices that have not finished after this long.
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    pub timeout: Duration,
    /// Bytes per chunk; with its header it must fit the broker's and the devices' packet limit.
    #[arg(long, default_value_t = 32 * 1024)]
    pub chunk_size: u32,
    /// Send chunks at most this fast, bytes per second (e.g. for a cellular uplink).
    #[arg(long)]
    pub max_rate: Option<u64>,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// How long retained presence is awaited to resolve a group.
pub const SETTLE: Duration = Duration::from_millis(1500);

/// Pushes; true when every device installed the bundle (or already ran it).
pub fn run(args: &PushArgs, now_ms: u64) -> anyhow::Result<bool> {
    let bytes = std::fs::read(&args.bundle).with_context(|| format!("read {}", args.bundle.display()))?;
    let header = read_header(&mut bytes.as_slice(), &Limits::default())
        .with_context(|| format!("{} is not a Drover bundle", args.bundle.display()))?;
    anyhow::ensure!(header.is_signed(), "{} is not signed: `drover sign` it first", args.bundle.display());
    let settings = args.broker.settings()?;
    anyhow::ensure!(
        (args.chunk_size as usize) + 512 <= settings.max_packet && args.chunk_size >= 1024,
        "--chunk-size {} must be at least 1024 and leave 512 bytes of the {}-byte packet limit for headers",
        args.chunk_size,
        settings.max_packet
    );
    let m = &header.manifest;
    let announce = crate::push::campaign::announce(&bytes, &m.name, m.version, args.chunk_size, now_ms)?;
    let audience = args.audience.audience()?;
    eprintln!(
        "pushing {} v{} ({} bytes, {} chunks, transfer {}) to {} via {}",
        m.name,
        m.version,
        bytes.len(),
        announce.chunk_count(),
        announce.transfer.short(),
        audience.describe(),
        settings.address()
    );
    let tracker = Tracker::new(audience, 0, SETTLE.as_millis() as u64, args.timeout.as_millis() as u64);
    let mut campaign = Campaign::new(Work::Bundle { announce }, tracker, args.broker.payload);
    let outcome = drive(&mut campaign, &bytes, args.max_rate, &settings)?;
    Ok(report(&campaign, &outcome, &settings.address()))
}

/// Runs a campaign with progress display on a fresh single-threaded runtime.
pub fn drive(
    campaign: &mut Campaign,
    bundle: &[u8],
    max_rate: Option<u64>,
    settings: &drover_runtime::link::BrokerSettings,
) -> anyhow::Result<Outcome> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("start the runtime")?;
    let mut display = Display::new();
    rt.block_on(execute(campaign, bundle, max_rate, settings, |report| match report {
        Report::Changed(d, v) => display.update(d, v),
        Report::Interrupted(d, i) => display.interrupted(d, i),
    }))
}

/// Prints the final table; true when every device succeeded.
pub fn report(campaign: &Campaign, outcome: &Outcome, address: &str) -> bool {
    let tracker = campaign.tracker();
    if !outcome.connected {
        eprintln!(
            "error: could not reach the broker at {address}: {}",
            outcome.last_error.as_deref().unwrap_or("no answer")
        );
        return false;
    }
    if outcome.end == End::NoDevices {
        eprintln!("error: no device of {} has ever reported to this broker", tracker.audience().describe());
        return false;
    }
    println!("{:<24} {:<60} {:>8}", "DEVICE", "RESULT", "TIME");
    for (device, view) in tracker.devices() {
        let time = view.finished_ms.map(|ms| format!("{:.1}s", ms as f64 / 1000.0)).unwrap_or_else(|| "-".into());
        println!("{:<24} {:<60} {:>8}", device.as_str(), result_text(view), time);
    }
    let ok = tracker.all_succeeded() && outcome.end == End::AllFinished;
    let done = tracker.devices().values().filter(|v| v.phase.as_ref().is_some_and(Phase::is_success)).count();
    eprintln!(
        "{done}/{} device(s) succeeded in {:.1}s ({} chunk messages sent, {} of them copies for a single device){}",
        tracker.devices().len(),
        outcome.elapsed.as_secs_f64(),
        outcome.chunks_sent,
        outcome.chunks_sent_direct,
        if outcome.end == End::TimedOut { "; timed out" } else { "" }
    );
    ok
}

/// What a device's view says, in a table cell.
pub fn result_text(view: &DeviceView) -> String {
    match &view.phase {
        Some(Phase::Installed { slot }) => format!("installed (slot {slot:?})").to_lowercase(),
        Some(Phase::Current) => "already running this version".into(),
        Some(Phase::RolledBack { slot }) => format!("rolled back (slot {slot:?})").to_lowercase(),
        Some(Phase::Staged) => "staged as the candidate".into(),
        Some(Phase::Shadowing) => "candidate in shadow".into(),
        Some(Phase::ShadowStopped) => "shadow stopped".into(),
        Some(Phase::Splitting) => "traffic split".into(),
        Some(Phase::SplitStopped) => "split ended".into(),
        Some(Phase::Failed { reason }) => format!("FAILED: {reason}"),
        Some(p) => format!("TIMED OUT while {}", phase_text(p)),
        None => match view.online {
            Some(false) => "TIMED OUT: offline".into(),
            Some(true) => "TIMED OUT: online, no answer".into(),
            None => "TIMED OUT: never seen by the broker".into(),
        },
    }
}

fn phase_text(p: &Phase) -> String {
    match p {
        Phase::Downloading { have, total } => format!("downloading {have}/{total}"),
        Phase::Installing => "installing".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// What a device dropping out of a transfer or coming back says in the log: a bar or a count
/// that merely stops moving tells the operator nothing.
pub fn interruption_text(i: &Interruption) -> String {
    match i {
        Interruption::Offline { have: Some(have), total } => {
            format!("offline mid-transfer, with {have}/{total} chunks")
        }
        Interruption::Offline { have: None, total } => {
            format!("offline mid-transfer, before reporting any of {total} chunks")
        }
        Interruption::Online => "back online, waiting for its request for the chunks it lacks".into(),
        Interruption::Reconnected => {
            "dropped out and reconnected mid-transfer, waiting for its request for the chunks it lacks".into()
        }
        Interruption::Resumed { at, total } => format!("resumed at chunk {at}/{total}"),
    }
}

/// Progress bars on a terminal, a line per change otherwise (logs, CI).
struct Display {
    multi: Option<MultiProgress>,
    bars: BTreeMap<Name, ProgressBar>,
    last: BTreeMap<Name, String>,
}

impl Display {
    fn new() -> Display {
        let multi =
            std::io::stderr().is_terminal().then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Display { multi, bars: BTreeMap::new(), last: BTreeMap::new() }
    }

    /// A line for a device dropping out of the transfer or coming back, above the bars on a
    /// terminal (its bar shows it until its next progress), in the log otherwise.
    fn interrupted(&mut self, device: &Name, i: &Interruption) {
        let text = interruption_text(i);
        let line = format!("{:<24} {text}", device.as_str());
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(line);
                if let Some(bar) = self.bars.get(device) {
                    bar.set_message(text);
                }
            }
            None => {
                eprintln!("{line}");
                // The next progress gets its line again: the log shows the transfer moving on.
                self.last.remove(device);
            }
        }
    }

    fn update(&mut self, device: &Name, view: &DeviceView) {
        let text = match &view.phase {
            Some(Phase::Downloading { .. }) | Some(Phase::Installing) => {
                view.phase.as_ref().map(phase_text).unwrap_or_default()
            }
            Some(_) => result_text(view),
            None => {
                if view.online == Some(true) {
                    "online, waiting".into()
                } else {
                    "offline, waiting".into()
                }
            }
        };
        let Some(multi) = &self.multi else {
            // One line per phase, not per chunk.
            let key: String = text.split(' ').next().unwrap_or_default().to_string();
            if self.last.get(device) != Some(&key) {
                eprintln!("{:<24} {text}", device.as_str());
                self.last.insert(device.clone(), key);
            }
            return;
        };
        let bar = self.bars.entry(device.clone()).or_insert_with(|| {
            let b = multi.add(ProgressBar::new(1));
            b.set_style(
                ProgressStyle::with_template("{prefix:<20} {bar:30} {pos:>5}/{len:<5} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b.set_prefix(device.as_str().to_string());
            b
        });
        if let Some(Phase::Downloading { have, total }) = &view.phase {
            bar.set_length(u64::from(*total));
            bar.set_position(u64::from(*have));
        }
        if view.phase.as_ref().is_some_and(Phase::is_final) {
            bar.set_position(bar.length().unwrap_or(0));
            bar.finish_with_message(text);
        } else {
            bar.set_message(text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interruptions_read_as_lines_that_say_where_the_transfer_stands() {
        let text = |i| interruption_text(&i);
        assert_eq!(text(Interruption::Offline { have: Some(8), total: 20 }), "offline mid-transfer, with 8/20 chunks");
        assert!(text(Interruption::Offline { have: None, total: 20 }).contains("any of 20 chunks"));
        assert!(text(Interruption::Online).starts_with("back online"));
        assert_eq!(text(Interruption::Resumed { at: 9, total: 20 }), "resumed at chunk 9/20");
    }
}
