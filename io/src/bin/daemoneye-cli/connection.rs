//! The connection every command opens: to the socket the user named, else the default,
//! without reconnecting (a command that loses its broker fails and says so) except for
//! the long-running ones that ask to.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use daemoneye_io::client::{Client, ClientError, ClientOptions};
use daemoneye_io::paths;
use daemoneye_proto::frame::{Deliver, Publish, QoS};

use crate::error::CliError;

/// Connects as `name` to `socket` (else `DAEMONEYE_BROKER_SOCKET`, else the default path).
pub async fn connect(socket: Option<&Path>, name: &str) -> Result<Client, ClientError> {
    let path = paths::resolve_socket_path(socket);
    let mut options = ClientOptions::new(name);
    options.session.reconnect = None;
    Client::connect(&path, options).await
}

/// Like [`connect`], but the client dials again (and renews its subscriptions) whenever
/// the connection is lost, as long as the command runs.
pub async fn connect_reconnecting(
    socket: Option<&Path>,
    name: &str,
) -> Result<Client, ClientError> {
    let path = paths::resolve_socket_path(socket);
    Client::connect(&path, ClientOptions::new(name)).await
}

/// Asks `topic` with an empty payload and waits up to `timeout` for the answer.
pub async fn ask(
    client: &Client,
    topic: &str,
    qos: QoS,
    timeout: Duration,
) -> Result<Deliver, ClientError> {
    client
        .request(Publish::new(topic, Bytes::new(), qos), timeout)
        .await
}

/// A round trip to the broker: everything this client sent before it has been read, so
/// an error it caused (bad topic, permission) has arrived.
pub async fn round_trip(client: &Client, timeout: Duration) -> Result<(), ClientError> {
    ask(client, "$sys.broker.health", QoS::AtMostOnce, timeout)
        .await
        .map(drop)
}

/// `seconds` as a duration.
pub fn seconds(seconds: f64) -> Result<Duration, CliError> {
    Duration::try_from_secs_f64(seconds).map_err(|_| CliError::InvalidDuration(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_fractions_and_refuse_negatives() {
        assert_eq!(seconds(0.25).expect("valid"), Duration::from_millis(250));
        let err = seconds(-1.0).expect_err("negative");
        assert_eq!(err.to_string(), "invalid duration -1 seconds");
    }
}
