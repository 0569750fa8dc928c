//! `drover alerts`: the fleet's events (drift, degradation, retraining triggers, lost reports) as
//! they arrive, one line each or as JSON, and a hook run per event so a training pipeline can be
//! started by a drift alert.
//!
//! With `--session NAME` the subscription is persistent: events raised while the command was not
//! running are delivered when it next connects, so a cron job sees every one of them.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use drover_runtime::link::codec;
use drover_wire::event::{Event, EventKind};
use drover_wire::topic::{self, DeviceLeaf, Name, Parsed};
use serde_json::json;

use super::broker_args::BrokerArgs;
use crate::rollout::controller::Announcement;

/// Arguments of `drover alerts`.
#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    /// Keep running and print events as they come (otherwise stop once the broker has been
    /// quiet for `--idle` seconds).
    #[arg(long)]
    pub follow: bool,
    /// Run this shell command for each event, with the event as JSON on its standard input
    /// (and DROVER_DEVICE, DROVER_EVENT in its environment).
    #[arg(long)]
    pub exec: Option<String>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Only this device's events.
    #[arg(long)]
    pub device: Option<String>,
    /// Only these kinds (drift, concept_drift, degraded, retrain, dropped, rollout), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub kind: Vec<String>,
    /// A persistent subscription under this name: events raised while away are delivered next time.
    #[arg(long)]
    pub session: Option<String>,
    /// Without --follow: seconds of quiet after which the command stops.
    #[arg(long, default_value_t = 2.0)]
    pub idle: f64,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// One line of text for an event.
pub fn describe(device: &str, e: &Event) -> String {
    let model = e.model.as_ref().map(|m| format!(" [{} v{}]", m.name, m.version)).unwrap_or_default();
    let what = match &e.kind {
        EventKind::Drift { feature, source, statistic, value, threshold, window, streak, .. } => {
            use drover_wire::drift::Statistic;
            let cmp = if matches!(statistic, Statistic::Ks | Statistic::ChiSquared | Statistic::Variance) {
                "p <"
            } else {
                "≥"
            };
            let source = match source {
                drover_wire::telemetry::Source::Input => "input",
                drover_wire::telemetry::Source::Output => "output",
            };
            format!(
                "{source} '{feature}' drifted: {statistic} {value:.3} ({cmp} {threshold}) over {} samples, {streak} window(s) in a row",
                window.samples
            )
        }
        EventKind::ConceptDrift { detector, error_rate, labels } => {
            format!("concept drift ({detector:?}): error rate now {error_rate:.2} after {labels} labels")
        }
        EventKind::Degraded { metric, value, threshold, window } => {
            format!("{metric:?} {value:.3} fell below {threshold} over the last {window} labels")
        }
        EventKind::Retrain { reason, .. } => format!("retrain: {reason}"),
        EventKind::Dropped { count } => format!("{count} reports were dropped (outbox full)"),
    };
    let at = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(e.at_ms));
    format!("{at}  {device}  {:<13} {what}{model}", e.kind.name())
}

/// The JSON object printed with `--json` and given to the hook.
pub fn to_json(device: &str, e: &Event) -> serde_json::Value {
    json!({"device": device, "kind": e.kind.name(), "event": e})
}

/// Runs `drover alerts`. Returns whether every hook succeeded.
pub fn run(args: &AlertsArgs) -> anyhow::Result<bool> {
    use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
    let settings = args.broker.settings()?;
    let filter = match &args.device {
        Some(d) => {
            let name = Name::new(d).map_err(|e| anyhow::anyhow!("--device '{d}': {e}"))?;
            topic::device(&name, DeviceLeaf::Events).to_string()
        }
        None => topic::every_device(DeviceLeaf::Events).to_string(),
    };
    let (id, clean) = match &args.session {
        Some(s) => (format!("drover-alerts-{s}"), false),
        None => (format!("drover-alerts-{}", std::process::id()), true),
    };
    let (client, mut eventloop) = AsyncClient::new(settings.mqtt_options(&id, clean)?, 16);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let idle = Duration::from_secs_f64(args.idle.max(0.1));
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut seen_rollouts: HashSet<(String, usize)> = HashSet::new();
    let mut all_ok = true;
    rt.block_on(async {
        let mut connected = false;
        loop {
            let polled = if args.follow || !connected {
                eventloop.poll().await
            } else {
                match tokio::time::timeout(idle, eventloop.poll()).await {
                    Ok(r) => r,
                    Err(_) => return Ok::<_, anyhow::Error>(()),
                }
            };
            match polled {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(filter.as_str(), QoS::AtLeastOnce).await?;
                    if args.device.is_none() {
                        client.subscribe(topic::every_rollout().as_str(), QoS::AtLeastOnce).await?;
                    }
                    connected = true;
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    if let Some(Parsed::Rollout(id)) = topic::parse(&p.topic) {
                        let a: Announcement = match serde_json::from_slice(&p.payload) {
                            Ok(a) => a,
                            Err(e) => {
                                log::warn!("{}: {e}", p.topic);
                                continue;
                            }
                        };
                        if !seen_rollouts.insert((id.as_str().to_string(), a.index))
                            || (!args.kind.is_empty() && !args.kind.iter().any(|k| k == "rollout"))
                        {
                            continue;
                        }
                        let j = json!({"rollout": a.rollout, "kind": "rollout", "event": a});
                        if args.json {
                            println!("{j}");
                        } else {
                            let at = humantime::format_rfc3339_seconds(
                                std::time::UNIX_EPOCH + Duration::from_millis(a.event.at_ms),
                            );
                            println!("{at}  {}  rollout       {}", a.rollout, a.event.text);
                        }
                        let _ = std::io::stdout().flush();
                        if let Some(cmd) = &args.exec {
                            all_ok &= hook(cmd, "", "rollout", &j);
                        }
                        continue;
                    }
                    let Some(Parsed::Device(device, DeviceLeaf::Events)) = topic::parse(&p.topic) else { continue };
                    let event: Event = match codec::decode(&p.payload) {
                        Ok(e) => e,
                        Err(e) => {
                            log::warn!("{}: {e}", p.topic);
                            continue;
                        }
                    };
                    // At-least-once delivery: a record may come twice.
                    if !seen.insert((device.as_str().to_string(), event.seq)) {
                        continue;
                    }
                    if !args.kind.is_empty() && !args.kind.iter().any(|k| k == event.kind.name()) {
                        continue;
                    }
                    let j = to_json(device.as_str(), &event);
                    if args.json {
                        println!("{j}");
                    } else {
                        println!("{}", describe(device.as_str(), &event));
                    }
                    let _ = std::io::stdout().flush();
                    if let Some(cmd) = &args.exec {
                        all_ok &= hook(cmd, device.as_str(), event.kind.name(), &j);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if !args.follow && !connected {
                        return Err(anyhow::anyhow!("{}: {e}", settings.address()));
                    }
                    log::warn!("{}: {e}", settings.address());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
    .context("drover alerts")?;
    let _ = rt.block_on(async { client.disconnect().await });
    Ok(all_ok)
}

/// Runs the hook for one event; says (on stderr) when it fails.
fn hook(cmd: &str, device: &str, kind: &str, event: &serde_json::Value) -> bool {
    let child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("DROVER_DEVICE", device)
        .env("DROVER_EVENT", kind)
        .stdin(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("drover alerts: cannot run '{cmd}': {e}");
            return false;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = writeln!(stdin, "{event}");
    }
    match child.wait() {
        Ok(s) if s.success() => true,
        Ok(s) => {
            eprintln!("drover alerts: '{cmd}' failed for {device} ({kind}): {s}");
            false
        }
        Err(e) => {
            eprintln!("drover alerts: '{cmd}': {e}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_wire::event::WindowRef;
    use drover_wire::message::ModelRef;
    use drover_wire::telemetry::Source;

    fn drift() -> Event {
        Event {
            seq: 7,
            at_ms: 1_764_572_400_000,
            model: Some(ModelRef { name: "iris".try_into().expect("name"), version: 3 }),
            kind: EventKind::Drift {
                feature: "petal_length".try_into().expect("name"),
                source: Source::Input,
                statistic: drover_wire::drift::Statistic::Psi,
                value: 0.8312,
                threshold: 0.2,
                window: WindowRef { start_ms: 0, end_ms: 1, samples: 200 },
                reference_samples: 150,
                streak: 1,
            },
        }
    }

    #[test]
    fn a_drift_alert_reads_as_one_line_with_its_evidence() {
        let line = describe("pi-03", &drift());
        assert!(line.starts_with("2025-12-01T07:00:00Z  pi-03  drift"), "{line}");
        for part in ["'petal_length'", "psi 0.831", "≥ 0.2", "200 samples", "[iris v3]"] {
            assert!(line.contains(part), "{line} lacks {part}");
        }
    }

    #[test]
    fn the_json_form_names_device_and_kind_and_keeps_the_evidence() {
        let j = to_json("pi-03", &drift());
        assert_eq!(j["device"], "pi-03");
        assert_eq!(j["kind"], "drift");
        assert_eq!(j["event"]["kind"]["drift"]["feature"], "petal_length");
        assert_eq!(j["event"]["kind"]["drift"]["statistic"], "psi");
        assert_eq!(j["event"]["seq"], 7);
    }

    #[test]
    fn a_hook_gets_the_event_on_stdin_and_its_failure_is_reported() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("got.json");
        let cmd = format!("cat > {} && test \"$DROVER_EVENT\" = drift", out.display());
        assert!(hook(&cmd, "pi-03", "drift", &to_json("pi-03", &drift())));
        let got: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).expect("hook output")).expect("json");
        assert_eq!(got["event"]["kind"]["drift"]["feature"], "petal_length");
        assert!(!hook("exit 3", "pi-03", "drift", &json!({})));
    }
}
