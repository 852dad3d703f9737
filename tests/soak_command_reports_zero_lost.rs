//! `echelon soak` runs the chaos workload from the command line and prints its
//! accounting; exit 0 only when nothing was lost, refused or failed without a reason.

use std::process::Command;

#[test]
fn soak_prints_zero_lost_and_exits_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_echelon"))
        .args([
            "soak",
            "--tasks",
            "20000",
            "--panic-rate",
            "0.01",
            "--seed",
            "3",
        ])
        .output()
        .expect("run echelon soak");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lost: 0"), "{stdout}");
    assert!(stdout.contains("refused at the door: 0"), "{stdout}");
    assert!(stdout.contains("(0 without a reason)"), "{stdout}");
}

#[test]
fn soak_rejects_a_bad_panic_rate_with_exit_two() {
    let out = Command::new(env!("CARGO_BIN_EXE_echelon"))
        .args(["soak", "--tasks", "10", "--panic-rate", "1.5"])
        .output()
        .expect("run echelon soak");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("panic-rate"));
}
