//! Backoff: a child that keeps crashing is restarted after a growing delay
//! (`Backoff::exponential(initial, max)`: initial, 2×initial, … capped at max), measured
//! on the paused tokio clock from the crash to the next `on_start`.

mod support;

use std::time::Duration;

use echelon::prelude::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

use support::within;

#[derive(Clone, Debug)]
enum Msg {
    /// Panic on attempts `1..=n`; the next attempt completes.
    CrashTimes(u32),
}

#[derive(Debug)]
enum Event {
    Started(u64, Instant),
    Crashed(u32, Instant),
}

struct Flaky {
    events: mpsc::UnboundedSender<Event>,
}

impl Agent for Flaky {
    type Msg = Msg;

    async fn on_start(&mut self, ctx: &mut Ctx<Msg>) -> Result<(), AgentError> {
        let _ = self
            .events
            .send(Event::Started(ctx.incarnation(), Instant::now()));
        Ok(())
    }

    async fn handle(&mut self, ctx: &mut Ctx<Msg>, msg: Msg) -> Result<Verdict<Msg>, AgentError> {
        let Msg::CrashTimes(n) = msg;
        if ctx.attempt() <= n {
            let _ = self
                .events
                .send(Event::Crashed(ctx.attempt(), Instant::now()));
            panic!("flaky crash on attempt {}", ctx.attempt());
        }
        Ok(Verdict::Done)
    }
}

const MS: Duration = Duration::from_millis(1);

struct Fixture {
    h: Hierarchy<Msg>,
    events: mpsc::UnboundedReceiver<Event>,
}

async fn spawn(backoff: Option<Backoff>) -> Fixture {
    let (tx, events) = mpsc::unbounded_channel();
    let mut b = Hierarchy::builder("lab")
        .restart(
            Strategy::OneForOne,
            Intensity::at_most(10).per(Duration::from_secs(60)),
        )
        .max_attempts(6)
        .tier("flaky", 1, move |_| Flaky { events: tx.clone() });
    if let Some(backoff) = backoff {
        b = b.backoff(backoff);
    }
    let h = b.spawn().await.expect("spawn");
    let mut f = Fixture { h, events };
    match f.next().await {
        Event::Started(0, _) => {}
        other => panic!("expected the first start, got {other:?}"),
    }
    f
}

impl Fixture {
    async fn next(&mut self) -> Event {
        within(5, "an agent event", self.events.recv())
            .await
            .expect("event channel open")
    }

    /// Send a task that crashes `n` times, wait for it to complete, and return the
    /// delay between each crash and the start of the incarnation that followed.
    async fn crash_times(&mut self, n: u32) -> Vec<Duration> {
        let out = within(
            5,
            "the flaky task",
            self.h.call("flaky/0", Msg::CrashTimes(n)),
        )
        .await
        .expect("send");
        assert!(out.is_completed(), "redelivered until it succeeds: {out:?}");
        let mut delays = Vec::new();
        for k in 1..=n {
            let crashed = match self.next().await {
                Event::Crashed(a, t) if a == k => t,
                other => panic!("expected crash {k}, got {other:?}"),
            };
            let started = match self.next().await {
                Event::Started(_, t) => t,
                other => panic!("expected a restart after crash {k}, got {other:?}"),
            };
            delays.push(started - crashed);
        }
        delays
    }

    async fn finish(self) {
        let report = within(1, "shutdown", self.h.shutdown(Duration::from_secs(5))).await;
        assert!(report.drained, "{report:?}");
        assert!(report.counters.is_balanced(), "{:?}", report.counters);
    }
}

/// Each delay at least what the backoff asks for, and not noticeably more.
fn assert_delays(got: &[Duration], want_ms: &[u64]) {
    assert_eq!(got.len(), want_ms.len(), "{got:?}");
    for (i, (g, w)) in got.iter().zip(want_ms).enumerate() {
        let w = Duration::from_millis(*w);
        assert!(
            *g >= w && *g <= w + 2 * MS,
            "restart {}: delay {g:?}, expected {w:?} (all delays: {got:?})",
            i + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn consecutive_restarts_double_the_delay_up_to_the_cap() {
    let mut f = spawn(Some(Backoff::exponential(
        Duration::from_millis(100),
        Duration::from_millis(300),
    )))
    .await;
    let delays = f.crash_times(5).await;
    assert_delays(&delays, &[100, 200, 300, 300, 300]);
    assert_eq!(f.h.agent("flaky/0").expect("agent").counters().restarts, 5);
    f.finish().await;
}

#[tokio::test(start_paused = true)]
async fn the_backoff_starts_over_after_a_quiet_period() {
    let mut f = spawn(Some(Backoff::exponential(
        Duration::from_millis(100),
        Duration::from_millis(1000),
    )))
    .await;
    assert_delays(&f.crash_times(3).await, &[100, 200, 400]);
    // a crash soon after goes on doubling
    assert_delays(&f.crash_times(1).await, &[800]);
    // quiet for longer than the intensity period (60 s): the count starts over
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_delays(&f.crash_times(2).await, &[100, 200]);
    f.finish().await;
}

#[tokio::test(start_paused = true)]
async fn without_a_backoff_restarts_are_immediate() {
    let mut f = spawn(None).await;
    assert_delays(&f.crash_times(3).await, &[0, 0, 0]);
    f.finish().await;
}
