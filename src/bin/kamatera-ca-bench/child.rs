//! A provider `serve` process on ephemeral ports, for measurements and tests that need a real
//! process (killed, restarted, its memory read). Shared by the bench binary and the integration
//! tests (which include this file by path).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `serve` child process on ephemeral ports; killed when dropped.
pub struct ServeChild {
    pub child: Child,
    /// The gRPC address from the "provider listening on" log line.
    pub addr: String,
    /// The admin server's base URL (`http://...`) from the same line.
    pub admin: String,
    /// That log line.
    pub line: String,
    /// The log lines before it.
    pub earlier: Vec<String>,
    /// Later log lines.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for ServeChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `<exe> serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 <args>`, logging at info, without
/// the Kamatera credential and Kubernetes variables of this environment.
pub fn serve_command(exe: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(exe);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("RUST_LOG", "kamatera_ca_provider=info")
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST");
    command
}

/// Starts `<exe> serve --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 <args>` (without the
/// Kamatera credential and Kubernetes variables of this environment: only explicit flags reach a
/// cloud or cluster) and waits up to `wait` for the log line that names its addresses.
pub fn spawn_serve(exe: &Path, args: &[&str], wait: Duration) -> Result<ServeChild, String> {
    spawn_logging(serve_command(exe, args), wait)
}

/// Starts `command` (a `serve`, possibly wrapped) and waits up to `wait` for the log line that
/// names its addresses.
pub fn spawn_logging(mut command: Command, wait: Duration) -> Result<ServeChild, String> {
    use std::io::{BufRead, BufReader};
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start serve: {e}"))?;
    let Some(stderr) = child.stderr.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("no stderr".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut serve = ServeChild {
        child,
        addr: String::new(),
        admin: String::new(),
        line: String::new(),
        earlier: Vec::new(),
        lines: rx,
    };
    loop {
        // Dropping `serve` on error kills the child.
        let line = serve
            .lines
            .recv_timeout(wait)
            .map_err(|_| format!("serve did not log its address within {} s", wait.as_secs()))?;
        if let Some(rest) = line.split("provider listening on ").nth(1) {
            serve.addr = rest
                .split([' ', ','])
                .next()
                .unwrap_or_default()
                .to_string();
            serve.admin = line
                .split("health and metrics on ")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_string();
            serve.line = line;
            return Ok(serve);
        }
        serve.earlier.push(line);
    }
}
