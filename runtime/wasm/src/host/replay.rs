//! Requests made ready to send again: those an HTTP/2 server refused without processing
//! them, and (below) the others the guests' client sends again.
//!
//! A server closing a connection gracefully (GOAWAY: nginx after `keepalive_requests`, front
//! ends rotating their connections) tells the client which streams it will not process: those
//! above the GOAWAY's last stream id, and any it resets with REFUSED_STREAM. RFC 9113 §8.7
//! says such a request can be sent again whatever its method, since the server did nothing
//! with it. hyper-util sends again only requests that never left the queue of a connection
//! it had used before, and returns these as errors, so a guest saw a protocol error for a
//! request its upstream never saw, in bursts whenever a busy connection was rotated. The
//! guests' client sends them again, and those hyper-util gave up on; for that it needs the
//! body again: [`Recording`] keeps what went out, up to [`KEPT`] bytes in [`KEPT_FRAMES`]
//! chunks, and hands it back with what was not sent yet when hyper drops it. The same
//! recording serves the other requests the client sends again, over HTTP/1.1 too: those a
//! connection took and closed without sending (`stranded`), and those that may be repeated
//! whose kept-alive connection closed before the answer ([`closed_before_answer`]).
//!
//! A GOAWAY's error is trusted to mean "not processed" only because the client runs a
//! connection's futures on one task (`colocate`): on two threads, hyper could fail a
//! request whose stream had just gone out with that same error, and the server served it
//! twice.
//!
//! Not sent again: a request hyper held back for a free stream (the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` reached) when the GOAWAY came, which hyper fails as
//! "runtime dropped the dispatch task", an error it also gives for other reasons; and
//! streams above the last one of a GOAWAY that carries an error code, since h2 may give the
//! same error to the streams the server did take when that connection ends.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;

use super::{BoxError, GuestBody};

/// Request bytes kept for sending again; a request with a larger body is not sent again.
/// Most calls to model and tool APIs send a few KiB of JSON in one or two chunks. The copy
/// is dropped once the answer's head comes (or the body stops being recorded, once the
/// request has its answer); the bytes count against the call's bound on request bytes held
/// (`outbound`) meanwhile.
pub(crate) const KEPT: usize = 64 * 1024;

/// Chunks kept for sending again: a body written a byte at a time is not kept.
pub(crate) const KEPT_FRAMES: usize = 256;

/// Whether hyper-util's `error` says that the server did not process the request: a stream
/// above the last one of a graceful GOAWAY (or one opened after it), a stream the server
/// refused, or a request canceled before it was sent (its connection closed first).
pub(crate) fn unprocessed(error: &hyper_util::client::legacy::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            let reason = h2.reason();
            return h2.is_remote()
                && ((h2.is_go_away() && reason == Some(h2::Reason::NO_ERROR))
                    || (h2.is_reset() && reason == Some(h2::Reason::REFUSED_STREAM)));
        }
        cause = e.source();
    }
    false
}

/// Whether hyper-util's `error` says that the connection closed before the answer's head
/// came: cut short (`IncompleteMessage`), reset, or broken. (Errors past the head reach the
/// guest through the answer's body, not here.)
pub(crate) fn closed_before_answer(error: &hyper_util::client::legacy::Error) -> bool {
    if error.is_connect() {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message)
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::{
                BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof,
            };
            return matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | ConnectionAborted | UnexpectedEof
            );
        }
        cause = e.source();
    }
    false
}

/// A request's body as it is sent, recording its data frames while they stay within
/// [`KEPT`] bytes and [`KEPT_FRAMES`] chunks. When hyper drops it, what was sent and what
/// was not go back through `back`, unless the body can no longer be sent again (larger,
/// trailers, an error) or nobody waits for it (the request has its answer).
pub(crate) struct Recording {
    body: Option<GuestBody>,
    sent: Vec<Bytes>,
    bytes: usize,
    whole: bool,
    back: Option<oneshot::Sender<Leftover>>,
}

/// A body handed back: the frames sent, and the rest (`None` once it ended).
pub(crate) struct Leftover {
    sent: Vec<Bytes>,
    rest: Option<GuestBody>,
}

impl Recording {
    /// Records `body`; its leftover comes on the receiver.
    pub(crate) fn new(body: GuestBody) -> (Self, oneshot::Receiver<Leftover>) {
        let (back, leftover) = oneshot::channel();
        let recording = Self {
            body: Some(body),
            sent: Vec::new(),
            bytes: 0,
            whole: true,
            back: Some(back),
        };
        (recording, leftover)
    }

    /// Stops recording: the body will not be sent again.
    fn give_up(&mut self) {
        self.whole = false;
        self.sent = Vec::new();
    }
}

impl Body for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let Some(body) = this.body.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(body).poll_frame(cx));
        if this.whole && this.back.as_ref().is_none_or(oneshot::Sender::is_closed) {
            this.give_up();
        }
        match &frame {
            Some(Ok(frame)) if this.whole => match frame.data_ref() {
                Some(data) if data.is_empty() => {}
                Some(data) if this.bytes + data.len() <= KEPT && this.sent.len() < KEPT_FRAMES => {
                    this.bytes += data.len();
                    this.sent.push(data.clone());
                }
                _ => this.give_up(),
            },
            Some(Ok(_)) => {}
            Some(Err(_)) => this.give_up(),
            None => this.body = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if let Some(back) = self.back.take()
            && self.whole
        {
            let _ = back.send(Leftover {
                sent: std::mem::take(&mut self.sent),
                rest: self.body.take(),
            });
        }
    }
}

impl Leftover {
    /// The body to send again: the frames sent before, then the rest.
    pub(crate) fn into_body(self) -> GuestBody {
        Replayed {
            sent: self.sent.into(),
            rest: self.rest,
        }
        .boxed_unsync()
    }
}

/// A body sent again (see [`Leftover::into_body`]).
struct Replayed {
    sent: VecDeque<Bytes>,
    rest: Option<GuestBody>,
}

impl Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.sent.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        match this.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.sent.is_empty() && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(chunks: &[&'static [u8]]) -> GuestBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync()
    }

    async fn next(body: &mut (impl Body<Data = Bytes, Error = BoxError> + Unpin)) -> Option<Bytes> {
        body.frame()
            .await
            .map(|f| f.ok().unwrap().into_data().ok().unwrap())
    }

    /// Dropped halfway, the body comes back whole: the chunk sent, then the ones not sent.
    #[tokio::test]
    async fn a_body_dropped_halfway_comes_back_whole() {
        let (mut recording, leftover) = Recording::new(body(&[b"ab", b"cd", b"ef"]));
        assert_eq!(next(&mut recording).await.as_deref(), Some(&b"ab"[..]));
        drop(recording);
        let mut again = leftover.await.expect("handed back").into_body();
        let mut all = Vec::new();
        while let Some(chunk) = next(&mut again).await {
            all.extend_from_slice(&chunk);
        }
        assert_eq!(all, b"abcdef");
    }

    /// Nor is a body written in more chunks than are kept; empty chunks do not count.
    #[tokio::test]
    async fn a_body_of_many_small_chunks_is_not_handed_back() {
        let mut chunks: Vec<&'static [u8]> = vec![b""; 2 * KEPT_FRAMES];
        chunks.push(b"a");
        let (mut recording, leftover) = Recording::new(body(&chunks));
        while next(&mut recording).await.is_some() {}
        drop(recording);
        assert!(leftover.await.is_ok(), "empty chunks are not kept");
        let (mut recording, leftover) = Recording::new(body(&[&b"a"[..]; KEPT_FRAMES + 1]));
        while next(&mut recording).await.is_some() {}
        drop(recording);
        assert!(leftover.await.is_err());
    }

    /// A body larger than what is kept is not handed back: it could not be sent again.
    #[tokio::test]
    async fn a_body_past_what_is_kept_is_not_handed_back() {
        static LARGE: [u8; KEPT] = [7; KEPT];
        let (mut recording, leftover) = Recording::new(body(&[b"a", &LARGE]));
        while next(&mut recording).await.is_some() {}
        assert!(recording.is_end_stream());
        drop(recording);
        assert!(leftover.await.is_err());
    }
}
