//! Tests of the state machine (beside `state.rs`).

use super::*;
use crate::kamatera::CommandState;

/// Limits for the state-machine tests: watch and grace in seconds, the rest fixed (unreported
/// commands given up after 60 s, one missed listing is proof).
fn test_limits(watch: u64, grace: u64) -> Limits {
    Limits {
        room_wait: Duration::from_secs(600),
        uncertain_watch: Duration::from_secs(watch),
        unknown_command: Duration::from_secs(60),
        uncertain_grace: Duration::from_secs(grace),
    }
}

mod transitions {
    use super::*;

    fn listed(name: &str, power: Power, tags: &[&str]) -> Observed {
        Observed {
            id: format!("id-{name}"),
            name: name.into(),
            power,
            tags: Some(tags.iter().map(|t| t.to_string()).collect()),
            presumed: false,
        }
    }

    fn status(id: &str, state: CommandState) -> CommandStatus {
        CommandStatus {
            id: id.into(),
            state,
            log: "Name: x\nsome detail".into(),
        }
    }

    #[test]
    fn create_lifecycle() {
        let now = Instant::now();
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.create = CreateStatus::Accepted;
        i.command = Some(Pending {
            id: "1".into(),
            kind: CommandKind::Create,
            since: now,
            unknown_since: None,
        });
        st.insert("a".into(), i);
        let tags = vec!["k8sca-c".to_string(), "k8scang-g".to_string()];
        let groups = [GroupTags {
            name: "g",
            tags: &tags,
        }];
        let w = test_limits(60, 60);

        // Listed off while the command runs: still creating.
        let a = st.apply(
            &[listed("a", Power::Off, &[])],
            &[status("1", CommandState::Progress)],
            &[],
            &groups,
            w,
            now,
        );
        assert!(a.is_empty());
        assert_eq!(st.instances["a"].phase(), Phase::Creating);
        assert_eq!(st.instances["a"].server_id.as_deref(), Some("id-a"));
        // Complete, still off: creating, command cleared.
        st.apply(
            &[listed("a", Power::Off, &[])],
            &[status("1", CommandState::Complete)],
            &[],
            &groups,
            w,
            now,
        );
        assert_eq!(st.instances["a"].phase(), Phase::Creating);
        assert!(st.instances["a"].command.is_none());
        // On: running.
        st.apply(&[listed("a", Power::On, &[])], &[], &[], &groups, w, now);
        assert_eq!(st.instances["a"].phase(), Phase::Running);
        assert_eq!(st.target_size("g"), 1);
        // Vanished out of band: dropped.
        st.apply(&[], &[], &[], &groups, w, now);
        assert!(st.instances.is_empty());
    }

    #[test]
    fn create_errors_become_error_info() {
        let now = Instant::now();
        let mut st = State::default();
        for (name, id) in [("a", "1"), ("b", "2"), ("c", "3")] {
            let mut i = Instance::creating(name.into(), "g".into(), now);
            i.create = CreateStatus::Accepted;
            i.command = Some(Pending {
                id: id.into(),
                kind: CommandKind::Create,
                since: now,
                unknown_since: None,
            });
            st.insert(name.into(), i);
        }
        let mut quota = status("3", CommandState::Error);
        quota.log = "Name: c\nError: server quota exceeded".into();
        st.apply(
            &[],
            &[
                status("1", CommandState::Error),
                status("2", CommandState::Cancelled),
                quota,
            ],
            &[],
            &[],
            test_limits(60, 60),
            now,
        );
        let e = |n: &str| st.instances[n].error.clone().expect("error info");
        assert_eq!(
            (e("a").class, e("a").code),
            (InstanceErrorClass::Other, "CREATE_FAILED")
        );
        assert_eq!(e("b").code, "CREATE_CANCELLED");
        assert_eq!(
            (e("c").class, e("c").code),
            (InstanceErrorClass::OutOfResources, "QUOTA_EXCEEDED")
        );
        assert_eq!(
            st.target_size("g"),
            3,
            "errored creates count until the autoscaler deletes them"
        );
    }

    #[test]
    fn adopts_tagged_running_servers_only() {
        let now = Instant::now();
        let mut st = State::default();
        let tags = vec!["k8sca-c".to_string(), "k8scang-g".to_string()];
        let groups = [GroupTags {
            name: "g",
            tags: &tags,
        }];
        st.apply(
            &[
                listed("ours", Power::On, &["k8sca-c", "k8scang-g", "extra"]),
                listed("parked", Power::Off, &["k8sca-c", "k8scang-g"]),
                listed("other-cluster", Power::On, &["k8sca-d", "k8scang-g"]),
                listed("untagged", Power::On, &[]),
            ],
            &[],
            &[],
            &groups,
            test_limits(60, 60),
            now,
        );
        let names: Vec<&String> = st.instances.keys().collect();
        assert_eq!(names, vec!["ours"]);
        assert_eq!(
            st.parked
                .get("g")
                .map(|p| p.iter().map(|s| s.name.as_str()).collect::<Vec<_>>()),
            Some(vec!["parked"]),
            "the parked one is the group's pool"
        );
        assert!(st.parked["g"][0].exact);
        assert_eq!(st.instances["ours"].phase(), Phase::Running);
    }

    #[test]
    fn deleting_waits_for_a_running_create_then_terminates() {
        let now = Instant::now();
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.create = CreateStatus::Accepted;
        i.restore_life(Life::Deleting(Leaving::default()));
        i.command = Some(Pending {
            id: "1".into(),
            kind: CommandKind::Create,
            since: now,
            unknown_since: None,
        });
        st.insert("a".into(), i);
        let w = test_limits(60, 60);
        // Listed off, create still running (or the queue does not know it): wait.
        assert!(
            st.apply(&[listed("a", Power::Off, &[])], &[], &[], &[], w, now)
                .is_empty()
        );
        // Powered on: creation is over, terminate even though the queue never answered.
        let a = st.apply(&[listed("a", Power::On, &[])], &[], &[], &[], w, now);
        assert_eq!(
            a,
            vec![Action::Terminate {
                name: "a".into(),
                server_id: "id-a".into()
            }]
        );
        assert_eq!(st.target_size("g"), 0);
        // A cancelled create that never shows up is forgotten after the watch.
        let mut j = Instance::creating("b".into(), "g".into(), now);
        j.create = CreateStatus::Accepted;
        j.restore_life(Life::Deleting(Leaving::default()));
        st.insert("b".into(), j);
        st.apply(&[], &[], &[], &[], w, now);
        assert!(st.instances.contains_key("b"));
        st.apply(&[], &[], &[], &[], w, now + Duration::from_secs(61));
        assert!(!st.instances.contains_key("b"));
    }

    #[test]
    fn uncertain_create_is_watched_then_forgotten() {
        let now = Instant::now();
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.create = CreateStatus::Uncertain;
        i.restore_life(Life::Deleting(Leaving::default()));
        st.insert("a".into(), i);
        let w = test_limits(60, 60);
        assert!(st.apply(&[], &[], &[], &[], w, now).is_empty());
        assert!(
            !st.instances.contains_key("a") && st.watched.contains_key("a"),
            "not the autoscaler's any more, but watched"
        );
        // The server shows up late: terminated.
        let a = st.apply(&[listed("a", Power::On, &[])], &[], &[], &[], w, now);
        assert_eq!(
            a,
            vec![Action::Terminate {
                name: "a".into(),
                server_id: "id-a".into()
            }]
        );
        // A second uncertain one that never shows up is forgotten after the watch.
        let mut j = Instance::creating("b".into(), "g".into(), now);
        j.create = CreateStatus::Uncertain;
        j.restore_life(Life::Deleting(Leaving::default()));
        st.insert("b".into(), j);
        st.apply(&[], &[], &[], &[], w, now);
        assert!(st.watched.contains_key("b"));
        st.apply(&[], &[], &[], &[], w, now + Duration::from_secs(61));
        assert!(!st.instances.contains_key("b") && !st.watched.contains_key("b"));
    }
}

mod uncertain_tests {
    use super::*;

    #[test]
    fn uncertain_create_is_adopted_when_its_server_appears() {
        let now = Instant::now();
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.create = CreateStatus::Uncertain;
        st.insert("a".into(), i);
        st.apply(
            &[],
            &[],
            &[],
            &[],
            test_limits(600, 30),
            now + Duration::from_secs(5),
        );
        assert!(
            st.instances["a"].error.is_none(),
            "within the grace: no error yet"
        );
        let server = Observed {
            id: "id-a".into(),
            name: "a".into(),
            power: Power::On,
            tags: None,
            presumed: false,
        };
        st.apply(
            &[server],
            &[],
            &[],
            &[],
            test_limits(600, 30),
            now + Duration::from_secs(10),
        );
        assert_eq!(st.instances["a"].phase(), Phase::Running);
        assert_eq!(st.instances["a"].create, CreateStatus::Accepted);
    }

    #[test]
    fn uncertain_create_reports_an_error_after_the_grace() {
        let now = Instant::now();
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.create = CreateStatus::Uncertain;
        st.insert("a".into(), i);
        st.apply(
            &[],
            &[],
            &[],
            &[],
            test_limits(600, 30),
            now + Duration::from_secs(31),
        );
        let e = st.instances["a"]
            .error
            .clone()
            .expect("error after the grace");
        assert_eq!(
            (e.code, e.class),
            ("CREATE_UNCERTAIN", InstanceErrorClass::Other)
        );
    }

    #[test]
    fn unreported_commands_are_given_up_after_the_limit() {
        let now = Instant::now();
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.restore_life(Life::Deleting(Leaving::default()));
        i.server_id = Some("id-a".into());
        i.seen = true;
        i.command = Some(Pending {
            id: "9".into(),
            kind: CommandKind::PowerOff,
            since: now,
            unknown_since: None,
        });
        st.insert("a".into(), i);
        let listed = [Observed {
            id: "id-a".into(),
            name: "a".into(),
            power: Power::On,
            tags: None,
            presumed: false,
        }];
        let unanswered = ["9".to_string()];
        assert!(
            st.apply(&listed, &[], &unanswered, &[], test_limits(600, 30), now)
                .is_empty()
        );
        let a = st.apply(
            &listed,
            &[],
            &unanswered,
            &[],
            test_limits(600, 30),
            now + Duration::from_secs(61),
        );
        assert_eq!(
            a,
            vec![Action::Terminate {
                name: "a".into(),
                server_id: "id-a".into()
            }]
        );
    }
}

mod park_tests {
    use super::*;

    fn listed(power: Power) -> Observed {
        Observed {
            id: "id-a".into(),
            name: "a".into(),
            power,
            tags: Some(vec!["k8sca-c".into(), "k8scang-g".into()]),
            presumed: false,
        }
    }

    fn parking(now: Instant) -> State {
        let mut st = State::default();
        let mut i = Instance::creating("a".into(), "g".into(), now);
        i.restore_life(Life::Deleting(Leaving::default()));
        i.create = CreateStatus::Adopted;
        i.server_id = Some("id-a".into());
        i.seen = true;
        i.restore_life(Life::Deleting(Leaving {
            park: true,
            ..Leaving::default()
        }));
        i.command = Some(Pending {
            id: "5".into(),
            kind: CommandKind::PowerOff,
            since: now,
            unknown_since: None,
        });
        st.insert("a".into(), i);
        st
    }

    fn done(id: &str, state: CommandState) -> CommandStatus {
        CommandStatus {
            id: id.into(),
            state,
            log: String::new(),
        }
    }

    #[test]
    fn parks_once_the_listing_shows_it_off() {
        let now = Instant::now();
        let tags = vec!["k8sca-c".to_string(), "k8scang-g".to_string()];
        let groups = [GroupTags {
            name: "g",
            tags: &tags,
        }];
        let mut st = parking(now);
        assert_eq!(
            st.parked_or_parking("g"),
            1,
            "a decided park counts at once"
        );
        // Complete, but the listing still says on: wait (never adopted as running).
        let a = st.apply(
            &[listed(Power::On)],
            &[done("5", CommandState::Complete)],
            &[],
            &groups,
            test_limits(600, 30),
            now,
        );
        assert!(a.is_empty());
        assert_eq!(st.instances["a"].phase(), Phase::Deleting);
        // Off: forgotten, in the group's pool, reported for Node cleanup.
        st.apply(
            &[listed(Power::Off)],
            &[],
            &[],
            &groups,
            test_limits(600, 30),
            now,
        );
        assert!(st.instances.is_empty());
        assert_eq!(st.reads.outcomes.parked, vec!["a".to_string()]);
        assert_eq!(st.reusable("g", true).len(), 1);
        assert_eq!(st.parked_or_parking("g"), 1);
    }

    #[test]
    fn a_power_off_that_never_shows_becomes_a_terminate() {
        let now = Instant::now();
        let mut st = parking(now);
        st.apply(
            &[listed(Power::On)],
            &[done("5", CommandState::Complete)],
            &[],
            &[],
            test_limits(600, 30),
            now,
        );
        let a = st.apply(
            &[listed(Power::On)],
            &[],
            &[],
            &[],
            test_limits(600, 30),
            now + Duration::from_secs(31),
        );
        assert_eq!(
            a,
            vec![Action::Terminate {
                name: "a".into(),
                server_id: "id-a".into()
            }]
        );
        assert!(!st.instances["a"].parking());
    }

    #[test]
    fn a_failed_power_off_terminates_instead_of_parking() {
        let now = Instant::now();
        let mut st = parking(now);
        let a = st.apply(
            &[listed(Power::On)],
            &[done("5", CommandState::Error)],
            &[],
            &[],
            test_limits(600, 30),
            now,
        );
        assert_eq!(
            a,
            vec![Action::Terminate {
                name: "a".into(),
                server_id: "id-a".into()
            }]
        );
        assert!(!st.instances["a"].parking());
    }

    #[test]
    fn reuse_takes_only_exact_tag_sets() {
        let now = Instant::now();
        let tags = vec!["k8sca-c".to_string(), "k8scang-g".to_string()];
        let groups = [GroupTags {
            name: "g",
            tags: &tags,
        }];
        let mut st = State::default();
        let mut extra = listed(Power::Off);
        extra.name = "b".into();
        extra.id = "id-b".into();
        extra.tags = Some(vec!["k8sca-c".into(), "k8scang-g".into(), "keep".into()]);
        st.apply(
            &[listed(Power::Off), extra],
            &[],
            &[],
            &groups,
            test_limits(600, 30),
            now,
        );
        assert_eq!(st.parked_or_parking("g"), 2, "both count toward the cap");
        let names: Vec<String> = st.reusable("g", true).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["a"], "a server tagged further is left alone");
    }
}

mod recheck_tests {
    use super::*;

    #[test]
    fn rechecks_tags_only_the_journal_vouched_for_first_then_all_in_turn() {
        let mut st = State::default();
        let ids: Vec<String> = ["a", "b", "c", "d"].map(String::from).into();
        for id in &ids {
            st.tags.insert(id.clone(), vec!["k8sca-c".into()]);
        }
        st.live_tags.extend(["a".to_string(), "c".to_string()]);
        // Restored from the journal, never read by this process: first.
        assert_eq!(st.recheck(&ids, &[], 2), ["b", "d"]);
        st.live_tags.extend(["b".to_string(), "d".to_string()]);
        // Then every server in turn, skipping those read anyway this pass.
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.extend(st.recheck(&ids, &["c".to_string()], 1));
        }
        assert_eq!(seen, ["a", "b", "d", "a"]);
        // Uncached ids are never "re"-read.
        assert!(st.recheck(&["zz".to_string()], &[], 3).is_empty());
    }
}

/// The journal version moves exactly when something the journal records changes: a pass that
/// changes nothing, tags read again unchanged, or a running instance's misses do not move it;
/// every mutator that changes journaled data does.
mod version {
    use super::*;

    fn listed(name: &str, power: Power) -> Observed {
        Observed {
            id: format!("id-{name}"),
            name: name.into(),
            power,
            tags: Some(vec!["k8sca-c".into(), "k8scang-g".into()]),
            presumed: false,
        }
    }

    #[test]
    fn moves_only_when_the_journal_would_change() {
        let now = Instant::now();
        let tags = vec!["k8sca-c".to_string(), "k8scang-g".to_string()];
        let groups = [GroupTags {
            name: "g",
            tags: &tags,
        }];
        let limits = test_limits(60, 60);
        let mut st = State::default();
        // A running server adopted from the listing: journaled instances unchanged (the
        // journal leaves out running ones), but insert bumps.
        st.apply(&[listed("r", Power::On)], &[], &[], &groups, limits, now);
        assert_eq!(st.instance("r").map(Instance::phase), Some(Phase::Running));
        let v = st.version();
        for _ in 0..3 {
            st.apply(&[listed("r", Power::On)], &[], &[], &groups, limits, now);
        }
        assert_eq!(st.version(), v, "idle passes leave the version alone");
        st.record_tags("id-r", tags.clone(), true);
        st.record_tags("id-r", tags.clone(), false);
        assert_eq!(st.version(), v + 1, "only new tags move it");
        let v = st.version();
        st.record_tags("id-r", tags.clone(), false);
        assert_eq!(st.version(), v, "the same tags again do not");

        // A create in flight: its command completing is journaled.
        let mut i = Instance::creating("c".into(), "g".into(), now);
        i.create = CreateStatus::Accepted;
        i.command = Some(Pending {
            id: "7".into(),
            kind: CommandKind::Create,
            since: now,
            unknown_since: None,
        });
        st.insert("c".into(), i);
        let v = st.version();
        let progress = CommandStatus {
            id: "7".into(),
            state: CommandState::Progress,
            log: String::new(),
        };
        st.apply(
            &[listed("r", Power::On), listed("c", Power::Off)],
            std::slice::from_ref(&progress),
            &[],
            &groups,
            limits,
            now,
        );
        assert!(
            st.version() > v,
            "first listing of the create's server is journaled"
        );
        let v = st.version();
        st.apply(
            &[listed("r", Power::On), listed("c", Power::Off)],
            &[progress],
            &[],
            &groups,
            limits,
            now,
        );
        assert_eq!(st.version(), v, "nothing new");
        assert_eq!(st.edit("c", |i| i.action_in_flight = true), Some(()));
        assert!(st.version() > v, "edit bumps");
        let v = st.version();
        assert_eq!(st.edit("nobody", |i| i.action_in_flight = true), None);
        assert_eq!(st.version(), v, "editing no instance changes nothing");
        st.edit_hibernation("g", |h| h.kept.push("n".into()));
        assert!(st.version() > v, "hibernation edits bump");
        let v = st.version();
        st.forget_hibernation("g");
        assert!(st.version() > v);
        let v = st.version();
        st.forget_hibernation("g");
        assert_eq!(st.version(), v, "forgetting nothing changes nothing");
    }
}

mod standby_tests {
    use super::*;

    const TAGS: [&str; 2] = ["k8sca-c", "k8scang-g"];

    fn tags() -> Vec<String> {
        TAGS.iter().map(|t| t.to_string()).collect()
    }

    fn listed(name: &str, power: Power, tags: Vec<String>) -> Observed {
        Observed {
            id: format!("id-{name}"),
            name: name.into(),
            power,
            tags: Some(tags),
            presumed: false,
        }
    }

    fn apply(st: &mut State, listing: &[Observed], statuses: &[CommandStatus]) -> Vec<Action> {
        let t = tags();
        let other = vec!["k8sca-c".to_string(), "k8scang-h".to_string()];
        let groups = [
            GroupTags {
                name: "g",
                tags: &t,
            },
            GroupTags {
                name: "h",
                tags: &other,
            },
        ];
        st.apply(
            listing,
            statuses,
            &[],
            &groups,
            test_limits(60, 60),
            Instant::now(),
        )
    }

    /// A create for the pool of `g`, accepted with command `cmd`.
    fn standby_create(st: &mut State, name: &str, cmd: &str) {
        let mut i = Instance::creating(name.into(), "g".into(), Instant::now());
        i.standby = true;
        i.create = CreateStatus::Accepted;
        i.command = Some(Pending {
            id: cmd.into(),
            kind: CommandKind::Create,
            since: Instant::now(),
            unknown_since: None,
        });
        st.insert(name.into(), i);
    }

    fn complete(id: &str) -> CommandStatus {
        CommandStatus {
            id: id.into(),
            state: CommandState::Complete,
            log: String::new(),
        }
    }

    fn wanted(servers: usize, max: usize) -> StandbyWanted {
        StandbyWanted {
            servers,
            max,
            keep_excess: false,
            may_buy: true,
        }
    }

    #[test]
    fn a_create_for_the_pool_is_never_the_autoscalers_and_lands_in_the_pool_as_standby() {
        let mut st = State::default();
        standby_create(&mut st, "s1", "1");
        assert_eq!(st.target_size("g"), 0, "not in the target");
        assert_eq!(
            st.group_instances("g").count(),
            0,
            "not a node of the group"
        );
        assert_eq!(
            st.servers_of_group("g", ""),
            1,
            "but it counts toward max-size"
        );
        assert_eq!(st.pool_counts("g").creating, 1);
        // Listed off, still being created: it stays a create.
        apply(&mut st, &[listed("s1", Power::Off, tags())], &[]);
        assert!(st.contains("s1"));
        // Created: into the pool, as a standby server, recorded for the journal.
        apply(
            &mut st,
            &[listed("s1", Power::Off, tags())],
            &[complete("1")],
        );
        assert!(!st.contains("s1"));
        assert_eq!(st.reads.outcomes.standby_ready, vec!["s1".to_string()]);
        let pool = st.parked("g");
        assert_eq!(pool.len(), 1);
        assert!(pool[0].standby && pool[0].exact);
        assert_eq!(
            st.pool_counts("g"),
            PoolCounts {
                standby: 1,
                creating: 0,
                parked: 0
            }
        );
        assert_eq!(st.fresh().count(), 1);
        assert_eq!(
            st.parked_or_parking("g"),
            0,
            "the park cap counts parked servers only"
        );
    }

    #[test]
    fn a_scale_up_takes_parked_servers_before_standby_ones() {
        let mut st = State::default();
        st.mark_fresh("a-standby".into(), "g".into());
        apply(
            &mut st,
            &[
                listed("a-standby", Power::Off, tags()),
                listed("z-parked", Power::Off, tags()),
            ],
            &[],
        );
        let order: Vec<String> = st.reusable("g", true).into_iter().map(|p| p.name).collect();
        assert_eq!(order, ["z-parked", "a-standby"], "joined before first");
        let only: Vec<String> = st
            .reusable("g", false)
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(
            only,
            ["a-standby"],
            "without poweron-on-scale-up: standby only"
        );
    }

    #[test]
    fn a_journal_claim_makes_no_server_standby_that_is_not_exactly_the_groups_and_off() {
        let mut st = State::default();
        // Forged or stale entries: another group's server, a server with a further tag, a
        // running server, and a name nobody lists.
        for name in ["other", "extra", "running", "nobody"] {
            st.mark_fresh(name.into(), "g".into());
        }
        let mut extra = tags();
        extra.push("someone-elses".into());
        apply(
            &mut st,
            &[
                listed(
                    "other",
                    Power::Off,
                    vec!["k8sca-c".into(), "k8scang-h".into()],
                ),
                listed("extra", Power::Off, extra),
                listed("running", Power::On, tags()),
            ],
            &[],
        );
        assert!(
            st.parked("g").iter().all(|p| !p.standby),
            "{:?}",
            st.parked("g")
        );
        assert!(st.parked("h").iter().all(|p| !p.standby));
        assert!(
            st.reusable("g", false).is_empty(),
            "nothing is taken as standby"
        );
        assert_eq!(st.pool_counts("g").standby, 0);
        // Only the claim on a server still in a pool is kept (it may be fixed by hand); the
        // running one is adopted, the unlisted one forgotten.
        let kept: Vec<&String> = st.fresh().map(|(n, _)| n).collect();
        assert_eq!(kept, ["extra"]);
    }

    #[test]
    fn the_plan_fills_to_the_wanted_size_within_max_size_and_not_during_a_scale_up() {
        let mut st = State::default();
        assert_eq!(st.standby_plan("g", wanted(3, 10)).create, 3);
        // Room: 9 running of max 10 leaves one.
        for n in 0..9 {
            let mut i = Instance::creating(format!("r{n}"), "g".into(), Instant::now());
            i.server_id = Some(format!("id-r{n}"));
            i.run(Instant::now());
            st.insert(format!("r{n}"), i);
        }
        assert_eq!(st.standby_plan("g", wanted(3, 10)).create, 1);
        assert_eq!(
            st.standby_plan("g", wanted(3, 9)).create,
            0,
            "at max: nothing"
        );
        // A scale-up under way: replacements come after it.
        st.insert(
            "new".into(),
            Instance::creating("new".into(), "g".into(), Instant::now()),
        );
        assert_eq!(st.standby_plan("g", wanted(3, 20)).create, 0);
        st.remove("new");
        // A recent failure: nothing bought.
        let mut w = wanted(3, 20);
        w.may_buy = false;
        assert_eq!(st.standby_plan("g", w).create, 0);
        // Creates under way count.
        standby_create(&mut st, "s1", "1");
        assert_eq!(st.standby_plan("g", wanted(3, 20)).create, 2);
    }

    #[test]
    fn the_plan_counts_parked_servers_and_trims_only_standby_ones() {
        let mut st = State::default();
        for s in ["s1", "s2", "s3"] {
            st.mark_fresh(s.into(), "g".into());
        }
        let listing = [
            listed("p1", Power::Off, tags()),
            listed("s1", Power::Off, tags()),
            listed("s2", Power::Off, tags()),
            listed("s3", Power::Off, tags()),
        ];
        apply(&mut st, &listing, &[]);
        // Four powered-off servers for a pool of 4: nothing to do.
        assert_eq!(st.standby_plan("g", wanted(4, 10)), StandbyPlan::default());
        // A pool of 2: two standby servers go, never the parked one.
        let trim: Vec<String> = st
            .standby_plan("g", wanted(2, 10))
            .trim
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(trim, ["s2", "s3"]);
        // None at all: every standby one, still not the parked one.
        assert_eq!(st.standby_plan("g", wanted(0, 10)).trim.len(), 3);
        // Hibernating in power-off mode: kept.
        let mut keep = wanted(0, 0);
        keep.keep_excess = true;
        assert_eq!(st.standby_plan("g", keep), StandbyPlan::default());
    }

    #[test]
    fn a_create_for_the_pool_that_comes_up_running_is_powered_off_and_parked_not_standby() {
        let mut st = State::default();
        standby_create(&mut st, "s1", "1");
        let actions = apply(
            &mut st,
            &[listed("s1", Power::On, tags())],
            &[complete("1")],
        );
        assert_eq!(st.instance("s1").map(|i| i.parking()), Some(true));
        assert!(actions.is_empty(), "the power-off follows on the next pass");
        let actions = apply(&mut st, &[listed("s1", Power::On, tags())], &[]);
        assert!(
            matches!(&actions[..], [Action::PowerOff { name, .. }] if name == "s1"),
            "{actions:?}"
        );
        assert_eq!(st.target_size("g"), 0, "never the autoscaler's");
        assert_eq!(st.fresh().count(), 0);
    }

    #[test]
    fn a_failed_create_for_the_pool_is_forgotten_and_reported() {
        let mut st = State::default();
        standby_create(&mut st, "s1", "1");
        apply(
            &mut st,
            &[],
            &[CommandStatus {
                id: "1".into(),
                state: CommandState::Error,
                log: "quota".into(),
            }],
        );
        assert!(!st.contains("s1"));
        assert_eq!(st.reads.outcomes.standby_failed, vec!["g".to_string()]);
    }

    #[test]
    fn a_pool_create_taken_by_a_scale_up_is_powered_on_once_created() {
        let mut st = State::default();
        standby_create(&mut st, "s1", "1");
        st.edit("s1", |i| {
            i.standby = false;
            i.wake = true;
        });
        assert_eq!(st.target_size("g"), 1, "the autoscaler's now");
        let a = apply(&mut st, &[listed("s1", Power::Off, tags())], &[]);
        assert!(a.is_empty(), "not before its create is done");
        let a = apply(
            &mut st,
            &[listed("s1", Power::Off, tags())],
            &[complete("1")],
        );
        assert!(
            matches!(&a[..], [Action::PowerOn { name, .. }] if name == "s1"),
            "{a:?}"
        );
        let i = st.instance("s1").expect("s1");
        assert_eq!(i.create, CreateStatus::Reused);
        assert!(!i.wake);
    }
}
