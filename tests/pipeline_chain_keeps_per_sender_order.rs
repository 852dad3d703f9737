//! Through a chained pipeline of agent stages, runs from one sender reach every stage,
//! and leave the last, in the order they were sent: the lead hands them to stage 1 in
//! mailbox order and each stage forwards in the order it handles them. (A function
//! stage runs each run in a task of its own, so it makes no such promise.)

mod support;

use std::sync::{Arc, Mutex};

use echelon::prelude::*;
use support::{idle, within};

struct Pass;

impl Agent for Pass {
    type Msg = u32;
    async fn handle(&mut self, _ctx: &mut Ctx<u32>, n: u32) -> Result<Verdict<u32>, AgentError> {
        Ok(Verdict::Reply(n))
    }
}

struct Record(Arc<Mutex<Vec<u32>>>);

impl Agent for Record {
    type Msg = u32;
    async fn handle(&mut self, _ctx: &mut Ctx<u32>, n: u32) -> Result<Verdict<u32>, AgentError> {
        self.0.lock().expect("lock").push(n);
        Ok(Verdict::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_from_one_sender_leave_in_the_order_they_were_sent() {
    const N: u32 = 5_000;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut b = Pipeline::builder("fifo");
    for i in 0..5 {
        b = b.stage(Stage::agent(format!("s{i}"), |_| Pass));
    }
    let b = b.stage(Stage::agent("record", move |_| Record(s.clone())));
    assert!(b.is_chained());
    let p = within(5, "spawn", b.spawn()).await.expect("spawns");
    for n in 0..N {
        p.entry().send(n).expect("taken");
    }
    let c = idle(p.hierarchy(), 20).await;
    assert!(c.is_balanced() && c.completed == u64::from(N), "{c:?}");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
}
