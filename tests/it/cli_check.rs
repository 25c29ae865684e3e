//! The `check` subcommand as a user runs it: exit codes and what it prints.

use std::process::Command;

use crate::common;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args(["check", "--cloud-config"])
        .arg(path)
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .output()
        .expect("run kamatera-ca-provider")
}

/// Writes `text` as a private config, runs `check` on it, expects success; its stdout.
fn checked(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("cloud.ini");
    std::fs::write(&path, text).expect("write");
    private(&path);
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    stdout
}

/// Only the owner may read the file (as a file holding the API secret should be).
fn private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

const GLOBAL: &str = "[global]\nkamatera-api-client-id = a\ncluster-name = c\n\
     default-datacenter = EU\ndefault-image = i\ndefault-network = name=wan\n";
const GROUP: &str = "\n[nodegroup \"w\"]\ncpu = 2B\nram = 2048\ndisk = size=10\nmax-size = 3\n";
const SECRET: &str = "Sup3rSecretValue42";

#[test]
fn errors_never_quote_a_secret_that_a_broken_line_carries() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text, expected) in [
        (
            "nbsp.ini",
            format!("{GLOBAL}\u{a0}kamatera-api-secret = {SECRET}\n{GROUP}"),
            "found '\\u{a0}' (U+00A0) at column 1",
        ),
        (
            "joined.ini",
            format!(
                "{GLOBAL}kamatera-api-secret = x1234\ndefault-min-size = 5default-password = {SECRET}\n{GROUP}"
            ),
            "the value holds \"default-password =\" at position 2, as if a line break was lost",
        ),
        (
            "nul.ini",
            format!("{GLOBAL}kamatera-api-secret = ab\u{0}{SECRET}\n{GROUP}"),
            "control character U+0000 in the value at column 25",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &text).expect("write");
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{name}: missing {expected:?} in {stderr}"
        );
        assert!(
            !stderr.contains(SECRET) && !stdout.contains(SECRET),
            "{name}: the secret was printed: {stderr}"
        );
    }
}

#[test]
fn a_bad_secret_from_the_environment_is_blamed_on_the_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("env.ini");
    std::fs::write(
        &path,
        format!("{GLOBAL}kamatera-api-secret = fine-in-file\n{GROUP}"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args(["check", "--cloud-config"])
        .arg(&path)
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env("KAMATERA_API_SECRET", "x y")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "$KAMATERA_API_SECRET (which overrides kamatera-api-secret) must be printable ASCII"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("env.ini:8"),
        "the file's line is not to blame: {stderr}"
    );
}

#[test]
fn a_config_others_can_read_is_warned_about_unless_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("open.ini");
    std::fs::write(
        &path,
        format!("{GLOBAL}kamatera-api-secret = {SECRET}\n{GROUP}"),
    )
    .expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let stdout = String::from_utf8_lossy(&check(&path).stdout).to_string();
    assert!(
        stdout.contains(&format!(
            "warning: {} holds the Kamatera API secret and is readable by everyone (mode 644): chmod 600 it",
            path.display()
        )),
        "{stdout}"
    );
    private(&path);
    let stdout = String::from_utf8_lossy(&check(&path).stdout).to_string();
    assert!(!stdout.contains("warning:"), "{stdout}");
}

#[test]
fn a_closed_pipe_ends_check_quietly() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.ini");
    // `| head -0`: the reader is gone before check writes anything, so its first write fails
    // with a broken pipe (Rust ignores SIGPIPE; an unguarded println! would panic).
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args(["check", "--cloud-config"])
        .arg(&path)
        .stdout(writer)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

#[test]
fn accepts_the_example_and_prints_the_groups() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.ini");
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "[nodegroup \"general\"]",
        "[nodegroup \"highmem\"]",
        "min 1 / max 5",
        "k8sca-demo k8scang-general",
        "size=40 size=100",
        "name=wan,ip=auto name=lan-demo-private,ip=auto",
        "node.example.com/pool=highmem",
        ": OK",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("demo-secret"),
        "the API secret was printed"
    );
}

#[test]
fn rejects_a_bad_file_with_every_problem_and_exit_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.ini");
    std::fs::write(
        &path,
        "[global]\nkamatera-api-client-id = a\nkamatera-api-secret = TOPSECRET\ncluster-name = c\n\
         default-datacenter = EU\ndefault-image = i\ndefault-network = name=wan\n\
         [nodegroup \"w\"]\ncpu = 2Q\nram = 1024\ndisk = size=10\nmax-size = -4\n",
    )
    .expect("write");
    let out = check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for a bad file");
    assert!(stderr.contains("has 2 problems"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:9: [nodegroup \"w\"] cpu:", path.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{}:12: [nodegroup \"w\"] max-size: must not be negative",
            path.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("TOPSECRET"), "{stderr}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = check(std::path::Path::new("/nonexistent/cloud.ini"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("cannot read cloud config /nonexistent/cloud.ini"),
        "{stderr}"
    );
}

#[test]
fn says_where_each_label_comes_from_and_warns_about_taints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = checked(
        &dir,
        "[global]\nkamatera-api-client-id = a\nkamatera-api-secret = s\ncluster-name = c\n\
         default-datacenter = EU\ndefault-image = i\ndefault-network = name=wan\n\n\
         [nodegroup \"batch\"]\ncpu = 4B\nram = 8192\ndisk = size=50\nmax-size = 3\n\
         template-label = team=data\ntemplate-label = node-role.kubernetes.io/batch=\n\
         template-taint = dedicated=batch:NoSchedule\n\n\
         [nodegroup \"web\"]\ncpu = 2B\nram = 4096\ndisk = size=20\nmax-size = 3\n",
    );
    for expected in [
        "labels: kubelet      kubernetes.io/os kubernetes.io/arch kubernetes.io/hostname",
        "labels: provider     kamatera.com/node-group=batch node-role.kubernetes.io/batch= node.kubernetes.io/instance-type=4B-8192 team=data topology.kubernetes.io/region=EU (added to the group's nodes when the provider has Kubernetes access)",
        "labels: join script  kamatera.com/node-group=batch node-role.kubernetes.io/batch= team=data (all the template promises beyond the kubelet's without Kubernetes access)",
        "join script          NODE_LABELS=\"kamatera.com/node-group=batch,node-role.kubernetes.io/batch=,team=data\" NODE_TAINTS=\"dedicated=batch:NoSchedule\"",
        "join script          NODE_LABELS=\"kamatera.com/node-group=web\" NODE_TAINTS=\"\"",
        "warning: [nodegroup \"batch\"] template-taint: the provider cannot add taints after a node joins (pods land first), so the join script must register dedicated=batch:NoSchedule (NODE_TAINTS); check it",
        "warning: [nodegroup \"batch\"] template-label node-role.kubernetes.io/batch: the kubelet refuses",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert_eq!(
        stdout.matches("warning:").count(),
        2,
        "web has none:\n{stdout}"
    );
}

#[test]
fn prints_the_standby_pool_per_group_and_per_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stdout = checked(
        &dir,
        &format!(
            "{GLOBAL}kamatera-api-secret = s\n{GROUP}standby = 1\n\
             schedule = \"cron=30 7 * * 1-5; duration=2h; max-size=6; standby=4\"\n\
             schedule = \"cron=0 12 * * *; duration=1h; min-size=1\"\n\
             hibernate = \"cron=0 20 * * *; duration=10h; force=true\"\n\
             \n[nodegroup \"v\"]\ncpu = 2B\nram = 2048\ndisk = size=10\nmax-size = 3\n"
        ),
    );
    for expected in [
        "standby pool         1 outside windows; 4 while \"cron=30 7 * * 1-5; duration=2h; max-size=6; standby=4\" is open; 0 while hibernating (powered-off servers kept ready, parked ones included)",
        "power                terminate on scale-down, scale-up powers on parked servers, then standby ones, then buys",
        "standby pool         none",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
}

/// `check --keys` prints the key reference (the same table docs/config.md holds), and needs no
/// config; without either, `check` asks for the config.
#[test]
fn check_keys_prints_every_key_without_a_config() {
    let out = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args(["check", "--keys"])
        .output()
        .expect("run check --keys");
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("| node-group key | `[global]` key | default | meaning |"),
        "{text}"
    );
    for key in [
        "`cluster-name`",
        "`default-min-size`",
        "`hibernate`",
        "`price-per-hour`",
    ] {
        assert!(text.contains(key), "{key} missing:\n{text}");
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md"))
        .expect("docs/config.md");
    assert!(
        docs.contains(text.as_ref()),
        "docs/config.md is not the printed table"
    );

    let bare = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .arg("check")
        .output()
        .expect("run check");
    assert_eq!(bare.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bare.stderr).contains("--cloud-config <FILE>"));
}

/// A name prefix the mutation guard would refuse at create time (every create of the group
/// refused) is refused by `check`, with the character and its column named.
#[test]
fn check_refuses_a_name_prefix_the_guard_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let check_prefix = |prefix: &str| {
        let path = dir.path().join("prefix.ini");
        std::fs::write(
            &path,
            format!("{GLOBAL}kamatera-api-secret = {SECRET}\n{GROUP}name-prefix = {prefix}\n"),
        )
        .expect("write");
        private(&path);
        check(&path)
    };
    for (prefix, expected) in [
        ("pool.a", "'.' (column 5) is not allowed"),
        ("pool(1)", "'(' (column 5) is not allowed"),
        ("web)", "')' (column 4) is not allowed"),
    ] {
        let out = check_prefix(prefix);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{prefix}: {stderr}");
        assert!(
            stderr.contains("[nodegroup \"w\"] name-prefix: name prefix: ")
                && stderr.contains(expected),
            "{prefix}: missing {expected:?} in {stderr}"
        );
    }
    // A prefix the guard accepts passes.
    let out = check_prefix("pool-a_1");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The reproduced cases of "a secret in a config error" and its kin, through both binaries'
/// outputs: a lost line break merges a secret key's line onto another key's value (URL,
/// cluster name, datacenter, cpu, ram, disk, network, image), a 2 MB label, and escapes that
/// make control characters. `check` and `serve` refuse each with the same message, quote no
/// secret, and stay short.
#[test]
fn no_config_error_quotes_a_secret_or_floods_the_log() {
    const TOP: &str = "TOPSECRETvalue0123456789";
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!("{GLOBAL}kamatera-api-secret = {SECRET}\n{GROUP}");
    let merged =
        |key: &str, value: &str, secret_key: &str| format!("{key} = {value}{secret_key} = {TOP}");
    let huge = "a".repeat(2 * 1024 * 1024);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "url",
            base.replacen(
                "[global]\n",
                &format!(
                    "[global]\n{}\n",
                    merged(
                        "kamatera-api-url",
                        "http://127.0.0.1:9",
                        "kamatera-api-secret"
                    )
                ),
                1,
            ),
            "the value holds \"kamatera-api-secret =\"",
        ),
        (
            "cluster",
            base.replace(
                "cluster-name = c\n",
                &format!("{}\n", merged("cluster-name", "c1", "kamatera-api-secret")),
            ),
            "the value holds \"kamatera-api-secret =\"",
        ),
        (
            "datacenter",
            base.replace(
                "default-datacenter = EU\n",
                &format!(
                    "{}\n",
                    merged("default-datacenter", "EU", "default-password")
                ),
            ),
            "the value holds \"default-password =\"",
        ),
        (
            "cpu",
            base.replace(
                "cpu = 2B\n",
                &format!("{}\n", merged("cpu", "2B", "password")),
            ),
            "the value holds \"password =\"",
        ),
        (
            "ram",
            base.replace(
                "ram = 2048\n",
                &format!("{}\n", merged("ram", "2048", "password")),
            ),
            "the value holds \"password =\"",
        ),
        (
            "disk",
            base.replace(
                "disk = size=10\n",
                &format!("{}\n", merged("disk", "size=10", "password")),
            ),
            "the value holds \"password =\"",
        ),
        (
            "network",
            base.replace(
                "default-network = name=wan\n",
                &format!(
                    "{}\n",
                    merged("default-network", "name=wan", "default-password")
                ),
            ),
            "the value holds \"default-password =\"",
        ),
        (
            "image",
            base.replace(
                "default-image = i\n",
                &format!(
                    "{}\n",
                    merged("default-image", "ubuntu", "default-password")
                ),
            ),
            "the value holds \"default-password =\"",
        ),
        (
            "label",
            format!("{base}template-label = role={huge}\n"),
            "is not a valid Kubernetes label value",
        ),
        (
            "escape-n",
            base.replace("default-image = i\n", "default-image = ubu\\nntu\n"),
            "escape sequence \\n would put a control character",
        ),
        (
            "escape-t",
            base.replace("default-image = i\n", "default-image = \"ubu\\tntu\"\n"),
            "escape sequence \\t would put a control character",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(format!("{name}.ini"));
        std::fs::write(&path, &text).expect("write");
        private(&path);
        let checked = check(&path);
        let served = common::serve_output(&["--cloud-config", path.to_str().expect("utf-8")]);
        for (who, out) in [("check", &checked), ("serve", &served)] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let refused = if who == "check" { Some(2) } else { Some(1) };
            assert_eq!(out.status.code(), refused, "{name} {who}: {stderr}");
            assert!(
                stderr.contains(expected),
                "{name} {who}: missing {expected:?} in {}",
                &stderr[..stderr.len().min(2000)]
            );
            for leak in [TOP, SECRET] {
                assert!(
                    !stderr.contains(leak) && !stdout.contains(leak),
                    "{name} {who}: {leak} was printed"
                );
            }
            assert!(
                stderr.len() + stdout.len() < 4000,
                "{name} {who}: {} bytes of output",
                stderr.len() + stdout.len()
            );
            assert!(
                stderr.lines().all(|l| !l.contains("ubu\nntu")),
                "{name} {who}"
            );
        }
        let problem_line = |out: &std::process::Output| {
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .find(|l| l.contains(expected))
                .map(|l| l.trim().to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            problem_line(&checked),
            problem_line(&served),
            "{name}: check and serve say the same"
        );
    }
}
