//! Distribution: a tier placed on another node runs there. Tasks, replies and
//! escalations (with their suppression keys) cross the wire; thresholds, trails and
//! accounting stay with the owning hierarchy; a panic on the remote node is a crash of
//! the proxy, restarted and redelivered by the owner's supervisor.
#![cfg(feature = "cluster")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use echelon::cluster::{Hosted, Node, NodeConfig, Placement, RemoteTeam};
use echelon::prelude::*;
use serde::{Deserialize, Serialize};
use support::{idle, within};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Job {
    /// Reply with the value doubled, and the name of the node that did it.
    Double(u64),
    Reply(u64, String),
    /// Escalate with this severity.
    Alarm(f64),
    /// Panic on the node that handles it.
    Boom,
}

/// The remote worker: tags replies with the node it runs on.
struct Worker {
    node: String,
}

impl Agent for Worker {
    type Msg = Job;
    async fn handle(&mut self, ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match msg {
            Job::Double(n) => Ok(Verdict::Reply(Job::Reply(n * 2, self.node.clone()))),
            Job::Alarm(s) => {
                // the escalation context of the task is visible on the remote node
                let seen = ctx
                    .escalation()
                    .map(|e| e.reason.clone())
                    .unwrap_or_default();
                Ok(Verdict::from(
                    Escalation::new(s, format!("alarm after {seen:?}"), Job::Alarm(s))
                        .with_key("alarm"),
                ))
            }
            Job::Boom => panic!("boom on {}", self.node),
            other => Ok(Verdict::Reply(other)),
        }
    }
}

/// The top tier: records escalations it handles.
struct Lead {
    handled: Arc<AtomicU64>,
}

impl Agent for Lead {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        match msg {
            Job::Alarm(s) if s >= 0.9 => Ok(Verdict::escalate(s, "page staff", msg)),
            _ => Ok(Verdict::Done),
        }
    }
}

fn hosted(node: &'static str) -> Hosted {
    Hosted::new().team("worker", move |_cfg: &[u8]| {
        Ok(move |_i| Worker {
            node: node.to_string(),
        })
    })
}

async fn node(name: &'static str) -> Node {
    let cfg = NodeConfig::new(name, "127.0.0.1:0".parse().expect("addr"), "cookie-1");
    within(10, "node start", Node::start(cfg, hosted(name)))
        .await
        .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_replies_and_escalations_cross_the_wire() {
    let a = node("a").await;
    let b = node("b").await;
    let peer = within(10, "connect", a.connect(&b.listen_addr().to_string()))
        .await
        .expect("a connects to b");
    assert_eq!(peer, "b");

    let handled = Arc::new(AtomicU64::new(0));
    let team = RemoteTeam::new(&a, "worker", "worker", 3, Placement::on(["b"]), |_| {
        Worker {
            node: "local".into(),
        }
    });
    let h = within(
        10,
        "spawn",
        Hierarchy::builder("plant")
            .max_attempts(3)
            .tier("lead", 1, {
                let handled = handled.clone();
                move |_| Lead {
                    handled: handled.clone(),
                }
            })
            .tier_with(team.tier().escalate_at(
                Threshold::severity(0.5).suppress_repeats(std::time::Duration::from_secs(3600)),
            ))
            .spawn(),
    )
    .await
    .expect("spawn");
    let mut sink = h.escalations();

    // replies come back from node b
    for i in 0..3 {
        let out = within(10, "call", h.call(&format!("worker/{i}"), Job::Double(21)))
            .await
            .expect("sent");
        match out {
            Outcome::Completed {
                reply: Some(Job::Reply(42, by)),
                ..
            } => assert_eq!(by, "b"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(team.stats().remote >= 3, "{:?}", team.stats());
    assert!(b.stats().tasks_hosted >= 3, "{:?}", b.stats());
    assert_eq!(team.open_on().await, vec!["b".to_string()]);

    // an escalation below the worker tier's threshold is absorbed by the owner
    let out = within(10, "low alarm", h.call("worker/0", Job::Alarm(0.2)))
        .await
        .expect("sent");
    assert!(matches!(out, Outcome::Completed { .. }), "{out:?}");
    // at or above: the lead handles it; the key (set on node b) folds the repeat
    let out = within(10, "alarm", h.call("worker/1", Job::Alarm(0.95)))
        .await
        .expect("sent");
    match out {
        Outcome::Escalated { reason, trail, .. } => {
            assert_eq!(reason, "page staff");
            assert!(
                trail.iter().any(|e| e.path.as_str().ends_with("worker/1")),
                "{trail:?}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    let out = within(10, "repeat", h.call("worker/2", Job::Alarm(0.95)))
        .await
        .expect("sent");
    assert!(
        matches!(&out, Outcome::Completed { trail, .. } if trail.iter().any(|e| matches!(e.decision, echelon::Decision::Suppressed { .. }))),
        "a repeat with the same key is folded: {out:?}"
    );
    let report = within(10, "sink", sink.recv()).await.expect("one alert");
    assert_eq!(report.reason, "page staff");

    // a panic on node b is a crash of the proxy: restarted and redelivered, then failed
    // with the remote panic message after the owner's attempt limit
    let out = within(10, "boom", h.call("worker/0", Job::Boom))
        .await
        .expect("sent");
    match out {
        Outcome::Failed(f) => {
            assert!(f.reason.contains("boom on b"), "{}", f.reason);
            assert_eq!(f.attempts, 3, "{f:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    let c = idle(&h, 10).await;
    assert_eq!(c.submitted, c.completed + c.escalated + c.failed, "{c:?}");
    assert!(c.restarts >= 3, "{c:?}");
    // the remote node still serves after the crash
    let out = within(10, "after", h.call("worker/0", Job::Double(1)))
        .await
        .expect("sent");
    assert!(
        matches!(
            out,
            Outcome::Completed {
                reply: Some(Job::Reply(2, _)),
                ..
            }
        ),
        "{out:?}"
    );

    let _ = h.shutdown(std::time::Duration::from_secs(5)).await;
    team.close().await;
    a.stop().await;
    b.stop().await;
}
