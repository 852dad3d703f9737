//! The `echelon` command line. Subcommands (`simulate`, `validate`, `bench`, `soak`,
//! `node`) arrive with the simulator, benchmark and cluster work; today it prints its
//! version and usage.

fn main() {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        None | Some("--help") | Some("-h") => {
            println!(
                "echelon {}\n\nA runtime for multi-agent systems on ractor actors.\n\n\
                 usage: echelon --version\n\n\
                 Run the three-level example: cargo run --example hierarchy",
                env!("CARGO_PKG_VERSION")
            );
        }
        Some("--version") | Some("-V") => println!("echelon {}", env!("CARGO_PKG_VERSION")),
        Some(other) => {
            eprintln!("echelon: unknown command {other:?}; see echelon --help");
            std::process::exit(2);
        }
    }
}
