//! A push from a program rather than the command line: the demo and the soak hand a bundle
//! file to an audience and need every expected device to install it, or an error that says how
//! many did.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use drover_runtime::bundle::{Limits, read_header};
use drover_runtime::link::{BrokerSettings, PayloadFormat};

use super::run::execute;
use super::{Audience, Campaign, Tracker, Work};

/// Chunk size of programmatic pushes (the CLI's default).
const CHUNK: u32 = 32 * 1024;

/// A push every expected device completed.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// The bundle's model version.
    pub version: u64,
    /// Devices that installed it.
    pub devices: usize,
    /// From the announcement to the last device's report.
    pub elapsed: Duration,
    /// The bundle's size.
    pub bytes: usize,
    /// Chunks published, re-sends included.
    pub chunks_sent: u64,
    /// Of those, copies for a single device.
    pub chunks_sent_direct: u64,
}

/// Pushes the bundle at `path` to `audience` on `broker` and waits (at most `timeout`) until
/// `expected` devices report it installed. Blocks: it runs its own single-threaded runtime.
pub fn deliver(
    path: &Path,
    broker: &BrokerSettings,
    audience: Audience,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Delivered> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let header = read_header(&mut bytes.as_slice(), &Limits::default())?;
    let m = &header.manifest;
    let now_ms = crate::cmd::fleet::unix_ms();
    let announce = super::campaign::announce(&bytes, &m.name, m.version, CHUNK, now_ms)?;
    let settle = crate::cmd::push::SETTLE.as_millis() as u64;
    let tracker = Tracker::new(audience, 0, settle, timeout.as_millis() as u64);
    let mut campaign = Campaign::new(Work::Bundle { announce }, tracker, PayloadFormat::Postcard);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = rt.block_on(execute(&mut campaign, &bytes, None, broker, |_| {}))?;
    let t = campaign.tracker();
    let ok = t.devices().values().filter(|v| v.phase.as_ref().is_some_and(|p| p.is_success())).count();
    anyhow::ensure!(
        ok == expected && t.all_succeeded(),
        "{} v{} reached {ok} of {expected} devices ({:?}{})",
        m.name,
        m.version,
        outcome.end,
        outcome.last_error.map(|e| format!(", last broker error: {e}")).unwrap_or_default()
    );
    Ok(Delivered {
        version: m.version,
        devices: ok,
        elapsed: outcome.elapsed,
        bytes: bytes.len(),
        chunks_sent: outcome.chunks_sent,
        chunks_sent_direct: outcome.chunks_sent_direct,
    })
}
