//! W5 alone: `cargo run --release --example w5_only [-- quick]`, or one implementation
//! once, for profiling: `w5_only echelon 20000`.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if let (Some(which), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse().ok())) {
        let which = which.clone();
        let r = rt
            .block_on(async move {
                tokio::spawn(async move { echelon::bench::w5_once(&which, n).await }).await
            })
            .expect("w5");
        println!("{r:?}");
        return;
    }
    let cfg = if args.iter().any(|a| a == "quick") {
        echelon::bench::BenchConfig::quick()
    } else {
        echelon::bench::BenchConfig::full()
    };
    let rows = rt
        .block_on(async { tokio::spawn(async move { echelon::bench::w5_rows(&cfg).await }).await })
        .expect("w5");
    print!("{}", echelon::bench::table(&rows));
}
