//! A loopback HTTP server standing in for the APIs guests call: it counts the connections
//! it accepts (so a test can show that a refused request never reached it), the requests it
//! serves, and how often each path and query was asked for (so a test can count how often
//! a run really executed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::serve::ListenerExt as _;
use serde_json::{Value, json};

use super::Host;

/// A running upstream.
pub(crate) struct Upstream {
    /// `http://127.0.0.1:<port>`.
    pub(crate) origin: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    /// `/hold` and `/gate` requests being held now, and the most held at once.
    holding: Arc<(AtomicUsize, AtomicUsize)>,
    /// `/hold` requests answered in full, by path and query: one whose client went away
    /// (a host killed mid-run) is dropped before it counts.
    completed: Arc<Mutex<HashMap<String, usize>>>,
    /// Requests that came over HTTP/2.
    http2: Arc<AtomicUsize>,
    /// TLS handshakes in full, and those that resumed a session.
    handshakes: Arc<(AtomicUsize, AtomicUsize)>,
    /// Connections left unanswered (`start_https1_stalling`), and those of them the client
    /// closed.
    stalled: Arc<(AtomicUsize, AtomicUsize)>,
}

/// An HTTPS upstream's certificate, to trust.
pub(crate) struct Certificate {
    pem: String,
}

impl Certificate {
    /// A host on `dir` that trusts it (`--outbound-ca-certs`) and may reach loopback.
    pub(crate) async fn trusting_host(&self, dir: &std::path::Path) -> Host {
        self.trusting_host_with(dir, &[]).await
    }

    /// As [`Certificate::trusting_host`], with more `gust serve` flags.
    pub(crate) async fn trusting_host_with(&self, dir: &std::path::Path, flags: &[&str]) -> Host {
        let ca = dir.join("upstream-ca.pem");
        std::fs::write(&ca, &self.pem).unwrap();
        let mut all = vec![
            "--allow-private-network",
            "--outbound-ca-certs",
            ca.to_str().unwrap(),
        ];
        all.extend_from_slice(flags);
        Host::start_on(dir.join("data"), &all).await
    }
}

impl Upstream {
    /// Starts one: `/hello` answers JSON, `/echo?ms=N` answers the JSON it was posted after
    /// N ms (none by default), `/sink`
    /// says how many bytes it was posted, `/slow` takes 5 s, `/hold?ms=N` takes N ms,
    /// `/drip?n=N&ms=M` answers at once and sends its body in N pieces M ms apart,
    /// `/gate?n=N&ms=M` answers once N gate requests have arrived (or after M ms): a test of
    /// "all at once" then does not depend on how fast its requests were sent.
    pub(crate) async fn start() -> Self {
        Self::serve(None).await.0
    }

    /// Starts one over HTTPS, as model APIs are served: HTTP/2 offered by ALPN beside
    /// HTTP/1.1, with at most `max_streams` requests at once on a connection (servers bound
    /// it: Google's front ends at 100), and a self-signed certificate for `127.0.0.1`.
    pub(crate) async fn start_https(max_streams: u32) -> (Self, Certificate) {
        Self::start_https_slow(max_streams, Duration::ZERO).await
    }

    /// As [`Upstream::start_https`], closing each HTTP/2 connection gracefully (GOAWAY, the
    /// requests under way finish) once it has carried `requests`, as nginx does at its
    /// `keepalive_requests` (1,000 by default) and front ends do when they rotate
    /// connections.
    pub(crate) async fn start_https_closing(
        max_streams: u32,
        requests: usize,
    ) -> (Self, Certificate) {
        Self::serve_https(Tls {
            max_streams,
            handshake: Duration::ZERO,
            goaway_after: Some(requests),
            http2: true,
            stall_after: None,
        })
        .await
    }

    /// As [`Upstream::start_https`], waiting `handshake` before each TLS handshake: a
    /// connection to it takes that long to open.
    pub(crate) async fn start_https_slow(
        max_streams: u32,
        handshake: Duration,
    ) -> (Self, Certificate) {
        Self::serve_https(Tls {
            max_streams,
            handshake,
            goaway_after: None,
            http2: true,
            stall_after: None,
        })
        .await
    }

    /// Starts one over HTTPS that speaks HTTP/1.1 only and serves its first `served`
    /// connections; later ones it accepts and never answers, not even the TLS handshake, as
    /// an overloaded or broken front end can: see [`Upstream::stalled`].
    pub(crate) async fn start_https1_stalling(served: usize) -> (Self, Certificate) {
        Self::serve_https(Tls {
            max_streams: 1,
            handshake: Duration::ZERO,
            goaway_after: None,
            http2: false,
            stall_after: Some(served),
        })
        .await
    }

    async fn serve_https(tls: Tls) -> (Self, Certificate) {
        let (upstream, certificate) = Self::serve(Some(tls)).await;
        (
            upstream,
            certificate.expect("an HTTPS upstream has a certificate"),
        )
    }

    async fn serve(https: Option<Tls>) -> (Self, Option<Certificate>) {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let seen = Arc::clone(&hits);
        let holding = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let held = Arc::clone(&holding);
        let completed = Arc::new(Mutex::new(HashMap::new()));
        let finished = Arc::clone(&completed);
        let gate_held = Arc::clone(&holding);
        let arrived = Arc::new(tokio::sync::watch::Sender::new(0usize));
        let http2 = Arc::new(AtomicUsize::new(0));
        let over_http2 = Arc::clone(&http2);
        let handshakes = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let stalled = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
        let app =
            axum::Router::new()
                .route(
                    "/hello",
                    axum::routing::get(|| async { axum::Json(json!({"hello": "from upstream"})) }),
                )
                .route(
                    "/echo",
                    axum::routing::post(
                        |axum::extract::Query(q): axum::extract::Query<HashMap<String, u64>>,
                         axum::Json(body): axum::Json<Value>| async move {
                            let ms = q.get("ms").copied().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            axum::Json(json!({"received": body}))
                        },
                    ),
                )
                .route(
                    "/sink",
                    axum::routing::post(|body: axum::body::Bytes| async move {
                        format!("received {} bytes", body.len())
                    })
                    // axum refuses bodies over 2 MiB by default; this one takes any.
                    .layer(axum::extract::DefaultBodyLimit::disable()),
                )
                .route(
                    "/hold",
                    axum::routing::get(
                        move |uri: axum::http::Uri,
                              axum::extract::Query(q): axum::extract::Query<
                            HashMap<String, u64>,
                        >| async move {
                            let now = held.0.fetch_add(1, Ordering::SeqCst) + 1;
                            held.1.fetch_max(now, Ordering::SeqCst);
                            let ms = q.get("ms").copied().unwrap_or(0);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            held.0.fetch_sub(1, Ordering::SeqCst);
                            *finished
                                .lock()
                                .unwrap()
                                .entry(path_and_query(&uri))
                                .or_insert(0) += 1;
                            "held"
                        },
                    ),
                )
                .route(
                    "/gate",
                    axum::routing::get(
                        move |axum::extract::Query(q): axum::extract::Query<
                            HashMap<String, u64>,
                        >| async move {
                            let now = gate_held.0.fetch_add(1, Ordering::SeqCst) + 1;
                            gate_held.1.fetch_max(now, Ordering::SeqCst);
                            arrived.send_modify(|n| *n += 1);
                            let n = q.get("n").copied().unwrap_or(1) as usize;
                            let ms = q.get("ms").copied().unwrap_or(0);
                            let mut seen = arrived.subscribe();
                            let open = tokio::time::timeout(
                                Duration::from_millis(ms),
                                seen.wait_for(|&a| a >= n),
                            )
                            .await
                            .is_ok();
                            gate_held.0.fetch_sub(1, Ordering::SeqCst);
                            if open { "opened" } else { "timed out" }
                        },
                    ),
                )
                .route(
                    "/drip",
                    axum::routing::get(
                        |axum::extract::Query(q): axum::extract::Query<HashMap<String, u64>>| async move {
                            let n = q.get("n").copied().unwrap_or(1);
                            let ms = q.get("ms").copied().unwrap_or(0);
                            let drops = futures::stream::unfold(0, move |sent| async move {
                                if sent == n {
                                    return None;
                                }
                                if sent > 0 {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                Some((Ok::<_, std::io::Error>(format!("drop{sent} ")), sent + 1))
                            });
                            axum::body::Body::from_stream(drops)
                        },
                    ),
                )
                .route(
                    "/slow",
                    axum::routing::get(|| async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late"
                    }),
                )
                .layer(axum::middleware::from_fn(
                    move |request: axum::extract::Request, next: axum::middleware::Next| {
                        let counted = Arc::clone(&counted);
                        if request.version() == axum::http::Version::HTTP_2 {
                            over_http2.fetch_add(1, Ordering::SeqCst);
                        }
                        let uri = path_and_query(request.uri());
                        *seen.lock().unwrap().entry(uri).or_insert(0) += 1;
                        async move {
                            counted.fetch_add(1, Ordering::SeqCst);
                            next.run(request).await
                        }
                    },
                ));
        let connections = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::clone(&connections);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let certificate = match https {
            None => {
                let listener = listener.tap_io(move |_| {
                    accepted.fetch_add(1, Ordering::SeqCst);
                });
                tokio::spawn(async move { axum::serve(listener, app).await });
                None
            }
            Some(Tls {
                max_streams,
                handshake,
                goaway_after,
                http2,
                stall_after,
            }) => {
                let offered: &[&[u8]] = if http2 {
                    &[b"h2", b"http/1.1"]
                } else {
                    &[b"http/1.1"]
                };
                let (acceptor, pem) = gust_testkit::tls::self_signed_offering(offered).unwrap();
                let seen = Arc::clone(&handshakes);
                let stalling = Arc::clone(&stalled);
                tokio::spawn(async move {
                    while let Ok((mut tcp, _)) = listener.accept().await {
                        let nth = accepted.fetch_add(1, Ordering::SeqCst) + 1;
                        if stall_after.is_some_and(|served| nth > served) {
                            // Read (the client's hello) and never answer, until the client
                            // closes the connection.
                            let stalling = Arc::clone(&stalling);
                            stalling.0.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                use tokio::io::AsyncReadExt as _;
                                let mut buffer = [0u8; 4096];
                                while matches!(tcp.read(&mut buffer).await, Ok(n) if n > 0) {}
                                stalling.1.fetch_add(1, Ordering::SeqCst);
                            });
                            continue;
                        }
                        let (acceptor, app, seen) =
                            (acceptor.clone(), app.clone(), Arc::clone(&seen));
                        tokio::spawn(async move {
                            tokio::time::sleep(handshake).await;
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let (_, session) = tls.get_ref();
                            let resumed =
                                session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                            let counter = if resumed { &seen.1 } else { &seen.0 };
                            counter.fetch_add(1, Ordering::SeqCst);
                            let http2 = session.alpn_protocol() == Some(b"h2");
                            let io = hyper_util::rt::TokioIo::new(tls);
                            let service = hyper_util::service::TowerToHyperService::new(app);
                            let _ = if http2 {
                                // Requests on this connection: `enough` is told when
                                // `goaway_after` of them have come.
                                let enough = Arc::new(tokio::sync::Notify::new());
                                let tell = Arc::clone(&enough);
                                let served = AtomicUsize::new(0);
                                let service = hyper::service::service_fn(move |request| {
                                    let now = served.fetch_add(1, Ordering::SeqCst) + 1;
                                    if goaway_after == Some(now) {
                                        // Kept until the connection's task waits for it.
                                        tell.notify_one();
                                    }
                                    hyper::service::Service::call(&service, request)
                                });
                                let connection = hyper::server::conn::http2::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .max_concurrent_streams(max_streams)
                                .serve_connection(io, service);
                                tokio::pin!(connection);
                                tokio::select! {
                                    ended = connection.as_mut() => ended,
                                    () = enough.notified() => {
                                        connection.as_mut().graceful_shutdown();
                                        connection.await
                                    }
                                }
                            } else {
                                hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service)
                                    .await
                            };
                        });
                    }
                });
                Some(Certificate { pem })
            }
        };
        let scheme = if https.is_some() { "https" } else { "http" };
        let upstream = Self {
            origin: format!("{scheme}://{address}"),
            connections,
            requests,
            hits,
            holding,
            completed,
            http2,
            handshakes,
            stalled,
        };
        (upstream, certificate)
    }

    /// Requests that came over HTTP/2.
    pub(crate) fn http2_requests(&self) -> usize {
        self.http2.load(Ordering::SeqCst)
    }

    /// TLS handshakes: in full, and resumed.
    pub(crate) fn handshakes(&self) -> (usize, usize) {
        (
            self.handshakes.0.load(Ordering::SeqCst),
            self.handshakes.1.load(Ordering::SeqCst),
        )
    }

    /// Connections it left unanswered, and those of them the client has closed since.
    pub(crate) fn stalled(&self) -> (usize, usize) {
        (
            self.stalled.0.load(Ordering::SeqCst),
            self.stalled.1.load(Ordering::SeqCst),
        )
    }

    /// The `/hold` and `/gate` requests held now.
    pub(crate) fn held(&self) -> usize {
        self.holding.0.load(Ordering::SeqCst)
    }

    /// The most `/hold` and `/gate` requests held at once so far.
    pub(crate) fn most_held(&self) -> usize {
        self.holding.1.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How often `path_and_query` (e.g. `/hello?run=3`) was asked for.
    pub(crate) fn hits(&self, path_and_query: &str) -> usize {
        self.hits
            .lock()
            .unwrap()
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    /// How often a `/hold` request for `path_and_query` was answered in full.
    pub(crate) fn completed(&self, path_and_query: &str) -> usize {
        self.completed
            .lock()
            .unwrap()
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    /// Requests served, by path and query.
    pub(crate) fn all_hits(&self) -> HashMap<String, usize> {
        self.hits.lock().unwrap().clone()
    }

    /// Requests served so far.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// How an HTTPS upstream serves.
struct Tls {
    max_streams: u32,
    /// Waited before each TLS handshake.
    handshake: Duration,
    /// Requests after which an HTTP/2 connection is closed gracefully.
    goaway_after: Option<usize>,
    /// HTTP/2 is offered by ALPN.
    http2: bool,
    /// Connections after this many are accepted and never answered (see
    /// [`Upstream::stalled`]).
    stall_after: Option<usize>,
}

/// How requests are counted: HTTP/2 requests carry the whole URL, HTTP/1.1 ones the path.
fn path_and_query(uri: &axum::http::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), ToString::to_string)
}
