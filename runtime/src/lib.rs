//! The Drover agent as a library.
//!
//! Everything the `drover-agent` binary does is here, callable from tests, the fleet simulator
//! and the demo, with no global state: each caller owns its models, files and clocks.

pub mod agent;
pub mod api;
pub mod cmd;
pub mod engine;
pub mod input;
pub mod link;
pub mod outbox;
pub mod reference;
pub mod rfc3339;
pub mod samples;
pub mod serve;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod tensor;
pub mod transfer;

pub use engine::{LoadError, Model, RunError, Signature};
pub use tensor::{Tensor, TensorData};
pub mod bundle;
pub mod trust;
