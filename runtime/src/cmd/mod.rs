//! The agent's commands, one module each, callable without the binary.
//!
//! The `drover-agent` binary only parses arguments and picks a logger; tests, the simulator
//! and the operator tools call these functions directly.

pub mod infer;
pub mod inspect;
pub mod slots;
