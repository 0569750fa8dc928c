use super::*;
use crate::push::Audience;
use drover_runtime::agent::session::{self, Identity, Ledger, Now, Serving, Session, SessionLimits};
use drover_runtime::transfer::Patience;
use drover_wire::Arch;
use drover_wire::message::{ChunkRange, Phase, Slot};

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn bundle() -> Vec<u8> {
    (0..20_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn push(group: &str, bundle: &[u8]) -> Campaign {
    let a = announce(bundle, "iris", 2, 1024, 1_800_000_000).unwrap();
    Campaign::new(
        Work::Bundle { announce: a },
        Tracker::new(Audience::Group(name(group)), 0, 500, 60_000),
        PayloadFormat::Json,
    )
}

fn want(c: &Campaign, ranges: &[(u32, u32)]) -> Vec<u8> {
    let Work::Bundle { announce } = &c.work else { panic!() };
    let w = Want {
        transfer: announce.transfer,
        ranges: ranges.iter().map(|&(start, end)| ChunkRange { start, end }).collect(),
    };
    codec::encode(PayloadFormat::Postcard, &w)
}

/// Everything to publish now: (index, `None` for every device of the transfer, or the device).
fn drain(c: &mut Campaign) -> Vec<(u32, Option<String>)> {
    std::iter::from_fn(|| c.next_chunk(0))
        .map(|o| match o.to {
            Recipient::Transfer => (o.index, None),
            Recipient::Device(d) => (o.index, Some(d.to_string())),
        })
        .collect()
}

fn to_all(indices: std::ops::Range<u32>) -> Vec<(u32, Option<String>)> {
    indices.map(|i| (i, None)).collect()
}

#[test]
fn connecting_subscribes_to_the_fleet_and_announces_retained() {
    let mut c = push("lab", &bundle());
    let actions = c.handle(Input::Connected, 0);
    assert_eq!(
        actions[0],
        Action::Subscribe(vec![
            "drover/v1/dev/+/status".into(),
            "drover/v1/dev/+/progress".into(),
            "drover/v1/dev/+/want".into()
        ])
    );
    let Action::Publish { topic, payload, retain } = &actions[1] else { panic!("{actions:?}") };
    assert_eq!((topic.as_str(), *retain), ("drover/v1/grp/lab/bundle", true));
    let a: Announce = codec::decode(payload).unwrap();
    assert_eq!(a.chunk_count(), 20);
    assert_eq!(c.closing(), vec![Action::Publish { topic: topic.clone(), payload: vec![], retain: true }]);
}

#[test]
fn overlapping_requests_send_each_chunk_once() {
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    for (dev, ranges) in [("pi-1", vec![(0, 20)]), ("pi-2", vec![(0, 20)]), ("pi-3", vec![(5, 7), (18, 99)])] {
        c.handle(Input::Message { topic: &format!("drover/v1/dev/{dev}/want"), payload: &want(&c, &ranges) }, 10);
    }
    assert_eq!(drain(&mut c), to_all(0..20), "once each, in order, clamped to the bundle");
    // A request for another transfer, or a garbled one, sends nothing.
    let other = Want { transfer: Digest([0; 32]), ranges: [ChunkRange { start: 0, end: 3 }].into_iter().collect() };
    c.handle(
        Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &codec::encode(PayloadFormat::Json, &other) },
        20,
    );
    c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: b"\xd1\xff\xff" }, 20);
    assert_eq!(c.next_chunk(0), None);
}

#[test]
fn a_late_device_gets_copies_of_what_it_missed_alone_until_one_to_all_costs_less() {
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    let ask = |c: &mut Campaign, dev: &str, ranges: &[(u32, u32)], now: u64| {
        c.handle(Input::Message { topic: &format!("drover/v1/dev/{dev}/want"), payload: &want(c, ranges) }, now);
    };
    for k in 0..8 {
        ask(&mut c, &format!("pi-{k}"), &[(0, 20)], 0);
    }
    let first: Vec<_> = (0..10).filter_map(|_| c.next_chunk(0)).map(|o| (o.index, o.to)).collect();
    assert_eq!(first, (0..10).map(|i| (i, Recipient::Transfer)).collect::<Vec<_>>());
    // Two devices start listening while those go out: what is still to come reaches them with
    // everyone; what went before, as copies for each alone (not again to all ten).
    ask(&mut c, "late-1", &[(0, 20)], 100);
    ask(&mut c, "late-2", &[(0, 20)], 120);
    let mut expected = to_all(10..20);
    for i in 0..10 {
        expected.push((i, Some("late-1".into())));
        expected.push((i, Some("late-2".into())));
    }
    assert_eq!(drain(&mut c), expected);
    assert_eq!((c.chunks_sent(), c.chunks_sent_direct()), (40, 20));
    // 20 to the 8 first devices, 10 to all 10, and 20 copies: every device got every chunk once.
    assert_eq!(c.copies(), 10 * 8 + 10 * 10 + 20);
    // Devices asking again (a stall) for chunk 15: copies each, until half of the ten listening
    // want it, when one publication to all costs less than a copy each.
    for k in 0..5 {
        ask(&mut c, &format!("pi-{k}"), &[(15, 16)], 5_000);
    }
    assert!(c.direct.get(&15).is_some_and(|d| d.len() == 5), "five copies pending");
    ask(&mut c, "pi-5", &[(15, 16)], 5_000);
    assert_eq!(drain(&mut c), vec![(15, None)], "six of ten: once, to all");
    // A repeat of a request still pending adds nothing.
    ask(&mut c, "pi-1", &[(3, 4)], 6_000);
    ask(&mut c, "pi-1", &[(3, 4)], 6_100);
    assert_eq!(drain(&mut c), vec![(3, Some("pi-1".into()))]);
}

fn online(c: &mut Campaign, dev: &str, now: u64) {
    presence(c, dev, true, now);
}

fn presence(c: &mut Campaign, dev: &str, online: bool, now: u64) -> Vec<Action> {
    let status = Status {
        online,
        agent: drover_wire::AgentVersion { major: 0, minor: 1, patch: 0 },
        arch: Arch::X86_64,
        groups: ["lab".try_into().unwrap()].into_iter().collect(),
        model: None,
        slot: None,
        uptime_s: 0,
        // Made when published: a fresh presence differs from a retained copy delivered again.
        at: now / 1000,
        labels: heapless::Vec::new(),
        presence_only: false,
    };
    let topic = format!("drover/v1/dev/{dev}/status");
    c.handle(Input::Message { topic: &topic, payload: &codec::encode(PayloadFormat::Json, &status) }, now)
}

fn op_of(c: &Campaign) -> Op {
    let Work::Bundle { announce: a } = &c.work else { panic!() };
    Op::Bundle { transfer: a.transfer, name: a.name.clone(), version: a.version, issued_at: a.issued_at }
}

fn downloading(c: &mut Campaign, dev: &str, have: u32, now: u64) -> Vec<Action> {
    let op = op_of(c);
    let Work::Bundle { announce: a } = &c.work else { panic!() };
    let total = u32::try_from(a.chunk_count()).unwrap();
    let p = Progress { op, phase: Phase::Downloading { have, total }, at: 0 };
    let topic = format!("drover/v1/dev/{dev}/progress");
    c.handle(Input::Message { topic: &topic, payload: &codec::encode(PayloadFormat::Json, &p) }, now)
}

fn interruptions(actions: &[Action]) -> Vec<(String, Interruption)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Interrupted(d, i) => Some((d.to_string(), i.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_device_that_drops_out_mid_transfer_is_reported_offline_then_resumed_at_its_first_missing_chunk() {
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    online(&mut c, "pi-1", 0);
    online(&mut c, "idle", 0);
    c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &want(&c, &[(0, 20)]) }, 10);
    c.release_due(10 + QUIET_MS);
    assert_eq!(drain(&mut c), to_all(0..20));
    assert!(interruptions(&downloading(&mut c, "pi-1", 8, 200)).is_empty());

    // Its Last Will: offline with 8 of 20 chunks. The same presence delivered again (the
    // tool reconnecting to the broker) says nothing new.
    let dropped = presence(&mut c, "pi-1", false, 300);
    assert_eq!(interruptions(&dropped), [("pi-1".into(), Interruption::Offline { have: Some(8), total: 20 })]);
    assert!(interruptions(&presence(&mut c, "pi-1", false, 310)).is_empty());
    // A device that never joined the transfer going offline is no interruption of it.
    assert!(interruptions(&presence(&mut c, "idle", false, 320)).is_empty());

    // Back: online, then its request for chunks 9..20 (counted from 1) says where it resumes.
    assert_eq!(interruptions(&presence(&mut c, "pi-1", true, 5_000)), [("pi-1".into(), Interruption::Online)]);
    let resumed = c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &want(&c, &[(8, 20)]) }, 5_010);
    assert_eq!(interruptions(&resumed), [("pi-1".into(), Interruption::Resumed { at: 9, total: 20 })]);
    // Later requests (a stall, a damaged chunk) are no resumption.
    let again = c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &want(&c, &[(12, 13)]) }, 9_000);
    assert!(interruptions(&again).is_empty());

    // A device back so fast that its request comes before its presence: resumed all the same.
    presence(&mut c, "pi-1", false, 10_000);
    let resumed =
        c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &want(&c, &[(15, 20)]) }, 10_010);
    assert_eq!(interruptions(&resumed), [("pi-1".into(), Interruption::Resumed { at: 16, total: 20 })]);
    assert!(interruptions(&presence(&mut c, "pi-1", true, 10_020)).is_empty(), "already resumed");

    // A connection that vanished without a Last Will (the broker handed the session to the
    // device's new connection): no offline presence, but a fresh online one mid-transfer.
    assert!(interruptions(&presence(&mut c, "pi-1", true, 10_020)).is_empty(), "the same presence again");
    let back = presence(&mut c, "pi-1", true, 12_000);
    assert_eq!(interruptions(&back), [("pi-1".into(), Interruption::Reconnected)]);
    assert!(interruptions(&presence(&mut c, "pi-1", true, 12_000)).is_empty(), "the same presence again");
    let resumed =
        c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &want(&c, &[(18, 20)]) }, 12_010);
    assert_eq!(interruptions(&resumed), [("pi-1".into(), Interruption::Resumed { at: 19, total: 20 })]);
    // Once it has the whole bundle, a new presence (it installed and serves it) is no drop-out.
    downloading(&mut c, "pi-1", 20, 13_000);
    let p = Progress { op: op_of(&c), phase: Phase::Installing, at: 0 };
    c.handle(
        Input::Message { topic: "drover/v1/dev/pi-1/progress", payload: &codec::encode(PayloadFormat::Json, &p) },
        13_100,
    );
    assert!(interruptions(&presence(&mut c, "pi-1", true, 14_000)).is_empty());
}

#[test]
fn first_requests_are_gathered_so_one_publication_serves_the_group() {
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    for dev in ["pi-1", "pi-2", "pi-3", "pi-4"] {
        online(&mut c, dev, 0);
    }
    let ask = |c: &mut Campaign, dev: &str, now: u64| {
        c.handle(Input::Message { topic: &format!("drover/v1/dev/{dev}/want"), payload: &want(c, &[(0, 20)]) }, now);
    };
    // Three of four asked, each within QUIET_MS of the one before: nothing goes out yet.
    for (k, dev) in ["pi-1", "pi-2", "pi-3"].iter().enumerate() {
        ask(&mut c, dev, k as u64 * 60);
        c.release_due(k as u64 * 60 + 1);
        assert_eq!(c.next_chunk(0), None, "{dev}: still gathering");
    }
    // The last one asks: everyone online has, so every chunk goes out once, at once.
    ask(&mut c, "pi-4", 150);
    assert_eq!(drain(&mut c), to_all(0..20));

    // A device that never asks holds the others up only until the requests go quiet.
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    for dev in ["pi-1", "pi-2", "silent"] {
        online(&mut c, dev, 0);
    }
    ask(&mut c, "pi-1", 0);
    ask(&mut c, "pi-2", 50);
    c.release_due(50 + QUIET_MS - 1);
    assert_eq!(c.next_chunk(0), None);
    c.release_due(50 + QUIET_MS);
    assert_eq!(c.next_chunk(0).map(|o| o.index), Some(0));

    // A fleet that keeps trickling in is served every MAX_GATHER_MS.
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    let devices: Vec<String> = (0..40).map(|k| format!("pi-{k}")).collect();
    for dev in &devices {
        online(&mut c, dev, 0);
    }
    let mut first_send = None;
    for (k, dev) in devices.iter().enumerate() {
        let now = k as u64 * (QUIET_MS / 2);
        ask(&mut c, dev, now);
        c.release_due(now);
        if first_send.is_none() && c.next_chunk(0).is_some() {
            first_send = Some(now);
        }
    }
    assert_eq!(first_send, Some(MAX_GATHER_MS), "served in rounds, not held back for good");
}

/// Both ends of the protocol, wired together without a network: a sender and three devices of
/// the group, where the "broker" loses every fifth chunk on its way and corrupts one.
#[test]
fn a_push_reaches_every_device_of_the_group_through_losses_and_corruption() {
    let data = bundle();
    let mut c = push("lab", &data);
    let limits = SessionLimits { patience: Patience { stall_ms: 1000 }, ..SessionLimits::default() };
    let mut devices: Vec<Session> = ["pi-1", "pi-2", "pi-3"]
        .iter()
        .map(|d| {
            let me = Identity {
                device: name(d),
                groups: vec![name("lab")],
                agent: drover_wire::AgentVersion { major: 0, minor: 1, patch: 0 },
                arch: Arch::X86_64,
                labels: heapless::Vec::new(),
            };
            Session::new(
                me,
                PayloadFormat::Postcard,
                limits,
                Serving::default(),
                Ledger::default(),
                None,
                Now { ms: 0, unix: 0 },
            )
        })
        .collect();

    // Messages in flight: (topic, payload); the "broker" routes by subscription.
    let mut to_sender: Vec<(String, Vec<u8>)> = Vec::new();
    let mut to_devices: Vec<(String, Vec<u8>)> = Vec::new();
    let route = |actions: Vec<session::Action>, to_sender: &mut Vec<(String, Vec<u8>)>| {
        let mut install = None;
        for a in actions {
            match a {
                session::Action::Publish { topic, payload, .. } => to_sender.push((topic, payload)),
                session::Action::Install(a) => install = Some(a),
                _ => {}
            }
        }
        install
    };
    for d in &mut devices {
        route(d.handle(session::Input::Connected, Now { ms: 0, unix: 0 }), &mut to_sender);
    }
    for a in c.handle(Input::Connected, 0) {
        if let Action::Publish { topic, payload, .. } = a {
            to_devices.push((topic, payload));
        }
    }
    let mut sent = 0u32;
    let mut installed = [false; 3];
    for step in 0..200u64 {
        let now = step * 100;
        for (topic, payload) in to_sender.drain(..) {
            c.handle(Input::Message { topic: &topic, payload: &payload }, now);
        }
        let Work::Bundle { announce } = &c.work else { panic!() };
        let announce = announce.clone();
        while let Some(out) = c.next_chunk(0) {
            sent += 1;
            let mut p = chunk_payload(&announce, &data, out.index);
            if sent.is_multiple_of(5) {
                continue; // lost
            }
            if sent == 3 {
                let last = p.len() - 1;
                p[last] ^= 0x55; // corrupted
            }
            to_devices.push((out.topic(&announce), p));
        }
        let inbox = std::mem::take(&mut to_devices);
        for (k, d) in devices.iter_mut().enumerate() {
            let t = Now { ms: now, unix: now / 1000 };
            // The "broker": a copy for one device reaches that device alone.
            let mine = format!("drover/v1/dev/pi-{}/", k + 1);
            let inbox = inbox.iter().filter(|(t, _)| !t.starts_with("drover/v1/dev/") || t.starts_with(&mine));
            for (topic, payload) in inbox {
                if let Some(a) = route(d.handle(session::Input::Message { topic, payload }, t), &mut to_sender) {
                    assert_eq!(a, announce);
                    installed[k] = true;
                    let serving = Serving::default();
                    route(
                        d.handle(session::Input::Installed { phase: Phase::Installed { slot: Slot::A }, serving }, t),
                        &mut to_sender,
                    );
                }
            }
            route(d.handle(session::Input::Tick, t), &mut to_sender);
        }
        if c.end(now) == Some(End::AllFinished) {
            assert!(installed.iter().all(|i| *i));
            assert!(c.tracker().all_succeeded());
            assert_eq!(c.tracker().devices().len(), 3);
            // 20 chunks multicast to 3 devices, plus the lost and corrupted ones again.
            assert!(sent < 20 * 3, "chunks are shared between devices: {sent} sent");
            return;
        }
    }
    panic!("the push did not finish: {:?}", c.tracker().devices());
}
