//! Rate limiting with the generic cell rate algorithm (GCRA). A limit of `n` requests per window
//! `w` admits a burst of `n` and then one request every `w / n`: there is no window boundary, so
//! no 2x burst across one. Each counter is a single "theoretical arrival time"; checks against
//! several counters are all-or-nothing, so a rejected request consumes nothing.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::spec::Limit;

const NANOS: u128 = 1_000_000_000;
/// How many acquisitions between sweeps of fully replenished counters.
const SWEEP_EVERY: u64 = 65_536;

/// Identifies one counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BucketKey {
    /// API id.
    pub api: String,
    /// `api` for API-level policies, the operation's route key for operation-level ones.
    pub scope: String,
    /// Policy name.
    pub policy: String,
    /// Index of the limit within the policy.
    pub index: usize,
}

/// The state of one counter after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The limit's request count.
    pub limit: u64,
    /// The limit's window in seconds.
    pub window_secs: u64,
    /// Requests still admissible right now.
    pub remaining: u64,
    /// Nanoseconds until the counter is fully replenished.
    pub reset_after_ns: u128,
    /// Nanoseconds until a request would be admitted (0 when admitted).
    pub retry_after_ns: u128,
}

/// The outcome of checking several limits at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// Whether every limit admitted the request (then each counted it).
    pub allowed: bool,
    /// The state of every limit, in the order given.
    pub states: Vec<LimitState>,
}

impl Acquired {
    /// The most restrictive limit: a refusing one if any, else the one with the fewest remaining.
    pub fn most_restrictive(&self) -> Option<&LimitState> {
        self.states
            .iter()
            .min_by_key(|s| (s.retry_after_ns == 0, s.remaining, s.limit))
    }
}

/// Counters of this process. Never blocks on I/O; the lock is held for a few map operations.
#[derive(Debug, Default)]
pub struct Limiter {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tat: HashMap<BucketKey, u128>,
    ops: u64,
}

fn interval_ns(l: &Limit) -> u128 {
    (u128::from(l.window_secs) * NANOS / u128::from(l.requests.max(1))).max(1)
}

impl Limiter {
    /// Checks `limits` at time `now_ns` and, only if all admit the request, counts it in each.
    pub fn acquire(&self, limits: &[(BucketKey, Limit)], now_ns: u128) -> Acquired {
        let mut inner = match self.inner.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut states = Vec::with_capacity(limits.len());
        let mut next = Vec::with_capacity(limits.len());
        for (key, l) in limits {
            let t = interval_ns(l);
            let window = u128::from(l.window_secs) * NANOS;
            let tat = inner.tat.get(key).copied().unwrap_or(now_ns).max(now_ns);
            let new_tat = tat + t;
            if new_tat - now_ns <= window {
                states.push(LimitState {
                    limit: l.requests,
                    window_secs: l.window_secs,
                    remaining: ((window - (new_tat - now_ns)) / t) as u64,
                    reset_after_ns: new_tat - now_ns,
                    retry_after_ns: 0,
                });
            } else {
                states.push(LimitState {
                    limit: l.requests,
                    window_secs: l.window_secs,
                    remaining: 0,
                    reset_after_ns: tat - now_ns,
                    retry_after_ns: new_tat - window - now_ns,
                });
            }
            next.push(new_tat);
        }
        let allowed = states.iter().all(|s| s.retry_after_ns == 0);
        if allowed {
            for ((key, _), tat) in limits.iter().zip(next) {
                inner.tat.insert(key.clone(), tat);
            }
        } else {
            // Nothing was consumed: report what the remaining counts would be without this request.
            for ((key, l), s) in limits
                .iter()
                .zip(states.iter_mut())
                .filter(|(_, s)| s.retry_after_ns == 0)
            {
                let t = interval_ns(l);
                let window = u128::from(l.window_secs) * NANOS;
                let tat = inner.tat.get(key).copied().unwrap_or(now_ns).max(now_ns);
                s.remaining = ((window - (tat - now_ns)) / t) as u64;
                s.reset_after_ns = tat - now_ns;
            }
        }
        inner.ops += 1;
        if inner.ops % SWEEP_EVERY == 0 {
            inner.tat.retain(|_, tat| *tat > now_ns);
        }
        Acquired { allowed, states }
    }

    /// Number of live counters.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|g| g.tat.len()).unwrap_or(0)
    }

    /// True when no counter is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u128 = NANOS;

    fn key(scope: &str) -> BucketKey {
        BucketKey {
            api: "a".into(),
            scope: scope.into(),
            policy: "rate-limit".into(),
            index: 0,
        }
    }

    fn lim(requests: u64, window_secs: u64) -> Limit {
        Limit {
            requests,
            window_secs,
        }
    }

    #[test]
    fn admits_a_burst_of_the_limit_then_refuses_with_retry_after() {
        let l = Limiter::default();
        let c = [(key("api"), lim(3, 60))];
        let t0 = 1_000 * S;
        for expected_remaining in [2, 1, 0] {
            let a = l.acquire(&c, t0);
            assert!(a.allowed);
            assert_eq!(a.states[0].remaining, expected_remaining);
        }
        let a = l.acquire(&c, t0);
        assert!(!a.allowed);
        assert_eq!(a.states[0].remaining, 0);
        assert_eq!(
            a.states[0].retry_after_ns,
            20 * S,
            "one request every 60/3 s"
        );
        assert_eq!(a.states[0].reset_after_ns, 60 * S);
        // One emission interval later exactly one more is admitted.
        assert!(l.acquire(&c, t0 + 20 * S).allowed);
        assert!(!l.acquire(&c, t0 + 20 * S).allowed);
    }

    #[test]
    fn no_double_burst_at_a_window_boundary() {
        let l = Limiter::default();
        let c = [(key("api"), lim(10, 10))];
        let t0 = 5 * S;
        let first: usize = (0..20)
            .filter(|_| l.acquire(&c, t0 + 9 * S).allowed)
            .count();
        let second: usize = (0..20)
            .filter(|_| l.acquire(&c, t0 + 11 * S).allowed)
            .count();
        assert_eq!(first, 10);
        assert_eq!(second, 2, "2 s later only 2 more, not a fresh window of 10");
    }

    #[test]
    fn full_window_restores_the_whole_limit() {
        let l = Limiter::default();
        let c = [(key("api"), lim(5, 60))];
        for _ in 0..5 {
            l.acquire(&c, 0);
        }
        assert!(!l.acquire(&c, 0).allowed);
        let a = l.acquire(&c, 60 * S);
        assert!(a.allowed);
        assert_eq!(a.states[0].remaining, 4);
    }

    #[test]
    fn checks_are_all_or_nothing() {
        let l = Limiter::default();
        let api = (key("api"), lim(100, 60));
        let op = (key("GET /x"), lim(1, 60));
        assert!(l.acquire(&[api.clone(), op.clone()], 0).allowed);
        let a = l.acquire(&[api.clone(), op.clone()], 0);
        assert!(!a.allowed);
        assert_eq!(
            a.states[0].remaining, 99,
            "the refused request did not consume the API counter"
        );
        assert_eq!(a.most_restrictive().map(|s| s.limit), Some(1));
        assert_eq!(l.acquire(&[api], 0).states[0].remaining, 98);
    }

    #[test]
    fn counters_are_independent_and_swept_when_replenished() {
        let l = Limiter::default();
        assert!(l.acquire(&[(key("a"), lim(1, 1))], 0).allowed);
        assert!(l.acquire(&[(key("b"), lim(1, 1))], 0).allowed);
        assert_eq!(l.len(), 2);
        for i in 0..SWEEP_EVERY {
            l.acquire(&[(key("c"), lim(u64::MAX, 1))], 10 * S + u128::from(i));
        }
        assert_eq!(l.len(), 1, "replenished counters are dropped");
    }
}
