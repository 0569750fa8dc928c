//! `drover decode --topic T [FILE]` and `drover watch`: any Drover payload as JSON, so the
//! compact postcard traffic of a fleet can be read by people and scripts.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use drover_runtime::link::codec::{self, DecodeError};
use drover_wire::command::SignedCommand;
use drover_wire::event::{Event, Feedback};
use drover_wire::message::{Announce, Chunk, Progress, Status, Stored, Want};
use drover_wire::telemetry::{DriftWindow, Telemetry};
use drover_wire::topic::{self, DeviceLeaf, GroupLeaf, Parsed};
use serde_json::{Value, json};

use super::broker_args::BrokerArgs;

/// Arguments of `drover decode`.
#[derive(Debug, clap::Args)]
pub struct DecodeArgs {
    /// The topic the payload came from (it decides the message type).
    #[arg(long)]
    pub topic: String,
    /// The payload file; standard input when absent or `-`.
    pub file: Option<PathBuf>,
}

/// Decodes a payload of `topic` to JSON. A cleared retained message is `null`.
pub fn to_json(topic_str: &str, payload: &[u8]) -> anyhow::Result<Value> {
    fn j<T: serde::Serialize>(r: Result<T, DecodeError>) -> anyhow::Result<Value> {
        match r {
            Ok(v) => Ok(serde_json::to_value(v)?),
            Err(DecodeError::Empty) => Ok(Value::Null),
            Err(e) => Err(e.into()),
        }
    }
    let parsed = topic::parse(topic_str).ok_or_else(|| anyhow::anyhow!("'{topic_str}' is not a Drover topic"))?;
    match parsed {
        Parsed::Device(_, DeviceLeaf::Status) => j(codec::decode::<Status>(payload)),
        Parsed::Device(_, DeviceLeaf::Progress) => j(codec::decode::<Progress>(payload)),
        Parsed::Device(_, DeviceLeaf::Want) => j(codec::decode::<Want>(payload)),
        Parsed::Device(_, DeviceLeaf::Bundle)
        | Parsed::Group(_, GroupLeaf::Bundle)
        | Parsed::Fleet(GroupLeaf::Bundle) => j(codec::decode::<Announce>(payload)),
        Parsed::Device(_, DeviceLeaf::Cmd) | Parsed::Group(_, GroupLeaf::Cmd) | Parsed::Fleet(GroupLeaf::Cmd) => {
            j(codec::decode::<SignedCommand>(payload))
        }
        Parsed::Chunk(_) | Parsed::Device(_, DeviceLeaf::Chunk) => {
            let c: Chunk<'_> = codec::decode(payload)?;
            Ok(
                json!({"transfer": c.transfer.to_string(), "index": c.index, "sha256": c.sha256.to_string(), "bytes": c.data.len()}),
            )
        }
        Parsed::Device(_, DeviceLeaf::Telemetry) => j(codec::decode::<Telemetry>(payload)),
        Parsed::Device(_, DeviceLeaf::Drift) => j(codec::decode::<DriftWindow>(payload)),
        Parsed::Device(_, DeviceLeaf::Events) => j(codec::decode::<Event>(payload)),
        Parsed::Device(_, DeviceLeaf::Feedback) => j(codec::decode::<Feedback>(payload)),
        Parsed::Device(_, DeviceLeaf::Stored) => j(codec::decode::<Stored>(payload)),
        // The fleet server writes these in JSON, for people and scripts.
        Parsed::Rollout(_) => Ok(serde_json::from_slice(payload)?),
    }
}

/// Prints the payload as pretty JSON.
pub fn run(args: &DecodeArgs) -> anyhow::Result<()> {
    let mut payload = Vec::new();
    match &args.file {
        Some(p) if p.as_os_str() != "-" => {
            payload = std::fs::read(p).with_context(|| format!("read {}", p.display()))?;
        }
        _ => {
            std::io::stdin().read_to_end(&mut payload).context("read standard input")?;
        }
    }
    let v = to_json(&args.topic, &payload).with_context(|| format!("decode a payload of {}", args.topic))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// Arguments of `drover watch`.
#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Topic filter.
    #[arg(long, default_value = "drover/#")]
    pub filter: String,
    /// Stop after this many messages (0: never).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// The broker.
    #[command(flatten)]
    pub broker: BrokerArgs,
}

/// Prints every Drover message as one JSON line: `{"topic": …, "retained": …, "message": …}`.
pub fn watch(args: &WatchArgs) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, Packet, QoS};
    let settings = args.broker.settings()?;
    let id = format!("drover-watch-{}", std::process::id());
    let (client, mut eventloop) = AsyncClient::new(settings.mqtt_options(&id, true)?, 16);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut seen = 0u64;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    client.subscribe(args.filter.as_str(), QoS::AtLeastOnce).await?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let message = to_json(&p.topic, &p.payload).unwrap_or_else(|e| json!({"error": e.to_string()}));
                    println!("{}", json!({"topic": p.topic, "retained": p.retain, "message": message}));
                    seen += 1;
                    if args.count > 0 && seen >= args.count {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("{}: {e}", settings.address());
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_runtime::link::PayloadFormat;
    use drover_wire::message::{Digest, Op, Phase};

    #[test]
    fn payloads_decode_by_topic_in_either_format() {
        let p = Progress {
            op: Op::Bundle { transfer: Digest([7; 32]), name: "iris".try_into().unwrap(), version: 3, issued_at: 1 },
            phase: Phase::Downloading { have: 1, total: 4 },
            at: 5,
        };
        for f in [PayloadFormat::Postcard, PayloadFormat::Json] {
            let v = to_json("drover/v1/dev/pi-1/progress", &codec::encode(f, &p)).unwrap();
            assert_eq!(v["phase"]["Downloading"]["total"], 4);
            assert_eq!(v["op"]["Bundle"]["transfer"], "07".repeat(32));
        }
        assert_eq!(to_json("drover/v1/grp/lab/bundle", b"").unwrap(), Value::Null);
        assert!(to_json("drover/v1/dev/pi-1/status", b"\xd1\x05").is_err());
        assert!(to_json("not/drover", b"{}").unwrap_err().to_string().contains("not a Drover topic"));
    }
}
