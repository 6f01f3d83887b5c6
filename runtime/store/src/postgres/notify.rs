//! Changes between hosts: each change is announced with `pg_notify` in the transaction that
//! makes it (so only committed changes are heard), and each host keeps one connection of its
//! own — outside the pool, since a pooled one is handed to other work — that `LISTEN`s.
//!
//! The listener reconnects with exponential backoff when its connection is lost, and after
//! every (re)connect sends [`Change::Resync`]: notifications are not queued for a listener
//! that is away, so subscribers read again what they keep. It also checks its connection
//! every few seconds, which is what [`crate::Store::database_up`] reports. It ends when the
//! store is closed or dropped; it holds nothing of the store, so it never keeps it alive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_postgres::{AsyncMessage, Client, Connection, Socket};

use super::describe;
use super::tls::{MakeRustls, TlsStream};
use crate::Change;

/// The notification channel.
pub(super) const CHANNEL: &str = "gust_changes";

/// The first wait before reconnecting, doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the listener checks that its connection still answers, and how long it waits
/// for the answer: a database that went silent (a cut network sends no reset) is noticed
/// within twice this.
const HEALTH_CHECK: Duration = Duration::from_secs(5);

/// What the listener task needs; nothing of it refers to the store.
pub(super) struct Listener {
    pub(super) config: tokio_postgres::Config,
    pub(super) tls: MakeRustls,
    /// `host:port/db`, for the log.
    pub(super) describe: String,
    pub(super) changes: broadcast::Sender<Change>,
    pub(super) up: Arc<AtomicBool>,
    /// True (or closed, when the store is dropped): stop.
    pub(super) stop: watch::Receiver<bool>,
    /// Told once the first connection listens, or failed to.
    pub(super) ready: oneshot::Sender<()>,
}

/// Listens until stopped.
pub(super) async fn listen(listener: Listener) {
    let Listener {
        config,
        tls,
        describe: database,
        changes,
        up,
        mut stop,
        ready,
    } = listener;
    let mut ready = Some(ready);
    let mut backoff = MIN_BACKOFF;
    loop {
        let connected = tokio::select! {
            () = stopped(&mut stop) => return,
            connected = config.connect(tls.clone()) => connected,
        };
        let lost = match connected {
            Ok((client, connection)) => {
                tokio::select! {
                    () = stopped(&mut stop) => return,
                    lost = session(&client, connection, &changes, &up, &mut backoff, &mut ready) => lost,
                }
            }
            Err(e) => describe(&e),
        };
        up.store(false, Ordering::Relaxed);
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        tracing::warn!(
            database = %database,
            "listening for changes from other hosts: {lost}; trying again in {}ms",
            backoff.as_millis()
        );
        tokio::select! {
            () = stopped(&mut stop) => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: `LISTEN`, then forward notifications until the connection fails.
/// Answers why it ended.
async fn session(
    client: &Client,
    connection: Connection<Socket, TlsStream<Socket>>,
    changes: &broadcast::Sender<Change>,
    up: &AtomicBool,
    backoff: &mut Duration,
    ready: &mut Option<oneshot::Sender<()>>,
) -> String {
    // The connection is driven by its own task, which forwards notifications as they come;
    // this one sends the `LISTEN` and the health checks meanwhile.
    let mut driver = AbortOnDrop(tokio::spawn(drive(connection, changes.clone())));
    match tokio::time::timeout(
        HEALTH_CHECK,
        client.batch_execute(&format!("LISTEN {CHANNEL}")),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return format!("LISTEN failed: {}", describe(&e)),
        Err(_) => return "LISTEN was not answered".into(),
    }
    // Listening from here on: whatever changed before is read again by the subscribers.
    up.store(true, Ordering::Relaxed);
    *backoff = MIN_BACKOFF;
    let _ = changes.send(Change::Resync);
    if let Some(ready) = ready.take() {
        let _ = ready.send(());
    }
    let mut checks = tokio::time::interval(HEALTH_CHECK);
    checks.tick().await;
    loop {
        tokio::select! {
            ended = &mut driver.0 => {
                return match ended {
                    Ok(reason) => reason,
                    Err(e) => format!("the connection task failed: {e}"),
                };
            }
            _ = checks.tick() => {
                match tokio::time::timeout(HEALTH_CHECK, client.simple_query("SELECT 1")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return describe(&e),
                    Err(_) => return format!(
                        "the database did not answer within {}s",
                        HEALTH_CHECK.as_secs()
                    ),
                }
            }
        }
    }
}

/// Drives the connection, forwarding notifications, until it ends; answers why.
async fn drive(
    mut connection: Connection<Socket, TlsStream<Socket>>,
    changes: broadcast::Sender<Change>,
) -> String {
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(note))) => {
                if let Some(change) = parse(note.payload()) {
                    // No subscriber is not an error: nobody needs to hear it.
                    let _ = changes.send(change);
                } else {
                    tracing::warn!(payload = note.payload(), "an unknown change notification");
                }
            }
            Some(Ok(_notice)) => {}
            Some(Err(e)) => return describe(&e),
            None => return "the connection closed".into(),
        }
    }
}

/// Resolves once the store is closed or dropped.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means the sender, held by the store, is gone: stop too.
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Aborts the task when dropped: a session that ends takes its connection task with it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The notification's payload: a small JSON object (PostgreSQL allows under 8000 bytes;
/// agent names and run ids are short).
pub(super) fn payload(change: &Change) -> String {
    let value = match change {
        Change::VersionAdded {
            agent,
            version,
            digest,
        } => json!({"kind": "version", "agent": agent, "version": version, "digest": digest}),
        Change::Deployments { agent } => json!({"kind": "deployments", "agent": agent}),
        Change::Keys { agent } => json!({"kind": "keys", "agent": agent}),
        Change::Setting { name } => json!({"kind": "setting", "name": name}),
        Change::RunQueued { agent, id } => json!({"kind": "run_queued", "agent": agent, "id": id}),
        Change::RunCancelled {
            agent,
            id,
            was_running,
        } => json!({"kind": "run_cancelled", "agent": agent, "id": id, "was_running": was_running}),
        Change::RunEnded { agent, id } => json!({"kind": "run_ended", "agent": agent, "id": id}),
        Change::Resync => json!({"kind": "resync"}),
    };
    value.to_string()
}

/// The change a payload announces; `None` for one this binary does not know (a newer host's).
fn parse(payload: &str) -> Option<Change> {
    let value: Value = serde_json::from_str(payload).ok()?;
    let text = |name: &str| value.get(name)?.as_str().map(str::to_owned);
    Some(match value.get("kind")?.as_str()? {
        "version" => Change::VersionAdded {
            agent: text("agent")?,
            version: u32::try_from(value.get("version")?.as_u64()?).ok()?,
            digest: text("digest")?,
        },
        "deployments" => Change::Deployments {
            agent: text("agent")?,
        },
        "keys" => Change::Keys {
            agent: text("agent")?,
        },
        "setting" => Change::Setting {
            name: text("name")?,
        },
        "run_queued" => Change::RunQueued {
            agent: text("agent")?,
            id: text("id")?,
        },
        "run_cancelled" => Change::RunCancelled {
            agent: text("agent")?,
            id: text("id")?,
            was_running: value.get("was_running")?.as_bool()?,
        },
        "run_ended" => Change::RunEnded {
            agent: text("agent")?,
            id: text("id")?,
        },
        "resync" => Change::Resync,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_change_survives_its_payload() {
        let changes = [
            Change::VersionAdded {
                agent: "a".into(),
                version: 7,
                digest: "sha256:00".into(),
            },
            Change::Deployments { agent: "a".into() },
            Change::Keys { agent: "a".into() },
            Change::Setting {
                name: "admin_token".into(),
            },
            Change::RunQueued {
                agent: "a".into(),
                id: "run_1".into(),
            },
            Change::RunCancelled {
                agent: "a".into(),
                id: "run_1".into(),
                was_running: true,
            },
            Change::RunEnded {
                agent: "a".into(),
                id: "run_1".into(),
            },
            Change::Resync,
        ];
        for change in changes {
            assert_eq!(parse(&payload(&change)), Some(change));
        }
        assert_eq!(parse(r#"{"kind": "from_the_future"}"#), None);
        assert_eq!(parse("not json"), None);
    }
}
