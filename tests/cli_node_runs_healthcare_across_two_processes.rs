//! The README's two-process walkthrough, as a test: `echelon node` hosting in one
//! process, `echelon node --run … --place diagnostic=…` in another; the run reports the
//! findings that crossed and zero lost. A wrong cookie is exit code 1 with a message
//! that says what to check; a malformed --place is exit code 2.
#![cfg(all(feature = "cluster", feature = "sim"))]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_echelon");

/// Kills the hosting node when the test ends, pass or fail.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `echelon node --name NAME` on a free port; return it and its address.
fn host(name: &str, cookie: &str) -> (Host, String) {
    let mut child = Command::new(BIN)
        .args([
            "node",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--cookie",
            cookie,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn echelon node");
    let out = child.stdout.take().expect("stdout");
    let host = Host(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the node prints its address within 30 s");
    // "node NAME listening on ADDR (hosting …)"
    let addr = line
        .split_whitespace()
        .nth(4)
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (host, addr)
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("run echelon node --run")
}

#[test]
fn two_processes_run_the_healthcare_scenario() {
    let (_b, addr) = host("ward-b", "s3cret");
    let out = run(&[
        "node",
        "--name",
        "ward-a",
        "--cookie",
        "s3cret",
        "--connect",
        &addr,
        "--run",
        "scenarios/healthcare.toml",
        "--place",
        "diagnostic=ward-b",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout {stdout}\nstderr {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = stdout
        .find('{')
        .map(|i| &stdout[i..])
        .expect("a JSON report");
    let r: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert_eq!(r["readings"], 288_000, "{r}");
    assert!(
        r["remote_tasks"].as_u64().unwrap_or(0) > 0,
        "findings crossed: {r}"
    );
    assert!(r["alerts"].as_u64().unwrap_or(0) > 0, "{r}");
}

#[test]
fn a_wrong_cookie_exits_1_and_says_what_to_check() {
    let (_b, addr) = host("ward-b2", "right");
    let out = run(&[
        "node",
        "--name",
        "ward-a2",
        "--cookie",
        "wrong",
        "--connect",
        &addr,
        "--run",
        "scenarios/healthcare.toml",
        "--place",
        "diagnostic=ward-b2",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--cookie"), "{err}");
}

#[test]
fn bad_usage_exits_2() {
    for args in [
        vec![
            "node",
            "--name",
            "x",
            "--cookie",
            "c",
            "--run",
            "scenarios/healthcare.toml",
            "--place",
            "diagnostic",
        ],
        vec![
            "node",
            "--name",
            "x",
            "--cookie",
            "c",
            "--place",
            "diagnostic=y",
        ],
        vec![
            "node",
            "--name",
            "bad name",
            "--cookie",
            "c",
            "--run",
            "scenarios/healthcare.toml",
        ],
        vec![
            "node",
            "--name",
            "x",
            "--cookie",
            "c",
            "--run",
            "scenarios/support.toml",
        ],
        vec![
            "node",
            "--name",
            "x",
            "--cookie",
            "c",
            "--run",
            "tests/data/does-not-exist.toml",
        ],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
