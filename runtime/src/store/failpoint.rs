//! Fail points: named instants of an install where a test can stop the agent dead.
//!
//! When the configured point is reached the agent announces it on stderr and waits; the test
//! then kills it with SIGKILL, restarts it, and checks that it serves a verified model with
//! consistent slots. Configured per store (no global), from `DROVER_FAILPOINT` by the binary.

use std::io::Write;

/// Every point an install passes, in order.
pub const INSTALL_POINTS: [&str; 6] =
    ["staged", "slot-released", "slot-written", "self-tested", "switched", "committed"];

/// The fail point armed for this store, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailPoint(pub Option<String>);

impl FailPoint {
    /// Called at each named point: parks the thread forever when it is the armed one.
    pub fn hit(&self, name: &str) {
        if self.0.as_deref() == Some(name) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "drover-failpoint: {name}");
            let _ = err.flush();
            loop {
                std::thread::park();
            }
        }
    }
}
