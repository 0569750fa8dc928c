//! The I/O shell of an operation: one MQTT connection (rumqttc), the clock, and the bundle's
//! bytes, around a pure [`Campaign`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use drover_runtime::link::BrokerSettings;
use drover_runtime::link::pump::{Link, pump, seed, wait_closed};
use drover_wire::topic::Name;
use rumqttc::{AsyncClient, QoS, SubscribeFilter};
use tokio::sync::mpsc;

use super::campaign::{Action, Campaign, Input, Interruption, Payloads, Work};
use super::rate::RateLimit;
use super::tracker::{DeviceView, End};

/// How an operation ended, for the report.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// How it ended.
    pub end: End,
    /// The last connection error, if the broker was ever unreachable.
    pub last_error: Option<String>,
    /// Whether the broker was ever reached.
    pub connected: bool,
    /// Chunks published (re-sends included).
    pub chunks_sent: u64,
    /// Of those, copies for a single device (what it missed of the others).
    pub chunks_sent_direct: u64,
    /// Chunk copies delivered, as the sender counts them (see [`Campaign::copies`]).
    pub copies: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// What an operation tells its caller as it goes (progress bars, log lines).
#[derive(Debug, Clone, Copy)]
pub enum Report<'a> {
    /// A device's view changed.
    Changed(&'a Name, &'a DeviceView),
    /// A device of the transfer dropped out or came back.
    Interrupted(&'a Name, &'a Interruption),
}

/// Runs `campaign` to its end. `bundle` holds the bundle's bytes for a push, sent at most at
/// `max_rate` bytes per second; `on_report` is called whenever a device's view changes or it
/// drops out of the transfer or comes back.
pub async fn execute(
    campaign: &mut Campaign,
    bundle: &[u8],
    max_rate: Option<u64>,
    broker: &BrokerSettings,
    mut on_report: impl FnMut(Report<'_>),
) -> anyhow::Result<Outcome> {
    let start = Instant::now();
    let ms = |t: Instant| t.duration_since(start).as_millis() as u64;
    let client_id =
        format!("drover-cli-{}-{}", std::process::id(), seed("cli", start.elapsed().as_nanos() as u64) % 1_000_000);
    let options = broker.mqtt_options(&client_id, true)?;
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (tx, rx) = mpsc::channel(1024);
    let pumping = tokio::spawn(pump(eventloop, tx, seed(&client_id, 0), drover_runtime::link::pump::Acks::Ignore));
    let mut conn = Conn { client, rx, backlog: VecDeque::new() };
    let announce = match campaign.work() {
        Work::Bundle { announce } => Some(announce.clone()),
        Work::Command(_) => None,
    };

    let mut payloads = announce.as_ref().map(|a| Payloads::new(a, bundle));
    let mut rate = match (max_rate, &announce) {
        (Some(r), Some(a)) => Some(RateLimit::new(r, u64::from(a.chunk_size), 0)),
        _ => None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(if rate.is_some() { 10 } else { 100 }));
    let mut online = false;
    let mut connected = false;
    let mut last_error = None;
    let end = loop {
        let now = ms(Instant::now());
        if let Some(end) = campaign.end(now) {
            break end;
        }
        campaign.release_due(now);
        // With chunks to send (and no rate to wait for), go straight back to sending; otherwise
        // wait for the connection or the next tick.
        let sending = online && campaign.has_chunks() && rate.is_none();
        let wake = if let Some(l) = conn.backlog.pop_front() {
            Wake::Link(l)
        } else if sending {
            // Let the connection task run between batches.
            tokio::task::yield_now().await;
            match conn.rx.try_recv() {
                Ok(l) => Wake::Link(l),
                Err(mpsc::error::TryRecvError::Empty) => Wake::Idle,
                Err(mpsc::error::TryRecvError::Disconnected) => Wake::Closed,
            }
        } else {
            tokio::select! {
                link = conn.rx.recv() => link.map_or(Wake::Closed, Wake::Link),
                _ = tick.tick() => Wake::Idle,
            }
        };
        let now = ms(Instant::now());
        let actions = match wake {
            Wake::Idle | Wake::Link(Link::Sent(_) | Link::Acked(_)) => Vec::new(),
            Wake::Closed => anyhow::bail!("the connection task ended"),
            Wake::Link(Link::Up { .. }) => {
                online = true;
                connected = true;
                campaign.handle(Input::Connected, now)
            }
            Wake::Link(Link::Down(e)) => {
                if online {
                    log::warn!("connection to {} lost: {e}", broker.address());
                }
                online = false;
                last_error = Some(e);
                Vec::new()
            }
            Wake::Link(Link::Message(topic, payload)) => {
                campaign.handle(Input::Message { topic: &topic, payload: &payload }, now)
            }
        };
        for a in actions {
            perform(&mut conn, a, campaign, &mut on_report).await;
        }
        // Serve requested chunks a few at a time, so progress reports keep flowing meanwhile.
        if let (true, Some(a), Some(payloads)) = (online, &announce, &mut payloads) {
            for _ in 0..8 {
                if !campaign.has_chunks() {
                    break;
                }
                if let Some(r) = &mut rate
                    && !r.take(u64::from(a.chunk_size), ms(Instant::now()))
                {
                    break;
                }
                let Some(out) = campaign.next_chunk(ms(Instant::now())) else { break };
                let payload = payloads.payload(out.index);
                if conn.publish(&out.topic(a), false, payload).await.is_err() {
                    break;
                }
            }
        }
    };
    if online {
        for a in campaign.closing() {
            perform(&mut conn, a, campaign, &mut on_report).await;
        }
        let _ = conn.client.try_disconnect();
        wait_closed(&mut conn.rx, Duration::from_secs(3)).await;
    }
    pumping.abort();
    Ok(Outcome {
        end,
        last_error,
        connected,
        chunks_sent: campaign.chunks_sent(),
        chunks_sent_direct: campaign.chunks_sent_direct(),
        copies: campaign.copies(),
        elapsed: start.elapsed(),
    })
}

/// Why the loop woke up.
enum Wake {
    /// Something happened on the connection.
    Link(Link),
    /// The connection task is gone.
    Closed,
    /// Time passed (or there are chunks to send).
    Idle,
}

/// The connection as the loop sees it: requests into rumqttc, and what the connection task
/// reported. A request never waits on a full rumqttc queue while the connection task waits on a
/// full report queue: what it reports meanwhile is moved aside (`backlog`, read first), so the
/// two always make progress (with a thousand devices answering at once, they would otherwise
/// wait on each other for good).
struct Conn {
    client: AsyncClient,
    rx: mpsc::Receiver<Link>,
    backlog: VecDeque<Link>,
}

impl Conn {
    /// Waits for room in rumqttc's queue, draining the reports meanwhile.
    async fn room(&mut self) {
        while let Ok(l) = self.rx.try_recv() {
            self.backlog.push_back(l);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    async fn publish(&mut self, topic: &str, retain: bool, payload: Vec<u8>) -> Result<(), rumqttc::ClientError> {
        loop {
            match self.client.try_publish(topic, QoS::AtLeastOnce, retain, payload.clone()) {
                Err(rumqttc::ClientError::TryRequest(_)) if !self.rx.is_closed() => self.room().await,
                other => return other,
            }
        }
    }

    async fn subscribe(&mut self, filters: Vec<SubscribeFilter>) -> Result<(), rumqttc::ClientError> {
        loop {
            match self.client.try_subscribe_many(filters.clone()) {
                Err(rumqttc::ClientError::TryRequest(_)) if !self.rx.is_closed() => self.room().await,
                other => return other,
            }
        }
    }
}

async fn perform(conn: &mut Conn, action: Action, campaign: &Campaign, on_report: &mut impl FnMut(Report<'_>)) {
    match action {
        Action::Subscribe(filters) => {
            let filters: Vec<_> = filters.into_iter().map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce)).collect();
            if let Err(e) = conn.subscribe(filters).await {
                log::warn!("subscribe: {e}");
            }
        }
        Action::Publish { topic, payload, retain } => {
            if let Err(e) = conn.publish(&topic, retain, payload).await {
                log::warn!("publish to {topic}: {e}");
            }
        }
        Action::Changed(device) => {
            if let Some(view) = campaign.tracker().devices().get(&device) {
                on_report(Report::Changed(&device, view));
            }
        }
        Action::Interrupted(device, interruption) => on_report(Report::Interrupted(&device, &interruption)),
    }
}
