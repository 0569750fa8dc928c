//! Staged rollouts: a version reaches a group in stages (1 %, 10 %, … 100 %), each first in
//! shadow, then served and soaked, and goes on only while its gates hold — shadow agreement,
//! error rate, p99 and drift against the rest of the group. A failed gate halts the rollout and
//! rolls back what it moved. `plan` is what the operator asks, `controller` the pure state
//! machine the fleet server runs.

pub mod controller;
pub mod plan;

#[cfg(test)]
mod controller_tests;

pub use controller::{Action, DeviceView, Phase, Rollout, RolloutEvent, State};
pub use plan::{Gates, Plan, PlanError};
