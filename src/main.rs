//! Command line of `kamatera-ca-provider`: parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kamatera_ca_provider::config::{self, CloudConfig, ConfigError};

#[derive(Parser)]
#[command(
    name = "kamatera-ca-provider",
    version,
    about = "Kamatera cloud provider for the Kubernetes cluster-autoscaler (externalgrpc)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a cloud config and print the resolved node groups.
    ///
    /// Exit status: 0 when the config is valid, 2 when it has problems (all are printed).
    Check {
        /// The Kamatera INI cloud config (same format as the in-tree provider).
        #[arg(long, value_name = "FILE")]
        cloud_config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { cloud_config } => check(&cloud_config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match CloudConfig::load(path) {
        Ok(cfg) => {
            print!("{}", config::render_summary(&cfg));
            println!("\n{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}
