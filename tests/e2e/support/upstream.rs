//! A loopback HTTP server standing in for the APIs guests call: it counts the connections
//! it accepts (so a test can show that a refused request never reached it) and the requests
//! it serves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::serve::ListenerExt as _;
use serde_json::{Value, json};

/// A running upstream.
pub(crate) struct Upstream {
    /// `http://127.0.0.1:<port>`.
    pub(crate) origin: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

impl Upstream {
    /// Starts one: `/hello` answers JSON, `/echo` answers the JSON it was posted, `/slow`
    /// takes 5 s.
    pub(crate) async fn start() -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&requests);
        let app = axum::Router::new()
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
                "/slow",
                axum::routing::get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| {
                    let counted = Arc::clone(&counted);
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
        }
    }

    /// Connections accepted so far.
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests served so far.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}
