//! Reconnect delays: exponential with full jitter, so ten thousand boards that lost the same
//! broker do not all knock on it again in the same second.

use std::time::Duration;

/// The delay before each reconnect attempt. Pure: the caller supplies the randomness.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start around `base` and never exceed `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, attempt: 0 }
    }

    /// The next delay, given a uniformly random `u64`: somewhere in [ceiling/2, ceiling], where
    /// the ceiling doubles per failed attempt up to the cap. Half the ceiling is kept so the
    /// delay never collapses to zero (no busy loop against a dead broker).
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let ceiling = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let spread = half.as_millis() as u64;
        let extra = if spread == 0 { 0 } else { random % (spread + 1) };
        half + Duration::from_millis(extra)
    }

    /// A connection succeeded: start from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A small random-number generator (xorshift64*) for jitter: seeded per agent, so hundreds of
/// simulated agents in one process do not share a sequence and nothing global is involved.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeds from `seed` (any value; zero is replaced).
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// The next random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut rng = Jitter::new(42);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            let d = b.next_delay(rng.next_u64());
            ceilings.push(d);
            assert!(d >= Duration::from_millis(250) && d <= Duration::from_secs(30), "{d:?}");
        }
        assert!(ceilings[9] >= Duration::from_secs(15), "capped at 30 s, at least half: {ceilings:?}");
        assert!(ceilings[0] <= Duration::from_millis(500));
        b.reset();
        assert!(b.next_delay(u64::MAX) <= Duration::from_millis(500));
    }

    #[test]
    fn jitter_spreads_agents_apart() {
        let mut delays = std::collections::BTreeSet::new();
        for seed in 0..50u64 {
            let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            let mut rng = Jitter::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            b.next_delay(rng.next_u64());
            delays.insert(b.next_delay(rng.next_u64()).as_millis());
        }
        assert!(delays.len() > 40, "50 agents should not reconnect in lockstep: {delays:?}");
    }
}
