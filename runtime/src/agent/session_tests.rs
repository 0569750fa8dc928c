use super::*;
use drover_wire::message::ChunkRange;
use sha2::{Digest as _, Sha256};

const T0: Now = Now { ms: 1_000, unix: 1_800_000_000 };

fn at(ms: u64) -> Now {
    Now { ms, unix: T0.unix + ms / 1000 }
}

fn me() -> Identity {
    Identity {
        device: Name::new("pi-1").unwrap(),
        groups: vec![Name::new("lab").unwrap()],
        agent: AgentVersion { major: 0, minor: 1, patch: 0 },
        arch: Arch::Aarch64,
        labels: heapless::Vec::new(),
    }
}

fn limits() -> SessionLimits {
    SessionLimits { patience: Patience { stall_ms: 2_000 }, give_up_ms: 30_000, ..Default::default() }
}

fn session(serving: Serving, ledger: Ledger) -> Session {
    Session::new(me(), PayloadFormat::Postcard, limits(), serving, ledger, None, T0)
}

fn bundle() -> Vec<u8> {
    (0..5000u32).map(|i| (i * 31 % 256) as u8).collect()
}

fn announce(data: &[u8], version: u64, issued_at: u64) -> Announce {
    Announce {
        transfer: Digest(Sha256::digest(data).into()),
        name: "iris".try_into().unwrap(),
        version,
        size: data.len() as u64,
        chunk_size: 1024,
        issued_at,
        purpose: drover_wire::message::Purpose::Install,
    }
}

fn chunk_payload(a: &Announce, data: &[u8], i: u32) -> Vec<u8> {
    let part = &data[i as usize * 1024..((i as usize + 1) * 1024).min(data.len())];
    let c = Chunk { transfer: a.transfer, index: i, sha256: Digest(Sha256::digest(part).into()), data: part };
    codec::encode(PayloadFormat::Postcard, &c)
}

fn msg<'a>(topic: &'a str, payload: &'a [u8]) -> Input<'a> {
    Input::Message { topic, payload }
}

fn published(actions: &[Action], leaf: &str) -> Vec<Vec<u8>> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Publish { topic, payload, .. } if topic.ends_with(leaf) => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

fn phases(actions: &[Action]) -> Vec<Phase> {
    published(actions, "/progress").iter().map(|p| codec::decode::<Progress>(p).unwrap().phase).collect()
}

fn wants(actions: &[Action]) -> Vec<Vec<ChunkRange>> {
    published(actions, "/want").iter().map(|p| codec::decode::<Want>(p).unwrap().ranges.to_vec()).collect()
}

const BUNDLE_TOPIC: &str = "drover/v1/grp/lab/bundle";

fn connected(s: &mut Session) -> Vec<Action> {
    s.handle(Input::Connected, T0)
}

#[test]
fn connecting_subscribes_everything_addressed_to_the_device_and_announces_presence() {
    let mut s = session(Serving::default(), Ledger::default());
    let actions = connected(&mut s);
    let Action::Subscribe(topics) = &actions[0] else { panic!("{actions:?}") };
    for t in [
        "drover/v1/dev/pi-1/bundle",
        "drover/v1/dev/pi-1/cmd",
        "drover/v1/dev/pi-1/chunk",
        "drover/v1/grp/lab/bundle",
        "drover/v1/grp/lab/cmd",
        "drover/v1/fleet/bundle",
    ] {
        assert!(topics.contains(&t.to_string()), "{t} in {topics:?}");
    }
    let status = published(&actions, "/status");
    let status: Status = codec::decode(&status[0]).unwrap();
    assert!(status.online);
    assert_eq!(status.groups.as_slice(), &["lab".try_into().unwrap()] as &[heapless::String<64>]);
    assert!(matches!(&actions[1], Action::Publish { retain: true, .. }));
}

#[test]
fn a_bundle_is_fetched_chunk_by_chunk_installed_and_reported() {
    let data = bundle();
    let a = announce(&data, 2, T0.unix);
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    let ann = codec::encode(PayloadFormat::Json, &a);
    let actions = s.handle(msg(BUNDLE_TOPIC, &ann), T0);
    assert_eq!(actions[0], Action::StartTransfer(a.clone()));
    assert_eq!(actions[1], Action::Subscribe(vec![topic::chunks(&a.transfer).to_string()]));
    assert_eq!(wants(&actions), vec![vec![ChunkRange { start: 0, end: 5 }]]);
    assert_eq!(phases(&actions), vec![Phase::Downloading { have: 0, total: 5 }]);

    let chunk_topic = topic::chunks(&a.transfer).to_string();
    let mut stored = 0;
    for i in [4, 0, 1, 2] {
        let p = chunk_payload(&a, &data, i);
        // Chunk 2 comes on the device's own topic: a copy of what it missed, sent to it alone.
        let t = if i == 2 { "drover/v1/dev/pi-1/chunk" } else { chunk_topic.as_str() };
        let actions = s.handle(msg(t, &p), at(2_000 + u64::from(i)));
        stored += actions.iter().filter(|a| matches!(a, Action::StoreChunk { .. })).count();
        assert!(!actions.iter().any(|a| matches!(a, Action::Install(_))));
    }
    assert_eq!(stored, 4);
    let p = chunk_payload(&a, &data, 3);
    let actions = s.handle(msg(&chunk_topic, &p), at(2_100));
    assert!(matches!(actions[0], Action::StoreChunk { index: 3, .. }));
    assert_eq!(phases(&actions), vec![Phase::Installing]);
    assert_eq!(actions.last(), Some(&Action::Install(a.clone())));

    let serving = Serving {
        model: Some(ModelRef { name: "iris".try_into().unwrap(), version: 2 }),
        slot: Some(Slot::B),
        highest: [("iris".to_string(), 2)].into(),
    };
    let actions = s.handle(Input::Installed { phase: Phase::Installed { slot: Slot::B }, serving }, at(2_500));
    assert_eq!(actions[0], Action::Unsubscribe(chunk_topic));
    assert_eq!(actions[1], Action::DiscardTransfer);
    assert!(matches!(&actions[2], Action::SaveLedger(l) if l.newest_issued == a.issued_at && l.recent.len() == 1));
    assert_eq!(phases(&actions), vec![Phase::Installed { slot: Slot::B }]);
    let status: Status = codec::decode(&published(&actions, "/status")[0]).unwrap();
    assert_eq!(status.model.unwrap().version, 2);
    assert!(s.transfer().is_none());

    // The retained announcement comes again on the next connect: the outcome is repeated, nothing redone.
    connected(&mut s);
    let again = s.handle(msg(BUNDLE_TOPIC, &ann), at(9_000));
    assert_eq!(phases(&again), vec![Phase::Installed { slot: Slot::B }]);
    assert!(!again.iter().any(|a| matches!(a, Action::StartTransfer(_))));
}

#[test]
fn announcements_the_device_cannot_use_are_refused_before_downloading() {
    let data = bundle();
    let serving = Serving {
        model: Some(ModelRef { name: "iris".try_into().unwrap(), version: 3 }),
        slot: Some(Slot::A),
        highest: [("iris".to_string(), 3)].into(),
    };
    let cases: Vec<(Announce, &str)> = vec![
        (announce(&data, 3, T0.unix), "current"),
        (announce(&data, 2, T0.unix), "is not newer than v3"),
        (Announce { chunk_size: 1 << 20, ..announce(&data, 4, T0.unix) }, "chunk size 1048576"),
        (Announce { chunk_size: 10, ..announce(&data, 4, T0.unix) }, "chunk size 10"),
        (Announce { size: 0, ..announce(&data, 4, T0.unix) }, "bundle size 0"),
        (Announce { size: limits().max_bundle + 1, ..announce(&data, 4, T0.unix) }, "is outside 1..="),
        (Announce { size: u64::MAX, ..announce(&data, 4, T0.unix) }, "bundle size 18446744073709551615"),
    ];
    for (a, expect) in cases {
        let mut s = session(serving.clone(), Ledger::default());
        connected(&mut s);
        let actions = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a)), T0);
        assert!(!actions.iter().any(|a| matches!(a, Action::StartTransfer(_))), "{expect}");
        let p = phases(&actions);
        match &p[..] {
            [Phase::Current] => assert_eq!(expect, "current"),
            [Phase::Failed { reason }] => assert!(reason.contains(expect), "{reason} / {expect}"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn garbled_payloads_change_nothing() {
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    let a = announce(&bundle(), 2, T0.unix);
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a)), T0);
    let chunk_topic = topic::chunks(&a.transfer).to_string();
    for (topic, payload) in [
        (BUNDLE_TOPIC, &b"\xd1\x01\x02"[..]),
        (BUNDLE_TOPIC, b"{not json"),
        ("drover/v1/dev/pi-1/cmd", b"\xd1garbage"),
        ("drover/v1/fleet/cmd", b"plain text"),
        (chunk_topic.as_str(), b"\xd1\x00"),
        (chunk_topic.as_str(), b"{\"index\": 1}"),
        ("drover/v1/dev/pi-1/nonsense", b"x"),
        ("elsewhere/topic", b"x"),
    ] {
        assert_eq!(s.handle(msg(topic, payload), T0), vec![], "{topic} {payload:?}");
    }
    assert_eq!(s.transfer().unwrap().have().count(), 0);
}

#[test]
fn a_corrupted_chunk_is_asked_for_again_and_not_stored() {
    let data = bundle();
    let a = announce(&data, 2, T0.unix);
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a)), T0);
    let mut p = chunk_payload(&a, &data, 1);
    let last = p.len() - 1;
    p[last] ^= 0xff;
    let actions = s.handle(msg(&topic::chunks(&a.transfer), &p), T0);
    assert_eq!(wants(&actions), vec![vec![ChunkRange { start: 1, end: 2 }]]);
    assert!(!actions.iter().any(|a| matches!(a, Action::StoreChunk { .. })));
}

#[test]
fn a_stalled_transfer_asks_again_and_gives_up_only_while_connected() {
    let data = bundle();
    let a = announce(&data, 2, T0.unix);
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a)), T0);
    s.handle(msg(&topic::chunks(&a.transfer), &chunk_payload(&a, &data, 0)), at(1_500));
    assert_eq!(wants(&s.handle(Input::Tick, at(2_000))), Vec::<Vec<ChunkRange>>::new());
    assert_eq!(wants(&s.handle(Input::Tick, at(3_600))), vec![vec![ChunkRange { start: 1, end: 5 }]]);
    // Offline for a long time: nothing is abandoned, and the clock of silence restarts on connect.
    s.handle(Input::Disconnected, at(4_000));
    assert_eq!(s.handle(Input::Tick, at(100_000)), vec![]);
    let back = s.handle(Input::Connected, at(100_000));
    assert_eq!(wants(&back), vec![vec![ChunkRange { start: 1, end: 5 }]]);
    assert!(back.contains(&Action::Subscribe(s.topics())), "the chunk topic is subscribed again");
    let later = s.handle(Input::Tick, at(131_000));
    assert!(later.contains(&Action::DiscardTransfer));
    assert!(matches!(&phases(&later)[..], [Phase::Failed { reason }] if reason.contains("no chunk arrived")));
    assert!(s.transfer().is_none());
}

#[test]
fn a_resumed_transfer_asks_only_for_the_missing_chunks_on_connect() {
    let data = bundle();
    let a = announce(&data, 2, T0.unix);
    let mut have = ChunkSet::new(5);
    for i in [0, 1, 3] {
        have.insert(i);
    }
    let mut s = Session::new(
        me(),
        PayloadFormat::Postcard,
        limits(),
        Serving::default(),
        Ledger::default(),
        Some((a.clone(), have)),
        T0,
    );
    let actions = connected(&mut s);
    assert_eq!(wants(&actions), vec![vec![ChunkRange { start: 2, end: 3 }, ChunkRange { start: 4, end: 5 }]]);
    // The retained announcement of the same transfer arrives: nothing restarts.
    let again = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a)), T0);
    assert_eq!(again, vec![]);
}

#[test]
fn a_newer_announcement_supersedes_and_a_stale_one_is_ignored() {
    let data = bundle();
    let a2 = announce(&data, 2, T0.unix);
    let other: Vec<u8> = data.iter().map(|b| b ^ 1).collect();
    let a3 = announce(&other, 3, T0.unix + 10);
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a2)), T0);
    let actions = s.handle(msg("drover/v1/dev/pi-1/bundle", &codec::encode(PayloadFormat::Postcard, &a3)), T0);
    assert_eq!(actions[0], Action::Unsubscribe(topic::chunks(&a2.transfer).to_string()));
    assert_eq!(actions[1], Action::DiscardTransfer);
    assert_eq!(actions[2], Action::StartTransfer(a3.clone()));

    let ledger = Ledger { newest_issued: T0.unix + 100, recent: vec![] };
    let mut s = session(Serving::default(), ledger);
    connected(&mut s);
    assert_eq!(s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a3)), T0), vec![]);
}

#[test]
fn a_newer_order_for_the_same_bytes_takes_over_the_transfer_under_way() {
    // A push whose sender died left the device waiting for chunks; the operator pushes the same
    // bundle again. The device must answer the new push (its operator waits for that one), keep
    // the chunks it holds, and finish under the new order.
    let data = bundle();
    let old = announce(&data, 2, T0.unix);
    let new = Announce { issued_at: T0.unix + 30, ..old.clone() };
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &old)), T0);
    s.handle(msg(topic::chunks(&old.transfer).as_ref(), &chunk_payload(&old, &data, 0)), T0);
    let actions = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &new)), at(2_000));
    assert!(!actions.iter().any(|a| matches!(a, Action::DiscardTransfer | Action::StartTransfer(_))), "{actions:?}");
    let p: Progress = codec::decode(&published(&actions, "/progress")[0]).unwrap();
    assert_eq!(p.op, bundle_op(&new), "reported under the new order");
    assert_eq!(p.phase, Phase::Downloading { have: 1, total: 5 }, "the chunk held still counts");
    // The old order delivered again changes nothing.
    assert_eq!(s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &old)), at(2_100)), vec![]);
    let mut last = Vec::new();
    for i in 1..5 {
        last = s.handle(msg(topic::chunks(&new.transfer).as_ref(), &chunk_payload(&new, &data, i)), at(2_200));
    }
    assert!(last.iter().any(|a| matches!(a, Action::Install(x) if x.issued_at == new.issued_at)), "{last:?}");
}

#[test]
fn commands_are_handed_to_the_store_and_their_outcome_reported() {
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    let cmd = SignedCommand {
        command: drover_wire::command::Command {
            target: drover_wire::command::Target::Group("lab".try_into().unwrap()),
            sequence: 77,
            issued_at: T0.unix,
            expires_at: T0.unix + 60,
            op: drover_wire::command::Operation::Rollback,
        },
        delegation: drover_wire::trust::SignedDelegation {
            delegation: drover_wire::trust::Delegation {
                key: drover_wire::trust::PublicKey([0; 32]),
                role: drover_wire::trust::DelegatedRole::Operator,
                names: heapless::Vec::new(),
                issued_at: 0,
                expires_at: 0,
            },
            root_version: 1,
            sig: drover_wire::trust::Signature { r: [0; 32], s: [0; 32] },
        },
        sig: drover_wire::trust::Signature { r: [0; 32], s: [0; 32] },
    };
    let actions = s.handle(msg("drover/v1/grp/lab/cmd", &codec::encode(PayloadFormat::Postcard, &cmd)), T0);
    assert_eq!(actions, vec![Action::ApplyCommand(Box::new(cmd))]);
    let done = s.handle(
        Input::CommandApplied { sequence: 77, phase: Phase::RolledBack { slot: Slot::A }, serving: Serving::default() },
        T0,
    );
    let p: Progress = codec::decode(&published(&done, "/progress")[0]).unwrap();
    assert_eq!(p.op, Op::Command { sequence: 77 });
    assert_eq!(p.phase, Phase::RolledBack { slot: Slot::A });
}

/// Installs announcement `a` of `data` to the end, the store reporting `phase`; returns the
/// ledger saved.
fn run_to_install(s: &mut Session, a: &Announce, data: &[u8], phase: Phase, now: Now) -> Ledger {
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, a)), now);
    for i in 0..a.chunk_count() as u32 {
        s.handle(msg(topic::chunks(&a.transfer).as_ref(), &chunk_payload(a, data, i)), now);
    }
    let serving = Serving::default();
    let actions = s.handle(Input::Installed { phase, serving }, now);
    actions
        .iter()
        .find_map(|x| match x {
            Action::SaveLedger(l) => Some(l.clone()),
            _ => None,
        })
        .expect("the outcome is remembered")
}

#[test]
fn a_forged_announcement_dated_far_ahead_does_not_silence_later_pushes() {
    // Announcements are not signed. One dated u64::MAX, refused before a byte is fetched (a
    // size no device takes), or fetched and then failing verification, must not make every
    // genuine push after it look stale.
    let data = bundle();
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    let refused = Announce { size: 0, ..announce(&data, 2, u64::MAX) };
    let actions = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &refused)), T0);
    assert!(matches!(&phases(&actions)[..], [Phase::Failed { .. }]), "{actions:?}");
    let forged = announce(&data, 3, u64::MAX - 1);
    let ledger = run_to_install(&mut s, &forged, &data, Phase::failed("signature: not signed by a trusted key"), T0);
    assert_eq!(ledger.newest_issued, 0, "nothing unverified moves the floor");
    let genuine = announce(&data, 4, T0.unix);
    let actions = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &genuine)), T0);
    assert_eq!(actions[0], Action::StartTransfer(genuine.clone()), "the genuine push is acted on");

    // A genuine bundle re-announced with a date far ahead (whoever may publish announcements
    // can do that) moves the floor at most MAX_AHEAD_S past the device's clock.
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    let replayed = announce(&data, 2, u64::MAX);
    let ledger = run_to_install(&mut s, &replayed, &data, Phase::Installed { slot: Slot::B }, T0);
    assert_eq!(ledger.newest_issued, T0.unix + MAX_AHEAD_S);
    let later = Now { ms: T0.ms + 700_000, unix: T0.unix + 700 };
    let next = announce(&data, 5, later.unix);
    let actions = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &next)), later);
    assert_eq!(actions[0], Action::StartTransfer(next.clone()), "ignored for ten minutes at most");
}

#[test]
fn a_disk_that_fills_during_a_transfer_abandons_it_with_the_reason_and_a_later_push_starts_over() {
    let data = bundle();
    let a = announce(&data, 2, T0.unix);
    let mut s = session(Serving::default(), Ledger::default());
    connected(&mut s);
    s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &a)), T0);
    s.handle(msg(topic::chunks(&a.transfer).as_ref(), &chunk_payload(&a, &data, 0)), T0);
    let actions = s.handle(Input::SpoolFailed("No space left on device (os error 28)".into()), at(1_500));
    assert!(actions.contains(&Action::Unsubscribe(topic::chunks(&a.transfer).to_string())), "{actions:?}");
    assert!(actions.contains(&Action::DiscardTransfer), "the partial bundle is removed");
    match &phases(&actions)[..] {
        [Phase::Failed { reason }] => assert!(reason.contains("storing the bundle: No space left"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert!(s.transfer().is_none());
    // The operator frees room and pushes again: a new order starts from the first chunk.
    let again = Announce { issued_at: T0.unix + 60, ..a.clone() };
    let actions = s.handle(msg(BUNDLE_TOPIC, &codec::encode(PayloadFormat::Postcard, &again)), at(60_000));
    assert_eq!(actions[0], Action::StartTransfer(again.clone()));
    assert_eq!(wants(&actions), vec![vec![ChunkRange { start: 0, end: 5 }]]);
}
