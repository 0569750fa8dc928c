//! `drover demo`: the whole life cycle in one process, on free loopback ports. The embedded
//! broker, the fleet server with its dashboard, and N real agents (each with its own data dir)
//! start; the demo signs two releases of the committed iris classifier, pushes v1 to the fleet,
//! drives inference traffic, makes some devices' inputs drift (the alert comes back through the
//! fleet server), and rolls v2 out stage by stage with a shadow test first. Then it keeps
//! serving until its time is up or Ctrl-C, and removes everything it made.
//!
//! This is a program's top level (like the `cmd` modules), so its errors are `anyhow`'s.

pub mod setup;
pub mod stack;
mod story;

use std::path::PathBuf;
use std::time::Duration;

pub use stack::Stack;
pub use story::{Outcome, run};

/// How the demo runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Simulated devices.
    pub devices: usize,
    /// When to stop, from the start.
    pub duration: Duration,
    /// Keep the demo's files here (keys, bundles, the devices' data dirs, the fleet database)
    /// instead of a temporary directory that is removed at the end.
    pub keep: Option<PathBuf>,
    /// The dashboard's port (0: a free one).
    pub http_port: u16,
}
