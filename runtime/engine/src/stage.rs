use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// The named stages a model goes through on load, in order.
///
/// Each can fail on its own, each is timed, and `inspect` shows them, so a user can tell a file
/// that is not ONNX from one with an unsupported operator from one tract cannot optimise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Reading the file and decoding the protobuf.
    Read,
    /// Checking every operator against tract's registry.
    Check,
    /// Drover's own graph rewrites on the protobuf (QDQ → forms tract runs fast).
    Rewrite,
    /// Building tract's inference graph from the protobuf.
    Parse,
    /// Resolving every type and shape (tract's typed model).
    Type,
    /// Decluttering and optimising the typed graph for this CPU.
    Optimise,
    /// Ordering the graph into a runnable plan and allocating its state.
    Plan,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Read => "read",
            Stage::Check => "operator check",
            Stage::Rewrite => "rewrite",
            Stage::Parse => "parse",
            Stage::Type => "typing",
            Stage::Optimise => "optimisation",
            Stage::Plan => "planning",
        })
    }
}

/// How long each completed stage took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadTimings {
    /// Completed stages in order, with their wall time in microseconds.
    pub stages: Vec<(Stage, u64)>,
}

impl LoadTimings {
    pub(crate) fn record(&mut self, stage: Stage, took: Duration) {
        self.stages.push((stage, took.as_micros().try_into().unwrap_or(u64::MAX)));
    }

    /// Total load time in microseconds.
    pub fn total_us(&self) -> u64 {
        self.stages.iter().map(|(_, us)| us).sum()
    }

    /// Time of one stage, if it ran.
    pub fn of(&self, stage: Stage) -> Option<u64> {
        self.stages.iter().find(|(s, _)| *s == stage).map(|(_, us)| *us)
    }
}
