//! The model store on the device: two slots (A/B) under the agent's data dir, installs that are
//! verified before they touch a slot, self-tested before they are switched to, committed after
//! a health check, and rolled back by a boot counter when a new model never gets healthy.
//!
//! `state.rs` is the pure state machine; `disk.rs` is the I/O shell that persists each state
//! atomically before acting on it.

mod disk;
pub mod failpoint;
mod state;

pub(crate) use disk::atomic_write;
pub use disk::{
    BootOutcome, CommandOutcome, Experiment, InstallError, InstallReport, Store, StoreConfig, StoreError, StoreSnapshot,
};
pub use failpoint::FailPoint;
pub use state::{BootDecision, RollbackError, SlotId, StoreState};
