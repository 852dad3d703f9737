//! The `echelon` command line: simulate escalation scenarios and validate scenario
//! files.
//!
//! Exit codes: 0 success; 1 the run failed (a hierarchy that cannot be built, an output
//! that cannot be written); 2 bad input or usage (a malformed scenario, a bad flag).

/// The binary's allocator: jemalloc (feature `jemalloc`, on by default), where it
/// builds. Spawning and stopping a large hierarchy is allocator-bound, and glibc's
/// malloc makes both about twice as slow (BENCHMARKS.md). The library leaves the
/// choice to the program that uses it.
#[cfg(all(feature = "jemalloc", not(target_env = "msvc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        /// Profiling: only these workloads, e.g. "W1,W2" (W1 ... W7, and W1b for W1
        /// batched).
        #[arg(long, hide = true, value_delimiter = ',')]
        only: Vec<String>,
        /// Profiling: only these ways, e.g. "echelon,ractor".
        #[arg(long, hide = true, value_delimiter = ',')]
        way: Vec<String>,
        /// Profiling: this many repetitions.
        #[arg(long, hide = true)]
        reps: Option<usize>,
        /// Profiling: this size for every selected workload (messages, round trips,
        /// agents, requests, restarts, readings).
        #[arg(long, hide = true)]
        n: Option<u64>,
        /// Profiling: this many timed W5 single-message trips (and as many to warm up).
        #[arg(long, hide = true)]
        trips: Option<usize>,
        /// Internal: run W3 the given way with N agents in this fresh process and print
        /// seconds to spawn cold and warm, resident bytes per agent (idle, then after
        /// each handled one message) and seconds to shut down.
        #[arg(long, hide = true, value_names = ["WAY", "N"], num_args = 2)]
        w3_probe: Vec<String>,
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
    /// Start a cluster node (on ractor_cluster). It hosts the healthcare teams
    /// (healthcare.monitor, healthcare.diagnostic, healthcare.decision) for its peers
    /// until interrupted; with --run it instead runs a healthcare scenario on the wall
    /// clock with the --place'd tiers on peers, prints the report and exits.
    ///
    /// Exit codes: 0 done (or interrupted); 1 the node could not start, a peer could not
    /// be reached for --run, or the run lost tasks; 2 bad input or usage.
    #[cfg(feature = "cluster")]
    Node {
        /// This node's name, unique in the cluster (letters, digits, '-', '_', '.').
        #[arg(long)]
        name: String,
        /// Address to listen on for peers; port 0 picks a free one (printed at start).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// The cluster's shared secret; a peer with another cookie is refused.
        #[arg(long, env = "ECHELON_COOKIE", hide_env_values = true)]
        cookie: String,
        /// A peer to connect to (repeatable); the connection is kept and re-made if it
        /// drops.
        #[arg(long = "connect", value_name = "ADDR")]
        connect: Vec<String>,
        /// Run this healthcare scenario from this node, then exit.
        #[arg(long, value_name = "FILE")]
        run: Option<PathBuf>,
        /// With --run: place a tier on peers, e.g. --place diagnostic=ward-b or
        /// --place diagnostic=ward-b,ward-c (in order of preference). Repeatable.
        #[arg(long = "place", value_name = "TIER=NODE[,NODE...]")]
        place: Vec<String>,
        /// With --run: when no peer of a placed tier is reachable, run it here.
        #[arg(long)]
        fallback_local: bool,
        /// With --run: print the report as JSON.
        #[arg(long)]
        json: bool,
        /// TLS: this node's certificate chain (PEM). With --tls-key and --tls-ca, every
        /// session is encrypted and both ends must present a certificate the CA signed.
        #[arg(long, value_name = "PEM", requires_all = ["tls_key", "tls_ca"])]
        tls_cert: Option<PathBuf>,
        /// TLS: this node's private key (PEM).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// TLS: the CA certificate(s) that sign the cluster's nodes (PEM).
        #[arg(long, value_name = "PEM", requires = "tls_cert")]
        tls_ca: Option<PathBuf>,
        /// TLS: the name the nodes' certificates are issued for.
        #[arg(long, value_name = "NAME", default_value = "echelon-cluster")]
        tls_name: String,
    },
    /// Start a cluster node. This build has no `cluster` feature: the command says how
    /// to get one and exits 2.
    #[cfg(not(feature = "cluster"))]
    Node {
        /// The node's arguments (not read by this build).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
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
            trips,
            w3_probe,
        } => {
            if !w3_probe.is_empty() {
                return w3_probe_cmd(&w3_probe);
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
                    Ok(k @ 1..=7) => cfg.only |= 1 << k,
                    _ => {
                        eprintln!("echelon: --only takes W1, W1b, W2 ... W7, not {w:?}");
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
            cfg.trips = trips;
            if let Some(n) = n {
                cfg.one_way = n;
                cfg.round_trips = n;
                cfg.agents = usize::try_from(n).unwrap_or(usize::MAX);
                cfg.readings = n;
                cfg.broadcasts = n;
                cfg.pipeline = n;
                cfg.restarts = n;
            }
            cfg.fresh_w3 = true;
            bench(cfg, json)
        }
        #[cfg(feature = "cluster")]
        Command::Node {
            name,
            listen,
            cookie,
            connect,
            run,
            place,
            fallback_local,
            json,
            tls_cert,
            tls_key,
            tls_ca,
            tls_name,
        } => node(NodeArgs {
            name,
            listen,
            cookie,
            connect,
            run,
            place,
            fallback_local,
            json,
            tls: tls_cert.map(|c| {
                (
                    c,
                    tls_key.unwrap_or_default(),
                    tls_ca.unwrap_or_default(),
                    tls_name,
                )
            }),
        }),
        #[cfg(not(feature = "cluster"))]
        Command::Node { .. } => {
            eprintln!(
                "echelon: this build has no cluster support (the `cluster` feature is opt-in); \
                 run `cargo run --release --features cluster -- node ...`"
            );
            ExitCode::from(2)
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

/// `bench --w3-probe WAY N`: one W3 measurement in this fresh process.
fn w3_probe_cmd(args: &[String]) -> ExitCode {
    let (Some(way), Some(Ok(n))) = (
        args.first().and_then(|w| echelon::bench::Way::parse(w)),
        args.get(1).map(|n| n.parse::<usize>()),
    ) else {
        eprintln!("echelon: --w3-probe takes a way (tokio, ractor, echelon) and a count");
        return ExitCode::from(2);
    };
    match echelon::bench::w3_probe(way, n) {
        Some([cold, warm, bytes, used, shutdown]) => {
            println!("{cold:.6} {warm:.6} {bytes:.1} {used:.1} {shutdown:.6}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("echelon: the W3 probe could not run");
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
    println!("{}", echelon::bench::build_features());
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

#[cfg(feature = "cluster")]
struct NodeArgs {
    name: String,
    listen: std::net::SocketAddr,
    cookie: String,
    connect: Vec<String>,
    run: Option<PathBuf>,
    place: Vec<String>,
    fallback_local: bool,
    json: bool,
    /// (certificate, key, CA, server name)
    tls: Option<(PathBuf, PathBuf, PathBuf, String)>,
}

/// `TIER=NODE[,NODE...]` → (tier, nodes).
#[cfg(feature = "cluster")]
fn parse_place(arg: &str) -> Result<(String, Vec<String>), String> {
    let (tier, nodes) = arg.split_once('=').ok_or_else(|| {
        format!("--place {arg:?}: expected TIER=NODE[,NODE...], e.g. diagnostic=ward-b")
    })?;
    let nodes: Vec<String> = nodes
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(String::from)
        .collect();
    if tier.trim().is_empty() || nodes.is_empty() {
        return Err(format!(
            "--place {arg:?}: expected TIER=NODE[,NODE...], e.g. diagnostic=ward-b"
        ));
    }
    Ok((tier.trim().to_string(), nodes))
}

#[cfg(feature = "cluster")]
fn node(a: NodeArgs) -> ExitCode {
    use echelon::cluster::{Node, NodeConfig};
    use std::io::Write;

    let mut place = Vec::new();
    for p in &a.place {
        match parse_place(p) {
            Ok(x) => place.push(x),
            Err(e) => {
                eprintln!("echelon: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if !place.is_empty() && a.run.is_none() {
        eprintln!("echelon: --place needs --run FILE");
        return ExitCode::from(2);
    }
    let scenario = match &a.run {
        Some(file) => match Scenario::load(file) {
            Ok(s) if s.healthcare.is_some() => Some(s),
            Ok(_) => {
                eprintln!(
                    "echelon: {}: --run takes a healthcare scenario",
                    file.display()
                );
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("echelon: invalid scenario: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let tls = match &a.tls {
        Some((cert, key, ca, name)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))
            };
            let loaded = read(cert).and_then(|c| Ok((c, read(key)?, read(ca)?)));
            match loaded
                .map_err(echelon::cluster::ClusterError::Tls)
                .and_then(|(c, k, ca)| echelon::cluster::Tls::from_pem(&c, &k, &ca, name))
            {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("echelon: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
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
    rt.block_on(async move {
        let hosted = echelon::sim::cluster::hosted();
        let kinds = hosted.kinds().join(", ");
        let mut cfg = NodeConfig::new(a.name.clone(), a.listen, a.cookie);
        cfg.tls = tls;
        let node = match Node::start(cfg, hosted).await {
            Ok(n) => n,
            Err(echelon::cluster::ClusterError::BadName(n)) => {
                eprintln!("echelon: invalid node name {n:?}: use letters, digits, '-', '_' or '.'");
                return ExitCode::from(2);
            }
            Err(e) => {
                eprintln!("echelon: {e}");
                return ExitCode::from(1);
            }
        };
        println!(
            "node {} listening on {} (hosting {kinds})",
            node.name(),
            node.listen_addr()
        );
        let _ = std::io::stdout().flush();
        for peer in &a.connect {
            match node.connect_and_keep(peer, Duration::from_secs(1)).await {
                Ok(name) => println!("connected to {name} at {peer}"),
                Err(e) if scenario.is_some() => {
                    eprintln!("echelon: {e}");
                    node.stop().await;
                    return ExitCode::from(1);
                }
                Err(e) => eprintln!("echelon: {e} (retrying every second)"),
            }
            let _ = std::io::stdout().flush();
        }
        let Some(s) = scenario else {
            let _ = tokio::signal::ctrl_c().await;
            node.stop().await;
            return ExitCode::SUCCESS;
        };
        let report =
            echelon::sim::cluster::run_healthcare(&node, &s, &place, a.fallback_local).await;
        node.stop().await;
        match report {
            Ok(r) => {
                if a.json {
                    match serde_json::to_string_pretty(&r) {
                        Ok(j) => println!("{j}"),
                        Err(e) => {
                            eprintln!("echelon: cannot write JSON: {e}");
                            return ExitCode::from(1);
                        }
                    }
                } else {
                    println!("{r}");
                }
                if r.lost == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("echelon: the run failed: {e}");
                ExitCode::from(1)
            }
        }
    })
}
