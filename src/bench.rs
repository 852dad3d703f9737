//! `echelon bench`: each workload run three ways in one process — raw tokio channels
//! (the floor), raw ractor actors (what echelon adds to), echelon — with the median of
//! several repetitions and the ratios echelon/ractor and echelon/tokio.
//!
//! Workloads: W1 one-way throughput (also batched with `AgentRef::send_batch`, the
//! references batched the same way), W2 request/reply round trip, W3 spawning a
//! hierarchy (span 10; the references spawn the same tree), its resident bytes per agent
//! (idle, then after each agent handled one message) and its shutdown (in fresh
//! processes: this executable run again with `bench --w3-probe`), W4 broadcast
//! and gather, W5 a 10-stage pipeline, W6 crash-to-serving latency, W7 healthcare
//! readings through three tiers (each reading sent alone, and each monitor's stream in
//! batches).

use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::{Agent, AgentError, Ctx, Hierarchy, Intensity, SpanOfControl, Strategy, Verdict};

/// Sizes and repetitions.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// W1 messages.
    pub one_way: u64,
    /// W2 round trips.
    pub round_trips: u64,
    /// W3 agents.
    pub agents: usize,
    /// W6 restarts.
    pub restarts: u64,
    /// W4 broadcast requests.
    pub broadcasts: u64,
    /// W5 pipeline messages.
    pub pipeline: u64,
    /// W5 sequential single-message trips timed for the latency figure (as many again
    /// run first, to warm up); `None`: from the size (a fifth of it, 100 to 2,000).
    pub trips: Option<usize>,
    /// W7 readings.
    pub readings: u64,
    /// Repetitions per measurement (the median is reported).
    pub reps: usize,
    /// Only these workloads (bit k set: workload Wk; bit [`W1_BATCHED`]: W1 batched),
    /// for profiling one path; 0: all.
    pub only: u32,
    /// Only these ways (bit 0: raw tokio, bit 1: raw ractor, bit 2: echelon); 0: all.
    pub ways: u8,
    /// Run W3 (spawn, resident bytes, shutdown) in fresh processes, one per
    /// repetition (this executable run again with `bench --w3-probe`), instead of in
    /// this one: the heap the other workloads leave behind skews both the bytes and the
    /// spawn time.
    pub fresh_w3: bool,
}

/// One way of running a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Raw tokio tasks and channels.
    Tokio = 0,
    /// Raw ractor actors.
    Ractor = 1,
    /// echelon agents.
    Echelon = 2,
}

impl Way {
    /// Parse "tokio", "ractor" or "echelon".
    pub fn parse(s: &str) -> Option<Way> {
        match s {
            "tokio" => Some(Way::Tokio),
            "ractor" => Some(Way::Ractor),
            "echelon" => Some(Way::Echelon),
            _ => None,
        }
    }

    /// The way's name, as [`Way::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            Way::Tokio => "tokio",
            Way::Ractor => "ractor",
            Way::Echelon => "echelon",
        }
    }
}

impl BenchConfig {
    /// The full sizes of issue 5 (a few minutes on two cores).
    pub fn full() -> Self {
        BenchConfig {
            one_way: 2_000_000,
            round_trips: 200_000,
            agents: 100_000,
            restarts: 2_000,
            broadcasts: 50_000,
            pipeline: 500_000,
            trips: None,
            readings: 1_000_000,
            reps: 5,
            only: 0,
            ways: 0,
            fresh_w3: false,
        }
    }

    /// Small sizes for a smoke run (and the test that keeps this command working).
    pub fn quick() -> Self {
        BenchConfig {
            one_way: 50_000,
            round_trips: 5_000,
            agents: 2_000,
            restarts: 100,
            broadcasts: 1_000,
            pipeline: 5_000,
            trips: None,
            readings: 20_000,
            reps: 3,
            only: 0,
            ways: 0,
            fresh_w3: false,
        }
    }
}

/// One measured quantity, three ways.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Workload and quantity, e.g. "W1 one-way msgs/s".
    pub name: String,
    /// The unit.
    pub unit: String,
    /// Higher is better (throughput) or lower is better (latency, time, bytes).
    pub higher_is_better: bool,
    /// (min, median, max) per implementation, if measured.
    pub tokio: Option<(f64, f64, f64)>,
    /// Raw ractor.
    pub ractor: Option<(f64, f64, f64)>,
    /// echelon.
    pub echelon: Option<(f64, f64, f64)>,
}

impl Row {
    /// echelon's median relative to ractor's, as a cost factor (>1 = echelon slower).
    pub fn vs_ractor(&self) -> Option<f64> {
        self.factor(self.ractor)
    }

    /// echelon's median relative to tokio's, as a cost factor.
    pub fn vs_tokio(&self) -> Option<f64> {
        self.factor(self.tokio)
    }

    fn factor(&self, base: Option<(f64, f64, f64)>) -> Option<f64> {
        let (b, e) = (base?.1, self.echelon?.1);
        if b <= 0.0 || e <= 0.0 {
            return None;
        }
        Some(if self.higher_is_better { b / e } else { e / b })
    }
}

fn stats(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], v[v.len() / 2], v[v.len() - 1]))
}

async fn reps<F, Fut>(n: usize, mut f: F) -> Option<(f64, f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        v.push(f().await);
    }
    stats(v)
}

// ---- W1: one-way throughput -------------------------------------------------------

#[derive(Clone, Debug)]
enum Bump {
    Add(u64),
    Done,
}

async fn w1_tokio(n: u64) -> f64 {
    let (tx, mut rx) = mpsc::unbounded_channel::<Bump>();
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(m) = rx.recv().await {
            match m {
                Bump::Add(v) => sum = sum.wrapping_add(v),
                Bump::Done => break,
            }
        }
        let _ = done_tx.send(sum);
    });
    let t = Instant::now();
    for i in 0..n {
        let _ = tx.send(Bump::Add(i));
    }
    let _ = tx.send(Bump::Done);
    let _ = done_rx.await;
    n as f64 / t.elapsed().as_secs_f64()
}

struct RawSum;
enum RawMsg {
    Add(u64),
    Batch(Vec<u64>),
    Done(oneshot::Sender<u64>),
    Ping(RpcReplyPort<u64>),
}

#[cfg(feature = "cluster")]
impl ractor::Message for RawMsg {}

impl Actor for RawSum {
    type Msg = RawMsg;
    type State = u64;
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<RawMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
        Ok(0)
    }
    async fn handle(
        &self,
        _: ActorRef<RawMsg>,
        m: RawMsg,
        s: &mut u64,
    ) -> Result<(), ActorProcessingErr> {
        match m {
            RawMsg::Add(v) => *s = s.wrapping_add(v),
            RawMsg::Batch(vs) => {
                for v in vs {
                    *s = s.wrapping_add(v);
                }
            }
            RawMsg::Done(tx) => {
                let _ = tx.send(*s);
            }
            RawMsg::Ping(reply) => {
                let _ = reply.send(*s);
            }
        }
        Ok(())
    }
}

async fn w1_ractor(n: u64) -> f64 {
    let Ok((a, h)) = Actor::spawn(None, RawSum, ()).await else {
        return 0.0;
    };
    let t = Instant::now();
    for i in 0..n {
        let _ = a.send_message(RawMsg::Add(i));
    }
    let (tx, rx) = oneshot::channel();
    let _ = a.send_message(RawMsg::Done(tx));
    let _ = rx.await;
    let r = n as f64 / t.elapsed().as_secs_f64();
    a.stop(None);
    let _ = h.await;
    r
}

struct Sum(u64);

impl Agent for Sum {
    type Msg = Bump;
    async fn handle(&mut self, _: &mut Ctx<Bump>, m: Bump) -> Result<Verdict<Bump>, AgentError> {
        match m {
            Bump::Add(v) => {
                self.0 = self.0.wrapping_add(v);
                Ok(Verdict::Done)
            }
            Bump::Done => Ok(Verdict::Reply(Bump::Add(self.0))),
        }
    }
}

async fn w1_echelon(n: u64) -> f64 {
    let Ok(h) = Hierarchy::builder("w1")
        .max_attempts(1)
        .tier("sum", 1, |_| Sum(0))
        .spawn()
        .await
    else {
        return 0.0;
    };
    let Ok(a) = h.agent("sum/0") else { return 0.0 };
    let t = Instant::now();
    for i in 0..n {
        let _ = a.send(Bump::Add(i));
    }
    let _ = a.call(Bump::Done).await;
    let r = n as f64 / t.elapsed().as_secs_f64();
    let _ = h.shutdown(Duration::from_secs(10)).await;
    r
}

/// The bit of [`BenchConfig::only`] that picks the batched W1 row ("W1b").
pub const W1_BATCHED: u32 = 8;

/// W1 batched: how many messages go in one batch (`AgentRef::send_batch`).
pub const W1_BATCH: u64 = 64;

async fn w1_tokio_batched(n: u64) -> f64 {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<Bump>>();
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut sum = 0u64;
        while let Some(batch) = rx.recv().await {
            for m in batch {
                match m {
                    Bump::Add(v) => sum = sum.wrapping_add(v),
                    Bump::Done => {
                        let _ = done_tx.send(sum);
                        return;
                    }
                }
            }
        }
    });
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + W1_BATCH).min(n);
        let _ = tx.send((i..end).map(Bump::Add).collect());
        i = end;
    }
    let _ = tx.send(vec![Bump::Done]);
    let _ = done_rx.await;
    n as f64 / t.elapsed().as_secs_f64()
}

async fn w1_ractor_batched(n: u64) -> f64 {
    let Ok((a, h)) = Actor::spawn(None, RawSum, ()).await else {
        return 0.0;
    };
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + W1_BATCH).min(n);
        let _ = a.send_message(RawMsg::Batch((i..end).collect()));
        i = end;
    }
    let (tx, rx) = oneshot::channel();
    let _ = a.send_message(RawMsg::Done(tx));
    let _ = rx.await;
    let r = n as f64 / t.elapsed().as_secs_f64();
    a.stop(None);
    let _ = h.await;
    r
}

async fn w1_echelon_batched(n: u64) -> f64 {
    let Ok(h) = Hierarchy::builder("w1")
        .max_attempts(1)
        .tier("sum", 1, |_| Sum(0))
        .spawn()
        .await
    else {
        return 0.0;
    };
    let Ok(a) = h.agent("sum/0") else { return 0.0 };
    let t = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + W1_BATCH).min(n);
        let _ = a.send_batch((i..end).map(Bump::Add));
        i = end;
    }
    let _ = a.call(Bump::Done).await;
    let r = n as f64 / t.elapsed().as_secs_f64();
    let _ = h.shutdown(Duration::from_secs(10)).await;
    r
}

// ---- W2: request / reply ----------------------------------------------------------

async fn w2_tokio(n: u64) -> f64 {
    let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<u64>>();
    tokio::spawn(async move {
        let mut k = 0u64;
        while let Some(reply) = rx.recv().await {
            k += 1;
            let _ = reply.send(k);
        }
    });
    let t = Instant::now();
    for _ in 0..n {
        let (r, w) = oneshot::channel();
        let _ = tx.send(r);
        let _ = w.await;
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

async fn w2_ractor(n: u64) -> f64 {
    let Ok((a, h)) = Actor::spawn(None, RawSum, ()).await else {
        return 0.0;
    };
    let t = Instant::now();
    for _ in 0..n {
        let _ = a.call(RawMsg::Ping, None).await;
    }
    let r = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    a.stop(None);
    let _ = h.await;
    r
}

async fn w2_echelon(n: u64) -> f64 {
    let Ok(h) = Hierarchy::builder("w2")
        .max_attempts(1)
        .tier("sum", 1, |_| Sum(0))
        .spawn()
        .await
    else {
        return 0.0;
    };
    let Ok(a) = h.agent("sum/0") else { return 0.0 };
    let t = Instant::now();
    for _ in 0..n {
        let _ = a.call(Bump::Done).await;
    }
    let r = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let _ = h.shutdown(Duration::from_secs(10)).await;
    r
}

// ---- W3: spawn --------------------------------------------------------------------

/// One W3 measurement: seconds to spawn, resident bytes per agent idle, the same after
/// each agent has handled one message, seconds to shut down.
type W3 = (f64, f64, f64, f64);

/// Resident bytes per agent now, of `n` agents spawned when the process had `before` kB.
fn w3_bytes(before: u64, n: usize) -> f64 {
    (crate::soak::rss_kb().saturating_sub(before) * 1024) as f64 / n as f64
}

async fn w3_echelon(n: usize) -> W3 {
    let before = crate::soak::rss_kb();
    let t = Instant::now();
    let Ok(h) = Hierarchy::builder("w3")
        .span(SpanOfControl::auto_split(W3_SPAN))
        .tier("a", n, |_| Sum(0))
        .spawn()
        .await
    else {
        return (0.0, 0.0, 0.0, 0.0);
    };
    let spawn = t.elapsed().as_secs_f64();
    let bytes = w3_bytes(before, n);
    // one call to each agent: it then keeps its queue and waits on it
    for i in 0..n {
        if let Ok(a) = h.agent(&format!("a/{i}")) {
            let _ = a.call(Bump::Done).await;
        }
    }
    let used = w3_bytes(before, n);
    let t = Instant::now();
    let _ = h.shutdown(Duration::from_secs(60)).await;
    (spawn, bytes, used, t.elapsed().as_secs_f64())
}

/// The span of control of W3's hierarchy.
const W3_SPAN: usize = 10;

/// How many supervisors (the root and the team leads) echelon's auto-split puts over
/// `n` agents at span [`W3_SPAN`]. The references spawn as many extra actors or tasks,
/// so each way builds the same number: the comparison is per actor, not per leaf.
fn w3_supervisors(n: usize) -> usize {
    fn leads(g: &crate::supervisor::Group) -> usize {
        match g {
            crate::supervisor::Group::Reports(_) => 0,
            crate::supervisor::Group::Leads(gs) => gs.len() + gs.iter().map(leads).sum::<usize>(),
        }
    }
    1 + leads(&crate::supervisor::split(0..n, W3_SPAN))
}

/// A hand-written ractor supervisor for W3's tree: linked children, and it keeps
/// running when one exits (ractor's default would stop it).
struct RawLead;

impl Actor for RawLead {
    type Msg = RawMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<RawMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<RawMsg>,
        _: ractor::SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// Raw ractor's W3: the same tree as echelon's (a root, team leads of at most
/// [`W3_SPAN`], the agents under them), every actor spawned linked to its lead.
async fn w3_ractor(n: usize) -> W3 {
    use crate::supervisor::{split, Group};
    let before = crate::soak::rss_kb();
    let t = Instant::now();
    let tree = split(0..n, W3_SPAN);
    let mut actors = Vec::with_capacity(n + w3_supervisors(n));
    let Ok((root, h)) = Actor::spawn(None, RawLead, ()).await else {
        return (0.0, 0.0, 0.0, 0.0);
    };
    let mut todo = vec![(&tree, root.get_cell())];
    actors.push((root, h));
    while let Some((group, lead)) = todo.pop() {
        match group {
            Group::Reports(r) => {
                for _ in r.clone() {
                    if let Ok(a) = Actor::spawn_linked(None, RawSum, (), lead.clone()).await {
                        actors.push(a);
                    }
                }
            }
            Group::Leads(groups) => {
                for g in groups {
                    if let Ok((a, h)) = Actor::spawn_linked(None, RawLead, (), lead.clone()).await {
                        todo.push((g, a.get_cell()));
                        actors.push((a, h));
                    }
                }
            }
        }
    }
    let spawn = t.elapsed().as_secs_f64();
    let bytes = w3_bytes(before, n);
    // one round trip with each actor (the leads drop theirs unanswered)
    for (a, _) in &actors {
        let (tx, rx) = oneshot::channel();
        if a.send_message(RawMsg::Done(tx)).is_ok() {
            let _ = rx.await;
        }
    }
    let used = w3_bytes(before, n);
    let t = Instant::now();
    for (a, _) in &actors {
        a.stop(None);
    }
    for (_, h) in actors {
        let _ = h.await;
    }
    (spawn, bytes, used, t.elapsed().as_secs_f64())
}

/// Raw tokio's W3: as many tasks as echelon has actors, each waiting on its channel.
async fn w3_tokio(n: usize) -> W3 {
    let before = crate::soak::rss_kb();
    let t = Instant::now();
    let total = n + w3_supervisors(n);
    let mut tasks = Vec::with_capacity(total);
    for _ in 0..total {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        let h = tokio::spawn(async move {
            while let Some(reply) = rx.recv().await {
                let _ = reply.send(());
            }
        });
        tasks.push((tx, h));
    }
    let spawn = t.elapsed().as_secs_f64();
    let bytes = w3_bytes(before, n);
    // one round trip with each task
    for (tx, _) in &tasks {
        let (reply, rx) = oneshot::channel();
        if tx.send(reply).is_ok() {
            let _ = rx.await;
        }
    }
    let used = w3_bytes(before, n);
    let t = Instant::now();
    // drop every sender first (each task then ends), then wait for them all
    let handles: Vec<_> = tasks.into_iter().map(|(_, h)| h).collect();
    for h in handles {
        let _ = h.await;
    }
    (spawn, bytes, used, t.elapsed().as_secs_f64())
}

/// W3 the given way with `n` agents, in this process on a fresh 2-worker runtime:
/// spawned and shut down once **cold** (the process's heap still has to grow: page
/// faults included), then again **warm** (the allocator reuses what the cold run freed).
/// Gives (cold seconds to spawn, warm seconds to spawn, resident bytes per agent of
/// the cold run, the same after each agent handled one message, seconds to shut down
/// the cold run). Meant for a fresh process
/// (`echelon bench --w3-probe WAY N`): in a process that already ran other workloads,
/// neither the bytes nor the cold spawn mean much.
pub fn w3_probe(way: Way, n: usize) -> Option<[f64; 5]> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .ok()?;
    let n = n.max(1);
    rt.block_on(async move {
        tokio::spawn(async move {
            // the runtime's, ractor's and echelon's one-time allocations (the panic
            // hook, thread-locals, the timer wheel) are not per agent
            let _ = w3_once(way, 10).await;
            w3_cold_warm(way, n).await
        })
        .await
        .ok()
    })
}

/// W3 once, the given way.
async fn w3_once(way: Way, n: usize) -> W3 {
    match way {
        Way::Tokio => w3_tokio(n).await,
        Way::Ractor => w3_ractor(n).await,
        Way::Echelon => w3_echelon(n).await,
    }
}

/// W3 cold, then warm: [cold spawn s, warm spawn s, bytes per agent (cold), bytes per
/// agent after one message each (cold), shutdown s (cold)].
async fn w3_cold_warm(way: Way, n: usize) -> [f64; 5] {
    let (cold, bytes, used, shutdown) = w3_once(way, n).await;
    let (warm, _, _, _) = w3_once(way, n).await;
    [cold, warm, bytes, used, shutdown]
}

/// W3 in `reps` fresh processes ([`w3_probe`] in this executable run again), one
/// measurement each.
fn fresh_w3(way: Way, n: usize, reps: usize) -> Vec<[f64; 5]> {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("echelon bench: cannot find this executable for the W3 probe: {e}");
            return Vec::new();
        }
    };
    let mut v = Vec::new();
    for _ in 0..reps {
        let out = match std::process::Command::new(&exe)
            .args(["bench", "--w3-probe", way.name(), &n.to_string()])
            .output()
        {
            Ok(out) if out.status.success() => out,
            // the row is left short (or empty), and the reason shown
            Ok(out) => {
                eprintln!(
                    "echelon bench: the W3 probe ({}) failed: {}",
                    way.name(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                break;
            }
            Err(e) => {
                eprintln!(
                    "echelon bench: cannot run the W3 probe ({}): {e}",
                    way.name()
                );
                break;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let xs: Vec<f64> = text
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let Ok(x) = <[f64; 5]>::try_from(xs) {
            v.push(x);
        }
    }
    v
}

// ---- W6: crash → restarted → serving ---------------------------------------------

struct Fragile;

impl Agent for Fragile {
    type Msg = Bump;
    async fn handle(&mut self, _: &mut Ctx<Bump>, m: Bump) -> Result<Verdict<Bump>, AgentError> {
        match m {
            Bump::Done => panic!("bench: crash"),
            Bump::Add(v) => Ok(Verdict::Reply(Bump::Add(v))),
        }
    }
}

/// Microseconds from sending a crashing message to the restarted agent's next reply.
async fn w6_echelon(n: u64) -> f64 {
    let Ok(h) = Hierarchy::builder("w6")
        .max_attempts(1)
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(u32::MAX).per(Duration::from_secs(1)),
        )
        .tier("f", 1, |_| Fragile)
        .spawn()
        .await
    else {
        return 0.0;
    };
    let Ok(a) = h.agent("f/0") else { return 0.0 };
    let t = Instant::now();
    for i in 0..n {
        let _ = a.send(Bump::Done);
        let _ = a.call(Bump::Add(i)).await;
    }
    let r = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let _ = h.shutdown(Duration::from_secs(10)).await;
    r
}

// ---- W4: broadcast to 8 and gather all ---------------------------------------------

const FAN: usize = 8;

async fn w4_tokio(n: u64) -> f64 {
    let mut workers = Vec::with_capacity(FAN);
    for _ in 0..FAN {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u64, oneshot::Sender<u64>)>();
        tokio::spawn(async move {
            while let Some((v, reply)) = rx.recv().await {
                let _ = reply.send(v + 1);
            }
        });
        workers.push(tx);
    }
    let t = Instant::now();
    for i in 0..n {
        let mut replies = Vec::with_capacity(FAN);
        for w in &workers {
            let (tx, rx) = oneshot::channel();
            let _ = w.send((i, tx));
            replies.push(rx);
        }
        let mut sum = 0;
        for r in replies {
            sum += r.await.unwrap_or(0);
        }
        std::hint::black_box(sum);
    }
    n as f64 / t.elapsed().as_secs_f64()
}

async fn w4_ractor(n: u64) -> f64 {
    let mut actors = Vec::with_capacity(FAN);
    for _ in 0..FAN {
        if let Ok(a) = Actor::spawn(None, RawSum, ()).await {
            actors.push(a);
        }
    }
    let t = Instant::now();
    for _ in 0..n {
        let mut replies = Vec::with_capacity(FAN);
        for (a, _) in &actors {
            let (tx, rx) = oneshot::channel();
            let _ = a.send_message(RawMsg::Ping(RpcReplyPort::from(tx)));
            replies.push(rx);
        }
        let mut sum = 0u64;
        for r in replies {
            sum = sum.wrapping_add(r.await.unwrap_or(0));
        }
        std::hint::black_box(sum);
    }
    let r = n as f64 / t.elapsed().as_secs_f64();
    for (a, h) in actors {
        a.stop(None);
        let _ = h.await;
    }
    r
}

async fn w4_echelon(n: u64) -> f64 {
    let Ok(router) = crate::Router::builder("w4")
        .workers("w", FAN, |_| Echo)
        .route(crate::Route::Broadcast)
        .gather(crate::Gather::all(|v: Vec<Bump>| {
            Bump::Add(
                v.iter()
                    .map(|b| if let Bump::Add(x) = b { *x } else { 0 })
                    .sum(),
            )
        }))
        .max_attempts(1)
        .spawn()
        .await
    else {
        return 0.0;
    };
    let entry = router.entry().clone();
    let t = Instant::now();
    for i in 0..n {
        let _ = entry.call(Bump::Add(i)).await;
    }
    let r = n as f64 / t.elapsed().as_secs_f64();
    let _ = router.shutdown(Duration::from_secs(10)).await;
    r
}

/// Replies with its input plus one.
struct Echo;

impl Agent for Echo {
    type Msg = Bump;
    async fn handle(&mut self, _: &mut Ctx<Bump>, m: Bump) -> Result<Verdict<Bump>, AgentError> {
        Ok(Verdict::Reply(match m {
            Bump::Add(v) => Bump::Add(v + 1),
            Bump::Done => Bump::Done,
        }))
    }
}

// ---- W5: 10-stage pipeline ----------------------------------------------------------

const STAGES: usize = 10;

/// Sequential single-message trips timed for the latency figure (after as many again
/// to warm up); the figure is their median.
fn w5_trips(n: u64) -> usize {
    (n / 5).clamp(100, 2_000) as usize
}

/// Times `2k` sequential trips and keeps the median of the last `k` (µs).
struct Trips {
    k: usize,
    i: usize,
    v: Vec<f64>,
}

impl Trips {
    fn new(k: usize) -> Self {
        Trips {
            k,
            i: 0,
            v: Vec::with_capacity(k),
        }
    }

    /// Another trip to make?
    fn more(&self) -> bool {
        self.i < 2 * self.k
    }

    fn record(&mut self, started: Instant) {
        if self.i >= self.k {
            self.v.push(started.elapsed().as_secs_f64() * 1e6);
        }
        self.i += 1;
    }

    fn median(self) -> f64 {
        stats(self.v).map_or(0.0, |(_, med, _)| med)
    }
}

/// Throughput (msgs/s) for `n` messages, and the latency of one message through all
/// ten stages (µs, whole trip, median of warm trips).
async fn w5_tokio(n: u64, k: usize) -> (f64, f64) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut next = done_tx;
    for _ in 0..STAGES {
        let (tx, mut rx) = mpsc::unbounded_channel::<u64>();
        let out = next;
        tokio::spawn(async move {
            while let Some(v) = rx.recv().await {
                let _ = out.send(v + 1);
            }
        });
        next = tx;
    }
    let first = next;
    let mut trips = Trips::new(k);
    while trips.more() {
        let t = Instant::now();
        let _ = first.send(0);
        let _ = done_rx.recv().await;
        trips.record(t);
    }
    let trip = trips.median();
    let t = Instant::now();
    for i in 0..n {
        let _ = first.send(i);
    }
    for _ in 0..n {
        let _ = done_rx.recv().await;
    }
    (n as f64 / t.elapsed().as_secs_f64(), trip)
}

struct Stage {
    next: Option<ActorRef<u64>>,
    done: mpsc::UnboundedSender<u64>,
}

impl Actor for Stage {
    type Msg = u64;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<u64>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(&self, _: ActorRef<u64>, v: u64, _: &mut ()) -> Result<(), ActorProcessingErr> {
        match &self.next {
            Some(n) => {
                let _ = n.send_message(v + 1);
            }
            None => {
                let _ = self.done.send(v + 1);
            }
        }
        Ok(())
    }
}

async fn w5_ractor(n: u64, k: usize) -> (f64, f64) {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
    let mut next: Option<ActorRef<u64>> = None;
    let mut handles = Vec::new();
    for _ in 0..STAGES {
        let stage = Stage {
            next: next.clone(),
            done: done_tx.clone(),
        };
        let Ok((a, h)) = Actor::spawn(None, stage, ()).await else {
            return (0.0, 0.0);
        };
        handles.push((a.clone(), h));
        next = Some(a);
    }
    let Some(first) = next else { return (0.0, 0.0) };
    let mut trips = Trips::new(k);
    while trips.more() {
        let t = Instant::now();
        let _ = first.send_message(0);
        let _ = done_rx.recv().await;
        trips.record(t);
    }
    let trip = trips.median();
    let t = Instant::now();
    for i in 0..n {
        let _ = first.send_message(i);
    }
    for _ in 0..n {
        let _ = done_rx.recv().await;
    }
    let r = (n as f64 / t.elapsed().as_secs_f64(), trip);
    for (a, h) in handles {
        a.stop(None);
        let _ = h.await;
    }
    r
}

/// A pipeline of ten agent stages (no retries, timeouts or fallbacks: the chained
/// path). The trip is a `call` on the pipeline's entry; the throughput sends `n`
/// messages and waits until the pipeline is idle.
async fn w5_echelon(n: u64, k: usize) -> (f64, f64) {
    w5_pipeline(n, k, false).await
}

async fn w5_pipeline(n: u64, k: usize, coordinated: bool) -> (f64, f64) {
    let mut b = crate::Pipeline::builder("w5");
    if coordinated {
        b = b.coordinated();
    }
    for i in 0..STAGES {
        b = b.stage(crate::Stage::agent(format!("s{i}"), |_| Echo));
    }
    let Ok(p) = b.spawn().await else {
        return (0.0, 0.0);
    };
    let entry = p.entry().clone();
    let mut trips = Trips::new(k);
    while trips.more() {
        let t = Instant::now();
        let _ = entry.call(Bump::Add(0)).await;
        trips.record(t);
    }
    let trip = trips.median();
    let t = Instant::now();
    for i in 0..n {
        let _ = entry.send(Bump::Add(i));
    }
    let _ = p.hierarchy().wait_idle(Duration::from_secs(600)).await;
    let r = (n as f64 / t.elapsed().as_secs_f64(), trip);
    let _ = p.shutdown(Duration::from_secs(10)).await;
    r
}

/// One W5 measurement of one implementation (`"tokio"`, `"ractor"`, `"echelon"`, or
/// `"coordinated"`: echelon with the chained path turned off), for profiling: (msgs/s for `n` messages, µs for a trip through the ten stages).
pub async fn w5_once(which: &str, n: u64) -> Option<(f64, f64)> {
    let k = w5_trips(n);
    match which {
        "tokio" => Some(w5_tokio(n, k).await),
        "ractor" => Some(w5_ractor(n, k).await),
        "echelon" => Some(w5_echelon(n, k).await),
        "coordinated" => Some(w5_pipeline(n, k, true).await),
        _ => None,
    }
}

/// The W5 rows: throughput and the latency of one message through the ten stages,
/// three ways, each repeated `reps` times (at most 3).
pub async fn w5_rows(cfg: &BenchConfig) -> Vec<Row> {
    let (mut t5, mut r5, mut e5) = (Vec::new(), Vec::new(), Vec::new());
    let k = cfg.trips.unwrap_or_else(|| w5_trips(cfg.pipeline));
    for _ in 0..cfg.reps.clamp(1, 3) {
        if cfg.way(Way::Tokio) {
            t5.push(w5_tokio(cfg.pipeline, k).await);
        }
        if cfg.way(Way::Ractor) {
            r5.push(w5_ractor(cfg.pipeline, k).await);
        }
        if cfg.way(Way::Echelon) {
            e5.push(w5_echelon(cfg.pipeline, k).await);
        }
    }
    let two = |v: &[(f64, f64)], k: usize| {
        stats(v.iter().map(|x| if k == 0 { x.0 } else { x.1 }).collect())
    };
    let row = |name: &str, unit: &str, hib: bool, k: usize| Row {
        name: name.into(),
        unit: unit.into(),
        higher_is_better: hib,
        tokio: two(&t5, k),
        ractor: two(&r5, k),
        echelon: two(&e5, k),
    };
    vec![
        row("W5 10-stage pipeline throughput", "msgs/s", true, 0),
        row("W5 latency, 10 hops (whole trip)", "µs", false, 1),
    ]
}

// ---- W7: healthcare readings per second (wall clock) ---------------------------------

/// W7 batched: how many of one monitor's readings go in one batch.
pub const W7_BATCH: usize = 32;

/// Readings per second through the three tiers. `batch` 1: each reading sent on its
/// own; above 1: each monitor's stream is sent in batches of that many readings.
async fn w7_echelon(n: u64, batch: usize) -> f64 {
    use crate::sim::healthcare::{Decision, Diagnostic, Monitor, Reading, Ward};
    let Ok(h) = Hierarchy::builder("w7")
        .span(SpanOfControl::auto_split(8))
        .max_attempts(1)
        .tier("decision", 2, |_| Decision::new(0.75, Duration::ZERO))
        .tier("diagnostic", 25, |_| Diagnostic::new(0.6, Duration::ZERO))
        .tier("monitor", 1000, |_| Monitor::new(0.15))
        .spawn()
        .await
    else {
        return 0.0;
    };
    let monitors = h.tier("monitor").unwrap_or_default();
    if monitors.is_empty() {
        return 0.0;
    }
    let mut buffers: Vec<Vec<Ward>> = if batch > 1 {
        (0..monitors.len())
            .map(|_| Vec::with_capacity(batch))
            .collect()
    } else {
        Vec::new()
    };
    let t = Instant::now();
    for i in 0..n {
        let p = (i % monitors.len() as u64) as u32;
        // a normal reading, with an abnormal one now and then so all tiers work
        let spo2 = if i % 97 == 0 { 85.0 } else { 97.0 };
        let r = Reading {
            patient: p,
            at_ms: i,
            hr: 75.0,
            spo2,
            sbp: 120.0,
            temp: 36.8,
            missed_dose: false,
            episode: None,
        };
        if batch > 1 {
            let buf = &mut buffers[p as usize];
            buf.push(Ward::Reading(r));
            if buf.len() == batch {
                let full = std::mem::replace(buf, Vec::with_capacity(batch));
                let _ = monitors[p as usize].send_batch(full);
            }
        } else {
            let _ = monitors[p as usize].send(Ward::Reading(r));
        }
    }
    for (m, buf) in monitors.iter().zip(buffers) {
        let _ = m.send_batch(buf);
    }
    let _ = h.wait_idle(Duration::from_secs(600)).await;
    let r = n as f64 / t.elapsed().as_secs_f64();
    let _ = h.shutdown(Duration::from_secs(10)).await;
    r
}

/// Run the workloads on the current runtime: all of them, or only those picked with
/// [`BenchConfig::only`] and [`BenchConfig::ways`] (for profiling one path).
pub async fn run(cfg: BenchConfig) -> Vec<Row> {
    let cfg = &cfg;
    let r = cfg.reps;
    let mut rows = w1_w2_w3_rows(cfg).await;
    if cfg.wants(4) {
        rows.push(
            three_ways(
                cfg,
                "W4 broadcast to 8, gather all",
                "req/s",
                true,
                || w4_tokio(cfg.broadcasts),
                || w4_ractor(cfg.broadcasts),
                || w4_echelon(cfg.broadcasts),
            )
            .await,
        );
    }
    if cfg.wants(5) {
        rows.extend(w5_rows(cfg).await);
    }
    if cfg.wants(6) {
        rows.push(row(
            "W6 crash → restarted → serving",
            "µs",
            false,
            None,
            None,
            reps_of(cfg, Way::Echelon, r, || w6_echelon(cfg.restarts)).await,
        ));
    }
    rows.extend(w7_rows(cfg).await);
    rows
}

impl BenchConfig {
    fn wants(&self, workload: u32) -> bool {
        self.only == 0 || self.only & (1 << workload) != 0
    }

    fn way(&self, way: Way) -> bool {
        self.ways == 0 || self.ways & (1 << way as u8) != 0
    }
}

/// Repetitions of one way, if that way is selected.
async fn reps_of<F, Fut>(cfg: &BenchConfig, way: Way, n: usize, f: F) -> Option<(f64, f64, f64)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    if cfg.way(way) {
        reps(n, f).await
    } else {
        None
    }
}

/// One row measured the three ways, each way `cfg.reps` times if it is selected. The
/// repetitions take turns (tokio, ractor, echelon, then again), so that a machine
/// that slows down or speeds up during the row weighs on the three alike.
#[allow(clippy::too_many_arguments)]
async fn three_ways<T, TF, R, RF, E, EF>(
    cfg: &BenchConfig,
    name: &str,
    unit: &str,
    higher_is_better: bool,
    mut tokio: T,
    mut ractor: R,
    mut echelon: E,
) -> Row
where
    T: FnMut() -> TF,
    TF: std::future::Future<Output = f64>,
    R: FnMut() -> RF,
    RF: std::future::Future<Output = f64>,
    E: FnMut() -> EF,
    EF: std::future::Future<Output = f64>,
{
    let (mut t, mut r, mut e) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..cfg.reps.max(1) {
        if cfg.way(Way::Tokio) {
            t.push(tokio().await);
        }
        if cfg.way(Way::Ractor) {
            r.push(ractor().await);
        }
        if cfg.way(Way::Echelon) {
            e.push(echelon().await);
        }
    }
    row(name, unit, higher_is_better, stats(t), stats(r), stats(e))
}

fn row(
    name: &str,
    unit: &str,
    higher_is_better: bool,
    tokio: Option<(f64, f64, f64)>,
    ractor: Option<(f64, f64, f64)>,
    echelon: Option<(f64, f64, f64)>,
) -> Row {
    Row {
        name: name.into(),
        unit: unit.into(),
        higher_is_better,
        tokio,
        ractor,
        echelon,
    }
}

async fn w1_w2_w3_rows(cfg: &BenchConfig) -> Vec<Row> {
    let r = cfg.reps;
    let mut rows = Vec::new();
    if cfg.wants(1) {
        rows.push(
            three_ways(
                cfg,
                "W1 one-way throughput",
                "msgs/s",
                true,
                || w1_tokio(cfg.one_way),
                || w1_ractor(cfg.one_way),
                || w1_echelon(cfg.one_way),
            )
            .await,
        );
    }
    if cfg.wants(W1_BATCHED) {
        rows.push(
            three_ways(
                cfg,
                &format!("W1 same, batched ×{W1_BATCH} (all three)"),
                "msgs/s",
                true,
                || w1_tokio_batched(cfg.one_way),
                || w1_ractor_batched(cfg.one_way),
                || w1_echelon_batched(cfg.one_way),
            )
            .await,
        );
    }
    if cfg.wants(2) {
        rows.push(
            three_ways(
                cfg,
                "W2 request/reply round trip",
                "µs",
                false,
                || w2_tokio(cfg.round_trips),
                || w2_ractor(cfg.round_trips),
                || w2_echelon(cfg.round_trips),
            )
            .await,
        );
    }
    if cfg.wants(3) {
        let reps = r.clamp(1, 3);
        let run = |way: Way| async move {
            if !cfg.way(way) {
                Vec::new()
            } else if cfg.fresh_w3 {
                fresh_w3(way, cfg.agents, reps)
            } else {
                let mut v = Vec::new();
                for _ in 0..reps {
                    v.push(w3_cold_warm(way, cfg.agents).await);
                }
                v
            }
        };
        let tt = run(Way::Tokio).await;
        let rt = run(Way::Ractor).await;
        let et = run(Way::Echelon).await;
        let pick = |v: &[[f64; 5]], k: usize| stats(v.iter().map(|x| x[k]).collect());
        let us = |v: &[[f64; 5]], k: usize| pick(v, k).map(|(a, b, c)| per(a, b, c, cfg.agents));
        let fresh = if cfg.fresh_w3 { ", fresh process" } else { "" };
        let n = cfg.agents;
        let w3 = [
            (format!("W3 spawn {n} agents, cold{fresh}"), "µs/agent", 0),
            (format!("W3 spawn {n} agents, warm"), "µs/agent", 1),
            (format!("W3 resident bytes per agent{fresh}"), "bytes", 2),
            ("W3 same, after one message each".to_string(), "bytes", 3),
            (format!("W3 shut down {n} agents"), "s", 4),
        ];
        for (name, unit, k) in w3 {
            let f = |v: &[[f64; 5]]| if k < 2 { us(v, k) } else { pick(v, k) };
            rows.push(row(&name, unit, false, f(&tt), f(&rt), f(&et)));
        }
    }
    rows
}

async fn w7_rows(cfg: &BenchConfig) -> Vec<Row> {
    let mut rows = Vec::new();
    if cfg.wants(7) {
        let r = cfg.reps.clamp(1, 3);
        rows.push(row(
            "W7 healthcare readings, 3 tiers",
            "readings/s",
            true,
            None,
            None,
            reps_of(cfg, Way::Echelon, r, || w7_echelon(cfg.readings, 1)).await,
        ));
        rows.push(row(
            &format!("W7 same, batched ×{W7_BATCH} per monitor"),
            "readings/s",
            true,
            None,
            None,
            reps_of(cfg, Way::Echelon, r, || w7_echelon(cfg.readings, W7_BATCH)).await,
        ));
    }
    rows
}

fn per(a: f64, b: f64, c: f64, n: usize) -> (f64, f64, f64) {
    let k = 1e6 / n.max(1) as f64;
    (a * k, b * k, c * k)
}

/// The ractor features this build was compiled with, which change what every message
/// and every actor costs in both the raw-ractor and the echelon columns.
pub fn build_features() -> String {
    let on = |b: bool| if b { "on" } else { "off" };
    format!(
        "built with ractor cluster {} (echelon feature `cluster`), message_span_propogation {} (echelon feature `span-propagation`)",
        on(cfg!(feature = "cluster")),
        on(cfg!(feature = "span-propagation")),
    )
}

/// The rows as a table.
pub fn table(rows: &[Row]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let cell = |v: Option<(f64, f64, f64)>| match v {
        Some((lo, med, hi)) => format!("{} [{}–{}]", num(med), num(lo), num(hi)),
        None => "—".to_string(),
    };
    let _ = writeln!(
        s,
        "{:<34} {:>9} {:>28} {:>28} {:>28} {:>10} {:>10}",
        "workload (median [min–max])",
        "unit",
        "raw tokio",
        "raw ractor",
        "echelon",
        "×ractor",
        "×tokio"
    );
    for r in rows {
        let f = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{x:.2}×"));
        let _ = writeln!(
            s,
            "{:<34} {:>9} {:>28} {:>28} {:>28} {:>10} {:>10}",
            r.name,
            r.unit,
            cell(r.tokio),
            cell(r.ractor),
            cell(r.echelon),
            f(r.vs_ractor()),
            f(r.vs_tokio())
        );
    }
    s.push_str("×ractor, ×tokio: echelon's cost relative to the reference (1.00× = same; >1 = slower or bigger)\n");
    s
}

fn num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The W3 references spawn as many actors as echelon's hierarchy has nodes, so the
    /// ratio compares like with like.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn w3_references_spawn_as_many_actors_as_echelon() {
        for n in [1, 10, 11, 1000, 1234] {
            let h = Hierarchy::builder("w3")
                .span(SpanOfControl::auto_split(W3_SPAN))
                .tier("a", n, |_| Sum(0))
                .spawn()
                .await
                .expect("spawn");
            assert_eq!(h.node_counters().len(), n + w3_supervisors(n), "n = {n}");
            assert!(h.shutdown(Duration::from_secs(10)).await.drained);
        }
    }
}
