//! Helpers shared by the integration tests: a simulator, the provider served on loopback, the
//! `serve` binary as a child process, and requests with the autoscaler's deadline.
#![allow(dead_code)]

pub mod ca;
pub mod fake_kube;

use std::net::SocketAddr;
use std::time::Duration;

use kamatera_ca_provider::grpc::{self, ServeOptions};
use kamatera_ca_provider::provider::Provider;
use kamatera_ca_provider::sim::{self, Quota, SimConfig, SimHandle, Timing};

/// The simulator's servers as (name, power, tags), from its state snapshot.
pub fn sim_servers(sim: &SimHandle) -> Vec<(String, String, Vec<String>)> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    sim.snapshot()["servers"]
        .as_array()
        .expect("servers")
        .iter()
        .map(|s| {
            let tags = s["tags"].as_array().map_or_else(Vec::new, |t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            });
            (text(&s["name"]), text(&s["power"]), tags)
        })
        .collect()
}

/// A simulator on an ephemeral loopback port.
pub async fn start_sim(timing: Timing, quota: Quota) -> SimHandle {
    sim::start(
        SimConfig {
            timing,
            quota,
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .expect("simulator")
}

/// Serves `provider` on 127.0.0.1:0; the server stops when the returned sender is dropped.
pub async fn serve(
    provider: Provider,
    options: ServeOptions,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(grpc::serve(provider, listener, options, async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// A cloud config for a test: `[global]` with the simulator's credentials at the API URL, the
/// cluster name and name filter, and an image and network the simulator accepts; then the
/// global lines and node groups the test adds.
pub struct TestConfig {
    global: String,
    groups: String,
}

impl TestConfig {
    /// Servers in `datacenter`, with a one-line init script.
    pub fn new(api_url: &str, cluster: &str, filter_prefix: &str, datacenter: &str) -> TestConfig {
        TestConfig {
            global: format!(
                "[global]\nkamatera-api-client-id = {}\nkamatera-api-secret = {}\n\
                 kamatera-api-url = {api_url}\ncluster-name = {cluster}\n\
                 filter-name-prefix = {filter_prefix}\ndefault-datacenter = {datacenter}\n\
                 default-image = ubuntu_server_24.04_64-bit\ndefault-network = name=wan,ip=auto\n\
                 default-script-base64 = IyEvYmluL3NoCnRydWUK\n",
                sim::DEMO_CLIENT_ID,
                sim::DEMO_SECRET,
            ),
            groups: String::new(),
        }
    }

    /// More `[global]` lines.
    pub fn global(mut self, lines: &str) -> TestConfig {
        self.global.push_str(lines.trim_matches('\n'));
        self.global.push('\n');
        self
    }

    /// A `[nodegroup "name"]` section with these lines.
    pub fn group(mut self, name: &str, lines: &str) -> TestConfig {
        self.groups.push_str(&format!(
            "\n[nodegroup \"{name}\"]\n{}\n",
            lines.trim_matches('\n')
        ));
        self
    }

    pub fn text(&self) -> String {
        format!("{}{}", self.global, self.groups)
    }

    pub fn parse(&self) -> kamatera_ca_provider::config::CloudConfig {
        kamatera_ca_provider::config::CloudConfig::parse("test.ini", &self.text(), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The provider as `serve` assembles it: `App::build` from `serve` flags, on ephemeral loopback
/// ports. Nothing is listed until the caller runs it ([`run_app`]).
pub async fn build_app(flags: &[&str]) -> kamatera_ca_provider::app::App {
    let mut all = vec!["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"];
    all.extend_from_slice(flags);
    let settings = kamatera_ca_provider::app::Settings::from_flags(all).expect("serve flags");
    kamatera_ca_provider::app::App::build(settings)
        .await
        .expect("the app builds")
}

/// Runs a built app until the returned sender is dropped or sent to.
pub fn run_app(app: kamatera_ca_provider::app::App) -> tokio::sync::oneshot::Sender<()> {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run(async {
        let _ = rx.await;
    }));
    tx
}

/// A Kamatera client for a provider under test: the config's API and credentials, two quick
/// attempts, a 10 s timeout, metrics into `metrics`.
pub fn test_client(
    cfg: &kamatera_ca_provider::config::CloudConfig,
    metrics: std::sync::Arc<kamatera_ca_provider::telemetry::Metrics>,
) -> kamatera_ca_provider::kamatera::Client {
    use kamatera_ca_provider::kamatera::{Client, ClientSettings, RetryPolicy};
    Client::new(ClientSettings {
        retry: RetryPolicy::immediate(2),
        timeouts: kamatera_ca_provider::kamatera::Timeouts::uniform(Duration::from_secs(10)),
        ..ClientSettings::new(
            &cfg.api_url,
            &cfg.api_client_id,
            cfg.api_secret.clone(),
            metrics,
        )
    })
    .expect("client")
}

/// A client of a simulator in process (`sim::in_process`): no socket, tokio's clock, the
/// default timeouts and retry policy (the paused-clock tests check them).
pub fn in_process_client(sim: &SimHandle) -> kamatera_ca_provider::kamatera::Client {
    use kamatera_ca_provider::kamatera::{Client, ClientSettings, InProcess};
    Client::new(ClientSettings {
        in_process: Some(InProcess(sim.router())),
        ..ClientSettings::new(
            sim.url(),
            sim::DEMO_CLIENT_ID,
            kamatera_ca_provider::secret::Secret::new(sim::DEMO_SECRET),
            Default::default(),
        )
    })
    .expect("client")
}

/// A request with the autoscaler's default 5 s deadline.
pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// The `serve` child process helper, shared with the bench binary.
#[path = "../../../src/bin/kamatera-ca-bench/child.rs"]
mod child;

/// The `kamatera-ca-provider` binary as a child process; killed when dropped.
pub type ServeProcess = child::ServeChild;

/// Starts `kamatera-ca-provider serve <args>` on ephemeral ports and waits for its address.
pub fn spawn_serve(args: &[&str]) -> ServeProcess {
    child::spawn_serve(
        std::path::Path::new(env!("CARGO_BIN_EXE_kamatera-ca-provider")),
        args,
        Duration::from_secs(30),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `kamatera-ca-provider serve` like [`spawn_serve`], run by `wrapper` (a program and
/// its leading arguments, e.g. `unshare -rm sh -c SCRIPT sh ...`), which gets the whole serve
/// command line as its last arguments.
pub fn spawn_serve_wrapped(wrapper: &[&str], args: &[&str]) -> ServeProcess {
    let inner = child::serve_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_kamatera-ca-provider")),
        args,
    );
    let mut command = std::process::Command::new(wrapper[0]);
    command
        .args(&wrapper[1..])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (key, value) in inner.get_envs() {
        match value {
            Some(v) => command.env(key, v),
            None => command.env_remove(key),
        };
    }
    child::spawn_logging(command, Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `kamatera-ca-provider serve` on ephemeral ports with `args` to its end: for flags it
/// must refuse at startup.
pub fn serve_output(args: &[&str]) -> std::process::Output {
    child::serve_command(
        std::path::Path::new(env!("CARGO_BIN_EXE_kamatera-ca-provider")),
        args,
    )
    .output()
    .expect("run serve")
}

/// Runs `make()`'s future on a multi-threaded runtime of its own, in a thread of its own. When
/// the future ends the runtime is dropped, ending every task it spawned at once: a provider run
/// this way dies the way a killed process does (nothing released, nothing flushed).
pub fn in_own_runtime<F, Fut, T>(make: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(make())
    })
}
