//! What the fleet server takes from the broker: a device's message, decoded and checked, or a
//! clear reason why not. Pure: a topic and a payload in, a [`Record`] out, so a garbled payload
//! from one device is a counted rejection, never a crash or a half-written row.

use drover_runtime::link::codec::{self, DecodeError};
use drover_wire::event::Event;
use drover_wire::message::{Progress, Status};
use drover_wire::telemetry::{DriftWindow, Telemetry};
use drover_wire::topic::{self, DeviceLeaf, Parsed};

/// A device's message the fleet server keeps. Every variant is boxed: the messages are hundreds
/// of bytes each (heapless strings and histograms inline), and a record moves from the decoder
/// through the registry once per message.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// Presence (retained; the Last Will says offline).
    Status(Box<Status>),
    /// The latest operation and its phase (retained).
    Progress(Box<Progress>),
    /// One telemetry period.
    Telemetry(Box<Telemetry>),
    /// A closed drift window.
    Drift(Box<DriftWindow>),
    /// An alert or other event.
    Event(Box<Event>),
}

impl Record {
    /// The kind, as the ingest counters and logs name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Status(_) => "status",
            Record::Progress(_) => "progress",
            Record::Telemetry(_) => "telemetry",
            Record::Drift(_) => "drift",
            Record::Event(_) => "event",
        }
    }

    /// Its place in the device's outbox, for the reports that come through it (telemetry,
    /// drift windows, events): what the server names when it says it stored them.
    pub fn outbox_seq(&self) -> Option<u64> {
        match self {
            Record::Telemetry(t) => Some(t.seq),
            Record::Drift(w) => Some(w.seq),
            Record::Event(e) => Some(e.seq),
            Record::Status(_) | Record::Progress(_) => None,
        }
    }
}

/// A message the server refused.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The topic is not a device topic the server reads.
    #[error("topic '{0}' is not a device's status, progress, telemetry, drift or events topic")]
    Topic(String),
    /// The payload did not decode as the topic's message.
    #[error("{topic}: {source}")]
    Payload {
        /// Where it came from.
        topic: String,
        /// Why it did not decode.
        source: DecodeError,
    },
}

/// The default shared-subscription group fleet servers split the device reports in
/// (`$share/GROUP/…`): every server of a fleet, and every ingest connection of one server, takes
/// its part. Anyone who may subscribe can join a group, and Mosquitto's ACL file checks reads
/// only at delivery: a device in the group takes its turn and the report it may not read is lost
/// to the servers. Where devices share the broker, the group's name is a secret (`--share-group`).
pub const SHARE_GROUP: &str = "drover-fleet";

/// The retained leaves, read whole by every server on one connection: the broker keeps the
/// latest for a server that subscribes later (retained messages never go to shared
/// subscriptions), and their order matters (a device's online then offline).
const PRESENCE: [DeviceLeaf; 2] = [DeviceLeaf::Status, DeviceLeaf::Progress];

/// The report streams, the bulk of the traffic, dealt out across the servers' ingest
/// connections: each report goes to one of them (the registry takes a device's reports in any
/// order, see [`super::registry::Mark`]).
const STREAMS: [DeviceLeaf; 3] = [DeviceLeaf::Telemetry, DeviceLeaf::Drift, DeviceLeaf::Events];

/// The filters of the presence connection (see [`PRESENCE`]).
pub fn presence_filters() -> Vec<String> {
    PRESENCE.into_iter().map(|leaf| topic::every_device(leaf).to_string()).collect()
}

/// The filters of the ingest connections (see [`STREAMS`]) in the shared-subscription `group`
/// (see [`SHARE_GROUP`]).
pub fn stream_filters(group: &str) -> Vec<String> {
    STREAMS.into_iter().map(|leaf| format!("$share/{group}/{}", topic::every_device(leaf))).collect()
}

/// The filters of a single ingest connection that reads every report itself.
pub fn plain_stream_filters() -> Vec<String> {
    STREAMS.into_iter().map(|leaf| topic::every_device(leaf).to_string()).collect()
}

/// Every topic the server reads, unshared: what one plain subscriber reads to see all the
/// servers of a fleet see (a benchmark's baseline, `mosquitto_sub` when debugging).
pub fn filters() -> Vec<String> {
    [presence_filters(), plain_stream_filters()].concat()
}

/// Decodes a message: the device it is about and the record. An empty payload on a retained
/// topic (a cleared retained message) is `Ok(None)`.
pub fn decode(topic_name: &str, payload: &[u8]) -> Result<Option<(String, Record)>, RecordError> {
    let Some(Parsed::Device(device, leaf)) = topic::parse(topic_name) else {
        return Err(RecordError::Topic(topic_name.to_string()));
    };
    if payload.is_empty() && matches!(leaf, DeviceLeaf::Status | DeviceLeaf::Progress) {
        return Ok(None);
    }
    let bad = |source| RecordError::Payload { topic: topic_name.to_string(), source };
    let record = match leaf {
        DeviceLeaf::Status => Record::Status(Box::new(codec::decode(payload).map_err(bad)?)),
        DeviceLeaf::Progress => Record::Progress(Box::new(codec::decode(payload).map_err(bad)?)),
        DeviceLeaf::Telemetry => Record::Telemetry(Box::new(codec::decode(payload).map_err(bad)?)),
        DeviceLeaf::Drift => Record::Drift(Box::new(codec::decode(payload).map_err(bad)?)),
        DeviceLeaf::Events => Record::Event(Box::new(codec::decode(payload).map_err(bad)?)),
        _ => return Err(RecordError::Topic(topic_name.to_string())),
    };
    Ok(Some((device.as_str().to_string(), record)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use drover_runtime::link::codec::PayloadFormat;
    use drover_wire::Arch;
    use drover_wire::manifest::AgentVersion;

    pub(crate) fn status(online: bool) -> Status {
        Status {
            online,
            agent: AgentVersion { major: 0, minor: 1, patch: 0 },
            arch: Arch::Aarch64,
            groups: heapless::Vec::new(),
            model: None,
            slot: None,
            uptime_s: 5,
            at: 1_700_000_000,
            labels: heapless::Vec::new(),
            presence_only: false,
        }
    }

    #[test]
    fn both_encodings_decode_and_the_device_comes_from_the_topic() {
        for format in [PayloadFormat::Postcard, PayloadFormat::Json] {
            let payload = codec::encode(format, &status(true));
            let (device, record) = decode("drover/v1/dev/pi-7/status", &payload).expect("decodes").expect("a record");
            assert_eq!(device, "pi-7");
            assert_eq!(record, Record::Status(Box::new(status(true))));
        }
    }

    #[test]
    fn garbled_truncated_and_foreign_messages_are_refused_with_the_topic() {
        let payload = codec::encode(PayloadFormat::Postcard, &status(true));
        let truncated = decode("drover/v1/dev/pi-7/status", &payload[..payload.len() - 3]);
        assert!(matches!(truncated, Err(RecordError::Payload { .. })), "{truncated:?}");
        let garbled = decode("drover/v1/dev/pi-7/telemetry", b"\xd1\xff\xff\xff\xff\xff\xff");
        assert!(garbled.unwrap_err().to_string().starts_with("drover/v1/dev/pi-7/telemetry: "));
        assert!(matches!(decode("drover/v1/dev/pi-7/want", &payload), Err(RecordError::Topic(_))));
        assert!(matches!(decode("drover/v1/dev/bad+id/status", &payload), Err(RecordError::Topic(_))));
        assert!(matches!(decode("other/topic", &payload), Err(RecordError::Topic(_))));
        assert!(matches!(decode("drover/v1/dev/pi-7/status", b""), Ok(None)), "a cleared retained status");
    }

    #[test]
    fn the_filters_cover_every_leaf_the_decoder_reads() {
        let (presence, streams) = (presence_filters(), stream_filters(SHARE_GROUP));
        assert_eq!((presence.len(), streams.len(), filters().len()), (2, 3, 5));
        assert_eq!([presence.clone(), plain_stream_filters()].concat(), filters());
        assert!(presence.iter().all(|t| t.starts_with("drover/v1/dev/+/")));
        assert!(streams.iter().all(|t| t.starts_with("$share/drover-fleet/drover/v1/dev/+/")));
        for (filter, topic) in presence.iter().chain(&streams).zip([
            "drover/v1/dev/pi-7/status",
            "drover/v1/dev/pi-7/progress",
            "drover/v1/dev/pi-7/telemetry",
            "drover/v1/dev/pi-7/drift",
            "drover/v1/dev/pi-7/events",
        ]) {
            assert!(filter.ends_with(topic.rsplit('/').next().expect("a leaf")), "{filter} reads {topic}");
            assert!(!matches!(decode(topic, b"\xd1"), Err(RecordError::Topic(_))), "the decoder reads {topic}");
        }
    }
}
