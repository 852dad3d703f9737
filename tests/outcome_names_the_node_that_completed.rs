//! `Outcome::Completed::by` names the node where the task ended, whether the answer
//! travelled whole or, for a task completed where it was submitted, without the path
//! (the caller then names the node it sent to).

mod support;

use std::sync::{Arc, OnceLock};

use echelon::prelude::*;
use support::within;

#[derive(Clone, Debug)]
enum Job {
    Ping,
    /// Forward to agent `a/1` as a ping.
    Pass,
    /// Forward to agent `a/1` as `Back`.
    There,
    /// Forward to agent `a/0` as a ping.
    Back,
}

struct A {
    agents: Arc<OnceLock<[AgentRef<Job>; 2]>>,
}

impl A {
    fn to(&self, i: usize, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match self.agents.get() {
            Some(a) => Ok(Verdict::Forward {
                to: a[i].clone(),
                msg,
            }),
            None => Err(AgentError::reject("no agents to forward to yet")),
        }
    }
}

impl Agent for A {
    type Msg = Job;
    async fn handle(&mut self, _: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        match msg {
            Job::Ping => Ok(Verdict::Reply(Job::Ping)),
            Job::Pass => self.to(1, Job::Ping),
            Job::There => self.to(1, Job::Back),
            Job::Back => self.to(0, Job::Ping),
        }
    }
}

fn completed_by(o: Outcome<Job>) -> String {
    match o {
        Outcome::Completed { by, .. } => by.to_string(),
        other => panic!("expected a completion, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_names_the_agent_that_completed_it() {
    let agents = Arc::new(OnceLock::new());
    let all = agents.clone();
    let h = Hierarchy::builder("h")
        .tier("a", 2, move |_| A {
            agents: all.clone(),
        })
        .spawn()
        .await
        .expect("spawn");
    let (a0, a1) = (h.agent("a/0").expect("a/0"), h.agent("a/1").expect("a/1"));
    let _ = agents.set([a0.clone(), a1.clone()]);

    // completed where it was sent: named by the caller
    for agent in [&a0, &a1] {
        let o = within(5, "a ping", agent.call(Job::Ping))
            .await
            .expect("sent");
        assert_eq!(completed_by(o), agent.path().to_string());
    }
    // completed elsewhere (forwarded from a/0 to a/1): named by the node that did
    let o = within(5, "a pass", a0.call(Job::Pass)).await.expect("sent");
    assert_eq!(completed_by(o), a1.path().to_string());
    // forwarded away and back: it ends where it was submitted, and is named so
    let o = within(5, "there and back", a0.call(Job::There))
        .await
        .expect("sent");
    assert_eq!(completed_by(o), a0.path().to_string());
    // and again after many: the caller's copies of the path come and go
    for _ in 0..1000 {
        let o = within(5, "a ping", a0.call(Job::Ping)).await.expect("sent");
        assert_eq!(completed_by(o), a0.path().to_string());
    }
    let r = h.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(r.drained && r.counters.is_balanced(), "{r:?}");
}
