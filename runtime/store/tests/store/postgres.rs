//! What a database shared by several hosts must get right: two `Store`s on one database
//! stand for two hosts.

use std::collections::BTreeSet;

use gust_model::{AgentConfig, DeliveryStatus, RunOutcome, RunStatus};
use gust_store::queue::{RunWrite, WriteOutcome};
use gust_store::{Change, DraftBase, Store, StoreError};
use gust_testkit::postgres::PgCluster;

use crate::support::{apply, database, deployed, eventually, heard, new_run, pushing, start};

/// Two stores (two hosts) on one new database.
async fn two_hosts(test: &str) -> Option<(Store, Store, String)> {
    let url = database(test)?;
    let a = Store::open_postgres(&url).await.unwrap();
    let b = Store::open_postgres(&url).await.unwrap();
    Some((a, b, url))
}

/// A plain connection, for looking at (or tampering with) the database directly.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_opening_together_migrate_once() {
    let Some(url) = database("migrate_once") else {
        return;
    };
    let opened = join_all((0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::open_postgres(&url).await })
    }))
    .await;
    for store in &opened {
        let store = store.as_ref().unwrap().as_ref().unwrap();
        assert_eq!(store.backend_name(), "postgres");
    }
    let client = connect(&url).await;
    let rows = client
        .query("SELECT version FROM gust_schema", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one schema row");
    assert!(rows[0].get::<_, i32>(0) >= 1);
}

#[tokio::test]
async fn a_database_of_a_newer_gust_is_refused() {
    let Some(url) = database("newer_schema") else {
        return;
    };
    Store::open_postgres(&url).await.unwrap();
    let client = connect(&url).await;
    let known: i32 = client
        .query_one("SELECT version FROM gust_schema", &[])
        .await
        .unwrap()
        .get(0);
    client
        .execute("UPDATE gust_schema SET version = 99", &[])
        .await
        .unwrap();
    let err = format!("{:#}", Store::open_postgres(&url).await.unwrap_err());
    assert!(
        err.contains(&format!(
            "the database was migrated by a newer gust (schema 99, this binary knows {known}): upgrade this host"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_database_is_named_without_its_password() {
    // Port 1 on the loopback: nothing listens, the connection is refused at once.
    let err = format!(
        "{:#}",
        Store::open_postgres("postgres://gust:hunter2@127.0.0.1:1/gust?sslmode=disable")
            .await
            .unwrap_err()
    );
    assert!(err.contains("127.0.0.1:1/gust"), "{err}");
    assert!(err.contains("database unavailable"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = format!(
        "{:#}",
        Store::open_postgres("postgres://gust:hunter2@127.0.0.1:1/gust?sslmode=bogus")
            .await
            .unwrap_err()
    );
    assert!(
        err.contains("unknown sslmode `bogus`") && !err.contains("hunter2"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_hosts_starting_a_run_exactly_one_does() {
    let Some((a, b, _)) = two_hosts("start_once").await else {
        return;
    };
    deployed(&a).await;
    for i in 0..20 {
        let id = format!("r{i:02}");
        apply(&a, new_run(&id, 10, None)).await;
        let (one, other) =
            tokio::join!(apply(&a, start(&id, 20, 99)), apply(&b, start(&id, 20, 99)));
        let started = [&one, &other]
            .iter()
            .filter(|o| matches!(o, WriteOutcome::Started(_)))
            .count();
        assert_eq!(started, 1, "{one:?} / {other:?}");
        for outcome in [one, other] {
            assert!(
                matches!(
                    outcome,
                    WriteOutcome::Started(_) | WriteOutcome::NotStarted(Some(_))
                ),
                "{outcome:?}"
            );
        }
        assert_eq!(a.run("a", &id).await.unwrap().unwrap().attempts, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_accepting_one_idempotency_key_make_one_run() {
    let Some((a, b, _)) = two_hosts("idempotent_once").await else {
        return;
    };
    deployed(&a).await;
    for i in 0..20 {
        let key = format!("key-{i}");
        let (one, other) = tokio::join!(
            apply(&a, new_run(&format!("a{i:02}"), 10, Some((&key, "h")))),
            apply(&b, new_run(&format!("b{i:02}"), 10, Some((&key, "h")))),
        );
        let (winner, replay) = match (&one, &other) {
            (WriteOutcome::Inserted, r) => (format!("a{i:02}"), r),
            (r, WriteOutcome::Inserted) => (format!("b{i:02}"), r),
            _ => panic!("no run was accepted: {one:?} / {other:?}"),
        };
        assert_eq!(
            replay,
            &WriteOutcome::Replayed { id: winner },
            "{one:?} / {other:?}"
        );
    }
    let runs = a.list_runs("a", None, 100, None).await.unwrap();
    assert_eq!(runs.len(), 20, "one run per key");
}

/// Waits until a session of the store (application `gust`) waits for a lock another
/// transaction holds.
async fn store_waits_for_a_lock(observer: &tokio_postgres::Client) {
    eventually("the store waiting for the lock", || async {
        let waiting: i64 = observer
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE application_name = 'gust' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        waiting > 0
    })
    .await;
}

/// The case the unique index is for: another host's run with the key is inserted but not
/// yet committed when this host looks for it. The insert waits for that transaction, then
/// answers its run, and counts no bytes of its own.
#[tokio::test]
async fn an_idempotency_key_committed_meanwhile_names_the_run() {
    let Some(url) = database("idempotent_race") else {
        return;
    };
    let store = Store::open_postgres(&url).await.unwrap();
    deployed(&store).await;
    let mut other_host = connect(&url).await;
    let observer = connect(&url).await;
    let tx = other_host.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO runs (id, agent, deployment, version, status, input, content_type,
            created_at, expires_at, idempotency_key, request_hash)
         VALUES ('theirs', 'a', 1, 1, 'queued', '\\x7b7d', 'application/json', 10, 1010, 'k', 'h')",
        &[],
    )
    .await
    .unwrap();
    let insert = tokio::spawn({
        let store = store.clone();
        async move { apply(&store, new_run("ours", 10, Some(("k", "h")))).await }
    });
    store_waits_for_a_lock(&observer).await;
    tx.commit().await.unwrap();
    assert_eq!(
        insert.await.unwrap(),
        WriteOutcome::Replayed {
            id: "theirs".into()
        }
    );
    let bytes: i64 = observer
        .query_one("SELECT run_bytes FROM agents WHERE name = 'a'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bytes, 0, "the replay counted nothing");
    assert!(store.run("a", "ours").await.unwrap().is_none());
}

/// A start skips a run another host's transaction holds, at once, rather than queueing
/// behind it.
#[tokio::test]
async fn a_start_does_not_wait_behind_another_hosts_claim() {
    let Some(url) = database("start_skips") else {
        return;
    };
    let store = Store::open_postgres(&url).await.unwrap();
    deployed(&store).await;
    apply(&store, new_run("r1", 10, None)).await;
    let mut other_host = connect(&url).await;
    let tx = other_host.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM runs WHERE id = 'r1' FOR UPDATE", &[])
        .await
        .unwrap();
    let outcome = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        apply(&store, start("r1", 20, 99)),
    )
    .await
    .expect("the start waited for the other transaction");
    assert_eq!(outcome, WriteOutcome::NotStarted(Some(RunStatus::Queued)));
    tx.rollback().await.unwrap();
    assert!(matches!(
        apply(&store, start("r1", 20, 99)).await,
        WriteOutcome::Started(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_and_deploys_are_numbered_without_gaps() {
    let Some((a, b, _)) = two_hosts("numbering").await else {
        return;
    };
    let upload = |store: Store, digest: String| async move {
        store
            .add_version("a", &digest, 1, 0)
            .await
            .unwrap()
            .0
            .version
    };
    let mut tasks = Vec::new();
    for i in 0..10 {
        tasks.push(tokio::spawn(upload(a.clone(), format!("sha256:a{i}"))));
        tasks.push(tokio::spawn(upload(b.clone(), format!("sha256:b{i}"))));
        // The same bytes from both hosts: one version.
        tasks.push(tokio::spawn(upload(a.clone(), format!("sha256:same{i}"))));
        tasks.push(tokio::spawn(upload(b.clone(), format!("sha256:same{i}"))));
    }
    let numbers: Vec<u32> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let distinct: BTreeSet<u32> = numbers.iter().copied().collect();
    assert_eq!(distinct, (1..=30).collect(), "{numbers:?}");
    let mut deploys = Vec::new();
    for i in 0..10 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        deploys.push(tokio::spawn(async move {
            store
                .deploy("a", i + 1, &AgentConfig::default(), 0, None)
                .await
                .unwrap()
                .deployment
        }));
    }
    let numbers: BTreeSet<u32> = join_all(deploys)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(numbers, (1..=10).collect());
}

#[tokio::test]
async fn one_host_purges_at_a_time() {
    let Some((a, _b, url)) = two_hosts("purge_lock").await else {
        return;
    };
    deployed(&a).await;
    apply(&a, new_run("old", 10, None)).await;
    apply(&a, start("old", 20, 1_000)).await;
    let finish = RunWrite::Finish {
        id: "old".into(),
        attempt: 1,
        now: 30,
        outcome: RunOutcome::Succeeded {
            content_type: "text/plain".into(),
            output: b"ok".to_vec(),
        },
        logs: vec![],
        outbound: vec![],
    };
    apply(&a, finish).await;
    // Another host is purging (it holds the purge lock): this one leaves the round to it.
    let mut other = connect(&url).await;
    let purging = other.transaction().await.unwrap();
    let held: bool = purging
        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&0x6775_7375_i64])
        .await
        .unwrap()
        .get(0);
    assert!(held);
    assert_eq!(
        apply(&a, RunWrite::Purge { before: 1_000 }).await,
        WriteOutcome::Done
    );
    assert!(
        a.run("a", "old").await.unwrap().is_some(),
        "purged beside the other host"
    );
    purging.rollback().await.unwrap();
    apply(&a, RunWrite::Purge { before: 1_000 }).await;
    assert!(
        a.run("a", "old").await.unwrap().is_none(),
        "purged once the lock was free"
    );
}

#[tokio::test]
async fn recovery_leaves_runs_whose_lease_is_alive() {
    let Some((a, b, _)) = two_hosts("recover_leases").await else {
        return;
    };
    deployed(&a).await;
    for id in ["live", "lapsed", "waiting"] {
        apply(&a, new_run(id, 10, None)).await;
    }
    apply(&a, start("live", 20, 1_000)).await;
    apply(&a, start("lapsed", 20, 50)).await;
    // Host b starts at 100: host a is alive and renewing `live`.
    let recovered = b.recover_runs(100, 3).await.unwrap();
    assert_eq!((recovered.requeued, recovered.lost), (1, 0));
    assert_eq!(
        recovered.queued,
        [
            ("lapsed".to_owned(), "a".to_owned()),
            ("waiting".to_owned(), "a".to_owned())
        ]
    );
    assert_eq!(
        a.run("a", "live").await.unwrap().unwrap().status,
        RunStatus::Running
    );
    // Another host's lapsed lease is reclaimed by the sweeper too.
    let reclaimed = apply(
        &b,
        RunWrite::Reclaim {
            now: 2_000,
            running_here: Vec::new(),
            max_attempts: 3,
        },
    )
    .await;
    assert!(
        matches!(&reclaimed, WriteOutcome::Reclaimed { ids, .. } if ids == &[("live".to_owned(), "a".to_owned())]),
        "{reclaimed:?}"
    );
}

#[tokio::test]
async fn a_claimed_delivery_waits_for_its_claim_to_lapse() {
    let Some((a, b, _)) = two_hosts("delivery_claims").await else {
        return;
    };
    deployed(&a).await;
    a.deploy("a", 1, &pushing(), 0, None).await.unwrap();
    let mut run = new_run("r1", 10, None);
    if let RunWrite::Insert(new) = &mut run {
        new.deployment = 2;
        new.push = true;
    }
    apply(&a, run).await;
    apply(&a, start("r1", 11, 1_000)).await;
    let finish = RunWrite::Finish {
        id: "r1".into(),
        attempt: 1,
        now: 12,
        outcome: RunOutcome::Failed {
            kind: "failed".into(),
            message: "no".into(),
        },
        logs: Vec::new(),
        outbound: Vec::new(),
    };
    assert_eq!(
        apply(&a, finish).await,
        WriteOutcome::Finished { delivery: true }
    );
    let (on_a, on_b) = tokio::join!(
        a.due_deliveries(20, 10, 60_020, Vec::new()),
        b.due_deliveries(20, 10, 60_020, Vec::new())
    );
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    assert_eq!(
        on_a.len() + on_b.len(),
        1,
        "one host has it: {on_a:?} / {on_b:?}"
    );
    let (holder, other, claimed) = if on_a.is_empty() {
        (&b, &a, &on_b[0])
    } else {
        (&a, &b, &on_a[0])
    };
    assert!(
        other
            .due_deliveries(30, 10, 60_030, Vec::new())
            .await
            .unwrap()
            .is_empty(),
        "claimed"
    );
    assert!(
        holder
            .due_deliveries(30, 10, 60_030, Vec::new())
            .await
            .unwrap()
            .is_empty(),
        "claimed by itself too"
    );
    assert_eq!(other.next_delivery_at().await.unwrap(), Some(20 + 60_000));
    // The holder died: past the claim, any host may take it, with the same webhook-id.
    let taken = other
        .due_deliveries(20 + 60_000, 10, 120_020, Vec::new())
        .await
        .unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].event_id, claimed.event_id);
    // An attempt's result ends the claim: a retry is due for every host when scheduled.
    apply(
        other,
        RunWrite::Delivery {
            run_id: "r1".into(),
            round: claimed.created_at,
            status: DeliveryStatus::Pending,
            attempts: 1,
            last_error: Some("503".into()),
            next_attempt_at: Some(70_000),
        },
    )
    .await;
    assert_eq!(holder.next_delivery_at().await.unwrap(), Some(70_000));
    assert_eq!(
        holder
            .due_deliveries(70_000, 10, 130_000, Vec::new())
            .await
            .unwrap()
            .len(),
        1
    );
    // A host whose attempt was cut (its stop) gives the claim back: due again at once.
    assert!(
        other
            .due_deliveries(70_001, 10, 130_001, Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    // Only the claim the holder made (70,000 + 60,000) is given back.
    holder.release_delivery("r1".into(), 999).await.unwrap();
    assert!(
        other
            .due_deliveries(70_001, 10, 130_001, Vec::new())
            .await
            .unwrap()
            .is_empty(),
        "another claim was given back"
    );
    holder.release_delivery("r1".into(), 130_000).await.unwrap();
    assert_eq!(
        other
            .due_deliveries(70_001, 10, 130_001, Vec::new())
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn changes_reach_the_other_host() {
    let Some((a, b, _)) = two_hosts("changes").await else {
        return;
    };
    // Open returns once the store listens: what is committed from here on is heard.
    let mut changes = a.changes().expect("PostgreSQL announces changes");

    b.add_version("x", "sha256:1", 1, 0).await.unwrap();
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::VersionAdded {
            agent: "x".into(),
            version: 1,
            digest: "sha256:1".into()
        }
    );
    b.deploy("x", 1, &AgentConfig::default(), 0, None)
        .await
        .unwrap();
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::Deployments { agent: "x".into() }
    );
    b.set_setting("admin", "h").await.unwrap();
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::Setting {
            name: "admin".into()
        }
    );
    b.create_key(&gust_model::KeyRecord {
        id: "k1".into(),
        agent: "x".into(),
        name: "ci".into(),
        hash: "h1".into(),
        created_at: 0,
        last_used_at: None,
        rate_limit: None,
    })
    .await
    .unwrap();
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::Keys { agent: "x".into() }
    );
    let mut run = new_run("r1", 10, None);
    if let RunWrite::Insert(new) = &mut run {
        new.agent = "x".into();
    }
    apply(&b, run).await;
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::RunQueued {
            agent: "x".into(),
            id: "r1".into()
        }
    );
    apply(&b, start("r1", 11, 1_000)).await;
    apply(
        &b,
        RunWrite::Cancel {
            agent: "x".into(),
            id: "r1".into(),
            now: 12,
        },
    )
    .await;
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::RunCancelled {
            agent: "x".into(),
            id: "r1".into(),
            was_running: true
        }
    );
    // A write that changed nothing announces nothing; a failed batch write neither.
    let mut run = new_run("r2", 10, None);
    if let RunWrite::Insert(new) = &mut run {
        new.agent = "x".into();
    }
    apply(&b, run).await;
    heard(
        &mut changes,
        |c| matches!(c, Change::RunQueued { id, .. } if id == "r2"),
    )
    .await;
    apply(&b, start("r2", 11, 1_000)).await;
    apply(
        &b,
        RunWrite::Finish {
            id: "r2".into(),
            attempt: 1,
            now: 12,
            outcome: RunOutcome::Succeeded {
                content_type: "text/plain".into(),
                output: b"ok".to_vec(),
            },
            logs: Vec::new(),
            outbound: Vec::new(),
        },
    )
    .await;
    assert_eq!(
        heard(&mut changes, |_| true).await,
        Change::RunEnded {
            agent: "x".into(),
            id: "r2".into()
        }
    );
    b.delete_agent("x").await.unwrap();
    let mut after_delete = BTreeSet::new();
    for _ in 0..2 {
        after_delete.insert(format!("{:?}", heard(&mut changes, |_| true).await));
    }
    assert_eq!(
        after_delete,
        BTreeSet::from([
            format!("{:?}", Change::Keys { agent: "x".into() }),
            format!("{:?}", Change::Deployments { agent: "x".into() }),
        ])
    );
}

#[tokio::test]
async fn after_an_outage_the_listener_reconnects_and_calls_work_again() {
    // A server of its own: stopping it must not disturb the other tests.
    let Some(mut cluster) = PgCluster::start_or_skip().unwrap() else {
        return;
    };
    let url = cluster.create_database("outage").unwrap();
    let store = Store::open_postgres(&url).await.unwrap();
    let mut changes = store.changes().unwrap();
    eventually("listening", || async { store.database_up() }).await;
    store
        .put_draft("a", &AgentConfig::default(), 0, DraftBase::Any)
        .await
        .unwrap();

    cluster.stop().unwrap();
    eventually("the outage noticed", || async { !store.database_up() }).await;
    match store.list_agents().await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.starts_with("database unavailable"), "{message}");
        }
        other => panic!("expected the database to be unavailable, got {other:?}"),
    }

    cluster.start_again().unwrap();
    heard(&mut changes, |c| *c == Change::Resync).await;
    assert!(store.database_up());
    // Pooled connections from before the outage are found closed and replaced.
    eventually("a pooled query", || async {
        store.list_agents().await.is_ok()
    })
    .await;
    assert_eq!(store.list_agents().await.unwrap().len(), 1);

    store.close();
    assert!(!store.database_up());
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
}

/// Awaits every future, in order (spawned tasks run meanwhile).
async fn join_all<T>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for future in futures {
        out.push(future.await);
    }
    out
}

/// The statements of a batch find the runs they name through the primary key, even with the
/// statistics of a young table, under the plans PostgreSQL caches for prepared statements.
/// (Such plans read the whole table, or every queued run through the queue's index, for each
/// run named: a batch then cost the square of the queue, and queued runs/s fell by half as
/// the table grew.)
#[tokio::test]
async fn batch_statements_find_their_runs_by_primary_key() {
    use gust_store::postgres_queue_sql as sql;
    let Some(url) = database("batch_plans") else {
        return;
    };
    let db = Store::open_postgres(&url).await.unwrap();
    deployed(&db).await;
    for i in 0..20 {
        apply(&db, new_run(&format!("r{i}"), 10, None)).await;
    }
    let client = connect(&url).await;
    // What autovacuum would have gathered early: a small table, every run queued.
    client.batch_execute("ANALYZE").await.unwrap();
    let named = "'{r1,r2}'::TEXT[]";
    let statements = [
        (
            "LOCK_AGENTS",
            sql::LOCK_AGENTS,
            format!("'{{a}}'::TEXT[], {named}"),
        ),
        (
            "START",
            sql::START,
            format!("{named}, '{{1,1}}', '{{2,2}}'"),
        ),
        (
            "FINISH",
            sql::FINISH,
            format!(
                "{named}, '{{1,1}}', '{{succeeded,succeeded}}', '{{5,5}}', \
                 ARRAY['\\x7b7d', '\\x7b7d']::BYTEA[], '{{text/plain,text/plain}}', \
                 ARRAY[NULL, NULL]::TEXT[], ARRAY[NULL, NULL]::TEXT[], '{{[],[]}}', \
                 ARRAY[NULL, NULL]::TEXT[]"
            ),
        ),
        (
            "RENEW",
            sql::RENEW,
            format!("{named}, '{{1,1}}', '{{5,5}}'"),
        ),
        ("STATUS", sql::STATUS, named.to_owned()),
    ];
    for (name, statement, arguments) in statements {
        client
            .batch_execute(&format!(
                "BEGIN; {}; SET LOCAL plan_cache_mode = force_generic_plan; PREPARE p AS {statement}",
                sql::BATCH_SETTINGS
            ))
            .await
            .unwrap();
        let plan: Vec<String> = client
            .simple_query(&format!("EXPLAIN EXECUTE p({arguments})"))
            .await
            .unwrap()
            .into_iter()
            .filter_map(|message| match message {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
                _ => None,
            })
            .collect();
        client
            .batch_execute("ROLLBACK; DEALLOCATE p")
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains("runs_pkey"),
            "{name} looks runs up by id:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on runs") && !plan.contains("runs_queue"),
            "{name} reads no other runs than those it names:\n{plan}"
        );
    }
}
