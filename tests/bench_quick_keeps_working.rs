//! `echelon bench --quick` runs every workload three ways and writes its rows; this
//! keeps the benchmark command from rotting (it measures nothing about speed: targets
//! are met in benchmarks, not tests).

use std::process::Command;

#[test]
fn bench_quick_prints_every_workload_and_writes_json() {
    let dir = std::env::temp_dir().join(format!("echelon-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let out_json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_echelon"))
        .args(["bench", "--quick", "--json"])
        .arg(&out_json)
        .output()
        .expect("run echelon bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in ["W1", "W2", "W3", "W4", "W5", "W6", "W7"] {
        assert!(stdout.contains(w), "{w} missing:\n{stdout}");
    }
    let rows: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out_json).expect("json written"))
            .expect("valid json");
    let rows = rows.as_array().expect("an array of rows");
    assert!(rows.len() >= 6);
    for r in rows {
        let e = &r["echelon"];
        assert!(e.is_array(), "every workload measures echelon: {r}");
        assert!(e[1].as_f64().is_some_and(|m| m >= 0.0), "{r}");
        // W3 runs in fresh processes (the binary re-executed): all three ways report
        if r["name"].as_str().is_some_and(|n| n.starts_with("W3")) {
            for way in ["tokio", "ractor", "echelon"] {
                assert!(r[way][1].as_f64().is_some_and(|m| m > 0.0), "{way}: {r}");
            }
        }
    }
    for w3 in ["cold", "warm", "bytes", "after one message", "shut down"] {
        assert!(
            rows.iter().any(|r| r["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("W3") && n.contains(w3))),
            "W3 {w3} row missing"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
