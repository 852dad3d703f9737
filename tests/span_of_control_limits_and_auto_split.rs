//! Span of control: a strict limit refuses to build a team with too many direct reports
//! (and builds one at exactly the limit); auto-split inserts team leads so that no
//! supervisor has more than the limit, in a balanced tree of minimal depth, while every
//! agent stays addressable by `tier/index`. Invalid declarations give the matching
//! `BuildError` instead of panicking.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use echelon::prelude::*;
use echelon::{BuildError, Decision, Role, TreeNode};
use support::within;

#[derive(Clone, Debug, PartialEq)]
enum Job {
    /// Answer with who and where you are.
    Ping,
    /// The answer to a ping.
    Pong { path: String, level: u32 },
    /// Escalate with full severity.
    Alarm,
}

/// Replies to pings, escalates alarms, and relays any escalation it receives as a lead.
struct Worker;

impl Agent for Worker {
    type Msg = Job;

    async fn handle(&mut self, ctx: &mut Ctx<Job>, msg: Job) -> Result<Verdict<Job>, AgentError> {
        if ctx.escalation().is_some() {
            return Ok(Verdict::escalate(1.0, "lead relays", msg));
        }
        match msg {
            Job::Ping => Ok(Verdict::Reply(Job::Pong {
                path: ctx.path().to_string(),
                level: ctx.level(),
            })),
            Job::Alarm => Ok(Verdict::escalate(1.0, "alarm", msg)),
            Job::Pong { .. } => Err(AgentError::reject("pongs are answers, not tasks")),
        }
    }
}

/// The direct reports of a tree node: a team's children are its lead agent first, then
/// its reports; team leads and the root have no lead agent.
fn reports(n: &TreeNode) -> &[TreeNode] {
    match n.role {
        Role::Supervisor => {
            let lead = n
                .children
                .first()
                .unwrap_or_else(|| panic!("team {} has no lead agent", n.path));
            assert_eq!(lead.role, Role::Agent, "first child of team {}", n.path);
            assert_eq!(lead.path, n.path, "a team is named after its lead agent");
            &n.children[1..]
        }
        _ => &n.children,
    }
}

/// Every node of `tree` has at most `limit` direct reports.
fn assert_span(tree: &TreeNode, limit: usize) {
    tree.walk(&mut |n, _| {
        let r = reports(n).len();
        assert!(
            r <= limit,
            "{} ({:?}) has {r} direct reports, over the span of {limit}",
            n.path,
            n.role
        );
    });
}

/// Depth (in the tree, root = 0) of every agent of `tier`, by path.
fn depths_of(tree: &TreeNode, tier: &str) -> Vec<(String, usize)> {
    let needle = format!("/{tier}/");
    let mut out = Vec::new();
    tree.walk(&mut |n, d| {
        if n.role == Role::Agent && n.path.as_str().contains(&needle) {
            out.push((n.path.to_string(), d));
        }
    });
    out
}

/// The smallest number of levels of groups of at most `limit` that hold `n` leaves:
/// ceil(log_limit(n)).
fn min_levels(n: usize, limit: usize) -> usize {
    let (mut levels, mut cap) = (1, limit);
    while cap < n {
        cap *= limit;
        levels += 1;
    }
    levels
}

/// The chain of nodes from the root down to the node at `path` (inclusive).
fn ancestors<'a>(n: &'a TreeNode, path: &str, out: &mut Vec<&'a TreeNode>) -> bool {
    out.push(n);
    if n.path.as_str() == path && n.role == Role::Agent {
        return true;
    }
    for c in &n.children {
        if ancestors(c, path, out) {
            return true;
        }
    }
    out.pop();
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_span_refuses_the_first_team_over_the_limit() {
    // leads 0 and 1 get reports 0..4 and 4..9: the second team has 5 > 4
    let r = within(
        5,
        "spawn",
        Hierarchy::builder::<Job>("h")
            .span_of_control(4)
            .tier("lead", 2, |_| Worker)
            .tier("w", 9, |_| Worker)
            .spawn(),
    )
    .await;
    match r {
        Err(BuildError::SpanOfControl {
            team,
            reports,
            limit,
        }) => {
            assert_eq!(team, "h/lead/1");
            assert_eq!(reports, 5);
            assert_eq!(limit, 4);
        }
        other => panic!("expected a span-of-control error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_span_is_strict_eight_and_applies_to_the_root() {
    let r = within(
        5,
        "spawn",
        Hierarchy::builder::<Job>("h")
            .tier("top", 9, |_| Worker)
            .spawn(),
    )
    .await;
    match r {
        Err(e @ BuildError::SpanOfControl { .. }) => {
            let BuildError::SpanOfControl {
                team,
                reports,
                limit,
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((team.as_str(), *reports, *limit), ("h", 9, 8));
            let msg = e.to_string();
            assert!(
                msg.contains("auto_split"),
                "the error should say how to fix it: {msg}"
            );
        }
        other => panic!("expected a span-of-control error at the root, got {other:?}"),
    }
    assert_eq!(SpanOfControl::default().limit(), 8);
    assert_eq!(
        SpanOfControl::default().policy(),
        echelon::SpanPolicy::Strict
    );
    // a span below 2 makes no tree; it is raised to 2
    assert_eq!(SpanOfControl::strict(0).limit(), 2);
    assert_eq!(SpanOfControl::auto_split(1).limit(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_span_builds_teams_of_exactly_the_limit() {
    // the root has 4 reports and each of the 4 teams has 4
    let h = within(
        5,
        "spawn",
        Hierarchy::builder::<Job>("h")
            .span_of_control(4)
            .tier("lead", 4, |_| Worker)
            .tier("w", 16, |_| Worker)
            .spawn(),
    )
    .await
    .expect("a team of exactly the span of control is allowed");

    let tree = h.tree();
    assert_span(&tree, 4);
    assert_eq!(tree.role, Role::Root);
    assert_eq!(reports(&tree).len(), 4);
    for team in reports(&tree) {
        assert_eq!(team.role, Role::Supervisor);
        assert_eq!(reports(team).len(), 4, "team {}", team.path);
    }
    let mut none_split = true;
    tree.walk(&mut |n, _| none_split &= n.role != Role::TeamLead);
    assert!(none_split, "a strict span never inserts team leads");

    // w/15 belongs to the last team
    match within(5, "ping", h.call("w/15", Job::Ping)).await {
        Ok(Outcome::Completed {
            reply: Some(Job::Pong { path, level }),
            by,
            ..
        }) => {
            assert_eq!(path, "h/lead/3/w/15");
            assert_eq!(by.as_str(), "h/lead/3/w/15");
            assert_eq!(level, 2);
        }
        other => panic!("expected a reply from w/15, got {other:?}"),
    }
    let report = h.shutdown(Duration::from_secs(2)).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_split_of_1000_reports_under_span_8_is_balanced_and_minimal() {
    const N: usize = 1000;
    let h = within(
        10,
        "spawn of 1,000 agents",
        Hierarchy::builder::<Job>("h")
            .span(SpanOfControl::auto_split(8))
            .tier("lead", 1, |_| Worker)
            .tier("monitor", N, |_| Worker)
            .spawn(),
    )
    .await
    .expect("auto-split builds any size of team");

    let tree = h.tree();
    assert_span(&tree, 8);

    // root → team h/lead/0 → team leads … → monitors
    assert_eq!(tree.role, Role::Root);
    assert_eq!(tree.path.as_str(), "h");
    let [team] = tree.children.as_slice() else {
        panic!("the root should have one team, got {tree}");
    };
    assert_eq!(team.role, Role::Supervisor);
    assert_eq!(team.path.as_str(), "h/lead/0");
    let mut leads = 0;
    tree.walk(&mut |n, _| {
        if n.role == Role::TeamLead {
            leads += 1;
            assert!(
                n.path.as_str().starts_with("h/lead/0/split/"),
                "team lead {} should be named under its team",
                n.path
            );
            assert!(!n.children.is_empty(), "empty team lead {}", n.path);
        }
    });
    assert!(leads > 0, "1,000 reports under span 8 needs team leads");

    // every monitor exactly once, all at the same, minimal depth below the team
    let depths = depths_of(&tree, "monitor");
    assert_eq!(depths.len(), N, "every monitor appears once in the tree");
    let paths: BTreeSet<String> = depths.iter().map(|(p, _)| p.clone()).collect();
    let expected: BTreeSet<String> = (0..N).map(|i| format!("h/lead/0/monitor/{i}")).collect();
    assert_eq!(paths, expected);
    let levels = min_levels(N, 8);
    assert_eq!(levels, 4, "ceil(log8(1000))");
    // the team is at depth 1 in the tree
    let levels_below_team: BTreeSet<usize> = depths.iter().map(|(_, d)| d - 1).collect();
    assert_eq!(
        levels_below_team,
        BTreeSet::from([levels]),
        "all monitors at depth {levels} below their team"
    );
    assert_eq!(tree.depth(), 1 + levels);

    // every monitor addressable by tier/index and by full path
    let tier = h.tier("monitor").expect("the monitor tier");
    assert_eq!(tier.len(), N);
    for (i, by_tier) in tier.iter().enumerate() {
        let full = format!("h/lead/0/monitor/{i}");
        let a = h
            .agent(&format!("monitor/{i}"))
            .unwrap_or_else(|e| panic!("monitor/{i}: {e}"));
        assert_eq!(a.path().as_str(), full);
        assert_eq!(by_tier.path().as_str(), full);
    }
    assert_eq!(
        h.agent("h/lead/0/monitor/999").expect("full path").path(),
        tier[999].path()
    );
    assert!(h.agent("monitor/1000").is_err());
    // an index is spelled as paths spell it
    assert!(h.agent("monitor/01").is_err());
    assert!(h.agent("monitor/+1").is_err());
    // team leads are supervisors, not agents: they take no tasks by address
    assert!(h.agent("h/lead/0/split/0").is_err());

    // a task to the last agent reaches it and completes there
    match within(5, "ping to monitor/999", h.call("monitor/999", Job::Ping)).await {
        Ok(Outcome::Completed {
            reply: Some(Job::Pong { path, level }),
            by,
            ..
        }) => {
            assert_eq!(path, "h/lead/0/monitor/999");
            assert_eq!(by.as_str(), "h/lead/0/monitor/999");
            assert_eq!(level as usize, 1 + levels, "its level is its depth");
        }
        other => panic!("expected a reply from monitor/999, got {other:?}"),
    }
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.counters.submitted, 1);
    assert_eq!(report.counters.completed, 1);
    assert!(report.counters.is_balanced(), "{report:?}");
}

/// `Hierarchy::agent` documents "a full path (`ward/decision/0/diagnostic/3`, with or
/// without the hierarchy name)". Under auto-split the path without the name is the one a
/// user can write without knowing the hierarchy's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_addressable_by_its_full_path_without_the_hierarchy_name() {
    let h = within(
        5,
        "spawn",
        Hierarchy::builder::<Job>("h")
            .span(SpanOfControl::auto_split(8))
            .tier("lead", 1, |_| Worker)
            .tier("monitor", 20, |_| Worker)
            .spawn(),
    )
    .await
    .expect("spawn");
    let full = h
        .agent("h/lead/0/monitor/19")
        .expect("full path with the name");
    assert_eq!(full.path().as_str(), "h/lead/0/monitor/19");
    let without = h
        .agent("lead/0/monitor/19")
        .expect("full path without the hierarchy name, as documented");
    assert_eq!(without.path(), full.path());
    let report = h.shutdown(Duration::from_secs(2)).await;
    assert!(report.drained, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_escalation_climbs_through_every_team_lead_to_the_lead_agent() {
    let h = within(
        10,
        "spawn",
        Hierarchy::builder::<Job>("h")
            .span(SpanOfControl::auto_split(8))
            .tier("lead", 1, |_| Worker)
            .tier("monitor", 1000, |_| Worker)
            .spawn(),
    )
    .await
    .expect("spawn");
    let tree = h.tree();
    let mut chain = Vec::new();
    assert!(ancestors(&tree, "h/lead/0/monitor/999", &mut chain));
    // root, team, three team leads, the monitor
    let roles: Vec<Role> = chain.iter().map(|n| n.role).collect();
    assert_eq!(
        roles,
        [
            Role::Root,
            Role::Supervisor,
            Role::TeamLead,
            Role::TeamLead,
            Role::TeamLead,
            Role::Agent
        ]
    );

    let outcome = within(
        5,
        "alarm from monitor/999",
        h.call("monitor/999", Job::Alarm),
    )
    .await
    .expect("call");
    let Outcome::Escalated { trail, .. } = outcome else {
        panic!("expected the alarm to leave the top, got {outcome:?}");
    };
    let steps: Vec<(&str, u32, Role)> = trail
        .iter()
        .map(|e| (e.path.as_str(), e.level, e.role))
        .collect();
    let tl = |k: usize| chain[k].path.as_str();
    assert_eq!(
        steps,
        [
            ("h/lead/0/monitor/999", 5, Role::Agent),
            (tl(4), 4, Role::TeamLead),
            (tl(3), 3, Role::TeamLead),
            (tl(2), 2, Role::TeamLead),
            ("h/lead/0", 1, Role::Supervisor),
            ("h/lead/0", 1, Role::Agent),
            ("h", 0, Role::Root),
            ("h", 0, Role::Root),
        ],
        "the escalation passes each team lead between the monitor and its team, in order"
    );
    for e in &trail[1..5] {
        assert_eq!(e.decision, Decision::Accepted { threshold: 0.0 });
    }
    assert_eq!(trail[7].decision, Decision::Delivered);
    let report = h.shutdown(Duration::from_secs(5)).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_split_also_splits_the_top_tier_under_the_root() {
    const N: usize = 20;
    let h = within(
        5,
        "spawn",
        Hierarchy::builder::<Job>("h")
            .span(SpanOfControl::auto_split(4))
            .tier("top", N, |_| Worker)
            .spawn(),
    )
    .await
    .expect("spawn");
    let tree = h.tree();
    assert_span(&tree, 4);
    let depths = depths_of(&tree, "top");
    assert_eq!(depths.len(), N);
    let levels = min_levels(N, 4);
    assert!(
        depths.iter().all(|(_, d)| *d == levels),
        "all top agents at depth {levels}: {depths:?}"
    );
    for i in [0, N - 1] {
        match within(5, "ping", h.call(&format!("top/{i}"), Job::Ping)).await {
            Ok(Outcome::Completed {
                reply: Some(Job::Pong { path, .. }),
                ..
            }) => assert_eq!(path, format!("h/top/{i}")),
            other => panic!("expected a reply from top/{i}, got {other:?}"),
        }
    }
    // an alarm from a top agent climbs the root's team leads and leaves the top
    let outcome = within(5, "alarm", h.call("top/19", Job::Alarm))
        .await
        .expect("call");
    let Outcome::Escalated { trail, .. } = outcome else {
        panic!("expected the alarm to leave the top, got {outcome:?}");
    };
    let roles: Vec<Role> = trail.iter().map(|e| e.role).collect();
    let mut expected = vec![Role::Agent];
    expected.extend(std::iter::repeat_n(Role::TeamLead, levels - 1));
    expected.extend([Role::Root, Role::Root]);
    assert_eq!(roles, expected, "{trail:#?}");
    let report = h.shutdown(Duration::from_secs(2)).await;
    assert!(
        report.drained && report.counters.is_balanced(),
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_declarations_give_the_matching_build_error() {
    let no_tiers = Hierarchy::builder::<Job>("h").spawn().await;
    assert!(
        matches!(&no_tiers, Err(BuildError::NoTiers { name }) if name == "h"),
        "{no_tiers:?}"
    );

    let empty = Hierarchy::builder::<Job>("h")
        .tier("lead", 1, |_| Worker)
        .tier("w", 0, |_| Worker)
        .spawn()
        .await;
    assert!(
        matches!(&empty, Err(BuildError::EmptyTier { tier }) if tier == "w"),
        "{empty:?}"
    );

    let dup = Hierarchy::builder::<Job>("h")
        .tier("w", 1, |_| Worker)
        .tier("w", 2, |_| Worker)
        .spawn()
        .await;
    assert!(
        matches!(&dup, Err(BuildError::DuplicateTier { tier }) if tier == "w"),
        "{dup:?}"
    );

    let slash_tier = Hierarchy::builder::<Job>("h")
        .tier("a/b", 1, |_| Worker)
        .spawn()
        .await;
    assert!(
        matches!(&slash_tier, Err(BuildError::BadName { name }) if name == "a/b"),
        "{slash_tier:?}"
    );

    let slash_name = Hierarchy::builder::<Job>("x/y")
        .tier("w", 1, |_| Worker)
        .spawn()
        .await;
    assert!(
        matches!(&slash_name, Err(BuildError::BadName { name }) if name == "x/y"),
        "{slash_name:?}"
    );

    let empty_name = Hierarchy::builder::<Job>("")
        .tier("w", 1, |_| Worker)
        .spawn()
        .await;
    assert!(
        matches!(&empty_name, Err(BuildError::BadName { name }) if name.is_empty()),
        "{empty_name:?}"
    );

    // "split" is reserved for the team leads auto-split inserts
    let reserved = Hierarchy::builder::<Job>("h")
        .tier("split", 1, |_| Worker)
        .spawn()
        .await;
    assert!(
        matches!(&reserved, Err(BuildError::BadName { name }) if name == "split"),
        "{reserved:?}"
    );
}
