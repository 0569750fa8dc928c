//! The operator side of Drover as a library: what the `drover` CLI does, callable from tests,
//! the demo and the fleet server.
//!
//! Today it inspects models; bundles, pushes, rollouts and the fleet server build on it.

pub mod cli;
