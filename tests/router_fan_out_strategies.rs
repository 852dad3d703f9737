//! Fan-out: which workers a router's request goes to.
//!
//! Every worker replies with its own index, so a request's reply says where it went.
//! Broadcast reaches every worker exactly once; round-robin cycles in index order;
//! random is replayed exactly by the same seed; least-loaded stays away from a worker
//! whose mailbox is busy; key-sticky sends a key to one worker and keeps its order under
//! concurrent senders; classify obeys the user's function and refuses an index out of
//! range with a reason (counted as `rejected`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use echelon::prelude::*;
use echelon::{BranchStatus, GatherError, Gathered, RouterHandle};
use support::{idle, within};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    /// A request for key `key`, number `seq` among that key's requests.
    Req { key: u32, seq: u32 },
    /// Signal entry, then wait for the gate before replying.
    Hold,
    /// A reply: the index of the worker that handled the request.
    By(usize),
    /// A broadcast's merged replies.
    Many(Vec<usize>),
}

/// Opens once and stays open.
#[derive(Clone)]
struct Gate(Arc<watch::Sender<bool>>);

impl Gate {
    fn new() -> Self {
        Gate(Arc::new(watch::channel(false).0))
    }
    fn open(&self) {
        self.0.send_replace(true);
    }
    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// Every request a worker handled: (worker, key, seq), in handling order.
type Log = Arc<Mutex<Vec<(usize, u32, u32)>>>;

struct Worker {
    index: usize,
    log: Log,
    entered: mpsc::UnboundedSender<usize>,
    gate: Gate,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn handle(&mut self, _ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match msg {
            Msg::Req { key, seq } => {
                self.log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((self.index, key, seq));
                // give other tasks a chance to run mid-handler, so senders interleave
                for _ in 0..(seq % 3) {
                    tokio::task::yield_now().await;
                }
                Ok(Verdict::Reply(Msg::By(self.index)))
            }
            Msg::Hold => {
                let _ = self.entered.send(self.index);
                self.gate.wait().await;
                Ok(Verdict::Reply(Msg::By(self.index)))
            }
            other => Err(AgentError::reject(format!("not a request: {other:?}"))),
        }
    }
}

struct Rig {
    router: RouterHandle<Msg>,
    log: Log,
    entered: mpsc::UnboundedReceiver<usize>,
    gate: Gate,
}

/// A router named `name` with `n` workers; `configure` sets its route and options.
async fn rig(
    n: usize,
    configure: impl FnOnce(echelon::RouterBuilder<Msg>) -> echelon::RouterBuilder<Msg>,
) -> Rig {
    let log: Log = Arc::default();
    let (tx, entered) = mpsc::unbounded_channel();
    let gate = Gate::new();
    let (l, g) = (log.clone(), gate.clone());
    let builder = Router::builder("r").workers("w", n, move |index| Worker {
        index,
        log: l.clone(),
        entered: tx.clone(),
        gate: g.clone(),
    });
    let router = within(5, "spawn the router", configure(builder).spawn())
        .await
        .expect("spawn the router");
    Rig {
        router,
        log,
        entered,
        gate,
    }
}

async fn call(router: &RouterHandle<Msg>, msg: Msg) -> Gathered<Msg> {
    within(5, "a router call", router.call(msg))
        .await
        .expect("the router takes the request")
}

/// The worker a single-worker route sent `msg` to.
async fn routed_to(router: &RouterHandle<Msg>, msg: Msg) -> usize {
    let g = call(router, msg).await;
    assert_eq!(g.branches.len(), 1, "a single-worker route: {g:?}");
    match g.result {
        Ok(Some(Msg::By(i))) => {
            assert_eq!(g.branches[0].worker, i, "the branch names the worker");
            i
        }
        other => panic!("expected a worker's reply, got {other:?}"),
    }
}

/// Shut the router down, bounded.
async fn shutdown(router: RouterHandle<Msg>) {
    drop(
        within(
            5,
            "shutdown",
            router.shutdown(std::time::Duration::from_secs(2)),
        )
        .await,
    );
}

fn req(key: u32) -> Msg {
    Msg::Req { key, seq: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_reaches_every_worker_exactly_once() {
    let rig = rig(4, |b| {
        b.route(Route::Broadcast).gather(Gather::all(|replies| {
            Msg::Many(
                replies
                    .into_iter()
                    .map(|m| match m {
                        Msg::By(i) => i,
                        other => panic!("unexpected reply {other:?}"),
                    })
                    .collect(),
            )
        }))
    })
    .await;
    let g = call(&rig.router, req(1)).await;
    assert_eq!(g.result, Ok(Some(Msg::Many(vec![0, 1, 2, 3]))));
    assert_eq!(g.branches.len(), 4);
    for (i, b) in g.branches.iter().enumerate() {
        assert_eq!(b.worker, i, "branches are listed in worker order");
        assert_eq!(b.path.as_str(), format!("r/router/0/w/{i}"));
        assert_eq!(b.status, BranchStatus::Answered(Some(Msg::By(i))));
    }
    assert!(!g.is_partial());

    let c = idle(rig.router.hierarchy(), 5).await;
    let mut handled: Vec<usize> = rig.log.lock().unwrap().iter().map(|e| e.0).collect();
    handled.sort_unstable();
    assert_eq!(handled, vec![0, 1, 2, 3], "each worker handled one copy");
    // the request and its four branches are five tasks, each completed once
    assert_eq!((c.submitted, c.completed, c.failed), (5, 5, 0), "{c:?}");
    for i in 0..4 {
        let w = rig.router.worker(i).expect("worker").counters();
        assert_eq!((w.submitted, w.completed), (1, 1), "worker {i}: {w:?}");
    }
    assert!(rig.router.worker(4).is_none());
    shutdown(rig.router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_cycles_through_the_workers_in_order() {
    let rig = rig(3, |b| b.route(Route::RoundRobin)).await;
    let mut seen = Vec::new();
    for k in 0..7 {
        seen.push(routed_to(&rig.router, req(k)).await);
    }
    assert_eq!(seen, vec![0, 1, 2, 0, 1, 2, 0]);
    let c = idle(rig.router.hierarchy(), 5).await;
    assert_eq!((c.submitted, c.completed), (14, 14), "{c:?}");
}

async fn random_sequence(seed: u64, n: u32) -> Vec<usize> {
    let rig = rig(4, |b| b.route(Route::Random).seed(seed)).await;
    let mut seen = Vec::new();
    for k in 0..n {
        seen.push(routed_to(&rig.router, req(k)).await);
    }
    shutdown(rig.router).await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_routing_is_replayed_by_the_same_seed() {
    let a = random_sequence(7, 40).await;
    let b = random_sequence(7, 40).await;
    assert_eq!(a, b, "the same seed must replay the same choices");
    let distinct: BTreeSet<usize> = a.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        4,
        "40 random picks among 4 workers should use them all: {a:?}"
    );
    let c = random_sequence(8, 40).await;
    assert_ne!(a, c, "another seed should give another sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_stays_away_from_busy_workers() {
    let mut rig = rig(3, |b| b.route(Route::LeastLoaded)).await;
    let router = Arc::new(rig.router);
    let mut held = JoinSet::new();

    // everyone idle: the lowest index takes it, and blocks
    let r = router.clone();
    held.spawn(async move { r.outcome(Msg::Hold).await });
    let first = within(5, "the first Hold to start", rig.entered.recv()).await;
    assert_eq!(first, Some(0), "ties go to the lowest index");
    // worker 0 is busy: the next one goes to worker 1, and blocks too
    let r = router.clone();
    held.spawn(async move { r.outcome(Msg::Hold).await });
    let second = within(5, "the second Hold to start", rig.entered.recv()).await;
    assert_eq!(second, Some(1), "worker 0 is busy, worker 1 is not");
    // two more tasks queue directly in each busy mailbox, so their load stays above
    // anything a just-finished request on worker 2 can show
    for i in [0, 1] {
        for _ in 0..2 {
            let w = router.worker(i).expect("worker");
            held.spawn(async move { w.call(Msg::Hold).await });
        }
    }

    for k in 0..6 {
        assert_eq!(
            routed_to(&router, req(k)).await,
            2,
            "request {k} must avoid the busy workers 0 and 1"
        );
    }

    rig.gate.open();
    let mut n = 0;
    within(5, "the held requests", async {
        while let Some(r) = held.join_next().await {
            let out = r.expect("join");
            match out {
                Ok(Outcome::Completed { .. }) => n += 1,
                Ok(o) => panic!("a held call should complete: {o:?}"),
                Err(e) => panic!("a held call was refused: {e:?}"),
            }
        }
    })
    .await;
    assert_eq!(n, 6);
    let c = idle(router.hierarchy(), 5).await;
    assert!(c.is_balanced(), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_sticky_keeps_a_key_on_one_worker_and_in_order() {
    const KEYS: u32 = 16;
    const PER_KEY: u32 = 25;
    const SENDERS: u32 = 4;
    let rig = rig(4, |b| {
        b.route(Route::key_sticky(|m: &Msg| match m {
            Msg::Req { key, .. } => *key,
            _ => u32::MAX,
        }))
    })
    .await;
    let router = Arc::new(rig.router);

    // four concurrent senders, each owning four keys and interleaving them
    let mut senders = JoinSet::new();
    for s in 0..SENDERS {
        let entry = router.entry().clone();
        senders.spawn(async move {
            for seq in 0..PER_KEY {
                for key in (0..KEYS).filter(|k| k % SENDERS == s) {
                    entry
                        .send(Msg::Req { key, seq })
                        .expect("the router takes the request");
                }
                tokio::task::yield_now().await;
            }
        });
    }
    within(5, "the senders", async {
        while let Some(r) = senders.join_next().await {
            r.expect("sender");
        }
    })
    .await;
    let c = idle(router.hierarchy(), 5).await;
    let total = u64::from(KEYS * PER_KEY);
    assert_eq!((c.submitted, c.completed), (2 * total, 2 * total), "{c:?}");

    let log = rig.log.lock().unwrap().clone();
    assert_eq!(log.len() as u64, total);
    let mut per_key: BTreeMap<u32, (BTreeSet<usize>, Vec<u32>)> = BTreeMap::new();
    for (worker, key, seq) in log {
        let e = per_key.entry(key).or_default();
        e.0.insert(worker);
        e.1.push(seq);
    }
    let mut used: BTreeSet<usize> = BTreeSet::new();
    for (key, (workers, seqs)) in &per_key {
        assert_eq!(
            workers.len(),
            1,
            "key {key} went to several workers: {workers:?}"
        );
        assert_eq!(
            *seqs,
            (0..PER_KEY).collect::<Vec<_>>(),
            "key {key} was handled out of order"
        );
        used.extend(workers);
    }
    assert!(
        used.len() > 1,
        "16 keys should spread over the workers: {used:?}"
    );

    // and a later request with the same key lands on the same worker
    let (workers, _) = &per_key[&5];
    let again = routed_to(&router, Msg::Req { key: 5, seq: 99 }).await;
    assert!(workers.contains(&again));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classify_follows_the_user_function_and_refuses_an_index_out_of_range() {
    let rig = rig(3, |b| {
        b.route(Route::classify(|m: &Msg| match m {
            Msg::Req { key, .. } => *key as usize,
            _ => 0,
        }))
    })
    .await;
    for key in [2, 0, 1, 2] {
        assert_eq!(routed_to(&rig.router, req(key)).await, key as usize);
    }
    assert_eq!(rig.router.counters().rejected, 0);

    let g = call(&rig.router, req(7)).await;
    let Err(GatherError::NoWorker(why)) = &g.result else {
        panic!(
            "an index out of range should be NoWorker, got {:?}",
            g.result
        );
    };
    assert!(
        why.contains("classifier chose worker 7") && why.contains("there are 3"),
        "the reason should name the index and the worker count: {why}"
    );
    assert!(g.branches.is_empty(), "no branch was sent: {g:?}");
    let c = idle(rig.router.hierarchy(), 5).await;
    assert_eq!((c.rejected, c.failed), (1, 1), "{c:?}");

    // the same refusal, seen as a task outcome
    let out = within(5, "the outcome", rig.router.outcome(req(9)))
        .await
        .expect("the router takes the request");
    match out {
        Outcome::Failed(f) => assert!(
            f.reason.contains("classifier chose worker 9"),
            "{}",
            f.reason
        ),
        other => panic!("expected a failure, got {other:?}"),
    }
    let c = idle(rig.router.hierarchy(), 5).await;
    assert_eq!(c.rejected, 2, "{c:?}");
    // 4 routed requests with their branches, 2 refused requests without any
    assert_eq!((c.submitted, c.completed, c.failed), (10, 8, 2), "{c:?}");
    assert!(c.is_balanced());
}

/// A router's requests are routed on their senders' threads; a sender outside any
/// tokio runtime (a plain thread calling `send`) is routed all the same, with or
/// without a deadline, and round-robin still deals the requests out evenly. With a
/// deadline, the workers hold every request until all three have one, so each
/// request's gather is still open when its branch is sent and starts its deadline's
/// timer, a task spawned from the plain thread (onto the hierarchy's runtime).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn senders_outside_a_runtime_are_routed_with_or_without_a_deadline() {
    for deadline in [None, Some(std::time::Duration::from_secs(30))] {
        let mut rig = rig(3, |b| {
            let b = b.route(Route::RoundRobin);
            match deadline {
                Some(d) => b.deadline(d),
                None => b,
            }
        })
        .await;
        let entry = rig.router.entry().clone();
        let msg = if deadline.is_some() {
            Msg::Hold
        } else {
            req(0)
        };
        let sender = std::thread::spawn(move || {
            assert!(tokio::runtime::Handle::try_current().is_err());
            (0..6)
                .map(|_| entry.send(msg.clone()).is_ok())
                .collect::<Vec<bool>>()
        });
        let sent = within(
            5,
            "the plain thread's sends",
            tokio::task::spawn_blocking(move || sender.join()),
        )
        .await
        .expect("join")
        .expect("the plain thread's sends do not panic");
        assert_eq!(sent, vec![true; 6], "deadline {deadline:?}");
        if deadline.is_some() {
            let mut held = BTreeSet::new();
            while held.len() < 3 {
                let i = within(5, "a held request", rig.entered.recv())
                    .await
                    .expect("a worker holds a request");
                held.insert(i);
            }
            rig.gate.open();
        }
        let c = idle(rig.router.hierarchy(), 5).await;
        assert_eq!((c.submitted, c.completed, c.failed), (12, 12, 0), "{c:?}");
        assert_eq!(c.timed_out, 0, "{c:?}");
        for i in 0..3 {
            let w = rig.router.worker(i).expect("worker").counters();
            assert_eq!(w.completed, 2, "worker {i}, deadline {deadline:?}: {w:?}");
        }
        shutdown(rig.router).await;
    }
}

/// Batches and single sends from one sender keep their order through a router: a
/// batch is routed task by task in its place among the sender's sends, so key-sticky
/// order holds across `send_batch`, `send` and `send_batch` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_single_sends_keep_one_order() {
    let rig = rig(2, |b| {
        b.route(Route::key_sticky(|m: &Msg| match m {
            Msg::Req { key, .. } => *key,
            _ => u32::MAX,
        }))
    })
    .await;
    let entry = rig.router.entry();
    let r = |seq| Msg::Req { key: 7, seq };
    entry.send_batch(vec![r(0), r(1), r(2)]).expect("batch 1");
    entry.send(r(3)).expect("send");
    entry.send_batch(vec![r(4), r(5)]).expect("batch 2");
    entry.send(r(6)).expect("send");
    let c = idle(rig.router.hierarchy(), 5).await;
    assert_eq!((c.submitted, c.completed), (14, 14), "{c:?}");
    let seqs: Vec<u32> = rig
        .log
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|e| e.2)
        .collect();
    assert_eq!(seqs, (0..7).collect::<Vec<u32>>(), "one sender's order");
    shutdown(rig.router).await;
}
