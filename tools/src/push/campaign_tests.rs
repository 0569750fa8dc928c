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
    let sent: Vec<u32> = std::iter::from_fn(|| c.next_chunk(10)).collect();
    assert_eq!(sent, (0..20).collect::<Vec<_>>(), "once each, in order, clamped to the bundle");
    // A request for another transfer, or a garbled one, sends nothing.
    let other = Want { transfer: Digest([0; 32]), ranges: [ChunkRange { start: 0, end: 3 }].into_iter().collect() };
    c.handle(
        Input::Message { topic: "drover/v1/dev/pi-1/want", payload: &codec::encode(PayloadFormat::Json, &other) },
        20,
    );
    c.handle(Input::Message { topic: "drover/v1/dev/pi-1/want", payload: b"\xd1\xff\xff" }, 20);
    assert_eq!(c.next_chunk(20), None);
}

#[test]
fn devices_answering_one_after_another_share_each_resend() {
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    let ask = |c: &mut Campaign, dev: &str, ranges: &[(u32, u32)], now: u64| {
        c.handle(Input::Message { topic: &format!("drover/v1/dev/{dev}/want"), payload: &want(c, ranges) }, now);
    };
    ask(&mut c, "pi-1", &[(0, 20)], 0);
    let first: Vec<u32> = (0..10).filter_map(|_| c.next_chunk(100)).collect();
    assert_eq!(first, (0..10).collect::<Vec<_>>());
    // pi-2 and pi-3 subscribed while those went out: their first requests bring them back once,
    // FRESH_MS after they went out.
    ask(&mut c, "pi-2", &[(0, 20)], 100 + FRESH_MS / 4);
    ask(&mut c, "pi-3", &[(0, 20)], 100 + FRESH_MS / 2);
    let rest: Vec<u32> = std::iter::from_fn(|| c.next_chunk(200)).collect();
    assert_eq!(rest, (10..20).collect::<Vec<_>>(), "not yet the deferred ones");
    c.release_due(100 + FRESH_MS);
    let again: Vec<u32> = std::iter::from_fn(|| c.next_chunk(100 + FRESH_MS)).collect();
    assert_eq!(again, (0..10).collect::<Vec<_>>(), "once for both");
    // A later request (a stall, a damaged chunk) for a chunk not sent lately is served at once.
    let later = 200 + RESEND_MS;
    ask(&mut c, "pi-2", &[(15, 16)], later);
    assert_eq!(c.next_chunk(later), Some(15));
    // Impatient devices asking again for a chunk just re-sent share one more copy, RESEND_MS on.
    for (k, dev) in ["pi-1", "pi-2", "pi-3"].iter().enumerate() {
        ask(&mut c, dev, &[(15, 16)], later + 10 * k as u64);
        c.release_due(later + 10 * k as u64);
        assert_eq!(c.next_chunk(later + 10 * k as u64), None, "{dev}: the copy is on its way");
    }
    c.release_due(later + RESEND_MS);
    assert_eq!(c.next_chunk(later + RESEND_MS), Some(15));
    assert_eq!(c.next_chunk(later + RESEND_MS), None);
    assert_eq!(c.chunks_sent(), 32);
}

fn online(c: &mut Campaign, dev: &str, now: u64) {
    let status = Status {
        online: true,
        agent: drover_wire::AgentVersion { major: 0, minor: 1, patch: 0 },
        arch: Arch::X86_64,
        groups: ["lab".try_into().unwrap()].into_iter().collect(),
        model: None,
        slot: None,
        uptime_s: 0,
        at: 0,
        labels: heapless::Vec::new(),
    };
    let topic = format!("drover/v1/dev/{dev}/status");
    c.handle(Input::Message { topic: &topic, payload: &codec::encode(PayloadFormat::Json, &status) }, now);
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
        assert_eq!(c.next_chunk(k as u64 * 60 + 1), None, "{dev}: still gathering");
    }
    // The last one asks: everyone online has, so every chunk goes out once, at once.
    ask(&mut c, "pi-4", 150);
    let sent: Vec<u32> = std::iter::from_fn(|| c.next_chunk(150)).collect();
    assert_eq!(sent, (0..20).collect::<Vec<_>>());

    // A device that never asks holds the others up only until the requests go quiet.
    let mut c = push("lab", &bundle());
    c.handle(Input::Connected, 0);
    for dev in ["pi-1", "pi-2", "silent"] {
        online(&mut c, dev, 0);
    }
    ask(&mut c, "pi-1", 0);
    ask(&mut c, "pi-2", 50);
    c.release_due(50 + QUIET_MS - 1);
    assert_eq!(c.next_chunk(50 + QUIET_MS - 1), None);
    c.release_due(50 + QUIET_MS);
    assert_eq!(c.next_chunk(50 + QUIET_MS), Some(0));

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
        if first_send.is_none() && c.next_chunk(now).is_some() {
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
        while let Some(i) = c.next_chunk(now) {
            sent += 1;
            let mut p = chunk_payload(&announce, &data, i);
            if sent.is_multiple_of(5) {
                continue; // lost
            }
            if sent == 3 {
                let last = p.len() - 1;
                p[last] ^= 0x55; // corrupted
            }
            to_devices.push((topic::chunks(&announce.transfer).to_string(), p));
        }
        let inbox = std::mem::take(&mut to_devices);
        for (k, d) in devices.iter_mut().enumerate() {
            let t = Now { ms: now, unix: now / 1000 };
            for (topic, payload) in &inbox {
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
