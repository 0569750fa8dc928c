//! A test's own MQTT client: records every message on a filter (to check what devices asked
//! for) and publishes what the test injects (a corrupted chunk).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Messages seen, as (topic, payload).
pub type Seen = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A connected observer; disconnects when dropped.
pub struct Observer {
    client: Client,
    /// What arrived so far.
    pub seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Observer {
    /// Connects to `port` on 127.0.0.1 and subscribes to `filter`.
    pub fn connect(port: u16, filter: &str) -> Observer {
        Observer::connect_with(
            MqttOptions::new(format!("observer-{}", crate::broker::free_port()), "127.0.0.1", port),
            filter,
        )
    }

    /// Connects as `user` with `password` (a broker with access rules).
    pub fn connect_as(port: u16, filter: &str, user: &str, password: &str) -> Observer {
        let mut o = MqttOptions::new(format!("{user}-{}", crate::broker::free_port()), "127.0.0.1", port);
        o.set_credentials(user, password);
        Observer::connect_with(o, filter)
    }

    /// Connects with `o` and subscribes to `filter`.
    pub fn connect_with(mut o: MqttOptions, filter: &str) -> Observer {
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut connection) = Client::new(o, 64);
        let seen: Seen = Arc::default();
        let (sink, sub, filter) = (seen.clone(), client.clone(), filter.to_string());
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for event in connection.iter() {
                match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = sub.subscribe(filter.as_str(), QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        sink.lock().expect("lock").push((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    // A broker that refuses this client now (its account removed) never lets the
                    // disconnect through: stop on the owner's word instead.
                    Err(_) if stopping.load(Ordering::Relaxed) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(200)),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        Observer { client, seen, stop, thread: Some(thread) }
    }

    /// Publishes (QoS 1).
    pub fn publish(&self, topic: &str, payload: Vec<u8>, retain: bool) {
        self.client.publish(topic, QoS::AtLeastOnce, retain, payload).expect("publish");
    }

    /// A copy of what arrived.
    pub fn messages(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.disconnect();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
