//! The device side of Drover's chain of trust: verifying root documents, delegations and
//! bundle manifests against what the device already trusts.
//!
//! Everything here is pure: no clock (the time is an argument), no file, no network. The
//! agent, the simulator and the tests run exactly this code; the store decides what to persist.

mod command;
mod crypto;
mod verify;

pub use command::{CommandFacts, CommandRefusal, verify_command};
pub use crypto::{SecretKey, key_id, sign_document, signing_bytes, verify_document};
pub use verify::{DeviceFacts, Refusal, TrustState, Verified, verify_header};

#[cfg(test)]
mod tamper_tests;
