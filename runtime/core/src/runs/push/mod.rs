//! Push delivery: when a run of a deployment in async mode ends, its event is POSTed to the
//! user's application, signed (Standard Webhooks), with the deployment's access token.
//!
//! Deliveries are rows in the store, so a restart resumes them; this loop picks up those
//! that are due, a bounded number at a time, and never blocks run execution.
//!
//! By the Standard Webhooks rules: a 2xx answer is delivered; 410 Gone means the destination
//! is gone, and retries stop (the delivery shows it); every other answer — 3xx (redirects
//! are not followed), 4xx, 5xx — and every timeout or connection error is retried on a
//! schedule with jitter (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, then every 10 h), honouring
//! `Retry-After`, within a window (3 days by default).
//!
//! The body is the spec's envelope, `{"type", "timestamp", "data"}`, with the run as a poll
//! shows it in `data`; a run whose full event is larger than the configured bound is sent
//! thin — its id, status and poll URL — so receivers are not sent megabytes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use tokio::sync::{Notify, Semaphore};

use gust_model::{DeliveryRecord, DeliveryStatus, PushConfig, TraceContext};
use gust_store::Store;
use gust_store::queue::RunWrite;
use gust_wasm::net;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::view::run_json;
use super::writer::Writer;
use crate::background::{Background, Stage};
use crate::clock;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::secrets::{PushSecrets, signature};

/// Server settings of push delivery.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Time a receiver has to answer one attempt.
    pub timeout: Duration,
    /// Delay before each retry; the last one repeats.
    pub schedule: Vec<Duration>,
    /// How long after the event retries go on.
    pub window: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Allow loopback and private destinations (development and tests); see `net`.
    pub allow_private_network: bool,
    /// Largest event body sent whole; a larger one is sent thin (id, status, poll URL).
    pub max_body_bytes: usize,
    /// Base of the poll URLs in thin events (the server's public URL).
    pub public_url: String,
    /// CA certificates trusted beside the webpki roots (`--outbound-ca-certs`).
    pub extra_roots: net::ExtraRoots,
}

impl Default for PushSettings {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        Self {
            timeout: Duration::from_secs(15),
            schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
            ],
            window: Duration::from_secs(3 * 24 * 3600),
            concurrency: 32,
            allow_private_network: false,
            max_body_bytes: 256 << 10,
            public_url: String::new(),
            extra_roots: net::ExtraRoots::default(),
        }
    }
}

pub(super) struct Pusher {
    inner: Arc<Inner>,
}

struct Inner {
    background: Background,
    store: Store,
    secrets: Arc<PushSecrets>,
    writer: Writer,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    settings: PushSettings,
    http: reqwest::Client,
    in_flight: Mutex<HashSet<String>>,
    slots: Arc<Semaphore>,
}

/// Deliveries taken from the store at once, at most.
const BATCH: usize = 64;

/// What a delivery's claim adds to the receiver's timeout: reading the run and its secret
/// before the attempt, and recording the outcome after it behind a busy writer.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

/// The shortest claim, whatever the timeout.
const MIN_CLAIM: Duration = Duration::from_secs(60);

/// The highest attempt number the deliveries metric labels; later ones count under it.
const MAX_ATTEMPT_LABEL: u32 = 16;

/// Why an event could not be made: a run that is gone never will be; a read that failed
/// (the database restarting) is tried again on the retry schedule.
enum NotReady {
    Gone(String),
    Unread(String),
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// Retry, after at least this long when the receiver said so.
    Retry(String, Option<Duration>),
    /// Do not retry.
    GiveUp(String),
}

impl Pusher {
    pub(super) fn new(
        background: Background,
        store: Store,
        secrets: Arc<PushSecrets>,
        writer: Writer,
        wake: Arc<Notify>,
        settings: PushSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let http = net::client(
            settings.allow_private_network,
            settings.timeout,
            &settings.extra_roots,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                background,
                store,
                secrets,
                writer,
                wake,
                metrics,
                slots: Arc::new(Semaphore::new(settings.concurrency.max(1))),
                settings,
                http,
                in_flight: Mutex::default(),
            }),
        })
    }

    /// Starts the delivery loop in `Stage::Delivery`.
    pub(super) fn start(&self) {
        let inner = Arc::clone(&self.inner);
        self.inner
            .background
            .spawn(Stage::Delivery, move |stop| inner.run(stop));
    }

    /// Sends a `push.test` event to `push`, answering the receiver's status.
    pub(super) async fn test(
        &self,
        agent: &str,
        push: &PushConfig,
    ) -> Result<Result<u16, String>, Error> {
        let inner = &self.inner;
        let body = serde_json::to_vec(&envelope(
            "push.test",
            clock::now_ms(),
            json!({ "agent": agent }),
        ))
        .map_err(|e| Error::Internal(e.into()))?;
        let event_id = format!("msg_{}", uuid::Uuid::now_v7().simple());
        let secrets = inner.secrets.signing(agent).await?;
        match inner
            .post(&push.url, &push.access_token, &event_id, &secrets, body)
            .await
        {
            Ok(response) => Ok(Ok(response.status().as_u16())),
            Err(PostError::Refused(refused)) => Err(Error::BadRequest(format!(
                "the push URL is refused: {refused}"
            ))),
            Err(PostError::Http(e)) => Ok(Err(format!(
                "the push receiver could not be reached: {}",
                describe(e)
            ))),
        }
    }
}

impl Inner {
    async fn run(self: Arc<Self>, stop: CancellationToken) {
        // Past the stop's grace period nothing more is taken: it would be cut at once.
        let grace_over = self.background.grace_over();
        while !stop.is_cancelled() && !grace_over.is_cancelled() {
            // Only what can start now is taken: with PostgreSQL, taking a delivery claims it
            // from the other hosts, and a claim must not run out while it waits for a slot.
            let free = self.slots.available_permits().min(BATCH);
            if free > 0 {
                self.start_due(free).await;
            }
            // Sleep until the next delivery is due (at most a second, so in-flight ones that
            // were skipped are looked at again), or until something new arrives.
            let next = self.store.next_delivery_at().await.ok().flatten();
            // Due now but not picked up means in flight: its end wakes this loop.
            let wait_ms = next.map_or(1000, |at| match at - clock::now_ms() {
                ahead if ahead > 0 => ahead.min(1000),
                _ => 1000,
            });
            let wait = Duration::from_millis(u64::try_from(wait_ms).unwrap_or(1000));
            tokio::select! {
                () = stop.cancelled() => {}
                () = grace_over.cancelled() => {}
                _ = tokio::time::timeout(wait, self.wake.notified()) => {}
            }
        }
    }

    /// Takes up to `free` due deliveries and starts each in a slot of its own.
    async fn start_due(self: &Arc<Self>, free: usize) {
        let busy: Vec<String> = self.in_flight().iter().cloned().collect();
        let (now, claim_ms) = (clock::now_ms(), self.claim_ms());
        // What the store marks the claims with: giving one back names it, so that a claim
        // another host has taken since is not given back in its place.
        let claimed_until = now.saturating_add(claim_ms);
        let due = match self
            .store
            .due_deliveries(now, free, claimed_until, busy)
            .await
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("reading due push deliveries: {e:#}");
                return;
            }
        };
        for delivery in due {
            if !self.in_flight().insert(delivery.run_id.clone()) {
                continue;
            }
            // This loop alone takes slots, and it asked for no more than were free.
            let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            let inner = Arc::clone(self);
            self.background.spawn(Stage::Delivery, move |_| async move {
                let run_id = delivery.run_id.clone();
                inner.deliver(delivery, claimed_until).await;
                inner.in_flight().remove(&run_id);
                drop(slot);
                inner.wake.notify_one();
            });
        }
    }

    /// How long a delivery taken by this host is left alone by the others (PostgreSQL): one
    /// attempt (the receiver's `--push-timeout`) with room to read the run before it and to
    /// record the outcome after it; a host that dies mid-attempt delays the event by this much.
    fn claim_ms(&self) -> i64 {
        let attempt = self.settings.timeout + CLAIM_MARGIN;
        i64::try_from(attempt.max(MIN_CLAIM).as_millis()).unwrap_or(i64::MAX)
    }

    /// An attempt cut by the host's stop: its claim is given back, so that another host
    /// sends the event now rather than when the claim would have run out.
    async fn give_back(&self, run_id: &str, claimed_until: i64) {
        tracing::info!(
            run_id,
            "a push in flight was cut by the stop; it will be sent again"
        );
        if let Err(e) = self
            .store
            .release_delivery(run_id.to_owned(), claimed_until)
            .await
        {
            tracing::warn!(run_id, "giving back a push's claim: {e:#}");
        }
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One attempt, and its outcome recorded. A stop lets the attempt run within its grace
    /// period, not after: past it the attempt is dropped unrecorded (the outcome, once it is
    /// known, is always recorded), and the event goes out again from the next host to look,
    /// with the same `webhook-id`.
    async fn deliver(&self, delivery: DeliveryRecord, claimed_until: i64) {
        let attempts = delivery.attempts + 1;
        // Each attempt is a span in the trace of the request that submitted the run.
        let span = tracing::info_span!(
            target: gust_wasm::trace::TARGET,
            "push.attempt",
            run_id = %delivery.run_id,
            webhook_id = %delivery.event_id,
            attempt = i64::from(attempts),
            outcome = tracing::field::Empty,
        );
        let attempting = async {
            match self.event_body(&delivery).await {
                Ok((body, trace)) => {
                    if let Some(trace) = &trace {
                        gust_wasm::trace::set_parent(&span, trace);
                    }
                    match self.secrets.signing(&delivery.agent).await {
                        Ok(secrets) => {
                            self.attempt(&delivery, &secrets, body)
                                .instrument(span.clone())
                                .await
                        }
                        // The agent has no secret: nothing will sign this event.
                        Err(e @ Error::Conflict(_)) => Attempt::GiveUp(format!("cannot sign: {e}")),
                        // The secret could not be read (the database restarting): a later
                        // attempt can.
                        Err(e) => Attempt::Retry(format!("reading the signing secret: {e}"), None),
                    }
                }
                Err(NotReady::Gone(why)) => Attempt::GiveUp(why),
                Err(NotReady::Unread(why)) => Attempt::Retry(why, None),
            }
        };
        let cut = self.background.grace_over();
        let attempt = tokio::select! {
            // An attempt that has ended counts, even when the period ended meanwhile.
            biased;
            attempt = attempting => attempt,
            () = cut.cancelled() => {
                self.give_back(&delivery.run_id, claimed_until).await;
                return;
            }
        };
        let now = clock::now_ms();
        let (status, last_error, next_attempt_at) = match attempt {
            Attempt::Delivered => (DeliveryStatus::Delivered, None, None),
            Attempt::GiveUp(why) => (DeliveryStatus::Failed, Some(why), None),
            Attempt::Retry(why, retry_after) => {
                let delay = self.retry_delay(attempts, retry_after);
                let next = now.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                let window = i64::try_from(self.settings.window.as_millis()).unwrap_or(i64::MAX);
                if next > delivery.created_at.saturating_add(window) {
                    let why = format!("gave up after {attempts} attempts: {why}");
                    (DeliveryStatus::Failed, Some(why), None)
                } else {
                    (DeliveryStatus::Pending, Some(why), Some(next))
                }
            }
        };
        tracing::debug!(run_id = %delivery.run_id, attempts, status = status.as_str(), "push attempt");
        let outcome = match status {
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Pending => "retry",
            _ => "failed",
        };
        span.record("outcome", outcome);
        // Attempt numbers above the schedule's length are one label, so redeliveries
        // cannot grow the series without bound.
        self.metrics
            .push_attempt(&delivery.agent, outcome, attempts.min(MAX_ATTEMPT_LABEL));
        let write = RunWrite::Delivery {
            run_id: delivery.run_id.clone(),
            round: delivery.created_at,
            status,
            attempts,
            last_error,
            next_attempt_at,
        };
        if let Err(e) = self.writer.write(write).await {
            tracing::error!(run_id = %delivery.run_id, "recording a push attempt: {e:#}");
        }
    }

    /// The event as it is sent now: the run as a poller would see it; and the run's trace.
    async fn event_body(
        &self,
        delivery: &DeliveryRecord,
    ) -> Result<(Vec<u8>, Option<TraceContext>), NotReady> {
        let run = self
            .store
            .run(&delivery.agent, &delivery.run_id)
            .await
            .map_err(|e| NotReady::Unread(format!("reading the run: {e}")))?
            .ok_or_else(|| NotReady::Gone("the run no longer exists".into()))?;
        // The run as polled, without its delivery state: that changes from one attempt to
        // the next, and every attempt of an event carries the same body.
        let mut data = run_json(&run);
        if let Some(data) = data.as_object_mut() {
            data.remove("delivery");
        }
        let event = |data| envelope(&delivery.event_type, delivery.created_at, data);
        let body = serde_json::to_vec(&event(data)).map_err(|e| NotReady::Gone(e.to_string()))?;
        if body.len() <= self.settings.max_body_bytes {
            return Ok((body, run.trace));
        }
        let poll_url = format!(
            "{}/v1/agents/{}/runs/{}",
            self.settings.public_url, run.agent, run.id
        );
        let thin = json!({
            "run_id": run.id,
            "agent": run.agent,
            "status": run.status.as_str(),
            "poll_url": poll_url,
            "thin": true,
        });
        let body = serde_json::to_vec(&event(thin)).map_err(|e| NotReady::Gone(e.to_string()))?;
        Ok((body, run.trace))
    }

    async fn attempt(
        &self,
        delivery: &DeliveryRecord,
        secrets: &[String],
        body: Vec<u8>,
    ) -> Attempt {
        let sent = self
            .post(
                &delivery.url,
                &delivery.access_token,
                &delivery.event_id,
                secrets,
                body,
            )
            .await;
        let response = match sent {
            Ok(response) => response,
            // Checked again on every attempt: a name may resolve elsewhere later.
            Err(PostError::Refused(refused)) => return Attempt::GiveUp(refused.0),
            Err(PostError::Http(e)) => return Attempt::Retry(describe(e), None),
        };
        let status = response.status();
        if status.is_success() {
            return Attempt::Delivered;
        }
        if status == reqwest::StatusCode::GONE {
            return Attempt::GiveUp(
                "the receiver answered 410 Gone: the destination is gone, so retries stopped"
                    .into(),
            );
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(retry_after);
        let why = if status.is_redirection() {
            let to = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            format!("the receiver redirected ({status}) to {to}; redirects are not followed")
        } else {
            format!("the receiver answered {status}")
        };
        Attempt::Retry(why, retry_after)
    }

    async fn post(
        &self,
        url: &str,
        access_token: &str,
        event_id: &str,
        secrets: &[String],
        body: Vec<u8>,
    ) -> Result<reqwest::Response, PostError> {
        let url = reqwest::Url::parse(url).map_err(|e| {
            PostError::Refused(net::Refused(format!("the push URL is not a URL: {e}")))
        })?;
        net::check_url(&url, self.settings.allow_private_network).map_err(PostError::Refused)?;
        let timestamp = clock::now_ms() / 1000;
        let keys: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let signature = signature::signature(&keys, event_id, timestamp, &body);
        // The receiver joins the trace of the push attempt this is sent in, if any.
        let mut request = self.http.post(url);
        for (name, value) in gust_wasm::trace::headers(&tracing::Span::current()) {
            request = request.header(name, value);
        }
        request
            .bearer_auth(access_token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| match net::refusal(&e) {
                Some(refused) => PostError::Refused(refused),
                None => PostError::Http(e),
            })
    }

    fn retry_delay(&self, attempts: u32, retry_after: Option<Duration>) -> Duration {
        let schedule = &self.settings.schedule;
        let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        let base = schedule
            .get(index)
            .or(schedule.last())
            .copied()
            .unwrap_or(Duration::from_secs(60));
        // ±10 % jitter, so receivers that failed together are not retried together.
        let jittered = base.mul_f64(0.9 + rand::random::<f64>() * 0.2);
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// A Standard Webhooks event: its type, when it happened (RFC 3339), and its data.
fn envelope(event_type: &str, at_ms: i64, data: serde_json::Value) -> serde_json::Value {
    json!({"type": event_type, "timestamp": clock::rfc3339(at_ms), "data": data})
}

/// Why a push request did not get an answer.
enum PostError {
    /// The destination is refused by the address policy.
    Refused(net::Refused),
    /// The request failed on the way.
    Http(reqwest::Error),
}

/// A transport error in a few words (never the access token: it is only in a header).
fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "the receiver did not answer in time".into()
    } else if e.is_connect() {
        "could not connect to the receiver".into()
    } else {
        format!("the request failed: {}", e.without_url())
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        assert_eq!(retry_after(" 7 "), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let parsed = retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            parsed > Duration::from_secs(100) && parsed <= Duration::from_secs(120),
            "{parsed:?}"
        );
        assert_eq!(
            retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon"), None);
    }
}
