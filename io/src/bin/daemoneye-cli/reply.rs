//! `reply`: a responder for `req` (as `nats reply`): answers each request on a topic with
//! a fixed body, the request itself (`--echo`), or what a shell command prints for it.

use std::path::Path;
use std::process::Stdio;

use bytes::Bytes;
use daemoneye_core::topic::TopicFilter;
use daemoneye_io::client::AckMode;
use daemoneye_proto::frame::{Deliver, GroupSpec, Publish, QoS, QueueStrategy, Subscribe};
use tokio::io::AsyncWriteExt;

use crate::connection::{connect, seconds};
use crate::error::CliError;

/// `reply`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("answer").required(true).args(["body", "command", "echo"]))]
pub struct ReplyArgs {
    /// Topic filter the requests arrive on.
    topic: String,
    /// Answer every request with this body.
    body: Option<String>,
    /// Answer with what `sh -c CMD` prints on stdout, given the request on stdin
    /// (a command that fails is answered with nothing and reported on stderr).
    #[arg(long, value_name = "CMD")]
    command: Option<String>,
    /// Answer with the request's own payload.
    #[arg(long)]
    echo: bool,
    /// Join this queue group: each request goes to one member.
    #[arg(long)]
    group: Option<String>,
    /// Exit after answering this many requests.
    #[arg(long)]
    count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
}

/// How a request is answered.
#[derive(Debug)]
enum Answer {
    Body(Bytes),
    Echo,
    Command(String),
}

impl Answer {
    async fn to(&self, request: &Deliver) -> Result<Bytes, CliError> {
        Ok(match self {
            Answer::Body(b) => b.clone(),
            Answer::Echo => request.payload.clone(),
            Answer::Command(cmd) => {
                let mut child = tokio::process::Command::new("/bin/sh")
                    .arg("-c")
                    .arg(cmd)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .kill_on_drop(true)
                    .spawn()?;
                if let Some(mut stdin) = child.stdin.take() {
                    // A command that does not read its input closes the pipe early.
                    let _ = stdin.write_all(&request.payload).await;
                }
                let out = child.wait_with_output().await?;
                if !out.status.success() {
                    eprintln!("reply: command {cmd:?} failed ({})", out.status);
                }
                Bytes::from(out.stdout)
            }
        })
    }
}

/// `reply`: subscribes (saying "subscribed" on stderr once it is) and answers each request
/// on its reply topic, until `--count` or `--timeout`.
pub async fn run(socket: Option<&Path>, args: ReplyArgs) -> Result<(), CliError> {
    TopicFilter::parse(&args.topic).map_err(|source| CliError::InvalidFilter {
        filter: args.topic.clone(),
        source,
    })?;
    if let Some(g) = &args.group {
        daemoneye_proto::frame::validate_name("--group", g)?;
    }
    let answer = match (args.body, args.command, args.echo) {
        (_, Some(cmd), _) => Answer::Command(cmd),
        (_, None, true) => Answer::Echo,
        (body, None, false) => Answer::Body(Bytes::from(body.unwrap_or_default())),
    };
    let deadline = args
        .timeout
        .map(seconds)
        .transpose()?
        .map(|d| tokio::time::Instant::now() + d);
    let client = connect(socket, "daemoneye-cli reply").await?;
    let spec = Subscribe {
        group: args.group.map(|name| GroupSpec {
            name,
            strategy: QueueStrategy::RoundRobin,
        }),
        ..Subscribe::new(&args.topic)
    };
    let mut sub = client.subscribe_with(spec, AckMode::OnHandOver).await?;
    eprintln!("subscribed");
    let mut answered = 0u64;
    while args.count.is_none_or(|c| answered < c) {
        let next = match deadline {
            Some(at) => match tokio::time::timeout_at(at, sub.recv()).await {
                Ok(m) => m,
                Err(_) => break,
            },
            None => sub.recv().await,
        };
        let Some(delivery) = next else {
            return Err(CliError::Closed);
        };
        let request = delivery.into_inner();
        let Some(reply_to) = request.reply_to.clone() else {
            eprintln!(
                "reply: a message on {} has no reply topic; not answered",
                request.topic
            );
            continue;
        };
        let payload = answer.to(&request).await?;
        let mut reply = Publish::new(reply_to, payload, QoS::AtMostOnce);
        reply.correlation = request.correlation.clone();
        client.publish(reply).await?;
        answered += 1;
        eprintln!(
            "[{answered}] answered a request on {} ({} bytes)",
            request.topic,
            request.payload.len()
        );
    }
    drop(sub);
    client.close().await;
    Ok(())
}
