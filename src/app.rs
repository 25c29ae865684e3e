//! A serving provider, assembled and shut down in one place.
//!
//! [`App::build`] turns the `serve` flags ([`Settings`]) into running parts: the cloud config,
//! the Kamatera client (or an embedded simulator), Kubernetes access, where the restart journal
//! lives, leader election, the provider with its journal restored, the admin server (health,
//! readiness, metrics) and the bound gRPC listener. [`App::run`] does the first reconcile, starts
//! the background loops and the gRPC server, and on shutdown drains in-flight RPCs and flushes the
//! journal. `main` and the tests both go through these two calls.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{self, CloudConfig};
use crate::grpc::tls::{ReloadingTls, TlsError, TlsFiles};
use crate::provider::{Provider, ProviderOptions};
use crate::sim::{self, SimConfig, SimHandle};
use crate::telemetry::{self, Metrics};
use crate::{grpc, kamatera, kube};

/// Where the restart journal goes unless `--state-file` or a ConfigMap says otherwise.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/kamatera-ca-provider/state.json";

/// What the built-in example config calls itself in logs and errors.
const EXAMPLE_SOURCE: &str = "config/example.ini (built in)";

/// The `serve` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// The Kamatera INI cloud config. With --simulate it is optional (config/example.ini is
    /// built in) and its API URL and credentials are replaced by the simulator's.
    #[arg(long, value_name = "FILE", required_unless_present = "simulate")]
    pub cloud_config: Option<PathBuf>,
    /// Address of the gRPC server (the autoscaler's cloud-config `address`).
    #[arg(long, default_value = "127.0.0.1:8086")]
    pub listen: SocketAddr,
    /// Address of the HTTP admin server: /healthz, /readyz, /metrics.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub metrics_listen: SocketAddr,
    /// Run against an embedded Kamatera API simulator instead of the real API.
    #[arg(long)]
    pub simulate: bool,
    /// Server certificate (PEM). Give all three TLS flags for mutual TLS, or none for plaintext.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the server certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must chain to.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub tls_reload_seconds: u64,
    /// The restart journal (in-flight creates and deletions), written atomically. Default:
    /// /var/lib/kamatera-ca-provider/state.json, or none with --simulate. If it cannot be
    /// written, the provider warns and runs without it.
    #[arg(long, value_name = "FILE", conflicts_with = "state_configmap")]
    pub state_file: Option<PathBuf>,
    /// The restart journal in a ConfigMap (NAMESPACE/NAME), written optimistically; it outlives
    /// the pod. Default in a cluster (in-cluster service account, no --state-file):
    /// <pod namespace>/kamatera-ca-provider-state-<cluster-name>.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub state_configmap: Option<String>,
    /// Run as one of several replicas: only the holder of a coordination.k8s.io Lease
    /// reconciles, mutates and answers; the others stand by (NOT_SERVING, not ready) and take
    /// over from the ConfigMap journal when the holder is gone. Needs the journal in a ConfigMap.
    #[arg(long)]
    pub leader_elect: bool,
    /// The Lease (NAMESPACE/NAME). Default: <pod namespace>/kamatera-ca-provider.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    pub leader_elect_lease: Option<String>,
    /// How long a Lease holds without renewal; the holder stops acting after two thirds of it.
    #[arg(long, value_name = "SECONDS", default_value_t = 15)]
    pub leader_elect_lease_seconds: u64,
    /// Seconds a create whose outcome is unknown (timeout, 5xx, or on the wire when the process
    /// stopped) waits for its server to appear before it reports CREATE_UNCERTAIN.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub uncertain_create_grace_seconds: u64,
    /// How often the cloud config file is checked for changes (SIGHUP checks at once); a
    /// changed file is validated as `check` does and swapped in between reconciles, or refused
    /// whole (the previous config stays). 0 turns the check off (SIGHUP still works).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub config_reload_seconds: u64,
    /// Seconds to let in-flight RPCs finish after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub shutdown_grace_seconds: u64,
    /// Kubernetes access (labelling the provider's nodes as their templates promise, deleting
    /// Nodes of terminated and parked servers, draining hibernating groups). Without it: the
    /// KUBECONFIG variable, else the in-cluster service account, else none (those features are
    /// skipped with a warning). With --simulate only this flag is used, so a demo never touches
    /// the cluster of your current kubeconfig.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Parser)]
#[command(name = "serve", no_binary_name = true)]
struct ServeFlags {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// Settings from `serve` flags as an operator writes them (without `serve` itself).
    pub fn from_flags<I, T>(flags: I) -> Result<Settings, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        ServeFlags::try_parse_from(flags).map(|f| f.settings)
    }
}

/// Why the provider could not start or stopped with a failure. Each message carries its cause;
/// none is repeated as a `source`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(config::ConfigError),
    #[error("{0}")]
    Tls(TlsError),
    #[error("cannot start the embedded simulator: {0}")]
    Simulator(std::io::Error),
    #[error("{0}")]
    Kamatera(String),
    #[error("{0}")]
    Kube(kube::KubeError),
    /// A flag that cannot work as given (with the flag's name in the text).
    #[error("{0}")]
    Flag(String),
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error("{0}")]
    Serve(grpc::ServeError),
    #[error("gRPC server task failed: {0}")]
    Task(tokio::task::JoinError),
}

/// A provider ready to serve: everything bound and restored, nothing reconciled yet.
pub struct App {
    provider: Provider,
    listener: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    tls: Option<Arc<ReloadingTls>>,
    tls_reload: Duration,
    simulator: Option<SimHandle>,
    leader_elect: bool,
    shutdown_grace: Duration,
    /// The cloud config file watched for changes, how often, and the figures of the clients a
    /// reload builds.
    watch: Option<ConfigWatch>,
}

/// What the config watcher needs.
struct ConfigWatch {
    path: PathBuf,
    every: Option<Duration>,
    /// The embedded simulator's URL: a reloaded config is pointed at it as the first one was.
    simulated: Option<String>,
    metrics: Arc<Metrics>,
}

impl App {
    /// Loads the config, connects what the flags ask for, restores the journal and binds both
    /// servers. The admin server answers from here on (not ready until the first listing).
    pub async fn build(settings: Settings) -> Result<App, AppError> {
        let tls = match TlsFiles::from_flags(
            settings.tls_cert.clone(),
            settings.tls_key.clone(),
            settings.tls_client_ca.clone(),
        )
        .map_err(AppError::Tls)?
        {
            Some(files) => Some(ReloadingTls::load(files).map_err(AppError::Tls)?),
            None => None,
        };
        let (mut cfg, source) = match &settings.cloud_config {
            Some(path) => (
                CloudConfig::load(path).map_err(AppError::Config)?,
                path.display().to_string(),
            ),
            // The built-in example is only ever pointed at the embedded simulator.
            None if !settings.simulate => {
                return Err(AppError::Flag(
                    "--cloud-config is required without --simulate".into(),
                ));
            }
            None => (
                CloudConfig::parse(EXAMPLE_SOURCE, config::EXAMPLE_CONFIG, &|_| None)
                    .map_err(AppError::Config)?,
                EXAMPLE_SOURCE.to_string(),
            ),
        };
        let simulator = if settings.simulate {
            let handle = sim::start(SimConfig::default(), SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(AppError::Simulator)?;
            simulated(&mut cfg, &handle.url());
            Some(handle)
        } else {
            None
        };
        let sim_url = simulator.as_ref().map(SimHandle::url);

        let metrics = Arc::new(Metrics::new());
        let client = kamatera::Client::new(client_settings(&cfg, metrics.clone()))
            .map_err(|e| AppError::Kamatera(e.detail().to_string()))?;
        let kube = kube::connect(settings.kubeconfig.as_deref(), !settings.simulate)
            .await
            .map_err(AppError::Kube)?;
        log_kube_access(&cfg, kube.as_ref(), settings.simulate);
        log_config_warnings(&settings, &cfg, kube.is_some());

        let state_configmap = journal_map(&settings, &cfg, kube.as_ref())?;
        if let Some(map) = &state_configmap {
            tracing::info!(journal = %map, "the restart journal lives in a ConfigMap");
        }
        let leader_elect = lease(&settings, kube.as_ref(), state_configmap.is_some())?;
        let state_file = state_file(&settings, state_configmap.is_some());
        let groups: Vec<String> = cfg
            .node_groups
            .iter()
            .map(|g| format!("{} ({}..{})", g.name, g.min_size, g.max_size))
            .collect();
        let api_url = cfg.api_url.clone();
        let provider = Provider::new(
            cfg,
            client,
            ProviderOptions {
                state_file,
                state_configmap,
                leader_elect: leader_elect.clone(),
                uncertain_create_grace: Duration::from_secs(
                    settings.uncertain_create_grace_seconds,
                ),
                own_pod: kube.as_ref().and_then(|_| kube::own_pod()),
                kube,
                ..ProviderOptions::default()
            },
        );
        if leader_elect.is_none() {
            // With leader election, the replica that acquires the lease restores the journal.
            provider.restore().await;
        }
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|error| AppError::Listen {
                addr: settings.listen,
                error,
            })?;
        let grpc_addr = listener.local_addr().map_err(|error| AppError::Listen {
            addr: settings.listen,
            error,
        })?;

        let (stop, _) = watch::channel(false);
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
        let (admin_addr, admin_task) =
            telemetry::serve_admin(settings.metrics_listen, hooks, stopped(&stop))
                .await
                .map_err(|error| AppError::Listen {
                    addr: settings.metrics_listen,
                    error,
                })?;

        let mode = if tls.is_some() {
            "mutual TLS"
        } else {
            "plaintext"
        };
        let groups = groups.join(", ");
        match &simulator {
            Some(sim) => tracing::info!(
                "provider listening on {grpc_addr} ({mode}), simulated Kamatera at {} (account state: {}/_sim/state); \
                 config {source}; node groups: {groups}; health and metrics on http://{admin_addr}",
                sim.url(),
                sim.url(),
            ),
            None => tracing::info!(
                "provider listening on {grpc_addr} ({mode}), Kamatera API at {api_url}; config {source}; \
                 node groups: {groups}; health and metrics on http://{admin_addr}",
            ),
        }
        if tls.is_none() && !grpc_addr.ip().is_loopback() {
            tracing::warn!(addr = %grpc_addr, "serving plaintext gRPC on a non-loopback address; use --tls-cert, --tls-key and --tls-client-ca");
        }
        Ok(App {
            provider,
            listener,
            grpc_addr,
            admin_addr,
            admin_task,
            stop,
            tls,
            tls_reload: Duration::from_secs(settings.tls_reload_seconds.max(1)),
            simulator,
            leader_elect: leader_elect.is_some(),
            shutdown_grace: Duration::from_secs(settings.shutdown_grace_seconds),
            watch: settings.cloud_config.clone().map(|path| ConfigWatch {
                path,
                every: (settings.config_reload_seconds > 0)
                    .then(|| Duration::from_secs(settings.config_reload_seconds)),
                simulated: sim_url.clone(),
                metrics: metrics.clone(),
            }),
        })
    }

    /// The bound gRPC address (the port is real when `--listen` asked for 0).
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound admin address (`/healthz`, `/readyz`, `/metrics`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The embedded simulator of a `--simulate` run.
    pub fn simulator(&self) -> Option<&SimHandle> {
        self.simulator.as_ref()
    }

    /// Serves until `shutdown` resolves: the first listing (unless a lease decides who lists),
    /// the background reconcile, leader election, the node controller, TLS reloads and the gRPC
    /// server. Then stops accepting, lets in-flight RPCs finish within the grace, and flushes the
    /// journal. A gRPC server that fails before `shutdown` ends the run the same way, with its
    /// error.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let App {
            provider,
            listener,
            admin_task,
            stop,
            tls,
            tls_reload,
            simulator,
            leader_elect,
            shutdown_grace,
            watch,
            ..
        } = self;
        let tls_watcher = tls.as_ref().map(|t| t.spawn_watcher(tls_reload));
        let config_watcher = watch.map(|w| tokio::spawn(watch_config(provider.clone(), w)));
        if !leader_elect {
            match provider.reconcile().await {
                Ok(r) => tracing::info!(servers = r.listed, "first Kamatera listing done"),
                Err(e) => tracing::warn!(
                    error = e.detail(),
                    "first Kamatera listing failed; Refresh answers Unavailable until one succeeds"
                ),
            }
        }
        let tasks: Vec<JoinHandle<()>> = [
            provider.start_leader_election(),
            Some(provider.start_background()),
            provider.start_node_controller(),
            tls_watcher,
            config_watcher,
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut server = tokio::spawn(grpc::serve(
            provider.clone(),
            listener,
            grpc::ServeOptions { tls },
            stopped(&stop),
        ));

        // Until shutdown, or until the gRPC server ends on its own (it failed): then the
        // process stops too rather than run on answering nothing.
        let ended = tokio::select! {
            _ = shutdown => None,
            r = &mut server => Some(r),
        };
        let _ = stop.send(true);
        for t in &tasks {
            t.abort();
        }
        let served = match ended {
            Some(r) => Ok(r),
            None => tokio::time::timeout(shutdown_grace, server).await,
        };
        let outcome = match served {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(AppError::Serve(e)),
            Ok(Err(e)) => Err(AppError::Task(e)),
            Err(_) => {
                tracing::warn!(
                    grace_s = shutdown_grace.as_secs(),
                    "in-flight RPCs did not finish in time"
                );
                Ok(())
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), admin_task).await;
        if let Err(e) = provider.persist().await {
            tracing::warn!(error = %e, "cannot flush the state file");
        }
        if let Some(sim) = simulator {
            sim.shutdown().await;
        }
        if outcome.is_ok() {
            tracing::info!("stopped");
        }
        outcome
    }
}

/// Points a config at the embedded simulator (its URL and demo credentials).
fn simulated(cfg: &mut CloudConfig, url: &str) {
    cfg.api_url = url.to_string();
    cfg.api_client_id = sim::DEMO_CLIENT_ID.into();
    cfg.api_secret = config::Secret::new(sim::DEMO_SECRET);
}

/// A config error in one line for `/readyz`, `client status` and the Event: its first
/// problems (config errors quote no secret, see `config::shown`), and how many more the log has.
fn refusal_summary(text: &str) -> String {
    const SHOWN: usize = 3;
    let problems: Vec<&str> = text
        .lines()
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if problems.is_empty() {
        return text.trim().to_string();
    }
    let mut out = problems[..problems.len().min(SHOWN)].join("; ");
    if problems.len() > SHOWN {
        out.push_str(&format!(
            "; and {} more (see the log)",
            problems.len() - SHOWN
        ));
    }
    out
}

/// Watches the cloud config file (on its period, and at once on SIGHUP): a changed file is
/// loaded and validated exactly as `check` does, then swapped in by `Provider::reload` with a
/// new client when the API URL, credentials or timeouts changed; a file that does not validate
/// is refused whole, logged with every problem, and the previous config stays.
async fn watch_config(provider: Provider, w: ConfigWatch) {
    let mut last = std::fs::read(&w.path).ok();
    let mut tick = w.every.map(tokio::time::interval);
    if let Some(t) = tick.as_mut() {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t.tick().await; // the first tick is at once
    }
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let periodic = async {
            match tick.as_mut() {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(unix)]
        let hangup = async {
            match hup.as_mut() {
                Some(h) => {
                    h.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        let forced = tokio::select! {
            _ = periodic => false,
            _ = hangup => true,
        };
        let now = std::fs::read(&w.path).ok();
        if now == last && !forced {
            continue;
        }
        last = now;
        match CloudConfig::load(&w.path) {
            Err(e) => {
                let text = e.to_string();
                tracing::warn!(path = %w.path.display(), "the cloud config changed but is refused; the previous config stays:\n{text}");
                provider.reload_refused(refusal_summary(&text));
            }
            Ok(mut cfg) => {
                if let Some(url) = &w.simulated {
                    simulated(&mut cfg, url);
                }
                let old = provider.config();
                let same_api = old.api_url == cfg.api_url
                    && old.api_client_id == cfg.api_client_id
                    && old.api_secret == cfg.api_secret
                    && old.api_timeouts == cfg.api_timeouts;
                let client = if same_api {
                    None
                } else {
                    match kamatera::Client::new(client_settings(&cfg, w.metrics.clone())) {
                        Ok(c) => Some(c),
                        Err(e) => {
                            provider.reload_refused(e.safe_message().to_string());
                            continue;
                        }
                    }
                };
                if let Err(why) = provider.reload(cfg, client).await {
                    tracing::warn!(path = %w.path.display(), "the cloud config changed but is refused: {why}");
                }
            }
        }
    }
}

/// The Kamatera client settings a config asks for (URL, credentials, timeouts), its figures
/// recorded into `metrics`.
pub fn client_settings(
    cfg: &config::CloudConfig,
    metrics: Arc<Metrics>,
) -> kamatera::ClientSettings {
    let t = cfg.api_timeouts;
    kamatera::ClientSettings {
        timeouts: kamatera::Timeouts {
            read: t.read,
            power: t.power,
            create: t.create,
        },
        ..kamatera::ClientSettings::new(
            &cfg.api_url,
            &cfg.api_client_id,
            cfg.api_secret.clone(),
            metrics,
        )
    }
}

/// Runs `fut` to completion on a multi-threaded runtime of its own (the binaries' `main`s).
pub fn block_on<T>(fut: impl Future<Output = T>) -> Result<T, std::io::Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(fut))
}

/// A future that resolves once `stop` says so.
fn stopped(stop: &watch::Sender<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.wait_for(|s| *s).await;
    }
}

/// Says which Kubernetes access the run has and what the lack of it costs.
fn log_kube_access(cfg: &CloudConfig, kube: Option<&kube::Kube>, simulate: bool) {
    let parking: Vec<&str> = cfg
        .node_groups
        .iter()
        .filter(|g| g.poweroff_on_scale_down)
        .map(|g| g.name.as_str())
        .collect();
    match kube {
        Some(k) => tracing::info!(
            source = %k.source(),
            cluster = %k.cluster_url(),
            "Kubernetes access: nodes of the provider's servers get their template's labels, and \
             Nodes of terminated and parked servers are deleted"
        ),
        None if simulate => tracing::info!(
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
}

/// The warnings a valid config may still deserve: its file permissions, labels, schedules that
/// need an autoscaler flag, hibernation without Kubernetes access.
fn log_config_warnings(settings: &Settings, cfg: &CloudConfig, has_kube: bool) {
    let env = |k: &str| std::env::var(k).ok();
    for w in config::warnings(cfg, settings.cloud_config.as_deref(), &env) {
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
        if !g.hibernate.is_empty() && !has_kube {
            tracing::warn!(group = %g.name,
                "hibernate windows without Kubernetes access: nodes cannot be drained (force=true removes servers undrained; otherwise they are kept)");
        }
    }
}

/// `NAMESPACE/NAME`, both parts non-empty and the name without a slash.
fn namespaced(flag: &str, spec: &str) -> Result<(String, String), AppError> {
    spec.split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(|| AppError::Flag(format!("{flag} {spec:?}: expected NAMESPACE/NAME")))
}

const NEEDS_KUBE: &str =
    "needs Kubernetes access (--kubeconfig, KUBECONFIG or the in-cluster service account)";

/// The ConfigMap that holds the journal: the flag's, or in a cluster (without `--state-file`)
/// `<pod namespace>/kamatera-ca-provider-state-<cluster>`.
fn journal_map(
    settings: &Settings,
    cfg: &CloudConfig,
    kube: Option<&kube::Kube>,
) -> Result<Option<kube::JournalMap>, AppError> {
    let in_cluster = kube.is_some_and(|k| *k.source() == kube::Source::InCluster);
    Ok(
        match (&settings.state_configmap, &settings.state_file, kube) {
            (Some(spec), _, Some(k)) => {
                let (ns, name) = namespaced("--state-configmap", spec)?;
                Some(k.journal_map(&ns, &name))
            }
            (Some(spec), _, None) => {
                return Err(AppError::Flag(format!(
                    "--state-configmap {spec:?} {NEEDS_KUBE}"
                )));
            }
            (None, None, Some(k)) if in_cluster && !settings.simulate => {
                kube::pod_namespace().map(|ns| {
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
        },
    )
}

/// The Lease of `--leader-elect`, which needs Kubernetes access and the journal in a ConfigMap.
fn lease(
    settings: &Settings,
    kube: Option<&kube::Kube>,
    journal_in_configmap: bool,
) -> Result<Option<Arc<kube::LeaseLock>>, AppError> {
    if !settings.leader_elect {
        return Ok(None);
    }
    let Some(k) = kube else {
        return Err(AppError::Flag(format!("--leader-elect {NEEDS_KUBE}")));
    };
    if !journal_in_configmap {
        return Err(AppError::Flag(
            "--leader-elect needs the journal in a ConfigMap (--state-configmap): a file would not move to the next holder".into(),
        ));
    }
    let (ns, name) = match &settings.leader_elect_lease {
        Some(spec) => namespaced("--leader-elect-lease", spec)?,
        None => (
            kube::pod_namespace().unwrap_or_else(|| "kube-system".into()),
            "kamatera-ca-provider".to_string(),
        ),
    };
    let identity = kube::own_pod()
        .map(|(_, name)| name)
        .unwrap_or_else(|| format!("kamatera-ca-provider-{:08x}", rand::random::<u32>()));
    let lock = k.lease(
        &ns,
        &name,
        &identity,
        Duration::from_secs(settings.leader_elect_lease_seconds.max(3)),
    );
    tracing::info!(lease = %lock, identity = %identity, "leader election: standing by until the lease is ours");
    Ok(Some(Arc::new(lock)))
}

/// The journal file: the flag's, else the default outside a simulated run; none when the
/// journal is in a ConfigMap. A file that cannot be written now is kept all the same: the
/// provider holds its creates until it can be (journal before create), warning at startup.
fn state_file(settings: &Settings, journal_in_configmap: bool) -> Option<PathBuf> {
    if journal_in_configmap {
        return None;
    }
    let path = match (&settings.state_file, settings.simulate) {
        (Some(p), _) => p.clone(),
        (None, true) => return None,
        (None, false) => PathBuf::from(DEFAULT_STATE_FILE),
    };
    if let Err(e) = crate::provider::probe_state_file(&path) {
        tracing::warn!(
            path = %path.display(),
            error = %e,
            "cannot write the state file now; no create is sent until it can be written \
             (point --state-file at a writable place)"
        );
    }
    Some(path)
}
