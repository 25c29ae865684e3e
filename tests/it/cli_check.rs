//! The `check` subcommand as a user runs it: exit codes and what it prints.

use std::process::Command;

fn check(path: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .args(["check", "--cloud-config"])
        .arg(path)
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .output()
        .expect("run kamatera-ca-provider")
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
            "invalid integer a value of 38 characters starting with '5' (not shown",
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
    let path = dir.path().join("labels.ini");
    std::fs::write(
        &path,
        "[global]\nkamatera-api-client-id = a\nkamatera-api-secret = s\ncluster-name = c\n\
         default-datacenter = EU\ndefault-image = i\ndefault-network = name=wan\n\n\
         [nodegroup \"batch\"]\ncpu = 4B\nram = 8192\ndisk = size=50\nmax-size = 3\n\
         template-label = team=data\ntemplate-label = node-role.kubernetes.io/batch=\n\
         template-taint = dedicated=batch:NoSchedule\n\n\
         [nodegroup \"web\"]\ncpu = 2B\nram = 4096\ndisk = size=20\nmax-size = 3\n",
    )
    .expect("write");
    private(&path);
    let out = check(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
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
