//! Crashing workers, circuit breakers and admission.
//!
//! Workers are supervised like any agent: a worker that panics is restarted in place
//! and its branch redelivered; one that keeps panicking fails its branch with the panic
//! text; a killed worker fails the branch it held. None of these leaves a request
//! hanging. A worker's breaker opens after N consecutive failures, the router then goes
//! around it, and after the cool-down exactly one trial branch is let through: a good
//! trial closes the breaker, a failed one opens it again. Admission refuses requests
//! past its limit with an error that says so.
//!
//! What each worker does is set per worker through a shared mode the test changes
//! between requests. Breaker tests run on tokio's paused clock and move it with
//! `advance` only: every step awaits a result, so the runtime never idles long enough
//! for the clock to move by itself (and every `within` bound is far shorter than the
//! cool-down).

mod support;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use echelon::prelude::*;
use echelon::{BranchStatus, BreakerState, GatherError, Gathered, RouterHandle};
use support::{idle, within};
use tokio::sync::{mpsc, watch};
use tokio::time::advance;

#[derive(Clone, Debug, PartialEq)]
enum Msg {
    Ask,
    By(usize),
    List(Vec<usize>),
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

// worker modes
const OK: u8 = 0;
/// Signal entry, wait for the gate, then reply.
const HOLD: u8 = 1;
/// Reject every task (a failed branch, no restart).
const REJECT: u8 = 2;
/// Panic on every attempt.
const PANIC: u8 = 3;
/// Panic on the first attempt only.
const PANIC_ONCE: u8 = 4;

struct Worker {
    index: usize,
    modes: Arc<Vec<AtomicU8>>,
    entered: mpsc::UnboundedSender<usize>,
    gate: Gate,
}

impl Agent for Worker {
    type Msg = Msg;

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, _msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        match self.modes[self.index].load(Ordering::SeqCst) {
            HOLD => {
                let _ = self.entered.send(self.index);
                self.gate.wait().await;
            }
            REJECT => return Err(AgentError::reject("worker is sick")),
            PANIC => panic!("disk on fire at worker {}", self.index),
            PANIC_ONCE if ctx.attempt() == 1 => panic!("hiccup at worker {}", self.index),
            _ => {}
        }
        Ok(Verdict::Reply(Msg::By(self.index)))
    }
}

struct Rig {
    router: Arc<RouterHandle<Msg>>,
    modes: Arc<Vec<AtomicU8>>,
    entered: mpsc::UnboundedReceiver<usize>,
    gate: Gate,
}

async fn rig(
    n: usize,
    configure: impl FnOnce(echelon::RouterBuilder<Msg>) -> echelon::RouterBuilder<Msg>,
) -> Rig {
    let modes: Arc<Vec<AtomicU8>> = Arc::new((0..n).map(|_| AtomicU8::new(OK)).collect());
    let (tx, entered) = mpsc::unbounded_channel();
    let gate = Gate::new();
    let (m, g) = (modes.clone(), gate.clone());
    let builder = Router::builder("r").workers("w", n, move |index| Worker {
        index,
        modes: m.clone(),
        entered: tx.clone(),
        gate: g.clone(),
    });
    let router = within(5, "spawn the router", configure(builder).spawn())
        .await
        .expect("spawn the router");
    Rig {
        router: Arc::new(router),
        modes,
        entered,
        gate,
    }
}

impl Rig {
    fn set(&self, worker: usize, mode: u8) {
        self.modes[worker].store(mode, Ordering::SeqCst);
    }

    async fn call(&self) -> Gathered<Msg> {
        within(5, "the router's decision", self.router.call(Msg::Ask))
            .await
            .expect("the router takes the request")
    }

    /// Route one request on a single-worker route: the worker it went to, and whether
    /// it answered.
    async fn route_one(&self) -> (usize, bool) {
        let g = self.call().await;
        assert_eq!(g.branches.len(), 1, "{g:?}");
        (g.branches[0].worker, g.result.is_ok())
    }

    async fn finish(self) -> echelon::Counters {
        self.gate.open();
        let c = idle(self.router.hierarchy(), 5).await;
        assert!(c.is_balanced(), "{c:?}");
        let router = Arc::try_unwrap(self.router).expect("no call holds the router");
        drop(within(5, "shutdown", router.shutdown(Duration::from_secs(2))).await);
        c
    }
}

fn merge_all() -> Gather<Msg> {
    Gather::all(|answers| {
        Msg::List(
            answers
                .into_iter()
                .map(|m| match m {
                    Msg::By(i) => i,
                    other => panic!("unexpected answer {other:?}"),
                })
                .collect(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_once_is_restarted_and_its_branch_redelivered() {
    let rig = rig(3, |b| b.route(Route::Broadcast).gather(merge_all())).await;
    rig.set(1, PANIC_ONCE);
    let g = rig.call().await;
    assert_eq!(g.result, Ok(Some(Msg::List(vec![0, 1, 2]))), "{g:?}");
    assert_eq!(g.answered(), 3);
    let w1 = rig.router.worker(1).expect("worker 1").counters();
    assert_eq!(
        (w1.restarts, w1.redelivered, w1.completed),
        (1, 1, 1),
        "{w1:?}"
    );
    let c = rig.finish().await;
    assert_eq!(
        (c.submitted, c.completed, c.failed, c.restarts),
        (4, 4, 0, 1),
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_always_panics_fails_its_branch_with_the_panic_text() {
    let rig = rig(2, |b| {
        b.route(Route::Broadcast)
            .gather(merge_all())
            .max_attempts(2)
    })
    .await;
    rig.set(1, PANIC);
    let g = rig.call().await;
    assert_eq!(
        g.result,
        Ok(Some(Msg::List(vec![0]))),
        "best effort decides with worker 0"
    );
    match &g.branches[1].status {
        BranchStatus::Failed(why) => {
            assert!(why.contains("disk on fire at worker 1"), "{why}");
            assert!(why.contains("2 attempt(s)"), "{why}");
        }
        other => panic!("the panicking worker's branch should fail, got {other:?}"),
    }
    assert!(g.is_partial());
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.completed, c.failed), (3, 2, 1), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_route_to_a_panicking_worker_fails_the_request_with_the_panic_text() {
    let rig = rig(1, |b| b.route(Route::RoundRobin).max_attempts(2)).await;
    rig.set(0, PANIC);
    let g = rig.call().await;
    match &g.result {
        Err(GatherError::BranchFailed { worker, reason }) => {
            assert_eq!(worker.as_str(), "r/router/0/w/0");
            assert!(reason.contains("disk on fire at worker 0"), "{reason}");
        }
        other => panic!("expected BranchFailed, got {other:?}"),
    }
    let out = within(5, "the outcome", rig.router.outcome(Msg::Ask))
        .await
        .expect("the router takes the request");
    match out {
        Outcome::Failed(f) => assert!(f.reason.contains("disk on fire"), "{}", f.reason),
        other => panic!("expected a failure, got {other:?}"),
    }
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.failed, c.restarts), (4, 4, 4), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_request_is_a_failed_branch_and_comes_back() {
    let mut rig = rig(2, |b| b.route(Route::Broadcast).gather(merge_all())).await;
    rig.set(0, HOLD);
    let r = rig.router.clone();
    let pending = tokio::spawn(async move { r.call(Msg::Ask).await });
    assert_eq!(
        within(5, "worker 0 to enter", rig.entered.recv()).await,
        Some(0)
    );
    rig.set(0, OK);
    assert!(
        rig.router.worker(0).expect("worker 0").kill(),
        "worker 0 had a live actor"
    );

    let g = within(5, "the request after the kill", pending)
        .await
        .expect("join")
        .expect("the router takes the request");
    assert_eq!(g.result, Ok(Some(Msg::List(vec![1]))), "{g:?}");
    match &g.branches[0].status {
        BranchStatus::Failed(why) => assert!(why.contains("lost"), "{why}"),
        other => panic!("the killed worker's branch should fail, got {other:?}"),
    }

    // respawned at the same address: the next broadcast reaches both
    let g = rig.call().await;
    assert_eq!(g.result, Ok(Some(Msg::List(vec![0, 1]))), "{g:?}");
    let w0 = rig.router.worker(0).expect("worker 0");
    let c = rig.finish().await;
    // the branch the killed actor held is the one task lost with its mailbox
    let w0 = w0.counters();
    assert_eq!(
        (w0.lost_in_mailbox, w0.failed, w0.completed),
        (1, 1, 1),
        "{w0:?}"
    );
    assert_eq!((c.submitted, c.completed, c.failed), (6, 5, 1), "{c:?}");
}

/// Three workers, round-robin, a breaker that opens after 2 consecutive failures and
/// cools down for 10 s; worker 1 rejects everything. Returns once worker 1's breaker
/// is open, with the round-robin pointer just past worker 1.
async fn open_breaker_on_worker_1() -> Rig {
    let rig = rig(3, |b| {
        b.route(Route::RoundRobin)
            .breaker(Breaker::after(2).cool_down(COOL_DOWN))
    })
    .await;
    // start the story a second after the router did (see
    // `a_breaker_opened_at_the_routers_start_half_opens_exactly_after_its_cool_down`)
    advance(Duration::from_secs(1)).await;
    rig.set(1, REJECT);
    let mut seen = Vec::new();
    for k in 0..5 {
        seen.push(rig.route_one().await);
        if k == 1 {
            assert_eq!(
                rig.router.breakers(),
                vec![BreakerState::Closed; 3],
                "one failure is not enough"
            );
        }
    }
    assert_eq!(
        seen,
        vec![(0, true), (1, false), (2, true), (0, true), (1, false)]
    );
    assert_eq!(
        rig.router.breakers(),
        vec![
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::Closed
        ]
    );
    rig
}

const COOL_DOWN: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_skipped_until_its_cool_down_ends() {
    let rig = open_breaker_on_worker_1().await;
    let w1 = rig.router.worker(1).expect("worker 1");
    // round-robin goes around worker 1
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(rig.route_one().await.0);
    }
    assert_eq!(
        seen,
        vec![2, 0, 2, 0, 2, 0],
        "worker 1 is skipped while open"
    );
    advance(COOL_DOWN - Duration::from_secs(1)).await;
    assert_eq!(rig.router.breakers()[1], BreakerState::Open);
    assert_ne!(rig.route_one().await.0, 1);
    assert_ne!(rig.route_one().await.0, 1);
    assert_eq!(
        w1.counters().submitted,
        2,
        "worker 1 got nothing while open"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(rig.router.breakers()[1], BreakerState::HalfOpen);
    let c = rig.finish().await;
    assert_eq!(
        c.rejected, 0,
        "skipping a worker is not refusing a request: {c:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_half_open_breaker_lets_exactly_one_trial_through_and_a_good_trial_closes_it() {
    let mut rig = open_breaker_on_worker_1().await;
    advance(COOL_DOWN).await;
    assert_eq!(rig.router.breakers()[1], BreakerState::HalfOpen);

    // worker 1 is well again, but holds the trial until the gate opens
    rig.set(1, HOLD);
    let mut seen = Vec::new();
    let trial = loop {
        let r = rig.router.clone();
        let mut call = tokio::spawn(async move { r.call(Msg::Ask).await });
        tokio::select! {
            done = &mut call => {
                let g = done.expect("join").expect("the router takes the request");
                seen.push(g.branches[0].worker);
                assert!(seen.len() < 3, "round-robin should reach worker 1: {seen:?}");
            }
            entered = rig.entered.recv() => {
                assert_eq!(entered, Some(1));
                break call;
            }
        }
    };
    assert!(!seen.contains(&1));
    rig.set(1, OK);
    // while the trial is in flight, nobody else gets through to worker 1
    assert_eq!(rig.router.breakers()[1], BreakerState::HalfOpen);
    for _ in 0..6 {
        assert_ne!(
            rig.route_one().await.0,
            1,
            "only one trial at a time goes to a half-open worker"
        );
    }
    assert_eq!(
        rig.router.worker(1).expect("worker 1").counters().submitted,
        3
    );

    rig.gate.open();
    let g = within(5, "the trial", trial)
        .await
        .expect("join")
        .expect("the router takes the request");
    assert_eq!(g.result, Ok(Some(Msg::By(1))), "the trial succeeded");
    assert_eq!(
        rig.router.breakers(),
        vec![BreakerState::Closed; 3],
        "a good trial closes the breaker"
    );
    // traffic flows to worker 1 again
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(rig.route_one().await);
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![(0, true), (1, true), (2, true)]);
    rig.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_trial_opens_the_breaker_again_for_another_cool_down() {
    let rig = open_breaker_on_worker_1().await;
    advance(COOL_DOWN).await;
    assert_eq!(rig.router.breakers()[1], BreakerState::HalfOpen);

    // still sick: the trial fails and the breaker reopens at once
    let mut seen = Vec::new();
    while !seen.iter().any(|&(w, _)| w == 1) {
        seen.push(rig.route_one().await);
        assert!(
            seen.len() <= 3,
            "round-robin should reach worker 1: {seen:?}"
        );
    }
    assert_eq!(seen.last(), Some(&(1, false)));
    assert_eq!(rig.router.breakers()[1], BreakerState::Open);
    for _ in 0..4 {
        assert_ne!(rig.route_one().await.0, 1, "reopened: skipped again");
    }
    advance(COOL_DOWN - Duration::from_secs(1)).await;
    assert_eq!(
        rig.router.breakers()[1],
        BreakerState::Open,
        "the new cool-down counts from the failed trial"
    );
    advance(Duration::from_secs(1)).await;
    assert_eq!(rig.router.breakers()[1], BreakerState::HalfOpen);

    // well again: the next trial closes it
    rig.set(1, OK);
    let mut seen = Vec::new();
    while !seen.iter().any(|&(w, _)| w == 1) {
        seen.push(rig.route_one().await);
        assert!(
            seen.len() <= 3,
            "round-robin should reach worker 1: {seen:?}"
        );
    }
    assert_eq!(seen.last(), Some(&(1, true)));
    assert_eq!(rig.router.breakers(), vec![BreakerState::Closed; 3]);
    let c = rig.finish().await;
    assert_eq!(
        rig_failed_branches(c),
        3,
        "two failures opened it, one failed trial reopened it"
    );
}

/// Failed tasks are failed requests plus failed branches; on a single-worker route
/// each failed branch fails its request.
fn rig_failed_branches(c: echelon::Counters) -> u64 {
    c.failed / 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_a_request_past_the_limit_and_counts_it() {
    let mut rig = rig(2, |b| b.route(Route::RoundRobin).admission(1)).await;
    rig.set(0, HOLD);
    let r = rig.router.clone();
    let first = tokio::spawn(async move { r.call(Msg::Ask).await });
    assert_eq!(
        within(5, "the first request to reach worker 0", rig.entered.recv()).await,
        Some(0)
    );

    // worker 1 is idle, but the router is at its limit
    let g = rig.call().await;
    assert_eq!(g.result, Err(GatherError::AtCapacity { limit: 1 }));
    assert!(g.branches.is_empty(), "{g:?}");
    assert!(
        g.result
            .clone()
            .unwrap_err()
            .to_string()
            .contains("at capacity (1 requests in flight)"),
        "{:?}",
        g.result
    );
    assert_eq!(rig.router.counters().rejected, 1);
    assert_eq!(
        rig.router.worker(1).expect("worker 1").counters().submitted,
        0,
        "a refused request sends no branch"
    );

    rig.set(0, OK);
    rig.gate.open();
    let g = within(5, "the first request", first)
        .await
        .expect("join")
        .expect("the router takes the request");
    assert_eq!(g.result, Ok(Some(Msg::By(0))));
    // the slot is free again
    let out = within(
        5,
        "a request after the first finished",
        rig.router.outcome(Msg::Ask),
    )
    .await
    .expect("the router takes the request");
    assert!(out.is_completed(), "{out:?}");
    let c = rig.finish().await;
    assert_eq!((c.submitted, c.rejected, c.failed), (5, 1, 1), "{c:?}");
}

/// Under a paused clock a router's life starts at virtual time zero. A breaker that
/// opens then must half-open exactly one cool-down later, like one that opens at any
/// other time (the tests above start a second in to stay clear of this).
#[tokio::test(start_paused = true)]
async fn a_breaker_opened_at_the_routers_start_half_opens_exactly_after_its_cool_down() {
    let rig = rig(2, |b| {
        b.route(Route::RoundRobin)
            .breaker(Breaker::after(1).cool_down(COOL_DOWN))
    })
    .await;
    rig.set(1, REJECT);
    assert_eq!(rig.route_one().await, (0, true));
    assert_eq!(rig.route_one().await, (1, false));
    assert_eq!(rig.router.breakers()[1], BreakerState::Open);
    advance(COOL_DOWN).await;
    assert_eq!(
        rig.router.breakers()[1],
        BreakerState::HalfOpen,
        "opened at t = 0 with a 10 s cool-down, so half-open at t = 10 s"
    );
    rig.finish().await;
}

/// A waker that, the first time it is woken once armed, tells the test and then holds
/// the waking thread until the test lets it go (bounded): it freezes whoever delivered
/// a result right after the delivery.
struct Freeze {
    woken: Mutex<std_mpsc::Sender<()>>,
    release: Mutex<std_mpsc::Receiver<()>>,
    armed: AtomicBool,
    fired: AtomicBool,
}

impl Wake for Freeze {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if !self.armed.load(Ordering::SeqCst) || self.fired.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = self
            .woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(());
        let _ = self
            .release
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(Duration::from_secs(5));
    }
}

/// With `admission(1)`, a caller that has its result back is no longer in flight: its
/// next request must be admitted. Whoever hands the caller the result (the worker whose
/// answer decides the gather) is frozen right after it (the caller's waker holds its
/// thread), which is the window a fast caller hits on its own (thousands of
/// back-to-back `call`s with `admission(1)` see `AtCapacity` in a few percent of them
/// in release builds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_with_its_result_in_hand_is_not_counted_against_admission() {
    // two workers: the first result is delivered, and the caller woken, on worker 0's
    // thread (the gather is decided in place), which the waker then freezes; round
    // robin sends the second request to worker 1, which is free to answer it
    let mut rig = rig(2, |b| b.route(Route::RoundRobin).admission(1)).await;
    let (woken_tx, woken) = std_mpsc::channel();
    let (release, release_rx) = std_mpsc::channel();
    let freeze = Arc::new(Freeze {
        woken: Mutex::new(woken_tx),
        release: Mutex::new(release_rx),
        armed: AtomicBool::new(false),
        fired: AtomicBool::new(false),
    });
    let waker = Waker::from(freeze.clone());
    let mut cx = Context::from_waker(&waker);

    rig.set(0, HOLD);
    let first = {
        let mut call = std::pin::pin!(rig.router.call(Msg::Ask));
        assert!(
            call.as_mut().poll(&mut cx).is_pending(),
            "the worker holds the request"
        );
        assert_eq!(
            within(5, "the worker to take the request", rig.entered.recv()).await,
            Some(0)
        );
        rig.set(0, OK);
        freeze.armed.store(true, Ordering::SeqCst);
        rig.gate.open();
        woken
            .recv_timeout(Duration::from_secs(5))
            .expect("the router delivers the first result");
        let Poll::Ready(first) = call.as_mut().poll(&mut cx) else {
            panic!("woken, so the first result is in");
        };
        first.expect("the router takes the request")
    };
    assert_eq!(first.result, Ok(Some(Msg::By(0))));

    // the caller has its answer; the next request comes right after
    let second = within(5, "the second request", rig.router.call(Msg::Ask)).await;
    let _ = release.send(());
    let second = second.expect("the router takes the request");
    assert_eq!(
        second.result,
        Ok(Some(Msg::By(1))),
        "the first request was already answered, so the second is within admission(1)"
    );
    let c = rig.finish().await;
    assert_eq!(c.rejected, 0, "{c:?}");
}
