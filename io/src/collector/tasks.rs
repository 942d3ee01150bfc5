//! Tasks for a collector's sources (DESIGN.md sections 5 and 11).
//!
//! For each capability some source serves ([`super::EventSource::task_capabilities`]) the
//! runtime subscribes to `control.collector.task.<capability>` at QoS1 in the queue group
//! `task.<capability>`, which every collector with that capability joins, so each task
//! reaches one of them. A task addressed to one collector is a publish on the same topic
//! with a direct target (the collector id): the broker gives it only to that collector's
//! subscriptions, this one included. No other subscription is needed.
//!
//! Each task goes to the first source serving its capability, in its own task, bounded by
//! its deadline. The `TaskResult` is published to the task's reply topic when it has one,
//! else on `events.<capability>.task_result`, with the task's correlation metadata
//! unchanged; the delivery is acknowledged only once the result is sent, so a collector
//! that dies mid-task leaves it to be redelivered to another member.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{GroupSpec, Publish, QoS, QueueStrategy, Subscribe};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

use super::metrics::Metrics;
use super::source::{EventSource, SourceCaps, TaskOutcome};
use crate::client::Delivery;

/// The queue group of a capability's task topic.
pub fn task_group(capability: &str) -> String {
    format!("task.{capability}")
}

/// The topic of a task's result when the task has no reply topic.
pub fn result_topic(capability: &str) -> String {
    format!("events.{capability}.task_result")
}

/// The subscriptions for the capabilities in `caps`, by name.
pub(crate) fn subscriptions(caps: SourceCaps) -> Vec<(String, Subscribe)> {
    SourceCaps::NAMED
        .iter()
        .filter(|(_, c)| caps.contains(*c))
        .map(|(name, _)| {
            let mut s = Subscribe::new(topics::task(name));
            s.qos = QoS::AtLeastOnce;
            s.group = Some(GroupSpec {
                name: task_group(name),
                strategy: QueueStrategy::RoundRobin,
            });
            (name.to_string(), s)
        })
        .collect()
}

/// The capability a task topic names.
fn capability_of(topic: &str) -> &str {
    topic.rsplit('.').next().unwrap_or_default()
}

/// Serves one task delivery with the first of `sources` that serves its capability and
/// returns the result to publish (the delivery is acked by the caller once it is sent).
pub(crate) async fn serve(
    sources: Arc<Vec<Arc<dyn EventSource>>>,
    collector_id: String,
    metrics: Arc<Metrics>,
    delivery: &Delivery,
    unix_now_ms: u64,
) -> Publish {
    let capability = capability_of(&delivery.topic).to_string();
    let task = pbc::Task::decode(delivery.payload.clone());
    let (task_id, outcome) = match task {
        Err(e) => (
            String::new(),
            TaskOutcome::failed(format!("malformed task: {e}")),
        ),
        Ok(task) => {
            let id = task.task_id.clone();
            let wanted = SourceCaps::from_capability(&capability).unwrap_or_default();
            let source = sources
                .iter()
                .find(|s| !wanted.is_empty() && s.task_capabilities().contains(wanted));
            let outcome = match source {
                None => TaskOutcome::failed(format!("no source serves {capability} tasks")),
                Some(_) if task.deadline_ms != 0 && task.deadline_ms <= unix_now_ms => {
                    TaskOutcome::failed("deadline passed before the task arrived")
                }
                Some(source) => {
                    let budget = match task.deadline_ms {
                        0 => Duration::from_secs(3600),
                        d => Duration::from_millis(d - unix_now_ms),
                    };
                    metrics.task_started();
                    let out = tokio::time::timeout(budget, source.handle_task(task)).await;
                    metrics.task_ended();
                    out.unwrap_or_else(|_| TaskOutcome::failed("deadline passed"))
                }
            };
            (id, outcome)
        }
    };
    let result = pbc::TaskResult {
        task_id,
        collector_id,
        ok: outcome.ok,
        message: outcome.message,
        payload: outcome.payload,
    };
    let topic = delivery
        .reply_to
        .clone()
        .unwrap_or_else(|| result_topic(&capability));
    Publish {
        correlation: delivery.correlation.clone(),
        ..Publish::new(topic, Bytes::from(result.encode_to_vec()), QoS::AtLeastOnce)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_queue_group_subscription_per_served_capability() {
        let subs = subscriptions(SourceCaps::PROCESS | SourceCaps::NETWORK);
        let names: Vec<_> = subs
            .iter()
            .map(|(n, s)| (n.as_str(), s.filter.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("process", "control.collector.task.process"),
                ("network", "control.collector.task.network")
            ]
        );
        assert!(
            subs.iter()
                .all(|(n, s)| s.group.as_ref().is_some_and(|g| g.name == task_group(n)))
        );
        assert_eq!(capability_of("control.collector.task.process"), "process");
    }
}
