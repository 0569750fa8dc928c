//! Publishing a few messages and making sure the broker has them: connect, publish with QoS 1,
//! wait for every acknowledgement, disconnect. For one-shot verbs (`drover feedback`).

use std::time::Duration;

use drover_runtime::link::BrokerSettings;
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};

/// How long to wait for the broker before giving up.
const PATIENCE: Duration = Duration::from_secs(10);

/// Publishes `messages` on `topic` (not retained) and returns once the broker acknowledged all.
pub fn publish_all(settings: &BrokerSettings, topic: &str, messages: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let id = format!("drover-cli-{}", std::process::id());
    let (client, mut eventloop) = AsyncClient::new(settings.mqtt_options(&id, true)?, messages.len().max(1) + 1);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let total = messages.len();
    let work = async {
        for m in messages {
            client.publish(topic, QoS::AtLeastOnce, false, m).await?;
        }
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(e) => anyhow::bail!("{}: {e}", settings.address()),
            }
        }
        client.disconnect().await?;
        // Let the DISCONNECT leave.
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
            if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                break;
            }
        }
        Ok(())
    };
    rt.block_on(async {
        tokio::time::timeout(PATIENCE, work)
            .await
            .map_err(|_| anyhow::anyhow!("{}: no acknowledgement within {PATIENCE:?}", settings.address()))?
    })
}
