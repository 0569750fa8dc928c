//! Wire types shared by every Drover component.
//!
//! The agent, the operator CLI, the fleet server and the firmware shim exchange the same values
//! (tensor schemas, bundle manifests, signed trust documents, the MQTT topic tree and its
//! messages, telemetry, drift windows and events; frames as they arrive). Defining them once, in a `no_std` crate with
//! bounded (heapless) storage, means a microcontroller and a Raspberry Pi encode and decode
//! exactly the same bytes, and that no component can drift from another.
//!
//! Encoding is postcard (compact, canonical, allocation-free); every type also derives serde so
//! the tools can print it as JSON.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "std")]
extern crate std;

pub use drover_drift as drift;

mod arch;
pub mod command;
mod dtype;
pub mod event;
pub mod frame;
mod hex_bytes;
pub mod manifest;
pub mod message;
pub mod telemetry;
mod tensor_spec;
pub mod topic;
pub mod trust;

pub use arch::Arch;
pub use dtype::DType;
pub use manifest::{AgentVersion, FileEntry, FileRole, Manifest, ManifestError, RuntimeSettings};
pub use tensor_spec::{Dim, DimRef, MAX_NAME_LEN, MAX_RANK, MAX_SYMBOL_LEN, SpecError, TensorSpec};
