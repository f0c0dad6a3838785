//! GCRA (the generic cell rate algorithm): one timestamp per key, the "theoretical arrival
//! time" (TAT). A request at `now` is allowed when the TAT it would leave behind is at most
//! `burst` emission intervals ahead of `now`.

use std::time::Duration;

/// A limit's shape: `rate` requests per `per`, bursts up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Quota {
    /// Time between two requests at the sustained rate (`per / rate`), in nanoseconds.
    pub emission_ns: u64,
    /// Requests allowed at once.
    pub burst: u32,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests left in the burst after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When denied: until a request would be allowed.
    pub retry_after: Duration,
}

impl Quota {
    pub fn new(rate: u32, per: Duration, burst: Option<u32>) -> Self {
        let rate = rate.max(1);
        let emission_ns = (per.as_nanos() / u128::from(rate)).max(1) as u64;
        Self { emission_ns, burst: burst.unwrap_or(rate).max(1) }
    }

    /// How long a key's state matters: after this much idleness it equals a fresh key.
    pub fn horizon(&self) -> Duration {
        Duration::from_nanos(self.emission_ns.saturating_mul(u64::from(self.burst)))
    }

    /// Checks one request at `now` (ns on a monotonic clock) against stored `tat` (0 = fresh).
    /// Returns the decision and the TAT to store (unchanged when denied).
    pub fn check(&self, tat: u64, now: u64) -> (Decision, u64) {
        let capacity = self.emission_ns.saturating_mul(u64::from(self.burst));
        let new_tat = tat.max(now).saturating_add(self.emission_ns);
        let ahead = new_tat - now;
        if ahead > capacity {
            let retry = ahead - capacity;
            let decision = Decision {
                allowed: false,
                remaining: 0,
                reset: Duration::from_nanos(tat.max(now) - now),
                retry_after: Duration::from_nanos(retry),
            };
            return (decision, tat);
        }
        let remaining = ((capacity - ahead) / self.emission_ns) as u32;
        (
            Decision { allowed: true, remaining, reset: Duration::from_nanos(ahead), retry_after: Duration::ZERO },
            new_tat,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_sustained_rate() {
        // 10 per minute, burst 3: three at once, then one every 6 s.
        let q = Quota::new(10, Duration::from_secs(60), Some(3));
        let (mut tat, now) = (0, 1000 * SEC);
        let mut remaining = Vec::new();
        for _ in 0..3 {
            let (d, t) = q.check(tat, now);
            assert!(d.allowed);
            remaining.push(d.remaining);
            tat = t;
        }
        assert_eq!(remaining, [2, 1, 0]);
        let (d, t) = q.check(tat, now);
        assert!(!d.allowed);
        assert_eq!(t, tat, "a denial stores nothing");
        assert_eq!(d.retry_after, Duration::from_secs(6));
        assert!(!q.check(tat, now + 5 * SEC).0.allowed);
        assert!(q.check(tat, now + 6 * SEC).0.allowed);
    }

    #[test]
    fn one_per_second() {
        let q = Quota::new(1, Duration::from_secs(1), None);
        let (d, tat) = q.check(0, 50 * SEC);
        assert!(d.allowed && d.remaining == 0);
        let (d, _) = q.check(tat, 50 * SEC + SEC / 2);
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Duration::from_millis(500));
        assert!(q.check(tat, 51 * SEC).0.allowed);
    }

    #[test]
    fn idle_keys_return_to_full_burst() {
        let q = Quota::new(5, Duration::from_secs(10), None);
        let mut tat = 0;
        for _ in 0..5 {
            tat = q.check(tat, 100 * SEC).1;
        }
        assert!(!q.check(tat, 100 * SEC).0.allowed);
        let later = 100 * SEC + q.horizon().as_nanos() as u64;
        assert_eq!(q.check(tat, later).0.remaining, 4, "after the horizon the key is as good as new");
    }
}
