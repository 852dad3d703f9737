//! Fan-in: turning the branches of a broadcast into one result.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::Path;

/// How a broadcast's answers become one result.
pub enum Gather<M> {
    /// Wait for every branch (or the deadline); merge the answers in worker order.
    All(Arc<dyn Fn(Vec<M>) -> M + Send + Sync>),
    /// Racing: the first answer with a reply wins; the other branches' answers are
    /// discarded.
    First,
    /// The first `k` answers, merged in arrival order.
    Quorum(usize, Arc<dyn Fn(Vec<M>) -> M + Send + Sync>),
    /// A vote: answers grouped by the key; the largest group wins and its first answer
    /// is the result. Equal largest groups are a tie, reported as such.
    Majority(Arc<dyn Fn(&M) -> String + Send + Sync>),
    /// Map-reduce: fold the answers, in worker order.
    Reduce(Arc<dyn Fn(M, M) -> M + Send + Sync>),
}

impl<M> Gather<M> {
    /// Wait for all; merge with `merge`.
    pub fn all(merge: impl Fn(Vec<M>) -> M + Send + Sync + 'static) -> Self {
        Gather::All(Arc::new(merge))
    }
    /// First answer wins.
    pub fn first() -> Self {
        Gather::First
    }
    /// The first `k` answers, merged with `merge`.
    pub fn quorum(k: usize, merge: impl Fn(Vec<M>) -> M + Send + Sync + 'static) -> Self {
        Gather::Quorum(k.max(1), Arc::new(merge))
    }
    /// Vote on `key(answer)`.
    pub fn majority(key: impl Fn(&M) -> String + Send + Sync + 'static) -> Self {
        Gather::Majority(Arc::new(key))
    }
    /// Fold the answers with `fold`.
    pub fn reduce(fold: impl Fn(M, M) -> M + Send + Sync + 'static) -> Self {
        Gather::Reduce(Arc::new(fold))
    }

    /// Enough answers to decide before every branch is in?
    pub(crate) fn decided_early(&self, answers: usize) -> bool {
        match self {
            Gather::First => answers >= 1,
            Gather::Quorum(k, _) => answers >= *k,
            _ => false,
        }
    }
}

impl<M> Clone for Gather<M> {
    fn clone(&self) -> Self {
        match self {
            Gather::All(f) => Gather::All(f.clone()),
            Gather::First => Gather::First,
            Gather::Quorum(k, f) => Gather::Quorum(*k, f.clone()),
            Gather::Majority(f) => Gather::Majority(f.clone()),
            Gather::Reduce(f) => Gather::Reduce(f.clone()),
        }
    }
}

impl<M> fmt::Debug for Gather<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Gather::All(_) => f.write_str("All"),
            Gather::First => f.write_str("First"),
            Gather::Quorum(k, _) => write!(f, "Quorum({k})"),
            Gather::Majority(_) => f.write_str("Majority"),
            Gather::Reduce(_) => f.write_str("Reduce"),
        }
    }
}

/// When a branch fails: stop at once, or carry on with the others.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Partial {
    /// The first failed or timed-out branch fails the request; other answers are
    /// discarded.
    FailFast,
    /// Decide with whatever answered; failed and timed-out branches are listed.
    #[default]
    BestEffort,
}

/// What became of one branch.
#[derive(Debug, Clone, PartialEq)]
pub enum BranchStatus<M> {
    /// The worker answered (`None` for `Verdict::Done`).
    Answered(Option<M>),
    /// The worker escalated; not counted as an answer.
    Escalated {
        /// Its severity.
        severity: f64,
        /// Its reason.
        reason: String,
    },
    /// The branch failed (the worker crashed past its attempts, rejected it, or died).
    Failed(String),
    /// No outcome by the deadline.
    TimedOut,
    /// Still running when the result was decided; its answer is ignored.
    Discarded,
}

/// One branch of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct BranchReport<M> {
    /// The worker's index in the router.
    pub worker: usize,
    /// The worker's path.
    pub path: Path,
    /// What became of it.
    pub status: BranchStatus<M>,
    /// From dispatch to outcome (to the decision, for timed-out or discarded branches).
    pub elapsed: Duration,
}

/// Why a request produced no result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GatherError {
    /// No worker could take it (breakers open, at capacity) or the classifier chose
    /// an unusable one.
    #[error("no worker could take the request: {0}")]
    NoWorker(String),
    /// The router already has its maximum of requests in flight.
    #[error("the router is at capacity ({limit} requests in flight); retry later")]
    AtCapacity {
        /// The admission limit.
        limit: u32,
    },
    /// A branch failed or timed out: the only branch of a single-worker route, or
    /// any branch under fail-fast.
    #[error("branch to {worker} did not answer: {reason}")]
    BranchFailed {
        /// The worker.
        worker: Path,
        /// What happened.
        reason: String,
    },
    /// Fewer answers than the quorum (or none at all for all/first/reduce).
    #[error("not enough answers: {answered} of {needed} needed ({failed} failed, {timed_out} timed out, {escalated} escalated)")]
    NotEnough {
        /// Answers needed.
        needed: usize,
        /// Answers received.
        answered: usize,
        /// Branches failed.
        failed: usize,
        /// Branches timed out.
        timed_out: usize,
        /// Branches escalated.
        escalated: usize,
    },
    /// A vote with equal largest groups.
    #[error("the vote is tied: {votes:?}")]
    Tie {
        /// Each tied key with its votes.
        votes: Vec<(String, usize)>,
    },
}

/// The full account of one request: the result and every branch.
#[derive(Debug, Clone, PartialEq)]
pub struct Gathered<M> {
    /// The gathered result (`Ok(None)` when a single-worker route's worker replied
    /// `Done`).
    pub result: Result<Option<M>, GatherError>,
    /// Every branch, in worker order.
    pub branches: Vec<BranchReport<M>>,
    /// From the request's arrival at the router to the decision.
    pub elapsed: Duration,
}

impl<M> Gathered<M> {
    /// Branches that answered.
    pub fn answered(&self) -> usize {
        self.count(|s| matches!(s, BranchStatus::Answered(_)))
    }
    /// Branches that failed.
    pub fn failed(&self) -> usize {
        self.count(|s| matches!(s, BranchStatus::Failed(_)))
    }
    /// Branches that timed out.
    pub fn timed_out(&self) -> usize {
        self.count(|s| matches!(s, BranchStatus::TimedOut))
    }
    /// Branches whose answers were discarded.
    pub fn discarded(&self) -> usize {
        self.count(|s| matches!(s, BranchStatus::Discarded))
    }
    /// Branches that escalated.
    pub fn escalated(&self) -> usize {
        self.count(|s| matches!(s, BranchStatus::Escalated { .. }))
    }
    /// True if the result was decided without every branch answering.
    pub fn is_partial(&self) -> bool {
        self.answered() < self.branches.len()
    }
    fn count(&self, f: impl Fn(&BranchStatus<M>) -> bool) -> usize {
        self.branches.iter().filter(|b| f(&b.status)).count()
    }
}

/// Decide the result of a broadcast from its branches. `arrival` lists the indices of
/// answered branches in the order they answered.
pub(crate) fn decide<M: Clone>(
    gather: &Gather<M>,
    branches: &[BranchReport<M>],
    arrival: &[usize],
) -> Result<Option<M>, GatherError> {
    let mut answers: Vec<&M> = Vec::with_capacity(branches.len());
    answers.extend(branches.iter().filter_map(|b| match &b.status {
        BranchStatus::Answered(Some(m)) => Some(m),
        _ => None,
    }));
    let answered = answers.len();
    let tally = |needed: usize| {
        let c = |f: fn(&BranchStatus<M>) -> bool| branches.iter().filter(|b| f(&b.status)).count();
        GatherError::NotEnough {
            needed,
            answered,
            failed: c(|s| matches!(s, BranchStatus::Failed(_))),
            timed_out: c(|s| matches!(s, BranchStatus::TimedOut)),
            escalated: c(|s| matches!(s, BranchStatus::Escalated { .. })),
        }
    };
    match gather {
        Gather::All(merge) => {
            if answers.is_empty() {
                return Err(tally(branches.len()));
            }
            Ok(Some(merge(answers.into_iter().cloned().collect())))
        }
        Gather::First => arrival
            .iter()
            .find_map(|&i| match branches.get(i).map(|b| &b.status) {
                Some(BranchStatus::Answered(Some(m))) => Some(m.clone()),
                _ => None,
            })
            .map(Some)
            .ok_or_else(|| tally(1)),
        Gather::Quorum(k, merge) => {
            let firsts: Vec<M> = arrival
                .iter()
                .filter_map(|&i| match branches.get(i).map(|b| &b.status) {
                    Some(BranchStatus::Answered(Some(m))) => Some(m.clone()),
                    _ => None,
                })
                .take(*k)
                .collect();
            if firsts.len() < *k {
                return Err(tally(*k));
            }
            Ok(Some(merge(firsts)))
        }
        Gather::Majority(key) => {
            if answers.is_empty() {
                return Err(tally(1));
            }
            let mut groups: Vec<(String, usize, &M)> = Vec::new();
            let mut index: HashMap<String, usize> = HashMap::new();
            for m in answers {
                let k = key(m);
                match index.get(&k) {
                    Some(&g) => groups[g].1 += 1,
                    None => {
                        index.insert(k.clone(), groups.len());
                        groups.push((k, 1, m));
                    }
                }
            }
            let best = groups.iter().map(|g| g.1).max().unwrap_or(0);
            let top: Vec<&(String, usize, &M)> = groups.iter().filter(|g| g.1 == best).collect();
            match top.as_slice() {
                [(_, _, winner)] => Ok(Some((*winner).clone())),
                _ => Err(GatherError::Tie {
                    votes: top.iter().map(|g| (g.0.clone(), g.1)).collect(),
                }),
            }
        }
        Gather::Reduce(fold) => {
            let mut it = answers.into_iter().cloned();
            match it.next() {
                Some(first) => Ok(Some(it.fold(first, |a, b| fold(a, b)))),
                None => Err(tally(1)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(worker: usize, status: BranchStatus<i32>) -> BranchReport<i32> {
        BranchReport {
            worker,
            path: Path::new(format!("r/w/{worker}")),
            status,
            elapsed: Duration::ZERO,
        }
    }
    use BranchStatus::*;

    #[test]
    fn aggregators() {
        let bs = vec![
            b(0, Answered(Some(3))),
            b(1, Failed("x".into())),
            b(2, Answered(Some(5))),
            b(3, TimedOut),
        ];
        let arrival = [2, 0];
        assert_eq!(
            decide(&Gather::all(|v: Vec<i32>| v.iter().sum()), &bs, &arrival),
            Ok(Some(8))
        );
        assert_eq!(decide(&Gather::first(), &bs, &arrival), Ok(Some(5)));
        assert_eq!(
            decide(
                &Gather::quorum(2, |v: Vec<i32>| v[0] * 10 + v[1]),
                &bs,
                &arrival
            ),
            Ok(Some(53))
        );
        assert_eq!(
            decide(&Gather::quorum(3, |v: Vec<i32>| v[0]), &bs, &arrival),
            Err(GatherError::NotEnough {
                needed: 3,
                answered: 2,
                failed: 1,
                timed_out: 1,
                escalated: 0
            })
        );
        assert_eq!(
            decide(&Gather::reduce(|a: i32, b: i32| a * b), &bs, &arrival),
            Ok(Some(15))
        );
    }

    #[test]
    fn votes_and_ties() {
        let parity = Gather::majority(|m: &i32| (m % 2).to_string());
        let bs = vec![
            b(0, Answered(Some(1))),
            b(1, Answered(Some(3))),
            b(2, Answered(Some(2))),
        ];
        assert_eq!(decide(&parity, &bs, &[0, 1, 2]), Ok(Some(1)));
        let tied = vec![b(0, Answered(Some(1))), b(1, Answered(Some(2)))];
        assert_eq!(
            decide(&parity, &tied, &[0, 1]),
            Err(GatherError::Tie {
                votes: vec![("1".into(), 1), ("0".into(), 1)]
            })
        );
    }
}
