//! The MQTT side of `drover flash`: subscribes to the flashed devices' status topics before
//! anything is installed (so the new agents' first words are heard live), and feeds
//! [`Presence`]. One connection for all the boards of a run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use drover_runtime::link::{BrokerSettings, codec};
use drover_wire::message::Status;
use drover_wire::topic::{self, DeviceLeaf, Name, Parsed};
use rumqttc::{AsyncClient, Event, Packet, QoS};

use super::online::Presence;

/// Why the broker could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Bad settings (TLS files, names).
    #[error("{0}")]
    Settings(String),
    /// No subscription within the time given.
    #[error("could not subscribe on {address} within {seconds} s: {last}")]
    Unreachable {
        /// The broker.
        address: String,
        /// How long it was tried.
        seconds: u64,
        /// The last connection error, if any.
        last: String,
    },
}

/// Watches the status of some devices until dropped.
pub struct Watcher {
    presence: Arc<Mutex<Presence>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// Connects, subscribes to each device's status and returns once subscribed.
    pub fn start(
        settings: &BrokerSettings,
        devices: &[Name],
        connect_timeout: Duration,
    ) -> Result<Watcher, WatchError> {
        let id = format!("drover-flash-{}", std::process::id());
        let options = settings.mqtt_options(&id, true).map_err(|e| WatchError::Settings(e.to_string()))?;
        let topics: Vec<String> = devices.iter().map(|d| topic::device(d, DeviceLeaf::Status).to_string()).collect();
        let presence = Arc::new(Mutex::new(Presence::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let (p, s) = (presence.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("flash-watch".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    let _ = ready_tx.send(Err("no async runtime".into()));
                    return;
                };
                rt.block_on(watch(options, topics, p, s, ready_tx));
            })
            .map_err(|e| WatchError::Settings(e.to_string()))?;
        let mut last = String::from("no answer");
        let deadline = Instant::now() + connect_timeout;
        let watcher = Watcher { presence, stop, thread: Some(thread) };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok(Ok(())) => return Ok(watcher),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    return Err(WatchError::Unreachable {
                        address: settings.address(),
                        seconds: connect_timeout.as_secs(),
                        last,
                    });
                }
            }
        }
    }

    /// Waits until `device` is online (a fresh status), or `deadline`; returns when it was.
    pub fn wait_online(&self, device: &str, deadline: Instant) -> bool {
        loop {
            if self.presence.lock().map(|p| p.online_at(device).is_some()).unwrap_or(false) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn watch(
    options: rumqttc::MqttOptions,
    topics: Vec<String>,
    presence: Arc<Mutex<Presence>>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let start = Instant::now();
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    while !stop.load(Ordering::Relaxed) {
        let event = match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
            Err(_) => continue,
            Ok(e) => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let filters = topics.iter().map(|t| rumqttc::SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
                if let Err(e) = client.subscribe_many(filters).await {
                    let _ = ready.send(Err(e.to_string()));
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                let _ = ready.send(Ok(()));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let Some(Parsed::Device(device, DeviceLeaf::Status)) = topic::parse(&p.topic) else { continue };
                let Ok(status) = codec::decode::<Status>(&p.payload) else {
                    log::warn!("{}: a status that does not decode", p.topic);
                    continue;
                };
                let since = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                if let Ok(mut presence) = presence.lock()
                    && presence.on_status(device.as_str(), &status, p.retain, since)
                {
                    log::info!("{device} is online");
                }
            }
            Ok(_) => {}
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let _ = client.try_disconnect();
}
