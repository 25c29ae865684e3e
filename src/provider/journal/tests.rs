//! Tests of the journal (beside `journal.rs`): restore from a written journal, and its size at scale.

use super::*;

mod restore {
    use super::*;
    use crate::provider::state::Gone;

    const QUEUED: &str = "g-000000000a0";
    const SENT: &str = "g-000000000a1";
    const ACCEPTED: &str = "g-000000000a2";
    const DELETING: &str = "g-000000000a3";
    const RUNNING: &str = "g-000000000a4";
    const REUSED: &str = "g-000000000a5";
    const PARKING: &str = "g-000000000a6";
    const OTHER: &str = "g-000000000a7";

    /// Node group `g` (name prefix `g`) is the only one in the config.
    fn only_g(g: &str) -> Option<String> {
        (g == "g").then(|| "g".to_string())
    }

    fn any_g(_: &str) -> Option<String> {
        Some("g".to_string())
    }

    fn pending(id: &str, kind: CommandKind, now: Instant) -> Option<Pending> {
        Some(Pending {
            id: id.into(),
            kind,
            since: now,
            unknown_since: None,
        })
    }

    fn sample(now: Instant) -> State {
        let mut st = State::default();
        let mut add = |name: &str, phase: Phase, create: CreateStatus, cmd: Option<Pending>| {
            let mut i = Instance::creating(name.into(), "g".into(), now);
            i.restore_life(match phase {
                Phase::Creating => Life::Creating,
                Phase::Running => Life::Running,
                Phase::Deleting => Life::Deleting(Leaving::default()),
            });
            i.create = create;
            i.command = cmd;
            if phase == Phase::Deleting {
                i.server_id = Some(format!("id-{name}"));
                i.seen = true;
            }
            st.insert(name.to_string(), i);
        };
        add(QUEUED, Phase::Creating, CreateStatus::Queued, None);
        add(SENT, Phase::Creating, CreateStatus::Sent, None);
        add(
            ACCEPTED,
            Phase::Creating,
            CreateStatus::Accepted,
            pending("7", CommandKind::Create, now),
        );
        add(
            DELETING,
            Phase::Deleting,
            CreateStatus::Accepted,
            pending("8", CommandKind::PowerOff, now),
        );
        add(RUNNING, Phase::Running, CreateStatus::Adopted, None);
        add(REUSED, Phase::Creating, CreateStatus::Reused, None);
        add(
            PARKING,
            Phase::Deleting,
            CreateStatus::Adopted,
            pending("9", CommandKind::PowerOff, now),
        );
        add(OTHER, Phase::Creating, CreateStatus::Queued, None);
        if let Some(mut i) = st.remove(OTHER) {
            i.group = "gone".into();
            st.insert(OTHER.into(), i);
        }
        st.edit(REUSED, |i| {
            i.server_id = Some(format!("id-{REUSED}"));
            i.seen = true;
        });
        st.edit(PARKING, |i| {
            i.restore_life(Life::Deleting(Leaving {
                park: true,
                ..Leaving::default()
            }));
            i.powered_off(now);
        });
        st
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let now = Instant::now();
        write_atomic(&path, &render("c", &sample(now))).expect("write");
        assert!(!tmp_path(&path).exists(), "temporary file renamed away");

        let mut st = State::default();
        let (r, to_send) = restore(&path, "c", &only_g, &mut st, now);
        assert_eq!(
            r,
            Restored {
                instances: 6,
                discarded: None,
                dropped: vec![format!(
                    "\"{OTHER}\": node group \"gone\" is not in the config"
                )],
            }
        );
        assert_eq!(
            to_send,
            vec![
                Action::Create {
                    name: QUEUED.into(),
                    group: "g".into()
                },
                Action::PowerOn {
                    name: REUSED.into(),
                    server_id: format!("id-{REUSED}")
                }
            ]
        );
        assert!(!st.contains(RUNNING), "running servers come from tags");
        assert!(!st.contains(OTHER), "unknown group dropped");
        let sent = st.instance(SENT).expect("restored");
        assert_eq!(sent.create, CreateStatus::Uncertain, "never sent twice");
        assert!(
            sent.error.is_none(),
            "waits for its server before reporting an error"
        );
        let accepted = st.instance(ACCEPTED).expect("restored");
        assert_eq!(
            accepted.command.as_ref().map(|c| (c.id.as_str(), c.kind)),
            Some(("7", CommandKind::Create))
        );
        assert!(accepted.error.is_none());
        let deleting = st.instance(DELETING).expect("restored");
        assert_eq!(deleting.phase(), Phase::Deleting);
        assert_eq!(deleting.server_id, Some(format!("id-{DELETING}")));
        assert_eq!(
            deleting.command.as_ref().map(|c| c.kind),
            Some(CommandKind::PowerOff)
        );
        assert!(!deleting.parking(), "no park decision: terminate");
        let parking = st.instance(PARKING).expect("restored");
        assert!(
            parking.parking()
                && parking
                    .leaving()
                    .is_some_and(|l| l.powered_off_at.is_some())
        );
        assert_eq!(
            st.instance(REUSED).expect("restored").create,
            CreateStatus::Reused
        );
        assert!(st.instance(REUSED).expect("restored").action_in_flight);
    }

    #[test]
    fn files_without_warm_pool_fields_still_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            r#"{"version": 1, "cluster": "c", "instances": [{"name": "g-0123456789a", "group": "g",
              "phase": "deleting", "create": "accepted", "server_id": "1", "seen": true,
              "terminated": false, "command_id": "5", "command_kind": "poweroff"}]}"#,
        )
        .expect("write");
        let mut st = State::default();
        let (r, _) = restore(&path, "c", &any_g, &mut st, Instant::now());
        assert_eq!(r.instances, 1, "{r:?}");
        assert!(!st.instance("g-0123456789a").expect("restored").parking());
    }

    /// A command kind the provider never writes is not read as a create: the entry is dropped
    /// with its reason, and nothing is sent for it.
    #[test]
    fn an_unknown_command_kind_drops_the_entry() {
        let text = r#"{"version": 1, "cluster": "c", "instances": [{"name": "g-0123456789a",
            "group": "g", "phase": "creating", "create": "accepted", "seen": false,
            "terminated": false, "command_id": "5", "command_kind": "reboot"}]}"#;
        let mut st = State::default();
        let (r, to_send) =
            restore_text(text, "c", &any_g, &mut st, Instant::now()).expect("a journal");
        assert_eq!(r.instances, 0, "{r:?}");
        assert_eq!(
            r.dropped,
            vec!["\"g-0123456789a\": unknown command kind \"reboot\"".to_string()]
        );
        assert!(to_send.is_empty() && !st.contains("g-0123456789a"));
    }

    /// Creates for the standby pool, one a scale-up took while it was under way, and the
    /// standby servers come back as written; a standby claim for a group not in the config, or
    /// a name its group never makes, is dropped with its reason.
    #[test]
    fn the_standby_pool_round_trips_and_bad_claims_are_dropped() {
        let now = Instant::now();
        let mut st = State::default();
        for (name, standby, wake) in [
            ("g-00000000b01", true, false),
            ("g-00000000b02", false, true),
        ] {
            let mut i = Instance::creating(name.into(), "g".into(), now);
            i.create = CreateStatus::Accepted;
            i.command = pending("7", CommandKind::Create, now);
            i.standby = standby;
            i.wake = wake;
            st.insert(name.into(), i);
        }
        st.mark_fresh("g-00000000b03".into(), "g".into());
        let text = render("c", &st);
        let mut back = State::default();
        let (r, _) = restore_text(&text, "c", &only_g, &mut back, now).expect("a journal");
        assert_eq!(r.instances, 2, "{r:?}");
        assert!(r.dropped.is_empty(), "{r:?}");
        let b1 = back.instance("g-00000000b01").expect("b01");
        assert!(b1.standby && !b1.wake && !b1.in_target());
        let b2 = back.instance("g-00000000b02").expect("b02");
        assert!(!b2.standby && b2.wake && b2.in_target());
        let fresh: Vec<(&String, &String)> = back.fresh().collect();
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].0, "g-00000000b03");

        let forged = r#"{"version": 1, "cluster": "c", "instances": [], "standby": [
            {"server": "g-00000000b04", "group": "g"},
            {"server": "g-00000000b05", "group": "nope"},
            {"server": "x; rm -rf", "group": "g"}]}"#;
        let mut st = State::default();
        let (r, _) = restore_text(forged, "c", &only_g, &mut st, now).expect("a journal");
        assert_eq!(
            r.dropped,
            vec![
                "standby server \"g-00000000b05\": node group \"nope\" is not in the config"
                    .to_string(),
                "standby server \"x; rm -rf\": not a server name the provider makes for node group \"g\""
                    .to_string(),
            ]
        );
        assert_eq!(st.fresh().count(), 1);
    }

    /// The node controller's queue comes back; entries that are not a plain server name and a
    /// known reason are dropped with their reason, queueing nothing.
    #[test]
    fn the_node_queue_is_restored_and_bad_entries_are_dropped() {
        let text = r#"{"version": 1, "cluster": "c", "instances": [], "nodes": [
            {"server": "g-0123456789a", "why": "terminated"},
            {"server": "g-0123456789b", "why": "parked"},
            {"server": "../../etc", "why": "terminated"},
            {"server": "g-0123456789c", "why": "exploded"}]}"#;
        let mut st = State::default();
        let (r, _) = restore_text(text, "c", &any_g, &mut st, Instant::now()).expect("a journal");
        assert_eq!(
            r.dropped,
            vec![
                "a queued Node of server \"../../etc\" (\"terminated\")".to_string(),
                "a queued Node of server \"g-0123456789c\" (\"exploded\")".to_string(),
            ]
        );
        let queued: Vec<(String, Gone)> = st.node_queue().map(|(n, g)| (n.clone(), g)).collect();
        assert_eq!(
            queued,
            vec![
                ("g-0123456789a".to_string(), Gone::Terminated),
                ("g-0123456789b".to_string(), Gone::Parked),
            ]
        );
        // And written back as it was read.
        let again = render("c", &st);
        assert!(
            again.contains(r#"{"server":"g-0123456789a","why":"terminated"}"#),
            "{again}"
        );
    }

    #[test]
    fn missing_file_is_a_fresh_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut st = State::default();
        let (r, to_send) = restore(
            &dir.path().join("none.json"),
            "c",
            &any_g,
            &mut st,
            Instant::now(),
        );
        assert_eq!(r, Restored::default());
        assert!(to_send.is_empty() && st.instances().next().is_none());
    }

    #[test]
    fn corrupt_or_foreign_files_are_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        for (text, why) in [
            ("{ not json".to_string(), "not a valid state file"),
            (
                r#"{"version": 9, "cluster": "c", "instances": []}"#.to_string(),
                "version 9",
            ),
            (
                render("other", &sample(Instant::now())),
                "belongs to cluster \"other\"",
            ),
        ] {
            std::fs::write(&path, &text).expect("write");
            let mut st = State::default();
            let (r, _) = restore(&path, "c", &any_g, &mut st, Instant::now());
            let discarded = r.discarded.expect("discarded");
            assert!(discarded.contains(why), "{discarded}");
            assert!(discarded.contains(".corrupt"), "{discarded}");
            assert!(st.instances().next().is_none());
            assert!(!path.exists(), "moved aside");
        }
    }

    #[test]
    fn probe_leaves_the_journal_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        std::fs::write(&path, "keep").expect("write");
        probe(&path).expect("writable");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "keep");
        // A missing directory is made; a parent that is a file, or a path that is a
        // directory, cannot hold the journal.
        let nested = dir.path().join("new/state.json");
        probe(&nested).expect("directory made");
        let file_parent = dir.path().join("state.json/inner.json");
        assert!(probe(&file_parent).is_err());
        let e = probe(dir.path()).expect_err("a directory");
        assert!(e.contains("is a directory"), "{e}");
    }
}

mod size {
    use super::*;

    #[test]
    fn ten_thousand_servers_fit_a_configmap() {
        let now = Instant::now();
        let mut st = State::default();
        for i in 0..10_000u32 {
            let group = format!("group-{:02}", i % 20);
            st.record_tags(
                &format!("{i:08x}-1b2c-4d5e-8f90-{:012x}", u64::from(i) * 7919),
                vec!["k8sca-production".into(), format!("k8scang-{group}")],
                false,
            );
        }
        // And a scale-up of 100 in flight.
        for i in 0..100u32 {
            let mut inst = Instance::creating(format!("g-{i:011x}"), "g".into(), now);
            inst.create = CreateStatus::Accepted;
            inst.command = Some(Pending {
                id: format!("{}", 1_000_000 + i),
                kind: CommandKind::Create,
                since: now,
                unknown_since: None,
            });
            st.insert(format!("g-{i:011x}"), inst);
        }
        let text = render("production", &st);
        eprintln!(
            "journal at 10,000 servers and 100 creates in flight: {} bytes",
            text.len()
        );
        assert!(text.len() < 1024 * 1024 * 6 / 10, "{} bytes", text.len());
    }
}
