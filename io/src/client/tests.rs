//! The client library against the real broker server over a Unix socket: each kind of
//! refusal reaches the application as its own [`ClientError`] variant, a closed client
//! says so, and a lost broker is dialed again as the session's policy says.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use daemoneye_core::acl::{Acl, AclConfig, AclRule};
use daemoneye_core::broker::{Broker, BrokerConfig, PeerCreds};
use daemoneye_core::client::{Disconnect, ReconnectPolicy};
use daemoneye_proto::frame::{Publish, QoS, Subscribe};
use tokio::sync::oneshot;

use super::*;
use crate::clock::MonotonicClock;
use crate::server;
use crate::transport::Listener;

/// The uid the broker sees for every connection: not root, not the owner.
const UID: u32 = 4242;

/// A Unix listener that reports [`UID`] as every peer's uid, so that the ACL applies to
/// tests that run as root.
struct AsUid(tokio::net::UnixListener);

impl Listener for AsUid {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;

    async fn accept(&mut self) -> std::io::Result<(Self::Read, Self::Write, PeerCreds)> {
        let (stream, _) = self.0.accept().await?;
        let (r, w) = stream.into_split();
        let peer = PeerCreds {
            uid: UID,
            gid: UID,
            pid: None,
        };
        Ok((r, w, peer))
    }
}

/// A broker on `path` until the sender is dropped or fired.
fn start_broker(path: &Path, config: BrokerConfig, acl: Acl) -> oneshot::Sender<()> {
    let listener = AsUid(tokio::net::UnixListener::bind(path).expect("bind"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::task::spawn_local(server::serve(
        listener,
        Broker::new(config, acl, 7),
        MonotonicClock::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    stop
}

/// [`UID`] may publish and subscribe under `allowed.` only.
fn limited_acl() -> Acl {
    let config = AclConfig {
        rules: vec![AclRule {
            uid: UID,
            role: None,
            publish: vec!["allowed.#".into()],
            subscribe: vec!["allowed.#".into()],
        }],
    };
    Acl::compile(1, &config).expect("acl")
}

fn small_frames() -> BrokerConfig {
    BrokerConfig {
        owner_uid: 1,
        max_frame: 4096,
        ..BrokerConfig::default()
    }
}

fn options(name: &str) -> ClientOptions {
    let mut o = ClientOptions::new(name);
    o.session.reconnect = None;
    o
}

fn socket(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("broker.sock")
}

/// Runs `test` on a current-thread runtime inside a `LocalSet` (the server needs one).
fn run<F: std::future::Future<Output = ()>>(test: impl FnOnce(PathBuf) -> F) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = socket(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(tokio::task::LocalSet::new().run_until(test(path)));
}

fn publish(topic: &str, len: usize, qos: QoS) -> Publish {
    Publish::new(topic, Bytes::from(vec![b'x'; len]), qos)
}

#[test]
fn a_publish_above_the_broker_frame_size_is_too_large_not_closed() {
    run(|path| async move {
        let _broker = start_broker(&path, small_frames(), limited_acl());
        let client = Client::connect(&path, options("big"))
            .await
            .expect("connect");
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            let err = client
                .publish(publish("allowed.big", 8192, qos))
                .await
                .expect_err("too large");
            assert!(matches!(err, ClientError::TooLarge(_)), "{qos:?}: {err:?}");
        }
        // The client is still usable: nothing was sent, nothing broke.
        let ack = client
            .publish(publish("allowed.small", 10, QoS::AtLeastOnce))
            .await
            .expect("small publish");
        assert!(ack.is_some_and(|a| a.no_interest));
        assert_eq!(client.pending_publishes(), 0);
    });
}

#[test]
fn an_invalid_topic_or_filter_is_refused_as_invalid_topic() {
    run(|path| async move {
        let _broker = start_broker(&path, small_frames(), limited_acl());
        let client = Client::connect(&path, options("typo"))
            .await
            .expect("connect");
        let err = client
            .publish(publish("allowed..twice", 1, QoS::AtLeastOnce))
            .await
            .expect_err("invalid topic");
        assert!(matches!(err, ClientError::InvalidTopic(_)), "{err:?}");
        let err = client
            .subscribe(Subscribe::new("allowed.#.more"))
            .await
            .expect_err("invalid filter");
        assert!(matches!(err, ClientError::InvalidTopic(_)), "{err:?}");
    });
}

#[test]
fn what_the_acl_forbids_is_permission_denied() {
    run(|path| async move {
        let _broker = start_broker(&path, small_frames(), limited_acl());
        let client = Client::connect(&path, options("nosy"))
            .await
            .expect("connect");
        let err = client
            .publish(publish("secret.plans", 1, QoS::AtLeastOnce))
            .await
            .expect_err("publish denied");
        assert!(matches!(err, ClientError::PermissionDenied(_)), "{err:?}");
        let err = client
            .subscribe(Subscribe::new("secret.#"))
            .await
            .expect_err("subscribe denied");
        assert!(matches!(err, ClientError::PermissionDenied(_)), "{err:?}");
        // A QoS0 refusal has nobody waiting: it is collected, with its kind.
        client
            .publish(publish("secret.plans", 1, QoS::AtMostOnce))
            .await
            .expect("QoS0 is sent");
        let acked = client
            .publish(publish("allowed.after", 1, QoS::AtLeastOnce))
            .await;
        assert!(acked.is_ok(), "{acked:?}");
        let refusals = client.take_refusals();
        assert!(
            matches!(refusals.as_slice(), [ClientError::PermissionDenied(_)]),
            "{refusals:?}"
        );
    });
}

#[test]
fn a_uid_the_acl_does_not_know_is_permission_denied_at_connect() {
    run(|path| async move {
        let _broker = start_broker(&path, small_frames(), Acl::owner_only(1));
        let mut o = ClientOptions::new("stranger");
        o.session.reconnect = Some(ReconnectPolicy {
            backoff_initial: Duration::from_millis(1),
            ..ReconnectPolicy::default()
        });
        let err = Client::connect(&path, o).await.expect_err("denied");
        assert!(matches!(err, ClientError::PermissionDenied(_)), "{err:?}");
    });
}

#[test]
fn a_closed_client_refuses_new_work_as_closed() {
    run(|path| async move {
        let _broker = start_broker(&path, small_frames(), limited_acl());
        let client = Client::connect(&path, options("done"))
            .await
            .expect("connect");
        let other = client.clone();
        let report = client.close().await;
        assert_eq!(report.unconfirmed, 0);
        assert!(!report.timed_out, "{report:?}");
        let err = other
            .publish(publish("allowed.late", 1, QoS::AtLeastOnce))
            .await
            .expect_err("closed");
        assert!(
            matches!(
                err,
                ClientError::Closed(ClosedReason::Closing | ClosedReason::ClientClosed)
            ),
            "{err:?}"
        );
        let err = other
            .subscribe(Subscribe::new("allowed.#"))
            .await
            .expect_err("closed");
        assert!(matches!(err, ClientError::Closed(_)), "{err:?}");
    });
}

#[test]
fn without_reconnect_a_lost_broker_ends_the_client_with_the_reason() {
    run(|path| async move {
        let broker = start_broker(&path, small_frames(), limited_acl());
        let client = Client::connect(&path, options("once"))
            .await
            .expect("connect");
        let mut sub = client
            .subscribe(Subscribe::new("allowed.#"))
            .await
            .expect("subscribe");
        drop(broker);
        assert!(
            sub.recv().await.is_none(),
            "the stream ends with the client"
        );
        let err = client
            .publish(publish("allowed.x", 1, QoS::AtLeastOnce))
            .await
            .expect_err("gone");
        match err {
            ClientError::Closed(ClosedReason::Lost(
                Disconnect::Goodbye(_) | Disconnect::BrokerClosed,
            )) => {}
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn with_reconnect_a_restarted_broker_gets_the_unconfirmed_publish() {
    run(|path| async move {
        let broker = start_broker(&path, small_frames(), limited_acl());
        let mut o = ClientOptions::new("persistent");
        o.session.reconnect = Some(ReconnectPolicy {
            backoff_initial: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
            ..ReconnectPolicy::default()
        });
        let client = Client::connect(&path, o).await.expect("connect");
        let first = client.session_id();
        drop(broker);
        // Wait until the client has noticed: a QoS0 publish needs a connection.
        while client.session_id() == first {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        std::fs::remove_file(&path).expect("remove the old socket");
        let pending = client
            .send(publish("allowed.kept", 1, QoS::AtLeastOnce))
            .await
            .expect("a QoS1 publish waits for the reconnect");
        let _broker = start_broker(&path, small_frames(), limited_acl());
        let ack = tokio::time::timeout(Duration::from_secs(5), pending.wait())
            .await
            .expect("acked after the reconnect")
            .expect("acked");
        assert!(ack.is_some());
        assert!(client.session_id().is_some());
    });
}
