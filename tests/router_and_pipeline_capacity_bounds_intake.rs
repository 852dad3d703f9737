//! A mailbox capacity on a router or pipeline entry bounds its intake: requests in flight in detached gathers and runs count toward it, so the workers' backlog stays bounded.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use echelon::prelude::*;

#[derive(Clone, Debug)]
#[allow(dead_code)]
struct Job(u32);

struct Slow;
impl Agent for Slow {
    type Msg = Job;
    async fn handle(&mut self, _ctx: &mut Ctx<Job>, j: Job) -> Result<Verdict<Job>, AgentError> {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok(Verdict::Reply(j))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_entry_with_capacity_4_holds_no_producer() {
    let h = Hierarchy::builder("h")
        .mailbox_capacity(4)
        .tier_with(
            Pipeline::builder("p")
                .stage(Stage::agent("slow", |_| Slow))
                .into_tier(1),
        )
        .spawn()
        .await
        .unwrap();
    let entry = h.agent("p/0").unwrap();
    let t = std::time::Instant::now();
    for i in 0..200 {
        entry.send_wait(Job(i)).await.unwrap();
    }
    let stage = h
        .node_counters()
        .into_iter()
        .find(|(p, _, _)| p.as_str().ends_with("/slow/0"))
        .map(|(_, _, c)| c.submitted - c.completed - c.failed)
        .unwrap_or(0);
    eprintln!(
        "2,000 send_wait returned in {:?}; entry queued {}, stage agent backlog {}",
        t.elapsed(),
        entry.queued(),
        stage
    );
    let _ = h.stop().await;
    assert!(
        stage <= 8,
        "capacity 4 on the pipeline entry, yet {stage} runs wait at the stage agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_entry_with_capacity_4_holds_no_producer() {
    let h = Hierarchy::builder("h")
        .mailbox_capacity(4)
        .tier_with(Router::builder("r").workers("w", 1, |_| Slow).into_tier(1))
        .spawn()
        .await
        .unwrap();
    let entry = h.agent("r/0").unwrap();
    for i in 0..200 {
        entry.send_wait(Job(i)).await.unwrap();
    }
    let w = h.agent("r/0/w/0").or_else(|_| h.agent("w/0")).unwrap();
    eprintln!(
        "router entry queued {}, worker queued {}",
        entry.queued(),
        w.queued()
    );
    let backlog = w.queued();
    let _ = h.stop().await;
    assert!(
        backlog <= 8,
        "capacity 4 on the router entry, yet the worker holds {backlog}"
    );
}
