//! `kamatera-ca-bench`: speed, Kamatera API economy and memory of the provider against the
//! simulator, written to BENCHMARKS.md. A developer tool, kept out of the operator's binary:
//!
//! ```text
//! cargo run --release --bin kamatera-ca-bench -- --scales 10x10,100x20,500x20
//! ```

mod bench;
mod child;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kamatera_ca_provider::app::{App, Settings};
use kamatera_ca_provider::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "kamatera-ca-bench",
    version,
    about = "Measure the Kamatera provider against the simulator and write BENCHMARKS.md",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Scales to run, as GROUPSxSERVERS_PER_GROUP, comma-separated.
    #[arg(long, default_value = "10x10,100x20,500x20", value_delimiter = ',')]
    scales: Vec<String>,
    /// Calls per read RPC.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Calls in flight at once (the autoscaler makes several).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Where to write the Markdown report (default: the project's BENCHMARKS.md).
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Inner>,
}

#[derive(Subcommand)]
enum Inner {
    /// The provider under measurement (started by the benchmark itself).
    #[command(hide = true)]
    Serve(Settings),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init_logging(LogFormat::Text);
    let outcome = kamatera_ca_provider::app::block_on(async {
        match cli.command {
            Some(Inner::Serve(settings)) => serve(settings).await,
            None => measure(cli).await,
        }
    })
    .unwrap_or_else(|e| Err(format!("cannot start the async runtime: {e}")));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> Result<(), String> {
    let app = App::build(settings).await.map_err(|e| e.to_string())?;
    app.run(std::future::pending())
        .await
        .map_err(|e| e.to_string())
}

async fn measure(cli: Cli) -> Result<(), String> {
    let scales = cli
        .scales
        .iter()
        .map(|s| {
            let parsed = s
                .split_once('x')
                .and_then(|(g, n)| Some((g.trim().parse().ok()?, n.trim().parse().ok()?)));
            parsed.ok_or_else(|| format!("scale {s:?} is not GROUPSxSERVERS"))
        })
        .collect::<Result<Vec<(usize, usize)>, String>>()?;
    let opts = bench::BenchOptions {
        scales,
        calls: cli.calls,
        concurrency: cli.concurrency,
    };
    let report = bench::run(&opts).await.map_err(|e| e.to_string())?;
    let command = format!(
        "cargo run --release --bin kamatera-ca-bench -- --scales {} --calls {} --concurrency {}",
        cli.scales.join(","),
        cli.calls,
        cli.concurrency
    );
    let report = bench::render(&report, &opts, &command);
    let output = cli
        .output
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md"));
    std::fs::write(&output, &report)
        .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    print!("{report}");
    Ok(())
}
