//! A push receiver the tests start on loopback: it records every request and answers with
//! scripted statuses (200 once the script runs out).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Received {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("push bodies are JSON")
    }

    pub(crate) fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }
}

/// What the receiver answers.
#[derive(Debug, Clone)]
pub(crate) enum Answer {
    Status(u16),
    Redirect(String),
    /// 429 with `Retry-After` in seconds.
    TooMany(u64),
}

#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<Answer>>>,
    /// While false, every request is recorded and then held unanswered.
    open: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Receiver {
    pub(crate) async fn start(script: Vec<Answer>) -> Self {
        Self::start_with(script, true).await
    }

    /// A receiver that holds every request it gets, unanswered, until [`Receiver::open`].
    pub(crate) async fn holding() -> Self {
        Self::start_with(Vec::new(), false).await
    }

    async fn start_with(script: Vec<Answer>, open: bool) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let open = Arc::new(tokio::sync::watch::Sender::new(open));
        let (r, s, o) = (
            Arc::clone(&received),
            Arc::clone(&script),
            Arc::clone(&open),
        );
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (r, s, mut opened) = (Arc::clone(&r), Arc::clone(&s), o.subscribe());
            async move {
                r.lock().unwrap().push(Received { headers, body });
                let _ = opened.wait_for(|open| *open).await;
                let answer = s.lock().unwrap().pop_front().unwrap_or(Answer::Status(200));
                respond(answer)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url,
            received,
            script,
            open,
        }
    }

    /// Answers the requests held and every later one.
    pub(crate) fn open(&self) {
        self.open.send_replace(true);
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// How many times each event (`webhook-id`) was received.
    pub(crate) fn by_webhook_id(&self) -> std::collections::HashMap<String, usize> {
        let mut counts = std::collections::HashMap::new();
        for received in self.received() {
            *counts.entry(received.header("webhook-id")).or_default() += 1;
        }
        counts
    }

    pub(crate) fn answer_next(&self, answers: Vec<Answer>) {
        self.script.lock().unwrap().extend(answers);
    }
}

fn respond(answer: Answer) -> Response {
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::TooMany(seconds) => {
            let mut response = StatusCode::TOO_MANY_REQUESTS.into_response();
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from(seconds));
            response
        }
        Answer::Redirect(to) => {
            let mut response = StatusCode::TEMPORARY_REDIRECT.into_response();
            response
                .headers_mut()
                .insert("location", HeaderValue::from_str(&to).unwrap());
            response
        }
    }
}
