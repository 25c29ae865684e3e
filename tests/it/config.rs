//! Cloud config: golden parses, every validation error with its location, gcfg syntax corners,
//! environment overrides, secret hygiene, and a parser fuzz property.

use kamatera_ca_provider::config::{
    BillingCycle, CloudConfig, ConfigError, EXAMPLE_CONFIG, Problem,
};
use proptest::prelude::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Result<CloudConfig, ConfigError> {
    CloudConfig::parse("test.ini", text, &no_env)
}

fn ok(text: &str) -> CloudConfig {
    match parse(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Ok(_) => panic!("expected problems, config was accepted"),
        Err(e) => e.problems().to_vec(),
    }
}

/// Asserts that exactly one problem is reported, at this line/section/key, containing `text`.
fn single(config: &str, line: usize, section: &str, key: Option<&str>, text: &str) {
    let ps = problems(config);
    assert_eq!(ps.len(), 1, "expected one problem, got {ps:#?}");
    let p = &ps[0];
    assert_eq!(p.line, Some(line), "line of {p}");
    assert_eq!(p.section.as_deref(), Some(section), "section of {p}");
    assert_eq!(p.key.as_deref(), key, "key of {p}");
    assert!(
        p.message.contains(text),
        "{:?} does not contain {text:?}",
        p.message
    );
}

/// A minimal valid config; tests append or replace lines.
const BASE: &str = "[global]
kamatera-api-client-id = id
kamatera-api-secret = s3cret-value
cluster-name = c1
default-datacenter = EU
default-image = ubuntu
default-cpu = 1A
default-ram = 1024
default-disk = size=10
default-network = name=wan,ip=auto
";

fn with_group(group: &str) -> String {
    format!("{BASE}\n[nodegroup \"ng\"]\n{group}")
}

#[test]
fn upstream_readme_example() {
    let text = r#"[global]
kamatera-api-client-id = XXXX
kamatera-api-secret = YYYY
cluster-name = mycluster
filter-name-prefix = mycluster
provider-id-prefix = rke2://
default-datacenter = US-NY2
default-image = ubuntu_server_24.04_64-bit
default-network = "name=wan,ip=auto"
default-network = "name=lan-12345-private,ip=auto"

[nodegroup "workers"]
name-prefix = mycluster-workers
min-size = 0
max-size = 3
cpu = 2B
ram = 2048
disk = size=20
script-base64 = IyEvYmluL2Jhc2gKZWNobyBoaQo=
template-label = "role=autoscaler"
poweroff-on-scale-down = true
poweroff-on-scale-down-max-servers = 2
"#;
    let c = ok(text);
    assert_eq!(c.api_client_id, "XXXX");
    assert_eq!(c.api_secret.expose(), "YYYY");
    assert_eq!(c.api_url, "https://cloudcli.cloudwm.com");
    assert_eq!(c.cluster_name, "mycluster");
    assert_eq!(c.filter_name_prefix, "mycluster");
    assert_eq!(c.provider_id_prefix, "rke2://");
    assert_eq!(c.node_groups.len(), 1);
    let g = &c.node_groups[0];
    assert_eq!(g.name, "workers");
    assert_eq!((g.min_size, g.max_size), (0, 3));
    assert!(g.poweroff_on_scale_down);
    assert!(!g.poweron_on_scale_up);
    assert_eq!(g.poweroff_on_scale_down_max_servers, 2);
    assert_eq!(
        g.template_labels,
        vec![("role".into(), "autoscaler".into())]
    );
    let s = &g.server;
    assert_eq!(s.name_prefix, "mycluster-workers");
    assert_eq!(s.datacenter, "US-NY2");
    assert_eq!(s.image, "ubuntu_server_24.04_64-bit");
    assert_eq!(s.cpu, "2B");
    assert_eq!(s.cpu_cores(), 2);
    assert_eq!(s.ram_mb, 2048);
    assert_eq!(s.disks, vec!["size=20"]);
    assert_eq!(s.first_disk_gb(), Some(20));
    assert_eq!(
        s.networks,
        vec!["name=wan,ip=auto", "name=lan-12345-private,ip=auto"]
    );
    assert_eq!(
        s.script.as_ref().map(|x| x.expose()),
        Some("#!/bin/bash\necho hi\n")
    );
    assert_eq!(s.password, None);
    assert_eq!(s.billing_cycle, BillingCycle::Hourly);
    assert_eq!(s.tags, vec!["k8sca-mycluster", "k8scang-workers"]);
}

#[test]
fn shipped_example_is_valid() {
    let c = ok(EXAMPLE_CONFIG);
    let names: Vec<&str> = c.node_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, vec!["general", "highmem"]);
    let highmem = c.node_group("highmem").expect("highmem group");
    assert_eq!(highmem.server.disks, vec!["size=40", "size=100"]);
    assert_eq!(highmem.server.networks.len(), 2);
    assert_eq!(highmem.min_size, 0, "default-min-size applies");
    assert_eq!(c.node_group("general").map(|g| g.min_size), Some(1));
}

#[test]
fn override_rules() {
    let text = r#"[global]
kamatera-api-client-id = id
kamatera-api-secret = secret
kamatera-api-url = http://127.0.0.1:8788/
cluster-name = prod
provider-id-prefix =
poweroff-on-scale-down = yes
poweron-on-scale-up = on
default-min-size = 2
default-max-size = 9
default-name-prefix = prod-node
default-password = global-pw
default-ssh-key = ssh-ed25519 AAAA global
default-datacenter = IL
default-image = img-global
default-cpu = 1A
default-ram = 1024
default-disk = size=10
default-disk = size=11
default-network = name=wan,ip=auto
default-dailybackup = true
default-managed = yes
default-billingcycle = monthly
default-monthlypackage = t5000
default-script-base64 = Z2xvYmFs

; Everything inherited.
[nodegroup "inherit"]

; Everything overridden.
[nodegroup "override"]
min-size = 0
max-size = 4
poweroff-on-scale-down = false
poweron-on-scale-up = 0
poweroff-on-scale-down-max-servers = 3
name-prefix = prod-big
password = group-pw
ssh-key = ssh-ed25519 AAAA group
datacenter = EU
image = img-group
cpu = 8D
ram = 32768
disk = size=50
network = name=lan-1,ip=auto
dailybackup = false
managed = no
billingcycle = hourly
monthlypackage = t10000
script-base64 = Z3JvdXA=

; Empty values fall back to the defaults; a bare list key empties the list (then refilled).
[nodegroup "blank"]
name-prefix =
datacenter = ""
disk
disk = size=99
"#;
    let c = ok(text);
    assert_eq!(c.api_url, "http://127.0.0.1:8788", "trailing slash dropped");
    assert_eq!(
        c.provider_id_prefix, "kamatera://",
        "empty prefix means default"
    );

    let inherit = c.node_group("inherit").expect("inherit");
    assert_eq!((inherit.min_size, inherit.max_size), (2, 9));
    assert!(inherit.poweroff_on_scale_down && inherit.poweron_on_scale_up);
    assert_eq!(inherit.poweroff_on_scale_down_max_servers, 0);
    let s = &inherit.server;
    assert_eq!(s.name_prefix, "prod-node");
    assert_eq!(s.password.as_ref().map(|p| p.expose()), Some("global-pw"));
    assert_eq!(s.ssh_key, "ssh-ed25519 AAAA global");
    assert_eq!(
        (s.datacenter.as_str(), s.image.as_str()),
        ("IL", "img-global")
    );
    assert_eq!((s.cpu.as_str(), s.ram_mb), ("1A", 1024));
    assert_eq!(s.disks, vec!["size=10", "size=11"]);
    assert_eq!(s.networks, vec!["name=wan,ip=auto"]);
    assert!(s.daily_backup && s.managed);
    assert_eq!(s.billing_cycle, BillingCycle::Monthly);
    assert_eq!(s.monthly_package, "t5000");
    assert_eq!(s.script.as_ref().map(|x| x.expose()), Some("global"));

    let o = c.node_group("override").expect("override");
    assert_eq!((o.min_size, o.max_size), (0, 4));
    assert!(!o.poweroff_on_scale_down && !o.poweron_on_scale_up);
    assert_eq!(o.poweroff_on_scale_down_max_servers, 3);
    let s = &o.server;
    assert_eq!(s.name_prefix, "prod-big");
    assert_eq!(s.password.as_ref().map(|p| p.expose()), Some("group-pw"));
    assert_eq!(s.ssh_key, "ssh-ed25519 AAAA group");
    assert_eq!(
        (s.datacenter.as_str(), s.image.as_str()),
        ("EU", "img-group")
    );
    assert_eq!((s.cpu.as_str(), s.ram_mb), ("8D", 32768));
    assert_eq!(
        s.disks,
        vec!["size=50"],
        "group list replaces the global list"
    );
    assert_eq!(s.networks, vec!["name=lan-1,ip=auto"]);
    assert!(
        !s.daily_backup && !s.managed,
        "a node group can turn off what the global default turns on (upstream could not)"
    );
    assert_eq!(s.billing_cycle, BillingCycle::Hourly);
    assert_eq!(s.monthly_package, "t10000");
    assert_eq!(s.script.as_ref().map(|x| x.expose()), Some("group"));

    let b = c.node_group("blank").expect("blank");
    assert_eq!(b.server.name_prefix, "prod-node");
    assert_eq!(b.server.datacenter, "IL");
    assert_eq!(b.server.disks, vec!["size=99"]);
}

#[test]
fn section_and_key_names_are_case_insensitive_subsections_are_not() {
    let text = BASE
        .replace("[global]", "[GLOBAL]")
        .replace("cluster-name", "Cluster-Name")
        + "[NodeGroup \"Workers\"]\nMIN-SIZE = 0\n[nodegroup \"workers\"]\n";
    let c = ok(&text);
    let names: Vec<&str> = c.node_groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, vec!["Workers", "workers"]);
    assert_eq!(c.node_group("Workers").map(|g| g.min_size), Some(0));
    assert_eq!(c.node_group("workers").map(|g| g.min_size), Some(1));
}

#[test]
fn repeated_sections_merge() {
    let text = with_group("min-size = 2\n") + "[nodegroup \"ng\"]\nmax-size = 3\n";
    let g = ok(&text).node_groups[0].clone();
    assert_eq!((g.min_size, g.max_size), (2, 3));
}

#[test]
fn booleans_in_every_gcfg_spelling() {
    for (word, expected) in [
        ("true", true),
        ("YES", true),
        ("On", true),
        ("1", true),
        ("false", false),
        ("no", false),
        ("OFF", false),
        ("0", false),
    ] {
        let c = ok(&with_group(&format!(
            "poweroff-on-scale-down = {word}\npoweron-on-scale-up = {word}\n"
        )));
        assert_eq!(c.node_groups[0].poweroff_on_scale_down, expected, "{word}");
        assert_eq!(c.node_groups[0].poweron_on_scale_up, expected, "{word}");
    }
    // A bare key is true.
    assert!(ok(&with_group("poweron-on-scale-up\n")).node_groups[0].poweron_on_scale_up);
}

#[test]
fn continuation_and_escapes_lf_and_crlf() {
    let group = "ssh-key = ssh-rsa AAAA\\\n BBBB \\\n   CCCC\npassword = \"p\\\"w\\\\dx\"\nname-prefix = ng\n";
    for text in [with_group(group), with_group(group).replace('\n', "\r\n")] {
        let s = ok(&text).node_groups[0].server.clone();
        assert_eq!(s.ssh_key, "ssh-rsa AAAA BBBB    CCCC");
        assert_eq!(
            s.password.map(|p| p.expose().to_string()).as_deref(),
            Some("p\"w\\dx")
        );
        assert_eq!(s.name_prefix, "ng");
    }
    // \n, \t and \b would make control characters: refused with their line, quoted or not.
    for (line, message) in [
        (
            "ssh-key = \"line1\\nline2\"\n",
            "escape sequence \\n would put a control character",
        ),
        (
            "default-image = ubu\\nntu\n",
            "escape sequence \\n would put a control character",
        ),
        (
            "image = \"ubu\\tntu\"\n",
            "escape sequence \\t would put a control character",
        ),
    ] {
        let ps = problems(&with_group(line));
        assert_eq!(ps.len(), 1, "{line}: {ps:#?}");
        assert_eq!(ps[0].line, Some(13), "{line}");
        assert!(ps[0].message.contains(message), "{line}: {}", ps[0].message);
    }
}

#[test]
fn env_overrides_credentials() {
    let env = |name: &str| match name {
        "KAMATERA_API_CLIENT_ID" => Some("env-id".to_string()),
        "KAMATERA_API_SECRET" => Some("env-secret".to_string()),
        _ => None,
    };
    let c = CloudConfig::parse("t.ini", &with_group(""), &env).expect("valid");
    assert_eq!(c.api_client_id, "env-id");
    assert_eq!(c.api_secret.expose(), "env-secret");

    // The INI may omit them entirely when the environment supplies them.
    let text = with_group("")
        .replace("kamatera-api-client-id = id\n", "")
        .replace("kamatera-api-secret = s3cret-value\n", "");
    let c = CloudConfig::parse("t.ini", &text, &env).expect("valid");
    assert_eq!(c.api_client_id, "env-id");

    // An empty variable does not override.
    let empty = |_: &str| Some(String::new());
    let c = CloudConfig::parse("t.ini", &with_group(""), &empty).expect("valid");
    assert_eq!(c.api_secret.expose(), "s3cret-value");
}

#[test]
fn secrets_never_in_debug_output() {
    let text = with_group("password = pw-XYZZY-1\nscript-base64 = c2NyaXB0LVFVVVg=\n");
    let c = ok(&text);
    let debug = format!("{c:?} {c:#?}");
    for secret in ["s3cret-value", "pw-XYZZY-1", "script-QUUX"] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
    let summary = kamatera_ca_provider::config::render_summary(&c);
    for secret in ["s3cret-value", "pw-XYZZY-1", "script-QUUX"] {
        assert!(
            !summary.contains(secret),
            "{secret} leaked into the summary"
        );
    }
    // Errors do not echo secrets either.
    let bad = text.replace("cluster-name = c1", "cluster-name = this-name-is-too-long");
    let err = parse(&bad).expect_err("invalid").to_string();
    assert!(
        !err.contains("s3cret-value") && !err.contains("pw-XYZZY-1"),
        "{err}"
    );
}

// ---- one test per validation error: message and location ----

#[test]
fn missing_client_id() {
    single(
        &with_group("").replace("kamatera-api-client-id = id\n", ""),
        1,
        "global",
        Some("kamatera-api-client-id"),
        "kamatera api client id is not set",
    );
}

#[test]
fn missing_secret() {
    single(
        &with_group("").replace("kamatera-api-secret = s3cret-value\n", ""),
        1,
        "global",
        Some("kamatera-api-secret"),
        "kamatera api secret is not set",
    );
}

#[test]
fn missing_cluster_name() {
    single(
        &with_group("").replace("cluster-name = c1\n", ""),
        1,
        "global",
        Some("cluster-name"),
        "cluster name is not set",
    );
}

#[test]
fn cluster_name_too_long() {
    single(
        &with_group("").replace("cluster-name = c1", "cluster-name = abcdefghijklmnop"),
        4,
        "global",
        Some("cluster-name"),
        "at most 15 characters",
    );
}

#[test]
fn cluster_name_with_space() {
    single(
        &with_group("").replace("cluster-name = c1", "cluster-name = \"my cluster\""),
        4,
        "global",
        Some("cluster-name"),
        "contains whitespace",
    );
}

#[test]
fn cluster_name_bad_tag_characters() {
    single(
        &with_group("").replace("cluster-name = c1", "cluster-name = c/1"),
        4,
        "global",
        Some("cluster-name"),
        "tag \"k8sca-c/1\" is invalid",
    );
}

#[test]
fn node_group_name_too_long() {
    single(
        &format!("{BASE}[nodegroup \"abcdefghijklmnop\"]\n"),
        11,
        "nodegroup \"abcdefghijklmnop\"",
        None,
        "node group name must be at most 15 characters long",
    );
}

#[test]
fn node_group_name_with_space() {
    single(
        &format!("{BASE}[nodegroup \"two words\"]\n"),
        11,
        "nodegroup \"two words\"",
        None,
        "contains whitespace",
    );
}

#[test]
fn bad_api_url() {
    single(
        &with_group("").replace("[global]\n", "[global]\nkamatera-api-url = ftp://x\n"),
        2,
        "global",
        Some("kamatera-api-url"),
        "\"ftp://x\" is not an http:// or https:// base URL",
    );
}

#[test]
fn negative_min_size() {
    single(
        &with_group("min-size = -1\n"),
        13,
        "nodegroup \"ng\"",
        Some("min-size"),
        "must not be negative",
    );
}

#[test]
fn min_greater_than_max() {
    single(
        &with_group("min-size = 5\nmax-size = 3\n"),
        13,
        "nodegroup \"ng\"",
        Some("min-size"),
        "min size 5 is greater than max size 3",
    );
}

#[test]
fn min_greater_than_global_max() {
    let text =
        with_group("min-size = 5\n").replace("[global]\n", "[global]\ndefault-max-size = 4\n");
    single(
        &text,
        14,
        "nodegroup \"ng\"",
        Some("min-size"),
        "(default-max-size in [global])",
    );
}

#[test]
fn non_integer_size() {
    single(
        &with_group("max-size = ten\n"),
        13,
        "nodegroup \"ng\"",
        Some("max-size"),
        "invalid integer \"ten\"",
    );
}

#[test]
fn non_integer_global_default_size() {
    let text = with_group("").replace("[global]\n", "[global]\ndefault-min-size = 1.5\n");
    single(
        &text,
        2,
        "global",
        Some("default-min-size"),
        "invalid integer \"1.5\"",
    );
}

#[test]
fn negative_poweroff_cap() {
    single(
        &with_group("poweroff-on-scale-down-max-servers = -2\n"),
        13,
        "nodegroup \"ng\"",
        Some("poweroff-on-scale-down-max-servers"),
        "must be 0 (no cap) or a positive number, not -2",
    );
}

#[test]
fn standby_pool_sizes() {
    let g = ok(&with_group(
        "max-size = 6\nstandby = 2\nschedule = \"cron=0 7 * * 1-5; duration=2h; standby=5\"\n",
    ))
    .node_groups
    .remove(0);
    assert_eq!(g.standby, 2);
    assert_eq!(g.schedules[0].standby, Some(5));
    assert!(
        g.powers_on_pool(),
        "a pool is powered on without poweron-on-scale-up"
    );
    assert!(!ok(&with_group("max-size = 6\n")).node_groups[0].powers_on_pool());
    single(
        &with_group("standby = -1\n"),
        13,
        "nodegroup \"ng\"",
        Some("standby"),
        "must be 0 (no standby servers) or a positive number, not -1",
    );
    single(
        &with_group("max-size = 3\nstandby = 4\n"),
        14,
        "nodegroup \"ng\"",
        Some("standby"),
        "4 is more than max-size 3: standby servers count toward max-size",
    );
    single(
        &with_group("standby = some\n"),
        13,
        "nodegroup \"ng\"",
        Some("standby"),
        "invalid integer \"some\"",
    );
    single(
        &with_group("max-size = 4\nschedule = \"cron=0 7 * * *; duration=1h; standby=5\"\n"),
        14,
        "nodegroup \"ng\"",
        Some("schedule"),
        "standby 5 is more than max-size 4 while the window is open",
    );
    // A window's own max-size is the limit while it is open.
    let g = ok(&with_group(
        "max-size = 4\nschedule = \"cron=0 7 * * *; duration=1h; max-size=8; standby=6\"\n",
    ))
    .node_groups
    .remove(0);
    assert_eq!(g.schedules[0].standby, Some(6));
    single(
        &with_group("schedule = \"cron=0 7 * * *; duration=1h; standby=x\"\n"),
        13,
        "nodegroup \"ng\"",
        Some("schedule"),
        "standby \"x\" is not a number",
    );
}

#[test]
fn invalid_boolean() {
    single(
        &with_group("managed = maybe\n"),
        13,
        "nodegroup \"ng\"",
        Some("managed"),
        "invalid boolean \"maybe\"",
    );
}

#[test]
fn invalid_global_boolean() {
    let text = with_group("").replace("[global]\n", "[global]\ndefault-dailybackup = sure\n");
    single(
        &text,
        2,
        "global",
        Some("default-dailybackup"),
        "invalid boolean \"sure\"",
    );
}

#[test]
fn bad_base64_script() {
    single(
        &with_group("script-base64 = not*base64\n"),
        13,
        "nodegroup \"ng\"",
        Some("script-base64"),
        "script is not valid base64",
    );
}

#[test]
fn empty_script() {
    // A set but blank value (quoted spaces) decodes to zero bytes: upstream's "script is empty".
    single(
        &with_group("script-base64 = \"    \"\n"),
        13,
        "nodegroup \"ng\"",
        Some("script-base64"),
        "script for node group ng is empty",
    );
}

#[test]
fn script_not_utf8() {
    single(
        &with_group("script-base64 = //79\n"),
        13,
        "nodegroup \"ng\"",
        Some("script-base64"),
        "not UTF-8",
    );
}

#[test]
fn missing_datacenter_after_defaults() {
    single(
        &with_group("").replace("default-datacenter = EU\n", ""),
        11,
        "nodegroup \"ng\"",
        Some("datacenter"),
        "datacenter for node group ng is empty",
    );
}

#[test]
fn bad_datacenter() {
    single(
        &with_group("datacenter = US NY\n"),
        13,
        "nodegroup \"ng\"",
        Some("datacenter"),
        "is not a Kamatera datacenter id",
    );
}

#[test]
fn missing_image() {
    single(
        &with_group("").replace("default-image = ubuntu\n", ""),
        11,
        "nodegroup \"ng\"",
        Some("image"),
        "image for node group ng is empty",
    );
}

#[test]
fn missing_cpu() {
    single(
        &with_group("").replace("default-cpu = 1A\n", ""),
        11,
        "nodegroup \"ng\"",
        Some("cpu"),
        "cpu for node group ng is empty",
    );
}

#[test]
fn bad_cpu() {
    single(
        &with_group("cpu = 2\n"),
        13,
        "nodegroup \"ng\"",
        Some("cpu"),
        "followed by the CPU type A, B, D or T",
    );
}

#[test]
fn bad_cpu_in_global_default_points_at_global() {
    let text = with_group("").replace("default-cpu = 1A", "default-cpu = 2P");
    single(&text, 7, "global", Some("default-cpu"), "cpu \"2P\"");
}

#[test]
fn missing_ram() {
    single(
        &with_group("").replace("default-ram = 1024\n", ""),
        11,
        "nodegroup \"ng\"",
        Some("ram"),
        "ram for node group ng is empty",
    );
}

#[test]
fn bad_ram() {
    single(
        &with_group("ram = 4GB\n"),
        13,
        "nodegroup \"ng\"",
        Some("ram"),
        "whole number of megabytes",
    );
}

#[test]
fn no_disks() {
    single(
        &with_group("").replace("default-disk = size=10\n", ""),
        11,
        "nodegroup \"ng\"",
        Some("disk"),
        "no disks for node group ng",
    );
}

#[test]
fn disk_list_emptied_by_bare_key() {
    single(
        &with_group("disk\n"),
        13,
        "nodegroup \"ng\"",
        Some("disk"),
        "no disks for node group ng",
    );
}

#[test]
fn bad_disk_spec() {
    single(
        &with_group("disk = size=big\n"),
        13,
        "nodegroup \"ng\"",
        Some("disk"),
        "disk: size \"big\" is invalid",
    );
    single(
        &with_group("disk = sz=10\n"),
        13,
        "nodegroup \"ng\"",
        Some("disk"),
        "unknown key \"sz\"",
    );
    single(
        &with_group("disk = size=10 size=20\n"),
        13,
        "nodegroup \"ng\"",
        Some("disk"),
        "contains whitespace",
    );
}

#[test]
fn too_many_disks() {
    single(
        &with_group("disk = size=1\ndisk = size=2\ndisk = size=3\ndisk = size=4\ndisk = size=5\n"),
        13,
        "nodegroup \"ng\"",
        Some("disk"),
        "5 disks given; Kamatera allows at most 4",
    );
}

#[test]
fn no_networks() {
    single(
        &with_group("").replace("default-network = name=wan,ip=auto\n", ""),
        11,
        "nodegroup \"ng\"",
        Some("network"),
        "no networks for node group ng",
    );
}

#[test]
fn network_without_name() {
    single(
        &with_group("network = ip=auto\n"),
        13,
        "nodegroup \"ng\"",
        Some("network"),
        "has no name",
    );
}

#[test]
fn bad_billing_cycle() {
    single(
        &with_group("billingcycle = weekly\n"),
        13,
        "nodegroup \"ng\"",
        Some("billingcycle"),
        "billing cycle \"weekly\" is invalid",
    );
}

#[test]
fn bad_template_label() {
    single(
        &with_group("template-label = novalue\n"),
        13,
        "nodegroup \"ng\"",
        Some("template-label"),
        "is not key=value",
    );
    single(
        &with_group("template-label = bad key=x\n"),
        13,
        "nodegroup \"ng\"",
        Some("template-label"),
        "not a valid Kubernetes label key",
    );
}

#[test]
fn bad_name_prefix() {
    // Every prefix the mutation guard would refuse at create time is refused here, with the
    // character named (`.`, `(` and `)` used to pass and then failed every create).
    for (prefix, shown) in [
        ("my/prefix", "'/' (column 3) is not allowed"),
        ("pool.a", "'.' (column 5) is not allowed"),
        ("pool(1)", "'(' (column 5) is not allowed"),
        ("x)", "')' (column 2) is not allowed"),
    ] {
        single(
            &with_group(&format!("name-prefix = {prefix}\n")),
            13,
            "nodegroup \"ng\"",
            Some("name-prefix"),
            shown,
        );
    }
    single(
        &with_group(&format!("name-prefix = {}\n", "p".repeat(29))),
        13,
        "nodegroup \"ng\"",
        Some("name-prefix"),
        "29 characters is too long: at most 28",
    );
}

#[test]
fn name_prefix_hidden_by_filter() {
    let text = with_group("name-prefix = other\n")
        .replace("[global]\n", "[global]\nfilter-name-prefix = c1-\n");
    single(
        &text,
        14,
        "nodegroup \"ng\"",
        Some("name-prefix"),
        "filter-name-prefix \"c1-\" hides",
    );
    // And a matching prefix is fine.
    ok(&with_group("name-prefix = c1-ng\n")
        .replace("[global]\n", "[global]\nfilter-name-prefix = c1-\n"));
}

#[test]
fn unknown_key_with_hint() {
    single(
        &with_group("min-sise = 1\n"),
        13,
        "nodegroup \"ng\"",
        Some("min-sise"),
        "unknown key (did you mean min-size?)",
    );
}

#[test]
fn upstream_example_secret_typo_is_explained() {
    let text = with_group("").replace("[global]\n", "[global]\ndefault-script = abc\n");
    single(
        &text,
        2,
        "global",
        Some("default-script"),
        "did you mean default-script-base64?",
    );
}

#[test]
fn group_key_in_global_is_explained() {
    let text = with_group("").replace("[global]\n", "[global]\nram = 1\n");
    single(&text, 2, "global", Some("ram"), "written default-ram");
}

#[test]
fn global_key_in_group_is_explained() {
    single(
        &with_group("default-ram = 1\n"),
        13,
        "nodegroup \"ng\"",
        Some("default-ram"),
        "inside a node group the key is ram",
    );
}

#[test]
fn unknown_section() {
    single(
        &(with_group("") + "[nodegrup \"x\"]\n"),
        13,
        "nodegrup \"x\"",
        None,
        "did you mean [nodegroup]?",
    );
}

#[test]
fn global_with_subsection() {
    single(
        &(with_group("") + "[global \"x\"]\n"),
        13,
        "global \"x\"",
        None,
        "takes no name",
    );
}

#[test]
fn nodegroup_without_name() {
    single(
        &(with_group("") + "[nodegroup]\n"),
        13,
        "nodegroup",
        None,
        "needs a quoted name",
    );
}

#[test]
fn no_node_groups() {
    let ps = problems(BASE);
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert!(ps[0].message.contains("no node groups defined"));
}

#[test]
fn syntax_error_has_line() {
    let ps = problems(&with_group("ram = \"unterminated\n"));
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0].line, Some(13));
    assert!(ps[0].message.contains("unterminated quoted value"));
}

#[test]
fn all_problems_reported_together_in_line_order() {
    let text = with_group("min-size = x\ncpu = 9\nbogus = 1\n")
        .replace("cluster-name = c1", "cluster-name = abcdefghijklmnopq");
    let err = parse(&text).expect_err("invalid");
    let lines: Vec<Option<usize>> = err.problems().iter().map(|p| p.line).collect();
    assert_eq!(lines, vec![Some(4), Some(13), Some(14), Some(15)], "{err}");
    let shown = err.to_string();
    assert!(
        shown.starts_with("cloud config test.ini has 4 problems:"),
        "{shown}"
    );
    assert!(
        shown.contains("test.ini:14: [nodegroup \"ng\"] cpu: cpu \"9\""),
        "{shown}"
    );
}

proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
            // PROPTEST_CASES runs it longer.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
            ..proptest::prelude::ProptestConfig::default()
        })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse(&text);
    }

    #[test]
    fn ini_shaped_noise_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("[global]".to_string()),
                Just("[nodegroup \"a\"]".to_string()),
                "[a-z\\-]{1,12} ?= ?[ -~]{0,20}",
                "[\\[\\]\"\\\\=;# a-z\\r]{0,16}",
            ],
            0..24,
        )
    ) {
        let _ = parse(&lines.join("\n"));
    }
}

// ---- extensions of this provider ----

#[test]
fn extension_keys_parse() {
    let c = ok(&with_group(
        "template-taint = dedicated=batch:NoSchedule\ntemplate-taint = example.com/gpu:NoExecute\n\
         template-reserved-cpu = 250m\ntemplate-reserved-memory = 1Gi\n\
         scale-down-utilization-threshold = 0.4\nscale-down-gpu-utilization-threshold = 0.3\n\
         scale-down-unneeded-time = 5m\nscale-down-unready-time = 1h\nmax-node-provision-time = 30m\n\
         zero-or-max-node-scaling = yes\nignore-daemonsets-utilization = no\n",
    )
    .replace("[global]\n", "[global]\ngpu-label = nvidia.com/gpu.product\n"));
    assert_eq!(c.gpu_label, "nvidia.com/gpu.product");
    let g = &c.node_groups[0];
    assert_eq!(g.template_taints.len(), 2);
    assert_eq!(
        (
            g.template_taints[0].key.as_str(),
            g.template_taints[0].value.as_str(),
            g.template_taints[0].effect.as_str()
        ),
        ("dedicated", "batch", "NoSchedule")
    );
    assert_eq!(g.template_taints[1].value, "");
    assert_eq!((g.reserved_cpu_millis, g.reserved_memory_mib), (250, 1024));
    let o = g.options;
    assert_eq!(o.scale_down_utilization_threshold, Some(0.4));
    assert_eq!(o.scale_down_gpu_utilization_threshold, Some(0.3));
    assert_eq!(
        o.scale_down_unneeded_time,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(
        o.scale_down_unready_time,
        Some(std::time::Duration::from_secs(3600))
    );
    assert_eq!(
        o.max_node_provision_time,
        Some(std::time::Duration::from_secs(1800))
    );
    assert_eq!(o.zero_or_max_node_scaling, Some(true));
    assert_eq!(o.ignore_daemonsets_utilization, Some(false));

    // Defaults: no overrides, standard reservations.
    let d = ok(&with_group("")).node_groups[0].clone();
    assert!(d.options.is_empty());
    assert!(d.template_taints.is_empty());
    assert_eq!((d.reserved_cpu_millis, d.reserved_memory_mib), (100, 256));
}

#[test]
fn bad_template_taint() {
    single(
        &with_group("template-taint = a=b:Sometimes\n"),
        13,
        "nodegroup \"ng\"",
        Some("template-taint"),
        "must be NoSchedule, PreferNoSchedule or NoExecute",
    );
    single(
        &with_group("template-taint = a=b\n"),
        13,
        "nodegroup \"ng\"",
        Some("template-taint"),
        "is not key=value:Effect",
    );
}

#[test]
fn bad_reservations() {
    single(
        &with_group("template-reserved-cpu = lots\n"),
        13,
        "nodegroup \"ng\"",
        Some("template-reserved-cpu"),
        "is not a CPU amount",
    );
    single(
        &with_group("template-reserved-memory = 1GB\n"),
        13,
        "nodegroup \"ng\"",
        Some("template-reserved-memory"),
        "is not a memory amount",
    );
}

#[test]
fn bad_option_overrides() {
    single(
        &with_group("scale-down-utilization-threshold = 1.5\n"),
        13,
        "nodegroup \"ng\"",
        Some("scale-down-utilization-threshold"),
        "not a fraction between 0 and 1",
    );
    single(
        &with_group("scale-down-unneeded-time = 10\n"),
        13,
        "nodegroup \"ng\"",
        Some("scale-down-unneeded-time"),
        "is not a duration",
    );
    single(
        &with_group("zero-or-max-node-scaling = perhaps\n"),
        13,
        "nodegroup \"ng\"",
        Some("zero-or-max-node-scaling"),
        "invalid boolean",
    );
}

#[test]
fn credentials_must_be_header_safe() {
    single(
        &with_group("").replace(
            "kamatera-api-secret = s3cret-value",
            "kamatera-api-secret = \"two words\"",
        ),
        3,
        "global",
        Some("kamatera-api-secret"),
        "printable ASCII without spaces",
    );
    let ps = problems(&with_group("").replace(
        "kamatera-api-secret = s3cret-value",
        "kamatera-api-secret = \"two words\"",
    ));
    assert!(
        !format!("{ps:?}").contains("two words"),
        "the secret is not echoed"
    );
}

#[test]
fn schedules_hibernation_and_time_zone() {
    let cfg = ok(&format!(
        "{BASE}timezone = Europe/Berlin\n\n[nodegroup \"ng\"]\nmax-size = 5\n\
         schedule = \"cron=0 8 * * 1-5; duration=10h; min-size=2\"\n\
         schedule = \"cron=30 8 * * 1-5; duration=1h; max-size=4\"\n\
         hibernate = \"cron=0 20 * * 5; duration=60h; force=true\"\n"
    ));
    assert_eq!(cfg.timezone.name(), "Europe/Berlin");
    let g = &cfg.node_groups[0];
    assert_eq!(g.schedules.len(), 2);
    assert_eq!(g.schedules[0].min_size, Some(2));
    assert_eq!(g.hibernate.len(), 1);
    assert!(g.hibernate[0].force);
    assert_eq!(ok(&with_group("")).timezone.name(), "UTC", "default");

    // `;` starts a comment: an unquoted entry is cut short, and the error says so.
    single(
        &with_group("schedule = cron=0 8 * * *; duration=1h; min-size=2\n"),
        13,
        "nodegroup \"ng\"",
        Some("schedule"),
        "duration=... is missing (quote the whole entry",
    );
    single(
        &with_group("hibernate = \"cron=0 25 * * *; duration=1h\"\n"),
        13,
        "nodegroup \"ng\"",
        Some("hibernate"),
        "cron hour field \"25\": 25 is outside 0-23",
    );
    single(
        &with_group("max-size = 3\nschedule = \"cron=0 8 * * *; duration=1h; min-size=5\"\n"),
        14,
        "nodegroup \"ng\"",
        Some("schedule"),
        "min-size 5 is above max-size 3 while the window is open",
    );
    single(
        &format!("{BASE}timezone = Mars/Olympus_Mons\n\n[nodegroup \"ng\"]\n"),
        11,
        "global",
        Some("timezone"),
        "unknown time zone \"Mars/Olympus_Mons\"",
    );
}

#[test]
fn prices_are_all_or_nothing() {
    let two = |a: &str, b: &str| {
        format!("{BASE}\n[nodegroup \"a\"]\n{a}\n[nodegroup \"b\"]\nname-prefix = b\n{b}\n")
    };
    let cfg = ok(&two("price-per-hour = 0.05", "price-per-hour = 0.1"));
    assert_eq!(
        cfg.node_groups
            .iter()
            .map(|g| g.price_per_hour.map(|p| p.0))
            .collect::<Vec<_>>(),
        [Some(0.05), Some(0.1)]
    );
    let ps = problems(&two("price-per-hour = 0.05", ""));
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert!(
        ps[0]
            .message
            .contains("price-per-hour is set on a but not on b"),
        "{}",
        ps[0]
    );
    single(
        &with_group("price-per-hour = -1\n"),
        13,
        "nodegroup \"ng\"",
        Some("price-per-hour"),
        "\"-1\" is not a price",
    );
    let ps = problems(&format!(
        "{BASE}pod-price-per-cpu-hour = 0.01\n\n[nodegroup \"ng\"]\nprice-per-hour = 0.05\n"
    ));
    assert!(
        ps[0]
            .message
            .contains("give pod-price-per-cpu-hour and pod-price-per-gib-hour together"),
        "{ps:#?}"
    );
    let ps = problems(&format!(
        "{BASE}pod-price-per-cpu-hour = 0.01\npod-price-per-gib-hour = 0.002\n\n[nodegroup \"ng\"]\n"
    ));
    assert!(
        ps[0]
            .message
            .contains("pod prices without node-group prices"),
        "{ps:#?}"
    );
}
