//! A/B tests on the device: live traffic split between the served model (A) and a challenger (B)
//! by request key. The key is hashed with SHA-256, not a per-process hasher, so a key (a user, a
//! camera, a session) meets the same variant on every request, after a restart, and on every
//! device of the fleet. Each variant's answers, latency, classes and labelled accuracy are
//! counted per period for telemetry.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;

use drover_wire::message::ModelRef;
use drover_wire::telemetry::{Split as SplitReport, Variant};
use sha2::{Digest, Sha256};

use crate::engine::Model;

/// Parts per million: the unit of a split's share.
pub const PPM: u32 = 1_000_000;

/// The side of a split that answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The served model.
    A,
    /// The challenger.
    B,
}

/// The arm of `key` when `b_ppm` parts per million of the keys go to B. Raising `b_ppm` only
/// moves keys from A to B (a key's point on the line never changes), so widening a split keeps
/// every B user on B.
pub fn route(key: &str, b_ppm: u32) -> Arm {
    let digest = Sha256::digest(key.as_bytes());
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    if u64::from_le_bytes(head) % u64::from(PPM) < u64::from(b_ppm.min(PPM)) { Arm::B } else { Arm::A }
}

/// A running split: the challenger's engine and both variants' period counts.
pub(super) struct Split {
    b_ppm: u32,
    challenger: Model,
    a: Variant,
    b: Variant,
    hasher: RandomState,
    predictions: HashMap<u64, (Arm, i64)>,
    order: VecDeque<u64>,
    memory: usize,
}

impl Split {
    /// Splits between `a` (served) and `challenger` (`b`), remembering `memory` predictions
    /// for labels.
    pub(super) fn new(a: ModelRef, challenger: Model, b: ModelRef, b_ppm: u32, memory: usize) -> Split {
        Split {
            b_ppm: b_ppm.min(PPM),
            challenger,
            a: Variant::new(a),
            b: Variant::new(b),
            hasher: RandomState::new(),
            predictions: HashMap::new(),
            order: VecDeque::new(),
            memory: memory.max(1),
        }
    }

    pub(super) fn b_ppm(&self) -> u32 {
        self.b_ppm
    }

    pub(super) fn models(&self) -> (&ModelRef, &ModelRef) {
        (&self.a.model, &self.b.model)
    }

    /// The challenger's model, to run B's requests on.
    pub(super) fn challenger(&mut self) -> (&mut Model, &ModelRef) {
        (&mut self.challenger, &self.b.model)
    }

    fn variant(&mut self, arm: Arm) -> &mut Variant {
        match arm {
            Arm::A => &mut self.a,
            Arm::B => &mut self.b,
        }
    }

    /// Counts a request's answers: each sample's latency and class, and remembers the classes
    /// under their request ids for the labels to come.
    pub(super) fn answered(&mut self, arm: Arm, micros: u32, answers: &[(&str, Option<i64>)]) {
        let v = self.variant(arm);
        v.inferences += answers.len() as u64;
        for (_, class) in answers {
            v.latency.record(micros);
            if let Some(c) = class {
                v.count_class(*c);
            }
        }
        for (request, class) in answers {
            let Some(class) = class else { continue };
            let key = self.hasher.hash_one(request);
            if self.predictions.insert(key, (arm, *class)).is_none() {
                self.order.push_back(key);
            }
        }
        while self.order.len() > self.memory {
            if let Some(old) = self.order.pop_front() {
                self.predictions.remove(&old);
            }
        }
    }

    /// Counts a request routed to `arm` that got no answer.
    pub(super) fn failed(&mut self, arm: Arm) {
        self.variant(arm).errors += 1;
    }

    /// Scores a label against the variant that made the prediction; false if unknown here.
    pub(super) fn label(&mut self, request: &str, label: i64) -> bool {
        let key = self.hasher.hash_one(request);
        let Some((arm, predicted)) = self.predictions.remove(&key) else { return false };
        let v = self.variant(arm);
        v.labels += 1;
        v.correct += u64::from(predicted == label);
        true
    }

    /// The period's counts; the next period starts empty.
    pub(super) fn take(&mut self) -> SplitReport {
        let fresh_a = Variant::new(self.a.model.clone());
        let fresh_b = Variant::new(self.b.model.clone());
        let a = std::mem::replace(&mut self.a, fresh_a);
        let b = std::mem::replace(&mut self.b, fresh_b);
        SplitReport { b_ppm: self.b_ppm, a, b }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_arm_and_the_share_is_honoured() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let at = |ppm| keys.iter().filter(|k| route(k, ppm) == Arm::B).count();
        assert_eq!(at(0), 0);
        assert_eq!(at(PPM), keys.len());
        assert_eq!(at(PPM + 7), keys.len(), "above 100 % is 100 %");
        let tenth = at(100_000);
        assert!((1_700..2_300).contains(&tenth), "10 % of 20 000 keys, got {tenth}");
        for k in &keys {
            assert_eq!(route(k, 100_000), route(k, 100_000), "sticky");
            if route(k, 100_000) == Arm::B {
                assert_eq!(route(k, 500_000), Arm::B, "{k}: widening the split keeps B's keys on B");
            }
        }
        // Fixed points: the hash is part of the fleet's contract (every device routes alike).
        assert_eq!(route("user-1", 500_000), route("user-1", 500_000));
        let digest = Sha256::digest(b"user-1");
        let point = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")) % u64::from(PPM);
        assert_eq!(route("user-1", point as u32), Arm::A);
        assert_eq!(route("user-1", point as u32 + 1), Arm::B);
    }
}
