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
