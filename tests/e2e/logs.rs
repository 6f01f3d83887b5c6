//! Guest log lines of sync calls: kept per agent and read (`GET …/logs`, `gust logs`),
//! followed live as Server-Sent Events (resumable with `Last-Event-ID`), and the host's own
//! log as JSON lines that carry each call's agent, version and run id.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::sse::SseReader;
use crate::support::{Host, TOKEN};

/// A sync call that logs, prints to stdout and stderr; its run id.
async fn printing_call(host: &Host) -> String {
    let (status, run_id, body) = host.call_run("probe", json!({"op": "print"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    run_id
}

/// Reads events until `want` matches one's data; the events' ids and data.
async fn until_event(events: &mut SseReader, want: impl Fn(&Value) -> bool) -> Vec<(u64, Value)> {
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut seen = Vec::new();
        loop {
            let event = events.next().await.expect("the stream went on");
            let done = want(&event.data);
            seen.push((event.id.parse().unwrap(), event.data));
            if done {
                return seen;
            }
        }
    })
    .await
    .expect("the event came")
}

#[tokio::test]
async fn sync_call_lines_are_kept_followed_and_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start_on(dir.path().join("data"), &["--log-format", "json"]).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;

    let first = printing_call(&host).await;
    let (status, kept) = host
        .send(host.request(Method::GET, "/v1/agents/probe/logs"))
        .await;
    assert_eq!(status, StatusCode::OK, "{kept}");
    let lines = kept["lines"].as_array().unwrap();
    let of_first: Vec<&Value> = lines
        .iter()
        .filter(|l| l["run_id"] == first.as_str())
        .collect();
    let sources: Vec<&str> = of_first
        .iter()
        .map(|l| l["source"].as_str().unwrap())
        .collect();
    for source in ["log", "stdout", "stderr"] {
        assert!(sources.contains(&source), "{source} in {kept}");
    }
    let logged = of_first.iter().find(|l| l["source"] == "log").unwrap();
    assert_eq!(logged["message"], format!("probe log line for {first}"));
    assert_eq!(logged["version"], 1);

    // Following: the kept lines first (here the newest one), then new ones as they come.
    let response = host
        .request(Method::GET, "/v1/agents/probe/logs?follow=1&limit=1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = SseReader::new(response);
    let replayed = until_event(&mut events, |_| true).await;
    assert_eq!(replayed[0].1["run_id"], first.as_str());
    let second = printing_call(&host).await;
    let live = until_event(&mut events, |e| {
        e["run_id"] == second.as_str() && e["source"] == "log"
    })
    .await;
    let last_seen = live[0].0;
    assert!(last_seen > replayed[0].0, "ids increase: {live:?}");

    // Resumed after the first line of the second call: only what came after it.
    let resumed = host
        .request(Method::GET, "/v1/agents/probe/logs?follow=1")
        .header("last-event-id", last_seen.to_string())
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(resumed);
    let third = printing_call(&host).await;
    let after = until_event(&mut events, |e| e["run_id"] == third.as_str()).await;
    assert!(after.iter().all(|(id, _)| *id > last_seen), "{after:?}");

    // The host's own log: JSON lines, a call's lines with its agent, version and run id.
    let json_line = host
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| {
            l["run_id"] == first.as_str() && l["message"] == format!("probe log line for {first}")
        })
        .unwrap_or_else(|| panic!("no JSON line of the call:\n{}", host.log()));
    assert_eq!(
        (&json_line["agent"], &json_line["version"]),
        (&json!("probe"), &json!(1))
    );

    // A deleted agent's lines go with it.
    host.send(host.request(Method::DELETE, "/v1/agents/probe"))
        .await;
    let (status, _) = host
        .send(host.request(Method::GET, "/v1/agents/probe/logs"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn gust_logs_prints_and_follows() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::start(dir.path()).await;
    host.upload_file("probe", gust_test_guests::PROBE_A).await;
    host.deploy("probe", None).await;
    let first = printing_call(&host).await;
    let gust = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gust"));
        command
            .args(args)
            .env("GUST_URL", &host.url)
            .env("GUST_TOKEN", TOKEN);
        command
    };
    let out = gust(&["logs", "probe"]).output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(
        printed.contains(&format!("{first} probe log line for {first}")),
        "{printed}"
    );
    assert!(printed.contains("[stdout] probe stdout line"), "{printed}");

    let mut follower = gust(&["logs", "probe", "--follow", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    // The kept line first: the follower is connected once it is printed.
    assert!(lines.next().unwrap().unwrap().contains(&first));
    let second = printing_call(&host).await;
    let reading = tokio::task::spawn_blocking(move || {
        lines
            .map_while(Result::ok)
            .find(|l| l.contains(&format!("probe log line for {second}")))
    });
    // Bounded: killing the follower ends the reading either way.
    let found = tokio::time::timeout(Duration::from_secs(20), reading).await;
    if !matches!(found, Ok(Ok(Some(_)))) {
        follower.kill().unwrap();
        let _ = follower.wait();
        panic!("the new line was not printed: {found:?}");
    }
    // The reader is gone (as `head` goes): the next line ends the follower quietly. It
    // panicked ("failed printing to stdout: Broken pipe") and exited with 101.
    printing_call(&host).await;
    let ended = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Some(status) = follower.try_wait().unwrap() {
                let mut stderr = String::new();
                std::io::Read::read_to_string(&mut follower.stderr.take().unwrap(), &mut stderr)
                    .unwrap();
                return Ok((status, stderr));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        follower.kill().unwrap();
        let _ = follower.wait();
        Err("the follower did not end once its reader was gone")
    })
    .await
    .unwrap();
    let (status, stderr) = ended.unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
