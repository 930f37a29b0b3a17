//! The Redis pub/sub backplane: one task publishes this node's events on the channel, one
//! task listens on its own connection (pub/sub needs a dedicated one) and delivers what the
//! other nodes published. Each reconnects with a capped backoff; while the publisher is
//! disconnected, events are counted as not forwarded instead of piling up.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;

use eventgate_protocol::envelope::Event;

use super::{encode, next_messages, ClusterError, Node, Reconnects};
use crate::backoff::Backoff;
use crate::readiness::Component;
use crate::telemetry;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn publish(
    node: Node,
    mut receiver: mpsc::Receiver<Vec<Arc<Event>>>,
    status: Component,
) {
    let mut reconnects = Reconnects::new(&node, &status);
    loop {
        let result = publish_session(&node, &mut receiver, &status, &mut reconnects.backoff).await;
        if !reconnects.again_draining(result, &mut receiver).await {
            break;
        }
    }
}

async fn publish_session(
    node: &Node,
    receiver: &mut mpsc::Receiver<Vec<Arc<Event>>>,
    status: &Component,
    backoff: &mut Backoff,
) -> Result<(), ClusterError> {
    let client = redis::Client::open(node.config.url.as_str())?;
    let settings = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let mut connection = tokio::select! {
        () = node.shutdown.cancelled() => return Ok(()),
        connection = client.get_multiplexed_async_connection_with_config(&settings) => connection?,
    };
    status.set(true, "connected");
    backoff.reset();
    tracing::info!(node = %node.id, "cluster publisher connected to redis");
    let mut buffer = Vec::new();
    loop {
        let messages = tokio::select! {
            () = node.shutdown.cancelled() => {
                // Forward what was accepted before the stop.
                let mut last = Vec::new();
                while let Ok(batch) = receiver.try_recv() {
                    last.extend(batch);
                }
                if !last.is_empty() {
                    send(node, &mut connection, &last).await?;
                }
                return Ok(());
            }
            messages = next_messages(receiver, &mut buffer) => messages,
        };
        let Some(messages) = messages else {
            return Ok(());
        };
        for (index, events) in messages.iter().enumerate() {
            if let Err(error) = send(node, &mut connection, events).await {
                for unsent in &messages[index..] {
                    telemetry::cluster_not_forwarded(unsent.len() as u64, "publish_failed");
                }
                return Err(error);
            }
        }
    }
}

async fn send(
    node: &Node,
    connection: &mut redis::aio::MultiplexedConnection,
    events: &[Arc<Event>],
) -> Result<(), ClusterError> {
    let payload = encode(&node.id, events);
    let _receivers: i64 = redis::cmd("PUBLISH")
        .arg(&node.config.channel)
        .arg(payload)
        .query_async(connection)
        .await?;
    telemetry::cluster_forwarded(events.len() as u64);
    Ok(())
}

pub(super) async fn subscribe(node: Node, status: Component) {
    let mut reconnects = Reconnects::new(&node, &status);
    loop {
        let result = subscribe_session(&node, &status, &mut reconnects.backoff).await;
        if !reconnects.again(result).await {
            break;
        }
    }
}

async fn subscribe_session(
    node: &Node,
    status: &Component,
    backoff: &mut Backoff,
) -> Result<(), ClusterError> {
    let client = redis::Client::open(node.config.url.as_str())?;
    let mut pubsub = tokio::select! {
        () = node.shutdown.cancelled() => return Ok(()),
        pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub()) => match pubsub {
            Ok(pubsub) => pubsub?,
            Err(_) => return Err(ClusterError::Ended),
        },
    };
    pubsub.subscribe(&node.config.channel).await?;
    status.set(true, "subscribed");
    backoff.reset();
    tracing::info!(node = %node.id, channel = %node.config.channel, "cluster subscriber listening on redis");
    let mut messages = pubsub.on_message();
    loop {
        let message = tokio::select! {
            () = node.shutdown.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let Some(message) = message else {
            return Err(ClusterError::Ended);
        };
        if node.deliver(message.get_payload_bytes()).await.is_err() {
            // The hub stopped: the node is shutting down.
            return Ok(());
        }
    }
}
