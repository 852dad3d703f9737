//! `cargo bench --bench hot_paths`: the hot paths, with criterion.
//!
//! - send to an agent: echelon `AgentRef::send` vs ractor's `send_message` (one-way,
//!   measured per 1,000 messages with a final round trip), and the same 1,000 as ten
//!   `AgentRef::send_batch` of 100;
//! - call an agent (request/reply);
//! - router dispatch: one round-robin request through a router to a worker and back;
//! - pipeline hop: one message through a 3-stage pipeline, chained and coordinated;
//! - escalation decision: an escalation judged by a threshold and delivered out of the top.

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use echelon::prelude::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
enum Msg {
    Work(u64),
    Sync,
    Alarm,
}

struct Echo;

impl Agent for Echo {
    type Msg = Msg;
    async fn handle(&mut self, _: &mut Ctx<Msg>, m: Msg) -> Result<Verdict<Msg>, AgentError> {
        match m {
            Msg::Work(v) => {
                std::hint::black_box(v);
                Ok(Verdict::Done)
            }
            Msg::Sync => Ok(Verdict::Reply(Msg::Sync)),
            Msg::Alarm => Ok(Verdict::escalate(0.9, "alarm", Msg::Alarm)),
        }
    }
}

struct Raw;
enum RawMsg {
    Work(u64),
    Sync(oneshot::Sender<()>),
}

#[cfg(feature = "cluster")]
impl ractor::Message for RawMsg {}

impl Actor for Raw {
    type Msg = RawMsg;
    type State = ();
    type Arguments = ();
    async fn pre_start(&self, _: ActorRef<RawMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<RawMsg>,
        m: RawMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match m {
            RawMsg::Work(v) => {
                std::hint::black_box(v);
            }
            RawMsg::Sync(tx) => {
                let _ = tx.send(());
            }
        }
        Ok(())
    }
}

fn rt() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn send(c: &mut Criterion) {
    let rt = rt();
    let (h, raw) = rt.block_on(async {
        let h = Hierarchy::builder("b")
            .max_attempts(1)
            .tier("a", 1, |_| Echo)
            .spawn()
            .await
            .expect("spawn");
        let (raw, _) = Actor::spawn(None, Raw, ()).await.expect("spawn raw");
        (h, raw)
    });
    let a = h.agent("a/0").expect("agent");
    let mut g = c.benchmark_group("send 1000 one-way + sync");
    g.bench_function("echelon", |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..1000 {
                let _ = a.send(Msg::Work(i));
            }
            let _ = a.call(Msg::Sync).await;
        })
    });
    g.bench_function("raw ractor", |b| {
        b.to_async(&rt).iter(|| async {
            for i in 0..1000 {
                let _ = raw.send_message(RawMsg::Work(i));
            }
            let (tx, rx) = oneshot::channel();
            let _ = raw.send_message(RawMsg::Sync(tx));
            let _ = rx.await;
        })
    });
    g.bench_function("echelon send_batch ×100", |b| {
        b.to_async(&rt).iter(|| async {
            for k in 0..10u64 {
                let _ = a.send_batch((k * 100..(k + 1) * 100).map(Msg::Work));
            }
            let _ = a.call(Msg::Sync).await;
        })
    });
    g.finish();
    c.bench_function("call (request/reply)", |b| {
        b.to_async(&rt).iter(|| async {
            let _ = a.call(Msg::Sync).await;
        })
    });
    rt.block_on(async {
        let _ = h.shutdown(Duration::from_secs(5)).await;
    });
}

fn router_dispatch(c: &mut Criterion) {
    let rt = rt();
    let r = rt.block_on(async {
        Router::builder("r")
            .workers("w", 4, |_| Echo)
            .route(Route::RoundRobin)
            .max_attempts(1)
            .spawn()
            .await
            .expect("spawn")
    });
    let entry = r.entry().clone();
    c.bench_function("router dispatch (round-robin, request/reply)", |b| {
        b.to_async(&rt).iter(|| async {
            let _ = entry.call(Msg::Sync).await;
        })
    });
    rt.block_on(async {
        let _ = r.shutdown(Duration::from_secs(5)).await;
    });
}

fn pipeline_hop(c: &mut Criterion) {
    let rt = rt();
    // the same three agent stages on both paths: chained (the default for such a
    // pipeline) and coordinated (a run task sending each stage a branch)
    for coordinated in [false, true] {
        let p = rt.block_on(async {
            let b = Pipeline::builder("p")
                .stage(Stage::agent("a", |_| Echo))
                .stage(Stage::agent("b", |_| Echo))
                .stage(Stage::agent("c", |_| Echo));
            let b = if coordinated { b.coordinated() } else { b };
            b.spawn().await.expect("spawn")
        });
        assert_eq!(p.is_chained(), !coordinated);
        let name = if coordinated {
            "pipeline, 3 stages, coordinated (request/reply)"
        } else {
            "pipeline, 3 stages, chained (request/reply)"
        };
        let entry = p.entry().clone();
        c.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let _ = entry.call(Msg::Sync).await;
            })
        });
        rt.block_on(async {
            let _ = p.shutdown(Duration::from_secs(5)).await;
        });
    }
}

fn escalation_decision(c: &mut Criterion) {
    let rt = rt();
    let h = rt.block_on(async {
        Hierarchy::builder("e")
            .max_attempts(1)
            .escalation(Threshold::severity(0.5))
            .tier("a", 1, |_| Echo)
            .spawn()
            .await
            .expect("spawn")
    });
    let a = h.agent("a/0").expect("agent");
    c.bench_function("escalation judged and delivered out of the top", |b| {
        b.to_async(&rt).iter_batched(
            || (),
            |()| async {
                let _ = a.call(Msg::Alarm).await;
            },
            BatchSize::SmallInput,
        )
    });
    rt.block_on(async {
        let _ = h.shutdown(Duration::from_secs(5)).await;
    });
}

criterion_group!(
    benches,
    send,
    router_dispatch,
    pipeline_hop,
    escalation_decision
);
criterion_main!(benches);
