//! Abuse limits: a token bucket per key (GCRA, `governor`), answering how
//! long to wait when the key is over its limit. The services key one by the
//! caller's `sub` and one by the client address for failed authentication.

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock as _, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

/// Every this many checks, keys whose bucket is full again are forgotten,
/// so memory follows the active keys, not every key ever seen.
const HOUSEKEEPING_EVERY: u64 = 4096;

/// Failed authentications allowed per client address and second.
pub(crate) const FAILED_AUTH_PER_SECOND: u32 = 20;
/// Failed authentications a client address may burst.
pub(crate) const FAILED_AUTH_BURST: u32 = 40;

/// A token bucket per key, or no limit at all.
pub struct KeyedLimiter<K: Hash + Eq + Clone> {
    limiter: Option<RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KeyedLimiter")
            .field("on", &self.limiter.is_some())
            .field("keys", &self.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `per_second` requests a second per key, bursts of `burst`; either
    /// 0 turns the limit off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let limiter = match (NonZeroU32::new(per_second), NonZeroU32::new(burst)) {
            (Some(rate), Some(burst)) => Some(RateLimiter::dashmap(
                Quota::per_second(rate).allow_burst(burst),
            )),
            _ => None,
        };
        KeyedLimiter {
            limiter,
            checks: AtomicU64::new(0),
        }
    }

    /// No limit.
    pub fn off() -> Self {
        KeyedLimiter::new(0, 0)
    }

    pub fn is_off(&self) -> bool {
        self.limiter.is_none()
    }

    /// Takes one request from `key`'s bucket: `Ok`, or `Err` with the whole
    /// seconds to wait (at least 1) before the key is served again, for a
    /// `Retry-After` header.
    pub fn check(&self, key: &K) -> Result<(), u64> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % HOUSEKEEPING_EVERY
            == HOUSEKEEPING_EVERY - 1
        {
            self.retain_recent();
        }
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            seconds.max(1)
        })
    }

    /// Forgets the keys whose bucket is full again (they are in the state a
    /// new key starts in). [`KeyedLimiter::check`] does it every few
    /// thousand checks; a service may also call it from a timer.
    pub fn retain_recent(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |limiter| limiter.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl KeyedLimiter<IpAddr> {
    /// The limit on failed authentication per client address (20/s, burst
    /// 40).
    pub fn failed_authentication() -> Self {
        KeyedLimiter::new(FAILED_AUTH_PER_SECOND, FAILED_AUTH_BURST)
    }
}

impl KeyedLimiter<String> {
    /// [`KeyedLimiter::check`] for a caller's subject.
    pub fn check_caller(&self, caller: &crate::Caller) -> Result<(), u64> {
        if self.is_off() {
            return Ok(());
        }
        self.check(&caller.subject().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::Caller;

    #[test]
    fn a_burst_past_the_limit_is_refused_and_other_callers_are_not_affected() {
        let limiter = KeyedLimiter::<String>::new(5, 10);
        let greedy = Caller::operator("greedy");
        let (mut served, mut refused) = (0, Vec::new());
        for _ in 0..30 {
            match limiter.check_caller(&greedy) {
                Ok(()) => served += 1,
                Err(retry_after) => refused.push(retry_after),
            }
        }
        // The burst, and perhaps a token refilled while the loop ran.
        assert!((10..=11).contains(&served), "served {served}");
        assert!(!refused.is_empty());
        assert!(refused.iter().all(|&seconds| seconds >= 1), "{refused:?}");
        assert_eq!(limiter.check_caller(&Caller::operator("modest")), Ok(()));
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        // One request a second: the second request waits just under 1 s.
        let limiter = KeyedLimiter::<IpAddr>::new(1, 1);
        let address: IpAddr = [192, 0, 2, 1].into();
        assert_eq!(limiter.check(&address), Ok(()));
        assert_eq!(limiter.check(&address), Err(1));
        // One every 2.5 s: just under 2.5 s, rounded up to 3.
        let slow = KeyedLimiter {
            limiter: Some(RateLimiter::dashmap(
                Quota::with_period(Duration::from_millis(2500)).unwrap(),
            )),
            checks: AtomicU64::new(0),
        };
        assert_eq!(slow.check(&address), Ok(()));
        assert_eq!(slow.check(&address), Err(3));
    }

    #[test]
    fn zero_turns_the_limit_off() {
        for (rate, burst) in [(0, 400), (200, 0)] {
            let limiter = KeyedLimiter::<String>::new(rate, burst);
            assert!(limiter.is_off());
            let caller = Caller::operator("anyone");
            assert!((0..1000).all(|_| limiter.check_caller(&caller).is_ok()));
        }
    }

    #[test]
    fn failed_authentication_allows_a_burst_of_40_per_address() {
        let limiter = KeyedLimiter::failed_authentication();
        let address: IpAddr = [198, 51, 100, 7].into();
        let served = (0..100).filter(|_| limiter.check(&address).is_ok()).count();
        assert!((40..=41).contains(&served), "served {served}");
    }

    #[test]
    fn keys_whose_bucket_refilled_are_forgotten() {
        let limiter = KeyedLimiter::<u32>::new(1000, 1);
        for key in 0..HOUSEKEEPING_EVERY as u32 - 1 {
            limiter.check(&key).unwrap();
        }
        assert_eq!(limiter.len(), HOUSEKEEPING_EVERY as usize - 1);
        // A bucket of one refills in 1 ms; the next check does housekeeping.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut key = u32::MAX;
        loop {
            limiter.check(&key).unwrap();
            if limiter.len() < 10 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} keys remembered",
                limiter.len()
            );
            limiter
                .checks
                .store(HOUSEKEEPING_EVERY - 1, Ordering::Relaxed);
            key -= 1;
        }
    }
}
