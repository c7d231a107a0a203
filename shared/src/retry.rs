//! What happens to a message after a failure, decided in one place: every error maps to
//! a [`Disposition`], and the consumer loop maps dispositions to acknowledgements.
//!
//! The retry policy is exponential with full jitter, capped. It lives here rather than in
//! the `backoff` crate (unmaintained since 2024, see docs/adr/0002) so it can be swapped.

use std::time::Duration;

/// What the consumer loop does with a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Done (a result was published, or one already existed): acknowledge.
    Ack,
    /// Try again later: negative-acknowledge with this delay.
    Retry { after: Duration, reason: String },
    /// Never going to work: copy to the dead-letter stream with the reason, then terminate.
    DeadLetter { reason: String },
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            multiplier: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Delay before delivery `attempt + 1`, given that `attempt` (1-based) just failed.
    /// `jitter` in [0, 1) picks a point in the upper half of the window so retries of many
    /// jobs spread out without ever retrying at once.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .multiplier
            .powi(attempt.saturating_sub(1).min(30) as i32);
        let ceiling = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        let jitter = jitter.clamp(0.0, 1.0);
        Duration::from_secs_f64(ceiling * (0.5 + 0.5 * jitter))
    }

    /// Delay with jitter from a cheap per-call source.
    pub fn delay_jittered(&self, attempt: u32) -> Duration {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        self.delay(attempt, f64::from(nanos % 1000) / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_cap() {
        let p = RetryPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            multiplier: 2.0,
        };
        assert_eq!(p.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(p.delay(2, 1.0), Duration::from_millis(200));
        assert_eq!(p.delay(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.delay(20, 1.0), Duration::from_secs(1));
    }
}
