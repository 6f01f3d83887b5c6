//! Reading request bodies with a limit that is checked before the body is read (from
//! `Content-Length`) and again while reading (for chunked bodies).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::HeaderMap;
use axum::http::header::CONTENT_LENGTH;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// After refusing a body, how much of it is read and thrown away (and for how long) before
/// the connection closes. Closing a socket with unread data makes the kernel reset it, and
/// most clients then report "connection reset" while still sending instead of the 413; a
/// bounded drain lets them read the answer. Nothing drained is kept, so what the drain
/// costs is the time, bounded by `DRAIN_TIME` as nginx bounds its lingering close; the
/// bytes' bound is well past what people send by mistake (a 16 MiB bound cut off a 40 MiB
/// input or a 300 MiB upload, whose senders then saw a reset instead of the 413). Over a
/// slow network a large body still outlasts the 5 s; a client that sends
/// `Expect: 100-continue` is answered before it sends anything.
const DRAIN_BYTES: u64 = 4 << 30;
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// A body that stops arriving for this long is abandoned, and one that takes longer than
/// [`BODY_TOTAL`] in all: a slow client cannot hold a connection slot for ever.
const BODY_STALL: Duration = Duration::from_secs(30);
const BODY_TOTAL: Duration = Duration::from_secs(600);

use gust_core::Error;

/// How long a body waits for room in the server-wide budget before the request is refused.
const BUDGET_WAIT: Duration = Duration::from_secs(2);

/// The memory all request bodies being read may take at once, server-wide: many slow
/// uploads must not add up past it. Counted in KiB, as they arrive.
pub(crate) struct BodyBudget {
    kib: Arc<Semaphore>,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            kib: Arc::new(Semaphore::new(
                (bytes >> 10).clamp(1, Semaphore::MAX_PERMITS),
            )),
        }
    }

    /// Room for `kib` more KiB, waiting at most [`BUDGET_WAIT`].
    async fn take(&self, kib: usize) -> Result<OwnedSemaphorePermit, Error> {
        let kib = u32::try_from(kib).unwrap_or(u32::MAX);
        match tokio::time::timeout(BUDGET_WAIT, Arc::clone(&self.kib).acquire_many_owned(kib)).await
        {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Error::Overloaded {
                message: "the host is reading as many request bodies as it may hold; retry shortly"
                    .into(),
                retry_after: Some(Duration::from_secs(1)),
                bound: None,
            }),
        }
    }
}

/// Reads the whole body, refusing more than `limit` bytes with 413, within the server's
/// body `budget` (429 when it stays full).
///
/// # Errors
/// [`Error::PayloadTooLarge`] past the limit; [`Error::BadRequest`] when the body breaks off;
/// [`Error::Overloaded`] when the budget has no room.
pub(crate) async fn read(
    budget: &BodyBudget,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, Error> {
    let too_large = || {
        Error::PayloadTooLarge(format!(
            "the body is larger than the limit of {}",
            human_bytes(limit)
        ))
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        // A client that waits for `100 Continue` before it sends (curl, for large bodies)
        // reads the 413 at once; reading its body would tell hyper to invite the body in.
        if !expects_continue(headers) {
            drain(body).await;
        }
        return Err(too_large());
    }
    let mut body = body;
    // Reserve for what the client declared, but never much up front: memory follows the
    // bytes that actually arrive.
    let mut collected = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(1 << 20));
    // Held while the body is read, given back when it is in one buffer (the caller's).
    let mut held: Option<OwnedSemaphorePermit> = None;
    let deadline = tokio::time::Instant::now() + BODY_TOTAL;
    loop {
        let next = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + BODY_STALL),
            body.frame(),
        )
        .await
        .map_err(|_| Error::BadRequest("the request body stopped arriving".into()))?;
        let Some(frame) = next else {
            break;
        };
        let frame = frame
            .map_err(|e| Error::BadRequest(format!("could not read the request body: {e}")))?;
        if let Some(data) = frame.data_ref() {
            if collected.len() + data.len() > limit {
                drain(body).await;
                return Err(too_large());
            }
            // The bytes held, rounded up to whole KiB once, not once per frame: a body sent
            // in 1-byte chunks would otherwise take 1 KiB for each byte, and a few
            // connections trickling bytes would fill the budget for everyone.
            let held_kib = held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
            let more_kib = (collected.len() + data.len())
                .div_ceil(1024)
                .saturating_sub(held_kib);
            if more_kib > 0 {
                let room = budget.take(more_kib).await?;
                match &mut held {
                    Some(held) => held.merge(room),
                    None => held = Some(room),
                }
            }
            collected.extend_from_slice(data);
        }
    }
    Ok(Bytes::from(collected))
}

/// Whether the client sent `Expect: 100-continue` (it sends the body only once invited).
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
}

/// Reads and discards what is left of a refused body, within [`DRAIN_BYTES`] and
/// [`DRAIN_TIME`].
async fn drain(mut body: Body) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut drained = 0u64;
        while drained < DRAIN_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
    })
    .await;
}

/// Parses a JSON object body into `T`, with serde's message (which names the field and the
/// place) on failure. Only an object: serde would also fill a struct from an array of its
/// fields in order, so `[]` would read as "all defaults".
///
/// # Errors
/// [`Error::BadRequest`] when the body is not that JSON.
pub(crate) fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(Error::BadRequest(
            "invalid JSON body: expected an object".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| Error::BadRequest(format!("invalid JSON body: {e}")))
}

pub(crate) fn human_bytes(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// The `Idempotency-Key` header, if the request has one.
///
/// # Errors
/// [`Error::BadRequest`] when it is not visible ASCII.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Error> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| Error::BadRequest("`Idempotency-Key` must be visible ASCII".into()))
        })
        .transpose()
}

/// Marks an answer as the replay of an earlier request with the same `Idempotency-Key`.
pub(crate) fn mark_replayed(response: &mut axum::response::Response) {
    response.headers_mut().insert(
        axum::http::HeaderName::from_static("idempotent-replayed"),
        axum::http::HeaderValue::from_static("true"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `n` one-byte frames, as a client sending a chunk per byte makes it.
    fn trickled(n: usize) -> Body {
        let frames = (0..n).map(|_| Ok::<_, std::convert::Infallible>(Bytes::from_static(b"x")));
        Body::from_stream(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_body_in_small_frames_takes_the_budget_its_bytes_take() {
        let budget = BodyBudget::new(4 << 10);
        let body = read(&budget, &HeaderMap::new(), trickled(3000), 1 << 20)
            .await
            .expect("3,000 bytes within a budget of 4 KiB");
        assert_eq!(body.len(), 3000);
        // All of it is given back once the body is in one buffer.
        assert_eq!(budget.kib.available_permits(), 4);
        // Past the budget it is still refused.
        let refused = read(&budget, &HeaderMap::new(), trickled(5000), 1 << 20).await;
        assert!(
            matches!(refused, Err(Error::Overloaded { .. })),
            "{refused:?}"
        );
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fields {
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn only_an_object_is_a_body() {
        assert_eq!(json::<Fields>(br#"{"n": 2}"#).unwrap().n, 2);
        assert_eq!(json::<Fields>(b"{}").unwrap().n, 0);
        // serde alone would read these as a struct's fields in order.
        for not_an_object in [&b"[]"[..], b"[3]", b"7", b"\"x\"", b"null"] {
            let e = json::<Fields>(not_an_object).unwrap_err().to_string();
            assert!(e.contains("expected an object"), "{e}");
        }
        assert!(json::<Fields>(br#"{"m": 1}"#).is_err());
        // A field given twice is refused, not read as the last one.
        assert!(json::<Fields>(br#"{"n": 1, "n": 2}"#).is_err());
    }
}
