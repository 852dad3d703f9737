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
    /// Benchmarks: each workload three ways (raw tokio, raw ractor, echelon), medians
    /// with min and max, and echelon's cost relative to each reference.
    Bench {
        /// Small sizes (seconds, for a smoke run).
        #[arg(long)]
        quick: bool,
        /// Also write the rows as JSON to this file.
        #[arg(long, value_name = "OUT")]
        json: Option<PathBuf>,
        /// Profiling: only these workloads, e.g. "W1,W2" (W1, W1b for W1 batched, W2,
        /// W3, W7).
        #[arg(long, hide = true, value_delimiter = ',')]
        only: Vec<String>,
        /// Profiling: only these ways, e.g. "echelon,ractor".
        #[arg(long, hide = true, value_delimiter = ',')]
        way: Vec<String>,
        /// Profiling: this many repetitions.
        #[arg(long, hide = true)]
        reps: Option<usize>,
        /// Profiling: this size for every selected workload (messages, round trips,
        /// agents, readings).
        #[arg(long, hide = true)]
        n: Option<u64>,
        /// Internal: spawn N agents the given way in this fresh process and print the
        /// growth of resident memory per agent (W3 bytes per agent).
        #[arg(long, hide = true, value_names = ["WAY", "N"], num_args = 2)]
        rss_probe: Vec<String>,
    },
    /// Chaos soak: push tasks through a three-level hierarchy and a pipeline with a
    /// broadcast stage while handlers panic at random and one team keeps failing past
    /// its restart intensity; print the accounting (lost must be 0).
    Soak {
        /// How many tasks.
        #[arg(long, default_value_t = 1_000_000)]
        tasks: u64,
        /// Probability that a handler call panics.
        #[arg(long, default_value_t = 0.01)]
        panic_rate: f64,
        /// Seed for the panics and the workload.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench {
            quick,
            json,
            only,
            way,
            reps,
            n,
            rss_probe,
        } => {
            if !rss_probe.is_empty() {
                return rss_probe_cmd(&rss_probe);
            }
            let mut cfg = if quick {
                echelon::bench::BenchConfig::quick()
            } else {
                echelon::bench::BenchConfig::full()
            };
            for w in &only {
                let w = w.trim();
                if w.eq_ignore_ascii_case("W1b") {
                    cfg.only |= 1 << echelon::bench::W1_BATCHED;
                    continue;
                }
                match w.trim_start_matches(['W', 'w']).parse::<u32>() {
                    Ok(k @ (1 | 2 | 3 | 7)) => cfg.only |= 1 << k,
                    _ => {
                        eprintln!("echelon: --only takes W1, W1b, W2, W3 or W7, not {w:?}");
                        return ExitCode::from(2);
                    }
                }
            }
            for w in &way {
                match echelon::bench::Way::parse(w.trim()) {
                    Some(k) => cfg.ways |= 1 << k as u8,
                    None => {
                        eprintln!("echelon: --way takes tokio, ractor or echelon, not {w:?}");
                        return ExitCode::from(2);
                    }
                }
            }
            if let Some(r) = reps {
                cfg.reps = r.max(1);
            }
            if let Some(n) = n {
                cfg.one_way = n;
                cfg.round_trips = n;
                cfg.agents = usize::try_from(n).unwrap_or(usize::MAX);
                cfg.readings = n;
            }
            cfg.fresh_rss = true;
            bench(cfg, json)
        }
        Command::Soak {
            tasks,
            panic_rate,
            seed,
            json,
        } => soak(tasks, panic_rate, seed, json),
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

fn soak(tasks: u64, panic_rate: f64, seed: u64, json: bool) -> ExitCode {
    if !(0.0..=1.0).contains(&panic_rate) {
        eprintln!("echelon: --panic-rate {panic_rate} must be between 0 and 1");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echelon: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let cfg = echelon::soak::SoakConfig {
        tasks,
        panic_rate,
        seed,
        ..Default::default()
    };
    let report = match rt.block_on(echelon::soak::run(&cfg)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("echelon: the soak could not start: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        match serde_json::to_string_pretty(&report) {
            Ok(t) => println!("{t}"),
            Err(e) => {
                eprintln!("echelon: cannot encode the report: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        let (c, e, f) = report.outcomes;
        let h = report.hierarchy;
        let p = report.pipeline;
        println!(
            "soak: {} tasks, panic rate {panic_rate}, seed {seed}, {:.1}s",
            report.tasks, report.seconds
        );
        println!(
            "callers saw: {c} completed, {e} escalated, {f} failed ({} without a reason)",
            report.failures_without_reason
        );
        println!(
            "hierarchy: submitted {} = completed {} + escalated {} + failed {}; restarts {}, failure escalations {}, rejected {}",
            h.submitted, h.completed, h.escalated, h.failed, h.restarts, h.failure_escalations, h.rejected
        );
        println!(
            "pipeline:  submitted {} = completed {} + escalated {} + failed {}; restarts {}",
            p.submitted, p.completed, p.escalated, p.failed, p.restarts
        );
        println!(
            "memory: {} kB resident before, {} kB after the drain",
            report.rss_before_kb, report.rss_after_kb
        );
        for f in &report.failures {
            println!("FAILED: {f}");
        }
        println!("refused at the door: {}", report.refused);
        println!("lost: {}", report.lost);
    }
    if report.lost == 0 && report.failures_without_reason == 0 && report.refused == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `bench --rss-probe WAY N`: one W3 memory measurement in this fresh process.
fn rss_probe_cmd(args: &[String]) -> ExitCode {
    let (Some(way), Some(Ok(n))) = (
        args.first().and_then(|w| echelon::bench::Way::parse(w)),
        args.get(1).map(|n| n.parse::<usize>()),
    ) else {
        eprintln!("echelon: --rss-probe takes a way (tokio, ractor, echelon) and a count");
        return ExitCode::from(2);
    };
    match echelon::bench::rss_probe(way, n) {
        Some(bytes) => {
            println!("{bytes:.1}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("echelon: the rss probe could not run");
            ExitCode::from(1)
        }
    }
}

fn bench(cfg: echelon::bench::BenchConfig, json: Option<PathBuf>) -> ExitCode {
    // two workers: the reference figures in the brief were measured that way
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echelon: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // run on a worker thread, not in block_on's future, so wake-ups stay on the pool
    let rows = match rt.block_on(async { tokio::spawn(echelon::bench::run(cfg)).await }) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("echelon: the benchmark task failed: {e}");
            return ExitCode::from(1);
        }
    };
    print!("{}", echelon::bench::table(&rows));
    if let Some(path) = json {
        let text = match serde_json::to_string_pretty(&rows) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("echelon: cannot encode the rows: {e}");
                return ExitCode::from(1);
            }
        };
        if let Err(e) = std::fs::write(&path, text) {
            eprintln!("echelon: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}
