//! Signed operator commands: the orders that change a device (install, rollback), bound to
//! their target and numbered so that a captured command cannot be replayed.

use heapless::String;
use serde::{Deserialize, Serialize};

use crate::manifest::MAX_NAME;
use crate::trust::{Signature, SignedDelegation};

/// Context tag of commands.
pub const CONTEXT_COMMAND: &[u8] = b"drover/command/v1\0";

/// Who a command is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Target {
    /// One device, by id.
    Device(String<MAX_NAME>),
    /// Every device of a group.
    Group(String<MAX_NAME>),
}

impl Target {
    /// The device or group name.
    pub fn name(&self) -> &str {
        match self {
            Target::Device(n) | Target::Group(n) => n,
        }
    }
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Operation {
    /// Install this version of this model (the bundle itself is verified on its own).
    Install {
        /// Model name.
        name: String<MAX_NAME>,
        /// Version.
        version: u64,
    },
    /// Switch back to the previous model.
    Rollback,
    /// Run the staged candidate (this model and version) in shadow of the served model on a
    /// share of the live inputs; the served model keeps answering every request.
    Shadow {
        /// Model name.
        name: String<MAX_NAME>,
        /// Version.
        version: u64,
        /// Share of inferences copied to the candidate, in parts per million.
        sample_ppm: u32,
    },
    /// Stop the shadow candidate.
    StopShadow,
    /// Split live traffic between two versions of the served model: `a` (the version served now)
    /// and `b` (the staged candidate or the previous slot), sending `b_ppm` of the request keys to
    /// `b`. A request key always meets the same variant.
    Split {
        /// Variant A: the version the device serves.
        a: u64,
        /// Variant B: the staged candidate's or the previous slot's version.
        b: u64,
        /// Share of request keys routed to B, in parts per million.
        b_ppm: u32,
    },
    /// End the traffic split: every request goes to the served model again.
    StopSplit,
}

/// An order to a device or group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Command {
    /// Who it is for.
    pub target: Target,
    /// Strictly increasing per device: a device refuses any sequence ≤ the last it applied.
    /// Operator tools use the issue time in milliseconds, so several operators do not collide.
    pub sequence: u64,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds after which the command is void (a delayed command is not applied).
    pub expires_at: u64,
    /// What to do.
    pub op: Operation,
}

/// A command with the operator key's delegation and signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedCommand {
    /// The command.
    pub command: Command,
    /// The operator key's delegation from the root.
    pub delegation: SignedDelegation,
    /// The operator key's signature over the command.
    pub sig: Signature,
}
