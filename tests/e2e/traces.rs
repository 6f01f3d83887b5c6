//! Traces, as a collector receives them: `--otlp-endpoint` points the host at an OTLP/HTTP
//! receiver (tests/receivers/otlp_receiver.py, which decodes the protobuf with the
//! OpenTelemetry protocol's own messages), and the test reads the span tree of one sync call
//! and one queued run. The caller's `traceparent` is their parent, and the next hops — the
//! guest's outgoing request, the push — receive one naming the span that sent them.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt as _;

use crate::support::componentize::repo;
use crate::support::receiver::Receiver;
use crate::support::{Host, eventually};

/// The receiver's process and the spans it printed.
struct Collector {
    _child: tokio::process::Child,
    endpoint: String,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Collector {
    async fn start() -> Self {
        let python = repo().join(".tools/receivers/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run scripts/setup",
            python.display()
        );
        let mut child = tokio::process::Command::new(python)
            .arg(repo().join("tests/receivers/otlp_receiver.py"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first: Value =
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
        let endpoint = first["listening"].as_str().unwrap().to_owned();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&spans);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        Self {
            _child: child,
            endpoint,
            spans,
        }
    }

    fn trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s["trace_id"] == trace_id)
            .cloned()
            .collect()
    }
}

/// The one span named `name` whose parent is `parent`.
fn child<'a>(spans: &'a [Value], parent: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = spans
        .iter()
        .filter(|s| s["name"] == name && s["parent_span_id"] == parent)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one `{name}` under {parent}, in {:#?}",
        names(spans)
    );
    found[0]
}

fn names(spans: &[Value]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} {} <- {}", s["name"], s["span_id"], s["parent_span_id"]))
        .collect()
}

fn id(span: &Value) -> &str {
    span["span_id"].as_str().unwrap()
}

/// The `traceparent` of the request the receiver got that `pick` chooses.
fn traceparent(receiver: &Receiver, pick: impl Fn(&HashMap<String, String>) -> bool) -> String {
    receiver
        .received()
        .iter()
        .map(|r| {
            r.headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or_default().to_owned()))
                .collect::<HashMap<_, _>>()
        })
        .find(|h| pick(h))
        .and_then(|h| h.get("traceparent").cloned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_call_and_a_run_are_exported_as_span_trees() {
    let collector = Collector::start().await;
    let receiver = Receiver::start(Vec::new()).await;
    let origin = receiver.url.trim_end_matches("/hook").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(
        dir.path().join("data"),
        &[
            "--allow-private-network",
            "--otlp-endpoint",
            &collector.endpoint,
        ],
    )
    .await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config(
        "probe",
        json!({"mode": "async", "allowed_hosts": [origin],
               "push": {"url": receiver.url, "access_token": "t"}}),
    )
    .await;
    host.deploy("probe", None).await;
    let fetch = json!({"op": "fetch", "key": format!("{origin}/from-the-guest")});

    // A sync call, in the caller's trace.
    let (call_trace, caller) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = host
        .request(Method::POST, "/v1/agents/probe/run")
        .header("traceparent", format!("00-{call_trace}-{caller}-01"))
        .json(&fetch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let outbound_header = traceparent(&receiver, |h| !h.contains_key("webhook-id"));

    // A queued run, in another trace; its result is pushed.
    let (run_trace, submitter) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let (status, accepted) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/runs")
                .header("traceparent", format!("00-{run_trace}-{submitter}-01"))
                .json(&fetch),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let r = &receiver;
    eventually(Duration::from_secs(20), "the run's push", || async move {
        r.received()
            .iter()
            .any(|p| p.headers.contains_key("webhook-id"))
    })
    .await;
    let push_header = traceparent(&receiver, |h| h.contains_key("webhook-id"));

    // A queued run without a caller's trace: a trace of its own, still one tree.
    let (status, untraced) = host
        .send(
            host.request(Method::POST, "/v1/agents/probe/runs")
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{untraced}");
    let untraced = untraced["run_id"].as_str().unwrap().to_owned();

    // Exported in batches: within a few seconds.
    let (c, untraced_id) = (&collector, untraced.as_str());
    eventually(
        Duration::from_secs(30),
        "the spans of both traces",
        || async move {
            let call = c.trace(call_trace);
            let run = c.trace(run_trace);
            let own =
                c.spans.lock().unwrap().iter().any(|s| {
                    s["name"] == "push.attempt" && s["attributes"]["run_id"] == untraced_id
                });
            call.iter().any(|s| s["name"] == "outbound")
                && run.iter().any(|s| s["name"] == "push.attempt")
                && run.iter().any(|s| s["name"] == "outbound")
                && own
        },
    )
    .await;

    // The call: under the caller's span, with its admission, instantiation and the guest's
    // run; the guest's request under the run, and sent with that span as its parent.
    let spans = collector.trace(call_trace);
    let call = child(&spans, caller, "call");
    assert_eq!(call["service"], "gust");
    assert_eq!(call["attributes"]["agent"], "probe");
    assert_eq!(call["attributes"]["kind"], "sync");
    child(&spans, id(call), "admission");
    child(&spans, id(call), "instantiate");
    let guest = child(&spans, id(call), "guest.run");
    let outbound = child(&spans, id(guest), "outbound");
    assert_eq!(outbound["attributes"]["http.response.status_code"], 200);
    assert_eq!(
        outbound_header,
        format!("00-{call_trace}-{}-01", id(outbound)),
        "the guest's request carries its span"
    );

    // The run: its own span under the submitter's; under it the attempt (with the queue
    // wait and the call) and the push, whose request carries the push's span.
    let spans = collector.trace(run_trace);
    let root = child(&spans, submitter, "run");
    assert_eq!(root["attributes"]["run_id"], accepted["run_id"]);
    let attempt = child(&spans, id(root), "run.attempt");
    assert_eq!(attempt["attributes"]["attempt"], 1);
    let wait = child(&spans, id(attempt), "queue.wait");
    // From the run's acceptance (its `created_at`, to the millisecond) to the attempt.
    let (_, run) = host
        .send(host.request(
            Method::GET,
            &format!(
                "/v1/agents/probe/runs/{}",
                accepted["run_id"].as_str().unwrap()
            ),
        ))
        .await;
    let created_ms = chrono::DateTime::parse_from_rfc3339(run["created_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis();
    let (wait_start, wait_end) = (
        wait["start"].as_u64().unwrap(),
        wait["end"].as_u64().unwrap(),
    );
    assert_eq!(
        i64::try_from(wait_start / 1_000_000).unwrap(),
        created_ms,
        "{wait}"
    );
    assert!(
        wait_end >= wait_start && wait_end <= attempt["end"].as_u64().unwrap(),
        "{wait}"
    );
    let call = child(&spans, id(attempt), "call");
    assert_eq!(call["attributes"]["kind"], "async");
    let guest = child(&spans, id(call), "guest.run");
    child(&spans, id(guest), "outbound");
    let push = child(&spans, id(root), "push.attempt");
    assert_eq!(push["attributes"]["outcome"], "delivered");
    assert_eq!(
        push_header,
        format!("00-{run_trace}-{}-01", id(push)),
        "the push carries its span"
    );

    // The run submitted without a trace: its `run` span is a root, with its attempt and
    // its push under it.
    let root = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "run" && s["attributes"]["run_id"] == untraced.as_str())
        .cloned()
        .expect("the untraced run's span");
    assert_eq!(root["parent_span_id"], "", "{root}");
    let spans = collector.trace(root["trace_id"].as_str().unwrap());
    child(&spans, id(&root), "run.attempt");
    child(&spans, id(&root), "push.attempt");

    // Spans stay out of the log lines.
    let log = host.log();
    assert!(log.contains("probe"), "{log}");
    for span in ["call{", "run.attempt", "guest.run"] {
        assert!(!log.contains(span), "{span} in the log:\n{log}");
    }
}

/// Without `--otlp-endpoint` nothing is traced, and nothing is sent on: a caller's
/// `traceparent` does not reach the guest's outgoing requests.
#[tokio::test]
async fn without_an_endpoint_no_context_is_sent_on() {
    let receiver = Receiver::start(Vec::new()).await;
    let origin = receiver.url.trim_end_matches("/hook").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--allow-private-network"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.set_config("probe", json!({"allowed_hosts": [origin]}))
        .await;
    host.deploy("probe", None).await;
    let response = host
        .request(Method::POST, "/v1/agents/probe/run")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(&json!({"op": "fetch", "key": format!("{origin}/x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let received = receiver.received();
    assert_eq!(received.len(), 1);
    assert!(!received[0].headers.contains_key("traceparent"));
}
