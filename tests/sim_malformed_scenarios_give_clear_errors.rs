//! Malformed scenario files get a clear [`ScenarioError`]: it names the file, the right
//! line and the right field, and says what is wrong; never a panic.
//!
//! The corpus is `tests/data/*.toml`. Each file has a sibling `NAME.expected` whose
//! lines are substrings the error's Display must contain; the first line starts with
//! `:LINE:` (the line the error must report; 0 when the field is absent from the file,
//! as `ScenarioError::line` documents) followed by the field. One test per file, plus
//! a test that the corpus is complete, plus a deterministic fuzz loop over mutations of
//! `scenarios/healthcare.toml` (2,000 seeded mutations; no panic, every error says
//! where and what).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use echelon::sim::{Scenario, ScenarioError};

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("data")
}

/// Every `tests/data/*.toml`, sorted.
fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data_dir())
        .expect("tests/data exists")
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The non-empty lines of `NAME.expected`.
fn expected(toml: &Path) -> Vec<String> {
    let path = toml.with_extension("expected");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} needs a sibling {}: {e}", toml.display(), path.display()));
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(!lines.is_empty(), "{} is empty", path.display());
    lines
}

/// `:LINE: ...` → LINE.
fn expected_line(first: &str) -> usize {
    let rest = first
        .strip_prefix(':')
        .unwrap_or_else(|| panic!("{first:?} should start with \":LINE:\""));
    let (line, _) = rest
        .split_once(':')
        .unwrap_or_else(|| panic!("{first:?} should start with \":LINE:\""));
    line.parse()
        .unwrap_or_else(|_| panic!("{first:?}: {line:?} is not a line number"))
}

/// The key names in a field path: `faults.slow[1].tier` → `faults`, `slow`, `tier`.
fn keys(field: &str) -> Vec<&str> {
    field
        .split('.')
        .map(|k| k.split('[').next().unwrap_or(""))
        .filter(|k| !k.is_empty())
        .collect()
}

fn load_err(path: &Path) -> ScenarioError {
    match Scenario::load(path) {
        Ok(s) => panic!(
            "{} should be rejected, but it loaded as scenario {:?}",
            path.display(),
            s.name
        ),
        Err(e) => e,
    }
}

/// Load `tests/data/NAME.toml` and check its error against `NAME.expected`.
fn check(name: &str) {
    let path = data_dir().join(format!("{name}.toml"));
    let lines = expected(&path);
    let line = expected_line(&lines[0]);
    let text = std::fs::read_to_string(&path).expect("the corpus file is readable");
    let err = load_err(&path);
    let shown = err.to_string();
    assert_eq!(err.file, path, "the error names the file it was given");
    assert!(
        shown.starts_with(&format!("{}:", path.display())),
        "the message starts with the file name: {shown}"
    );
    assert!(!err.field.is_empty(), "empty field in: {shown}");
    assert!(!err.message.is_empty(), "empty message in: {shown}");
    let mut missing = Vec::new();
    for want in &lines {
        if !shown.contains(want.as_str()) {
            missing.push(want.as_str());
        }
    }
    assert!(
        missing.is_empty(),
        "{name}: the error\n    {shown}\n  (line {}, field {:?}) lacks {missing:?}",
        err.line,
        err.field
    );
    assert_eq!(err.line, line, "{name}: wrong line in: {shown}");
    // and the line it reports is where the field it names is written
    if err.line > 0 {
        let at = text.lines().nth(err.line - 1).unwrap_or("");
        assert!(
            keys(&err.field).iter().any(|k| at.contains(k)),
            "{name}: line {} ({at:?}) does not mention the field {:?}",
            err.line,
            err.field
        );
    }
}

macro_rules! corpus_cases {
    ($($name:ident),* $(,)?) => {
        /// The names with a test below, for the completeness check.
        const CASES: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

corpus_cases!(
    syntax_error,
    missing_model,
    missing_tiers,
    missing_duration,
    unknown_field_typo,
    table_header_comment,
    wrong_type,
    tier_missing_count,
    bad_duration_words,
    bad_duration_no_unit,
    count_zero,
    escalate_at_above_one,
    unknown_strategy,
    span_of_control_one,
    tiers_empty,
    healthcare_without_table,
    support_mix_unknown_pool,
    support_pool_zero,
    faults_slow_unknown_tier,
    duplicate_tier_names,
    empty,
);

#[test]
fn every_corpus_file_is_rejected_naming_the_file_and_has_a_test() {
    let files = corpus();
    assert!(
        files.len() >= 12,
        "the corpus has {} files, expected at least 12",
        files.len()
    );
    for path in &files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 file name");
        assert!(
            CASES.contains(&name),
            "{name}.toml has no test: add it to corpus_cases!"
        );
        let lines = expected(path);
        let err = load_err(path);
        let shown = err.to_string();
        assert!(
            shown.contains(&path.display().to_string()),
            "{shown} does not name the file"
        );
        // the message part (after "file:line: field: ") is there and says something
        assert!(
            !err.message.trim().is_empty(),
            "{name}: empty message: {shown}"
        );
        // the `.expected` file is well-formed (its line is checked by the case's test)
        let _ = expected_line(&lines[0]);
    }
    for name in CASES {
        assert!(
            data_dir().join(format!("{name}.toml")).exists(),
            "the case {name} has no tests/data/{name}.toml"
        );
    }
}

#[test]
fn a_missing_file_is_an_error_with_line_zero_not_a_panic() {
    let path = data_dir().join("no_such_scenario.toml");
    let err = load_err(&path);
    assert_eq!(err.line, 0);
    assert_eq!(err.file, path);
    assert!(
        err.to_string().contains("no_such_scenario.toml:0:"),
        "{err}"
    );
    assert!(err.message.contains("cannot read"), "{err}");
}

#[test]
fn the_shipped_scenarios_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    for name in [
        "healthcare",
        "healthcare_threshold_low",
        "healthcare_threshold_high",
        "healthcare_span_wide",
        "healthcare_fault_storm",
        "support",
    ] {
        let path = dir.join(format!("{name}.toml"));
        let s = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.name, name);
    }
}

/// splitmix64: a small deterministic generator, so a failing iteration can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Values that are wrong in type, range or format somewhere in a scenario.
const TOKENS: &[&str] = &[
    "-1",
    "0",
    "1",
    "1.5",
    "-0.0",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "18446744073709551616",
    "99999999999999999999999999",
    "\"\"",
    "\"0s\"",
    "\"5\"",
    "\"5 minutes\"",
    "\"1h30x\"",
    "\"99999999999d\"",
    "\"1..5h\"",
    "\".s\"",
    "\"1.5.5h\"",
    "\"h\"",
    "\"é\"",
    "\"\u{1F600}\"",
    "\"healthcare\"",
    "\"support\"",
    "\"one_for_all\"",
    "\"monitor\"",
    "[]",
    "{}",
    "[[]]",
    "[1, \"a\"]",
    "{ tier = \"x\", fraction = 2.0, extra = \"1s\" }",
    "[{ at = \"1h\", duration = \"1h\", multiplier = -3.0 }]",
    "[{ at = \"1h\", duration = \"1h\", multiplier = nan }]",
    "true",
    "'''",
    "\"\\u0000\"",
    "\"\\",
    "0x10",
    "1979-05-27T07:32:00Z",
    "=",
    "[tiers]",
    "[[tiers]]",
    "",
];

fn random_token(rng: &mut Rng) -> String {
    if rng.below(4) == 0 {
        // a random printable string, sometimes quoted
        let len = rng.below(12);
        let s: String = (0..len)
            .map(|_| char::from(b' ' + rng.below(95) as u8))
            .collect();
        if rng.below(2) == 0 {
            format!("\"{s}\"")
        } else {
            s
        }
    } else {
        TOKENS[rng.below(TOKENS.len())].to_string()
    }
}

/// One random mutation of `text`.
fn mutate(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    match rng.below(6) {
        0 if !lines.is_empty() => {
            let i = rng.below(lines.len());
            lines.remove(i);
        }
        1 if !lines.is_empty() => {
            let i = rng.below(lines.len());
            let l = lines[i].clone();
            lines.insert(i + rng.below(2), l);
        }
        2 => {
            // replace a value (the right side of `key = value`) with a token
            let candidates: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains('='))
                .collect();
            if !candidates.is_empty() {
                let i = candidates[rng.below(candidates.len())];
                let key = lines[i].split('=').next().unwrap_or("").to_string();
                lines[i] = format!("{key}= {}", random_token(rng));
            }
        }
        3 => {
            // replace a whole line with a token, or a key with a misspelt one
            if !lines.is_empty() {
                let i = rng.below(lines.len());
                lines[i] = if rng.below(2) == 0 {
                    random_token(rng)
                } else {
                    lines[i].replacen('_', "", 1).replacen('e', "ee", 1)
                };
            }
        }
        4 => {
            let bytes = text.as_bytes();
            let at = rng.below(bytes.len() + 1);
            return String::from_utf8_lossy(&bytes[..at]).into_owned();
        }
        _ => {
            let mut bytes = text.as_bytes().to_vec();
            let at = rng.below(bytes.len() + 1);
            let n = 1 + rng.below(8);
            let noise: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
            bytes.splice(at..at, noise);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[test]
fn fuzzed_scenarios_never_panic_and_every_error_says_where_and_what() {
    let base_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/healthcare.toml");
    let base = std::fs::read_to_string(&base_path).expect("scenarios/healthcare.toml");
    let name = Path::new("fuzzed.toml");
    let mut failures: Vec<String> = Vec::new();
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for iteration in 0..2_000u64 {
        let mut rng = Rng(0xEC4E_1000 + iteration);
        let mut text = base.clone();
        for _ in 0..1 + rng.below(3) {
            text = mutate(&text, &mut rng);
        }
        let result = catch_unwind(AssertUnwindSafe(|| Scenario::parse(&text, name)));
        let lines_in_text = text.lines().count().max(1);
        match result {
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!(
                    "iteration {iteration}: Scenario::parse panicked ({what}) on:\n{text}"
                ));
            }
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(e)) => {
                rejected += 1;
                let mut wrong = Vec::new();
                if e.field.trim().is_empty() {
                    wrong.push("an empty field");
                }
                if e.message.trim().is_empty() {
                    wrong.push("an empty message");
                }
                if e.file != name {
                    wrong.push("the wrong file");
                }
                if e.line > lines_in_text + 1 {
                    wrong.push("a line past the end of the text");
                }
                if !wrong.is_empty() {
                    failures.push(format!(
                        "iteration {iteration}: {wrong:?} in {e:?} for:\n{text}"
                    ));
                }
            }
        }
        if failures.len() >= 5 {
            break;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s); the first:\n{}",
        failures.len(),
        failures.join("\n----\n")
    );
    // the mutations really exercise the error paths, and not only them
    assert!(
        rejected >= 500,
        "only {rejected} of 2,000 mutations were rejected"
    );
    assert!(accepted > 0, "no mutation was accepted");
}
