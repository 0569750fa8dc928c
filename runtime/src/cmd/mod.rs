//! The agent's commands, one module each, callable without the binary.
//!
//! The `drover-agent` binary only parses arguments and picks a logger; tests, the simulator
//! and the operator tools call these functions directly.

mod error_text;
pub mod infer;
pub mod inspect;
pub mod slots;

pub use error_text::error_text;
