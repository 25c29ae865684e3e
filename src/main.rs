//! Command line of `kamatera-ca-provider`: parses arguments and calls into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `println!` that ends the process quietly when standard output is closed (`check ... | head
/// -1`), instead of panicking on the broken pipe.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            quiet_exit_on_closed_pipe(e);
        }
    }};
}

/// `print!`, likewise.
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            quiet_exit_on_closed_pipe(e);
        }
    }};
}

fn quiet_exit_on_closed_pipe(e: std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
}

use anyhow::Context;
use clap::{Parser, Subcommand};
use kamatera_ca_provider::app::{App, Settings};
use kamatera_ca_provider::config::{self, CloudConfig, ConfigError};
use kamatera_ca_provider::grpc::command::{self as client_command, ClientArgs};
use kamatera_ca_provider::kamatera;
use kamatera_ca_provider::sim::{self, SimulatorArgs};
use kamatera_ca_provider::telemetry::{self, LogFormat};

#[derive(Parser)]
#[command(
    name = "kamatera-ca-provider",
    version,
    about = "Kamatera cloud provider for the Kubernetes cluster-autoscaler (externalgrpc)"
)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line. The filter comes from
    /// RUST_LOG (default: warn,kamatera_ca_provider=info).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
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
        #[arg(long, value_name = "FILE", required_unless_present = "keys")]
        cloud_config: Option<PathBuf>,
        /// Also check the credentials, datacenters and images against the Kamatera API.
        #[arg(long)]
        online: bool,
        /// Print every key the cloud config takes (Markdown table) and exit.
        #[arg(long, conflicts_with_all = ["cloud_config", "online"])]
        keys: bool,
    },
    /// Serve the externalgrpc CloudProvider API to the cluster-autoscaler.
    Serve(Settings),
    /// Run the Kamatera API simulator alone (a fake cloudcli API for demos and tools).
    Simulator(SimulatorArgs),
    /// Talk to a running provider the way the autoscaler does.
    Client(ClientArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { keys: true, .. }
        | Command::Check {
            cloud_config: None, ..
        } => {
            out_part!("{}", config::key_reference());
            ExitCode::SUCCESS
        }
        Command::Check {
            cloud_config: Some(path),
            online: false,
            ..
        } => check(&path),
        Command::Check {
            cloud_config: Some(path),
            online: true,
            ..
        } => run(cli.log_format, check_online(path)),
        Command::Serve(args) => run(cli.log_format, serve(args)),
        Command::Simulator(args) => run(cli.log_format, simulator(args)),
        Command::Client(args) => run(cli.log_format, client(args)),
    }
}

/// Runs an async command on a multi-threaded runtime; an error prints and exits 1 (2 for a
/// failed check).
fn run(
    format: LogFormat,
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    telemetry::init_logging(format);
    match kamatera_ca_provider::app::block_on(fut) {
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> Result<CloudConfig, ExitCode> {
    match CloudConfig::load(path) {
        Ok(cfg) => Ok(cfg),
        Err(e @ ConfigError::Read { .. }) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(2))
        }
        Err(e) => {
            eprintln!("{e}");
            Err(ExitCode::from(2))
        }
    }
}

fn check(path: &Path) -> ExitCode {
    match load(path) {
        Ok(cfg) => {
            out_part!("{}", config::render_summary(&cfg));
            print_warnings(path, &cfg);
            out!("\n{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The warnings after the summary (a valid config may still need a look): a config file others
/// can read while it holds the API secret, labels and taints.
fn print_warnings(path: &Path, cfg: &CloudConfig) {
    let warnings = config::warnings(cfg, Some(path), &|k| std::env::var(k).ok());
    if !warnings.is_empty() {
        out!();
    }
    for w in warnings {
        out!("warning: {w}");
    }
}

async fn check_online(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = match load(&path) {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    out_part!("{}", config::render_summary(&cfg));
    print_warnings(&path, &cfg);
    let client = kamatera::Client::new(kamatera_ca_provider::app::client_settings(
        &cfg,
        std::sync::Arc::new(telemetry::Metrics::new()),
    ))
    .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
    out!("\nonline checks against {}:", cfg.api_url);
    let mut failed = 0;
    let placements: Vec<kamatera::Placement<'_>> = cfg
        .node_groups
        .iter()
        .map(|g| kamatera::Placement {
            group: &g.name,
            datacenter: &g.server.datacenter,
            image: &g.server.image,
        })
        .collect();
    for r in kamatera::preflight(&client, &placements).await {
        match &r.outcome {
            Ok(detail) => out!("  ok    {:<16} {:<12} {detail}", r.subject, r.what),
            Err(problem) => {
                failed += 1;
                out!("  FAIL  {:<16} {:<12} {problem}", r.subject, r.what);
            }
        }
    }
    if failed == 0 {
        out!("\n{}: OK (online)", path.display());
        Ok(ExitCode::SUCCESS)
    } else {
        out!("\n{}: {failed} online check(s) failed", path.display());
        Ok(ExitCode::from(2))
    }
}

/// `serve`: the provider until SIGTERM or Ctrl-C.
async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    App::build(settings).await?.run(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down: no new connections, finishing in-flight RPCs");
}

/// `simulator`: the fake Kamatera API alone, until SIGTERM or Ctrl-C.
async fn simulator(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    let handle = sim::start(args.config()?, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    out!("Kamatera API simulator listening on {}", handle.url());
    out!(
        "  credentials: AuthClientId: {}  AuthSecret: {}",
        args.client_id,
        args.secret
    );
    out!(
        "  try: curl -s -H 'AuthClientId: {}' -H 'AuthSecret: {}' {}/service/servers",
        args.client_id,
        args.secret,
        handle.url()
    );
    out!("  state: {}/_sim/state   (Ctrl-C to stop)", handle.url());
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// `client`: one call to a running provider, printed.
async fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let printed = client_command::run(args).await?;
    for note in &printed.stderr {
        eprintln!("{note}");
    }
    out_part!("{}", printed.stdout);
    Ok(ExitCode::SUCCESS)
}
