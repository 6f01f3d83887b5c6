//! The guests' client against real servers (hyper's) that close their connections: an
//! HTTP/2 one over TLS the way front ends do, an HTTP/1.1 one unannounced.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::rt::TokioExecutor;

use super::*;

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
                let tell = Arc::clone(&enough);
                let taken = AtomicUsize::new(0);
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    *served
                        .lock()
                        .unwrap()
                        .entry(request.uri().path().to_owned())
                        .or_default() += 1;
                    if taken.fetch_add(1, Ordering::SeqCst) + 1 == close_after {
                        tell.notify_one();
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
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
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let (client, next, origin) = (client.clone(), Arc::clone(&next), origin.clone());
        senders.spawn(async move {
            let mut failed = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return failed;
                }
                let body = http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync();
                let mut request = hyper::Request::new(body);
                *request.uri_mut() = format!("{origin}/r/{i}").parse().unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                match client.send(request, deadline, None).await {
                    Ok(Ok((answer, _in_flight))) => {
                        let body = tokio::time::timeout_at(deadline, answer.into_body().collect());
                        match body.await {
                            Ok(Ok(_)) => {}
                            Ok(Err(_)) => failed.push((i, false)),
                            Err(_) => failed.push((i, true)),
                        }
                    }
                    Ok(Err(_)) => failed.push((i, false)),
                    Err(_) => failed.push((i, true)),
                }
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = senders.join_next().await {
        failed.extend(done.unwrap());
    }
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

/// An HTTP/1.1 server that answers at once and drops each connection, unannounced, a moment
/// after its `close_after`th answer (as a server whose keep-alive ends mid-burst). It counts
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
                let tell = Arc::clone(&enough);
                let taken = AtomicUsize::new(0);
                let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
                    *served
                        .lock()
                        .unwrap()
                        .entry(request.uri().path().to_owned())
                        .or_default() += 1;
                    if taken.fetch_add(1, Ordering::SeqCst) + 1 == close_after {
                        tell.notify_one();
                    }
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                        ))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service);
                tokio::select! {
                    _ = connection => {}
                    () = enough.notified() => {
                        // Time for the answer to go out; then the connection is dropped.
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
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
/// Not asserted: that every request gets its answer. A request written to a connection the
/// server then drops fails; the server may have read it, so it is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_a_place_take_an_idle_connection_after_others_closed() {
    const REQUESTS: usize = 20_000;
    const AT_ONCE: usize = 200;
    let (origin, hits) = dropping_upstream(20).await;
    let client = guest_client(
        true,
        Arc::new(OriginSlots::new(64)),
        &net::ExtraRoots::default(),
    )
    .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let (client, next, origin) = (client.clone(), Arc::clone(&next), origin.clone());
        senders.spawn(async move {
            let mut failed = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return failed;
                }
                let body = http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync();
                let mut request = hyper::Request::new(body);
                *request.uri_mut() = format!("{origin}/r/{i}").parse().unwrap();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                let timed_out = match client.send(request, deadline, None).await {
                    Ok(Ok((answer, _in_flight))) => {
                        let body = tokio::time::timeout_at(deadline, answer.into_body().collect());
                        match body.await {
                            Ok(Ok(_)) => continue,
                            Ok(Err(_)) => false,
                            Err(_) => true,
                        }
                    }
                    Ok(Err(SendError::Client(e))) => net::cause::<PlaceTimedOut>(&e).is_some(),
                    Ok(Err(_)) => false,
                    Err(_) => true,
                };
                failed.push((i, timed_out));
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = senders.join_next().await {
        failed.extend(done.unwrap());
    }
    let hits = hits.lock().unwrap();
    let twice = hits.values().filter(|n| **n > 1).count();
    assert_eq!(twice, 0, "requests served more than once");
    let timed_out: Vec<usize> = failed.iter().filter(|f| f.1).map(|f| f.0).collect();
    assert!(
        timed_out.is_empty(),
        "{} waited out their deadline: {timed_out:?}",
        timed_out.len()
    );
    let unserved = (0..REQUESTS)
        .filter(|i| !hits.contains_key(&format!("/r/{i}")) && !failed.iter().any(|f| f.0 == *i))
        .count();
    assert_eq!(unserved, 0, "answered without being served");
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
    let client = guest_client(
        true,
        Arc::new(OriginSlots::new(64)),
        &net::ExtraRoots::default(),
    )
    .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..AT_ONCE {
        let (client, next, origin) = (client.clone(), Arc::clone(&next), origin.clone());
        senders.spawn(async move {
            // (request, whether it may be repeated) for each that got no answer.
            let mut failed = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    return failed;
                }
                let body = http_body_util::Full::new(bytes::Bytes::from_static(b"{}"))
                    .map_err(|never| match never {})
                    .boxed_unsync();
                let mut request = hyper::Request::new(body);
                *request.uri_mut() = format!("{origin}/r/{i}").parse().unwrap();
                let repeatable = match i % 3 {
                    0 => true,
                    1 => {
                        *request.method_mut() = hyper::Method::POST;
                        request
                            .headers_mut()
                            .insert("idempotency-key", i.to_string().parse().unwrap());
                        true
                    }
                    _ => {
                        *request.method_mut() = hyper::Method::POST;
                        false
                    }
                };
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                if !matches!(client.send(request, deadline, None).await, Ok(Ok(_))) {
                    failed.push((i, repeatable));
                }
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = senders.join_next().await {
        failed.extend(done.unwrap());
    }
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
    // The race happened, or the test proves nothing: plain POSTs failed in it.
    assert!(
        !failed.is_empty(),
        "no request was written to a connection being dropped"
    );
}
