//! Helpers shared by the integration tests: a simulator, the provider served on loopback, the
//! `serve` binary as a child process, and requests with the autoscaler's deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use kamatera_ca_provider::grpc::{self, ServeOptions};
use kamatera_ca_provider::provider::Provider;
use kamatera_ca_provider::sim::{self, Quota, SimConfig, SimHandle, Timing};

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

/// A request with the autoscaler's default 5 s deadline.
pub fn req<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(Duration::from_secs(5));
    r
}

/// The `kamatera-ca-provider` binary as a child process; killed when dropped.
pub struct ServeProcess {
    pub child: Child,
    /// The gRPC address from the "provider listening on" log line.
    pub addr: String,
    /// The full log line that named it.
    pub line: String,
    /// Later log lines.
    pub lines: Receiver<String>,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `kamatera-ca-provider serve <args>` on ephemeral ports and waits for its address.
pub fn spawn_serve(args: &[&str]) -> ServeProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve did not log its address within 30 s");
            }
        };
        if let Some(rest) = line.split("provider listening on ").nth(1) {
            let addr = rest.split([' ', ',']).next().expect("address").to_string();
            return ServeProcess {
                child,
                addr,
                line,
                lines: rx,
            };
        }
    }
}
