//! What the agent reports: the host's health (`system.rs`) and the wire messages and alerts made
//! from the inference service's counters and drift windows (`alerts.rs`). Both reach the broker
//! through the outbox.

pub mod alerts;
pub mod system;

pub use system::SystemProbe;
