//! The `echelon` command line: simulate escalation scenarios and validate scenario
//! files.
//!
//! Exit codes: 0 success; 1 the run failed (a hierarchy that cannot be built, an output
//! that cannot be written); 2 bad input or usage (a malformed scenario, a bad flag).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use echelon::sim::{html, simulate, Scenario};

/// A runtime for multi-agent hierarchies on ractor actors, and an escalation simulator.
#[derive(Parser, Debug)]
#[command(name = "echelon", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario on the real runtime under virtual time and print its report.
    ///
    /// The same file and seed give the same counts. A progress bar shows on stderr when
    /// it is a terminal and the run takes more than a second.
    Simulate {
        /// The scenario file (TOML; see scenarios/ and the README).
        file: PathBuf,
        /// Use this seed instead of the file's.
        #[arg(long)]
        seed: Option<u64>,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "OUT")]
        json: Option<PathBuf>,
        /// Also write a self-contained HTML page with charts to this file.
        #[arg(long, value_name = "OUT")]
        html: Option<PathBuf>,
        /// Print only the JSON report to stdout (no text report).
        #[arg(long)]
        quiet: bool,
    },
    /// Check a scenario file: prints "ok" or what is wrong (file, line, field).
    Validate {
        /// The scenario file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => match Scenario::load(&file) {
            Ok(s) => {
                println!(
                    "ok: {} ({:?}, {} tiers, {} simulated)",
                    file.display(),
                    s.model,
                    s.tiers.len(),
                    s.duration
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("echelon: invalid scenario: {e}");
                ExitCode::from(2)
            }
        },
        Command::Simulate {
            file,
            seed,
            json,
            html: html_out,
            quiet,
        } => {
            let scenario = match Scenario::load(&file) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("echelon: invalid scenario: {e}");
                    return ExitCode::from(2);
                }
            };
            let bar = indicatif::ProgressBar::hidden();
            bar.set_length(1000);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} simulating [{bar:40}] {percent}% of simulated time ({elapsed})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let started = Instant::now();
            let mut shown = false;
            let mut progress = |done: f64| {
                if !shown && started.elapsed() > Duration::from_secs(1) {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                    shown = true;
                }
                bar.set_position((done * 1000.0) as u64);
            };
            let report = match simulate(&scenario, seed, &mut progress) {
                Ok(r) => r,
                Err(e) => {
                    bar.finish_and_clear();
                    eprintln!("echelon: the simulation failed: {e}");
                    return ExitCode::from(1);
                }
            };
            bar.finish_and_clear();
            let json_text = match serde_json::to_string_pretty(&report) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("echelon: cannot encode the report: {e}");
                    return ExitCode::from(1);
                }
            };
            if quiet {
                println!("{json_text}");
            } else {
                print!("{}", report.to_text());
            }
            if let Some(path) = json {
                if let Err(e) = std::fs::write(&path, &json_text) {
                    eprintln!("echelon: cannot write {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            if let Some(path) = html_out {
                if let Err(e) = std::fs::write(&path, html::render(&report)) {
                    eprintln!("echelon: cannot write {}: {e}", path.display());
                    return ExitCode::from(1);
                }
            }
            ExitCode::SUCCESS
        }
    }
}
