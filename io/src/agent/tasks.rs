//! The task service (DESIGN.md section 11): the agent's bus side of its coordinator, which
//! lives in the process manager's fleet ([`super::process`]).
//!
//! On the control client it serves `control.tasks.submit` (`TaskSubmit` ->
//! `TaskSubmitResponse`; with `wait`, answered only once the task has ended, with the
//! collector's `TaskResult`), `control.tasks.list` and `control.tasks.cancel`, and takes
//! the collectors' results on `control.tasks.result` (QoS1, acknowledged once the manager
//! has them). The manager hands back each attempt to send ([`attempt_publish`]): a QoS1
//! publish of a `Task` on `control.collector.task.<capability>`, directly to the owner, with
//! the task's priority and correlation id, and `control.tasks.result` as its reply topic.
//! Every decision is the core coordinator's; this module only moves messages.

use std::collections::BTreeMap;

use bytes::Bytes;
use daemoneye_core::Instant;
use daemoneye_core::coordinator::{Attempt, Task};
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Deliver, Publish, QoS, Subscribe, Target};
use daemoneye_proto::pb::{bus as pbb, control as pbc};
use prost::Message;
use tokio::sync::{mpsc, oneshot};

use super::process::{PeerCreds, Request};
use crate::client::{Client, ClientError, Delivery, Subscription};

/// A request of the task RPC, for the process manager.
#[derive(Debug)]
pub enum TaskRequest {
    /// Submit a task. With `wait`, the answer is held until the task ends.
    Submit {
        /// What was asked.
        submit: pbc::TaskSubmit,
        /// The answer.
        reply: oneshot::Sender<pbc::TaskSubmitResponse>,
    },
    /// List the tasks.
    List {
        /// Also the ended ones still remembered.
        include_finished: bool,
        /// The answer.
        reply: oneshot::Sender<pbc::TaskListResponse>,
    },
    /// Cancel a task.
    Cancel {
        /// The task.
        task_id: String,
        /// The answer.
        reply: oneshot::Sender<pbc::TaskCancelResponse>,
    },
    /// A collector's result.
    Result {
        /// What it said.
        result: pbc::TaskResult,
        /// Who said it.
        peer: PeerCreds,
    },
    /// Where to hand the attempts to send from now on (the control client's connection).
    Attach {
        /// The control client's queue of publishes.
        sends: mpsc::UnboundedSender<Publish>,
    },
}

/// The publish of one attempt: `deadline_ms` is the attempt's deadline in Unix
/// milliseconds (`unix_ms_at_now` is the wall clock at `now`).
pub fn attempt_publish(attempt: &Attempt, now: Instant, unix_ms_at_now: u64) -> Publish {
    let task = attempt.to_wire(now, unix_ms_at_now);
    let correlation = pbb::Correlation {
        correlation_id: attempt.correlation_id.clone(),
        workflow_stage: format!("task.{}", attempt.kind),
        source_process: "daemoneye-agent".into(),
        ..Default::default()
    };
    Publish {
        correlation: Some(Box::new(correlation)),
        reply_to: Some(topics::TASKS_RESULT.to_string()),
        priority: attempt.priority,
        target: Some(Target::Collector(attempt.collector.clone())),
        ..Publish::new(
            topics::task(&attempt.capability),
            Bytes::from(task.encode_to_vec()),
            QoS::AtLeastOnce,
        )
    }
}

/// Submitters who asked to `wait`, by task: answered when the task ends.
#[derive(Debug, Default)]
pub struct Waiters {
    waiting: BTreeMap<String, Vec<oneshot::Sender<pbc::TaskSubmitResponse>>>,
}

impl Waiters {
    /// `reply` waits for task `id` to end.
    pub fn wait(&mut self, id: String, reply: oneshot::Sender<pbc::TaskSubmitResponse>) {
        self.waiting.entry(id).or_default().push(reply);
    }

    /// Task `task` ended: everyone waiting for it gets its record and the collector's
    /// result.
    pub fn ended(&mut self, task: &Task, now: Instant, unix_ms_at_now: u64) {
        let Some(replies) = self.waiting.remove(&task.id) else {
            return;
        };
        let answer = pbc::TaskSubmitResponse {
            error: String::new(),
            task: Some(task.to_wire(now, unix_ms_at_now)),
            result: task.result_to_wire(),
        };
        for reply in replies {
            // A submitter that gave up is gone; nothing to tell.
            let _ = reply.send(answer.clone());
        }
    }
}

/// The control client's subscriptions for the task RPC and the results.
pub struct TaskTopics {
    submit: Subscription,
    list: Subscription,
    cancel: Subscription,
    results: Subscription,
    sends: mpsc::UnboundedReceiver<Publish>,
}

impl std::fmt::Debug for TaskTopics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskTopics").finish_non_exhaustive()
    }
}

impl TaskTopics {
    /// Subscribes `client` to the task topics and attaches it to the process manager as
    /// the sender of attempts.
    pub async fn subscribe(
        client: &Client,
        manager: &mpsc::Sender<Request>,
    ) -> Result<Self, ClientError> {
        let submit = client
            .subscribe(Subscribe::new(topics::TASKS_SUBMIT))
            .await?;
        let list = client.subscribe(Subscribe::new(topics::TASKS_LIST)).await?;
        let cancel = client
            .subscribe(Subscribe::new(topics::TASKS_CANCEL))
            .await?;
        let mut spec = Subscribe::new(topics::TASKS_RESULT);
        spec.qos = QoS::AtLeastOnce;
        let results = client.subscribe(spec).await?;
        let (tx, sends) = mpsc::unbounded_channel();
        // A manager that is gone ends the agent anyway.
        let _ = manager
            .send(Request::Tasks(TaskRequest::Attach { sends: tx }))
            .await;
        Ok(TaskTopics {
            submit,
            list,
            cancel,
            results,
            sends,
        })
    }

    /// What arrives next; `None` once a subscription has ended (the connection is gone
    /// for good). Only receives, so it may be dropped in a `select!` without losing anything.
    pub async fn next(&mut self) -> Option<Incoming> {
        tokio::select! {
            biased;
            p = self.sends.recv() => p.map(Incoming::Send),
            d = self.results.recv() => d.map(Incoming::Result),
            d = self.submit.recv() => d.map(|d| Incoming::Submit(d.into_inner())),
            d = self.list.recv() => d.map(|d| Incoming::List(d.into_inner())),
            d = self.cancel.recv() => d.map(|d| Incoming::Cancel(d.into_inner())),
        }
    }
}

/// Something for the task service.
#[derive(Debug)]
pub enum Incoming {
    /// An attempt to publish.
    Send(Publish),
    /// A collector's result.
    Result(Delivery),
    /// A submission.
    Submit(Deliver),
    /// A list request.
    List(Deliver),
    /// A cancel request.
    Cancel(Deliver),
}

impl Incoming {
    /// Serves it.
    pub async fn serve(self, client: &Client, manager: &mpsc::Sender<Request>) {
        match self {
            Incoming::Send(p) => send_attempt(client, p).await,
            Incoming::Result(d) => result(manager, d).await,
            Incoming::Submit(d) => submit(client, manager, d).await,
            Incoming::List(d) => list(client, manager, d).await,
            Incoming::Cancel(d) => cancel(client, manager, d).await,
        }
    }
}

/// Sends an attempt without waiting for its PubAck (which comes only once the collector
/// has answered): the coordinator's deadline, not the publish, decides what happens next.
async fn send_attempt(client: &Client, p: Publish) {
    let collector = match &p.target {
        Some(Target::Collector(c)) => c.clone(),
        _ => String::new(),
    };
    if let Err(e) = client.send(p).await {
        tracing::warn!(%collector, error = %e, "could not send a task");
    }
}

async fn result(manager: &mpsc::Sender<Request>, mut d: Delivery) {
    let peer = PeerCreds {
        pid: d.publisher_pid,
        uid: d.publisher_uid,
    };
    match pbc::TaskResult::decode(d.payload.clone()) {
        Ok(result) => {
            let _ = manager
                .send(Request::Tasks(TaskRequest::Result { result, peer }))
                .await;
        }
        Err(e) => tracing::warn!(publisher = %d.publisher_id, error = %e, "malformed task result"),
    }
    // The manager has it (or is gone): acknowledged either way.
    d.ack();
}

async fn submit(client: &Client, manager: &mpsc::Sender<Request>, req: Deliver) {
    if req.reply_to.is_none() {
        return;
    }
    let submit = match pbc::TaskSubmit::decode(req.payload.clone()) {
        Ok(s) => s,
        Err(e) => {
            let answer = pbc::TaskSubmitResponse {
                error: format!("malformed task submission: {e}"),
                ..Default::default()
            };
            super::reply(client, &req, answer.encode_to_vec()).await;
            return;
        }
    };
    let (reply, rx) = oneshot::channel();
    if manager
        .send(Request::Tasks(TaskRequest::Submit { submit, reply }))
        .await
        .is_err()
    {
        return;
    }
    // With `wait`, the answer comes when the task ends: the loop goes on meanwhile.
    let client = client.clone();
    tokio::spawn(async move {
        if let Ok(answer) = rx.await {
            super::reply(&client, &req, answer.encode_to_vec()).await;
        }
    });
}

async fn list(client: &Client, manager: &mpsc::Sender<Request>, req: Deliver) {
    if req.reply_to.is_none() {
        return;
    }
    let include_finished = pbc::TaskListRequest::decode(req.payload.clone())
        .map(|r| r.include_finished)
        .unwrap_or(false);
    let (reply, rx) = oneshot::channel();
    if manager
        .send(Request::Tasks(TaskRequest::List {
            include_finished,
            reply,
        }))
        .await
        .is_ok()
        && let Ok(answer) = rx.await
    {
        super::reply(client, &req, answer.encode_to_vec()).await;
    }
}

async fn cancel(client: &Client, manager: &mpsc::Sender<Request>, req: Deliver) {
    if req.reply_to.is_none() {
        return;
    }
    let answer = match pbc::TaskCancel::decode(req.payload.clone()) {
        Err(e) => pbc::TaskCancelResponse {
            error: format!("malformed cancel request: {e}"),
            task: None,
        },
        Ok(c) => {
            let (reply, rx) = oneshot::channel();
            if manager
                .send(Request::Tasks(TaskRequest::Cancel {
                    task_id: c.task_id,
                    reply,
                }))
                .await
                .is_err()
            {
                return;
            }
            let Ok(answer) = rx.await else { return };
            answer
        }
    };
    super::reply(client, &req, answer.encode_to_vec()).await;
}
