//! The MQTT topic tree, version 1 (`docs/topics.md` is the operator's view of it).
//!
//! Every topic is built and parsed here, and nowhere else, so the agent, the CLI and the fleet
//! server cannot disagree on a level. Device ids and group names become topic levels, so they
//! are checked with [`is_valid_name`] wherever they enter: a `+`, `#`, `/` or NUL in an id would
//! let one device subscribe to, or publish as, another.

use core::fmt::Write;

use heapless::String;

use crate::manifest::{MAX_NAME, is_valid_name};

/// The root of every Drover topic; the version is bumped if the tree ever changes shape.
pub const ROOT: &str = "drover/v1";
/// Longest topic this module builds (root, kind, a name, a leaf).
pub const MAX_TOPIC: usize = 128;

/// A topic string.
pub type Topic = String<MAX_TOPIC>;

/// A device id or group name that is safe as a topic level.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String<MAX_NAME>);

/// Why a name cannot be a device id or group name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadName;

impl core::fmt::Display for BadName {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a device id or group name is 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit")
    }
}

impl Name {
    /// Checks `s` and keeps it.
    pub fn new(s: &str) -> Result<Name, BadName> {
        if !is_valid_name(s) {
            return Err(BadName);
        }
        String::try_from(s).map(Name).map_err(|_| BadName)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a per-device topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceLeaf {
    /// Presence, retained, with the Last Will "offline" ([`crate::message::Status`]).
    Status,
    /// The device's latest operation and where it stands, retained ([`crate::message::Progress`]).
    Progress,
    /// Chunk requests from the device to whoever sends a bundle ([`crate::message::Want`]).
    Want,
    /// Signed commands for this device ([`crate::command::SignedCommand`]).
    Cmd,
    /// A bundle announced to this device alone, retained ([`crate::message::Announce`]).
    Bundle,
    /// Periodic telemetry, through the device's outbox ([`crate::telemetry::Telemetry`]).
    Telemetry,
    /// Alerts and other events, through the outbox ([`crate::event::Event`]).
    Events,
    /// Closed drift windows with their mergeable sketches, through the outbox
    /// ([`crate::telemetry::DriftWindow`]).
    Drift,
    /// Ground-truth labels for earlier predictions, to the device ([`crate::event::Feedback`]).
    Feedback,
    /// Chunks of a transfer sent to this device alone ([`crate::message::Chunk`]): what it
    /// missed of the chunks published to every device, so that one late device costs one copy,
    /// not one for every device of the transfer.
    Chunk,
    /// Which of the device's reports the fleet server has stored ([`crate::message::Stored`]):
    /// the end-to-end acknowledgement after which the device forgets them. A broker's PUBACK
    /// only says the broker has a report; one that restarted without the fleet's session
    /// acknowledges and then drops it.
    Stored,
}

impl DeviceLeaf {
    /// Every leaf, so tools that reason over the whole tree (the broker's access rules) see a
    /// new one.
    pub const ALL: [DeviceLeaf; 11] = [
        DeviceLeaf::Status,
        DeviceLeaf::Progress,
        DeviceLeaf::Want,
        DeviceLeaf::Cmd,
        DeviceLeaf::Bundle,
        DeviceLeaf::Telemetry,
        DeviceLeaf::Events,
        DeviceLeaf::Drift,
        DeviceLeaf::Feedback,
        DeviceLeaf::Chunk,
        DeviceLeaf::Stored,
    ];

    /// The topic level.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeviceLeaf::Status => "status",
            DeviceLeaf::Progress => "progress",
            DeviceLeaf::Want => "want",
            DeviceLeaf::Cmd => "cmd",
            DeviceLeaf::Bundle => "bundle",
            DeviceLeaf::Telemetry => "telemetry",
            DeviceLeaf::Events => "events",
            DeviceLeaf::Drift => "drift",
            DeviceLeaf::Feedback => "feedback",
            DeviceLeaf::Chunk => "chunk",
            DeviceLeaf::Stored => "stored",
        }
    }

    /// Whether the device publishes this topic (its reports) rather than receives it (what is
    /// sent to it): the broker's access rules let a device write exactly these of its own.
    pub const fn from_device(self) -> bool {
        match self {
            DeviceLeaf::Status
            | DeviceLeaf::Progress
            | DeviceLeaf::Want
            | DeviceLeaf::Telemetry
            | DeviceLeaf::Events
            | DeviceLeaf::Drift => true,
            DeviceLeaf::Cmd | DeviceLeaf::Bundle | DeviceLeaf::Feedback | DeviceLeaf::Chunk | DeviceLeaf::Stored => {
                false
            }
        }
    }
}

/// What a group (or fleet-wide) topic carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupLeaf {
    /// A bundle announced to the group, retained.
    Bundle,
    /// Signed commands for the group.
    Cmd,
}

impl GroupLeaf {
    /// Every leaf.
    pub const ALL: [GroupLeaf; 2] = [GroupLeaf::Bundle, GroupLeaf::Cmd];

    /// The topic level.
    pub const fn as_str(self) -> &'static str {
        match self {
            GroupLeaf::Bundle => "bundle",
            GroupLeaf::Cmd => "cmd",
        }
    }

    fn parse(s: &str) -> Option<GroupLeaf> {
        match s {
            "bundle" => Some(GroupLeaf::Bundle),
            "cmd" => Some(GroupLeaf::Cmd),
            _ => None,
        }
    }
}

/// A Drover topic, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Parsed {
    /// `drover/v1/dev/{device}/{leaf}`.
    Device(Name, DeviceLeaf),
    /// `drover/v1/grp/{group}/{leaf}`.
    Group(Name, GroupLeaf),
    /// `drover/v1/fleet/{leaf}`: every device.
    Fleet(GroupLeaf),
    /// `drover/v1/xfer/{transfer}/chunk`: the chunks of one bundle transfer.
    Chunk(String<16>),
    /// `drover/v1/rollout/{id}/event`: a staged rollout's steps, from the fleet server.
    Rollout(Name),
}

fn build(parts: &[&str]) -> Topic {
    let mut t = Topic::new();
    // Every part is a checked name (≤ 64) or a constant; the total stays under MAX_TOPIC.
    let _ = t.push_str(ROOT);
    for p in parts {
        let _ = t.push('/');
        let _ = t.push_str(p);
    }
    t
}

/// `drover/v1/dev/{device}/{leaf}`.
pub fn device(device: &Name, leaf: DeviceLeaf) -> Topic {
    build(&["dev", device.as_str(), leaf.as_str()])
}

/// `drover/v1/grp/{group}/{leaf}`.
pub fn group(group: &Name, leaf: GroupLeaf) -> Topic {
    build(&["grp", group.as_str(), leaf.as_str()])
}

/// `drover/v1/fleet/{leaf}`.
pub fn fleet(leaf: GroupLeaf) -> Topic {
    build(&["fleet", leaf.as_str()])
}

/// `drover/v1/xfer/{transfer}/chunk`, where `transfer` is the short id of a bundle's digest.
pub fn chunks(transfer: &crate::message::Digest) -> Topic {
    let mut id = String::<16>::new();
    for b in &transfer.0[..8] {
        let _ = write!(id, "{b:02x}");
    }
    build(&["xfer", &id, "chunk"])
}

/// `drover/v1/rollout/{id}/event`: where the fleet server tells each step of a rollout.
pub fn rollout_events(id: &Name) -> Topic {
    build(&["rollout", id.as_str(), "event"])
}

/// `drover/v1/rollout/+/event`: every rollout's steps, for `drover alerts`.
pub fn every_rollout() -> Topic {
    build(&["rollout", "+", "event"])
}

/// `drover/v1/dev/+/{leaf}`: one leaf of every device, for the operator's tools.
pub fn every_device(leaf: DeviceLeaf) -> Topic {
    build(&["dev", "+", leaf.as_str()])
}

/// `drover/v1/grp/+/{leaf}`: one leaf of every group, for the broker's operator rules.
pub fn every_group(leaf: GroupLeaf) -> Topic {
    build(&["grp", "+", leaf.as_str()])
}

/// `drover/v1/xfer/+/chunk`: the chunks of every transfer (a device reads those of whatever
/// transfer it runs, which the broker's rules cannot know in advance).
pub fn every_chunk() -> Topic {
    build(&["xfer", "+", "chunk"])
}

/// Parses a Drover topic; `None` for anything else (another application, a malformed level).
pub fn parse(topic: &str) -> Option<Parsed> {
    let rest = topic.strip_prefix(ROOT)?.strip_prefix('/')?;
    let mut levels = rest.split('/');
    let kind = levels.next()?;
    let parsed = match kind {
        "dev" => {
            let name = Name::new(levels.next()?).ok()?;
            let leaf = levels.next()?;
            let leaf = DeviceLeaf::ALL.into_iter().find(|l| l.as_str() == leaf)?;
            Parsed::Device(name, leaf)
        }
        "grp" => {
            let name = Name::new(levels.next()?).ok()?;
            Parsed::Group(name, GroupLeaf::parse(levels.next()?)?)
        }
        "fleet" => Parsed::Fleet(GroupLeaf::parse(levels.next()?)?),
        "rollout" => {
            let id = Name::new(levels.next()?).ok()?;
            if levels.next()? != "event" {
                return None;
            }
            Parsed::Rollout(id)
        }
        "xfer" => {
            let id = levels.next()?;
            if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) || levels.next()? != "chunk" {
                return None;
            }
            Parsed::Chunk(String::try_from(id).ok()?)
        }
        _ => return None,
    };
    levels.next().is_none().then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_break_the_topic_tree_are_refused() {
        for bad in ["", "a/b", "+", "#", "pi+1", "pi#", "a\0b", "$SYS", "..", "-x", "a b", "é"] {
            assert_eq!(Name::new(bad), Err(BadName), "{bad:?}");
        }
        let long = "a".repeat(65);
        assert!(Name::new(&long).is_err());
        for good in ["pi-1", "lab", "jetson_07", "a.b"] {
            assert_eq!(Name::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn every_built_topic_parses_back() {
        let pi = Name::new("pi-1").unwrap();
        let lab = Name::new("lab").unwrap();
        for leaf in DeviceLeaf::ALL {
            let t = device(&pi, leaf);
            assert_eq!(parse(&t), Some(Parsed::Device(pi.clone(), leaf)), "{t}");
        }
        for leaf in [GroupLeaf::Bundle, GroupLeaf::Cmd] {
            assert_eq!(parse(&group(&lab, leaf)), Some(Parsed::Group(lab.clone(), leaf)));
            assert_eq!(parse(&fleet(leaf)), Some(Parsed::Fleet(leaf)));
            let id = Name::new("iris-v2-1").expect("id");
            assert_eq!(parse(&rollout_events(&id)), Some(Parsed::Rollout(id)));
            assert_eq!(parse("drover/v1/rollout/iris-v2-1/other"), None);
        }
        let d = crate::message::Digest([0xab; 32]);
        assert_eq!(chunks(&d).as_str(), "drover/v1/xfer/abababababababab/chunk");
        assert_eq!(parse(&chunks(&d)), Some(Parsed::Chunk(String::try_from("abababababababab").unwrap())));
        assert_eq!(device(&pi, DeviceLeaf::Status).as_str(), "drover/v1/dev/pi-1/status");
        assert_eq!(every_group(GroupLeaf::Cmd).as_str(), "drover/v1/grp/+/cmd");
        assert_eq!(every_chunk().as_str(), "drover/v1/xfer/+/chunk");
    }

    #[test]
    fn foreign_and_malformed_topics_are_not_parsed() {
        for t in [
            "drover/v2/dev/pi/status",
            "drover/v1/dev/pi/status/extra",
            "drover/v1/dev/pi+/status",
            "drover/v1/dev/pi/unknown",
            "drover/v1/dev//status",
            "drover/v1/xfer/zz/chunk",
            "drover/v1/xfer/abababababababab/other",
            "drover/v1/fleet",
            "drover/v1",
            "other/v1/dev/pi/status",
        ] {
            assert_eq!(parse(t), None, "{t}");
        }
    }
}
