//! Operations on devices over MQTT: pushing a bundle, sending a signed command, and following
//! every device's progress. `tracker.rs` and `campaign.rs` are pure; `run.rs` is the I/O.

pub mod campaign;
pub mod deliver;
pub mod rate;
pub mod run;
pub mod tracker;

pub use campaign::{Campaign, Work};
pub use tracker::{Audience, DeviceView, End, Tracker};
