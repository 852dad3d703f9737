//! Escalation thresholds and repeat suppression.
//!
//! Each supervisor compares an escalation's severity with the threshold of the tier it
//! supervises: below it, the escalation is *absorbed* (complete, recorded at this
//! level); at or above, it goes on. A repeat with the same key inside the suppression
//! window is *folded* into the first (complete, recorded as suppressed), which is how
//! a hierarchy avoids alert fatigue without hiding the first occurrence.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// When an escalation goes up, and how repeats are folded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub(crate) severity: f64,
    pub(crate) suppress: Option<Duration>,
}

impl Threshold {
    /// Escalations with severity `>= severity` go up; lower ones are absorbed.
    /// Values are clamped to `0.0..=1.0`; NaN is treated as 0.0 (everything goes up).
    pub fn severity(severity: f64) -> Self {
        let severity = if severity.is_nan() {
            0.0
        } else {
            severity.clamp(0.0, 1.0)
        };
        Threshold {
            severity,
            suppress: None,
        }
    }

    /// Everything goes up (threshold 0).
    pub fn pass_all() -> Self {
        Threshold::severity(0.0)
    }

    /// Fold repeats with the same key that arrive within `window` of the last one that
    /// went up.
    pub fn suppress_repeats(mut self, window: Duration) -> Self {
        self.suppress = if window.is_zero() { None } else { Some(window) };
        self
    }

    /// The severity threshold.
    pub fn level(&self) -> f64 {
        self.severity
    }

    /// The suppression window, if any.
    pub fn window(&self) -> Option<Duration> {
        self.suppress
    }
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::pass_all()
    }
}

/// Remembers when each key last went up.
#[derive(Debug, Default)]
pub(crate) struct Suppressor {
    last: HashMap<String, Instant>,
    next_sweep: usize,
}

impl Suppressor {
    /// True if the escalation with `key` may go up at `now`; records it if so.
    pub(crate) fn admit(&mut self, key: String, window: Duration, now: Instant) -> bool {
        if self.last.len() >= self.next_sweep.max(1024) {
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < window);
            self.next_sweep = self.last.len() * 2;
        }
        match self.last.get_mut(&key) {
            Some(t) if now.saturating_duration_since(*t) < window => false,
            Some(t) => {
                *t = now;
                true
            }
            None => {
                self.last.insert(key, now);
                true
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.last.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_clamps_and_handles_nan() {
        assert_eq!(Threshold::severity(2.0).level(), 1.0);
        assert_eq!(Threshold::severity(-1.0).level(), 0.0);
        assert_eq!(Threshold::severity(f64::NAN).level(), 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn repeats_inside_the_window_are_folded() {
        let mut s = Suppressor::default();
        let w = Duration::from_secs(60);
        let t0 = Instant::now();
        assert!(s.admit("a".into(), w, t0));
        assert!(!s.admit("a".into(), w, t0 + Duration::from_secs(59)));
        assert!(s.admit("b".into(), w, t0 + Duration::from_secs(59)));
        assert!(s.admit("a".into(), w, t0 + Duration::from_secs(60)));
    }
}
