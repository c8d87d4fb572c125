//! Reconnection delays: exponential backoff with full jitter and a cap.
//!
//! "Full jitter" draws each delay uniformly between zero and the exponential ceiling, which
//! spreads out clients that lost their server at the same moment (a restart) far better than
//! a fixed or slightly jittered delay: they do not all come back in the same millisecond.

use std::time::Duration;

use rand::Rng;

/// How the client waits between reconnection attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// Ceiling of the first delay. Default: 200 ms.
    pub initial: Duration,
    /// The largest ceiling, however many attempts failed. Default: 10 s.
    pub max: Duration,
    /// Growth of the ceiling per failed attempt. Default: 2.
    pub multiplier: f64,
    /// Give up (state `Closed`) after this many failed attempts in a row; `None` retries
    /// forever. Default: `None`.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// The ceiling for attempt `attempt` (1 for the first retry): `initial * multiplier^(attempt
    /// - 1)`, at most `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// A delay for attempt `attempt`, drawn uniformly from `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = ceiling.as_nanos().min(u64::MAX as u128) as u64;
        Duration::from_nanos(rng.random_range(0..=nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn ceiling_grows_exponentially_up_to_the_cap() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            multiplier: 2.0,
            max_attempts: None,
        };
        let c: Vec<u128> = (1..=7).map(|a| b.ceiling(a).as_millis()).collect();
        assert_eq!(c, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
    }

    #[test]
    fn delays_are_spread_over_the_whole_range() {
        let b = Backoff {
            initial: Duration::from_millis(1000),
            max: Duration::from_secs(1),
            ..Backoff::default()
        };
        let mut rng = StdRng::seed_from_u64(7);
        let d: Vec<Duration> = (0..2000).map(|_| b.delay(3, &mut rng)).collect();
        assert!(d.iter().all(|d| *d <= Duration::from_secs(1)));
        // Full jitter: each tenth of the range gets a share, not just the top of it.
        for tenth in 0..10u64 {
            let lo = Duration::from_millis(tenth * 100);
            let hi = lo + Duration::from_millis(100);
            let n = d.iter().filter(|x| **x >= lo && **x < hi).count();
            assert!((120..=280).contains(&n), "tenth {tenth}: {n} of 2000");
        }
    }
}
