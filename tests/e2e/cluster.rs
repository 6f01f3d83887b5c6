//! Several hosts on one PostgreSQL: deploys reach every host without a failed call, runs
//! survive a host's kill -9, an idempotency key holds across hosts, pushes go out once,
//! credentials changed on one host hold on all, and the database may restart under load.
//!
//! Each test starts its own throwaway PostgreSQL (Debian's, on a free loopback port) and two
//! or three `gust serve` processes on it. They run one at a time: each is several
//! processes on a two-core machine.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::receiver::Receiver;
use crate::support::upstream::Upstream;
use crate::support::{Host, eventually};

/// The cluster tests take turns (see the module docs).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A PostgreSQL of the test's own and hosts on one database of it. Fields drop in order:
/// the hosts stop (and show their logs when the test failed), then their folders go, then
/// PostgreSQL.
struct Cluster {
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
    url: String,
    postgres: gust_testkit::postgres::PgCluster,
}

impl Cluster {
    async fn start(hosts: usize) -> Self {
        Self::start_with(hosts, &[]).await
    }

    /// `hosts` hosts started with `extra` arguments.
    async fn start_with(hosts: usize, extra: &[&str]) -> Self {
        let postgres = gust_testkit::postgres::PgCluster::start()
            .expect("a throwaway PostgreSQL (scripts/setup installs it)");
        let url = postgres
            .create_database("gust")
            .expect("creating the database");
        let mut cluster = Self {
            postgres,
            url,
            dir: tempfile::tempdir().unwrap(),
            hosts: Vec::new(),
        };
        for _ in 0..hosts {
            cluster.add_host(extra).await;
        }
        cluster
    }

    /// Each host's URL and client, for load spread over all of them.
    fn endpoints(&self) -> Arc<Vec<(String, reqwest::Client)>> {
        Arc::new(
            self.hosts
                .iter()
                .map(|h| (h.url.clone(), h.http.clone()))
                .collect(),
        )
    }

    /// Waits until every host answers a sync call of `agent`: the deploying host answers
    /// after its own swap, the others follow within moments.
    async fn serving_everywhere(&self, agent: &str) {
        for host in &self.hosts {
            eventually(
                Duration::from_secs(10),
                "every host to serve the agent",
                || async { host.call(agent, json!({"op": "echo"})).await.0 == StatusCode::OK },
            )
            .await;
        }
    }

    /// One more host on the database, with a data folder of its own.
    async fn add_host(&mut self, extra: &[&str]) -> &Host {
        let n = self.hosts.len();
        let mut args = vec!["--database", self.url.as_str()];
        args.extend_from_slice(extra);
        let host = Host::spawn(
            self.dir.path().join(format!("host-{n}")),
            &args,
            Some(crate::support::TOKEN),
        )
        .await;
        self.hosts.push(host);
        &self.hosts[n]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deploy_on_one_host_reaches_every_host_without_a_failed_call() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(3).await;
    let [a, b, c] = [&cluster.hosts[0], &cluster.hosts[1], &cluster.hosts[2]];
    for host in [a, b, c] {
        assert_eq!(host.stats().await["backend"], "postgres");
    }
    assert_eq!(a.upload_file("flip", gust_test_guests::PROBE_A).await, 1);
    // Uploaded on B: numbered after A's, and compiled by every host when it arrives.
    assert_eq!(b.upload_file("flip", gust_test_guests::PROBE_B).await, 2);
    a.deploy("flip", Some(1)).await;
    for host in [b, c] {
        let h = host;
        eventually(
            Duration::from_secs(10),
            "version 1 to be live on every host",
            || async move { h.call("flip", json!({"op": "echo"})).await.1 == Some(1) },
        )
        .await;
    }

    // Calls spread over the three hosts while A redeploys back and forth.
    let hosts = cluster.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..6 {
        let (hosts, stop, failures, calls) = (
            Arc::clone(&hosts),
            Arc::clone(&stop),
            Arc::clone(&failures),
            Arc::clone(&calls),
        );
        clients.push(tokio::spawn(async move {
            let mut i = client;
            while !stop.load(Ordering::Relaxed) {
                let (url, http) = &hosts[i % hosts.len()];
                i += 1;
                let answer = http
                    .post(format!("{url}/v1/agents/flip/run"))
                    .bearer_auth(crate::support::TOKEN)
                    .json(&json!({"op": "echo"}))
                    .send()
                    .await;
                calls.fetch_add(1, Ordering::Relaxed);
                match answer {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    Ok(r) => {
                        let failure = format!(
                            "{url}: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                        failures.lock().unwrap().push(failure);
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{url}: {e}")),
                }
            }
        }));
    }
    for round in 0..4 {
        let (version, marker) = if round % 2 == 0 { (2, "b") } else { (1, "a") };
        let deployed = a.deploy("flip", Some(version)).await;
        let deployment = deployed["deployment"].as_u64().unwrap().to_string();
        // Every host serves it within a few seconds, and says which deployment answered.
        for host in [a, b, c] {
            eventually(
                Duration::from_secs(10),
                "every host to serve the new deployment",
                || {
                    let deployment = deployment.clone();
                    async move {
                        let response = host
                            .request(Method::POST, "/v1/agents/flip/run")
                            .json(&json!({"op": "echo"}))
                            .send()
                            .await
                            .unwrap();
                        let answered = response.headers()["gust-deployment"]
                            .to_str()
                            .unwrap()
                            .to_owned();
                        let body: Value = response.json().await.unwrap();
                        answered == deployment && body["marker"] == marker
                    }
                },
            )
            .await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} of {} calls failed: {:?}",
        failures.len(),
        calls.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(calls.load(Ordering::Relaxed) > 100);

    // A rollback and a delete on C hold on A.
    let (status, body) = c
        .send(
            c.request(Method::POST, "/v1/agents/flip/rollback")
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let back = body["deployment"].as_u64().unwrap().to_string();
    eventually(Duration::from_secs(10), "A to serve the rollback", || {
        let back = back.clone();
        async move {
            let r = a
                .request(Method::POST, "/v1/agents/flip/run")
                .json(&json!({"op": "echo"}))
                .send()
                .await
                .unwrap();
            r.headers()["gust-deployment"].to_str().unwrap() == back
        }
    })
    .await;
    let (status, _) = c.send(c.request(Method::DELETE, "/v1/agents/flip")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(
        Duration::from_secs(10),
        "A to stop serving the deleted agent",
        || async { a.call("flip", json!({"op": "echo"})).await.0 == StatusCode::NOT_FOUND },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn runs_of_a_killed_host_finish_once_on_the_others() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A short lease, so the test does not wait out the default 30 s.
    let mut cluster = Cluster::start(0).await;
    for _ in 0..3 {
        cluster
            .add_host(&["--lease", "3", "--allow-private-network"])
            .await;
    }
    let upstream = Upstream::start().await;
    let a = &cluster.hosts[0];
    a.upload_file("worker", gust_test_guests::PROBE_A).await;
    a.set_config(
        "worker",
        json!({"allowed_hosts": [upstream.origin.clone()]}),
    )
    .await;
    a.deploy("worker", None).await;
    cluster.serving_everywhere("worker").await;

    // Thirty runs, each holding its upstream request for 8 s (none ends before the kill),
    // submitted to every host.
    const RUNS: usize = 30;
    let mut ids = Vec::new();
    for n in 0..RUNS {
        let host = &cluster.hosts[n % 3];
        let url = format!("{}/hold?ms=8000&run={n}", upstream.origin);
        let (status, body) = host
            .send(
                host.request(Method::POST, "/v1/agents/worker/runs")
                    .json(&json!({"op": "fetch", "key": url})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["run_id"].as_str().unwrap().to_owned());
    }
    // Kill A while runs are executing on it.
    eventually(Duration::from_secs(20), "runs to be executing", || async {
        upstream.held() >= 3
    })
    .await;
    let a = cluster.hosts.remove(0);
    a.kill9();

    let b = &cluster.hosts[0];
    let mut retried = 0;
    for id in &ids {
        let run = id.clone();
        eventually(Duration::from_secs(60), "every run to end", || {
            let run = run.clone();
            async move {
                let (_, body) = b
                    .send(b.request(Method::GET, &format!("/v1/agents/worker/runs/{run}")))
                    .await;
                body["status"] == "succeeded"
            }
        })
        .await;
        let (_, body) = b
            .send(b.request(Method::GET, &format!("/v1/agents/worker/runs/{id}")))
            .await;
        if body["attempts"].as_u64() > Some(1) {
            retried += 1;
        }
    }
    // Some were executing on A when it died: they took a second attempt elsewhere.
    assert!(retried > 0, "no run was executing on the killed host");
    // Each finished exactly once, as the upstream counts what it completed (a request cut
    // off by the kill never completes).
    for n in 0..RUNS {
        let path = format!("/hold?ms=8000&run={n}");
        assert_eq!(
            upstream.completed(&path),
            1,
            "run {n} completed {} times",
            upstream.completed(&path)
        );
    }
    let (_, body) = b
        .send(b.request(Method::GET, "/v1/agents/worker/runs?status=running"))
        .await;
    assert_eq!(body["runs"].as_array().map(Vec::len), Some(0), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_sent_to_two_hosts_at_once_is_one_run() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    a.upload_file("once", gust_test_guests::PROBE_A).await;
    a.deploy("once", None).await;
    cluster.serving_everywhere("once").await;
    for round in 0..20 {
        let key = format!("key-{round}");
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let submit = |host: &Host| {
            let request = host
                .request(Method::POST, "/v1/agents/once/runs")
                .header("idempotency-key", key.clone())
                .json(&json!({"op": "echo", "n": round}));
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                let response = request.send().await.unwrap();
                let status = response.status();
                let body: Value = response.json().await.unwrap();
                (status, body)
            }
        };
        let (first, second) = tokio::join!(submit(a), submit(b));
        assert!(
            first.0.is_success() && second.0.is_success(),
            "{first:?} {second:?}"
        );
        assert_eq!(
            first.1["run_id"], second.1["run_id"],
            "round {round}: two runs for one key"
        );
    }
    let (_, body) = a
        .send(a.request(Method::GET, "/v1/agents/once/runs?limit=100"))
        .await;
    assert_eq!(body["runs"].as_array().unwrap().len(), 20, "{body}");
}

/// Writes of one draft naming the same `ETag`, sent to two hosts at once: one goes in, the
/// others are refused with 412, whichever host they reached. A tag read on one host is
/// checked by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_draft_read_and_written_on_two_hosts_at_once_takes_one_write() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    a.set_config("edited", json!({"config": {"start": "1"}}))
        .await;
    for round in 0..10 {
        let read = a
            .request(Method::GET, "/v1/agents/edited/config")
            .send()
            .await
            .unwrap();
        let tag = read.headers()["etag"].to_str().unwrap().to_owned();
        let draft: Value = read.json().await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(6));
        let writes = (0..6).map(|writer| {
            let host = if writer % 2 == 0 { a } else { b };
            let mut draft = draft.clone();
            draft["config"][format!("r{round}w{writer}")] = json!("x");
            let request = host
                .request(Method::PUT, "/v1/agents/edited/config")
                .header("if-match", tag.clone())
                .json(&draft);
            let barrier = Arc::clone(&barrier);
            async move {
                barrier.wait().await;
                request.send().await.unwrap().status()
            }
        });
        let statuses = futures::future::join_all(writes).await;
        let won = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let refused = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((won, refused), (1, 5), "round {round}: {statuses:?}");
        let (_, now) = b
            .send(b.request(Method::GET, "/v1/agents/edited/config"))
            .await;
        let written = now["config"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(&format!("r{round}w")))
            .count();
        assert_eq!(written, 1, "round {round}: {now}");
    }

    // Writes that name no draft but keep the stored token depend on the draft they read:
    // one that lost a race to the other host reads again and goes in, it is not refused.
    a.set_config(
        "edited",
        json!({"push": {"url": "http://127.0.0.1:9/hook", "access_token": "t"}}),
    )
    .await;
    let writes = (0..6).map(|writer| {
        let host = if writer % 2 == 0 { a } else { b };
        let request = host
            .request(Method::PUT, "/v1/agents/edited/config")
            .json(&json!({
                "push": {"url": "http://127.0.0.1:9/hook", "access_token": "***"},
                "config": {"writer": writer.to_string()},
            }));
        async move { request.send().await.unwrap().status() }
    });
    let statuses = futures::future::join_all(writes).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_run_is_pushed_once_whichever_host_ran_it() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // Pushes go to a receiver on loopback.
    let cluster = Cluster::start_with(2, &["--allow-private-network"]).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    let receiver = Receiver::start(Vec::new()).await;
    deploy_pushing(a, &receiver).await;
    eventually(Duration::from_secs(10), "B to serve the agent", || async {
        b.stats().await["deployments"].as_u64() == Some(1)
    })
    .await;
    const RUNS: usize = 40;
    let mut ids = Vec::new();
    for n in 0..RUNS {
        let host = [a, b][n % 2];
        let (status, body) = host
            .send(
                host.request(Method::POST, "/v1/agents/pushed/runs")
                    .json(&json!({"op": "echo", "n": n})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        ids.push(body["run_id"].as_str().unwrap().to_owned());
    }
    eventually(
        Duration::from_secs(30),
        "every run to be pushed",
        || async { receiver.received().len() >= RUNS },
    )
    .await;
    // Give a second delivery the time to happen, if one would.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let by_webhook_id = receiver.by_webhook_id();
    let mut runs: HashMap<String, usize> = HashMap::new();
    for received in receiver.received() {
        let run = received.json()["data"]["run_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        *runs.entry(run).or_default() += 1;
    }
    assert!(by_webhook_id.values().all(|&n| n == 1), "{by_webhook_id:?}");
    for id in &ids {
        assert_eq!(
            runs.get(id),
            Some(&1),
            "run {id} pushed {:?} times",
            runs.get(id)
        );
    }
}

/// A host takes only the deliveries it can start, leaving the rest to the other hosts, and
/// holds each for as long as an attempt may take. It used to take 64 at a time behind its 32
/// delivery slots, each for 60 s whatever `--push-timeout`: the ones waiting for a slot sat
/// claimed and unsent where another host could have sent them, and behind receivers slower
/// than about 30 s their claims ran out and another host pushed them a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_claims_only_the_pushes_it_can_send_and_for_as_long_as_one_may_take() {
    let _turn = ONE_AT_A_TIME.lock().await;
    const FLAGS: [&str; 3] = ["--allow-private-network", "--push-timeout", "120"];
    let mut cluster = Cluster::start_with(1, &FLAGS).await;
    let a = &cluster.hosts[0];
    let receiver = Receiver::holding().await;
    deploy_pushing(a, &receiver).await;
    // More than a host's 32 delivery slots; the receiver answers none of them for now.
    const RUNS: usize = 40;
    const SLOTS: usize = 32;
    for n in 0..RUNS {
        let (status, body) = a
            .send(
                a.request(Method::POST, "/v1/agents/pushed/runs")
                    .json(&json!({"op": "echo", "n": n})),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    eventually(
        Duration::from_secs(30),
        "a push in each of the host's slots",
        || async { receiver.received().len() >= SLOTS },
    )
    .await;
    // Time for the host's loop to take more, if it would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(receiver.received().len(), SLOTS);
    let claims = psql(
        &cluster.url,
        "SELECT 'claims ' || count(*) || ' left ' || coalesce(min(claimed_until - now_ms), 0) \
         FROM deliveries, (SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint \
                           AS now_ms) AS now \
         WHERE status = 'pending' AND claimed_until > now_ms",
    );
    let words: Vec<&str> = claims.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "claims").expect(&claims);
    assert_eq!(
        words[at + 1],
        SLOTS.to_string(),
        "the host claimed pushes it could not send yet: {claims}"
    );
    let left_ms: i64 = words[at + 3].parse().expect(&claims);
    assert!(
        left_ms > 110_000,
        "a claim must outlast a 120 s attempt; the shortest has {left_ms} ms left"
    );
    // The 8 the first host left go out from a second one.
    cluster.add_host(&FLAGS).await;
    eventually(
        Duration::from_secs(20),
        "the second host to send the other pushes",
        || async { receiver.received().len() >= RUNS },
    )
    .await;
    receiver.open();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let by_webhook_id = receiver.by_webhook_id();
    assert_eq!(by_webhook_id.len(), RUNS, "{by_webhook_id:?}");
    assert!(
        by_webhook_id.values().all(|&n| n == 1),
        "a push was sent twice: {by_webhook_id:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_rotated_or_a_key_revoked_on_one_host_is_refused_on_the_other() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    a.upload_file("keyed", gust_test_guests::PROBE_A).await;
    a.deploy("keyed", None).await;
    let (status, body) = a
        .send(
            a.request(Method::POST, "/v1/agents/keyed/keys")
                .json(&json!({"name": "app"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (key, key_id) = (
        body["key"].as_str().unwrap().to_owned(),
        body["id"].as_str().unwrap().to_owned(),
    );
    let with_key = |host: &Host| {
        host.http
            .post(format!("{}/v1/agents/keyed/run", host.url))
            .header("x-api-key", key.clone())
            .json(&json!({"op": "echo"}))
            .send()
    };
    eventually(
        Duration::from_secs(10),
        "B to take the key made on A",
        || async { with_key(b).await.unwrap().status() == StatusCode::OK },
    )
    .await;
    let (status, _) = a
        .send(a.request(Method::DELETE, &format!("/v1/agents/keyed/keys/{key_id}")))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    eventually(
        Duration::from_secs(10),
        "B to refuse the key revoked on A",
        || async { with_key(b).await.unwrap().status() == StatusCode::UNAUTHORIZED },
    )
    .await;

    let (status, body) = a
        .send(a.request(Method::POST, "/v1/admin/rotate-token"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let rotated = body["admin_token"].as_str().unwrap().to_owned();
    eventually(
        Duration::from_secs(10),
        "B to refuse the old token",
        || async {
            b.request(Method::GET, "/v1/agents")
                .send()
                .await
                .unwrap()
                .status()
                == StatusCode::UNAUTHORIZED
        },
    )
    .await;
    let status = b
        .http
        .get(format!("{}/v1/agents", b.url))
        .bearer_auth(&rotated)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);

    // A host started with the old token refuses to start, and says why.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gust"));
    gust_testkit::serve_args(&mut command, &cluster.dir.path().join("late"))
        .args(["--database", &cluster.url])
        .env("GUST_ADMIN_TOKEN", crate::support::TOKEN);
    let stderr = refused(&mut command);
    assert!(stderr.contains("another admin token"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_restarting_under_load_loses_no_accepted_run() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(2).await;
    let a = &cluster.hosts[0];
    a.upload_file("steady", gust_test_guests::PROBE_A).await;
    a.deploy("steady", None).await;
    cluster.serving_everywhere("steady").await;

    let hosts = cluster.endpoints();
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(std::sync::Mutex::new(Vec::<(usize, String)>::new()));
    let unavailable = Arc::new(AtomicUsize::new(0));
    let sync_failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut load = Vec::new();
    for client in 0..4 {
        let (hosts, stop, accepted, unavailable, sync_failures) = (
            Arc::clone(&hosts),
            Arc::clone(&stop),
            Arc::clone(&accepted),
            Arc::clone(&unavailable),
            Arc::clone(&sync_failures),
        );
        load.push(tokio::spawn(async move {
            let mut i = client;
            while !stop.load(Ordering::Relaxed) {
                let at = i % hosts.len();
                let (url, http) = &hosts[at];
                i += 1;
                let submitted = http
                    .post(format!("{url}/v1/agents/steady/runs"))
                    .bearer_auth(crate::support::TOKEN)
                    .timeout(Duration::from_secs(20))
                    .json(&json!({"op": "echo", "n": i}))
                    .send()
                    .await;
                match submitted {
                    Ok(r) if r.status() == StatusCode::ACCEPTED => {
                        let body: Value = r.json().await.unwrap();
                        accepted
                            .lock()
                            .unwrap()
                            .push((at, body["run_id"].as_str().unwrap().to_owned()));
                    }
                    Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                        assert!(r.headers().contains_key("retry-after"));
                        let body: Value = r.json().await.unwrap();
                        assert_eq!(body["error"]["kind"], "unavailable", "{body}");
                        unavailable.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => panic!(
                        "a submission answered {} {}",
                        r.status(),
                        r.text().await.unwrap()
                    ),
                    Err(e) => panic!("a submission failed: {e}"),
                }
                // Sync calls touch no database: they are answered throughout.
                let call = http
                    .post(format!("{url}/v1/agents/steady/run"))
                    .bearer_auth(crate::support::TOKEN)
                    .json(&json!({"op": "echo"}))
                    .send()
                    .await;
                match call {
                    Ok(r) if r.status() == StatusCode::OK => {}
                    Ok(r) => sync_failures.lock().unwrap().push(r.status().to_string()),
                    Err(e) => sync_failures.lock().unwrap().push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.postgres.stop().expect("stopping PostgreSQL");
    let stopped_at = Instant::now();
    eventually(
        Duration::from_secs(20),
        "submissions to be refused with 503",
        || async { unavailable.load(Ordering::Relaxed) > 0 },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(stopped_at.elapsed())).await;
    cluster
        .postgres
        .start_again()
        .expect("starting PostgreSQL again");
    // Without restarting gust, submissions are accepted again.
    let before = accepted.lock().unwrap().len();
    eventually(
        Duration::from_secs(30),
        "submissions to be accepted again",
        || async { accepted.lock().unwrap().len() > before + 10 },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(
        sync_failures.lock().unwrap().is_empty(),
        "sync calls failed while the database was away: {:?}",
        sync_failures.lock().unwrap()
    );
    // Every accepted run is there and ends.
    let accepted = accepted.lock().unwrap().clone();
    for (at, id) in &accepted {
        let host = &cluster.hosts[*at];
        let id = id.clone();
        eventually(
            Duration::from_secs(30),
            "every accepted run to succeed",
            || {
                let id = id.clone();
                async move {
                    let (status, body) = host
                        .send(host.request(Method::GET, &format!("/v1/agents/steady/runs/{id}")))
                        .await;
                    status == StatusCode::OK && body["status"] == "succeeded"
                }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_console_session_opened_on_one_host_holds_on_the_others_until_signed_out() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    let signed_in = a
        .http
        .post(format!("{}/console/session", a.url))
        .header("origin", &a.url)
        .json(&json!({"token": crate::support::TOKEN}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::NO_CONTENT);
    let cookie = signed_in.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let agents = |host: &Host| {
        host.http
            .get(format!("{}/v1/agents", host.url))
            .header("cookie", cookie.clone())
            .send()
    };
    // A balancer may send the next request anywhere: the session holds on B.
    assert_eq!(agents(b).await.unwrap().status(), StatusCode::OK);
    // Signed out on B: over on A as well.
    let signed_out = b
        .http
        .delete(format!("{}/console/session", b.url))
        .header("cookie", cookie.clone())
        .header("origin", &b.url)
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), StatusCode::NO_CONTENT);
    assert_eq!(agents(a).await.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_is_followed_and_cancelled_from_any_host() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(2).await;
    let (a, b) = (&cluster.hosts[0], &cluster.hosts[1]);
    a.upload_file("sleeper", gust_test_guests::PROBE_A).await;
    a.deploy("sleeper", None).await;
    cluster.serving_everywhere("sleeper").await;
    let submit = |input: Value| async move {
        let (status, body) = a
            .send(
                a.request(Method::POST, "/v1/agents/sleeper/runs")
                    .json(&input),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["run_id"].as_str().unwrap().to_owned()
    };

    // Pollers and event streams on both hosts learn of the end when it happens, wherever
    // the run executed.
    let id = submit(json!({"op": "sleep", "ms": 2000})).await;
    let asked = Instant::now();
    let follow = |host: &'static str, h: &Host| {
        let events = h.request(Method::GET, &format!("/v1/agents/sleeper/runs/{id}/events"));
        async move {
            let mut reader = crate::support::sse::SseReader::new(events.send().await.unwrap());
            let mut seen = Vec::new();
            while let Some(event) = reader.next().await {
                seen.push((event.event.clone(), event.data.clone()));
                if event.event == "end" {
                    break;
                }
            }
            (host, seen)
        }
    };
    let (on_a, on_b, streamed_a, streamed_b) = tokio::join!(
        crate::runs::poll(a, "sleeper", &id, 30),
        crate::runs::poll(b, "sleeper", &id, 30),
        follow("a", a),
        follow("b", b)
    );
    for (host, seen) in [streamed_a, streamed_b] {
        let last = seen
            .last()
            .map(|(event, data)| (event.as_str(), data["status"].clone()));
        assert_eq!(
            last,
            Some(("end", json!("succeeded"))),
            "the stream on {host}: {seen:?}"
        );
    }
    assert_eq!(
        (on_a["status"].as_str(), on_b["status"].as_str()),
        (Some("succeeded"), Some("succeeded"))
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "a poller waited out its wait: {:?}",
        asked.elapsed()
    );

    // A cancel sent to the other host stops the run where it executes.
    let id = submit(json!({"op": "sleep", "ms": 60_000})).await;
    let mut runner = None;
    eventually(
        Duration::from_secs(10),
        "the run to execute on one host",
        || async { crate::runs::poll(a, "sleeper", &id, 0).await["status"] == "running" },
    )
    .await;
    // Exactly one host executes it (a losing claim shows for a moment on the other).
    eventually(
        Duration::from_secs(10),
        "one host, and one only, to execute the run",
        || async {
            let running = [
                a.stats().await["runs_running"].clone(),
                b.stats().await["runs_running"].clone(),
            ];
            running == [json!(1), json!(0)] || running == [json!(0), json!(1)]
        },
    )
    .await;
    for (i, host) in [a, b].into_iter().enumerate() {
        if host.stats().await["runs_running"] == 1 {
            runner = Some(i);
        }
    }
    let runner = runner.expect("one host runs it");
    let (running_host, other) = if runner == 0 { (a, b) } else { (b, a) };
    let (status, body) = other
        .send(other.request(
            Method::POST,
            &format!("/v1/agents/sleeper/runs/{id}/cancel"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "cancelled");
    eventually(
        Duration::from_secs(10),
        "the executing host to stop the run",
        || async { running_host.stats().await["runs_running"] == 0 },
    )
    .await;
}

/// Runs `command` (a `gust serve` that must refuse to start) and answers what it printed on
/// stderr; a host that starts after all is killed and fails the test instead of hanging it.
pub(crate) fn refused(command: &mut std::process::Command) -> String {
    use std::io::Read as _;
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("gust serve did not refuse to start within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success(), "it started: {stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_ended_behind_a_hosts_back_stops_at_its_next_renewal() {
    let _turn = ONE_AT_A_TIME.lock().await;
    // A lease of 3 s: renewals every second.
    let cluster = Cluster::start_with(1, &["--lease", "3"]).await;
    let a = &cluster.hosts[0];
    a.upload_file("sleeper", gust_test_guests::PROBE_A).await;
    a.deploy("sleeper", None).await;
    let (status, body) = a
        .send(
            a.request(Method::POST, "/v1/agents/sleeper/runs")
                .json(&json!({"op": "sleep", "ms": 60_000})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["run_id"].as_str().unwrap().to_owned();
    // Running as the database says: the host counts a run as running from before its start
    // commits, and the update below needs the committed start.
    eventually(Duration::from_secs(10), "the run to execute", || async {
        a.stats().await["runs_running"] == 1
            && crate::runs::poll(a, "sleeper", &id, 0).await["status"] == "running"
    })
    .await;
    // Cancelled by someone whose announcement never arrives (here: straight in the
    // database, announcing nothing), as when the listening connection was down.
    let stdout = psql(
        &cluster.url,
        &format!(
            "UPDATE runs SET status = 'cancelled', finished_at = 1 WHERE id = '{id}' AND status = 'running'"
        ),
    );
    assert!(stdout.contains("UPDATE 1"), "psql: {stdout}");
    eventually(
        Duration::from_secs(10),
        "the host to stop the run",
        || async { a.stats().await["runs_running"] == 0 },
    )
    .await;
    assert!(a.log().contains("no longer this host's"), "{}", a.log());
}

/// Deploys agent `pushed` (the probe) in async mode, pushing to `receiver`.
async fn deploy_pushing(host: &Host, receiver: &Receiver) {
    host.upload_file("pushed", gust_test_guests::PROBE_A).await;
    host.set_config(
        "pushed",
        json!({"mode": "async", "push": {"url": receiver.url, "access_token": "app-token"}}),
    )
    .await;
    host.deploy("pushed", None).await;
}

/// Runs `sql` on the database at `url` with `psql`; answers what it printed.
fn psql(url: &str, sql: &str) -> String {
    let bin = gust_testkit::postgres::postgres_bin()
        .unwrap()
        .expect("PostgreSQL");
    let output = std::process::Command::new(bin.join("psql"))
        .args([url, "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A push whose signing secret cannot be read for a while (here its column is renamed
/// away; in life, the database restarting) is tried again on the retry schedule and
/// delivered once the secret can be read. It was marked failed for good ("cannot sign").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_whose_secret_cannot_be_read_for_a_while_is_retried() {
    use crate::support::receiver::Answer;
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start_with(
        1,
        &["--allow-private-network", "--push-retry-schedule", "2"],
    )
    .await;
    let a = &cluster.hosts[0];
    let receiver = Receiver::start(vec![Answer::Status(503)]).await;
    deploy_pushing(a, &receiver).await;
    let id = crate::runs::submit(a, "pushed", json!({"op": "echo"})).await;
    let r = &receiver;
    eventually(Duration::from_secs(10), "a first push", || async move {
        r.received().len() == 1
    })
    .await;
    psql(
        &cluster.url,
        "ALTER TABLE agents RENAME COLUMN push_secret TO push_secret_away",
    );
    let delivery = || async { crate::runs::poll(a, "pushed", &id, 0).await["delivery"].clone() };
    eventually(Duration::from_secs(10), "a second attempt", || async {
        delivery().await["attempts"] == 2
    })
    .await;
    let unsigned = delivery().await;
    assert_eq!(unsigned["status"], "pending", "{unsigned}");
    psql(
        &cluster.url,
        "ALTER TABLE agents RENAME COLUMN push_secret_away TO push_secret",
    );
    eventually(Duration::from_secs(15), "the delivery", || async {
        delivery().await["status"] == "delivered"
    })
    .await;
    assert_eq!(receiver.received().len(), 2, "one event, sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_joining_needs_no_admin_token_of_its_own() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let postgres = gust_testkit::postgres::PgCluster::start().expect("a throwaway PostgreSQL");
    let url = postgres.create_database("gust").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database", url.as_str()];
    // The first host of a new database makes the token, keeps it and shows it once.
    let a = Host::spawn(dir.path().join("a"), &args, None).await;
    let token = std::fs::read_to_string(dir.path().join("a/admin-token")).unwrap();
    assert!(a.stdout.lock().unwrap().join("\n").contains(token.trim()));
    // The next one takes its hash from the database: no token of its own, none printed.
    let b = Host::spawn(dir.path().join("b"), &args, None).await;
    assert!(!dir.path().join("b/admin-token").exists());
    assert!(!b.stdout.lock().unwrap().join("\n").contains("Generated"));
    for host in [&a, &b] {
        let status = host
            .http
            .get(format!("{}/v1/agents", host.url))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::OK, "{}", host.url);
    }
    drop((a, b));
    drop(postgres);
}
