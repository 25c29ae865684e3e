//! `serve --simulate`, the README's run command, as a user starts it: a child process that logs
//! where it listens and answers a real gRPC client.

use crate::common;

use kamatera_ca_provider::proto::externalgrpc as pb;
use kamatera_ca_provider::proto::externalgrpc::cloud_provider_client::CloudProviderClient;

#[tokio::test]
async fn serve_simulate_answers_the_autoscaler() {
    // The first log line a new user reads names both addresses.
    let serve = common::spawn_serve(&["--simulate"]);
    let line = &serve.line;
    assert!(
        line.contains("simulated Kamatera at http://127.0.0.1:"),
        "{line}"
    );
    assert!(
        line.contains("general (1..5)") && line.contains("highmem (0..3)"),
        "{line}"
    );
    // No cluster is touched in a demo, and the log says so.
    assert!(
        serve
            .earlier
            .iter()
            .any(|l| l.contains("no Kubernetes access in a simulated run")),
        "{:?}",
        serve.earlier
    );
    let addr = serve.addr.clone();

    let mut ca = CloudProviderClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
    let groups = ca
        .node_groups(pb::NodeGroupsRequest {})
        .await
        .expect("node groups")
        .into_inner()
        .node_groups;
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(ids, vec!["general", "highmem"]);
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "general".into(),
    })
    .await
    .expect("increase");
    let target = ca
        .node_group_target_size(pb::NodeGroupTargetSizeRequest {
            id: "general".into(),
        })
        .await
        .expect("target")
        .into_inner()
        .target_size;
    assert_eq!(target, 1);
}

fn parking_config(dir: &std::path::Path, api_url: &str) -> std::path::PathBuf {
    let path = dir.join("park.ini");
    std::fs::write(
        &path,
        format!(
            "[global]\nkamatera-api-client-id = {id}\nkamatera-api-secret = {secret}\n\
             kamatera-api-url = {api_url}\ncluster-name = cli\ndefault-datacenter = US-NY2\n\
             default-image = ubuntu_server_24.04_64-bit\ndefault-network = name=wan,ip=auto\n\
             default-script-base64 = IyEvYmluL3NoCnRydWUK\n\n[nodegroup \"warm\"]\n\
             max-size = 3\ncpu = 2B\nram = 2048\ndisk = size=20\npoweroff-on-scale-down = true\n",
            id = kamatera_ca_provider::sim::DEMO_CLIENT_ID,
            secret = kamatera_ca_provider::sim::DEMO_SECRET,
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn without_kubernetes_access_a_parking_group_is_warned_about_once() {
    let sim = common::start_sim(
        kamatera_ca_provider::sim::Timing::fast(),
        kamatera_ca_provider::sim::Quota::default(),
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = parking_config(dir.path(), &sim.url());
    let state = dir.path().join("state.json");
    // spawn_serve removes KUBECONFIG and KUBERNETES_SERVICE_HOST: no access from anywhere.
    let serve = common::spawn_serve(&[
        "--cloud-config",
        config.to_str().expect("utf-8"),
        "--state-file",
        state.to_str().expect("utf-8"),
    ]);
    let warnings: Vec<&String> = serve
        .earlier
        .iter()
        .filter(|l| l.contains("no Kubernetes access"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", serve.earlier);
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("parked servers' Nodes stay NotReady")
            && warnings[0].contains("warm"),
        "{}",
        warnings[0]
    );
    // And the autoscaler gets answers, not errors.
    let mut ca = CloudProviderClient::connect(format!("http://{}", serve.addr))
        .await
        .expect("connect");
    ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_named_kubeconfig_is_used_or_refused_clearly() {
    let fake = common::fake_kube::FakeKube::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = fake.kubeconfig(dir.path());
    let serve = common::spawn_serve(&[
        "--simulate",
        "--kubeconfig",
        kubeconfig.to_str().expect("utf-8"),
    ]);
    let line = serve
        .earlier
        .iter()
        .find(|l| l.contains("Kubernetes access"))
        .unwrap_or_else(|| panic!("{:?}", serve.earlier));
    assert!(
        line.contains(&format!("http://{}", fake.addr)) && line.contains("kubeconfig.yaml"),
        "{line}"
    );
    drop(serve);

    let out = common::serve_output(&["--simulate", "--kubeconfig", "/nonexistent/kubeconfig"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot load the kubeconfig /nonexistent/kubeconfig"),
        "{stderr}"
    );
}

/// Prepares the journal's place in a mount namespace of the provider's own (a small tmpfs at
/// `$1`) so that it cannot be written in the way `$3` names, heals it once the file `$2`
/// appears (then touches `$2.done`), and runs the rest of the command line: the provider.
const BROKEN_JOURNAL: &str = r#"
set -e
dir="$1"; trigger="$2"; mode="$3"; shift 3
mount -t tmpfs -o size=256k tmpfs "$dir"
case "$mode" in
  directory) mkdir "$dir/state.json"; heal() { rmdir "$dir/state.json"; } ;;
  read-only) mount -o remount,ro "$dir"; heal() { mount -o remount,rw "$dir"; } ;;
  full) dd if=/dev/zero of="$dir/fill" bs=4096 2>/dev/null || true; heal() { rm -f "$dir/fill"; } ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
( i=0; while [ ! -e "$trigger" ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; heal; touch "$trigger.done" ) &
exec "$@"
"#;

async fn get_text(url: &str) -> (u16, String) {
    kamatera_ca_provider::kamatera::install_crypto_provider();
    let r = reqwest::get(url).await.expect("get");
    (r.status().as_u16(), r.text().await.expect("body"))
}

/// The simulator's create requests so far.
async fn creates(sim: &str) -> u64 {
    let (_, body) = get_text(&format!("{sim}/_sim/state")).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("state");
    v["requests"]["create_server"].as_u64().unwrap_or(0)
}

/// Asks for one highmem server and waits until its instance shows `code` (an error code, or
/// CREATING for Creating without error); deletes an errored instance first, as the autoscaler
/// does.
async fn one_more(
    ca: &mut CloudProviderClient<tonic::transport::Channel>,
    code: &str,
) -> pb::Instance {
    let nodes = |ca: &mut CloudProviderClient<tonic::transport::Channel>| {
        let mut ca = ca.clone();
        async move {
            ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
            ca.node_group_nodes(pb::NodeGroupNodesRequest {
                id: "highmem".into(),
            })
            .await
            .expect("nodes")
            .into_inner()
            .instances
        }
    };
    let errored: Vec<pb::ExternalGrpcNode> = nodes(ca)
        .await
        .iter()
        .map(|i| pb::ExternalGrpcNode {
            provider_id: i.id.clone(),
            name: i.id.clone(),
            ..Default::default()
        })
        .collect();
    if !errored.is_empty() {
        ca.node_group_delete_nodes(pb::NodeGroupDeleteNodesRequest {
            nodes: errored,
            id: "highmem".into(),
        })
        .await
        .expect("delete errored");
    }
    ca.node_group_increase_size(pb::NodeGroupIncreaseSizeRequest {
        delta: 1,
        id: "highmem".into(),
    })
    .await
    .expect("increase");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let found = nodes(ca).await.into_iter().find(|i| {
            let info = i.status.as_ref().and_then(|s| s.error_info.as_ref());
            match code {
                // Creating without error: its create is on its way.
                "CREATING" => {
                    i.status.as_ref().map(|s| s.instance_state) == Some(2)
                        && info.is_none_or(|e| e.error_code.is_empty())
                }
                c => info.is_some_and(|e| e.error_code == c),
            }
        });
        if let Some(i) = found {
            return i;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no instance with {code:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// One rule for a journal that cannot be written, whatever the cause: no create is sent, the
/// provider stays ready with the reason in `/readyz` and `kamatera_ca_journal_writable 0`, one
/// warning per episode, and it recovers by itself once the place can be written again.
async fn a_journal_that_cannot_be_written(mode: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let place = dir.path().join("journal");
    std::fs::create_dir(&place).expect("mkdir");
    let trigger = dir.path().join("heal");
    let state = place.join("state.json");
    let (place, trigger, state) = (
        place.display().to_string(),
        trigger.display().to_string(),
        state.display().to_string(),
    );
    let serve = common::spawn_serve_wrapped(
        &[
            "unshare",
            "-rm",
            "sh",
            "-c",
            BROKEN_JOURNAL,
            "sh",
            &place,
            &trigger,
            mode,
        ],
        &["--simulate", "--state-file", &state],
    );
    assert!(
        serve
            .earlier
            .iter()
            .any(|l| l.contains("cannot write the state file now; no create is sent")),
        "{mode}: {:?}",
        serve.earlier
    );
    let sim = serve
        .line
        .split("simulated Kamatera at ")
        .nth(1)
        .and_then(|r| r.split([' ', ',']).next())
        .expect("simulator url")
        .to_string();
    let admin = serve.admin.clone();
    let mut ca = CloudProviderClient::connect(format!("http://{}", serve.addr))
        .await
        .expect("connect");

    // Twice in one episode: nothing sent either time.
    for _ in 0..2 {
        let held = one_more(&mut ca, "JOURNAL_UNAVAILABLE").await;
        let message = held
            .status
            .and_then(|s| s.error_info)
            .map(|e| e.error_message)
            .unwrap_or_default();
        assert!(message.contains("not sent"), "{mode}: {message}");
    }
    assert_eq!(creates(&sim).await, 0, "{mode}: a create went out");
    let (code, body) = get_text(&format!("{admin}/readyz")).await;
    assert_eq!(code, 200, "{mode}: {body}");
    assert!(
        body.contains("no create is sent until the journal can be written"),
        "{mode}: {body}"
    );
    let (_, metrics) = get_text(&format!("{admin}/metrics")).await;
    assert!(
        metrics.contains("kamatera_ca_journal_writable 0"),
        "{mode}: {metrics}"
    );

    // Healed: the next pass writes it, and creates go out again.
    std::fs::write(&trigger, "").expect("trigger");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while !std::path::Path::new(&format!("{trigger}.done")).exists() {
        assert!(tokio::time::Instant::now() < deadline, "{mode}: not healed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The create goes out (the simulated server then takes its 20 s to boot: not waited for).
    one_more(&mut ca, "CREATING").await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while creates(&sim).await != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{mode}: no create after healing"
        );
        ca.refresh(pb::RefreshRequest {}).await.expect("refresh");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (code, body) = get_text(&format!("{admin}/readyz")).await;
    assert_eq!((code, body.as_str()), (200, "ready\n"), "{mode}");
    let (_, metrics) = get_text(&format!("{admin}/metrics")).await;
    assert!(metrics.contains("kamatera_ca_journal_writable 1"), "{mode}");
    let logs: Vec<String> = serve.lines.try_iter().collect();
    let warnings = logs
        .iter()
        .filter(|l| l.contains("cannot write the journal; no create is sent"))
        .count();
    assert_eq!(warnings, 1, "{mode}: one warning per episode: {logs:#?}");
    assert!(
        logs.iter()
            .any(|l| l.contains("the journal can be written again")),
        "{mode}: {logs:#?}"
    );
}

#[tokio::test]
async fn a_journal_path_that_is_a_directory_holds_creates_and_recovers() {
    a_journal_that_cannot_be_written("directory").await;
}

#[tokio::test]
async fn a_read_only_journal_holds_creates_and_recovers() {
    a_journal_that_cannot_be_written("read-only").await;
}

#[tokio::test]
async fn a_full_disk_holds_creates_and_recovers() {
    a_journal_that_cannot_be_written("full").await;
}
