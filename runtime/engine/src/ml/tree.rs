//! Tree ensembles as the ONNX-ML `TreeEnsembleRegressor`/`TreeEnsembleClassifier` attributes
//! describe them: parsed and checked once, then walked per row.
//!
//! tract-onnx-opl has a tree evaluator, but it walks node ids it never checked with unchecked
//! indexing (a hostile file could read out of bounds), starts MIN/MAX from zero, divides AVERAGE
//! by the number of leaves that voted rather than the number of trees, and sends NaN down the
//! `missing_value_tracks_true` branch for every comparison; onnxruntime (which exporters test
//! against) differs on each. So Drover keeps its own, checked at parse time and following
//! onnxruntime's kernel (`tree_ensemble_common.h`, `tree_ensemble_aggregator.h`):
//!
//! * a branch goes to its true child when `x <mode> threshold` holds, or when the feature is NaN
//!   and `nodes_missing_value_tracks_true` is set; otherwise to its false child (so NaN takes
//!   the true child of a `BRANCH_NEQ` node, as IEEE comparison says);
//! * the root of a tree is its first node in the attribute lists, and trees count in the order
//!   they first appear;
//! * scores are accumulated in f32, tree by tree, leaf weight by leaf weight, in list order.

use std::collections::HashMap;

use super::attrs::{AttrError, Attrs};

/// How a branch node compares its feature with its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
    Leaf,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "BRANCH_LEQ" => Mode::Leq,
            "BRANCH_LT" => Mode::Lt,
            "BRANCH_GTE" => Mode::Gte,
            "BRANCH_GT" => Mode::Gt,
            "BRANCH_EQ" => Mode::Eq,
            "BRANCH_NEQ" => Mode::Neq,
            "LEAF" => Mode::Leaf,
            _ => return None,
        })
    }
}

/// How the leaf values of all trees combine per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

/// One node. Branches index their children in [`Forest::nodes`]; leaves index their weights in
/// [`Forest::weights`] (`first..end`).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    mode: Mode,
    feature: u32,
    /// Widened from the f32 attribute: comparing widened values gives the f32 comparison's
    /// result for f32 inputs and onnxruntime's (double) comparison for f64 inputs.
    threshold: f64,
    missing_true: bool,
    /// True child (branch) or first weight (leaf).
    first: u32,
    /// False child (branch) or end of the weights (leaf).
    second: u32,
}

/// One leaf's contribution to one target (or class).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Weight {
    pub target: u32,
    pub value: f32,
}

/// A score being accumulated: onnxruntime's `ScoreValue` (whether any leaf or base value
/// contributed matters to MIN/MAX and to the classifier's decisions).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Score {
    pub value: f32,
    pub has: bool,
}

/// A checked tree ensemble.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Forest {
    nodes: Vec<Node>,
    roots: Vec<u32>,
    weights: Vec<Weight>,
    /// Number of targets (regressor) or classes (classifier) the weights address.
    targets: usize,
    /// The largest feature index any branch reads.
    max_feature: usize,
}

/// The attribute names that differ between the regressor (`target_*`) and classifier (`class_*`).
pub(crate) struct LeafAttrs {
    pub ids: &'static str,
    pub node_ids: &'static str,
    pub tree_ids: &'static str,
    pub weights: &'static str,
}

pub(crate) const REGRESSOR_LEAVES: LeafAttrs =
    LeafAttrs { ids: "target_ids", node_ids: "target_nodeids", tree_ids: "target_treeids", weights: "target_weights" };

pub(crate) const CLASSIFIER_LEAVES: LeafAttrs =
    LeafAttrs { ids: "class_ids", node_ids: "class_nodeids", tree_ids: "class_treeids", weights: "class_weights" };

impl Forest {
    /// Parses and checks the `nodes_*` and leaf attributes of a node with `targets` outputs.
    pub fn parse(attrs: &Attrs<'_>, leaves: &LeafAttrs, targets: usize) -> Result<Forest, AttrError> {
        attrs.refuse_tensor_forms(&["nodes_values_as_tensor", "nodes_hitrates_as_tensor", "base_values_as_tensor"])?;
        attrs.refuse_tensor_forms(&["target_weights_as_tensor", "class_weights_as_tensor"])?;
        let tree_ids = attrs.indices("nodes_treeids")?;
        let n = tree_ids.len();
        if n == 0 {
            return Err(attrs.error("nodes_treeids", "the ensemble has no nodes"));
        }
        let node_ids = attrs.indices("nodes_nodeids")?;
        attrs.expect_len("nodes_nodeids", &node_ids, n)?;
        let features = attrs.indices("nodes_featureids")?;
        attrs.expect_len("nodes_featureids", &features, n)?;
        let values = attrs.floats("nodes_values");
        attrs.expect_len("nodes_values", &values, n)?;
        let modes = attrs.strings("nodes_modes")?;
        attrs.expect_len("nodes_modes", &modes, n)?;
        let true_ids = attrs.ints("nodes_truenodeids");
        attrs.expect_len("nodes_truenodeids", &true_ids, n)?;
        let false_ids = attrs.ints("nodes_falsenodeids");
        attrs.expect_len("nodes_falsenodeids", &false_ids, n)?;
        let missing = attrs.ints("nodes_missing_value_tracks_true");
        if !missing.is_empty() {
            attrs.expect_len("nodes_missing_value_tracks_true", &missing, n)?;
        }

        // (tree, node id) -> position; trees in order of first appearance, each one run.
        let mut index: HashMap<(u32, u32), u32> = HashMap::with_capacity(n);
        let mut roots: Vec<u32> = Vec::new();
        let mut tree_of_root: HashMap<u32, usize> = HashMap::new();
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let key = (tree_ids[i], node_ids[i]);
            let at = u32::try_from(i).map_err(|_| attrs.error("nodes_treeids", "too many nodes"))?;
            if index.insert(key, at).is_some() {
                return Err(attrs.error("nodes_nodeids", format!("node {} of tree {} is listed twice", key.1, key.0)));
            }
            if i == 0 || tree_ids[i - 1] != tree_ids[i] {
                if tree_of_root.insert(tree_ids[i], roots.len()).is_some() {
                    return Err(attrs
                        .error("nodes_treeids", format!("the nodes of tree {} are not listed together", tree_ids[i])));
                }
                roots.push(at);
            }
            let mode = Mode::parse(&modes[i])
                .ok_or_else(|| attrs.error("nodes_modes", format!("unknown node mode '{}'", modes[i])))?;
            nodes.push(Node {
                mode,
                feature: features[i],
                threshold: f64::from(values[i]),
                missing_true: missing.get(i).is_some_and(|&m| m == 1),
                first: 0,
                second: 0,
            });
        }
        let mut max_feature = 0usize;
        for i in 0..n {
            if nodes[i].mode == Mode::Leaf {
                continue;
            }
            max_feature = max_feature.max(features[i] as usize);
            let child = |attr: &str, id: i64| -> Result<u32, AttrError> {
                let found = u32::try_from(id).ok().and_then(|id| index.get(&(tree_ids[i], id)).copied());
                match found {
                    Some(c) if c as usize != i => Ok(c),
                    Some(_) => {
                        Err(attrs.error(attr, format!("node {} of tree {} is its own child", node_ids[i], tree_ids[i])))
                    }
                    None => Err(attrs.error(
                        attr,
                        format!(
                            "node {} of tree {} points at node {id}, which the tree does not have",
                            node_ids[i], tree_ids[i]
                        ),
                    )),
                }
            };
            nodes[i].first = child("nodes_truenodeids", true_ids[i])?;
            nodes[i].second = child("nodes_falsenodeids", false_ids[i])?;
        }

        // Leaf weights, grouped per leaf in list order.
        let leaf_trees = attrs.indices(leaves.tree_ids)?;
        let leaf_nodes = attrs.indices(leaves.node_ids)?;
        let leaf_targets = attrs.indices(leaves.ids)?;
        let leaf_values = attrs.floats(leaves.weights);
        let m = leaf_targets.len();
        attrs.expect_len(leaves.node_ids, &leaf_nodes, m)?;
        attrs.expect_len(leaves.tree_ids, &leaf_trees, m)?;
        attrs.expect_len(leaves.weights, &leaf_values, m)?;
        let mut per_leaf: Vec<Vec<Weight>> = vec![Vec::new(); n];
        for j in 0..m {
            let (tree, node) = (leaf_trees[j], leaf_nodes[j]);
            let at = *index.get(&(tree, node)).ok_or_else(|| {
                attrs.error(leaves.node_ids, format!("a weight for node {node} of tree {tree}, which does not exist"))
            })? as usize;
            if nodes[at].mode != Mode::Leaf {
                return Err(attrs
                    .error(leaves.node_ids, format!("a weight for node {node} of tree {tree}, which is not a leaf")));
            }
            if leaf_targets[j] as usize >= targets {
                return Err(attrs
                    .error(leaves.ids, format!("target or class {} where the node has {targets}", leaf_targets[j])));
            }
            per_leaf[at].push(Weight { target: leaf_targets[j], value: leaf_values[j] });
        }
        let mut weights = Vec::with_capacity(m);
        for (node, leaf) in nodes.iter_mut().zip(per_leaf) {
            if node.mode == Mode::Leaf {
                node.first = weights.len() as u32;
                weights.extend(leaf);
                node.second = weights.len() as u32;
            }
        }
        let forest = Forest { nodes, roots, weights, targets, max_feature };
        forest.check_acyclic().map_err(|at| {
            let (tree, node) = (tree_ids[at], node_ids[at]);
            attrs.error("nodes_truenodeids", format!("tree {tree} loops back to node {node}: it is not a tree"))
        })?;
        Ok(forest)
    }

    /// Checks that no walk from a root can loop (depth-first, iteratively: trees can be deep);
    /// the error is the position of a node the walk comes back to.
    fn check_acyclic(&self) -> Result<(), usize> {
        // 0 = unseen, 1 = on the current path, 2 = done.
        let mut state = vec![0u8; self.nodes.len()];
        let mut stack: Vec<(u32, u8)> = Vec::new();
        for &root in &self.roots {
            stack.push((root, 0));
            while let Some((at, step)) = stack.pop() {
                let node = self.nodes[at as usize];
                if step == 0 {
                    if state[at as usize] == 1 {
                        return Err(at as usize);
                    }
                    if state[at as usize] == 2 {
                        continue;
                    }
                    state[at as usize] = 1;
                }
                if node.mode == Mode::Leaf || step == 2 {
                    state[at as usize] = 2;
                    continue;
                }
                stack.push((at, step + 1));
                let child = if step == 0 { node.first } else { node.second };
                match state[child as usize] {
                    1 => return Err(child as usize),
                    0 => stack.push((child, 0)),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Number of trees (AVERAGE divides by it).
    pub fn trees(&self) -> usize {
        self.roots.len()
    }

    /// Number of targets or classes.
    pub fn targets(&self) -> usize {
        self.targets
    }

    /// Rows must have more features than this.
    pub fn max_feature(&self) -> usize {
        self.max_feature
    }

    /// Every leaf weight (the classifier inspects them to pick onnxruntime's binary rules).
    pub fn weights(&self) -> &[Weight] {
        &self.weights
    }

    /// The leaf `row` reaches in the tree rooted at `root`. `row` must have more than
    /// [`Forest::max_feature`] values.
    fn leaf(&self, root: u32, row: &[f64]) -> &Node {
        let mut node = &self.nodes[root as usize];
        loop {
            let x = row[node.feature as usize];
            let t = node.threshold;
            let holds = match node.mode {
                Mode::Leaf => return node,
                Mode::Leq => x <= t,
                Mode::Lt => x < t,
                Mode::Gte => x >= t,
                Mode::Gt => x > t,
                Mode::Eq => x == t,
                Mode::Neq => x != t,
            };
            let next = if holds || (node.missing_true && x.is_nan()) { node.first } else { node.second };
            node = &self.nodes[next as usize];
        }
    }

    /// Aggregates every tree's leaf for `row` into `scores` (one per target, reset here).
    pub fn scores(&self, row: &[f64], aggregate: Aggregate, scores: &mut [Score]) {
        scores.iter_mut().for_each(|s| *s = Score::default());
        for &root in &self.roots {
            let leaf = self.leaf(root, row);
            for w in &self.weights[leaf.first as usize..leaf.second as usize] {
                let s = &mut scores[w.target as usize];
                s.value = match aggregate {
                    Aggregate::Sum | Aggregate::Average => s.value + w.value,
                    Aggregate::Min if !s.has || w.value < s.value => w.value,
                    Aggregate::Max if !s.has || w.value > s.value => w.value,
                    Aggregate::Min | Aggregate::Max => s.value,
                };
                s.has = true;
            }
        }
    }
}

/// Reads `aggregate_function` (default SUM).
pub(crate) fn parse_aggregate(attrs: &Attrs<'_>) -> Result<Aggregate, AttrError> {
    Ok(match attrs.string_or("aggregate_function", "SUM")?.as_str() {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => {
            return Err(attrs.error("aggregate_function", format!("'{other}' is none of SUM, AVERAGE, MIN, MAX")));
        }
    })
}
