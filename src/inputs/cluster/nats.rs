//! The NATS backplane: one client publishes this node's events on the subject and listens
//! on it. The NATS client reconnects by itself (and keeps the subscription); this task
//! reports the connection state, and while the client is disconnected counts events as not
//! forwarded rather than letting them pile up in the client's buffer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use eventgate_protocol::envelope::Event;

use super::{encode, next_messages, ClusterError, Node, Reconnects};
use crate::backoff::Backoff;
use crate::readiness::Component;
use crate::telemetry;

pub(super) async fn run(
    node: Node,
    mut receiver: mpsc::Receiver<Vec<Arc<Event>>>,
    status: Component,
) {
    let mut reconnects = Reconnects::new(&node, &status);
    loop {
        let result = session(&node, &mut receiver, &status, &mut reconnects.backoff).await;
        if !reconnects.again_draining(result, &mut receiver).await {
            break;
        }
    }
}

async fn session(
    node: &Node,
    receiver: &mut mpsc::Receiver<Vec<Arc<Event>>>,
    status: &Component,
    backoff: &mut Backoff,
) -> Result<(), ClusterError> {
    let events_status = status.clone();
    let options = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .name(format!("eventgate node {}", node.id))
        .event_callback(move |event| {
            let status = events_status.clone();
            async move {
                match event {
                    async_nats::Event::Connected => status.set(true, "connected"),
                    async_nats::Event::Disconnected => {
                        status.set(false, "reconnecting");
                        telemetry::cluster_reconnecting(0);
                    }
                    other => tracing::debug!(event = %other, "nats backplane event"),
                }
            }
        });
    let client = tokio::select! {
        () = node.shutdown.cancelled() => return Ok(()),
        client = options.connect(node.config.url.as_str()) => client.map_err(|e| ClusterError::Nats(e.to_string()))?,
    };
    let subject = node.config.channel.clone();
    let mut subscription = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
    // The subscription is registered once the server has seen it.
    client
        .flush()
        .await
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
    status.set(true, "connected");
    backoff.reset();
    tracing::info!(node = %node.id, subject = %subject, "cluster connected to nats");
    let mut buffer = Vec::new();
    loop {
        tokio::select! {
            () = node.shutdown.cancelled() => {
                let mut last = Vec::new();
                while let Ok(batch) = receiver.try_recv() {
                    last.extend(batch);
                }
                if !last.is_empty() {
                    send(node, &client, &subject, &last).await;
                }
                let _ = client.flush().await;
                return Ok(());
            }
            messages = next_messages(receiver, &mut buffer) => {
                let Some(messages) = messages else { return Ok(()) };
                for events in &messages {
                    send(node, &client, &subject, events).await;
                }
            }
            message = subscription.next() => {
                let Some(message) = message else { return Err(ClusterError::Ended) };
                if node.deliver(&message.payload).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

async fn send(node: &Node, client: &async_nats::Client, subject: &str, events: &[Arc<Event>]) {
    if client.connection_state() != State::Connected {
        telemetry::cluster_not_forwarded(events.len() as u64, "backplane_down");
        return;
    }
    let payload = encode(&node.id, events);
    match client.publish(subject.to_owned(), payload.into()).await {
        Ok(()) => telemetry::cluster_forwarded(events.len() as u64),
        Err(error) => {
            telemetry::cluster_not_forwarded(events.len() as u64, "publish_failed");
            telemetry::cluster_error(&ClusterError::Nats(error.to_string()));
        }
    }
}
