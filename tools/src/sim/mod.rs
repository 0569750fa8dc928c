//! The fleet simulator: hundreds of real agents in one process against a real broker, fed with
//! inference traffic and the faults of a profile. It is how Drover (and its users) try a large
//! fleet before having one; the demo runs a small one.

pub mod fleet;
pub mod profile;
pub mod traffic;

pub use fleet::{FleetSpec, SimError, SimFleet};
pub use profile::{Fault, Profile, Schedule};
