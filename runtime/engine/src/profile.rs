//! Per-operator timing of a loaded model's optimised plan.
//!
//! "Which op takes the time" decides every optimisation of the engine (issue 12: int8 models
//! were slower than fp32 and only a per-node profile showed why), so it is measured on the very
//! plan `Model::run` executes, after tract's `into_optimized()` and Drover's own load passes,
//! the way tract's CLI `profile` command does it: `run_plan_with_eval` with a timed evaluator.

use std::time::{Duration, Instant};

use tract_onnx::prelude::{TValue, TVec, TypedSimpleState};

/// Time spent in one node of the optimised plan, summed over the profiled runs.
#[derive(Debug, Clone)]
pub struct NodeTime {
    /// The node's name in the optimised graph (tract keeps the ONNX node name as a prefix).
    pub name: String,
    /// The operator tract runs for it (e.g. `Optimized(MatMul)`, `MaxPool`, `Quant`).
    pub op: String,
    /// Wall time over all runs.
    pub total: Duration,
}

/// A per-node profile: where one inference call spends its time.
#[derive(Debug, Clone)]
pub struct Profile {
    /// How many runs were timed.
    pub runs: usize,
    /// Every node that ran, in plan order.
    pub nodes: Vec<NodeTime>,
    /// Wall time of the whole runs (nodes plus the plan's own bookkeeping).
    pub entire: Duration,
}

impl Profile {
    /// Mean time per run of the whole plan.
    pub fn per_run(&self) -> Duration {
        self.entire / self.runs.max(1) as u32
    }

    /// Mean time per run of each operator kind, largest first: the summary table of
    /// `docs/int8.md`.
    pub fn by_op(&self) -> Vec<(String, Duration)> {
        let mut ops: Vec<(String, Duration)> = Vec::new();
        for n in &self.nodes {
            match ops.iter_mut().find(|(op, _)| *op == n.op) {
                Some((_, total)) => *total += n.total,
                None => ops.push((n.op.clone(), n.total)),
            }
        }
        let runs = self.runs.max(1) as u32;
        let mut ops: Vec<(String, Duration)> = ops.into_iter().map(|(op, t)| (op, t / runs)).collect();
        ops.sort_by_key(|op| std::cmp::Reverse(op.1));
        ops
    }
}

/// Runs `state` `runs` times on `inputs`, timing every node. tract errors are returned as text.
pub(super) fn profile_state(
    state: &mut TypedSimpleState,
    inputs: &TVec<TValue>,
    runs: usize,
) -> Result<Profile, String> {
    let model = state.model();
    let mut nodes: Vec<NodeTime> = model
        .nodes
        .iter()
        .map(|n| NodeTime { name: n.name.clone(), op: n.op().name().to_string(), total: Duration::ZERO })
        .collect();
    let mut ran = vec![false; nodes.len()];
    let start = Instant::now();
    for _ in 0..runs {
        state
            .run_plan_with_eval(inputs.clone(), |ctx, op_state, node, values| {
                let t = Instant::now();
                let result = tract_core::plan::eval(ctx, op_state, node, values);
                if let Some(slot) = nodes.get_mut(node.id) {
                    slot.total += t.elapsed();
                }
                if let Some(r) = ran.get_mut(node.id) {
                    *r = true;
                }
                result
            })
            .map_err(|e| format!("{e:#}"))?;
    }
    let entire = start.elapsed();
    let order: Vec<usize> = state.plan().order_without_consts().to_vec();
    let nodes = order
        .into_iter()
        .filter(|&i| ran.get(i).copied().unwrap_or(false))
        .filter_map(|i| nodes.get(i).cloned())
        .collect();
    Ok(Profile { runs, nodes, entire })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(op: &str, us: u64) -> NodeTime {
        NodeTime { name: op.to_lowercase(), op: op.into(), total: Duration::from_micros(us) }
    }

    #[test]
    fn by_op_sums_kinds_per_run_largest_first() {
        let p = Profile {
            runs: 2,
            nodes: vec![node("Conv", 10), node("MaxPool", 40), node("Conv", 20)],
            entire: Duration::from_micros(80),
        };
        let ops = p.by_op();
        assert_eq!(ops[0], ("MaxPool".to_string(), Duration::from_micros(20)));
        assert_eq!(ops[1], ("Conv".to_string(), Duration::from_micros(15)));
        assert_eq!(p.per_run(), Duration::from_micros(40));
    }
}
