//! Requests hyper took for a connection that closed without ever sending them.
//!
//! hyper hands a request to a connection's dispatcher through a channel (tokio's unbounded
//! mpsc), and fails the requests still queued there when the dispatcher ends: dropping the
//! channel's receiver closes it and drops what it holds. A request sent in the same moment
//! can pass the "closed?" check before the close and land in the queue after it was emptied.
//! Nothing then ever fails it: its answer waits for as long as the channel lives, and the
//! request itself holds a sender. hyper-util's pool makes this happen, since it hands out a
//! pooled connection whose dispatcher is just ending (after a GOAWAY, the server closing
//! it), its "still open?" check having run a moment before. Seen in the client's stress test
//! (`client_tests`): in about 1 run in 40, up to 100 requests of one connection waited out
//! their deadline without reaching the server; a trace of hyper's channel showed the send
//! completing after the receiver had been dropped and emptied.
//!
//! Such a request is found by two facts about it. Its connection has closed (the connector's
//! [`Life`] of it ended: nothing can go out on it any more). And hyper's dispatcher never
//! looked at its body: the dispatcher reads a request's body size before it writes anything
//! of the request, so a body nobody looked at belongs to a request none of whose bytes left.
//! Sending it again is then safe whatever its method. [`GRACE`] after the close first lets
//! hyper fail the requests it does fail, and hyper-util move them to another connection.
//! The verdict then claims the body, under the lock each of hyper's looks takes, so either
//! hyper looked first (and the request is not stranded after all) or the body is taken out
//! and dropped, which hands a recorded body (`replay::Recording`) back at once, however long
//! the dead connection's queue lives on, and fails any later look with an error.
//!
//! A request the closing dispatcher did give back is not stranded although it looks so for a
//! while: hyper-util sends it again on a new connection, and until it has one the request
//! still names the closed connection. Getting one may take longer than [`GRACE`] (a place
//! among the origin's connections, a slow handshake), so no request is taken for stranded
//! while a connect to its origin is under way ([`Connecting`]); a connect of another request
//! counts too, as hyper-util has the requests of an HTTP/2 pool wait for the one connect it
//! lets run. A stranded request to an origin whose connections are always being opened is
//! then found late, or at its deadline as before.
//!
//! Also found late: one on an HTTP/2 connection that stays open after the GOAWAY for the
//! streams it still carries (a long streaming answer): the connection's end is what tells.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, capture_connection};
use tokio::sync::watch;

use super::{BoxError, GuestBody};

/// How long after its connection closed a request hyper never looked at is left to hyper:
/// hyper fails or moves the requests of a closing connection within microseconds; this
/// leaves room for a host so busy that those tasks wait for a thread.
pub(crate) const GRACE: Duration = Duration::from_secs(1);

/// A connection's life, held by the connection: it ends when the connection is dropped.
pub(crate) struct Life(watch::Sender<()>);

/// What a request learns of the life of the connection hyper-util gave it (through
/// hyper-util's connection metadata, see [`Life::alive`]).
#[derive(Clone)]
struct Alive(watch::Receiver<()>);

impl Life {
    pub(crate) fn new() -> Self {
        Self(watch::Sender::new(()))
    }

    /// The connection's metadata, carrying the means to learn when the connection ends.
    pub(crate) fn alive(&self, connected: Connected) -> Connected {
        connected.extra(Alive(self.0.subscribe()))
    }
}

/// The connects under way, by origin (see the module's comment). Shared by every connector of
/// one client.
pub(crate) struct Connecting(watch::Sender<HashMap<String, usize>>);

/// One connect under way, counted until it is dropped.
pub(crate) struct Started {
    connecting: Arc<Connecting>,
    key: String,
}

impl Default for Connecting {
    fn default() -> Self {
        Self(watch::Sender::new(HashMap::new()))
    }
}

impl Connecting {
    /// Counts a connect to the origin `key` until the returned value is dropped.
    pub(crate) fn start(self: &Arc<Self>, key: String) -> Started {
        self.0
            .send_modify(|under_way| *under_way.entry(key.clone()).or_default() += 1);
        Started {
            connecting: Arc::clone(self),
            key,
        }
    }

    fn any(&self, key: &str) -> bool {
        self.0.borrow().contains_key(key)
    }

    async fn none(&self, key: &str) {
        // The sender lives in `self`: the wait ends only by the condition.
        let _ = self
            .0
            .subscribe()
            .wait_for(|under_way| !under_way.contains_key(key))
            .await;
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.connecting.0.send_modify(|under_way| {
            if let Some(count) = under_way.get_mut(&self.key) {
                *count -= 1;
                if *count == 0 {
                    under_way.remove(&self.key);
                }
            }
        });
    }
}

/// One request's watch: which connection it is on, and whether hyper looked at its body.
pub(crate) struct Watch {
    captured: CaptureConnection,
    body: Arc<Held>,
    /// The origin's key (`client::origin_key`), for [`Connecting`].
    key: String,
}

/// A request's body, shared by the request (hyper's side) and its [`Watch`].
struct Held {
    /// Set at each of hyper's looks, under `body`'s lock; read without it while watching.
    looked_at: AtomicBool,
    /// `None` once the watch claimed it.
    body: Mutex<Option<GuestBody>>,
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, Option<GuestBody>> {
        // A panic while holding it leaves a body no worse than a panic in hyper would.
        self.body.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// hyper's look: noted, under the lock a claim takes.
    fn look(&self) -> MutexGuard<'_, Option<GuestBody>> {
        let body = self.lock();
        self.looked_at.store(true, Ordering::SeqCst);
        body
    }

    /// Takes the body if hyper never looked at it.
    fn claim(&self) -> Option<GuestBody> {
        let mut body = self.lock();
        if self.looked_at.load(Ordering::SeqCst) {
            return None;
        }
        body.take()
    }
}

impl Watch {
    /// Watches `request` to the origin `key`: its body is wrapped to note hyper's looks at
    /// it.
    pub(crate) fn new(request: &mut hyper::Request<GuestBody>, key: String) -> Self {
        let body = Arc::new(Held {
            looked_at: AtomicBool::new(false),
            body: Mutex::new(Some(std::mem::take(request.body_mut()))),
        });
        *request.body_mut() = Noted(Arc::clone(&body)).boxed_unsync();
        Self {
            captured: capture_connection(request),
            body,
            key,
        }
    }

    /// What hyper-util tells of the connection the request was given.
    pub(crate) fn connection(&self) -> CaptureConnection {
        self.captured.clone()
    }

    /// The origin's key the request was watched with (`client::origin_key`).
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// Ends when the request is stranded: on a connection that has closed, [`GRACE`] ago,
    /// with hyper never having looked at its body and no connect to its origin under way in
    /// `connecting` for as long. Never ends for a request hyper took. When it ends, the body
    /// has been claimed and dropped: hyper can no longer send it.
    pub(crate) async fn stranded(mut self, connecting: &Connecting) {
        // Set when hyper-util has a connection for the request (never, if it gets none).
        let _ = self.captured.wait_for_connection_metadata().await;
        let captured = &self.captured;
        let on_now = || alive(captured.connection_metadata().as_ref());
        let looked_at = &self.body.looked_at;
        until_stranded(on_now, looked_at, (connecting, &self.key), GRACE).await;
        match self.body.claim() {
            Some(body) => drop(body),
            // hyper looked between the verdict and the claim.
            None => std::future::pending().await,
        }
    }
}

/// Ends once the connection the request is on (`on_now`: hyper-util moves a request that a
/// closing connection's dispatcher gave back to another connection) has been closed for
/// `grace`, the request's body was not `looked_at`, and no connect to the request's origin
/// is under way at that moment; after a connect seen under way, the request waits for a
/// moment with none, then `grace` more, and looks again. (So an origin whose connects
/// never pause holds the verdict off, see the module's comment.)
async fn until_stranded(
    on_now: impl Fn() -> Option<watch::Receiver<()>>,
    looked_at: &AtomicBool,
    (connecting, key): (&Connecting, &str),
    grace: Duration,
) {
    let mut closed: Option<watch::Receiver<()>> = None;
    loop {
        let Some(mut on) = on_now() else {
            // Not a connection of the counting connector: nothing to learn.
            return std::future::pending().await;
        };
        if looked_at.load(Ordering::SeqCst) {
            return std::future::pending().await;
        }
        if closed.as_ref().is_some_and(|c| c.same_channel(&on)) {
            if !connecting.any(key) {
                return;
            }
            // Perhaps one for this request: hyper-util hands it over once it is open.
            connecting.none(key).await;
            tokio::time::sleep(grace).await;
            continue;
        }
        // Nothing is ever sent on it: `changed` returns once the connection is dropped.
        let _ = on.changed().await;
        tokio::time::sleep(grace).await;
        closed = Some(on);
    }
}

fn alive(connected: Option<&Connected>) -> Option<watch::Receiver<()>> {
    let mut extras = http::Extensions::new();
    connected?.get_extras(&mut extras);
    extras.remove::<Alive>().map(|a| a.0)
}

/// A request body that notes hyper's looks at it (see [`Held`]).
struct Noted(Arc<Held>);

/// What hyper meets in a body the watch claimed. It cannot happen while the watch is right
/// that the connection is gone (nothing is left to look), so it fails the request rather than
/// send it with a body that is not the guest's.
fn claimed() -> BoxError {
    "the request's body was taken back: its connection had closed before it went out".into()
}

impl Body for Noted {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.0.look().as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(Some(Err(claimed()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        // A claimed body is not at its end: hyper must poll it and meet the error.
        self.0.look().as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .look()
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use http::Uri;

    use super::super::replay;
    use super::*;

    fn request() -> hyper::Request<GuestBody> {
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{}"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut request = hyper::Request::new(body);
        *request.uri_mut() = Uri::from_static(ORIGIN);
        request
    }

    const ORIGIN: &str = "https://model.test/v1/chat";

    /// The dispatcher's first look is noted, whichever it is (HTTP/1 asks `is_end_stream`
    /// before it writes the head, HTTP/2 `size_hint` before it opens the stream); the body
    /// itself is unchanged.
    #[tokio::test]
    async fn a_look_at_the_body_is_noted() {
        /// One way of looking at a body, by name.
        type Look = (&'static str, fn(&mut GuestBody));
        let looks: [Look; 3] = [
            ("size_hint", |body| {
                assert_eq!(body.size_hint().exact(), Some(2));
            }),
            ("is_end_stream", |body| assert!(!body.is_end_stream())),
            ("poll_frame", |body| {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                assert!(Pin::new(body).poll_frame(&mut cx).is_ready());
            }),
        ];
        for (look, at) in looks {
            let mut request = request();
            let watch = Watch::new(&mut request, KEY.to_owned());
            assert!(!watch.body.looked_at.load(Ordering::SeqCst), "{look}");
            at(request.body_mut());
            assert!(
                watch.body.looked_at.load(Ordering::SeqCst),
                "{look} not noted"
            );
        }
        let mut request = request();
        let _watch = Watch::new(&mut request, KEY.to_owned());
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"{}");
    }

    /// A claimed body comes back at once, though the request that held it lives on (in a
    /// dead connection's queue); a look by hyper after the claim meets an error, not an
    /// empty body.
    #[tokio::test]
    async fn a_claimed_body_comes_back_at_once() {
        let mut request = request();
        let (recording, leftover) = replay::Recording::new(std::mem::take(request.body_mut()));
        *request.body_mut() = recording.boxed_unsync();
        let watch = Watch::new(&mut request, KEY.to_owned());
        drop(watch.body.claim().expect("nobody looked at it"));
        let back = tokio::time::timeout(Duration::from_secs(5), leftover)
            .await
            .expect("the body did not come back while the request lived")
            .expect("the recording gave up the body");
        let again = back.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&again[..], b"{}");
        let body = request.body_mut();
        assert!(!body.is_end_stream());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(body).poll_frame(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
    }

    /// Once hyper looked, the body stays hyper's.
    #[test]
    fn a_body_hyper_looked_at_is_not_claimed() {
        let mut request = request();
        let watch = Watch::new(&mut request, KEY.to_owned());
        let _ = request.body().size_hint();
        assert!(watch.body.claim().is_none());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(request.body_mut()).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
    }

    /// A request that never got a connection is never stranded, also past the grace: one
    /// still waiting for a connection (within its deadline), and one dropped before it got
    /// any (its capture then ends without a connection).
    #[tokio::test]
    async fn without_a_connection_nothing_is_stranded() {
        let connecting = Connecting::default();
        let mut waiting = request();
        let mut dropped = request();
        let (on_waiting, on_dropped) = (
            Watch::new(&mut waiting, KEY.to_owned()),
            Watch::new(&mut dropped, KEY.to_owned()),
        );
        drop(dropped);
        let both = futures::future::select(
            Box::pin(on_waiting.stranded(&connecting)),
            Box::pin(on_dropped.stranded(&connecting)),
        );
        let waited = tokio::time::timeout(GRACE + Duration::from_millis(300), both).await;
        assert!(waited.is_err());
    }

    /// The grace of these tests: `until_stranded` takes it as an argument.
    const SHORT: Duration = Duration::from_millis(20);

    /// Whether `until` ends within a time far past [`SHORT`] (a busy test machine may leave
    /// the task waiting for a thread).
    async fn ends(until: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), until)
            .await
            .is_ok()
    }

    /// Whether `until` is still going ten graces on.
    async fn still_waiting(until: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(SHORT * 10, until).await.is_err()
    }

    /// The key of [`ORIGIN`].
    const KEY: &str = "https://model.test:443";

    /// One request in flight to [`ORIGIN`], as `until_stranded` sees it: whether hyper
    /// looked at its body, and the connects under way.
    struct InFlight {
        looked_at: AtomicBool,
        connecting: Arc<Connecting>,
        key: String,
    }

    impl InFlight {
        fn new() -> Self {
            Self {
                looked_at: AtomicBool::new(false),
                connecting: Arc::new(Connecting::default()),
                key: KEY.to_owned(),
            }
        }

        /// Until the request is stranded, on whatever connection `on_now` says it is.
        fn until<'a>(
            &'a self,
            on_now: impl Fn() -> Option<watch::Receiver<()>> + 'a,
        ) -> impl Future<Output = ()> + 'a {
            self.until_after(on_now, SHORT)
        }

        /// As [`Self::until`], with a grace of `grace`.
        fn until_after<'a>(
            &'a self,
            on_now: impl Fn() -> Option<watch::Receiver<()>> + 'a,
            grace: Duration,
        ) -> impl Future<Output = ()> + 'a {
            until_stranded(
                on_now,
                &self.looked_at,
                (&self.connecting, &self.key),
                grace,
            )
        }
    }

    #[tokio::test]
    async fn a_request_on_a_closed_connection_that_hyper_never_looked_at_is_stranded() {
        let life = Life::new();
        let on_it = life.0.subscribe();
        let request = InFlight::new();
        let until = request.until(|| Some(on_it.clone()));
        tokio::pin!(until);
        assert!(
            still_waiting(until.as_mut()).await,
            "stranded while its connection is open"
        );
        drop(life);
        assert!(ends(until).await);
    }

    /// hyper looks at the body during the grace after the close: what it looked at may have
    /// gone out before the connection ended.
    #[tokio::test]
    async fn a_request_hyper_looked_at_is_not_stranded() {
        // Long enough that a busy machine still polls the request within it.
        let grace = Duration::from_millis(300);
        let life = Life::new();
        let on_it = life.0.subscribe();
        let request = InFlight::new();
        let until = request.until_after(|| Some(on_it.clone()), grace);
        tokio::pin!(until);
        drop(life);
        // The request sees the close and starts its grace.
        let early = tokio::time::timeout(Duration::from_millis(30), until.as_mut()).await;
        assert!(early.is_err(), "stranded before its grace ended");
        request.looked_at.store(true, Ordering::SeqCst);
        assert!(
            tokio::time::timeout(grace * 3, until).await.is_err(),
            "stranded although hyper looked at it"
        );
    }

    /// A connection of another connector (no life in its metadata) tells nothing.
    #[tokio::test]
    async fn a_request_on_an_unknown_connection_is_not_stranded() {
        let request = InFlight::new();
        assert!(still_waiting(request.until(|| None)).await);
    }

    /// A request hyper-util moved to another connection is watched on that one.
    #[tokio::test]
    async fn a_request_moved_to_another_connection_is_watched_there() {
        let (first, second) = (Life::new(), Life::new());
        // The connection a fake hyper-util says the request is on.
        let current = std::sync::Mutex::new(first.0.subscribe());
        let request = InFlight::new();
        let until = request.until(|| Some(current.lock().unwrap().clone()));
        tokio::pin!(until);
        assert!(still_waiting(until.as_mut()).await);
        // The request is moved to a second connection, still open, and the first closes.
        *current.lock().unwrap() = second.0.subscribe();
        drop(first);
        assert!(
            still_waiting(until.as_mut()).await,
            "stranded on the connection it left"
        );
        drop(second);
        assert!(
            ends(until).await,
            "not stranded when its second connection closed"
        );
    }

    /// A request whose closed connection gave it back waits while hyper-util connects
    /// again, however long that takes; a connect to another origin does not hold it.
    #[tokio::test]
    async fn a_request_waiting_for_a_new_connection_is_not_stranded() {
        let life = Life::new();
        let on_it = life.0.subscribe();
        let request = InFlight::new();
        let elsewhere = request.connecting.start("https://tool.test:443".to_owned());
        let again = request.connecting.start(KEY.to_owned());
        let until = request.until(|| Some(on_it.clone()));
        tokio::pin!(until);
        drop(life);
        assert!(
            still_waiting(until.as_mut()).await,
            "stranded while a connect to its origin was under way"
        );
        drop(again);
        assert!(
            ends(until).await,
            "not stranded when no connect to its origin was under way"
        );
        drop(elsewhere);
        assert!(
            request.connecting.0.borrow().is_empty(),
            "a count left behind"
        );
    }

    /// Connects are counted per origin until each ends.
    #[test]
    fn connects_are_counted_until_they_end() {
        let connecting = Arc::new(Connecting::default());
        let key = "https://model.test:443";
        let (one, two) = (
            connecting.start(key.to_owned()),
            connecting.start(key.to_owned()),
        );
        drop(one);
        assert!(connecting.any(key));
        assert!(!connecting.any("https://tool.test:443"));
        drop(two);
        assert!(!connecting.any(key));
    }

    /// A connection's metadata carries its life, which ends when the connection's [`Life`]
    /// is dropped.
    #[tokio::test]
    async fn the_metadata_tells_when_the_connection_ended() {
        let life = Life::new();
        let connected = life.alive(Connected::new());
        let mut on = alive(Some(&connected)).expect("the metadata carries the life");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), on.changed())
                .await
                .is_err()
        );
        drop(life);
        assert!(on.changed().await.is_err());
        assert!(alive(Some(&Connected::new())).is_none());
    }
}
