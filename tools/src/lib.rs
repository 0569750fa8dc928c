//! The operator side of Drover as a library: what the `drover` CLI does, callable from tests,
//! the demo and the fleet server.

pub mod acl;
pub mod board;
pub mod broker;
pub mod broker_log;
pub mod bundle_build;
pub mod cli;
pub mod cmd;
pub mod demo;
pub mod fleet;
pub mod keys;
pub mod mlflow;
pub mod publish;
pub mod push;
pub mod quantize;
pub mod rollout;
pub mod sim;
pub mod soak;
pub mod trust_docs;
