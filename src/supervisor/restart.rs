//! Restart strategies, child restart policies, restart intensity and backoff.
//!
//! The semantics follow OTP's supervisor:
//! - [`Strategy`] says *which* children restart when one fails.
//! - [`RestartPolicy`] says *whether* a child is restarted when it ends.
//! - [`Intensity`] bounds restarts per period; one restart too many and the supervisor
//!   gives up: it fails itself and its own supervisor decides (failure escalation).
//! - [`Backoff`] delays a child's restart when it keeps crashing.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Which children restart when one fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Only the failed child.
    #[default]
    OneForOne,
    /// Every child of the supervisor.
    OneForAll,
    /// The failed child and every child started after it (the lead starts first,
    /// then reports in index order).
    RestForOne,
}

impl Strategy {
    /// Indices of the children to restart when child `failed` of `n` fails.
    pub(crate) fn affected(self, failed: usize, n: usize) -> std::ops::Range<usize> {
        match self {
            Strategy::OneForOne => failed..failed + 1,
            Strategy::OneForAll => 0..n,
            Strategy::RestForOne => failed..n,
        }
    }
}

/// Whether a child is restarted when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Always restarted, even after a normal exit.
    #[default]
    Permanent,
    /// Restarted only after a crash; a normal exit ends it.
    Transient,
    /// Never restarted: a crash or exit ends it, and the tasks it holds fail.
    Temporary,
}

/// At most `max` restarts within `period`; one more and the supervisor fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    pub(crate) max: u32,
    pub(crate) period: Duration,
}

impl Intensity {
    /// At most `max` restarts (per [`Intensity::per`], default 5 seconds).
    pub fn at_most(max: u32) -> Self {
        Intensity {
            max,
            period: Duration::from_secs(5),
        }
    }

    /// The period over which restarts are counted.
    pub fn per(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// The maximum number of restarts in a period.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }
}

impl Default for Intensity {
    /// OTP's default: at most 1 restart in 5 seconds is very strict for agents; echelon
    /// defaults to 10 in 10 seconds.
    fn default() -> Self {
        Intensity::at_most(10).per(Duration::from_secs(10))
    }
}

/// Exponential backoff before a repeatedly crashing child restarts:
/// `initial * factor^(n-1)` for its n-th restart within the intensity period, capped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub(crate) initial: Duration,
    pub(crate) max: Duration,
    pub(crate) factor: f64,
}

impl Backoff {
    /// Doubling backoff from `initial`, capped at `max`.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            factor: 2.0,
        }
    }

    /// Use another growth factor (at least 1.0).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        self
    }

    /// Delay before the `n`-th consecutive restart (n from 1).
    pub fn delay(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

/// Restart times within the intensity period.
#[derive(Debug)]
pub(crate) struct RestartWindow {
    intensity: Intensity,
    times: VecDeque<Instant>,
}

impl RestartWindow {
    pub(crate) fn new(intensity: Intensity) -> Self {
        RestartWindow {
            intensity,
            times: VecDeque::new(),
        }
    }

    /// Record a restart at `now`. False if that would exceed the intensity.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        while let Some(&t) = self.times.front() {
            if now.saturating_duration_since(t) >= self.intensity.period {
                self.times.pop_front();
            } else {
                break;
            }
        }
        if self.times.len() >= self.intensity.max as usize {
            return false;
        }
        self.times.push_back(now);
        true
    }

    pub(crate) fn clear(&mut self) {
        self.times.clear();
    }

    pub(crate) fn intensity(&self) -> Intensity {
        self.intensity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategies_pick_the_right_children() {
        assert_eq!(Strategy::OneForOne.affected(2, 5), 2..3);
        assert_eq!(Strategy::OneForAll.affected(2, 5), 0..5);
        assert_eq!(Strategy::RestForOne.affected(2, 5), 2..5);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_millis(50));
        assert_eq!(b.delay(1), Duration::from_millis(10));
        assert_eq!(b.delay(2), Duration::from_millis(20));
        assert_eq!(b.delay(3), Duration::from_millis(40));
        assert_eq!(b.delay(4), Duration::from_millis(50));
        assert_eq!(b.delay(1000), Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn window_admits_max_then_refuses_until_period_passes() {
        let mut w = RestartWindow::new(Intensity::at_most(2).per(Duration::from_secs(10)));
        let t0 = Instant::now();
        assert!(w.admit(t0));
        assert!(w.admit(t0 + Duration::from_secs(1)));
        assert!(!w.admit(t0 + Duration::from_secs(2)));
        assert!(w.admit(t0 + Duration::from_secs(10)));
    }
}
