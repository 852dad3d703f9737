//! Fan-out: which workers a request goes to.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use rand::Rng;

/// How a router picks workers for a request.
pub enum Route<M> {
    /// Every eligible worker gets a copy; results are gathered by the [`crate::router::Gather`].
    Broadcast,
    /// The next eligible worker in turn.
    RoundRobin,
    /// A random eligible worker (seeded: the hierarchy seed replays the same choices).
    Random,
    /// The eligible worker with the fewest branches in flight (ties: lowest index).
    LeastLoaded,
    /// The same key always goes to the same worker (hash of the key modulo the number
    /// of workers), so per-key order is kept; stable across worker restarts. If that
    /// worker is ineligible (breaker open, at capacity), the next one in index order.
    KeySticky(Arc<dyn Fn(&M) -> u64 + Send + Sync>),
    /// A user function names the worker by index (the support desk's manager). An
    /// index out of range or an ineligible worker fails the request with a reason.
    Classify(Arc<dyn Fn(&M) -> usize + Send + Sync>),
}

impl<M> Route<M> {
    /// Route by a key: the key's hash picks the worker.
    pub fn key_sticky<K: Hash>(key: impl Fn(&M) -> K + Send + Sync + 'static) -> Self {
        Route::KeySticky(Arc::new(move |m| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            key(m).hash(&mut h);
            h.finish()
        }))
    }

    /// Route by a classifier that returns a worker index.
    pub fn classify(f: impl Fn(&M) -> usize + Send + Sync + 'static) -> Self {
        Route::Classify(Arc::new(f))
    }

    pub(crate) fn is_broadcast(&self) -> bool {
        matches!(self, Route::Broadcast)
    }
}

impl<M> Clone for Route<M> {
    fn clone(&self) -> Self {
        match self {
            Route::Broadcast => Route::Broadcast,
            Route::RoundRobin => Route::RoundRobin,
            Route::Random => Route::Random,
            Route::LeastLoaded => Route::LeastLoaded,
            Route::KeySticky(f) => Route::KeySticky(f.clone()),
            Route::Classify(f) => Route::Classify(f.clone()),
        }
    }
}

impl<M> fmt::Debug for Route<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Broadcast => "Broadcast",
            Route::RoundRobin => "RoundRobin",
            Route::Random => "Random",
            Route::LeastLoaded => "LeastLoaded",
            Route::KeySticky(_) => "KeySticky",
            Route::Classify(_) => "Classify",
        })
    }
}

/// Why no worker could take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PickError {
    NoneEligible,
    ClassifiedOutOfRange { index: usize, workers: usize },
    ClassifiedIneligible { index: usize },
}

/// Pick workers. `eligible(i)` says whether worker `i` may take a branch now (breaker,
/// capacity) and, when it says yes, may reserve the breaker's half-open trial: call it
/// only for a worker that will be used. `load(i)` is its in-flight count.
pub(crate) fn pick<M>(
    route: &Route<M>,
    msg: &M,
    n: usize,
    next: &mut usize,
    rng: &mut impl Rng,
    load: impl Fn(usize) -> u32,
    mut eligible: impl FnMut(usize) -> bool,
) -> Result<Vec<usize>, PickError> {
    if n == 0 {
        return Err(PickError::NoneEligible);
    }
    let first_from = |start: usize, eligible: &mut dyn FnMut(usize) -> bool| {
        (0..n).map(|k| (start + k) % n).find(|&i| eligible(i))
    };
    let one = match route {
        Route::Broadcast => {
            let mut all = Vec::with_capacity(n);
            all.extend((0..n).filter(|&i| eligible(i)));
            return if all.is_empty() {
                Err(PickError::NoneEligible)
            } else {
                Ok(all)
            };
        }
        Route::RoundRobin => {
            let start = *next % n;
            let i = first_from(start, &mut eligible);
            if let Some(i) = i {
                *next = i + 1;
            }
            i
        }
        Route::Random => {
            let start = rng.random_range(0..n);
            first_from(start, &mut eligible)
        }
        Route::LeastLoaded => {
            // read each load once: queue depths change while we sort, and a sort whose
            // keys move under it is not a total order
            let mut order: Vec<(u32, usize)> = (0..n).map(|i| (load(i), i)).collect();
            order.sort_unstable();
            order.into_iter().map(|(_, i)| i).find(|&i| eligible(i))
        }
        Route::KeySticky(key) => {
            let start = (key(msg) % n as u64) as usize;
            first_from(start, &mut eligible)
        }
        Route::Classify(f) => {
            let i = f(msg);
            if i >= n {
                return Err(PickError::ClassifiedOutOfRange {
                    index: i,
                    workers: n,
                });
            }
            if !eligible(i) {
                return Err(PickError::ClassifiedIneligible { index: i });
            }
            Some(i)
        }
    };
    one.map(|i| vec![i]).ok_or(PickError::NoneEligible)
}

/// The randomness of a pick whose route draws none (all but [`Route::Random`]): it is
/// never asked for a number; if it were, it would give zeros.
pub(crate) struct NoRng;

impl rand::RngCore for NoRng {
    fn next_u32(&mut self) -> u32 {
        0
    }
    fn next_u64(&mut self) -> u64 {
        0
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn go(
        route: &Route<u32>,
        msg: u32,
        next: &mut usize,
        ok: &[bool],
    ) -> Result<Vec<usize>, PickError> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        pick(
            route,
            &msg,
            ok.len(),
            next,
            &mut rng,
            |i| [3, 1, 1, 0][i],
            |i| ok[i],
        )
    }

    #[test]
    fn round_robin_skips_ineligible_and_wraps() {
        let mut next = 0;
        let all = [true; 4];
        assert_eq!(go(&Route::RoundRobin, 0, &mut next, &all), Ok(vec![0]));
        assert_eq!(go(&Route::RoundRobin, 0, &mut next, &all), Ok(vec![1]));
        assert_eq!(
            go(&Route::RoundRobin, 0, &mut next, &[true, true, false, true]),
            Ok(vec![3])
        );
        assert_eq!(go(&Route::RoundRobin, 0, &mut next, &all), Ok(vec![0]));
    }

    #[test]
    fn least_loaded_prefers_fewest_in_flight_then_lowest_index() {
        let mut next = 0;
        assert_eq!(
            go(&Route::LeastLoaded, 0, &mut next, &[true; 4]),
            Ok(vec![3])
        );
        assert_eq!(
            go(
                &Route::LeastLoaded,
                0,
                &mut next,
                &[true, true, true, false]
            ),
            Ok(vec![1])
        );
    }

    #[test]
    fn key_sticky_is_stable_and_classify_checks_range() {
        let r = Route::key_sticky(|m: &u32| *m % 10);
        let mut next = 0;
        let a = go(&r, 13, &mut next, &[true; 4]);
        assert_eq!(
            a,
            go(&r, 23, &mut next, &[true; 4]),
            "same key, same worker"
        );
        let c = Route::classify(|m: &u32| *m as usize);
        assert_eq!(go(&c, 2, &mut next, &[true; 4]), Ok(vec![2]));
        assert_eq!(
            go(&c, 9, &mut next, &[true; 4]),
            Err(PickError::ClassifiedOutOfRange {
                index: 9,
                workers: 4
            })
        );
        assert_eq!(
            go(&c, 1, &mut next, &[true, false, true, true]),
            Err(PickError::ClassifiedIneligible { index: 1 })
        );
    }

    #[test]
    fn broadcast_takes_every_eligible_worker() {
        let mut next = 0;
        assert_eq!(
            go(&Route::Broadcast, 0, &mut next, &[true, false, true, true]),
            Ok(vec![0, 2, 3])
        );
        assert_eq!(
            go(&Route::Broadcast, 0, &mut next, &[false; 4]),
            Err(PickError::NoneEligible)
        );
    }
}
