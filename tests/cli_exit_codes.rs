//! The `echelon` command line, run as a user runs it: exit code 0 on success, 1 when a
//! run fails (a hierarchy that cannot be built, an output that cannot be written), 2 on
//! bad input or usage (a malformed scenario, an unknown subcommand or flag); and what it
//! prints: "ok" from `validate`, file and line of a bad scenario on stderr, the text
//! report, JSON (`--json`, `--quiet`) and HTML (`--html`) outputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn echelon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_echelon"))
        .args(args)
        .output()
        .expect("the echelon binary runs")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("echelon exits with a code")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    )
}

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// A fresh directory for one test.
fn temp_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_exit_codes_{test}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}

/// `scenarios/healthcare.toml` with each `(from, to)` replaced once (each must match).
fn healthcare_with(edits: &[(&str, &str)]) -> String {
    let mut text =
        std::fs::read_to_string(manifest("scenarios/healthcare.toml")).expect("healthcare.toml");
    for (from, to) in edits {
        assert!(text.contains(from), "healthcare.toml has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// A small valid scenario: 2 simulated hours, 100 patients.
fn small_scenario(dir: &Path) -> PathBuf {
    let path = dir.join("small.toml");
    let text = healthcare_with(&[
        ("duration = \"24h\"", "duration = \"2h\""),
        ("count = 1000", "count = 100"),
    ]);
    std::fs::write(&path, text).expect("write the scenario");
    path
}

#[test]
fn validate_a_good_scenario_prints_ok() {
    for name in ["healthcare", "support", "healthcare_fault_storm"] {
        let file = manifest(&format!("scenarios/{name}.toml"));
        let o = echelon(&["validate", arg(&file)]);
        assert_eq!(code(&o), 0, "{}", show(&o));
        assert!(stdout(&o).starts_with("ok"), "{}", show(&o));
        assert!(stdout(&o).contains(&format!("{name}.toml")), "{}", show(&o));
    }
}

#[test]
fn validate_a_malformed_scenario_exits_2_naming_file_and_line() {
    let file = manifest("tests/data/count_zero.toml");
    let o = echelon(&["validate", arg(&file)]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("count_zero.toml:11: tiers[1].count"),
        "{}",
        show(&o)
    );
    assert!(!stdout(&o).contains("ok"), "{}", show(&o));

    let file = manifest("tests/data/syntax_error.toml");
    let o = echelon(&["validate", arg(&file)]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stderr(&o).contains("syntax_error.toml:4:"), "{}", show(&o));
}

#[test]
fn validate_a_missing_file_exits_2() {
    let o = echelon(&["validate", "no/such/scenario.toml"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stderr(&o).contains("scenario.toml"), "{}", show(&o));
}

#[test]
fn simulate_a_malformed_scenario_exits_2_without_running() {
    let dir = temp_dir("simulate_malformed");
    let json = dir.join("out.json");
    let file = manifest("tests/data/unknown_strategy.toml");
    let o = echelon(&["simulate", arg(&file), "--json", arg(&json)]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(
        stderr(&o).contains("unknown_strategy.toml:7: hierarchy.strategy"),
        "{}",
        show(&o)
    );
    assert!(!json.exists(), "no report for a scenario that did not run");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["frobnicate"][..],
        &[][..],
        &["simulate"][..],
        &["validate"][..],
        &["simulate", "scenarios/healthcare.toml", "--sed", "3"][..],
        &["simulate", "scenarios/healthcare.toml", "--seed", "three"][..],
        &["validate", "--bogus", "scenarios/healthcare.toml"][..],
    ] {
        let o = echelon(args);
        assert_eq!(code(&o), 2, "echelon {args:?}: {}", show(&o));
        assert!(!stderr(&o).is_empty(), "echelon {args:?} says why");
    }
}

#[test]
fn help_exits_0_and_lists_the_subcommands() {
    let o = echelon(&["--help"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("simulate") && out.contains("validate"),
        "{}",
        show(&o)
    );
    let o = echelon(&["simulate", "--help"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    for flag in ["--seed", "--json", "--html", "--quiet"] {
        assert!(stdout(&o).contains(flag), "simulate --help lacks {flag}");
    }
}

#[test]
fn simulate_prints_the_report_and_writes_json_and_html() {
    let dir = temp_dir("simulate_outputs");
    let file = small_scenario(&dir);
    let (json, html) = (dir.join("report.json"), dir.join("report.html"));
    let o = echelon(&[
        "simulate",
        arg(&file),
        "--seed",
        "11",
        "--json",
        arg(&json),
        "--html",
        arg(&html),
    ]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let text = stdout(&o);
    assert!(text.contains("accounting"), "{}", show(&o));
    assert!(text.contains("lost 0"), "{}", show(&o));
    assert!(text.contains("seed 11"), "{}", show(&o));

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the report"))
            .expect("--json writes valid JSON");
    assert_eq!(
        report["accounting"]["balanced"],
        Value::Bool(true),
        "{report}"
    );
    assert_eq!(report["accounting"]["lost"], 0, "{report}");
    assert_eq!(report["seed"], 11, "--seed is used");
    assert_eq!(report["scenario"], "healthcare");
    assert_eq!(
        report["tiers"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    assert_eq!(
        report["tiers"][2]["agents"], 100,
        "the monitors of the file"
    );

    let page = std::fs::read_to_string(&html).expect("--html wrote the page");
    assert!(
        page.to_ascii_lowercase().starts_with("<!doctype html>"),
        "{}",
        &page[..page.len().min(200)]
    );
}

#[test]
fn simulate_quiet_prints_only_the_json_report() {
    let dir = temp_dir("simulate_quiet");
    let file = small_scenario(&dir);
    let o = echelon(&["simulate", arg(&file), "--quiet"]);
    assert_eq!(code(&o), 0, "{}", show(&o));
    let report: Value = serde_json::from_str(&stdout(&o)).expect("--quiet prints JSON only");
    assert_eq!(report["accounting"]["balanced"], Value::Bool(true));
}

#[test]
fn two_processes_with_one_seed_write_the_same_json_but_for_wall_ms() {
    let dir = temp_dir("simulate_twice");
    let file = small_scenario(&dir);
    let mut reports = Vec::new();
    for i in 0..2 {
        let json = dir.join(format!("run{i}.json"));
        let o = echelon(&["simulate", arg(&file), "--seed", "5", "--json", arg(&json)]);
        assert_eq!(code(&o), 0, "{}", show(&o));
        let mut v: Value =
            serde_json::from_str(&std::fs::read_to_string(&json).expect("--json wrote the report"))
                .expect("valid JSON");
        let obj = v.as_object_mut().expect("a JSON object");
        assert!(obj.remove("wall_ms").is_some());
        reports.push(v);
    }
    assert_eq!(reports[0], reports[1]);
}

#[test]
fn a_hierarchy_that_cannot_be_built_exits_1_and_says_why() {
    let dir = temp_dir("strict_span");
    let file = dir.join("strict.toml");
    let text = healthcare_with(&[
        ("duration = \"24h\"", "duration = \"1h\""),
        ("span_of_control = 8", "span_of_control = 2"),
        ("auto_split = true", "auto_split = false"),
        ("count = 1000", "count = 50"),
    ]);
    std::fs::write(&file, text).expect("write the scenario");
    // the file itself is valid: the problem only shows when the hierarchy is built
    let o = echelon(&["validate", arg(&file)]);
    assert_eq!(code(&o), 0, "{}", show(&o));

    let o = echelon(&["simulate", arg(&file)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    let err = stderr(&o);
    assert!(err.contains("span of control"), "{}", show(&o));
    assert!(err.contains("limit is 2"), "{}", show(&o));
    assert!(!stdout(&o).contains("accounting"), "{}", show(&o));
}

#[test]
fn a_json_path_in_a_missing_directory_exits_1() {
    let dir = temp_dir("json_missing_dir");
    let file = small_scenario(&dir);
    let json = dir.join("no_such_dir").join("report.json");
    let o = echelon(&["simulate", arg(&file), "--json", arg(&json)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("report.json"), "{}", show(&o));

    let html = dir.join("no_such_dir").join("report.html");
    let o = echelon(&["simulate", arg(&file), "--html", arg(&html)]);
    assert_eq!(code(&o), 1, "{}", show(&o));
    assert!(stderr(&o).contains("report.html"), "{}", show(&o));
}

/// Without the opt-in `cluster` feature, `echelon node` says how to get it and exits 2
/// (a usage error), instead of clap's bare "unrecognized subcommand".
#[cfg(not(feature = "cluster"))]
#[test]
fn node_without_the_cluster_feature_says_how_to_get_it() {
    let o = echelon(&["node", "--name", "a", "--cookie", "c"]);
    assert_eq!(code(&o), 2, "{}", show(&o));
    assert!(stderr(&o).contains("--features cluster"), "{}", show(&o));
}
