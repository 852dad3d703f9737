//! Scenario files: what to simulate, as TOML.
//!
//! A malformed file gets a [`ScenarioError`] that names the file, the line and the
//! field, and says what is expected; never a panic. See README "Scenario files" for the
//! format field by field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// A duration written as `"90s"`, `"5m"`, `"1h30m"`, `"250ms"` or `"2d"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Span(pub Duration);

impl Span {
    /// Parse `"1h30m"`-style text.
    ///
    /// # Errors
    /// A message saying what is wrong with the text.
    pub fn parse(text: &str) -> Result<Span, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("an empty duration; write e.g. \"90s\", \"5m\" or \"1h30m\"".into());
        }
        let mut total = Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(format!(
                    "{text:?} is not a duration; write e.g. \"90s\", \"5m\" or \"1h30m\""
                ));
            }
            let number: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("{text:?}: {:?} is not a number", &rest[..digits]))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let secs = match unit {
                "ms" => number / 1000.0,
                "s" => number,
                "m" | "min" => number * 60.0,
                "h" => number * 3600.0,
                "d" => number * 86400.0,
                "" => return Err(format!("{text:?} needs a unit: ms, s, m, h or d")),
                other => {
                    return Err(format!(
                        "{text:?}: unknown unit {other:?}; use ms, s, m, h or d"
                    ))
                }
            };
            if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
                return Err(format!("{text:?} is too long (at most ten years)"));
            }
            total += Duration::from_secs_f64(secs);
        }
        Ok(Span(total))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Span::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        let ms = self.0.subsec_millis();
        if s == 0 {
            return write!(f, "{ms}ms");
        }
        let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
        let mut out = String::new();
        for (v, u) in [(d, "d"), (h, "h"), (m, "m"), (sec, "s")] {
            if v > 0 {
                out.push_str(&format!("{v}{u}"));
            }
        }
        f.write_str(&out)
    }
}

/// Which domain the scenario simulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Vitals monitors → diagnostic agents → decision agents → staff alerts.
    Healthcare,
    /// A manager routing tickets to specialist pools → tier 2 → a human queue.
    Support,
}

/// A whole scenario file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, used in reports.
    pub name: String,
    /// What the scenario shows.
    #[serde(default)]
    pub description: String,
    /// The domain.
    pub model: Model,
    /// Seed for every random draw: same file and seed, same counts.
    #[serde(default)]
    pub seed: u64,
    /// Simulated time to run.
    pub duration: Span,
    /// Width of the time buckets in the report (default 1h).
    #[serde(default = "one_hour")]
    pub bucket: Span,
    /// Span of control, restarts, attempts.
    #[serde(default)]
    pub hierarchy: HierarchySpec,
    /// The tiers, top first; the last is the frontline.
    pub tiers: Vec<TierSpec>,
    /// Healthcare workload (model = "healthcare").
    #[serde(default)]
    pub healthcare: Option<HealthcareWorkload>,
    /// Support workload (model = "support").
    #[serde(default)]
    pub support: Option<SupportWorkload>,
    /// Fault injection.
    #[serde(default)]
    pub faults: Faults,
}

fn one_hour() -> Span {
    Span(Duration::from_secs(3600))
}

/// Span of control, restart policy and attempts.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HierarchySpec {
    /// Most direct reports per supervisor.
    pub span_of_control: usize,
    /// Insert team leads when a team is larger (otherwise it is an error).
    pub auto_split: bool,
    /// Attempts per task on a crashing agent.
    pub max_attempts: u32,
    /// `one_for_one`, `one_for_all` or `rest_for_one`.
    pub strategy: String,
    /// Restarts allowed per period before a supervisor fails upward.
    pub max_restarts: u32,
    /// The intensity period.
    pub period: Span,
    /// First backoff delay (omit for none).
    pub backoff: Option<Span>,
    /// Largest backoff delay.
    pub backoff_max: Option<Span>,
}

impl Default for HierarchySpec {
    fn default() -> Self {
        HierarchySpec {
            span_of_control: 8,
            auto_split: true,
            max_attempts: 3,
            strategy: "one_for_one".into(),
            max_restarts: 20,
            period: Span(Duration::from_secs(60)),
            backoff: None,
            backoff_max: None,
        }
    }
}

/// One tier.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    /// Tier name (a path segment).
    pub name: String,
    /// How many agents.
    pub count: usize,
    /// Escalations *from* this tier need at least this severity to go up (0..1).
    #[serde(default)]
    pub escalate_at: f64,
    /// Fold repeats of the same escalation within this window.
    #[serde(default)]
    pub suppress: Option<Span>,
    /// Virtual time each message takes an agent of this tier.
    #[serde(default)]
    pub service_time: Span,
    /// The agent's own decision rule: severity at or above which it escalates.
    #[serde(default = "half")]
    pub decide_at: f64,
}

fn half() -> f64 {
    0.5
}

/// A period of heavier load.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Burst {
    /// When it starts.
    pub at: Span,
    /// How long it lasts.
    pub duration: Span,
    /// Rate multiplier while it lasts.
    pub multiplier: f64,
}

/// Healthcare workload: patients, readings, deterioration episodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthcareWorkload {
    /// Time between two readings of one patient.
    pub reading_interval: Span,
    /// Deterioration episodes per patient per day (Poisson).
    pub episodes_per_patient_day: f64,
    /// Fraction of episodes that are truly critical (ground truth).
    pub critical_fraction: f64,
    /// How long an episode lasts.
    pub episode_length: Span,
    /// A critical episode not alerted within this time is a missed critical.
    pub decision_deadline: Span,
    /// Probability that a normal reading is a sensor artifact that looks abnormal.
    #[serde(default)]
    pub artifact_rate: f64,
    /// Periods of more episodes.
    #[serde(default)]
    pub bursts: Vec<Burst>,
}

/// Support workload: tickets and specialist pools.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupportWorkload {
    /// Tickets per hour (Poisson).
    pub tickets_per_hour: f64,
    /// Specialists per pool, e.g. `{ billing = 3, technical = 5, sales = 2 }`.
    pub pools: BTreeMap<String, usize>,
    /// Share of tickets per pool (normalised).
    pub mix: BTreeMap<String, f64>,
    /// Fraction of tickets that truly need a human (ground truth).
    pub needs_human_fraction: f64,
    /// Fraction of high-priority tickets.
    pub high_priority_fraction: f64,
    /// Probability that the manager misroutes a ticket.
    #[serde(default)]
    pub misroute_probability: f64,
    /// Resolution time allowed for a normal ticket.
    pub sla: Span,
    /// Resolution time allowed for a high-priority ticket.
    pub sla_high: Span,
    /// Periods of more tickets.
    #[serde(default)]
    pub bursts: Vec<Burst>,
}

/// Fault injection.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Probability that a handler panics on a message.
    pub panic_probability: f64,
    /// Agents slower than their tier's service time.
    pub slow: Vec<SlowAgents>,
    /// A tier that stops answering for a while.
    pub outages: Vec<Outage>,
}

/// Some agents of a tier are slow.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowAgents {
    /// The tier.
    pub tier: String,
    /// Fraction of its agents (the first ones by index).
    pub fraction: f64,
    /// Extra virtual time per message.
    pub extra: Span,
}

/// A tier is unavailable for a period: its handlers hold every message until it ends.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// The tier.
    pub tier: String,
    /// When it starts.
    pub at: Span,
    /// How long.
    pub duration: Span,
}

/// A scenario that could not be used: where, which field, and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ScenarioError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line (0 if unknown, e.g. a file that could not be read).
    pub line: usize,
    /// The field, as a path (`tiers[2].count`), or the key the parser stopped at.
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

impl Scenario {
    /// Read and validate a scenario file.
    ///
    /// # Errors
    /// [`ScenarioError`] naming the file, line and field.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|e| ScenarioError {
            file: path.to_path_buf(),
            line: 0,
            field: "(file)".into(),
            message: format!("cannot read the scenario: {e}"),
        })?;
        Scenario::parse(&text, path)
    }

    /// Parse and validate scenario text; `path` is only used in messages.
    ///
    /// # Errors
    /// [`ScenarioError`] naming the file, line and field.
    pub fn parse(text: &str, path: &Path) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_string();
            let (line, field) = match e.span() {
                Some(span) => locate(text, span.start, &message),
                None => (0, String::from("(document)")),
            };
            ScenarioError {
                file: path.to_path_buf(),
                line,
                field,
                message,
            }
        })?;
        scenario
            .validate()
            .map_err(|(field, message)| ScenarioError {
                file: path.to_path_buf(),
                line: line_of_field(text, &field),
                field,
                message,
            })?;
        Ok(scenario)
    }

    /// Semantic checks: `Err((field path, message))`.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: String| Err((f.to_string(), m));
        if self.duration.0.is_zero() {
            return bad("duration", "must be longer than zero, e.g. \"24h\"".into());
        }
        if self.bucket.0.is_zero() {
            return bad("bucket", "must be longer than zero, e.g. \"1h\"".into());
        }
        if self.duration.0.as_secs_f64() / self.bucket.0.as_secs_f64() > 10_000.0 {
            return bad(
                "bucket",
                "gives more than 10,000 buckets; use a wider bucket".into(),
            );
        }
        let h = &self.hierarchy;
        if h.span_of_control < 2 {
            return bad(
                "hierarchy.span_of_control",
                format!("is {}; it must be at least 2", h.span_of_control),
            );
        }
        if h.max_attempts == 0 {
            return bad("hierarchy.max_attempts", "must be at least 1".into());
        }
        if !["one_for_one", "one_for_all", "rest_for_one"].contains(&h.strategy.as_str()) {
            return bad(
                "hierarchy.strategy",
                format!(
                    "{:?} is not a strategy; use one_for_one, one_for_all or rest_for_one",
                    h.strategy
                ),
            );
        }
        if self.tiers.is_empty() {
            return bad("tiers", "needs at least one [[tiers]] table".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.tiers.iter().enumerate() {
            let f = |k: &str| format!("tiers[{i}].{k}");
            if t.name.is_empty() || t.name.contains('/') || t.name == "split" {
                return bad(
                    &f("name"),
                    format!(
                        "{:?} cannot be a tier name (non-empty, no '/', not \"split\")",
                        t.name
                    ),
                );
            }
            if !names.insert(t.name.as_str()) {
                return bad(&f("name"), format!("{:?} is used by two tiers", t.name));
            }
            if t.count == 0 || t.count > 1_000_000 {
                return bad(
                    &f("count"),
                    format!("is {}; it must be between 1 and 1,000,000", t.count),
                );
            }
            for (k, v) in [("escalate_at", t.escalate_at), ("decide_at", t.decide_at)] {
                if !(0.0..=1.0).contains(&v) {
                    return bad(&f(k), format!("is {v}; it must be between 0 and 1"));
                }
            }
        }
        let probability = |field: &str, v: f64| -> Result<(), (String, String)> {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err((
                    field.to_string(),
                    format!("is {v}; it must be a probability between 0 and 1"),
                ))
            }
        };
        let bursts = |table: &str, bs: &[Burst]| -> Result<(), (String, String)> {
            for (i, b) in bs.iter().enumerate() {
                if !(b.multiplier.is_finite() && b.multiplier >= 0.0 && b.multiplier <= 1000.0) {
                    return Err((
                        format!("{table}.bursts[{i}].multiplier"),
                        format!("is {}; it must be between 0 and 1000", b.multiplier),
                    ));
                }
            }
            Ok(())
        };
        match self.model {
            Model::Healthcare => {
                let Some(w) = &self.healthcare else {
                    return bad(
                        "healthcare",
                        "model = \"healthcare\" needs a [healthcare] table".into(),
                    );
                };
                if self.tiers.len() < 2 {
                    return bad("tiers", "the healthcare model needs at least two tiers (a monitor tier and one above it)".into());
                }
                if w.reading_interval.0 < Duration::from_secs(1) {
                    return bad("healthcare.reading_interval", "must be at least 1s".into());
                }
                let readings = self.duration.0.as_secs_f64() / w.reading_interval.0.as_secs_f64()
                    * self.tiers[self.tiers.len() - 1].count as f64;
                if readings > 50_000_000.0 {
                    return bad(
                        "healthcare.reading_interval",
                        format!("gives {readings:.0} readings; keep a run under 50 million"),
                    );
                }
                if !(w.episodes_per_patient_day.is_finite()
                    && (0.0..=100.0).contains(&w.episodes_per_patient_day))
                {
                    return bad(
                        "healthcare.episodes_per_patient_day",
                        "must be between 0 and 100".into(),
                    );
                }
                probability("healthcare.critical_fraction", w.critical_fraction)?;
                probability("healthcare.artifact_rate", w.artifact_rate)?;
                if w.episode_length.0.is_zero() {
                    return bad(
                        "healthcare.episode_length",
                        "must be longer than zero".into(),
                    );
                }
                bursts("healthcare", &w.bursts)?;
            }
            Model::Support => {
                let Some(w) = &self.support else {
                    return bad(
                        "support",
                        "model = \"support\" needs a [support] table".into(),
                    );
                };
                if !(w.tickets_per_hour.is_finite()
                    && w.tickets_per_hour > 0.0
                    && w.tickets_per_hour <= 1_000_000.0)
                {
                    return bad(
                        "support.tickets_per_hour",
                        "must be between 0 and 1,000,000 (exclusive of 0)".into(),
                    );
                }
                if w.pools.is_empty() {
                    return bad(
                        "support.pools",
                        "needs at least one pool, e.g. { billing = 3 }".into(),
                    );
                }
                for (name, n) in &w.pools {
                    if *n == 0 || *n > 10_000 {
                        return bad(
                            &format!("support.pools.{name}"),
                            format!("is {n}; a pool needs 1 to 10,000 specialists"),
                        );
                    }
                }
                for (name, share) in &w.mix {
                    if !w.pools.contains_key(name) {
                        return bad(
                            &format!("support.mix.{name}"),
                            format!(
                                "names no pool; pools are {:?}",
                                w.pools.keys().collect::<Vec<_>>()
                            ),
                        );
                    }
                    if !(share.is_finite() && *share >= 0.0) {
                        return bad(
                            &format!("support.mix.{name}"),
                            "must be a non-negative share".into(),
                        );
                    }
                }
                if w.mix.values().sum::<f64>() <= 0.0 {
                    return bad(
                        "support.mix",
                        "needs a positive share for at least one pool".into(),
                    );
                }
                probability("support.needs_human_fraction", w.needs_human_fraction)?;
                probability("support.high_priority_fraction", w.high_priority_fraction)?;
                probability("support.misroute_probability", w.misroute_probability)?;
                bursts("support", &w.bursts)?;
            }
        }
        probability("faults.panic_probability", self.faults.panic_probability)?;
        for (i, s) in self.faults.slow.iter().enumerate() {
            if !self.tiers.iter().any(|t| t.name == s.tier) {
                return bad(
                    &format!("faults.slow[{i}].tier"),
                    format!("{:?} is not a tier", s.tier),
                );
            }
            probability(&format!("faults.slow[{i}].fraction"), s.fraction)?;
        }
        for (i, o) in self.faults.outages.iter().enumerate() {
            if !self.tiers.iter().any(|t| t.name == o.tier) {
                return bad(
                    &format!("faults.outages[{i}].tier"),
                    format!("{:?} is not a tier", o.tier),
                );
            }
        }
        Ok(())
    }
}

/// The code of a line without its comment (a `#` outside a string).
fn code(line: &str) -> &str {
    let mut in_str = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => in_str = !in_str,
            '#' if !in_str => return line[..i].trim(),
            _ => {}
        }
    }
    line.trim()
}

/// `[hierarchy]` or `[[tiers]]` (comment already removed) → `hierarchy` / `tiers`.
fn header(code: &str) -> Option<String> {
    code.starts_with('[').then(|| {
        code.trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string()
    })
}

/// Line (1-based; 0 for the document as a whole) and field for a parse error at byte
/// `offset` with `message`.
fn locate(text: &str, offset: usize, message: &str) -> (usize, String) {
    let offset = offset.min(text.len());
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let this = code(line_text);
    // the table in force at this line: the last header at or before it
    let mut table = String::new();
    for l in text[..line_start].lines() {
        if let Some(h) = header(code(l)) {
            table = h;
        }
    }
    let on_header = header(this);
    if let Some(h) = &on_header {
        table = h.clone();
    }
    let join = |key: &str| match (table.is_empty(), key.is_empty()) {
        (true, true) => "(document)".to_string(),
        (true, false) => key.to_string(),
        (false, true) => table.clone(),
        (false, false) => format!("{table}.{key}"),
    };
    let line = text[..offset].matches('\n').count() + 1;
    if let Some(field) = missing {
        // a missing top-level field is reported against the whole document (line 0);
        // one missing inside a table, against that table's header
        return if on_header.is_some() {
            (line, join(field))
        } else if offset == 0 || table.is_empty() {
            (0, field.to_string())
        } else {
            (line, join(field))
        };
    }
    let key = if on_header.is_none() {
        this.split('=').next().map(str::trim).unwrap_or("")
    } else {
        ""
    };
    (line, join(key))
}

/// Line of a field path like `tiers[2].count` or `support.pools.billing`, found in the
/// parsed document's spans; 0 if absent (a default value).
fn line_of_field(text: &str, field: &str) -> usize {
    let Ok(doc) = toml::de::DeTable::parse(text) else {
        return 0;
    };
    let mut span = doc.span();
    let mut value: Option<&toml::de::DeValue<'_>>;
    let mut table: Option<&toml::de::DeTable<'_>> = Some(doc.get_ref());
    let mut found = false;
    for part in field.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        let Some(t) = table else { break };
        let Some(entry) = t.get(key) else { break };
        found = true;
        span = entry.span();
        value = Some(entry.get_ref());
        if let (Some(i), Some(toml::de::DeValue::Array(items))) = (index, value) {
            match items.get(i) {
                Some(item) => {
                    span = item.span();
                    value = Some(item.get_ref());
                }
                None => break,
            }
        }
        table = match value {
            Some(toml::de::DeValue::Table(t)) => Some(t),
            _ => None,
        };
    }
    if !found {
        return 0;
    }
    text[..span.start.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(Span::parse("1h30m").unwrap().0, Duration::from_secs(5400));
        assert_eq!(Span::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Span::parse("2d").unwrap().0, Duration::from_secs(172_800));
        assert!(Span::parse("5").unwrap_err().contains("unit"));
        assert!(Span::parse("5 weeks").is_err());
        assert!(Span::parse("").is_err());
        assert_eq!(Span(Duration::from_secs(5400)).to_string(), "1h30m");
    }
}
