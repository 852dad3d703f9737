//! A self-contained HTML page for a report: inline CSS, charts as inline SVG drawn
//! here, no scripts, fonts or stylesheets fetched.
//!
//! The page has, top to bottom: a header with the run's identity and a strip of key
//! numbers; a line chart of escalations per tier (and alerts) per time bucket; a bar
//! chart of the latency histogram with p50/p95/p99 marked; the tier, support and
//! supervision tables; the hierarchy's shape with its outline; and the full JSON
//! report. Every string that comes from the scenario is escaped with `escape`, and
//! nothing data-dependent can panic: empty series, zero maxima and non-finite numbers
//! all draw something sensible.

use std::fmt::Write as _;
use std::time::Duration;

use super::report::{Latency, Report};
use super::scenario::Span;

/// Series colours, cycled when there are more tiers than colours.
const PALETTE: [&str; 8] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
];
/// Colour of the alerts series.
const ALERTS: &str = "#d62728";
/// Chart geometry (SVG user units): width, height and the plot margins.
const W: f64 = 960.0;
const H: f64 = 320.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 64.0;

const CSS: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;
 color:#1d2330;background:#f6f7f9;margin:0;padding:24px 32px;max-width:1100px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.meta{color:#5a6270;margin:0 0 16px}.meta b{color:#1d2330}
.strip{display:flex;flex-wrap:wrap;gap:8px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:6px 12px;min-width:92px}
.card .k{font-size:11px;color:#5a6270;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}
.ok{color:#1a7f37}.bad{color:#cf222e}.warn{color:#9a6700}
.banner{background:#ffebe9;border:1px solid #cf222e;color:#cf222e;border-radius:6px;padding:8px 12px;margin:12px 0}
.chart{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:8px}
svg{display:block;width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#3b4250}
.legend{list-style:none;display:flex;flex-wrap:wrap;gap:14px;padding:0;margin:4px 0 8px}
.sw{display:inline-block;width:18px;height:0;border-top:3px solid;vertical-align:middle;margin-right:6px}
.sw.dashed{border-top-style:dashed}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e7}
th,td{padding:4px 12px;border-bottom:1px solid #eef0f3;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f0f2f5;font-weight:600}th:first-child,td:first-child{text-align:left}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
pre{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px;overflow:auto;font-size:12px;max-height:600px}
";

/// Render `report` as one self-contained HTML page (inline CSS and SVG, no scripts).
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>echelon: {}</title><style>{CSS}</style></head><body>\n",
        escape(&report.scenario)
    );
    page.push_str(&header(report));
    page.push_str(&escalations_section(report));
    page.push_str(&latency_section(&report.latency));
    page.push_str(&tables_section(report));
    page.push_str(&hierarchy_section(report));
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    let _ = writeln!(
        page,
        "<h2>Full report</h2><details><summary>JSON</summary><pre>{}</pre></details>",
        escape(&json)
    );
    page.push_str("</body></html>\n");
    page
}

/// Escape text for HTML element content and quoted attribute values.
pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The title, run identity and the strip of key numbers.
fn header(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<h1>echelon · {}</h1><p class=meta>model <b>{}</b> · seed <b>{}</b> · \
         simulated <b>{}</b> · wall time <b>{}</b></p>",
        escape(&r.scenario),
        escape(&format!("{:?}", r.model)),
        r.seed,
        escape(&r.simulated.to_string()),
        duration_label(r.wall_ms)
    );
    if let Some(f) = &r.supervision.hierarchy_failure {
        let _ = write!(
            s,
            "<div class=banner>The hierarchy FAILED: {}</div>",
            escape(f)
        );
    }
    let (t, l, a) = (&r.top, &r.latency, &r.accounting);
    let flag = |bad: bool| if bad { "bad" } else { "" };
    let accounting = if a.balanced && a.lost == 0 {
        ("ok", "lost 0 ✓".to_string())
    } else {
        ("bad", format!("✗ NOT BALANCED (lost {})", a.lost))
    };
    let cards = [
        ("events", r.events_generated.to_string(), ""),
        ("alerts", t.alerts.to_string(), ""),
        ("true alerts", t.true_alerts.to_string(), ""),
        (
            "false alarms",
            t.false_alarms.to_string(),
            flag(t.false_alarms > 0),
        ),
        ("duplicates", t.duplicates.to_string(), ""),
        (
            "missed criticals",
            format!("{} / {}", t.missed_criticals, t.critical_events),
            flag(t.missed_criticals > 0),
        ),
        ("latency p50", duration_label(l.p50_ms), ""),
        ("p95", duration_label(l.p95_ms), ""),
        ("p99", duration_label(l.p99_ms), ""),
        ("restarts", r.supervision.restarts.to_string(), ""),
        (
            "failure escalations",
            r.supervision.failure_escalations.to_string(),
            flag(r.supervision.failure_escalations > 0),
        ),
        ("accounting", accounting.1, accounting.0),
    ];
    s.push_str("<div class=strip>");
    for (k, v, class) in cards {
        let _ = write!(
            s,
            "<div class=card><div class=k>{k}</div><div class=\"v {class}\">{v}</div></div>"
        );
    }
    s.push_str("</div>\n");
    s
}

/// One line of the escalations chart.
struct Series {
    name: String,
    colour: &'static str,
    dashed: bool,
    values: Vec<u64>,
}

/// Escalations per tier and alerts per bucket: an HTML legend and an SVG line chart.
fn escalations_section(r: &Report) -> String {
    let mut series: Vec<Series> = r
        .tiers
        .iter()
        .enumerate()
        .map(|(i, t)| Series {
            name: t.name.clone(),
            colour: PALETTE[i % PALETTE.len()],
            dashed: false,
            values: r
                .buckets
                .iter()
                .map(|b| b.escalations.get(i).copied().unwrap_or(0))
                .collect(),
        })
        .collect();
    series.push(Series {
        name: "alerts (left the top)".into(),
        colour: ALERTS,
        dashed: true,
        values: r.buckets.iter().map(|b| b.alerts).collect(),
    });
    let mut s = String::from("<h2>Escalations over time per tier</h2><div class=chart>");
    s.push_str("<ul class=legend>");
    for se in &series {
        let _ = write!(
            s,
            "<li><span class=\"sw{}\" style=\"border-color:{}\"></span>{}</li>",
            if se.dashed { " dashed" } else { "" },
            se.colour,
            escape(&se.name)
        );
    }
    s.push_str("</ul>");
    s.push_str(&line_chart(r, &series));
    s.push_str("</div>\n");
    s
}

/// The SVG for `escalations_section`: x is the bucket index, y the count.
fn line_chart(r: &Report, series: &[Series]) -> String {
    let n = r.buckets.len();
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0);
    let (ymax, step) = nice_scale(max);
    let mut s = svg_open("escalations per tier and alerts per time bucket");
    y_axis(&mut s, ymax, step, "per bucket");
    if n == 0 {
        no_data(&mut s, "no time buckets recorded");
        s.push_str("</svg>");
        return s;
    }
    let pw = W - LEFT - RIGHT;
    let x = |i: usize| {
        if n == 1 {
            LEFT + pw / 2.0
        } else {
            LEFT + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: u64| y_of(v, ymax);
    // x labels: at most ~12, starting at 0.
    let every = n.div_ceil(12).max(1);
    for (i, b) in r.buckets.iter().enumerate().step_by(every) {
        let _ = write!(
            s,
            "<line x1={0} x2={0} y1={1} y2={2} stroke=#9aa3af />\
             <text x={0} y={3} text-anchor=middle>{4}</text>",
            c(x(i)),
            c(H - BOTTOM),
            c(H - BOTTOM + 4.0),
            c(H - BOTTOM + 18.0),
            escape(&span_label(b.start))
        );
    }
    let _ = write!(
        s,
        "<text x={} y={} text-anchor=middle>bucket start (simulated time)</text>",
        c(LEFT + pw / 2.0),
        c(H - 12.0)
    );
    for se in series {
        let points: Vec<String> = se
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| format!("{},{}", c(x(i)), c(y(v))))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=none stroke=\"{}\" stroke-width=2{} points=\"{}\" />",
            se.colour,
            if se.dashed {
                " stroke-dasharray=\"6 4\""
            } else {
                ""
            },
            points.join(" ")
        );
        if n <= 60 {
            for (i, &v) in se.values.iter().enumerate() {
                let start = r
                    .buckets
                    .get(i)
                    .map(|b| span_label(b.start))
                    .unwrap_or_default();
                let _ = write!(
                    s,
                    "<circle cx={} cy={} r=2.5 fill=\"{}\"><title>{} @ {}: {v}</title></circle>",
                    c(x(i)),
                    c(y(v)),
                    se.colour,
                    escape(&se.name),
                    escape(&start)
                );
            }
        }
    }
    s.push_str("</svg>");
    s
}

/// The latency histogram as an SVG bar chart, percentiles marked.
fn latency_section(l: &Latency) -> String {
    let mut s = String::from("<h2>Latency distribution</h2><div class=chart>");
    let _ = write!(
        s,
        "<p class=meta>event-to-decision latency of what left the top, {} decisions · \
         p50 <b>{}</b> · p95 <b>{}</b> · p99 <b>{}</b> · max <b>{}</b></p>",
        l.count,
        duration_label(l.p50_ms),
        duration_label(l.p95_ms),
        duration_label(l.p99_ms),
        duration_label(l.max_ms)
    );
    // Leading empty buckets (the sub-second ones, usually) only take room: keep one.
    let start = match l.histogram.iter().position(|&(_, n)| n > 0) {
        Some(i) => i.saturating_sub(1),
        None => l.histogram.len(),
    };
    let bins = l.histogram.get(start..).unwrap_or_default();
    let max = bins.iter().map(|&(_, n)| n).max().unwrap_or(0);
    let (ymax, step) = nice_scale(max);
    let mut svg = svg_open("latency histogram, log-2 buckets");
    y_axis(&mut svg, ymax, step, "decisions");
    if bins.is_empty() {
        no_data(&mut svg, "no latency samples");
        svg.push_str("</svg></div>\n");
        s.push_str(&svg);
        return s;
    }
    // Bucket i holds [bound / 2, bound), the histogram's very first one [0, bound).
    let lower = |i: usize| match bins.get(i) {
        Some(&(bound, _)) if start + i > 0 => bound / 2.0,
        _ => 0.0,
    };
    let pw = W - LEFT - RIGHT;
    let bw = pw / bins.len() as f64;
    for (i, &(bound, n)) in bins.iter().enumerate() {
        let x0 = LEFT + bw * i as f64;
        let yt = y_of(n, ymax);
        let _ = write!(
            svg,
            "<rect x={} y={} width={} height={} fill=#4c78a8><title>{} – {}: {n}</title></rect>",
            c(x0 + 1.0),
            c(yt),
            c((bw - 2.0).max(1.0)),
            c(H - BOTTOM - yt),
            duration_label(lower(i)),
            duration_label(bound),
        );
    }
    // Bounds label the edges between bars, at most about 20 of them.
    let every = bins.len().div_ceil(20).max(1);
    for j in (0..=bins.len()).step_by(every) {
        let bound = match j.checked_sub(1).and_then(|k| bins.get(k)) {
            Some(&(bound, _)) => bound,
            None => lower(0),
        };
        let x = LEFT + bw * j as f64;
        let _ = write!(
            svg,
            "<line x1={0} x2={0} y1={1} y2={2} stroke=#9aa3af />\
             <text transform=\"translate({3},{4}) rotate(-35)\" text-anchor=end>{5}</text>",
            c(x),
            c(H - BOTTOM),
            c(H - BOTTOM + 4.0),
            c(x + 3.0),
            c(H - BOTTOM + 14.0),
            duration_label(bound)
        );
    }
    let _ = write!(
        svg,
        "<text x={} y={} text-anchor=middle>latency (simulated time), log-2 buckets</text>",
        c(LEFT + pw / 2.0),
        c(H - 6.0)
    );
    let markers = [
        ("p50", l.p50_ms, "#2ca02c"),
        ("p95", l.p95_ms, "#ff7f0e"),
        ("p99", l.p99_ms, ALERTS),
    ];
    for (k, (name, v, colour)) in markers.into_iter().enumerate() {
        if l.count == 0 {
            break;
        }
        let Some(pos) = marker_position(bins, v) else {
            continue;
        };
        let x = LEFT + bw * pos;
        let anchor = if x > W - RIGHT - 120.0 {
            "end"
        } else {
            "start"
        };
        let dx = if anchor == "end" { -4.0 } else { 4.0 };
        let _ = write!(
            svg,
            "<line x1={0} x2={0} y1={1} y2={2} stroke=\"{3}\" stroke-width=2 stroke-dasharray=\"4 3\" />\
             <text x={4} y={5} text-anchor={6} style=\"fill:{3};font-weight:600\">{7} {8}</text>",
            c(x),
            c(TOP),
            c(H - BOTTOM),
            colour,
            c(x + dx),
            c(TOP + 12.0 + 14.0 * k as f64),
            anchor,
            name,
            duration_label(v)
        );
    }
    svg.push_str("</svg>");
    s.push_str(&svg);
    s.push_str("</div>\n");
    s
}

/// Where latency `v` falls on the bar chart, in bars from the left edge (log scale
/// within a bar); `None` when `v` is not a finite number.
fn marker_position(bins: &[(f64, u64)], v: f64) -> Option<f64> {
    if !v.is_finite() || bins.is_empty() {
        return None;
    }
    let Some(i) = bins.iter().position(|&(bound, _)| v < bound) else {
        return Some(bins.len() as f64);
    };
    let lo = bins.get(i).map_or(0.0, |&(bound, _)| bound / 2.0);
    let frac = if v > lo && lo > 0.0 {
        (v / lo).log2()
    } else {
        0.0
    };
    let frac = if frac.is_finite() {
        frac.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Some(i as f64 + frac)
}

/// Tier table, support teams, supervision and accounting.
fn tables_section(r: &Report) -> String {
    let mut s = String::from(
        "<h2>Tiers</h2><table><tr><th>tier</th><th>agents</th><th>escalations</th>\
         <th>per bucket</th><th>absorbed</th><th>suppressed</th><th>restarts</th></tr>",
    );
    let buckets = r.buckets.len().max(1) as f64;
    for (i, t) in r.tiers.iter().enumerate() {
        let total: u64 = r
            .buckets
            .iter()
            .map(|b| b.escalations.get(i).copied().unwrap_or(0))
            .sum();
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&t.name),
            t.agents,
            t.escalations,
            total as f64 / buckets,
            t.absorbed,
            t.suppressed,
            t.restarts
        );
    }
    s.push_str("</table>\n");
    if let Some(sup) = &r.support {
        s.push_str(
            "<h2>Support teams</h2><table><tr><th>pool</th><th>tickets</th><th>resolved</th>\
             <th>escalated</th><th>escalation rate</th></tr>",
        );
        for (name, load) in &sup.teams {
            let rate = if load.tickets > 0 {
                format!(
                    "{:.1}%",
                    100.0 * load.escalated as f64 / load.tickets as f64
                )
            } else {
                "–".into()
            };
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{rate}</td></tr>",
                escape(name),
                load.tickets,
                load.resolved,
                load.escalated
            );
        }
        let _ = writeln!(
            s,
            "</table><p>SLA breaches <b class=\"{}\">{}</b> · misrouted <b class=\"{}\">{}</b></p>",
            if sup.sla_breaches > 0 { "warn" } else { "" },
            sup.sla_breaches,
            if sup.misrouted > 0 { "warn" } else { "" },
            sup.misrouted
        );
    }
    let (v, a) = (&r.supervision, &r.accounting);
    let _ = writeln!(
        s,
        "<h2>Supervision and accounting</h2><table>\
         <tr><td>restarts</td><td>{}</td></tr><tr><td>redeliveries</td><td>{}</td></tr>\
         <tr><td>failure escalations</td><td>{}</td></tr>\
         <tr><td>events generated / processed</td><td>{} / {}</td></tr>\
         <tr><td>submitted = completed + escalated + failed</td><td>{} = {} + {} + {}</td></tr>\
         <tr><td>lost</td><td class={}>{} {}</td></tr></table>",
        v.restarts,
        v.redelivered,
        v.failure_escalations,
        r.events_generated,
        r.events_processed,
        a.submitted,
        a.completed,
        a.escalated,
        a.failed,
        if a.balanced { "ok" } else { "bad" },
        a.lost,
        if a.balanced {
            "✓"
        } else {
            "✗ NOT BALANCED"
        }
    );
    s
}

/// The tree's numbers and its outline, collapsed.
fn hierarchy_section(r: &Report) -> String {
    let t = &r.tree;
    let mut s = String::from("<h2>The hierarchy</h2><div class=strip>");
    for (k, v) in [
        ("depth", t.depth),
        ("supervisors", t.supervisors),
        ("team leads", t.team_leads),
        ("agents", t.agents),
    ] {
        let _ = write!(
            s,
            "<div class=card><div class=k>{k}</div><div class=v>{v}</div></div>"
        );
    }
    s.push_str("</div>");
    let total = t.supervisors + t.team_leads + t.agents;
    let cut = if t.outline.len() < total {
        format!(" (first {} of {} nodes)", t.outline.len(), total)
    } else {
        String::new()
    };
    let lines: Vec<String> = t.outline.iter().map(|l| escape(l)).collect();
    let _ = writeln!(
        s,
        "<details><summary>Outline{cut}</summary><pre>{}</pre></details>",
        lines.join("\n")
    );
    s
}

/// Start an SVG chart with an accessible label.
fn svg_open(label: &str) -> String {
    format!(
        "<svg viewBox=\"0 0 {W} {H}\" role=img aria-label=\"{}\">",
        escape(label)
    )
}

/// Grid lines, tick labels and the axis lines for a count axis from 0 to `ymax`.
fn y_axis(s: &mut String, ymax: u64, step: u64, title: &str) {
    let mut v = 0;
    while v <= ymax {
        let y = y_of(v, ymax);
        let _ = write!(
            s,
            "<line x1={0} x2={1} y1={2} y2={2} stroke=#e5e8ec />\
             <text x={3} y={4} text-anchor=end>{v}</text>",
            c(LEFT),
            c(W - RIGHT),
            c(y),
            c(LEFT - 6.0),
            c(y + 4.0)
        );
        match v.checked_add(step.max(1)) {
            Some(next) => v = next,
            None => break,
        }
    }
    let _ = write!(
        s,
        "<line x1={0} x2={0} y1={1} y2={2} stroke=#9aa3af />\
         <line x1={0} x2={3} y1={2} y2={2} stroke=#9aa3af />\
         <text transform=\"translate(14,{4}) rotate(-90)\" text-anchor=middle>{5}</text>",
        c(LEFT),
        c(TOP),
        c(H - BOTTOM),
        c(W - RIGHT),
        c(TOP + (H - TOP - BOTTOM) / 2.0),
        escape(title)
    );
}

/// A centred note in an empty chart.
fn no_data(s: &mut String, what: &str) {
    let _ = write!(
        s,
        "<text x={} y={} text-anchor=middle style=\"font-size:14px\">{}</text>",
        c(LEFT + (W - LEFT - RIGHT) / 2.0),
        c(TOP + (H - TOP - BOTTOM) / 2.0),
        escape(what)
    );
}

/// The y coordinate of count `v` on an axis from 0 to `ymax`.
fn y_of(v: u64, ymax: u64) -> f64 {
    let ph = H - TOP - BOTTOM;
    let frac = if ymax == 0 {
        0.0
    } else {
        v as f64 / ymax as f64
    };
    H - BOTTOM - ph * frac.clamp(0.0, 1.0)
}

/// A round axis top and tick step for counts up to `max` (about five ticks).
fn nice_scale(max: u64) -> (u64, u64) {
    if max == 0 {
        return (1, 1);
    }
    let raw = max as f64 / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    let step = (nice * mag).round().max(1.0) as u64;
    (max.div_ceil(step).saturating_mul(step), step)
}

/// A coordinate for SVG: one decimal, 0 if not finite.
fn c(v: f64) -> String {
    format!("{:.1}", if v.is_finite() { v } else { 0.0 })
}

/// A bucket start as a label: `Span`'s display, `0` for the origin.
fn span_label(s: Span) -> String {
    if s.0 == Duration::ZERO {
        "0".into()
    } else {
        s.to_string()
    }
}

/// Milliseconds as `ms`, `s` or `min`; a dash for what is not a finite number.
fn duration_label(v: f64) -> String {
    if !v.is_finite() || v < 0.0 {
        "–".into()
    } else if v >= 60_000.0 {
        format!("{:.1}min", v / 60_000.0)
    } else if v >= 1000.0 {
        format!("{:.1}s", v / 1000.0)
    } else if v > 0.0 && v < 1.0 {
        format!("{v:.2}ms")
    } else {
        format!("{v:.0}ms")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::sim::report::{
        Accounting, Bucket, SupportReport, TeamLoad, TierReport, TopReport, TreeSummary,
    };
    use crate::sim::scenario::Model;

    fn tier(name: &str, escalations: u64) -> TierReport {
        TierReport {
            name: name.into(),
            agents: 3,
            escalations,
            absorbed: 1,
            suppressed: 2,
            restarts: 0,
        }
    }

    /// A report with no buckets and no latency samples.
    fn empty() -> Report {
        Report {
            scenario: "empty".into(),
            model: Model::Healthcare,
            seed: 1,
            simulated: Span(Duration::ZERO),
            wall_ms: 0.0,
            events_generated: 0,
            events_processed: 0,
            tiers: vec![tier("monitor", 0)],
            buckets: Vec::new(),
            top: TopReport::default(),
            latency: Latency::default(),
            supervision: Default::default(),
            accounting: Accounting {
                balanced: true,
                ..Default::default()
            },
            tree: TreeSummary::default(),
            support: None,
        }
    }

    /// A small support-style report with a few buckets and samples.
    fn small() -> Report {
        let mut r = empty();
        r.scenario = "small".into();
        r.model = Model::Support;
        r.simulated = Span(Duration::from_secs(3 * 3600));
        r.tiers = vec![tier("tier2", 5), tier("desk", 9)];
        r.buckets = (0..3)
            .map(|i| Bucket {
                start: Span(Duration::from_secs(3600 * i)),
                escalations: vec![i + 1, 2 * i + 3],
                alerts: i + 1,
            })
            .collect();
        r.latency = Latency::from_samples(vec![0.5, 40.0, 900.0, 5_000.0, 200_000.0]);
        r.tree = TreeSummary {
            depth: 2,
            supervisors: 2,
            team_leads: 0,
            agents: 4,
            outline: vec!["small (Root)".into(), "  small/desk/0 (Router)".into()],
        };
        let mut teams = BTreeMap::new();
        teams.insert(
            "billing".to_string(),
            TeamLoad {
                tickets: 10,
                resolved: 8,
                escalated: 2,
            },
        );
        teams.insert("empty-pool".to_string(), TeamLoad::default());
        r.support = Some(SupportReport {
            teams,
            sla_breaches: 1,
            misrouted: 2,
        });
        r
    }

    fn assert_self_contained(html: &str) {
        for bad in ["http://", "https://", "<script", "<link", "@import", "url("] {
            assert!(!html.contains(bad), "page contains {bad:?}");
        }
        assert!(html.starts_with("<!doctype html>"));
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn small_report_renders_both_charts_and_tables() {
        let r = small();
        let html = render(&r);
        assert_self_contained(&html);
        assert_eq!(html.matches("<svg").count(), 2, "one svg per chart");
        assert!(html.contains("<polyline"), "escalation lines drawn");
        assert!(html.contains("<rect"), "latency bars drawn");
        for t in &r.tiers {
            assert!(html.contains(&t.name), "tier {} missing", t.name);
        }
        assert!(html.contains("alerts (left the top)"));
        assert!(
            html.contains(">1h<") && html.contains(">2h<"),
            "bucket labels"
        );
        assert!(html.contains("p50") && html.contains("p95") && html.contains("p99"));
        assert!(html.contains("billing") && html.contains("20.0%"));
        assert!(html.contains("SLA breaches"));
        assert!(html.contains("<details><summary>Outline"));
        assert!(html.contains("small/desk/0 (Router)"));
        assert!(
            html.contains("&quot;events_generated&quot;"),
            "JSON at the bottom"
        );
        assert!(html.contains("lost 0 ✓"));
        assert!(!html.contains("NaN"));
    }

    #[test]
    fn empty_report_renders_without_data() {
        let html = render(&empty());
        assert_self_contained(&html);
        assert_eq!(html.matches("<svg").count(), 2, "one svg per chart");
        assert!(html.contains("no time buckets recorded"));
        assert!(html.contains("no latency samples"));
        assert!(html.contains("monitor"));
        assert!(!html.contains("NaN") && !html.contains("=inf") && !html.contains("=-inf"));
    }

    #[test]
    fn hostile_strings_are_escaped() {
        let mut r = small();
        r.scenario = "<script>alert(1)</script>".into();
        r.tiers[0].name = "\"><img src=x onerror=alert(2)>".into();
        r.tree
            .outline
            .push("</pre><script>alert(3)</script>".into());
        r.supervision.hierarchy_failure = Some("<b>boom</b> & 'gone'".into());
        let html = render(&r);
        assert_self_contained(&html);
        assert!(!html.contains("<script>alert"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>boom"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"));
        assert!(html.contains("&lt;b&gt;boom&lt;/b&gt; &amp; &#39;gone&#39;"));
    }

    #[test]
    fn odd_numbers_do_not_panic() {
        let mut r = small();
        r.wall_ms = f64::NAN;
        r.latency.p50_ms = f64::NAN;
        r.latency.p95_ms = f64::INFINITY;
        r.latency.p99_ms = -1.0;
        r.latency.histogram.push((f64::NAN, 3));
        r.buckets[1].escalations.clear(); // fewer entries than tiers
        r.buckets[2].escalations.push(u64::MAX); // more entries than tiers
        r.buckets[0].alerts = u64::MAX;
        r.tiers.clear();
        r.accounting = Accounting {
            submitted: 3,
            lost: 3,
            balanced: false,
            ..Default::default()
        };
        let html = render(&r);
        assert_self_contained(&html);
        assert!(html.contains("✗ NOT BALANCED"));
        assert!(!html.contains("=\"NaN") && !html.contains("=NaN"));
    }

    #[test]
    fn scale_and_labels() {
        assert_eq!(nice_scale(0), (1, 1));
        assert_eq!(nice_scale(1), (1, 1));
        assert_eq!(nice_scale(183), (200, 50));
        assert_eq!(nice_scale(2043), (2500, 500));
        assert!(nice_scale(u64::MAX).0 >= u64::MAX / 2);
        assert_eq!(duration_label(f64::NAN), "–");
        assert_eq!(duration_label(512.0), "512ms");
        assert_eq!(duration_label(4096.0), "4.1s");
        assert_eq!(duration_label(262_144.0), "4.4min");
        assert_eq!(span_label(Span(Duration::from_secs(5400))), "1h30m");
        assert_eq!(
            escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(marker_position(&[], 3.0), None);
        assert_eq!(marker_position(&[(2.0, 1), (4.0, 1)], 2.0), Some(1.0));
        assert_eq!(marker_position(&[(2.0, 1), (4.0, 1)], 9.0), Some(2.0));
    }
}
