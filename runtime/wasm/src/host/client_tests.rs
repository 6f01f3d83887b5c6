//! The guests' client against real servers (hyper's) that close their connections: an
//! HTTP/2 one over TLS the way front ends do, an HTTP/1.1 one unannounced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioExecutor;

use super::*;

/// One connection's service for the test servers: answers `ok` at once, counts what it
/// served by path in `served`, and tells `enough` at its `close_after`th request.
fn counting(
    served: Arc<Mutex<HashMap<String, usize>>>,
    close_after: usize,
    enough: Arc<tokio::sync::Notify>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<http_body_util::Full<bytes::Bytes>>,
    Error = std::convert::Infallible,
    Future = impl Future<
        Output = Result<
            hyper::Response<http_body_util::Full<bytes::Bytes>>,
            std::convert::Infallible,
        >,
    > + Send,
> + Clone {
    let taken = Arc::new(AtomicUsize::new(0));
    hyper::service::service_fn(move |request: hyper::Request<_>| {
        *served
            .lock()
            .unwrap()
            .entry(request.uri().path().to_owned())
            .or_default() += 1;
        if taken.fetch_add(1, Ordering::SeqCst) + 1 == close_after {
            enough.notify_one();
        }
        async {
            Ok(hyper::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"ok"),
            )))
        }
    })
}

/// An HTTPS server speaking only HTTP/2 that answers at once and closes each connection
/// gracefully after `close_after` requests (hyper's two-step GOAWAY: first one that takes
/// every stream, then one with the last stream it took). It counts the requests it served,
/// by path.
async fn closing_upstream(
    close_after: usize,
) -> (String, String, Arc<Mutex<HashMap<String, usize>>>) {
    let (acceptor, pem) = gust_testkit::tls::self_signed_offering(&[b"h2"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("https://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let served = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, served) = (acceptor.clone(), Arc::clone(&served));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let enough = Arc::new(tokio::sync::Notify::new());
                let service = counting(served, close_after, Arc::clone(&enough));
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1000)
                    .serve_connection(TokioIo::new(tls), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => {}
                    () = enough.notified() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
    });
    (origin, pem, hits)
}

/// What came of one request of [`send_all`].
enum Outcome {
    /// Its answer, read to the end.
    Answered,
    /// An error: the client's, or the answer's body's (`None`).
    Failed(Option<SendError>),
    /// Its deadline passed first.
    TimedOut,
}

/// Sends requests `0..requests` through `client`, `at_once` at a time, each within 10 s and
/// its answer read: `make(i)` builds the `i`th, and `keep(i, outcome)` says what to keep of
/// what came of it. Returns what was kept.
async fn send_all<T: Send + 'static>(
    client: &GuestClient,
    (requests, at_once): (usize, usize),
    make: impl Fn(usize) -> hyper::Request<GuestBody> + Clone + Send + 'static,
    keep: impl Fn(usize, Outcome) -> Option<T> + Clone + Send + 'static,
) -> Vec<T> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..at_once {
        let (client, next, make, keep) = (
            client.clone(),
            Arc::clone(&next),
            make.clone(),
            keep.clone(),
        );
        senders.spawn(async move {
            let mut kept = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= requests {
                    return kept;
                }
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let outcome = match client.send(make(i), deadline, None).await {
                    Ok(Ok((answer, _in_flight))) => {
                        let body = tokio::time::timeout_at(deadline, answer.into_body().collect());
                        match body.await {
                            Ok(Ok(_)) => Outcome::Answered,
                            Ok(Err(_)) => Outcome::Failed(None),
                            Err(_) => Outcome::TimedOut,
                        }
                    }
                    Ok(Err(e)) => Outcome::Failed(Some(e)),
                    Err(_) => Outcome::TimedOut,
                };
                kept.extend(keep(i, outcome));
            }
        });
    }
    let mut kept = Vec::new();
    while let Some(done) = senders.join_next().await {
        kept.extend(done.unwrap());
    }
    kept
}

/// The guests' client as the HTTP/1.1 tests use it: private addresses allowed, the public
/// roots, 64 connections to an origin.
fn plain_client() -> GuestClient {
    guest_client(
        true,
        Arc::new(OriginSlots::new(64)),
        &net::ExtraRoots::default(),
    )
    .unwrap()
}

/// A GET of `{origin}/r/{i}`.
fn get(origin: &str, i: usize) -> hyper::Request<GuestBody> {
    let body = http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut request = hyper::Request::new(body);
    *request.uri_mut() = format!("{origin}/r/{i}").parse().unwrap();
    request
}

/// A request an HTTP/2 server took is not sent again when that server closes the
/// connection right after: hyper failed a request whose stream it had just opened when a
/// GOAWAY came in meanwhile on another thread, with the same error as one above the
/// GOAWAY's last stream, and the server still served it (see `colocate`). Counted by the
/// server: no request served twice, and every one answered served.
///
/// And no request waits out its deadline: in about 1 run in 40, up to 100 requests that
/// hyper took for a connection whose dispatcher was ending were never sent nor failed, and
/// waited until their deadline (see `stranded`).
///
/// Not asserted: that every request gets its answer. In about 5 runs in 100 one or a few
/// fail with "dispatch task is gone" (hyper drops a request waiting for its stream to open
/// when the GOAWAY comes; the server may have served it, so it is not sent again; this came
/// before `colocate` too, in 15 runs of 100).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_taken_by_a_server_closing_its_connections_are_sent_once() {
    const CLOSE_AFTER: usize = 20;
    const REQUESTS: usize = 4000;
    const AT_ONCE: usize = 200;
    let (origin, pem, hits) = closing_upstream(CLOSE_AFTER).await;
    let dir = tempfile::tempdir().unwrap();
    let roots_file = dir.path().join("ca.pem");
    std::fs::write(&roots_file, pem).unwrap();
    let roots = net::ExtraRoots::load(&roots_file).unwrap();
    let client = guest_client(true, Arc::new(OriginSlots::new(64)), &roots).unwrap();
    // (request, whether it timed out) for each that failed.
    let failed = send_all(
        &client,
        (REQUESTS, AT_ONCE),
        move |i| get(&origin, i),
        |i, outcome| match outcome {
            Outcome::Answered => None,
            Outcome::Failed(_) => Some((i, false)),
            Outcome::TimedOut => Some((i, true)),
        },
    )
    .await;
    let hits = hits.lock().unwrap();
    let mut twice: Vec<_> = hits.iter().filter(|(_, n)| **n > 1).collect();
    twice.sort();
    assert!(twice.is_empty(), "served more than once: {twice:?}");
    // A request that failed may or may not have reached the server; every other one did.
    let timed_out: Vec<usize> = failed.iter().filter(|f| f.1).map(|f| f.0).collect();
    assert!(
        timed_out.is_empty(),
        "waited out their deadline: {timed_out:?}"
    );
    let unserved: Vec<usize> = (0..REQUESTS)
        .filter(|i| !hits.contains_key(&format!("/r/{i}")) && !failed.iter().any(|f| f.0 == *i))
        .collect();
    assert!(
        unserved.is_empty(),
        "answered without being served: {unserved:?}"
    );
    assert!(
        failed.len() < REQUESTS / 10,
        "{} of {REQUESTS} failed",
        failed.len()
    );
}

/// An HTTP/1.1 server that answers at once and drops each connection, unannounced, once its
/// service took its `close_after`th request (as a server whose keep-alive ends mid-burst). It counts
/// the requests it served, by path.
async fn dropping_upstream(close_after: usize) -> (String, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let served = Arc::clone(&hits);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let enough = Arc::new(tokio::sync::Notify::new());
                let service = counting(served, close_after, Arc::clone(&enough));
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service);
                // Dropped as soon as the service took its last request (select drops the
                // other branch first): its answer goes out if hyper wrote it in that poll,
                // and requests already written to it are lost unread.
                tokio::select! {
                    _ = connection => {}
                    () = enough.notified() => {}
                }
            });
        }
    });
    (origin, hits)
}

/// Requests waiting for a place among an origin's connections (the bound reached) are not
/// left waiting while the pool holds idle connections. hyper-util's pool hands a waiting
/// request a connection that comes back, but when that one turns out closed, the request
/// goes on waiting for its own connect alone: for a place. The connects of the requests that
/// got a connection meanwhile stood in that queue too, left to finish in the background, and
/// took the places for connections nobody asked for (see `LeftBehind`): about 140 of these
/// 20,000 requests waited out their deadline, in every run, beside idle connections.
///
/// Not asserted: that every request gets its answer (a GET cut by a dropped connection is
/// sent again up to three times, and may still fail).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_place_take_an_idle_connection_after_others_closed() {
    const REQUESTS: usize = 20_000;
    const AT_ONCE: usize = 200;
    let (origin, _) = dropping_upstream(20).await;
    let client = plain_client();
    // (request, whether it waited out its deadline) for each that failed.
    let failed = send_all(
        &client,
        (REQUESTS, AT_ONCE),
        move |i| get(&origin, i),
        |i, outcome| match outcome {
            Outcome::Answered => None,
            Outcome::Failed(Some(SendError::Client(e))) => {
                Some((i, net::cause::<PlaceTimedOut>(&e).is_some()))
            }
            Outcome::Failed(_) => Some((i, false)),
            Outcome::TimedOut => Some((i, true)),
        },
    )
    .await;
    let timed_out: Vec<usize> = failed.iter().filter(|f| f.1).map(|f| f.0).collect();
    assert!(
        timed_out.is_empty(),
        "{} waited out their deadline: {timed_out:?}",
        timed_out.len()
    );
}

/// A request that may be repeated (GET, or a POST with an idempotency key) whose kept-alive
/// connection the server dropped before answering is sent again; a plain POST is not (the
/// server may have read it). Against a server dropping each connection unannounced after
/// 3 answers, about 60 of the 4,000 requests that may be repeated were written to a
/// connection being dropped and failed before any answer, in each of two runs, before they
/// were sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_may_be_repeated_are_sent_again_when_a_reused_connection_closes() {
    const REQUESTS: usize = 6000;
    const AT_ONCE: usize = 100;
    let (origin, hits) = dropping_upstream(3).await;
    let client = plain_client();
    // Every third a GET, a POST with an idempotency key, a plain POST.
    let make = move |i: usize| {
        let mut request = get(&origin, i);
        if !i.is_multiple_of(3) {
            *request.method_mut() = hyper::Method::POST;
            *request.body_mut() = http_body_util::Full::new(bytes::Bytes::from_static(b"{}"))
                .map_err(|never| match never {})
                .boxed_unsync();
        }
        if i % 3 == 1 {
            let key = i.to_string().parse().unwrap();
            request.headers_mut().insert("idempotency-key", key);
        }
        request
    };
    // (request, whether it may be repeated) for each that got no answer's head (an answer
    // cut short after its head reaches the guest as such, and is not sent again).
    let failed = send_all(
        &client,
        (REQUESTS, AT_ONCE),
        make,
        |i, outcome| match outcome {
            Outcome::Answered | Outcome::Failed(None) => None,
            Outcome::Failed(Some(_)) | Outcome::TimedOut => Some((i, i % 3 < 2)),
        },
    )
    .await;
    let hits = hits.lock().unwrap();
    let repeated: Vec<&usize> = failed.iter().filter(|f| f.1).map(|f| &f.0).collect();
    assert!(
        repeated.is_empty(),
        "{} that may be repeated failed: {repeated:?}",
        repeated.len()
    );
    let posts_twice: Vec<_> = hits
        .iter()
        .filter(|(path, n)| {
            let i: usize = path.trim_start_matches("/r/").parse().unwrap();
            i % 3 == 2 && **n > 1
        })
        .collect();
    assert!(posts_twice.is_empty(), "sent twice: {posts_twice:?}");
    // The race happened, or the test proves nothing: plain POSTs, not sent again, failed.
    assert!(
        failed.iter().any(|f| !f.1),
        "no plain POST failed: none was written to a connection being dropped"
    );
}
