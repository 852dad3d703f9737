//! Stages and their retry policy.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::agent::Agent;
use crate::hierarchy::Tier;
use crate::router::RouterBuilder;
use crate::supervisor::spec::BoxFuture;

/// The error a function stage returns.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StageError {
    /// Worth another attempt (a flaky dependency, a busy service).
    #[error("{0}")]
    Retryable(String),
    /// No retry can fix it.
    #[error("{0}")]
    Permanent(String),
}

pub(crate) type StageFn<M> =
    Arc<dyn Fn(M) -> BoxFuture<'static, Result<M, StageError>> + Send + Sync>;

pub(crate) enum StageKind<M> {
    /// A node of the pipeline's team: an agent, a router, or a team (the first tier's
    /// single agent leads the tiers below it). The first tier's node is the entry.
    Node(Vec<Tier<M>>),
    /// A plain async function, run inside the pipeline's run task.
    Function(StageFn<M>),
}

/// Which failures a stage retries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RetryOn {
    /// Timeouts only.
    Timeouts,
    /// Failures (crashes, losses, retryable function errors) only.
    Failures,
    /// Both (default). Rejections and budget exhaustion are never retried.
    #[default]
    TimeoutsAndFailures,
}

/// Retry with exponential backoff and seeded jitter.
///
/// The delay before attempt `n + 1` is `min(max, base * 2^(n-1))`, then reduced by a
/// random fraction up to `jitter` (so it lies in `[d * (1 - jitter), d]`), drawn from
/// an RNG seeded by the hierarchy seed and the task: a run replays the same delays.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retry {
    pub(crate) max_attempts: u32,
    pub(crate) base: Duration,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
    pub(crate) on: RetryOn,
}

impl Retry {
    /// No retry: one attempt.
    pub fn none() -> Self {
        Retry::attempts(1)
    }

    /// Up to `n` attempts (at least 1), backoff from 10 ms to 1 s, jitter 0.5.
    pub fn attempts(n: u32) -> Self {
        Retry {
            max_attempts: n.max(1),
            base: Duration::from_millis(10),
            max: Duration::from_secs(1),
            jitter: 0.5,
            on: RetryOn::default(),
        }
    }

    /// Backoff from `base`, doubling, capped at `max`.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base = base;
        self.max = max.max(base);
        self
    }

    /// Jitter fraction in `0.0..=1.0` (0 = exact delays).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Which failures to retry.
    pub fn on(mut self, on: RetryOn) -> Self {
        self.on = on;
        self
    }

    /// The delay before the attempt after attempt `n` (n from 1).
    pub(crate) fn delay(&self, n: u32, rng: &mut impl Rng) -> Duration {
        let exp = n.saturating_sub(1).min(30) as i32;
        let d = self.base.as_secs_f64() * 2f64.powi(exp);
        let d = d.min(self.max.as_secs_f64());
        let cut = if self.jitter > 0.0 {
            self.jitter * rng.random::<f64>()
        } else {
            0.0
        };
        Duration::try_from_secs_f64((d * (1.0 - cut)).max(0.0)).unwrap_or(self.max)
    }

    pub(crate) fn retries(&self, timed_out: bool) -> bool {
        match self.on {
            RetryOn::Timeouts => timed_out,
            RetryOn::Failures => !timed_out,
            RetryOn::TimeoutsAndFailures => true,
        }
    }
}

impl Default for Retry {
    fn default() -> Self {
        Retry::none()
    }
}

/// One stage of a pipeline.
pub struct Stage<M> {
    pub(crate) name: String,
    pub(crate) kind: StageKind<M>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Retry,
    pub(crate) fallback: Option<Box<Stage<M>>>,
    pub(crate) cost: u64,
}

impl<M> fmt::Debug for Stage<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            StageKind::Node(t) => format!("node({})", t.len()),
            StageKind::Function(_) => "function".to_string(),
        };
        f.debug_struct("Stage")
            .field("name", &self.name)
            .field("kind", &kind)
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("fallback", &self.fallback)
            .finish()
    }
}

impl<M: crate::Message> Stage<M> {
    fn of(name: String, kind: StageKind<M>) -> Self {
        Stage {
            name,
            kind,
            timeout: None,
            retry: Retry::none(),
            fallback: None,
            cost: 0,
        }
    }

    /// A stage run by one supervised agent built by `factory`. Its reply is the next
    /// stage's input; `Verdict::Done` passes the input through unchanged; an escalation
    /// ends the run and escalates it.
    pub fn agent<A, F>(name: impl Into<String>, factory: F) -> Self
    where
        A: Agent<Msg = M>,
        F: Fn(usize) -> A + Send + Sync + 'static,
    {
        let name = name.into();
        Stage::of(
            name.clone(),
            StageKind::Node(vec![Tier::new(name, 1, factory)]),
        )
    }

    /// A stage that is a plain async function.
    pub fn function<F, Fut>(name: impl Into<String>, f: F) -> Self
    where
        F: Fn(M) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<M, StageError>> + Send + 'static,
    {
        let f: StageFn<M> = Arc::new(move |m| Box::pin(f(m)));
        Stage::of(name.into(), StageKind::Function(f))
    }

    /// A stage that is a router (fan-out and fan-in inside the stage). The router's
    /// gathered result is the stage's output.
    pub fn router(router: RouterBuilder<M>) -> Self {
        let tier = router.into_tier(1);
        let name = tier.name().to_string();
        Stage::of(name, StageKind::Node(vec![tier]))
    }

    /// A stage that is a supervised team: `tiers[0]` must have exactly one agent, the
    /// team's lead and the stage's entry; the tiers below report to it as in a
    /// hierarchy (the lead can forward work to them and receives their escalations).
    pub fn team(name: impl Into<String>, tiers: Vec<Tier<M>>) -> Self {
        Stage::of(name.into(), StageKind::Node(tiers))
    }

    /// Fail an attempt that takes longer than `d`. The attempt's branch keeps running
    /// in its agent; its late answer is ignored.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Retry policy (default: one attempt).
    pub fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    /// Run `fallback` once the retries are exhausted; its output replaces this stage's.
    pub fn fallback(mut self, fallback: Stage<M>) -> Self {
        self.fallback = Some(Box::new(fallback));
        self
    }

    /// Charge `units` of the run's budget per attempt.
    pub fn cost(mut self, units: u64) -> Self {
        self.cost = units;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_double_cap_and_jitter_within_bounds() {
        let r = Retry::attempts(5)
            .backoff(Duration::from_millis(100), Duration::from_millis(300))
            .jitter(0.0);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let ds: Vec<u128> = (1..=4).map(|n| r.delay(n, &mut rng).as_millis()).collect();
        assert_eq!(ds, vec![100, 200, 300, 300]);
        let j = r.jitter(0.5);
        for n in 1..=4 {
            let d = j.delay(n, &mut rng);
            let full = r.delay(n, &mut rng);
            assert!(
                d <= full && d >= full / 2,
                "{d:?} within [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
