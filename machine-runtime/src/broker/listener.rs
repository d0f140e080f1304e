//! The worker-event listener: keeps the subscription to the workers' event channels open across
//! outages and forwards each parsed [`WorkerEvent`] to the publisher.

use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::link::Link;
use super::view;
use super::worker_channel;
use super::workers::WorkerEvent;

/// Escapes glob characters so a machine id is matched literally in a PSUBSCRIBE pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// What the worker-event listener subscribes to: each planned worker's own channel (`SUBSCRIBE`), or,
/// for a machine with no planned worker, the pattern `machine:<id>:worker:*` (`PSUBSCRIBE`).
///
/// Exact channels because Redis matches every `PUBLISH` against every pattern subscription on the
/// server: with one pattern per machine a publish costs O(machines) and the fleet's publishes
/// O(machines²) (`cargo bench --bench fleet`: 2.5 µs per publish with 1 machine, 25 µs with 200),
/// while an exact channel is one hash lookup.
#[derive(Debug, Clone)]
pub(super) enum WorkerChannels {
    Exact(Vec<String>),
    Pattern(String),
}

impl WorkerChannels {
    pub(super) fn of(machine_id: &str, workers: &[view::WorkerView]) -> Self {
        if workers.is_empty() {
            Self::Pattern(format!("machine:{}:worker:*", glob_escape(machine_id)))
        } else {
            Self::Exact(
                workers
                    .iter()
                    .map(|w| worker_channel(machine_id, &w.worker_id))
                    .collect(),
            )
        }
    }

    async fn subscribe(&self, pubsub: &mut redis::aio::PubSub) -> redis::RedisResult<()> {
        match self {
            Self::Exact(channels) => pubsub.subscribe(channels).await,
            Self::Pattern(pattern) => pubsub.psubscribe(pattern).await,
        }
    }
}

impl std::fmt::Display for WorkerChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Exact(channels) => write!(f, "the {} worker channels", channels.len()),
            Self::Pattern(pattern) => write!(f, "{pattern}"),
        }
    }
}

/// Keeps the subscription to the workers' event channels ([`WorkerChannels`]) open and forwards
/// parsed events.
pub(super) async fn listen_worker_events(
    link: Arc<Link>,
    channels: WorkerChannels,
    events: mpsc::Sender<WorkerEvent>,
    cancel: CancellationToken,
) {
    let pattern = &channels;
    let settings = link.settings();
    let mut connections = link.watch_current();
    let mut delay = settings.backoff_min;
    loop {
        // Wait for the main link: it owns the view of whether Redis is reachable.
        while connections.borrow_and_update().is_none() {
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = connections.changed() => if changed.is_err() { return },
            }
        }
        let subscribe = async {
            let mut pubsub = link.client().get_async_pubsub().await?;
            channels.subscribe(&mut pubsub).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let limit = settings.connect_timeout + settings.response_timeout;
        match tokio::time::timeout(limit, subscribe).await {
            Ok(Ok(pubsub)) => {
                delay = settings.backoff_min;
                let mut stream = Box::pin(pubsub.into_on_message());
                loop {
                    let next = std::future::poll_fn(|cx| Pin::as_mut(&mut stream).poll_next(cx));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        // Any change of the main link (lost or replaced) means this socket is suspect too.
                        changed = connections.changed() => {
                            if changed.is_err() { return }
                            break;
                        }
                        message = next => {
                            let Some(message) = message else {
                                // The stream ends when the socket does; let the main link notice at once.
                                link.check().await;
                                break;
                            };
                            let payload: String = match message.get_payload() {
                                Ok(payload) => payload,
                                Err(_) => continue,
                            };
                            match WorkerEvent::parse(message.get_channel_name(), &payload) {
                                Some(event) => {
                                    if events.send(event).await.is_err() {
                                        return;
                                    }
                                }
                                None => log!(
                                    "ignoring a malformed worker event on {}",
                                    message.get_channel_name()
                                ),
                            }
                        }
                    }
                }
            }
            Ok(Err(err)) => {
                if !link.report(link.current().map_or(0, |c| c.generation), &err) {
                    log!(
                        "subscribing to {pattern} failed: {}",
                        link.url().redact(&err.to_string())
                    );
                }
            }
            Err(_) => {}
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(settings.backoff_max);
    }
}
