//! What the tests share: a store of each backend, and one PostgreSQL server for the whole
//! test binary (each test gets a database of its own on it).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gust_model::AgentConfig;
use gust_store::queue::{NewRun, RunWrite, WriteOutcome};
use gust_store::{Change, Store};
use gust_testkit::postgres::PgCluster;

/// A store on a fresh SQLite file (the folder goes when the first element is dropped).
pub(crate) fn sqlite() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_sqlite(&dir.path().join("gust.db")).unwrap();
    (dir, store)
}

/// The server the tests share, started by the first test that needs it; `None` when
/// PostgreSQL is not installed and this is not CI (the test then passes without running).
pub(crate) fn cluster() -> Option<&'static PgCluster> {
    static CLUSTER: OnceLock<Option<PgCluster>> = OnceLock::new();
    CLUSTER
        .get_or_init(|| PgCluster::start_or_skip().expect("starting PostgreSQL"))
        .as_ref()
}

/// The URL of a new, empty database on the shared server, named after the test.
pub(crate) fn database(test: &str) -> Option<String> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cluster = cluster()?;
    // PostgreSQL cuts names at 63 bytes; test names are ASCII.
    let test = &test[..test.len().min(40)];
    let name = format!("{test}_{}", NEXT.fetch_add(1, Ordering::Relaxed));
    Some(cluster.create_database(&name).expect("creating a database"))
}

/// A store on a new, empty database.
pub(crate) async fn postgres(test: &str) -> Option<Store> {
    let url = database(test)?;
    Some(
        Store::open_postgres(&url)
            .await
            .expect("opening PostgreSQL"),
    )
}

/// Runs each test body on both backends: `mod name { fn sqlite(); fn postgres(); }`.
macro_rules! both {
    ($(#[$meta:meta])* async fn $name:ident($store:ident: Store) $body:block) => {
        $(#[$meta])*
        mod $name {
            // `expect` would fail for the bodies that do use them.
            #[allow(unused_imports, reason = "not every body names the test module's imports")]
            use super::*;

            async fn body($store: gust_store::Store) $body

            #[tokio::test]
            async fn sqlite() {
                let (_dir, store) = crate::support::sqlite();
                body(store).await;
            }

            #[tokio::test]
            async fn postgres() {
                let Some(store) = crate::support::postgres(stringify!($name)).await else {
                    return;
                };
                body(store).await;
            }
        }
    };
}
pub(crate) use both;

/// Agent `a` with version 1 deployed (deployment 1, not pushing).
pub(crate) async fn deployed(store: &Store) {
    store.add_version("a", "sha256:1", 1, 0).await.unwrap();
    store
        .deploy("a", 1, &AgentConfig::default(), 0, None)
        .await
        .unwrap();
}

/// A configuration whose deployments push their ended runs.
pub(crate) fn pushing() -> AgentConfig {
    serde_json::from_str(
        r#"{"mode": "async", "push": {"url": "https://app.example/hook", "access_token": "t"}}"#,
    )
    .unwrap()
}

/// A run of agent `a`, deployment 1, accepted at `created_at`, expiring 1000 ms later.
pub(crate) fn new_run(id: &str, created_at: i64, key: Option<(&str, &str)>) -> RunWrite {
    RunWrite::Insert(NewRun {
        id: id.into(),
        agent: "a".into(),
        deployment: 1,
        version: 1,
        input: b"{}".to_vec(),
        content_type: "application/json".into(),
        created_at,
        expires_at: created_at + 1000,
        idempotency: key.map(|(k, h)| (k.into(), h.into())),
        push: false,
        max_stored_bytes: u64::MAX,
        trace: None,
    })
}

pub(crate) fn start(id: &str, now: i64, lease_until: i64) -> RunWrite {
    RunWrite::Start {
        id: id.into(),
        now,
        lease_until,
    }
}

/// Applies one write in a batch of its own and answers its outcome.
pub(crate) async fn apply(store: &Store, write: RunWrite) -> WriteOutcome {
    let (_, applied) = store.apply_run_writes(vec![write]).await;
    applied.unwrap().pop().unwrap().unwrap()
}

/// Waits (up to 30 s) for a change that `wanted` accepts, skipping others.
pub(crate) async fn heard(
    changes: &mut tokio::sync::broadcast::Receiver<Change>,
    wanted: impl Fn(&Change) -> bool,
) -> Change {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, changes.recv()).await {
            Ok(Ok(change)) if wanted(&change) => return change,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("the change stream failed: {e}"),
            Err(_) => panic!("the change did not come within 30s"),
        }
    }
}

/// Polls `condition` every 50 ms until it holds, for up to 30 s.
pub(crate) async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "{what}: not within 30s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
