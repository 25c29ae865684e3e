//! The `kamatera-ca-bench` binary runs end to end at a tiny scale and writes a report with every figure.
//! (No timing is asserted: figures are for BENCHMARKS.md, not pass/fail.)

use std::process::Command;

#[test]
fn bench_writes_a_complete_report() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("bench.md");
    let status = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-bench"))
        .args([
            "--scales",
            "5x2",
            "--calls",
            "40",
            "--concurrency",
            "4",
            "--output",
        ])
        .arg(&out)
        .env_remove("KAMATERA_API_CLIENT_ID")
        .env_remove("KAMATERA_API_SECRET")
        .output()
        .expect("run bench");
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let report = std::fs::read_to_string(&out).expect("report written");
    for expected in [
        "cargo run --release --bin kamatera-ca-bench -- --scales 5x2 --calls 40 --concurrency 4",
        "| 5 × 2 | 10 |",
        "| NodeGroups | 40 |",
        "| NodeGroupForNode (known) | 40 |",
        "| NodeGroupForNode (foreign) | 40 |",
        "| NodeGroupTargetSize | 40 |",
        "| NodeGroupNodes | 40 |",
        "| NodeGroupTemplateNodeInfo | 40 |",
        "| NodeGroupGetOptions | 40 |",
        "| Refresh | 40 |",
        "Scale-up of 50 servers across 5 groups",
        "create_server 50",
        "## Restarts",
        "## A scale-up whose commands start late",
        "at most 1 id per queue request",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
    // The standby pool: the pooled scale-up buys nothing and powers on the pool; without a pool
    // it buys all five.
    assert!(
        report.contains("## A scale-up from the standby pool"),
        "{report}"
    );
    let row = |start: &str| -> Vec<String> {
        report
            .lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no {start:?} row in:\n{report}"))
            .split('|')
            .map(|c| c.trim().to_string())
            .collect()
    };
    let pooled = row("| standby pool of 5 |");
    assert_eq!(pooled[3..5], ["0", "5"], "{pooled:?}");
    let bought = row("| no pool |");
    assert_eq!(bought[3..5], ["5", "0"], "{bought:?}");
    // One listing per steady refresh, and nothing else.
    assert!(report.contains("| 1.00 |"), "{report}");
    // A warm restart reads no tags: at most 3 calls (listings), where a cold one reads a tag
    // per server in the account.
    let restart = report
        .lines()
        .find(|l| l.starts_with("| 5 × 2 | ") && l.matches('|').count() == 7)
        .unwrap_or_else(|| panic!("no restart row in:\n{report}"));
    let cells: Vec<&str> = restart.split('|').map(str::trim).collect();
    let num = |i: usize| {
        cells[i]
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{restart}"))
    };
    let (servers, cold, warm) = (num(2), num(4), num(6));
    assert!(cold > servers, "cold: a tag read per server: {restart}");
    assert!(warm <= 3, "warm: listings only: {restart}");
}

/// The benchmark is a developer tool: the operator's binary neither lists nor accepts it.
#[test]
fn the_operators_binary_has_no_bench() {
    let help = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("serve"), "{text}");
    assert!(!text.contains("bench"), "{text}");
    let bench = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-provider"))
        .arg("bench")
        .output()
        .expect("run bench");
    assert_eq!(bench.status.code(), Some(2));
    // Nor does the bench binary show its internal `serve`.
    let help = Command::new(env!("CARGO_BIN_EXE_kamatera-ca-bench"))
        .arg("--help")
        .output()
        .expect("run --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--scales"), "{text}");
    assert!(!text.contains("serve"), "{text}");
}
