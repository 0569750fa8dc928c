//! `GET /metrics`: the fleet in the Prometheus text exposition format (version 0.0.4), rendered
//! from a snapshot of the registry at each scrape. The figures are the devices' own reports, not
//! counters this process increments, so they are written out directly rather than kept in a
//! metrics registry.
//!
//! Label cardinality is bounded: per-device series carry only `device` (plus `quantile` or `kind`
//! from a fixed set); model, version and groups appear on one `drover_device_info` series per
//! device and on the fleet gauges, which have one series per model version. With D devices and
//! V versions in service and G groups: at most 21·D + 4·V + G·V + a few series.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::drift::MergedDrift;
use super::registry::Device;

/// Counts of the server's own ingest, for its series.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingest {
    /// Messages stored: taken into the registry, their changes pending or written.
    pub stored: u64,
    /// Of those, the messages whose changes are written (and so acknowledged to the broker): what
    /// a restarted server still has. `stored - written` is what waits for the next batch.
    pub written: u64,
    /// Messages refused (bad topic or payload).
    pub rejected: u64,
    /// Messages recognised as repeated deliveries.
    pub repeated: u64,
}

/// A rollout's stage, for `drover_rollout_stage`.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutStage {
    /// Rollout id.
    pub id: String,
    /// Stage index (0 = first), or -1 once halted.
    pub stage: i64,
}

/// Renders the exposition.
pub fn render<'a>(
    devices: impl Iterator<Item = &'a Device>,
    ingest: Ingest,
    rollouts: &[RolloutStage],
    drift: &[MergedDrift],
    drives_rollouts: bool,
) -> String {
    let devices: Vec<&Device> = devices.collect();
    let mut out = Out::default();

    let mut by_version: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for d in &devices {
        let key = (d.model.clone().unwrap_or_default(), d.version.map(|v| v.to_string()).unwrap_or_default());
        let e = by_version.entry(key).or_default();
        if d.online {
            e.0 += 1;
        } else {
            e.1 += 1;
        }
    }
    out.family(
        "drover_fleet_devices",
        "gauge",
        "Devices known to the fleet server, by presence and served model version.",
    );
    for ((model, version), (online, offline)) in &by_version {
        for (state, n) in [("online", online), ("offline", offline)] {
            out.sample("drover_fleet_devices", &[("state", state), ("model", model), ("version", version)], *n as f64);
        }
    }

    out.family("drover_device_up", "gauge", "1 while the device is connected (its presence), else 0.");
    for d in &devices {
        out.sample("drover_device_up", &[("device", &d.id)], f64::from(u8::from(d.online)));
    }
    out.family("drover_device_info", "gauge", "Always 1: the device's agent, architecture, groups and served model.");
    for d in &devices {
        let version = d.version.map(|v| v.to_string()).unwrap_or_default();
        let labels: Vec<String> = d.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = labels.join(",");
        let labels = [
            ("device", d.id.as_str()),
            ("agent", d.agent.as_deref().unwrap_or("")),
            ("arch", d.arch.as_deref().unwrap_or("")),
            ("groups", &d.groups.join(",")),
            ("labels", &labels),
            ("model", d.model.as_deref().unwrap_or("")),
            ("version", &version),
            ("slot", d.slot.as_deref().unwrap_or("")),
        ];
        out.sample("drover_device_info", &labels, 1.0);
    }
    out.family("drover_device_last_seen_seconds", "gauge", "Unix time of the device's latest message.");
    for d in &devices {
        out.sample("drover_device_last_seen_seconds", &[("device", &d.id)], d.last_seen_ms as f64 / 1000.0);
    }
    out.family(
        "drover_device_inferences_total",
        "counter",
        "Inferences the device answered, since the server first saw it.",
    );
    for d in &devices {
        out.sample("drover_device_inferences_total", &[("device", &d.id)], d.totals.inferences as f64);
    }
    out.family("drover_device_errors_total", "counter", "Requests the device did not answer, by kind.");
    for d in &devices {
        let t = &d.totals;
        for (kind, n) in [
            ("input", t.input_errors),
            ("engine", t.engine_errors),
            ("busy", t.busy_errors),
            ("no_model", t.no_model_errors),
        ] {
            out.sample("drover_device_errors_total", &[("device", &d.id), ("kind", kind)], n as f64);
        }
    }
    out.family(
        "drover_device_latency_seconds",
        "summary",
        "Inference latency with queueing: quantiles of the latest busy period; count and sum since first seen.",
    );
    for d in &devices {
        if let Some(l) = &d.latency_us {
            for (q, us) in [("0.5", l.p50), ("0.9", l.p90), ("0.99", l.p99)] {
                let labels = [("device", d.id.as_str()), ("quantile", q)];
                out.sample("drover_device_latency_seconds", &labels, f64::from(us) / 1e6);
            }
        }
        let labels = [("device", d.id.as_str())];
        out.sample("drover_device_latency_seconds_sum", &labels, d.totals.latency_sum_us as f64 / 1e6);
        out.sample("drover_device_latency_seconds_count", &labels, d.totals.latency_count as f64);
    }
    out.family(
        "drover_device_drift_score",
        "gauge",
        "Largest PSI over the features of the device's latest judged drift window.",
    );
    for d in &devices {
        if let Some(w) = &d.drift {
            out.sample("drover_device_drift_score", &[("device", &d.id)], w.score);
        }
    }
    out.family(
        "drover_device_drifted_features",
        "gauge",
        "Features that drifted in the device's latest judged window.",
    );
    for d in &devices {
        if let Some(w) = &d.drift {
            out.sample("drover_device_drifted_features", &[("device", &d.id)], w.drifted.len() as f64);
        }
    }
    let gauges: [Gauge; 6] = [
        ("drover_device_cpu_ratio", "CPU busy over the latest period, share of all cores.", |d| {
            d.last.as_ref()?.cpu_pct.map(|c| f64::from(c) / 100.0)
        }),
        ("drover_device_memory_used_bytes", "Host memory in use.", |d| {
            d.last.as_ref().map(|p| p.mem_used_kib as f64 * 1024.0)
        }),
        ("drover_device_agent_resident_bytes", "The agent's resident set.", |d| {
            d.last.as_ref().map(|p| p.rss_kib as f64 * 1024.0)
        }),
        ("drover_device_temperature_celsius", "Hottest thermal zone.", |d| d.last.as_ref()?.temp_c.map(f64::from)),
        ("drover_device_outbox_queued", "Reports waiting in the device's store-and-forward queue.", |d| {
            d.last.as_ref().map(|p| f64::from(p.outbox_queued))
        }),
        (
            "drover_device_shadow_agreement_ratio",
            "Top-1 agreement of the shadow candidate over the latest period.",
            |d| d.last.as_ref()?.shadow_agreement,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        for d in &devices {
            if let Some(v) = value(d) {
                out.sample(name, &[("device", &d.id)], v);
            }
        }
    }

    out.family(
        "drover_fleet_drift_score",
        "gauge",
        "Largest PSI over the features of every device's latest window, merged per model version.",
    );
    for m in drift.iter().filter(|m| m.group.is_none()) {
        let version = m.version.to_string();
        out.sample("drover_fleet_drift_score", &[("model", &m.model), ("version", &version)], m.score);
    }
    out.family(
        "drover_fleet_drifted_features",
        "gauge",
        "Features that drifted in the merged windows of a model version.",
    );
    for m in drift.iter().filter(|m| m.group.is_none()) {
        let version = m.version.to_string();
        let n = m.features.iter().filter(|f| f.drifted.is_some()).count();
        out.sample("drover_fleet_drifted_features", &[("model", &m.model), ("version", &version)], n as f64);
    }
    out.family("drover_group_drift_score", "gauge", "The merged drift score of one group's devices.");
    for m in drift {
        if let Some(g) = &m.group {
            let version = m.version.to_string();
            let labels = [("group", g.as_str()), ("model", &m.model), ("version", &version)];
            out.sample("drover_group_drift_score", &labels, m.score);
        }
    }

    out.family("drover_rollout_stage", "gauge", "The stage a rollout is at (0 = first); -1 once halted.");
    for r in rollouts {
        out.sample("drover_rollout_stage", &[("rollout", &r.id)], r.stage as f64);
    }
    out.family(
        "drover_fleet_rollout_driver",
        "gauge",
        "1 while this fleet server drives the rollouts: of the servers sharing a database, exactly one should.",
    );
    out.sample("drover_fleet_rollout_driver", &[], f64::from(u8::from(drives_rollouts)));
    out.family("drover_fleet_ingest_messages_total", "counter", "Device messages the fleet server took, by outcome.");
    for (outcome, n) in [("stored", ingest.stored), ("rejected", ingest.rejected), ("repeated", ingest.repeated)] {
        out.sample("drover_fleet_ingest_messages_total", &[("outcome", outcome)], n as f64);
    }
    out.family(
        "drover_fleet_ingest_unwritten_messages",
        "gauge",
        "Stored messages whose changes wait for the next database write (not yet acknowledged).",
    );
    out.sample("drover_fleet_ingest_unwritten_messages", &[], ingest.stored.saturating_sub(ingest.written) as f64);
    out.text
}

/// A per-device gauge: name, help, and its value for a device (none: no sample).
type Gauge = (&'static str, &'static str, fn(&Device) -> Option<f64>);

#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", escape(v));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", number(value));
    }
}

/// Label values escape backslash, double quote and newline (the format's only escapes).
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::registry::Registry;
    use crate::fleet::registry::tests::{status, telemetry};

    #[test]
    fn the_exposition_has_one_series_per_device_and_version_with_escaped_labels() {
        let mut r = Registry::default();
        r.apply(1, "pi-1", &status(true, Some(3)));
        r.apply(2, "pi-1", &telemetry(1, 10_000, 100));
        r.apply(3, "pi-2", &status(false, Some(2)));
        let text = render(r.devices(), Ingest { stored: 3, written: 1, rejected: 1, repeated: 0 }, &[], &[], true);
        assert!(text.contains("drover_fleet_devices{state=\"online\",model=\"iris\",version=\"3\"} 1\n"), "{text}");
        assert!(text.contains("drover_fleet_devices{state=\"offline\",model=\"iris\",version=\"2\"} 1\n"));
        assert!(text.contains("drover_device_up{device=\"pi-2\"} 0\n"));
        assert!(text.contains(r#"groups="lab",labels="site=berlin \"north\"",model="iris""#), "{text}");
        assert!(text.contains("drover_device_inferences_total{device=\"pi-1\"} 100\n"));
        assert!(text.contains("drover_device_errors_total{device=\"pi-1\",kind=\"busy\"} 2\n"));
        assert!(text.contains("drover_device_latency_seconds{device=\"pi-1\",quantile=\"0.5\"} 0.0005"), "{text}");
        assert!(text.contains("drover_fleet_ingest_messages_total{outcome=\"rejected\"} 1\n"));
        assert!(text.contains("# TYPE drover_device_latency_seconds summary\n"));
        assert!(text.contains("drover_device_latency_seconds_count{device=\"pi-1\"} 100\n"), "{text}");
        // 1..=100 × 10 µs: 50 500 µs.
        assert!(text.contains("drover_device_latency_seconds_sum{device=\"pi-1\"} 0.0505\n"), "{text}");
        assert!(text.contains("drover_fleet_ingest_unwritten_messages 2\n"), "{text}");
        assert!(text.contains("drover_fleet_rollout_driver 1\n"), "{text}");
        assert_eq!(text.matches("# TYPE drover_device_up gauge").count(), 1);
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!((number(f64::NAN), number(f64::INFINITY), number(2.5)), ("NaN".into(), "+Inf".into(), "2.5".into()));
    }
}
