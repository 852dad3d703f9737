//! Per-worker health: in-flight branches and a circuit breaker.
//!
//! The breaker opens after `failures` consecutive failed or timed-out branches; while
//! open the router skips the worker. After `cool_down` it is half-open: exactly one
//! trial branch is let through; its success closes the breaker, its failure opens it
//! again for another cool-down. State is atomic so the gather tasks update it without
//! a message round trip.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Circuit-breaker settings for every worker of a router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Breaker {
    pub(crate) failures: u32,
    pub(crate) cool_down: Duration,
}

impl Breaker {
    /// Open after `failures` consecutive failures (at least 1); half-open after 30 s.
    pub fn after(failures: u32) -> Self {
        Breaker {
            failures: failures.max(1),
            cool_down: Duration::from_secs(30),
        }
    }

    /// How long an open breaker waits before letting one trial through.
    pub fn cool_down(mut self, d: Duration) -> Self {
        self.cool_down = d;
        self
    }
}

/// A breaker's state, as reported by [`crate::router::RouterHandle::breakers`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows.
    Closed,
    /// Skipped until the cool-down ends.
    Open,
    /// One trial branch allowed (or in flight).
    HalfOpen,
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    consecutive: AtomicU32,
    /// 1 + nanoseconds since the hierarchy started when the breaker opened; 0 = closed.
    opened_at: AtomicU64,
    trial: AtomicBool,
}

impl Health {
    pub(crate) fn state(&self, cfg: Option<&Breaker>, now: Duration) -> BreakerState {
        let Some(cfg) = cfg else {
            return BreakerState::Closed;
        };
        let opened = self.opened_at.load(Ordering::Acquire);
        if opened == 0 {
            return BreakerState::Closed;
        }
        let since = now.saturating_sub(Duration::from_nanos(opened - 1));
        if since >= cfg.cool_down {
            BreakerState::HalfOpen
        } else {
            BreakerState::Open
        }
    }

    /// May a new branch go to this worker? Takes the half-open trial slot if that is
    /// what lets it through.
    pub(crate) fn admit(&self, cfg: Option<&Breaker>, now: Duration) -> bool {
        match self.state(cfg, now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self
                .trial
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
        }
    }

    /// Record a branch's end. `ok` is an answer or an escalation; a failure or timeout
    /// counts against the breaker.
    pub(crate) fn finish(&self, cfg: Option<&Breaker>, now: Duration, ok: bool) {
        let Some(cfg) = cfg else {
            return;
        };
        let was_trial = self.trial.swap(false, Ordering::AcqRel);
        if ok {
            self.consecutive.store(0, Ordering::Release);
            self.opened_at.store(0, Ordering::Release);
        } else {
            let n = self.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
            if n >= cfg.failures || was_trial {
                // stored plus one: 0 means closed, and an opening at t = 0 must not
                // shift the cool-down
                let at = u64::try_from(now.as_nanos())
                    .unwrap_or(u64::MAX - 1)
                    .saturating_add(1);
                self.opened_at.store(at, Ordering::Release);
            }
        }
    }

    /// A branch that neither succeeded nor failed (discarded) gives up the half-open
    /// trial it may hold, so a later request can try.
    pub(crate) fn release_trial(&self) {
        self.trial.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_after_cool_down() {
        let cfg = Breaker::after(2).cool_down(Duration::from_secs(10));
        let h = Health::default();
        let t = Duration::from_secs;
        h.finish(Some(&cfg), t(1), false);
        assert_eq!(h.state(Some(&cfg), t(1)), BreakerState::Closed);
        h.finish(Some(&cfg), t(2), false);
        assert_eq!(h.state(Some(&cfg), t(2)), BreakerState::Open);
        assert!(!h.admit(Some(&cfg), t(5)));
        assert_eq!(h.state(Some(&cfg), t(12)), BreakerState::HalfOpen);
        assert!(h.admit(Some(&cfg), t(12)), "one trial");
        assert!(!h.admit(Some(&cfg), t(12)), "only one trial");
        h.finish(Some(&cfg), t(13), false);
        assert_eq!(
            h.state(Some(&cfg), t(13)),
            BreakerState::Open,
            "a failed trial reopens"
        );
        assert!(h.admit(Some(&cfg), t(24)));
        h.finish(Some(&cfg), t(24), true);
        assert_eq!(
            h.state(Some(&cfg), t(24)),
            BreakerState::Closed,
            "a good trial closes"
        );
    }

    #[test]
    fn without_a_breaker_everything_is_admitted() {
        let h = Health::default();
        for _ in 0..10 {
            h.finish(None, Duration::ZERO, false);
        }
        assert!(h.admit(None, Duration::ZERO));
    }
}
