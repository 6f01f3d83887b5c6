//! Per-agent invoke keys, checked from memory on the hot path.
//!
//! A key is `gust_` and 32 random bytes in hex, shown once when it is made; only its SHA-256
//! is stored (keys are random, so a fast hash is enough). The ring maps hashes to keys in an
//! immutable map swapped on change, so a lookup takes no lock; the hash found is compared
//! again in constant time. Last-used times are kept in memory and written to the store in
//! the background.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use gust_model::{KeyRecord, RateLimit};
use gust_store::Store;

use crate::clock;
use crate::error::Error;
use crate::locks::AgentLocks;

/// Invoke keys: made, listed and revoked through the store, checked on every call from the
/// in-memory [`KeyRing`].
pub struct Keys {
    store: Store,
    ring: Arc<KeyRing>,
    locks: Arc<AgentLocks>,
}

impl Keys {
    pub(crate) fn new(store: Store, ring: Arc<KeyRing>, locks: Arc<AgentLocks>) -> Self {
        Self { store, ring, locks }
    }

    /// The ring that requests are checked against.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Makes an invoke key for `agent`; the key is in the answer and nowhere else.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent, [`Error::BadRequest`] for a bad name or limit.
    pub async fn create(
        &self,
        agent: &str,
        name: &str,
        rate_limit: Option<RateLimit>,
    ) -> Result<(String, KeyRecord), Error> {
        if name.is_empty() || name.chars().count() > 128 {
            return Err(Error::BadRequest(
                "`name` must be 1 to 128 characters".into(),
            ));
        }
        if let Some(limit) = &rate_limit {
            limit.validate().map_err(Error::BadRequest)?;
        }
        // Under the agent's lock, like its deletion: the ring and the store change together.
        let _guard = self.locks.lock(agent).await;
        let (key, record) = new_key(agent, name, rate_limit);
        self.store.create_key(&record).await?;
        self.ring.add(record.clone());
        tracing::info!(agent, key_id = %record.id, "created an invoke key");
        Ok((key, record))
    }

    /// The keys of `agent` (never the keys themselves).
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown agent.
    pub async fn list(&self, agent: &str) -> Result<Vec<KeyRecord>, Error> {
        if self.store.draft(agent).await?.is_none() {
            return Err(Error::NotFound(format!("no agent named `{agent}`")));
        }
        Ok(self.store.list_keys(agent).await?)
    }

    /// Revokes a key at once.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the agent has no such key.
    pub async fn revoke(&self, agent: &str, id: &str) -> Result<(), Error> {
        let _guard = self.locks.lock(agent).await;
        if !self.store.delete_key(agent, id).await? {
            return Err(Error::NotFound(format!(
                "agent `{agent}` has no key `{id}`"
            )));
        }
        self.ring.remove(id);
        tracing::info!(agent, key_id = id, "revoked an invoke key");
        Ok(())
    }

    /// Takes `agent`'s keys from the store again (another host created or revoked one);
    /// every agent's, with `None`. Under each agent's lock, like a create or a revoke, so
    /// a key made here meanwhile is not dropped by an older read.
    ///
    /// # Errors
    /// When the store fails.
    pub(crate) async fn follow(&self, agent: Option<&str>) -> Result<(), Error> {
        let agents: Vec<String> = match agent {
            Some(agent) => vec![agent.to_owned()],
            None => {
                let mut agents: std::collections::BTreeSet<String> = self
                    .store
                    .all_keys()
                    .await?
                    .into_iter()
                    .map(|k| k.agent)
                    .collect();
                agents.extend(self.ring.agents());
                agents.into_iter().collect()
            }
        };
        for agent in agents {
            let _guard = self.locks.lock(&agent).await;
            let records = self.store.list_keys(&agent).await?;
            self.ring.replace(&agent, records);
        }
        Ok(())
    }

    /// Writes the keys' last-use times gathered in memory.
    pub(crate) async fn flush_use(&self) {
        let used = self.ring.take_last_used();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch_keys(used).await {
            tracing::warn!("recording key use: {e:#}");
        }
    }
}

/// A new key: the key to show once, and its record.
pub(crate) fn new_key(
    agent: &str,
    name: &str,
    rate_limit: Option<RateLimit>,
) -> (String, KeyRecord) {
    let key = format!("gust_{}", hex::encode(rand::random::<[u8; 32]>()));
    let record = KeyRecord {
        id: format!("key_{}", hex::encode(rand::random::<[u8; 8]>())),
        agent: agent.to_owned(),
        name: name.to_owned(),
        hash: hash(&key),
        created_at: clock::now_ms(),
        last_used_at: None,
        rate_limit,
    };
    (key, record)
}

/// SHA-256 of a presented key, hex.
pub(crate) fn hash(key: &str) -> String {
    hex::encode(super::digest(key.as_bytes()))
}

/// A key the ring knows.
pub struct Key {
    /// `key_…`.
    pub id: String,
    /// The agent it may call.
    pub agent: Arc<str>,
    hash: String,
    last_used: AtomicI64,
    bucket: Option<Mutex<Bucket>>,
}

struct Bucket {
    limit: RateLimit,
    tokens: f64,
    at: Instant,
}

impl Key {
    /// Takes one request from the key's rate limit; `Err` says how long until one is free.
    ///
    /// # Errors
    /// How long until the bucket has a request again.
    pub fn admit(&self) -> Result<(), Duration> {
        self.last_used.store(clock::now_ms(), Ordering::Relaxed);
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        let mut b = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.at).as_secs_f64() * b.limit.per_second;
        b.tokens = (b.tokens + refill).min(f64::from(b.limit.burst));
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - b.tokens) / b.limit.per_second;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }
}

/// See the module docs.
#[derive(Default)]
pub struct KeyRing {
    by_hash: ArcSwap<HashMap<String, Arc<Key>>>,
    /// Last-used times already written, so the flush writes only what changed.
    flushed: Mutex<HashMap<String, i64>>,
}

impl KeyRing {
    pub(crate) fn load(records: Vec<KeyRecord>) -> Self {
        let ring = Self::default();
        ring.by_hash.store(Arc::new(
            records
                .into_iter()
                .map(|r| (r.hash.clone(), Arc::new(entry(r))))
                .collect(),
        ));
        ring
    }

    /// The key whose hash this is, compared in constant time.
    pub fn find(&self, presented: &str) -> Option<Arc<Key>> {
        self.find_digest(&super::digest(presented.as_bytes()))
    }

    /// The key of a credential whose [`digest`](super::digest) this is. Its hex goes in a
    /// buffer on the stack: this runs on every call.
    pub fn find_digest(&self, digest: &[u8; 32]) -> Option<Arc<Key>> {
        let mut hex = [0u8; 64];
        hex::encode_to_slice(digest, &mut hex).ok()?;
        let hash = std::str::from_utf8(&hex).ok()?;
        let key = self.by_hash.load().get(hash).cloned()?;
        super::constant_time_eq(key.hash.as_bytes(), hash.as_bytes()).then_some(key)
    }

    pub(crate) fn add(&self, record: KeyRecord) {
        let key = Arc::new(entry(record));
        self.by_hash.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.insert(key.hash.clone(), Arc::clone(&key));
            map
        });
    }

    /// Revokes at once: the next request with the key is refused.
    pub(crate) fn remove(&self, id: &str) {
        self.by_hash.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.retain(|_, k| k.id != id);
            map
        });
    }

    /// Makes the ring hold exactly `records` for `agent`: what another host created or
    /// revoked, read back from the shared database. A key already held keeps its entry,
    /// and with it its rate-limit bucket and last use.
    fn replace(&self, agent: &str, records: Vec<KeyRecord>) {
        let ours = |key: &Key| &*key.agent == agent;
        self.by_hash.rcu(|map| {
            let mut next: HashMap<String, Arc<Key>> = map
                .iter()
                .filter(|(_, k)| !ours(k))
                .map(|(h, k)| (h.clone(), Arc::clone(k)))
                .collect();
            for record in &records {
                let key = map
                    .get(&record.hash)
                    .filter(|k| k.id == record.id)
                    .map_or_else(|| Arc::new(entry(record.clone())), Arc::clone);
                next.insert(record.hash.clone(), key);
            }
            next
        });
    }

    /// The agents that have keys here.
    fn agents(&self) -> Vec<String> {
        let mut agents: Vec<String> = self
            .by_hash
            .load()
            .values()
            .map(|k| k.agent.to_string())
            .collect();
        agents.sort_unstable();
        agents.dedup();
        agents
    }

    pub(crate) fn remove_agent(&self, agent: &str) {
        self.by_hash.rcu(|map| {
            let mut map = HashMap::clone(map);
            map.retain(|_, k| &*k.agent != agent);
            map
        });
    }

    /// Last-used times that changed since the previous call.
    pub(crate) fn take_last_used(&self) -> Vec<(String, i64)> {
        let mut flushed = self.flushed.lock().unwrap_or_else(|e| e.into_inner());
        let mut changed = Vec::new();
        for key in self.by_hash.load().values() {
            let used = key.last_used.load(Ordering::Relaxed);
            if used > 0 && flushed.get(&key.id) != Some(&used) {
                flushed.insert(key.id.clone(), used);
                changed.push((key.id.clone(), used));
            }
        }
        changed
    }
}

fn entry(record: KeyRecord) -> Key {
    Key {
        id: record.id,
        agent: Arc::from(record.agent.as_str()),
        hash: record.hash,
        last_used: AtomicI64::new(record.last_used_at.unwrap_or(0)),
        bucket: record.rate_limit.map(|limit| {
            Mutex::new(Bucket {
                limit,
                tokens: f64::from(limit.burst),
                at: Instant::now(),
            })
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_their_hash_and_revoked_at_once() {
        let (key, record) = new_key("a", "ci", None);
        assert!(key.starts_with("gust_") && key.len() == 5 + 64);
        assert_ne!(record.hash, key, "only the hash is kept");
        let ring = KeyRing::load(vec![record.clone()]);
        assert_eq!(&*ring.find(&key).unwrap().agent, "a");
        assert!(ring.find("gust_wrong").is_none());
        ring.remove(&record.id);
        assert!(ring.find(&key).is_none());
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_sustained_rate() {
        let (_, record) = new_key(
            "a",
            "ci",
            Some(RateLimit {
                per_second: 10.0,
                burst: 3,
            }),
        );
        let key = entry(record);
        for _ in 0..3 {
            key.admit().unwrap();
        }
        let wait = key.admit().unwrap_err();
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        std::thread::sleep(Duration::from_millis(120));
        key.admit().unwrap();
    }

    #[test]
    fn last_used_times_flush_once_per_change() {
        let (key, record) = new_key("a", "ci", None);
        let ring = KeyRing::load(vec![record]);
        assert!(ring.take_last_used().is_empty());
        ring.find(&key).unwrap().admit().unwrap();
        assert_eq!(ring.take_last_used().len(), 1);
        assert!(ring.take_last_used().is_empty());
    }
}
