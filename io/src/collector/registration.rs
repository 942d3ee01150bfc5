//! The collector side of registration: drives the core [`Registration`] machine over the
//! client library. It registers on `control.collector.registration`, heartbeats on
//! `control.health.heartbeat.<id>`, and registers again whenever the broker session
//! changes (the agent restarted, or the connection was re-established). When it stops
//! cleanly it deregisters on `control.collector.deregistration`, so the agent drops it at
//! once instead of waiting out three heartbeats. The collector runtime's heartbeats carry
//! its numbers ([`keep_registered_with`]).

use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::registration::{RegAction, RegState, Registration, RegistrationConfig};
use daemoneye_core::topic::topics;
use daemoneye_proto::frame::{Publish, QoS};
use daemoneye_proto::pb::control as pbc;
use prost::Message;

use crate::client::Client;
use crate::clock::{Clock, MonotonicClock};

/// How long a stopping collector waits for the broker to take its Deregister.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(1);

/// What a heartbeat says besides the id and sequence (the collector's numbers now).
pub type HeartbeatContent = Box<dyn Fn() -> pbc::Heartbeat + Send + Sync>;

/// Keeps a collector registered and heartbeating until `stop` resolves, then deregisters.
pub async fn keep_registered(
    client: Client,
    identity: pbc::RegisterRequest,
    config: RegistrationConfig,
    seed: u64,
    stop: impl std::future::Future<Output = ()>,
) {
    let content: HeartbeatContent = Box::new(|| pbc::Heartbeat {
        state: pbc::HealthState::Healthy as i32,
        ..Default::default()
    });
    let (_now_tx, now_rx) = tokio::sync::mpsc::unbounded_channel();
    keep_registered_with(client, identity, config, seed, stop, content, now_rx).await;
}

/// [`keep_registered`], with heartbeats carrying what `content` says, and one more
/// heartbeat (out of cadence) each time `heartbeat_now` receives.
pub async fn keep_registered_with(
    client: Client,
    identity: pbc::RegisterRequest,
    config: RegistrationConfig,
    seed: u64,
    stop: impl std::future::Future<Output = ()>,
    content: HeartbeatContent,
    mut heartbeat_now: tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let mut heartbeat_now_open = true;
    let clock = MonotonicClock::default();
    let timeout = config.request_timeout;
    let mut machine = Registration::new(config, seed);
    let mut session = client.session_id();
    machine.start(clock.now());
    tokio::pin!(stop);
    loop {
        while let Some(action) = machine.poll_output() {
            match action {
                RegAction::Register => {
                    let req = Publish::new(
                        topics::REGISTRATION,
                        Bytes::from(identity.encode_to_vec()),
                        QoS::AtLeastOnce,
                    );
                    match client.request(req, timeout).await {
                        Ok(d) => {
                            let answer =
                                pbc::RegisterResponse::decode(d.payload).unwrap_or_default();
                            if !answer.accepted {
                                tracing::warn!(message = %answer.message, "registration refused");
                            }
                            let hb = Duration::from_millis(answer.heartbeat_interval_ms);
                            machine.handle_answer(clock.now(), answer.accepted, Some(hb));
                        }
                        // The machine's own deadline decides when to retry.
                        Err(e) => tracing::debug!(error = %e, "registration not answered"),
                    }
                }
                RegAction::Heartbeat { sequence } => {
                    let hb = pbc::Heartbeat {
                        collector_id: identity.collector_id.clone(),
                        sequence,
                        ..content()
                    };
                    let topic = topics::heartbeat(&identity.collector_id);
                    let _ = client
                        .publish(Publish::new(
                            topic,
                            Bytes::from(hb.encode_to_vec()),
                            QoS::AtMostOnce,
                        ))
                        .await;
                }
                RegAction::Deregister => {
                    let d = pbc::Deregister {
                        collector_id: identity.collector_id.clone(),
                        reason: "stopping".into(),
                    };
                    let p = Publish::new(
                        topics::DEREGISTRATION,
                        Bytes::from(d.encode_to_vec()),
                        QoS::AtLeastOnce,
                    );
                    match tokio::time::timeout(DEREGISTER_TIMEOUT, client.publish(p)).await {
                        Ok(Ok(_)) => machine.handle_deregistered(clock.now()),
                        Ok(Err(e)) => tracing::debug!(error = %e, "deregistration not sent"),
                        Err(_) => tracing::debug!("deregistration not acknowledged in time"),
                    }
                    return;
                }
            }
        }
        if machine.state() == RegState::Failed {
            tracing::error!("registration failed after every attempt; giving up");
            return;
        }
        let sleep = match machine.poll_timeout() {
            Some((at, _)) => tokio::time::sleep_until(clock.to_std(at).into()),
            None => tokio::time::sleep(Duration::from_millis(200)),
        };
        tokio::select! {
            biased;
            _ = &mut stop => {
                machine.deregister(clock.now());
                if machine.state() != RegState::Deregistering {
                    return;
                }
                continue;
            }
            now = heartbeat_now.recv(), if heartbeat_now_open => {
                match now {
                    Some(()) => machine.heartbeat_now(clock.now()),
                    None => heartbeat_now_open = false,
                }
                continue;
            }
            _ = sleep => {}
        }
        // A new broker session: whatever the agent knew about us is gone.
        let now_session = client.session_id();
        if now_session != session && now_session.is_some() {
            session = now_session;
            machine.handle_disconnect(clock.now());
            machine.start(clock.now());
        } else {
            machine.handle_timeout(clock.now());
        }
    }
}
