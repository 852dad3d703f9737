//! Span of control: how many direct reports a supervisor may have, and the balanced
//! auto-split into team leads when a team is larger than that.

/// What happens when a team has more reports than its span of control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanPolicy {
    /// A hard limit: building or growing a team past it is an error.
    Strict,
    /// Insert team leads (sub-supervisors) so that no supervisor has more than the
    /// limit, in a balanced tree of minimal depth.
    AutoSplit,
}

/// The span of control of every supervisor in a hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanOfControl {
    pub(crate) limit: usize,
    pub(crate) policy: SpanPolicy,
}

impl SpanOfControl {
    /// A hard limit of `limit` direct reports (at least 2).
    pub fn strict(limit: usize) -> Self {
        SpanOfControl {
            limit: limit.max(2),
            policy: SpanPolicy::Strict,
        }
    }

    /// At most `limit` direct reports (at least 2), with team leads inserted as needed.
    pub fn auto_split(limit: usize) -> Self {
        SpanOfControl {
            limit: limit.max(2),
            policy: SpanPolicy::AutoSplit,
        }
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Strict or auto-split.
    pub fn policy(&self) -> SpanPolicy {
        self.policy
    }
}

impl Default for SpanOfControl {
    /// A strict limit of 8.
    fn default() -> Self {
        SpanOfControl::strict(8)
    }
}

/// A group of reports: either the reports themselves (indices into the team's report
/// list) or sub-groups headed by a team lead.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Group {
    Reports(std::ops::Range<usize>),
    Leads(Vec<Group>),
}

/// Split `n` reports under `limit` into a balanced tree of minimal depth.
pub(crate) fn split(range: std::ops::Range<usize>, limit: usize) -> Group {
    let n = range.len();
    if n <= limit {
        return Group::Reports(range);
    }
    // capacity of one group one level down: the smallest power of `limit` whose
    // `limit`-fold covers n
    let mut cap = limit;
    while cap.saturating_mul(limit) < n {
        cap = cap.saturating_mul(limit);
    }
    let groups = n.div_ceil(cap);
    let base = n / groups;
    let extra = n % groups;
    let mut start = range.start;
    let mut out = Vec::with_capacity(groups);
    for g in 0..groups {
        let len = base + usize::from(g < extra);
        out.push(split(start..start + len, limit));
        start += len;
    }
    Group::Leads(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(
        g: &Group,
        depth: usize,
        leaf_depths: &mut Vec<usize>,
        max_fan: &mut usize,
        count: &mut usize,
    ) {
        match g {
            Group::Reports(r) => {
                *max_fan = (*max_fan).max(r.len());
                *count += r.len();
                leaf_depths.push(depth + 1);
            }
            Group::Leads(gs) => {
                *max_fan = (*max_fan).max(gs.len());
                for s in gs {
                    shape(s, depth + 1, leaf_depths, max_fan, count);
                }
            }
        }
    }

    #[test]
    fn splits_are_balanced_and_within_the_limit() {
        for (n, limit) in [
            (1000, 8),
            (9, 8),
            (65, 8),
            (64, 8),
            (100_000, 10),
            (7, 8),
            (17, 4),
        ] {
            let g = split(0..n, limit);
            let (mut depths, mut fan, mut count) = (vec![], 0, 0);
            shape(&g, 0, &mut depths, &mut fan, &mut count);
            assert_eq!(count, n, "every report placed once for n={n}");
            assert!(fan <= limit, "fan-out {fan} over {limit} for n={n}");
            let min = *depths.iter().min().unwrap();
            let max = *depths.iter().max().unwrap();
            assert_eq!(min, max, "leaves at one depth for n={n}");
            let (mut expected, mut cap) = (1, limit);
            while cap < n {
                cap *= limit;
                expected += 1;
            }
            assert_eq!(max, expected, "minimal depth for n={n}, limit={limit}");
        }
    }
}
