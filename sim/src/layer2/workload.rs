//! Layer 2's workload: publishers (QoS1, through the client library's reconnect and
//! resend), subscribers (recording what they see for the invariants) and an operator at
//! the CLI who restarts, pauses and resumes collectors and asks for their status.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::rng::SeededRng;
use daemoneye_core::topic::topics;
use daemoneye_io::client::{Client, ClientOptions, ReconnectPolicy};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

use super::agent::{COLLECTORS, Ctl};
use super::model::Shared;
use super::transport::TurmoilConnector;
use super::{FILTER, MESSAGES};
use crate::reference::naive_match;

pub(super) fn options(name: &str, publisher_id: &str) -> ClientOptions {
    let mut o = ClientOptions::new(name);
    o.session.publisher_id = Some(publisher_id.to_string());
    // A fixed seed: the reconnect waits replay with the run.
    o.session.reconnect = Some(ReconnectPolicy::default());
    o
}

/// Connects, retrying while the broker is unreachable.
pub(super) async fn connect(model: &Shared, name: &str, publisher_id: &str) -> Client {
    loop {
        match Client::connect_via(TurmoilConnector, options(name, publisher_id)).await {
            Ok(c) => return c,
            Err(e) => {
                model
                    .borrow_mut()
                    .log(format!("{name} cannot connect: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

pub(super) async fn publisher(model: Shared, i: usize) -> turmoil::Result {
    let (id, seed) = {
        let mut m = model.borrow_mut();
        m.pub_incarnation[i] += 1;
        let id = format!("p{i}.{}", m.pub_incarnation[i]);
        m.outstanding.insert(id.clone(), (0, false));
        m.log(format!("{id} starts"));
        (
            id,
            m.seed ^ ((i as u64 + 1) << 32) ^ u64::from(m.pub_incarnation[i]),
        )
    };
    let mut rng = SeededRng::new(seed);
    let client = connect(&model, &format!("p{i}"), &id).await;
    for n in 0..MESSAGES {
        let topic = if rng.below(5) == 0 {
            "other.noise"
        } else {
            "events.process.new"
        };
        let payload = Bytes::from(format!("{id}#{n}"));
        match client
            .send(Publish::new(topic, payload, QoS::AtLeastOnce))
            .await
        {
            Ok(pending) => {
                let seq = pending.sequence();
                {
                    let mut m = model.borrow_mut();
                    m.published += 1;
                    if let Some(o) = m.outstanding.get_mut(&id) {
                        o.0 += 1;
                    }
                    m.log(format!("{id} sends #{seq} on {topic}"));
                }
                let (model, id) = (model.clone(), id.clone());
                tokio::task::spawn_local(async move {
                    let result = pending.wait().await;
                    let mut m = model.borrow_mut();
                    match result {
                        Ok(Some(ack)) => {
                            m.acked += 1;
                            if let Some(o) = m.outstanding.get_mut(&id) {
                                o.0 -= 1;
                            }
                            let seen = m.received.get(&(id.clone(), seq)).map_or(0, BTreeSet::len);
                            m.log(format!(
                                "{id} PubAck #{seq} delivered={} none={}",
                                ack.delivered, ack.no_interest
                            ));
                            if ack.delivered as usize > seen {
                                m.fail(
                                    "puback-after-delivery",
                                    format!(
                                        "{id}#{seq}: PubAck says {} delivered, {seen} subscriber(s) saw it",
                                        ack.delivered
                                    ),
                                );
                            }
                        }
                        Ok(None) => {}
                        Err(e) => m.log(format!("{id} #{seq} failed: {e}")),
                    }
                });
            }
            Err(e) => model.borrow_mut().log(format!("{id} send refused: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
    }
    {
        let mut m = model.borrow_mut();
        if let Some(o) = m.outstanding.get_mut(&id) {
            o.1 = true;
        }
        m.log(format!("{id} has sent everything"));
    }
    // Stay up: PubAcks arrive on this host's runtime.
    std::future::pending::<()>().await;
    Ok(())
}

pub(super) async fn subscriber(model: Shared, j: usize) -> turmoil::Result {
    let inc = {
        let mut m = model.borrow_mut();
        m.sub_incarnation[j] += 1;
        let inc = m.sub_incarnation[j];
        m.log(format!("s{j}.{inc} starts"));
        inc
    };
    let name = format!("s{j}");
    let client = connect(&model, &name, &format!("{name}.{inc}")).await;
    let mut sub = loop {
        let spec = Subscribe {
            qos: QoS::AtLeastOnce,
            ..Subscribe::new(FILTER)
        };
        match client.subscribe(spec).await {
            Ok(s) => break s,
            Err(e) => {
                model
                    .borrow_mut()
                    .log(format!("{name} cannot subscribe: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    while let Some(mut d) = sub.recv().await {
        let session = client.session_id().unwrap_or(0);
        let mut m = model.borrow_mut();
        m.delivered += 1;
        m.log(format!(
            "s{j}.{inc} got {}#{}{}",
            d.publisher_id,
            d.sequence,
            if d.redelivered { " (redelivered)" } else { "" }
        ));
        if !naive_match(FILTER, &d.topic) {
            m.fail(
                "filter-match",
                format!("s{j} got {} for filter {FILTER}", d.topic),
            );
        }
        m.received
            .entry((d.publisher_id.clone(), d.sequence))
            .or_default()
            .insert((j, inc));
        if !d.redelivered {
            let key = (j, inc, session, d.publisher_id.clone());
            if let Some(prev) = m.order.insert(key, d.sequence)
                && prev >= d.sequence
            {
                m.fail(
                    "per-publisher-order",
                    format!("s{j} got {}#{} after #{prev}", d.publisher_id, d.sequence),
                );
            }
        }
        drop(m);
        // Recorded: now the broker may forget it.
        d.ack();
    }
    Ok(())
}

async fn lifecycle(
    client: &Client,
    op: pbc::LifecycleOp,
    name: &str,
) -> Option<pbc::LifecycleResponse> {
    let req = pbc::LifecycleRequest {
        op: op as i32,
        name: name.to_string(),
    };
    let p = Publish::new(
        topics::LIFECYCLE,
        Bytes::from(req.encode_to_vec()),
        QoS::AtLeastOnce,
    );
    let d = client.request(p, Duration::from_secs(2)).await.ok()?;
    pbc::LifecycleResponse::decode(d.payload).ok()
}

/// An operator at the CLI: now and then restarts, pauses or resumes a collector while
/// faults run (and resumes whatever is paused once they stop), and asks for the status
/// every half second, keeping the last answer.
pub(super) async fn probe(model: Shared, ctl: Ctl) -> turmoil::Result {
    let client = connect(&model, "probe", "probe").await;
    let mut rng = SeededRng::new(model.borrow().seed ^ 0x6f70);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let faults_on = !model.borrow().faults_stopped;
        if faults_on && rng.below(8) == 0 {
            let name = COLLECTORS[rng.below(COLLECTORS.len() as u64) as usize];
            let op = [
                pbc::LifecycleOp::Restart,
                pbc::LifecycleOp::Pause,
                pbc::LifecycleOp::Resume,
            ][rng.below(3) as usize];
            {
                // An operator's command starts the restart count afresh (a Failed
                // collector restarted by hand gets its whole budget again).
                let mut m = model.borrow_mut();
                m.restarts.remove(name);
                m.crashed_at.remove(name);
                if op == pbc::LifecycleOp::Restart {
                    ctl.borrow_mut().operator_pending.insert(name.to_string());
                }
            }
            let answer = lifecycle(&client, op, name).await;
            // Refused: no SIGTERM comes of this command. Unanswered, it may still be carried
            // out (a QoS1 resend after a broker crash), so the mark stays for its SIGTERM.
            if answer.as_ref().is_some_and(|a| a.error != 0) {
                ctl.borrow_mut().operator_pending.remove(name);
            }
            model.borrow_mut().log(format!(
                "operator {op:?} {name}: {}",
                answer.map_or("no answer".to_string(), |a| format!("error {}", a.error))
            ));
        }
        let Some(r) = lifecycle(&client, pbc::LifecycleOp::Status, "").await else {
            continue;
        };
        let summary: Vec<(String, String, bool)> = r
            .collectors
            .iter()
            .map(|c| (c.name.clone(), c.state.clone(), c.capabilities > 0))
            .collect();
        if !faults_on {
            for (name, state, _) in &summary {
                if state == "paused" {
                    lifecycle(&client, pbc::LifecycleOp::Resume, name).await;
                }
            }
        }
        model.borrow_mut().status = Some(summary);
    }
}
