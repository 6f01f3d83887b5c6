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
}

impl Upstream {
    /// Starts one: `/hello` answers JSON, `/echo` answers the JSON it was posted, `/sink`
    /// says how many bytes it was posted, `/slow` takes 5 s, `/hold?ms=N` takes N ms,
    /// `/gate?n=N&ms=M` answers once N gate requests have arrived (or after M ms): a test of
    /// "all at once" then does not depend on how fast its requests were sent.
    pub(crate) async fn start() -> Self {
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
        let app =
            axum::Router::new()
                .route(
                    "/hello",
                    axum::routing::get(|| async { axum::Json(json!({"hello": "from upstream"})) }),
                )
                .route(
                    "/echo",
                    axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
                        axum::Json(json!({"received": body}))
                    }),
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
                            *finished.lock().unwrap().entry(uri.to_string()).or_insert(0) += 1;
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
                    "/slow",
                    axum::routing::get(|| async {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        "late"
                    }),
                )
                .layer(axum::middleware::from_fn(
                    move |request: axum::extract::Request, next: axum::middleware::Next| {
                        let counted = Arc::clone(&counted);
                        let uri = request.uri().to_string();
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
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let listener = listener.tap_io(move |_| {
            accepted.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            origin,
            connections,
            requests,
            hits,
            holding,
            completed,
        }
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

    /// Requests served so far.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
