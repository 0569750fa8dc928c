//! The Drover agent as a library.
//!
//! Everything the `drover-agent` binary does is here, callable from tests, the fleet simulator
//! and the demo, with no global state: each caller owns its models, files and clocks.

pub mod agent;
pub mod api;
pub mod backtraces;
pub mod cmd;
pub mod input;
pub mod link;
pub mod outbox;
pub mod rfc3339;
pub mod serve;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod transfer;

/// The engine crate, under the name the agent's modules and its users have always used.
pub use drover_engine as engine;
pub use drover_engine::{LoadError, Model, RunError, Signature, Tensor, TensorData, reference, samples, tensor};
pub mod bundle;
pub mod trust;
