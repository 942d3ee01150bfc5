//! Publishing through the write-ahead log: a batch of events is appended and synced once
//! (group commit) before it counts as accepted, then published at QoS1 under the WAL's
//! sequences; each PubAck comes back on a channel so the caller can release the record.
//!
//! The collector runtime publishes each batch with [`publish_batches`]: every event of a
//! batch carries the same correlation id (`<publisher>/batch/<first sequence>`) and its
//! place in the batch as the correlation's sequence, so a subscriber sees which events
//! were accepted together.

use bytes::Bytes;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::bus as pbb;
use tokio::sync::mpsc::UnboundedSender;

use super::wal::{ToPublish, WalFile, WalFileError};
use crate::client::{Client, PendingAck};

/// Appends `events` (topic, payload) to the WAL, each stamped with `wall_clock_ms` (Unix
/// ms), syncs once, then publishes what it accepted. An event the WAL refuses (it is full) is dropped and counted in the log; a
/// failing disk is an error.
pub async fn log_and_publish(
    client: &Client,
    wal: &mut WalFile,
    acks: &UnboundedSender<u64>,
    events: Vec<(&str, Bytes)>,
    wall_clock_ms: impl Fn() -> u64,
) -> Result<(), WalFileError> {
    let mut refused = 0u64;
    for (topic, payload) in events {
        match wal.append(wall_clock_ms(), topic, payload) {
            Ok(_) => {}
            Err(WalFileError::Refused(e)) => {
                refused += 1;
                tracing::debug!(error = %e, "event not logged");
            }
            Err(e) => {
                tracing::error!(error = %e, "WAL failed");
                return Err(e);
            }
        }
    }
    if refused > 0 {
        tracing::warn!(
            dropped = refused,
            pending = wal.pending(),
            "WAL full: events dropped until the broker acknowledges what is held"
        );
    }
    wal.commit()?;
    publish_accepted(client, wal, acks).await;
    Ok(())
}

/// Publishes what the WAL accepted (and, after a restart, what it replayed); each PubAck's
/// sequence comes back on `acks`.
pub async fn publish_accepted(client: &Client, wal: &mut WalFile, acks: &UnboundedSender<u64>) {
    let mut waiting = Vec::new();
    for ToPublish { record, replayed } in wal.take_publishes() {
        let sequence = record.sequence;
        let p = Publish {
            sequence,
            resent: replayed,
            ..Publish::new(record.topic, record.payload, QoS::AtLeastOnce)
        };
        match client.send_sequenced(p).await {
            Ok(pending) => waiting.push(pending),
            // The record stays in the WAL and is re-sent by the next run.
            Err(e) => tracing::warn!(error = %e, sequence, "could not publish a logged event"),
        }
    }
    forward_acks(waiting, acks);
}

/// Sends each publish's sequence (the WAL record's: [`Client::send_sequenced`] keeps it) on
/// `acks` once its PubAck arrives: one task for what was sent together, waiting in order
/// (PubAcks come back in about the order of their publishes), rather than a task per event.
fn forward_acks(waiting: Vec<PendingAck>, acks: &UnboundedSender<u64>) {
    if waiting.is_empty() {
        return;
    }
    let acks = acks.clone();
    tokio::spawn(async move {
        for pending in waiting {
            let sequence = pending.sequence();
            if let Ok(Some(_)) = pending.wait().await {
                let _ = acks.send(sequence);
            }
        }
    });
}

/// Publishes what the WAL accepted, in batches of at most `max_batch`, each event stamped
/// with its batch's correlation (see the module docs); returns how many were sent. Each
/// PubAck's sequence comes back on `acks`.
pub async fn publish_batches(
    client: &Client,
    wal: &mut WalFile,
    acks: &UnboundedSender<u64>,
    publisher: &str,
    max_batch: usize,
) -> u64 {
    let records = wal.take_publishes();
    let mut sent = 0;
    for batch in records.chunks(max_batch.max(1)) {
        let mut waiting = Vec::with_capacity(batch.len());
        let first = batch.first().map_or(0, |r| r.record.sequence);
        let correlation_id = format!("{publisher}/batch/{first}");
        for (place, ToPublish { record, replayed }) in batch.iter().enumerate() {
            let sequence = record.sequence;
            let p = Publish {
                sequence,
                resent: *replayed,
                correlation: Some(Box::new(pbb::Correlation {
                    correlation_id: correlation_id.clone(),
                    sequence: place as u64 + 1,
                    source_process: publisher.to_string(),
                    ..Default::default()
                })),
                ..Publish::new(
                    record.topic.clone(),
                    record.payload.clone(),
                    QoS::AtLeastOnce,
                )
            };
            match client.send_sequenced(p).await {
                Ok(pending) => {
                    sent += 1;
                    waiting.push(pending);
                }
                // The record stays in the WAL and is re-sent by the next run.
                Err(e) => tracing::warn!(error = %e, sequence, "could not publish a logged event"),
            }
        }
        forward_acks(waiting, acks);
    }
    sent
}
