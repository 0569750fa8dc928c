//! The messages of Drover's MQTT protocol: presence, bundle announcements, chunks and chunk
//! requests, and the progress a device reports.
//!
//! They are bounded (heapless) so a microcontroller-class gateway can decode them, and they are
//! the only definition: the agent, the `drover` CLI and the fleet server all encode these types.

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::Arch;
use crate::manifest::{AgentVersion, MAX_NAME};

/// Most groups a device belongs to.
pub const MAX_GROUPS: usize = 8;
/// Most ranges of missing chunks in one request; a device with more gaps asks again later.
pub const MAX_WANT_RANGES: usize = 32;
/// Longest failure reason a device reports.
pub const MAX_REASON: usize = 240;

/// A SHA-256 digest. It is raw bytes in postcard and a hex string in JSON, so a human reading
/// `mosquitto_sub` output can compare it with `sha256sum`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The first 8 bytes in hex: the transfer's short id in topics and logs.
    pub fn short(&self) -> String<16> {
        let mut s = String::new();
        for b in &self.0[..8] {
            let _ = fmt::Write::write_fmt(&mut s, format_args!("{b:02x}"));
        }
        s
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        crate::hex_bytes::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        crate::hex_bytes::deserialize(d, "a SHA-256 digest").map(Digest)
    }
}

/// A model slot on a device, as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

/// A model and its version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelRef {
    /// Model name.
    pub name: String<MAX_NAME>,
    /// Version.
    pub version: u64,
}

/// Presence: a device publishes it retained when it connects and when its model changes, and the
/// broker publishes the "offline" copy (its Last Will) when the device vanishes, so the fleet
/// always knows who is online and what it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Whether the device is connected.
    pub online: bool,
    /// The agent's version.
    pub agent: AgentVersion,
    /// The device's architecture (bundles are built per architecture).
    pub arch: Arch,
    /// The groups the device belongs to (group pushes and commands reach it).
    pub groups: Vec<String<MAX_NAME>, MAX_GROUPS>,
    /// The model it serves, if any.
    pub model: Option<ModelRef>,
    /// The slot it serves from.
    pub slot: Option<Slot>,
    /// Seconds since the agent started.
    pub uptime_s: u64,
    /// Unix seconds when this status was made.
    pub at: u64,
    /// The operator's `key=value` labels from the agent's config (site, rack, customer), so a
    /// fleet view can be filtered by what groups do not say.
    pub labels: Vec<Label, MAX_LABELS>,
    /// This is the device's Last Will: written when it connected and published by the broker
    /// when it vanished, so it says only that the device is gone. Its `model`, `slot` and
    /// `uptime_s` are empty and mean nothing: the device may have installed or rolled back
    /// since it connected, and the last status it published itself still holds.
    #[serde(default)]
    pub presence_only: bool,
}

/// Most labels a device carries.
pub const MAX_LABELS: usize = 8;
/// Longest label key.
pub const MAX_LABEL_KEY: usize = 32;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 64;

/// One `key=value` label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// `[a-z0-9_.-]`, 1..=32 bytes.
    pub key: String<MAX_LABEL_KEY>,
    /// Printable, up to 64 bytes.
    pub value: String<MAX_LABEL_VALUE>,
}

/// The announcement of a bundle to a device, a group or the fleet (retained): enough for a
/// device to decide whether it wants it and to fetch it in chunks. It is not itself trusted:
/// the bundle's own signatures are checked before anything is installed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Announce {
    /// SHA-256 of the whole bundle file; it names the transfer.
    pub transfer: Digest,
    /// Model name (from the manifest).
    pub name: String<MAX_NAME>,
    /// Model version (from the manifest).
    pub version: u64,
    /// Bundle size in bytes.
    pub size: u64,
    /// Bytes per chunk (the last one may be shorter).
    pub chunk_size: u32,
    /// Unix seconds; a device ignores an announcement older than the newest it has acted on.
    pub issued_at: u64,
    /// What the device does with the bundle once it holds it.
    pub purpose: Purpose,
}

/// What a pushed bundle is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Purpose {
    /// Install it and serve it (the previous model stays as the fallback).
    #[default]
    Install,
    /// Keep it verified beside the served model, as the candidate a signed shadow or A/B command
    /// then puts to work; the served model and both slots stay as they are.
    Stage,
}

impl Announce {
    /// How many chunks the bundle is sent in.
    pub fn chunk_count(&self) -> u64 {
        if self.chunk_size == 0 { 0 } else { self.size.div_ceil(u64::from(self.chunk_size)) }
    }

    /// Byte length of chunk `index`.
    pub fn chunk_len(&self, index: u32) -> u64 {
        let start = u64::from(index) * u64::from(self.chunk_size);
        self.size.saturating_sub(start).min(u64::from(self.chunk_size))
    }
}

/// A half-open range of chunk indices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRange {
    /// First index.
    pub start: u32,
    /// One past the last index.
    pub end: u32,
}

/// Most ranges of sequence numbers in one [`Stored`].
pub const MAX_STORED_RANGES: usize = 32;

/// An inclusive range of a device's outbox sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SeqRange {
    /// First sequence number.
    pub first: u64,
    /// Last sequence number (inclusive).
    pub last: u64,
}

/// The fleet server's word to a device that these of its reports (telemetry, drift windows,
/// events, by outbox sequence number) are in the fleet's store: the device may forget them.
/// Until then it keeps them and sends them again, so a broker that acknowledged a report and
/// lost it (a restart without the fleet server's session) loses nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stored {
    /// Stored sequence numbers, as ranges.
    pub seqs: Vec<SeqRange, MAX_STORED_RANGES>,
}

impl Stored {
    /// Every `Stored` message needed to say that `seqs` (any order, repeats allowed) are stored.
    #[cfg(feature = "std")]
    pub fn covering(seqs: &mut std::vec::Vec<u64>) -> std::vec::Vec<Stored> {
        seqs.sort_unstable();
        seqs.dedup();
        let mut out = std::vec::Vec::new();
        let mut current = Stored { seqs: Vec::new() };
        for &seq in seqs.iter() {
            if let Some(last) = current.seqs.last_mut()
                && last.last.checked_add(1) == Some(seq)
            {
                last.last = seq;
                continue;
            }
            if current.seqs.push(SeqRange { first: seq, last: seq }).is_err() {
                out.push(core::mem::replace(&mut current, Stored { seqs: Vec::new() }));
                let _ = current.seqs.push(SeqRange { first: seq, last: seq });
            }
        }
        if !current.seqs.is_empty() {
            out.push(current);
        }
        out
    }

    /// Whether `seq` is among the stored.
    pub fn contains(&self, seq: u64) -> bool {
        self.seqs.iter().any(|r| r.first <= seq && seq <= r.last)
    }
}

/// A device's request for the chunks it is missing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Want {
    /// The transfer.
    pub transfer: Digest,
    /// Missing chunks, ascending.
    pub ranges: Vec<ChunkRange, MAX_WANT_RANGES>,
}

/// One piece of a bundle. The hash catches corruption in transit chunk by chunk, so only the bad
/// chunk is fetched again; the bundle digest and signatures are checked on the whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chunk<'a> {
    /// The transfer.
    pub transfer: Digest,
    /// Chunk index.
    pub index: u32,
    /// SHA-256 of `data`.
    pub sha256: Digest,
    /// The bytes.
    #[serde(borrow)]
    pub data: &'a [u8],
}

/// Which operation a progress report is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A pushed bundle.
    Bundle {
        /// The transfer (bundle digest).
        transfer: Digest,
        /// Model name.
        name: String<MAX_NAME>,
        /// Model version.
        version: u64,
        /// The announcement's `issued_at`: tells this push's reports from an earlier push's.
        issued_at: u64,
    },
    /// A signed command.
    Command {
        /// The command's sequence number.
        sequence: u64,
    },
}

/// Where an operation stands on a device.
// The failure reason is inline (no_std, no allocation); a Phase is built a few times per
// operation, so the size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Chunks arriving.
    Downloading {
        /// Chunks held.
        have: u32,
        /// Chunks in all.
        total: u32,
    },
    /// Every chunk is in: checking the bundle's digest and signatures, writing the inactive
    /// slot, self-testing, switching.
    Installing,
    /// Installed and serving from `slot`.
    Installed {
        /// The slot.
        slot: Slot,
    },
    /// The device already serves this version.
    Current,
    /// Rolled back to the model in `slot`.
    RolledBack {
        /// The slot.
        slot: Slot,
    },
    /// Verified and kept as the candidate (a [`Purpose::Stage`] push).
    Staged,
    /// The candidate runs in shadow of the served model.
    Shadowing,
    /// No candidate runs in shadow any more.
    ShadowStopped,
    /// Live traffic is split between two versions.
    Splitting,
    /// Every request goes to the served model again.
    SplitStopped,
    /// The operation failed; the device serves what it served before.
    Failed {
        /// Why, for the operator.
        reason: String<MAX_REASON>,
    },
}

impl Phase {
    /// A failure with `reason`, cut at a character boundary to fit.
    pub fn failed(reason: &str) -> Phase {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Phase::Failed { reason: String::try_from(&reason[..end]).unwrap_or_default() }
    }

    /// Whether the operation is over (nothing more will be reported for it).
    pub fn is_final(&self) -> bool {
        self.is_success() || matches!(self, Phase::Failed { .. })
    }

    /// Whether the operation is over and succeeded.
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            Phase::Installed { .. }
                | Phase::Current
                | Phase::RolledBack { .. }
                | Phase::Staged
                | Phase::Shadowing
                | Phase::ShadowStopped
                | Phase::Splitting
                | Phase::SplitStopped
        )
    }
}

/// A device's report on its latest operation (retained, so a tool that connects late sees it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Progress {
    /// The operation.
    pub op: Op,
    /// Where it stands.
    pub phase: Phase,
    /// Unix seconds.
    pub at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_arithmetic_covers_the_bundle_exactly() {
        let a = Announce {
            transfer: Digest([0; 32]),
            name: String::try_from("m").unwrap(),
            version: 1,
            size: 10_000,
            chunk_size: 4096,
            issued_at: 0,
            purpose: Purpose::Install,
        };
        assert_eq!(a.chunk_count(), 3);
        assert_eq!((a.chunk_len(0), a.chunk_len(1), a.chunk_len(2), a.chunk_len(3)), (4096, 4096, 1808, 0));
        let zero = Announce { chunk_size: 0, ..a.clone() };
        assert_eq!(zero.chunk_count(), 0);
        let exact = Announce { size: 8192, ..a };
        assert_eq!(exact.chunk_count(), 2);
    }

    #[test]
    fn failure_reasons_are_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        match Phase::failed(&long) {
            Phase::Failed { reason } => {
                assert!(reason.len() <= MAX_REASON);
                assert!(reason.chars().all(|c| c == 'é'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chunks_round_trip_through_postcard_without_copying_the_data() {
        let data = [7u8; 100];
        let c = Chunk { transfer: Digest([1; 32]), index: 9, sha256: Digest([2; 32]), data: &data };
        let mut buf = [0u8; 256];
        let bytes = postcard::to_slice(&c, &mut buf).unwrap();
        let back: Chunk<'_> = postcard::from_bytes(bytes).unwrap();
        assert_eq!(back, c);
    }
}

#[cfg(all(test, feature = "std"))]
mod stored_tests {
    use super::*;

    #[test]
    fn sequence_numbers_become_as_few_ranges_as_fit_in_messages() {
        let mut seqs = std::vec![5, 3, 4, 9, 4, 1];
        let msgs = Stored::covering(&mut seqs);
        assert_eq!(msgs.len(), 1);
        let ranges: std::vec::Vec<(u64, u64)> = msgs[0].seqs.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(ranges, std::vec![(1, 1), (3, 5), (9, 9)]);
        assert!(msgs[0].contains(4) && !msgs[0].contains(2) && !msgs[0].contains(10));
        // Every other number: one range each, 32 to a message.
        let mut sparse: std::vec::Vec<u64> = (0..100).map(|i| i * 2).collect();
        let msgs = Stored::covering(&mut sparse);
        assert_eq!(msgs.iter().map(|m| m.seqs.len()).collect::<std::vec::Vec<_>>(), std::vec![32, 32, 32, 4]);
        assert!(msgs.iter().all(|m| !m.contains(1)) && msgs.iter().any(|m| m.contains(198)));
        assert!(Stored::covering(&mut std::vec![]).is_empty());
    }
}
