//! A token bucket for chunk sending: `drover push --max-rate` keeps a push from saturating a
//! cellular uplink or a shared broker. Pure: the caller gives the time.

/// Bytes per second, with at most `burst` bytes of saved-up credit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    per_s: u64,
    burst: u64,
    tokens: u64,
    last_ms: u64,
}

impl RateLimit {
    /// `per_s` bytes per second; the bucket holds a tenth of a second or one chunk, whichever is
    /// more, so sending is smooth rather than in bursts.
    pub fn new(per_s: u64, chunk: u64, now_ms: u64) -> RateLimit {
        let burst = (per_s / 10).max(chunk);
        RateLimit { per_s, burst, tokens: burst, last_ms: now_ms }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if elapsed > 0 {
            self.tokens = (self.tokens + self.per_s.saturating_mul(elapsed) / 1000).min(self.burst);
            self.last_ms = now_ms;
        }
    }

    /// Takes `bytes` if the budget allows now.
    pub fn take(&mut self, bytes: u64, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= bytes.min(self.burst) {
            self.tokens = self.tokens.saturating_sub(bytes);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_is_held_to_the_rate_over_time() {
        let chunk = 32 * 1024;
        let mut r = RateLimit::new(512 * 1024, chunk, 0);
        let mut sent = 0u64;
        for ms in (0..=10_000).step_by(5) {
            while r.take(chunk, ms) {
                sent += chunk;
            }
        }
        let rate = sent as f64 / 10.0;
        assert!((rate - 512.0 * 1024.0).abs() < 0.05 * 512.0 * 1024.0, "{rate} B/s");
    }

    #[test]
    fn a_chunk_larger_than_the_bucket_still_goes_out_at_the_rate() {
        let mut r = RateLimit::new(1000, 5000, 0);
        assert!(r.take(5000, 0));
        assert!(!r.take(5000, 1000));
        assert!(r.take(5000, 5000));
    }
}
