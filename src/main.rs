//! Command line of `kamatera-ca-provider`: parses arguments and calls into the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
use kamatera_ca_provider::config::{self, CloudConfig, ConfigError};
use kamatera_ca_provider::grpc::client::{self as grpc_client, ClientTls};
use kamatera_ca_provider::grpc::tls::{ReloadingTls, TlsFiles};
use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::provider::{Provider, ProviderOptions};
use kamatera_ca_provider::sim::{self, Quota, SeedServer, SimConfig, Timing};
use kamatera_ca_provider::telemetry::{self, LogFormat, Metrics};
use kamatera_ca_provider::{grpc, kamatera};
use prost::Message;

/// Where the restart journal goes unless --state-file says otherwise.
const DEFAULT_STATE_FILE: &str = "/var/lib/kamatera-ca-provider/state.json";

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
        #[arg(long, value_name = "FILE")]
        cloud_config: PathBuf,
        /// Also check the credentials, datacenters and images against the Kamatera API.
        #[arg(long)]
        online: bool,
    },
    /// Serve the externalgrpc CloudProvider API to the cluster-autoscaler.
    Serve(ServeArgs),
    /// Run the Kamatera API simulator alone (a fake cloudcli API for demos and tools).
    Simulator(SimulatorArgs),
    /// Talk to a running provider the way the autoscaler does.
    Client(ClientArgs),
    /// Measure latency, Kamatera API economy and memory against the simulator; writes a report.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Scales to run, as GROUPSxSERVERS_PER_GROUP, comma-separated.
    #[arg(long, default_value = "10x10,100x20,500x20", value_delimiter = ',')]
    scales: Vec<String>,
    /// Calls per read RPC.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Calls in flight at once (the autoscaler makes several).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Where to write the Markdown report.
    #[arg(long, default_value = "BENCHMARKS.md")]
    output: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The Kamatera INI cloud config. With --simulate it is optional (config/example.ini is
    /// built in) and its API URL and credentials are replaced by the simulator's.
    #[arg(long, value_name = "FILE", required_unless_present = "simulate")]
    cloud_config: Option<PathBuf>,
    /// Address of the gRPC server (the autoscaler's cloud-config `address`).
    #[arg(long, default_value = "127.0.0.1:8086")]
    listen: SocketAddr,
    /// Address of the HTTP admin server: /healthz, /readyz, /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    metrics_listen: SocketAddr,
    /// Run against an embedded Kamatera API simulator instead of the real API.
    #[arg(long)]
    simulate: bool,
    /// Server certificate (PEM). Give all three TLS flags for mutual TLS, or none for plaintext.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Private key of the server certificate (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    tls_reload_seconds: u64,
    /// The restart journal (in-flight creates and deletions), written atomically. Default:
    /// /var/lib/kamatera-ca-provider/state.json, or none with --simulate. If it cannot be
    /// written, the provider warns and runs without it.
    #[arg(long, value_name = "FILE", conflicts_with = "state_configmap")]
    state_file: Option<PathBuf>,
    /// The restart journal in a ConfigMap (NAMESPACE/NAME), written optimistically; it outlives
    /// the pod. Default in a cluster (in-cluster service account, no --state-file):
    /// <pod namespace>/kamatera-ca-provider-state-<cluster-name>.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    state_configmap: Option<String>,
    /// Run as one of several replicas: only the holder of a coordination.k8s.io Lease
    /// reconciles, mutates and answers; the others stand by (NOT_SERVING, not ready) and take
    /// over from the ConfigMap journal when the holder is gone. Needs the journal in a ConfigMap.
    #[arg(long)]
    leader_elect: bool,
    /// The Lease (NAMESPACE/NAME). Default: <pod namespace>/kamatera-ca-provider.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    leader_elect_lease: Option<String>,
    /// How long a Lease holds without renewal; the holder stops acting after two thirds of it.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    leader_elect_lease_seconds: u64,
    /// Seconds a create whose outcome is unknown (timeout, 5xx, or on the wire when the process
    /// stopped) waits for its server to appear before it reports CREATE_UNCERTAIN.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    uncertain_create_grace_seconds: u64,
    /// Seconds to let in-flight RPCs finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    shutdown_grace_seconds: u64,
    /// Kubernetes access (labelling the provider's nodes as their templates promise, deleting
    /// Nodes of terminated and parked servers, draining hibernating groups). Without it: the KUBECONFIG variable, else the in-cluster service
    /// account, else none (those features are skipped with a warning). With --simulate only this
    /// flag is used, so a demo never touches the cluster of your current kubeconfig.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args)]
struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8788")]
    listen: SocketAddr,
    /// The AuthClientId the simulator accepts.
    #[arg(long, default_value = sim::DEMO_CLIENT_ID)]
    client_id: String,
    /// The AuthSecret the simulator accepts.
    #[arg(long, default_value = sim::DEMO_SECRET)]
    secret: String,
    /// Start with this many powered-on, untagged servers named seed-<n> (other workloads).
    #[arg(long, default_value_t = 0)]
    seed_servers: u32,
    /// Seed of every random choice; the same seed and requests give the same answers.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Multiply every command duration (create 20 s, power and terminate 5 s) by this.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// Account quota: most servers at once.
    #[arg(long)]
    quota_servers: Option<u32>,
    /// Account quota: most CPU cores in all.
    #[arg(long)]
    quota_cpu: Option<u32>,
    /// Account quota: most RAM in all, in MB.
    #[arg(long)]
    quota_ram_mb: Option<u64>,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The provider's address, as in the autoscaler's cloud-config.
    #[arg(long, default_value = "127.0.0.1:8086")]
    address: String,
    /// Client certificate (PEM), for mutual TLS.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that verifies the server.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Name to verify in the server certificate (default: the host of --address).
    #[arg(long)]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    call: ClientCall,
}

#[derive(Subcommand)]
enum ClientCall {
    /// List node groups with their sizes.
    Groups,
    /// List a node group's instances with state and error.
    Nodes { group: String },
    /// Print a node group's target size.
    Target { group: String },
    /// Ask for N more nodes in a node group.
    Increase { group: String, delta: i32 },
    /// Delete nodes (by providerID, e.g. kamatera://name, or by node name) from a node group.
    Delete {
        group: String,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Print a node group's template node, decoded.
    Template {
        group: String,
        #[arg(long, value_enum, default_value = "yaml")]
        output: Output,
    },
    /// Print a node group's autoscaling options (or that the autoscaler's defaults apply).
    Options { group: String },
    /// Hibernate a node group now (drain, remove its servers, max-size 0) until `resume`.
    Hibernate {
        group: String,
        /// Delete pods that disruption budgets keep from being evicted within the drain timeout.
        #[arg(long)]
        force: bool,
    },
    /// Wake a hibernating node group (during a scheduled window: until the window closes).
    Resume { group: String },
    /// Show schedules and hibernation of every node group.
    Status,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    Yaml,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            cloud_config,
            online: false,
        } => check(&cloud_config),
        Command::Check {
            cloud_config,
            online: true,
        } => run(cli.log_format, check_online(cloud_config)),
        Command::Serve(args) => run(cli.log_format, serve(args)),
        Command::Simulator(args) => run(cli.log_format, simulator(args)),
        Command::Client(args) => run(cli.log_format, client(args)),
        Command::Bench(args) => run(cli.log_format, bench(args)),
    }
}

/// Runs an async command on a multi-threaded runtime; an error prints and exits 1 (2 for a
/// failed check).
fn run(
    format: LogFormat,
    fut: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    telemetry::init_logging(format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(code) => code,
        Err(e) => {
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
    let mut warnings: Vec<String> = config::permission_warning(path, &|k| std::env::var(k).ok())
        .into_iter()
        .collect();
    warnings.extend(config::label_warnings(cfg));
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
    let client = kamatera::Client::new(kamatera::ClientSettings::from_config(&cfg))
        .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
    out!("\nonline checks against {}:", cfg.api_url);
    let mut failed = 0;
    for r in kamatera::preflight(&client, &cfg).await {
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

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let tls_files = TlsFiles::from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)?;
    let tls = match tls_files {
        Some(files) => Some(ReloadingTls::load(files)?),
        None => None,
    };
    let (mut cfg, source) = match &args.cloud_config {
        Some(path) => (
            CloudConfig::load(path).map_err(|e| anyhow::anyhow!("{e}"))?,
            path.display().to_string(),
        ),
        None => (
            CloudConfig::parse(
                "config/example.ini (built in)",
                config::EXAMPLE_CONFIG,
                &|_| None,
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?,
            "config/example.ini (built in)".to_string(),
        ),
    };
    let simulator = if args.simulate {
        let handle = sim::start(SimConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .context("cannot start the embedded simulator")?;
        cfg.api_url = handle.url();
        cfg.api_client_id = sim::DEMO_CLIENT_ID.into();
        cfg.api_secret = config::Secret::new(sim::DEMO_SECRET);
        Some(handle)
    } else {
        None
    };

    let metrics = Arc::new(Metrics::new());
    let client = kamatera::Client::new(kamatera::ClientSettings {
        metrics: metrics.clone(),
        ..kamatera::ClientSettings::from_config(&cfg)
    })
    .map_err(|e| anyhow::anyhow!("{}", e.detail()))?;
    let groups: Vec<String> = cfg
        .node_groups
        .iter()
        .map(|g| format!("{} ({}..{})", g.name, g.min_size, g.max_size))
        .collect();
    let kube = kamatera_ca_provider::kube::connect(args.kubeconfig.as_deref(), !args.simulate)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let parking: Vec<&str> = cfg
        .node_groups
        .iter()
        .filter(|g| g.poweroff_on_scale_down)
        .map(|g| g.name.as_str())
        .collect();
    match &kube {
        Some(k) => tracing::info!(
            source = %k.source(),
            cluster = %k.cluster_url(),
            "Kubernetes access: nodes of the provider's servers get their template's labels, and \
             Nodes of terminated and parked servers are deleted"
        ),
        None if args.simulate => tracing::info!(
            "no Kubernetes access in a simulated run (--kubeconfig gives one): Nodes are not \
             touched, and templates promise only the labels the join scripts set"
        ),
        None if parking.is_empty() => tracing::info!(
            "no Kubernetes access (no --kubeconfig, KUBECONFIG or in-cluster service account): \
             templates promise only the labels the join scripts set; Nodes of terminated \
             servers are not deleted"
        ),
        None => tracing::warn!(
            groups = ?parking,
            "no Kubernetes access (no --kubeconfig, KUBECONFIG or in-cluster service account): \
             parked servers' Nodes stay NotReady in the cluster (the autoscaler counts them as \
             unready and registered); templates promise only the labels the join scripts set"
        ),
    }
    if let Some(path) = &args.cloud_config
        && let Some(w) = config::permission_warning(path, &|k| std::env::var(k).ok())
    {
        tracing::warn!("{w}");
    }
    for w in config::label_warnings(&cfg) {
        tracing::warn!("{w}");
    }
    for g in &cfg.node_groups {
        if g.schedules
            .iter()
            .any(|e| e.min_size.is_some_and(|m| m > g.min_size))
        {
            tracing::info!(group = %g.name,
                "a schedule raises min-size: the autoscaler adds nodes for it only with --enforce-node-group-min-size=true");
        }
        if !g.hibernate.is_empty() && kube.is_none() {
            tracing::warn!(group = %g.name,
                "hibernate windows without Kubernetes access: nodes cannot be drained (force=true removes servers undrained; otherwise they are kept)");
        }
    }
    let api_url = cfg.api_url.clone();
    let in_cluster = kube
        .as_ref()
        .is_some_and(|k| *k.source() == kamatera_ca_provider::kube::Source::InCluster);
    let state_configmap = match (&args.state_configmap, &args.state_file, &kube) {
        (Some(spec), _, Some(k)) => {
            let (ns, name) = spec
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
                .ok_or_else(|| {
                    anyhow::anyhow!("--state-configmap {spec:?}: expected NAMESPACE/NAME")
                })?;
            Some(k.journal_map(ns, name))
        }
        (Some(spec), _, None) => {
            anyhow::bail!(
                "--state-configmap {spec:?} needs Kubernetes access (--kubeconfig, KUBECONFIG or the in-cluster service account)"
            )
        }
        (None, None, Some(k)) if in_cluster && !args.simulate => {
            kamatera_ca_provider::kube::pod_namespace().map(|ns| {
                k.journal_map(
                    &ns,
                    &format!(
                        "kamatera-ca-provider-state-{}",
                        cfg.cluster_name.to_lowercase()
                    ),
                )
            })
        }
        _ => None,
    };
    if let Some(map) = &state_configmap {
        tracing::info!(journal = %map, "the restart journal lives in a ConfigMap");
    }
    let leader_elect = if args.leader_elect {
        let Some(k) = &kube else {
            anyhow::bail!(
                "--leader-elect needs Kubernetes access (--kubeconfig, KUBECONFIG or the in-cluster service account)"
            );
        };
        if state_configmap.is_none() {
            anyhow::bail!(
                "--leader-elect needs the journal in a ConfigMap (--state-configmap): a file would not move to the next holder"
            );
        }
        let (ns, name) = match &args.leader_elect_lease {
            Some(spec) => spec
                .split_once('/')
                .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
                .map(|(ns, name)| (ns.to_string(), name.to_string()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--leader-elect-lease {spec:?}: expected NAMESPACE/NAME")
                })?,
            None => (
                kamatera_ca_provider::kube::pod_namespace().unwrap_or_else(|| "kube-system".into()),
                "kamatera-ca-provider".to_string(),
            ),
        };
        let identity = std::env::var("POD_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| format!("kamatera-ca-provider-{:08x}", rand::random::<u32>()));
        let lock = k.lease(
            &ns,
            &name,
            &identity,
            Duration::from_secs(args.leader_elect_lease_seconds.max(3)),
        );
        tracing::info!(lease = %lock, identity = %identity, "leader election: standing by until the lease is ours");
        Some(Arc::new(lock))
    } else {
        None
    };
    let state_file = match (&args.state_file, args.simulate, &state_configmap) {
        (_, _, Some(_)) => None,
        (Some(p), _, None) => Some(p.clone()),
        (None, true, None) => None,
        (None, false, None) => Some(PathBuf::from(DEFAULT_STATE_FILE)),
    };
    let state_file = state_file.and_then(|p| match kamatera_ca_provider::provider::probe_state_file(&p) {
        Ok(()) => Some(p),
        Err(e) => {
            tracing::warn!(
                path = %p.display(),
                error = %e,
                "cannot write the state file; running without a restart journal (in-flight creates \
                 are then recovered from server names and tags only)"
            );
            None
        }
    });
    let provider = Provider::new(
        cfg,
        client,
        ProviderOptions {
            state_file,
            state_configmap,
            leader_elect: leader_elect.clone(),
            uncertain_create_grace: Duration::from_secs(args.uncertain_create_grace_seconds),
            kube,
            ..ProviderOptions::default()
        },
    );
    if leader_elect.is_none() {
        // With leader election, the replica that acquires the lease restores the journal.
        provider.restore().await;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let hooks = telemetry::AdminHooks {
        metrics: metrics.clone(),
        ready: {
            let p = provider.clone();
            Arc::new(move || p.readiness())
        },
        before_scrape: {
            let p = provider.clone();
            Arc::new(move || p.export_gauges())
        },
    };
    let (admin_addr, admin_task) = telemetry::serve_admin(args.metrics_listen, hooks, stopped())
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_listen))?;

    let mode = if tls.is_some() {
        "mutual TLS"
    } else {
        "plaintext"
    };
    match &simulator {
        Some(sim) => tracing::info!(
            "provider listening on {addr} ({mode}), simulated Kamatera at {} (account state: {}/_sim/state); \
             config {source}; node groups: {}; health and metrics on http://{admin_addr}",
            sim.url(),
            sim.url(),
            groups.join(", ")
        ),
        None => tracing::info!(
            "provider listening on {addr} ({mode}), Kamatera API at {api_url}; config {source}; node groups: {}; \
             health and metrics on http://{admin_addr}",
            groups.join(", ")
        ),
    }
    if tls.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "serving plaintext gRPC on a non-loopback address; use --tls-cert, --tls-key and --tls-client-ca");
    }
    let tls_watcher = tls
        .as_ref()
        .map(|t| t.spawn_watcher(Duration::from_secs(args.tls_reload_seconds.max(1))));

    if leader_elect.is_none() {
        match provider.reconcile().await {
            Ok(r) => tracing::info!(servers = r.listed, "first Kamatera listing done"),
            Err(e) => tracing::warn!(
                error = e.detail(),
                "first Kamatera listing failed; Refresh answers Unavailable until one succeeds"
            ),
        }
    }
    let election = provider.start_leader_election();
    let background = provider.start_background();
    let node_controller = provider.start_node_controller();
    let provider_for_flush = provider.clone();
    let server = tokio::spawn(grpc::serve(
        provider,
        listener,
        grpc::ServeOptions { tls },
        stopped(),
    ));

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    background.abort();
    if let Some(n) = node_controller {
        n.abort();
    }
    if let Some(e) = election {
        e.abort();
    }
    if let Some(w) = tls_watcher {
        w.abort();
    }
    let grace = Duration::from_secs(args.shutdown_grace_seconds);
    match tokio::time::timeout(grace, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(anyhow::anyhow!("gRPC server task failed: {e}")),
        Err(_) => tracing::warn!(
            grace_s = grace.as_secs(),
            "in-flight RPCs did not finish in time"
        ),
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
    if let Err(e) = provider_for_flush.persist().await {
        tracing::warn!(error = %e, "cannot flush the state file");
    }
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    tracing::info!("stopped");
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

async fn simulator(args: SimulatorArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.time_scale.is_finite() && args.time_scale >= 0.0,
        "--time-scale must be a non-negative number"
    );
    let servers = (0..args.seed_servers)
        .map(|i| SeedServer {
            name: format!("seed-{i:04}"),
            datacenter: "US-NY2".into(),
            power_on: true,
            tags: Vec::new(),
            cpu: "2B".into(),
            ram_mb: 4096,
        })
        .collect();
    let handle = sim::start(
        SimConfig {
            client_id: args.client_id.clone(),
            secret: args.secret.clone(),
            seed: args.seed,
            timing: Timing {
                scale: args.time_scale,
                ..Timing::default()
            },
            quota: Quota {
                max_servers: args.quota_servers,
                max_cpu_cores: args.quota_cpu,
                max_ram_mb: args.quota_ram_mb,
            },
            servers,
        },
        args.listen,
    )
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

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let scales = args
        .scales
        .iter()
        .map(|s| {
            let (g, n) = s
                .split_once('x')
                .with_context(|| format!("scale {s:?} is not GROUPSxSERVERS"))?;
            Ok((g.trim().parse()?, n.trim().parse()?))
        })
        .collect::<anyhow::Result<Vec<(usize, usize)>>>()?;
    let opts = kamatera_ca_provider::bench::BenchOptions {
        scales,
        calls: args.calls,
        concurrency: args.concurrency,
    };
    let results = kamatera_ca_provider::bench::run(&opts).await?;
    let command = format!(
        "cargo run --release -- bench --scales {} --calls {} --concurrency {}",
        args.scales.join(","),
        args.calls,
        args.concurrency
    );
    let report = kamatera_ca_provider::bench::render(&results, &opts, &command);
    std::fs::write(&args.output, &report)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    out_part!("{report}");
    Ok(ExitCode::SUCCESS)
}

/// A node argument: a providerID (`scheme://...`) or a node name.
fn node_arg(s: &str) -> pb::ExternalGrpcNode {
    if s.contains("://") {
        pb::ExternalGrpcNode {
            provider_id: s.to_string(),
            ..Default::default()
        }
    } else {
        pb::ExternalGrpcNode {
            name: s.to_string(),
            ..Default::default()
        }
    }
}

async fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    let tls = ClientTls::from_flags(
        args.tls_cert,
        args.tls_key,
        args.tls_ca,
        args.tls_server_name,
    )?;
    if let ClientCall::Hibernate { .. } | ClientCall::Resume { .. } | ClientCall::Status =
        &args.call
    {
        let mut admin = grpc_client::connect_admin(&args.address, tls.as_ref()).await?;
        use kamatera_ca_provider::proto::admin as apb;
        let groups = match &args.call {
            ClientCall::Hibernate { group, force } => vec![
                admin
                    .hibernate(apb::HibernateRequest {
                        group: group.clone(),
                        force: *force,
                    })
                    .await?
                    .into_inner(),
            ],
            ClientCall::Resume { group } => vec![
                admin
                    .resume(apb::GroupRequest {
                        group: group.clone(),
                    })
                    .await?
                    .into_inner(),
            ],
            _ => {
                admin
                    .status(apb::StatusRequest {})
                    .await?
                    .into_inner()
                    .groups
            }
        };
        out_part!("{}", grpc_client::render_status(&groups));
        return Ok(ExitCode::SUCCESS);
    }
    let mut ca = grpc_client::connect(&args.address, tls.as_ref()).await?;
    match args.call {
        ClientCall::Groups => {
            let r = ca.node_groups(pb::NodeGroupsRequest {}).await?.into_inner();
            out_part!("{}", grpc_client::render_groups(&r.node_groups));
        }
        ClientCall::Nodes { group } => {
            let r = ca
                .node_group_nodes(pb::NodeGroupNodesRequest { id: group })
                .await?
                .into_inner();
            out_part!("{}", grpc_client::render_instances(&r.instances));
        }
        ClientCall::Target { group } => {
            let r = ca
                .node_group_target_size(pb::NodeGroupTargetSizeRequest { id: group })
                .await?
                .into_inner();
            out!("{}", r.target_size);
        }
        ClientCall::Increase { group, delta } => {
            ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
                delta,
                id: group.clone(),
            })
            .await?;
            out!("asked node group {group} for {delta} more node(s)");
        }
        ClientCall::Delete { group, nodes } => {
            let n = nodes.len();
            ca.node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
                nodes: nodes.iter().map(|s| node_arg(s)).collect(),
                id: group.clone(),
            })
            .await?;
            out!("deleting {n} node(s) of node group {group}");
        }
        ClientCall::Template { group, output } => {
            let r = ca
                .node_group_template_node_info(pb::NodeGroupTemplateNodeInfoRequest { id: group })
                .await?
                .into_inner();
            let bytes = if r.node_bytes.is_empty() {
                r.legacy_node_info
            } else {
                r.node_bytes
            };
            let node = kamatera_ca_provider::proto::k8s::Node::decode(bytes.as_slice())
                .context("the template node does not decode")?;
            let json = grpc_client::node_json(&node);
            match output {
                Output::Json => out!("{}", serde_json::to_string_pretty(&json)?),
                Output::Yaml => out_part!("{}", grpc_client::to_yaml(&json)),
            }
        }
        ClientCall::Options { group } => {
            let r = ca
                .node_group_get_options(pb::NodeGroupAutoscalingOptionsRequest {
                    id: group.clone(),
                    defaults: None,
                })
                .await?
                .into_inner();
            match r.node_group_autoscaling_options {
                None => out!("node group {group}: the autoscaler's defaults apply"),
                Some(o) => {
                    let d = |d: Option<prost_types::Duration>| {
                        d.map(|d| format!("{}s", d.seconds))
                            .unwrap_or_else(|| "-".into())
                    };
                    out!(
                        "scale-down-utilization-threshold      {}",
                        o.scale_down_utilization_threshold
                    );
                    out!(
                        "scale-down-gpu-utilization-threshold  {}",
                        o.scale_down_gpu_utilization_threshold
                    );
                    out!(
                        "scale-down-unneeded-time              {}",
                        d(o.scale_down_unneeded_duration)
                    );
                    out!(
                        "scale-down-unready-time               {}",
                        d(o.scale_down_unready_duration)
                    );
                    out!(
                        "max-node-provision-time               {}",
                        d(o.max_node_provision_duration)
                    );
                    out!(
                        "zero-or-max-node-scaling              {}",
                        o.zero_or_max_node_scaling
                    );
                    out!(
                        "ignore-daemonsets-utilization         {}",
                        o.ignore_daemon_sets_utilization
                    );
                    out!(
                        "(values not overridden by the group are the autoscaler's defaults this client sent: none, so CA's built-in ones)"
                    );
                }
            }
        }
        // Admin calls were answered above.
        ClientCall::Hibernate { .. } | ClientCall::Resume { .. } | ClientCall::Status => {}
    }
    Ok(ExitCode::SUCCESS)
}
