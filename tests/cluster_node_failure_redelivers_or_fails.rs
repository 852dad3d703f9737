//! Distribution, failure: a node that stops mid-run has its in-flight tasks redelivered
//! to the next node of the placement (or a local fallback), or failed with the node
//! named once the attempts run out. Never silently dropped: the owner's accounting
//! balances after the drain.
#![cfg(feature = "cluster")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use echelon::cluster::{Hosted, Node, NodeConfig, Placement, RemoteTeam};
use echelon::prelude::*;
use echelon::FailureKind;
use serde::{Deserialize, Serialize};
use support::{idle, within};
use tokio::sync::{mpsc, Notify};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Job {
    Work(u64),
    Done(u64, String),
}

/// Tags replies with its node. On a node given a `hold`, it reports each task it starts
/// and waits on the gate, so a test can stop the node with tasks provably in flight.
struct Worker {
    node: String,
    hold: Option<(mpsc::UnboundedSender<u64>, Arc<Notify>)>,
}

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        let Job::Work(n) = msg else {
            return Ok(Verdict::Done);
        };
        if let Some((started, gate)) = &self.hold {
            let _ = started.send(n);
            gate.notified().await;
        }
        Ok(Verdict::Reply(Job::Done(n, self.node.clone())))
    }
}

/// A node hosting "worker"; with `hold`, its workers block (see [`Worker`]).
async fn node(name: &'static str, hold: Option<(mpsc::UnboundedSender<u64>, Arc<Notify>)>) -> Node {
    let hosted = Hosted::new().team("worker", move |_cfg: &[u8]| {
        let hold = hold.clone();
        Ok(move |_i| Worker {
            node: name.to_string(),
            hold: hold.clone(),
        })
    });
    let cfg = NodeConfig::new(name, "127.0.0.1:0".parse().expect("addr"), "cookie");
    within(10, "node start", Node::start(cfg, hosted))
        .await
        .expect("node starts")
}

async fn owner_with(team: &RemoteTeam<Worker>, attempts: u32) -> Hierarchy<Job> {
    within(
        10,
        "spawn",
        Hierarchy::builder("owner")
            .max_attempts(attempts)
            .restart(
                Strategy::OneForOne,
                Intensity::at_most(1000).per(Duration::from_secs(1)),
            )
            .tier_with(team.tier())
            .spawn(),
    )
    .await
    .expect("spawn")
}

/// Start `n` calls on the team's agents; return their join handles.
fn calls(h: &Hierarchy<Job>, n: u64, agents: u64) -> Vec<tokio::task::JoinHandle<Outcome<Job>>> {
    (0..n)
        .map(|i| {
            let a = h.agent(&format!("worker/{}", i % agents)).expect("agent");
            tokio::spawn(async move { a.call(Job::Work(i)).await.expect("accepted") })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_in_flight_on_a_stopped_node_move_to_the_next_node() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let a = node("a", None).await;
    let b = node("b", Some((started_tx, Arc::new(Notify::new())))).await;
    let c = node("c", None).await;
    within(10, "a-b", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("a-b");
    within(10, "a-c", a.connect(&c.listen_addr().to_string()))
        .await
        .expect("a-c");

    let team = RemoteTeam::new(&a, "worker", "worker", 4, Placement::on(["b", "c"]), |_| {
        Worker {
            node: "local".into(),
            hold: None,
        }
    });
    let h = owner_with(&team, 3).await;
    let pending = calls(&h, 40, 4);
    // each of the 4 agents has one task running on b, held there
    for _ in 0..4 {
        within(10, "a task started on b", started.recv())
            .await
            .expect("started");
    }
    within(10, "stop b", b.stop()).await;

    let mut by_c = 0;
    for p in pending {
        match within(20, "outcome", p).await.expect("joined") {
            Outcome::Completed {
                reply: Some(Job::Done(_, by)),
                ..
            } => {
                assert_eq!(by, "c", "after b stopped, everything ran on c");
                by_c += 1;
            }
            other => panic!("every task completes on c: {other:?}"),
        }
    }
    assert_eq!(by_c, 40);
    let counters = idle(&h, 10).await;
    assert_eq!(counters.submitted, 40);
    assert_eq!(counters.completed, 40, "{counters:?}");
    assert_eq!(
        counters.submitted,
        counters.completed + counters.escalated + counters.failed
    );
    assert!(
        counters.restarts >= 4,
        "each held proxy crashed once: {counters:?}"
    );
    assert!(team.stats().node_failures >= 1, "{:?}", team.stats());
    assert_eq!(team.open_on().await, vec!["c".to_string()]);

    let _ = h.shutdown(Duration::from_secs(5)).await;
    a.stop().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_fallback_the_tasks_fail_naming_the_node() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let a = node("a2", None).await;
    let b = node("b2", Some((started_tx, Arc::new(Notify::new())))).await;
    within(10, "connect", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("connect");
    let team = RemoteTeam::new(&a, "worker", "worker", 2, Placement::on(["b2"]), |_| {
        Worker {
            node: "local".into(),
            hold: None,
        }
    });
    let h = owner_with(&team, 2).await;
    let pending = calls(&h, 6, 2);
    for _ in 0..2 {
        within(10, "started on b2", started.recv())
            .await
            .expect("started");
    }
    within(10, "stop b2", b.stop()).await;
    for p in pending {
        match within(20, "outcome", p).await.expect("joined") {
            Outcome::Failed(f) => {
                assert!(
                    f.reason.contains("b2"),
                    "the reason names the node: {}",
                    f.reason
                );
                assert_eq!(f.kind, FailureKind::Crashed, "{f:?}");
            }
            other => panic!("no node, no fallback: the task fails, {other:?}"),
        }
    }
    let c = idle(&h, 10).await;
    assert_eq!(c.submitted, 6);
    assert_eq!(c.failed, 6, "{c:?}");
    let _ = h.shutdown(Duration::from_secs(5)).await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_local_fallback_the_owner_takes_over() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let a = node("a3", None).await;
    let b = node("b3", Some((started_tx, Arc::new(Notify::new())))).await;
    within(10, "connect", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("connect");
    let team = RemoteTeam::new(
        &a,
        "worker",
        "worker",
        2,
        Placement::on(["b3"]).or_local(),
        |_| Worker {
            node: "local".into(),
            hold: None,
        },
    );
    let h = owner_with(&team, 3).await;
    let pending = calls(&h, 10, 2);
    for _ in 0..2 {
        within(10, "started on b3", started.recv())
            .await
            .expect("started");
    }
    within(10, "stop b3", b.stop()).await;
    for p in pending {
        match within(20, "outcome", p).await.expect("joined") {
            Outcome::Completed {
                reply: Some(Job::Done(_, by)),
                ..
            } => assert_eq!(by, "local"),
            other => panic!("the local fallback completes it: {other:?}"),
        }
    }
    let c = idle(&h, 10).await;
    assert_eq!((c.submitted, c.completed), (10, 10), "{c:?}");
    assert_eq!(team.stats().local, 10, "{:?}", team.stats());
    let _ = h.shutdown(Duration::from_secs(5)).await;
    a.stop().await;
}
