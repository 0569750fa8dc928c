//! The connection pump: polls rumqttc's event loop in its own task and forwards what matters,
//! so the protocol task can publish (and wait on a full queue) without starving the connection.
//! On errors it waits with backoff and jitter before rumqttc reconnects on the next poll.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, Event, EventLoop, Outgoing, Packet, QoS, Request};
use tokio::sync::mpsc;

use super::backoff::{Backoff, Jitter};

/// What happened on the connection.
#[derive(Debug)]
pub enum Link {
    /// Connected (the broker accepted the CONNECT).
    Up {
        /// The broker kept the session: rumqttc resends what was in flight.
        session_present: bool,
        /// Without a session, how many QoS 1 publishes rumqttc had taken from the request queue
        /// but not yet numbered when the connection dropped, and has now discarded.
        dropped_fresh: usize,
    },
    /// A QoS 1 publish was given its packet id and written (or rewritten after a reconnect).
    Sent(u16),
    /// The broker acknowledged a QoS 1 publish.
    Acked(u16),
    /// The connection failed or dropped; the pump retries after a delay.
    Down(String),
    /// A message: topic and payload.
    Message(String, Vec<u8>),
}

/// Whether packet ids and acknowledgements are reported ([`Link::Sent`], [`Link::Acked`]).
///
/// Only a client that never waits on its own request queue may ask for them (the agent publishes
/// with `try_publish`): a client blocked in `publish().await` while the pump waits for room in
/// `tx` would never let either move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// Report them (the agent's outbox needs them).
    Report,
    /// Do not.
    Ignore,
}

/// Runs until the receiver of `tx` is dropped, and then at once, even with nothing to report:
/// the connection closes with the agent (an agent task dropped in a simulator is a device gone,
/// and the broker must publish its Last Will, not keep a silent connection alive for minutes).
/// `seed` spreads the jitter of agents apart.
pub async fn pump(eventloop: EventLoop, tx: mpsc::Sender<Link>, seed: u64, acks: Acks) {
    let closed = tx.clone();
    tokio::select! {
        () = run(eventloop, tx, seed, acks) => {}
        () = closed.closed() => {}
    }
}

async fn run(mut eventloop: EventLoop, tx: mpsc::Sender<Link>, seed: u64, acks: Acks) {
    // Small messages (chunk requests, progress) must not wait for Nagle's algorithm.
    let mut network = eventloop.network_options();
    network.set_tcp_nodelay(true);
    eventloop.set_network_options(network);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut jitter = Jitter::new(seed);
    loop {
        // Counted before the poll that reconnects: rumqttc clears these when the session is gone.
        let fresh = if eventloop.network.is_none() { fresh_publishes(&eventloop) } else { 0 };
        let link = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) if ack.code == ConnectReturnCode::Success => {
                backoff.reset();
                let session_present = ack.session_present;
                Link::Up { session_present, dropped_fresh: if session_present { 0 } else { fresh } }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => Link::Message(p.topic, p.payload.to_vec()),
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 && acks == Acks::Report => Link::Sent(pkid),
            Ok(Event::Incoming(Packet::PubAck(ack))) if acks == Acks::Report => Link::Acked(ack.pkid),
            Ok(_) => continue,
            Err(e) => {
                if tx.send(Link::Down(e.to_string())).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay(jitter.next_u64())).await;
                continue;
            }
        };
        if tx.send(link).await.is_err() {
            return;
        }
    }
}

/// QoS 1 publishes waiting in rumqttc's pending list that were never numbered.
fn fresh_publishes(eventloop: &EventLoop) -> usize {
    eventloop
        .pending
        .iter()
        .filter(|r| matches!(r, Request::Publish(p) if p.pkid == 0 && p.qos != QoS::AtMostOnce))
        .count()
}

/// A jitter seed from a client id and the time, different for every agent in a process.
pub fn seed(client_id: &str, now_ms: u64) -> u64 {
    client_id.bytes().fold(now_ms ^ 0x9E37_79B9_7F4A_7C15, |h, b| h.rotate_left(5) ^ u64::from(b))
}

/// After a disconnect request: waits (at most `limit`) until the pump reports the connection
/// closed, so the last publishes (an "offline" status, a cleared announcement) leave first.
pub async fn wait_closed(rx: &mut mpsc::Receiver<Link>, limit: Duration) {
    let deadline = tokio::time::sleep(limit);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return,
            link = rx.recv() => if matches!(link, None | Some(Link::Down(_))) { return },
        }
    }
}
