//! The shared backend: one PostgreSQL database behind several `gust serve` hosts (issue #15).
//!
//! Each method is a short transaction on a pooled connection (tokio-postgres, deadpool). What
//! differs from SQLite is that other processes write at the same time, so every
//! read-then-write that SQLite could do under its one connection is here either one statement
//! or guarded by a row lock, and claims (starting a run, delivering a push event) skip rows
//! another host holds instead of waiting for them. Each module says how, where it matters:
//!
//! - `config`: the URL, `sslmode`, the pool's size; `tls`: rustls for tokio-postgres;
//! - `schema`: the tables and their migrations, applied once under an advisory lock;
//! - `agents`: agents, versions and deployments (numbered under the agent's row lock);
//! - `keys`: invoke keys, push secrets, settings, component bytes;
//! - `runs`: the run queue's writes (claims, idempotency, stored bytes); `reads`: runs,
//!   due deliveries (claimed), recovery;
//! - `notify`: changes announced with `pg_notify`, heard by a listener of each host.

mod agents;
mod batch;
mod config;
mod grouped;
mod keys;
mod notify;
mod reads;
mod runs;
mod schema;
mod sessions;
pub mod sql;
mod tls;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{
    GenericClient, Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, ToSql};

use crate::{Change, StoreError};

/// How long a call waits for a pooled connection (and a new connection may take) before it
/// fails as [`StoreError::Unavailable`]: a dead database answers quickly rather than hanging
/// every caller.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// Changes a slow subscriber may fall behind by before it is told it lagged.
const CHANGES_BUFFER: usize = 1024;

/// The PostgreSQL backend.
#[derive(Debug)]
pub(crate) struct Postgres {
    pool: Pool,
    /// What the listener heard; [`crate::Store::changes`] subscribes.
    changes: broadcast::Sender<Change>,
    /// Whether the listener's connection is up (it checks it every few seconds).
    up: Arc<AtomicBool>,
    /// Ends the listener: on `close`, or when this is dropped with the last `Store`.
    stop: watch::Sender<bool>,
}

impl Postgres {
    /// Connects, brings the schema up to date, and starts listening for other hosts' changes.
    ///
    /// # Errors
    /// When the URL is not valid, the database cannot be reached, or its schema is newer than
    /// this binary's.
    pub(crate) async fn open(url: &str) -> anyhow::Result<Self> {
        let target = config::Target::parse(url)?;
        let manager = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
            // A closed connection is noticed by tokio-postgres itself; checking each one with
            // a query before use would add a round trip to every call.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(target.pool_size)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .recycle_timeout(Some(POOL_WAIT))
            .runtime(Runtime::Tokio1)
            .build()
            .context("creating the PostgreSQL connection pool")?;
        let mut client = pool
            .get()
            .await
            .map_err(|e| anyhow::anyhow!("{}", pool_error(e)))
            .with_context(|| format!("connecting to PostgreSQL at {}", target.describe))?;
        schema::migrate(&mut client)
            .await
            .with_context(|| format!("preparing the database at {}", target.describe))?;
        drop(client);
        let (changes, _) = broadcast::channel(CHANGES_BUFFER);
        let up = Arc::new(AtomicBool::new(true));
        let (stop, stopped) = watch::channel(false);
        let (ready, listening) = oneshot::channel();
        tokio::spawn(notify::listen(notify::Listener {
            config: target.config,
            tls: target.tls,
            describe: target.describe,
            changes: changes.clone(),
            up: Arc::clone(&up),
            stop: stopped,
            ready,
        }));
        // Once open returns, a subscriber hears every change committed after it subscribes
        // (a notification is only delivered to a connection listening when it commits).
        // A database that refuses LISTEN (a pooler in transaction mode) still opens: the
        // listener keeps trying, and says why in the log.
        let _ = tokio::time::timeout(POOL_WAIT, listening).await;
        Ok(Self {
            pool,
            changes,
            up,
            stop,
        })
    }

    /// A pooled connection.
    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_error)
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await.map_err(db)?;
        Ok(())
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    pub(crate) fn database_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Ends the listener and closes the pool: later calls fail as unavailable.
    pub(crate) fn close(&self) {
        self.stop.send_replace(true);
        self.pool.close();
        self.up.store(false, Ordering::Relaxed);
    }
}

/// The parameters of a statement.
type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs a statement from the connection's statement cache (parsed once per connection).
async fn exec<C: GenericClient>(c: &C, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(db)?;
    c.execute(&statement, params).await.map_err(db)
}

/// The rows of a cached statement.
async fn rows<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(db)?;
    c.query(&statement, params).await.map_err(db)
}

/// The row of a cached statement that answers at most one.
async fn row<C: GenericClient>(
    c: &C,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, StoreError> {
    let statement = c.prepare_cached(sql).await.map_err(db)?;
    c.query_opt(&statement, params).await.map_err(db)
}

/// Announces `change` to every host, when (and if) the transaction of `c` commits.
async fn notify<C: GenericClient>(c: &C, change: &Change) -> Result<(), StoreError> {
    exec(
        c,
        "SELECT pg_notify($1, $2)",
        &[&notify::CHANNEL, &notify::payload(change)],
    )
    .await
    .map(drop)
}

/// Column `i` of `row`.
fn col<'a, T: FromSql<'a>>(row: &'a Row, i: usize) -> Result<T, StoreError> {
    row.try_get(i).map_err(db)
}

/// A `BIGINT` column that holds a `u32` (a version, a deployment, an attempt count).
fn num(row: &Row, i: usize) -> Result<u32, StoreError> {
    let n: i64 = col(row, i)?;
    u32::try_from(n).map_err(|_| internal(format!("column {i} holds {n}, not a u32")))
}

fn opt_num(row: &Row, i: usize) -> Result<Option<u32>, StoreError> {
    let n: Option<i64> = col(row, i)?;
    n.map(|n| u32::try_from(n).map_err(|_| internal(format!("column {i} holds {n}, not a u32"))))
        .transpose()
}

fn internal(message: String) -> StoreError {
    StoreError::Internal(anyhow::anyhow!(message))
}

/// A failed statement as a [`StoreError`]: unavailable when the database could not be
/// reached or went away (the caller may retry later), else internal.
fn db(e: tokio_postgres::Error) -> StoreError {
    let code = e.code();
    if unreachable(&e) {
        StoreError::Unavailable(format!("database unavailable: {}", describe(&e)))
    } else if code == Some(&SqlState::T_R_DEADLOCK_DETECTED)
        || code == Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    {
        StoreError::Internal(Retry(describe(&e)).into())
    } else {
        StoreError::Internal(anyhow(e))
    }
}

/// Whether `e` says the database is out of reach rather than that a statement failed.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        // Class 08 is "connection exception"; 57P01-57P03 are the server shutting down,
        // crashing, or not accepting connections yet.
        return code.code().starts_with("08")
            || [
                SqlState::ADMIN_SHUTDOWN,
                SqlState::CRASH_SHUTDOWN,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(code);
    }
    // No server error: the socket failed (an I/O error), or the connection timed out.
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().starts_with("timeout")
        || e.to_string().starts_with("error connecting")
}

fn pool_error(e: PoolError) -> StoreError {
    match e {
        PoolError::Timeout(_) => StoreError::Unavailable(format!(
            "database unavailable: no connection within {}s",
            POOL_WAIT.as_secs()
        )),
        PoolError::Backend(e) => {
            StoreError::Unavailable(format!("database unavailable: {}", describe(&e)))
        }
        PoolError::Closed => {
            StoreError::Unavailable("database unavailable: the store was closed".into())
        }
        other => StoreError::Internal(anyhow::anyhow!("the connection pool failed: {other}")),
    }
}

/// tokio-postgres's message with its causes (its own `Display` omits them: "db error").
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn anyhow(e: tokio_postgres::Error) -> anyhow::Error {
    anyhow::anyhow!(describe(&e))
}

/// Whether a failed statement lost a race with another transaction (a deadlock, or a
/// serialization failure) and would succeed if the transaction were tried again.
fn retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Internal(e) if e.downcast_ref::<Retry>().is_some())
}

/// A deadlock or serialization failure, which [`retryable`] recognises.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Retry(String);
